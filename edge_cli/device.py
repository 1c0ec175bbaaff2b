"""CLI commands: `edge-sdk run`, `edge-sdk bench` and `edge-sdk bundle import-ppdet`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

_PRECISION_HELP = "fp32, fp16 or int8 (default: the bundle's own). Falls back (with a note) when the machine cannot."


def _source_uri(camera: Optional[int], source: Optional[str]) -> str:
    from edge_sdk.errors import SourceError

    if camera is not None and source is not None:
        raise SourceError("give --camera or --source, not both")
    if source is not None:
        return source
    return str(camera if camera is not None else 0)


def run_command(
    camera: Optional[int] = typer.Option(
        None, "--camera", help="Camera index (/dev/videoN) (default: 0 when --source is not given)."
    ),
    source: Optional[str] = typer.Option(
        None,
        "--source",
        help="Frame source: /dev/videoN, csi://N, rtsp://..., a video file, an image folder, or 'demo'.",
    ),
    bundle: Optional[Path] = typer.Option(
        None, "--bundle", help="Bundle file to run (default: the one installed under --root)."
    ),
    root: Optional[str] = typer.Option(None, "--root", help="The robot's bundle store (default: /var/lib/edge-sdk)."),
    serial: Optional[str] = typer.Option(
        None, "--serial", help="Serial port of the robot controller, e.g. /dev/ttyTHS0."
    ),
    baud: int = typer.Option(115200, "--baud", help="Serial baud rate."),
    serial_mode: str = typer.Option(
        "binary",
        "--serial-mode",
        help="binary: the framed protocol of docs/serial-protocol.md; text: one readable line per message (debugging).",
    ),
    preview: Optional[str] = typer.Option(None, "--preview", help="Serve a live preview page on HOST:PORT."),
    record: Optional[Path] = typer.Option(None, "--record", help="Record annotated video to this file."),
    jsonl: Optional[str] = typer.Option(
        None, "--jsonl", help="Write one JSON line per frame to FILE, or '-' for stdout."
    ),
    max_frames: Optional[int] = typer.Option(
        None, "--max-frames", min=1, help="Stop after this many processed frames."
    ),
    precision: Optional[str] = typer.Option(None, "--precision", help=_PRECISION_HELP),
    device: str = typer.Option("auto", "--device", help="auto, cpu or gpu."),
    dla: Optional[int] = typer.Option(
        None, "--dla", help="Run TensorRT layers on DLA core 0 or 1 (Xavier/Orin; fp16 or int8)."
    ),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="CPU math threads (default: all cores)."),
    score_threshold: Optional[float] = typer.Option(
        None, "--score-threshold", min=0.0, max=1.0, help="Minimum score (default: the bundle's)."
    ),
    classes: Optional[str] = typer.Option(
        None, "--classes", help="Comma-separated class names to keep (default: all)."
    ),
    width: Optional[int] = typer.Option(None, "--width", help="Requested camera width in pixels."),
    height: Optional[int] = typer.Option(None, "--height", help="Requested camera height in pixels."),
    fps: Optional[float] = typer.Option(None, "--fps", help="Requested camera frame rate (also paces video files)."),
    loop: bool = typer.Option(False, "--loop", help="Restart a video file or image folder at its end."),
    engine_cache: Optional[str] = typer.Option(
        None, "--engine-cache", envvar="EDGE_SDK_ENGINE_CACHE", help="Folder for cached TensorRT engines."
    ),
    trusted_key: Optional[Path] = typer.Option(
        None, "--trusted-key", help="Require the bundle to be signed by this public key (file or folder)."
    ),
) -> None:
    """Run the detector on a camera or stream and send detections to the robot.

    Shows a live status line; stops cleanly on Ctrl-C or SIGTERM. Under a systemd Type=notify
    unit it reports READY, WATCHDOG (only while frames flow) and STATUS.
    """
    from device.runtime import RunOptions, run

    options = RunOptions(
        source=_source_uri(camera, source),
        bundle=str(bundle) if bundle else None,
        root=root,
        serial=serial,
        baud=baud,
        serial_mode=serial_mode,
        preview=preview,
        record=str(record) if record else None,
        jsonl=jsonl,
        max_frames=max_frames,
        precision=precision,
        device=device,
        dla_core=dla,
        threads=threads,
        score_threshold=score_threshold,
        classes=[c.strip() for c in classes.split(",") if c.strip()] if classes else None,
        width=width,
        height=height,
        fps=fps,
        loop=loop,
        engine_cache=engine_cache,
        trusted_keys=str(trusted_key) if trusted_key else None,
    )
    run(options)


def bench_command(
    bundle: Path = typer.Option(..., "--bundle", help="Bundle file to measure.", show_default=False),
    source: str = typer.Option(
        "demo", "--source", help="Frames for the full pipeline: a video file, an image folder or 'demo'."
    ),
    frames: int = typer.Option(100, "--frames", min=2, help="Frames to time in each measurement."),
    precision: Optional[str] = typer.Option(None, "--precision", help=_PRECISION_HELP),
    device: str = typer.Option("auto", "--device", help="auto, cpu or gpu."),
    dla: Optional[int] = typer.Option(None, "--dla", help="DLA core 0 or 1."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="CPU math threads (default: all cores)."),
) -> None:
    """Measure predictor-only FPS and full-pipeline FPS (source, preprocessing, inference,
    postprocessing) on the same bundle, and print their ratio."""
    from device.runtime import bench_bundle

    result = bench_bundle(
        bundle, source=source, frames=frames, precision=precision, device=device, dla_core=dla, threads=threads
    )
    typer.echo("predictor: {}".format(result["plan"]))
    typer.echo(
        "predictor-only  {:8.1f} fps  ({:.1f} ms median)".format(result["predictor_fps"], result["predictor_ms"])
    )
    typer.echo(
        "full pipeline   {:8.1f} fps  (e2e p50 {:.1f} ms, p99 {:.1f} ms, dropped {})".format(
            result["pipeline_fps"], result["e2e_p50_ms"] or 0.0, result["e2e_p99_ms"] or 0.0, result["dropped"]
        )
    )
    typer.echo("ratio           {:8.3f}".format(result["ratio"]))


def import_ppdet_command(
    export_dir: Path = typer.Argument(
        ..., help="PaddleDetection export folder (model.pdmodel, model.pdiparams, infer_cfg.yml).", show_default=False
    ),
    out: Path = typer.Option(..., "--out", help="Bundle file to write.", show_default=False),
    name: Optional[str] = typer.Option(None, "--name", help="Bundle name (default: the folder's name)."),
    version: str = typer.Option("0.1.0", "--version", help="Bundle version."),
    key: Optional[Path] = typer.Option(None, "--key", help="Sign with this Ed25519 private key."),
) -> None:
    """Wrap a PaddleDetection export into a bundle (preprocessing and labels from infer_cfg.yml)."""
    from device.ppdet import import_ppdet

    written = import_ppdet(export_dir, out, name=name, version=version, signing_key=key)
    typer.echo("wrote {}".format(written))


def register(app: typer.Typer) -> None:
    """Add `run` and `bench` to the root app and `import-ppdet` to the `bundle` group."""
    from edge_cli.bundle import bundle_app

    app.command("run")(run_command)
    app.command("bench")(bench_command)
    bundle_app.command("import-ppdet")(import_ppdet_command)
