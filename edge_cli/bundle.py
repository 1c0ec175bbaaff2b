"""Bundle commands: `bundle inspect|verify|sign|import-ppdet` and `keygen`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional

import typer

bundle_app = typer.Typer(
    name="bundle",
    help="Inspect, verify and sign model bundles (.edgebundle files).\n\nExample: edge-sdk bundle inspect m.edgebundle",
    no_args_is_help=True,
)

_BUNDLE_ARG = typer.Argument(..., help="Bundle file (NAME-VERSION.edgebundle).", show_default=False)


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return "{:.0f} {}".format(n, unit) if unit == "B" else "{:.1f} {}".format(n, unit)
        n /= 1024.0
    return "{:.1f} GiB".format(n)  # pragma: no cover


def _fmt(value: Any, fmt: str = "{:.4f}") -> str:
    return "-" if value is None else fmt.format(value)


def _print_summary(info: Dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    m = info["manifest"]
    console = Console()
    summary = Table(show_header=False, title="bundle {}".format(info["path"]), title_justify="left")
    summary.add_column(style="bold", no_wrap=True)
    summary.add_column(overflow="fold")
    inp = m["input"]
    quant = m["quantization"]
    target = m["target"]
    rows = [
        ("name", m["name"]),
        ("version", m["version"]),
        (
            "created",
            "{} (edge-sdk {}, paddle {})".format(m["created_at"], m["sdk_version"], m["paddle_version"] or "-"),
        ),
        ("architecture", m["architecture"]),
        ("classes", "{}: {}".format(len(m["classes"]), ", ".join(m["classes"]))),
        (
            "input",
            "{}x{} (HxW) {} {}, {}, mean {} std {}{}".format(
                inp["size"][0],
                inp["size"][1],
                inp["resize_mode"],
                inp["interpolation"],
                inp["channel_order"],
                inp["mean"],
                inp["std"],
                ", /255" if inp["scale"] else "",
            ),
        ),
        ("precision", m["precision"]),
        (
            "quantization",
            quant["method"]
            if quant["method"] == "none"
            else "{} {} on {} images, {} float layers".format(
                quant["method"], quant["algo"], quant["calibration_images"], len(quant["float_layers"])
            ),
        ),
        (
            "target",
            "L4T {}..{}, compute capability {}, runtime >= {}".format(
                target["l4t_min"],
                target["l4t_max"],
                ", ".join(target["compute_capability"]),
                target["min_runtime_version"],
            ),
        ),
        ("size", "{} ({} bytes)".format(_human_bytes(info["size"]), info["size"])),
        ("sha256", info["sha256"]),
        (
            "signed by",
            "{}{}".format(info["signer_key_id"], " (trusted)" if info["trusted"] else "")
            if info["signed"]
            else "unsigned",
        ),
        ("verified", "every file's size and sha256 match the manifest"),
    ]
    for key, value in rows:
        summary.add_row(key, str(value))
    console.print(summary)

    if m["metrics"]:
        metrics = Table(title="metrics per stage", title_justify="left")
        for column in ("stage", "mAP@.5", "mAP", "GFLOPs", "params (M)", "size", "latency (ms)"):
            metrics.add_column(column, justify="left" if column == "stage" else "right")
        for s in m["metrics"]:
            metrics.add_row(
                s["stage"],
                _fmt(s["map50"]),
                _fmt(s["map"]),
                _fmt(None if s["flops"] is None else s["flops"] / 1e9, "{:.2f}"),
                _fmt(None if s["params"] is None else s["params"] / 1e6, "{:.2f}"),
                "-" if s["bytes"] is None else _human_bytes(s["bytes"]),
                _fmt(s["latency_ms"], "{:.1f}"),
            )
        console.print(metrics)

    files = Table(title="files", title_justify="left")
    files.add_column("path")
    files.add_column("size", justify="right")
    files.add_column("sha256")
    for f in m["files"]:
        files.add_row(f["path"], _human_bytes(f["size"]), f["sha256"][:16])
    console.print(files)


@bundle_app.command("inspect")
def inspect_command(
    bundle: Path = _BUNDLE_ARG,
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON instead of tables."),
    trusted_key: Optional[List[Path]] = typer.Option(
        None, "--trusted-key", "-k", help="Also require a signature by this public key (file or folder; repeatable)."
    ),
) -> None:
    """Verify a bundle (nothing is written to disk) and show its manifest and files.

    Example: edge-sdk bundle inspect m.edgebundle
    """
    import json

    from edge_sdk.bundle import inspect_bundle

    info = inspect_bundle(bundle, trusted_keys=trusted_key or None)
    if as_json:
        typer.echo(json.dumps(info, indent=2, sort_keys=True))
    else:
        _print_summary(info)


@bundle_app.command("verify")
def verify_command(
    bundle: Path = _BUNDLE_ARG,
    trusted_key: Optional[List[Path]] = typer.Option(
        None,
        "--trusted-key",
        "-k",
        help="Public key (.pem/.pub) or folder of keys; repeatable. When given, the bundle must be signed by one of them.",
    ),
) -> None:
    """Check a bundle completely: safe members, manifest, every file's sha256, signature.

    Prints `OK NAME VERSION SHA256 signed-by KEY|unsigned`, or one error line and a non-zero exit.

    Example: edge-sdk bundle verify m.edgebundle --trusted-key keys/fleet.pub
    """
    from edge_sdk.bundle import inspect_bundle

    info = inspect_bundle(bundle, trusted_keys=trusted_key or None)
    m = info["manifest"]
    signer = "signed-by {}".format(info["signer_key_id"]) if info["signed"] else "unsigned"
    typer.echo("OK {} {} {} {}".format(m["name"], m["version"], info["sha256"], signer))


@bundle_app.command("sign")
def sign_command(
    bundle: Path = _BUNDLE_ARG,
    key: Path = typer.Option(
        ..., "--key", help="Ed25519 private key PEM (from `edge-sdk keygen`).", show_default=False
    ),
    out: Optional[Path] = typer.Option(None, "--out", help="Write the signed bundle here instead of in place."),
) -> None:
    """Verify a bundle and add (or replace) its Ed25519 signature, atomically.

    Example: edge-sdk bundle sign m.edgebundle --key keys/fleet.key
    """
    from edge_sdk.bundle import sign_bundle
    from edge_sdk.signing import key_id, load_private_key

    private_key = load_private_key(key)  # a key mistake is one error line, before the status line
    if bundle.is_file():  # a missing bundle gets sign_bundle's own error
        typer.echo(
            "signing {} ({:.1f} MB): verifying it, then writing it with the signature".format(
                bundle, bundle.stat().st_size / 1e6
            ),
            err=True,
        )
    written = sign_bundle(bundle, key, out=out)  # verifies what it wrote
    typer.echo("signed {} with key {}".format(written, key_id(private_key.public_key())))


def keygen_command(
    out_dir: Path = typer.Option(
        ..., "--out-dir", help="Folder to write NAME.key and NAME.pub in.", show_default=False
    ),
    name: str = typer.Option("edge-sdk", "--name", help="Base name of the key files."),
) -> None:
    """Create an Ed25519 signing key pair: NAME.key (private, mode 0600) and NAME.pub (public).

    Give NAME.pub to robots (`--trusted-key`); keep NAME.key secret. Refuses to overwrite.

    Example: edge-sdk keygen --out-dir keys --name fleet
    """
    from edge_sdk.bundle import generate_keypair
    from edge_sdk.errors import BundleError

    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise BundleError("key name {!r} must be a plain file name".format(name))
    blocker = next((p for p in (out_dir, *out_dir.parents) if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise BundleError("--out-dir {}: {} is a file, not a folder".format(out_dir, blocker))
    out_dir.mkdir(parents=True, exist_ok=True)
    private_path, public_path = out_dir / (name + ".key"), out_dir / (name + ".pub")
    key_id = generate_keypair(private_path, public_path)
    typer.echo("key {}: private {} (keep secret), public {}".format(key_id, private_path, public_path))


@bundle_app.command("import-ppdet")
def import_ppdet_command(
    export_dir: Path = typer.Argument(
        ..., help="PaddleDetection export folder (model.pdmodel, model.pdiparams, infer_cfg.yml).", show_default=False
    ),
    out: Path = typer.Option(..., "--out", help="Bundle file to write.", show_default=False),
    name: Optional[str] = typer.Option(None, "--name", help="Bundle name (default: the folder's name)."),
    version: str = typer.Option("0.1.0", "--version", help="Bundle version."),
    key: Optional[Path] = typer.Option(None, "--key", help="Sign with this Ed25519 private key."),
) -> None:
    """Wrap a PaddleDetection export into a bundle (preprocessing and labels from infer_cfg.yml).

    Example: edge-sdk bundle import-ppdet ppdet_export/ --out ppdet.edgebundle
    """
    from device.ppdet import import_ppdet

    written = import_ppdet(export_dir, out, name=name, version=version, signing_key=key)
    typer.echo("wrote {}".format(written))


def register(app: typer.Typer) -> None:
    """Add the `bundle` group and `keygen` to the root app."""
    app.add_typer(bundle_app, name="bundle")
    app.command("keygen")(keygen_command)
