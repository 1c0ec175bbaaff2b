"""Fleet commands, run on the workstation: `flash` a bundle to many robots over ssh."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer


def flash_command(
    file: Path = typer.Argument(..., help="Bundle file to flash.", show_default=False),
    to: List[str] = typer.Option(
        [],
        "--to",
        help="Robot as USER@HOST:PORT/ROOT (user, port and /ROOT optional; ROOT is its install root); repeat for each robot.",
        show_default=False,
    ),
    robots: Optional[Path] = typer.Option(
        None, "--robots", help="File listing robots, one USER@HOST:PORT/ROOT per line (# comments allowed)."
    ),
    parallel: int = typer.Option(4, "--parallel", min=1, max=256, help="Robots flashed at the same time."),
    identity: Optional[Path] = typer.Option(None, "--identity", "-i", help="ssh private key file."),
    remote_root: Optional[str] = typer.Option(
        None, "--remote-root", help="Install root on the robots (a /path in --to wins); the robots' default otherwise."
    ),
    remote_command: str = typer.Option(
        "edge-sdk", "--remote-command", help="edge-sdk on the robots (an absolute path, or e.g. 'sudo edge-sdk')."
    ),
    known_hosts: Optional[Path] = typer.Option(
        None, "--known-hosts", help="known_hosts file for the robots' host keys (default: ssh's own)."
    ),
    strict_host_key_checking: str = typer.Option(
        "yes", "--strict-host-key-checking", help="ssh StrictHostKeyChecking: yes, accept-new or no."
    ),
    connect_timeout: int = typer.Option(
        10, "--connect-timeout", min=1, max=600, help="ssh connect timeout in seconds."
    ),
    allow_downgrade: bool = typer.Option(False, "--allow-downgrade", help="Passed to the robots' install."),
    min_fps: Optional[float] = typer.Option(None, "--min-fps", min=0.0, help="Passed to the robots' install."),
    as_json: bool = typer.Option(
        False, "--json", help="Print the per-robot results as a JSON list instead of a table."
    ),
) -> None:
    """Copy a bundle to robots over ssh and install it there; one line per robot, exit 1 if any failed."""
    from rich.console import Console
    from rich.table import Table

    from device.flash import FlashPlan, SshOptions, flash, parse_target, read_targets_file
    from edge_sdk.bundle import inspect_bundle
    from edge_sdk.errors import InstallError
    from edge_sdk.progress import progress_display

    texts = list(to) + (read_targets_file(robots) if robots is not None else [])
    if not texts:
        raise InstallError("no robots given: use --to USER@HOST:PORT/ROOT or --robots FILE")
    if strict_host_key_checking not in ("yes", "accept-new", "no"):
        raise InstallError("--strict-host-key-checking must be yes, accept-new or no")
    targets = [parse_target(text) for text in texts]
    info = inspect_bundle(file)  # refuse a damaged bundle before contacting any robot
    install_args = []  # type: List[str]
    if allow_downgrade:
        install_args.append("--allow-downgrade")
    if min_fps is not None:
        install_args += ["--min-fps", str(min_fps)]
    plan = FlashPlan(file, info["sha256"], remote_command, remote_root, install_args)
    options = SshOptions(
        identity=None if identity is None else str(identity),
        known_hosts=None if known_hosts is None else str(known_hosts),
        strict_host_key_checking=strict_host_key_checking,
        connect_timeout=connect_timeout,
    )
    console = Console(stderr=True)
    progress = progress_display(console, field="step")
    steps = {"checking": 1, "copying": 2, "installing": 3}
    with progress:
        tasks = {t: progress.add_task(t.label, total=4, step="waiting") for t in targets}
        results = flash(
            plan,
            targets,
            options,
            parallel,
            on_step=lambda t, s: progress.update(tasks[t], completed=steps.get(s, 0), step=s),
            on_done=lambda r: progress.update(tasks[r.target], completed=4, step=r.outcome),
        )
    failed = [r for r in results if not r.ok]
    if as_json:
        rows = [
            {"robot": r.target.label, "outcome": r.outcome, "detail": r.detail, "seconds": round(r.seconds, 2)}
            for r in results
        ]
        typer.echo(json.dumps(rows))
        if failed:
            raise typer.Exit(1)
        return
    styles = {"installed": "green", "skipped": "cyan", "rejected": "red", "unreachable": "red", "failed": "red"}
    table = Table(
        title="flash {} ({} {})".format(file.name, info["manifest"]["name"], info["manifest"]["version"]),
        title_justify="left",
    )
    for column in ("robot", "result", "detail", "time"):
        table.add_column(column, overflow="fold")
    for result in results:
        style = styles.get(result.outcome, "")
        table.add_row(
            result.target.label,
            "[{}]{}[/]".format(style, result.outcome),
            result.detail,
            "{:.1f} s".format(result.seconds),
        )
    Console().print(table)
    typer.echo(
        "{} robots: {} installed, {} skipped, {} failed".format(
            len(results),
            sum(r.outcome == "installed" for r in results),
            sum(r.outcome == "skipped" for r in results),
            len(failed),
        )
    )
    if failed:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add `flash` to the root app."""
    app.command("flash")(flash_command)
