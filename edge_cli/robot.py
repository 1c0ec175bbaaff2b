"""CLI commands that look after the robot itself: `doctor` and `service install`."""

from __future__ import annotations

import json
from typing import List, Optional

import typer

service_app = typer.Typer(help="Run edge-sdk as a systemd service on the robot.", no_args_is_help=True)


def doctor(
    root: str = typer.Option("/", help="Root of the file system to inspect (tests use a fake one)."),
    engine_cache: str = typer.Option(
        None,
        envvar="EDGE_SDK_ENGINE_CACHE",
        help="Folder where TensorRT engines are cached [default: /var/cache/edge-sdk/engines].",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the findings as JSON."),
    skip_paddle: bool = typer.Option(
        False, "--skip-paddle", help="Do not import Paddle (faster; skips Paddle/GPU checks)."
    ),
) -> None:
    """Check the robot and print a fix for every problem; exits 1 if any check fails.

    Checks Python, Paddle (CUDA, TensorRT, kernels for the GPU), JetPack/L4T, cameras, serial ports
    and dialout membership, the engine cache folder, free disk and the power mode."""
    from device.doctor import DEFAULT_ENGINE_CACHE, FAIL, OK, WARN, diagnose, probe_machine

    checks = diagnose(probe_machine(root, engine_cache or DEFAULT_ENGINE_CACHE, with_paddle=not skip_paddle))
    if as_json:
        typer.echo(json.dumps([c.__dict__ for c in checks], indent=2))
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table(show_header=True, header_style="bold")
        for column in ("check", "", "finding", "fix"):
            table.add_column(column)
        style = {OK: "[green]ok[/]", WARN: "[yellow]warn[/]", FAIL: "[red]FAIL[/]"}
        for c in checks:
            table.add_row(c.name, style[c.status], c.detail, c.fix)
        Console().print(table)
    if any(c.status == FAIL for c in checks):
        raise typer.Exit(1)


@service_app.command("install")
def service_install(
    run_args: Optional[List[str]] = typer.Argument(
        None, help="Arguments for `edge-sdk run`, after `--` (default: --camera 0)."
    ),
    unit_dir: str = typer.Option("/etc/systemd/system", help="Where to write edge-sdk.service."),
    user: str = typer.Option("edge", help="User the service runs as (needs the video and dialout groups)."),
    watchdog: int = typer.Option(30, help="Seconds without frames before systemd restarts the runtime."),
    executable: Optional[str] = typer.Option(None, help="Path of edge-sdk [default: the one on PATH]."),
    enable: bool = typer.Option(True, help="Run systemctl daemon-reload and enable --now."),
    print_only: bool = typer.Option(False, "--print", help="Print the unit instead of installing it."),
) -> None:
    """Install a systemd unit that runs `edge-sdk run` with Restart=always and a watchdog.

    Example: sudo edge-sdk service install -- --camera 0 --serial /dev/ttyTHS0 --preview 0.0.0.0:8080
    """
    from device.service import default_executable, install_unit, render_unit

    text = render_unit(
        run_args or ["--camera", "0"],
        executable=executable or default_executable() or "/usr/local/bin/edge-sdk",
        user=user,
        watchdog_seconds=watchdog,
    )
    if print_only:
        typer.echo(text, nl=False)
        return
    for message in install_unit(text, unit_dir=unit_dir, enable=enable):
        typer.echo(message)


def register(app: typer.Typer) -> None:
    """Add `doctor` and `service` to the root app."""
    app.command("doctor")(doctor)
    app.add_typer(service_app, name="service")
