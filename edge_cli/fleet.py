"""Fleet commands, run on the workstation: `flash` a bundle to many robots over ssh, and
`fleet status`: every robot's bundle, health, service, uptime and last frame in one table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, List, Optional, Tuple

import typer

# Options `flash` and `fleet status` share (one declaration each).
_TO = typer.Option(
    [],
    "--to",
    help="Robot as USER@HOST:PORT/ROOT (user, port and /ROOT optional; ROOT is its install root); repeat for each robot.",
    show_default=False,
)
_ROBOTS = typer.Option(
    None, "--robots", help="File listing robots, one USER@HOST:PORT/ROOT per line (# comments allowed)."
)
_IDENTITY = typer.Option(None, "--identity", "-i", help="ssh private key file.")
_REMOTE_ROOT = typer.Option(
    None, "--remote-root", help="Install root on the robots (a /path in --to wins); the robots' default otherwise."
)
_REMOTE_COMMAND = typer.Option(
    "edge-sdk", "--remote-command", help="edge-sdk on the robots (an absolute path, or e.g. 'sudo edge-sdk')."
)
_KNOWN_HOSTS = typer.Option(
    None, "--known-hosts", help="known_hosts file for the robots' host keys (default: ssh's own)."
)
_STRICT_HOST_KEY_CHECKING = typer.Option(
    "yes", "--strict-host-key-checking", help="ssh StrictHostKeyChecking: yes, accept-new or no."
)
_CONNECT_TIMEOUT = typer.Option(10, "--connect-timeout", min=1, max=600, help="ssh connect timeout in seconds.")


def _targets_and_options(
    to: List[str],
    robots: Optional[Path],
    identity: Optional[Path],
    known_hosts: Optional[Path],
    strict_host_key_checking: str,
    connect_timeout: int,
) -> Tuple[List[Any], Any]:
    """The robots of --to and --robots, and the ssh options; InstallError for a bad robot or option."""
    from device.flash import SshOptions, parse_target, read_targets_file
    from edge_sdk.errors import InstallError

    texts = list(to) + (read_targets_file(robots) if robots is not None else [])
    if not texts:
        raise InstallError("no robots given: use --to USER@HOST:PORT/ROOT or --robots FILE")
    if strict_host_key_checking not in ("yes", "accept-new", "no"):
        raise InstallError("--strict-host-key-checking must be yes, accept-new or no")
    targets = [parse_target(text) for text in texts]
    options = SshOptions(
        identity=None if identity is None else str(identity),
        known_hosts=None if known_hosts is None else str(known_hosts),
        strict_host_key_checking=strict_host_key_checking,
        connect_timeout=connect_timeout,
    )
    return targets, options


def flash_command(
    file: Path = typer.Argument(..., help="Bundle file to flash.", show_default=False),
    to: List[str] = _TO,
    robots: Optional[Path] = _ROBOTS,
    parallel: int = typer.Option(4, "--parallel", min=1, max=256, help="Robots flashed at the same time."),
    identity: Optional[Path] = _IDENTITY,
    remote_root: Optional[str] = _REMOTE_ROOT,
    remote_command: str = _REMOTE_COMMAND,
    known_hosts: Optional[Path] = _KNOWN_HOSTS,
    strict_host_key_checking: str = _STRICT_HOST_KEY_CHECKING,
    connect_timeout: int = _CONNECT_TIMEOUT,
    allow_downgrade: bool = typer.Option(False, "--allow-downgrade", help="Passed to the robots' install."),
    min_fps: Optional[float] = typer.Option(None, "--min-fps", min=0.0, help="Passed to the robots' install."),
    precision: Optional[str] = typer.Option(
        None, "--precision", help="Passed to the robots' install: give the service's `run --precision`."
    ),
    dla: Optional[int] = typer.Option(
        None, "--dla", min=0, max=1, help="Passed to the robots' install: give the service's `run --dla`."
    ),
    threads: Optional[int] = typer.Option(
        None, "--threads", min=1, max=256, help="Passed to the robots' install: give the service's `run --threads`."
    ),
    as_json: bool = typer.Option(
        False, "--json", help="Print the per-robot results as a JSON list instead of a table."
    ),
) -> None:
    """Copy a bundle to robots over ssh and install it there; one line per robot, exit 1 if any failed.

    The robots' install health check builds the TensorRT engine their service loads when given the
    service's --precision/--dla/--threads (else the service builds its own at its first start).

    Example: edge-sdk flash m.edgebundle --to edge@robot-07 --to edge@robot-08
    """
    from rich.console import Console
    from rich.table import Table

    from device.flash import FlashPlan, flash
    from edge_sdk.bundle import inspect_bundle
    from edge_sdk.progress import progress_display

    targets, options = _targets_and_options(
        to, robots, identity, known_hosts, strict_host_key_checking, connect_timeout
    )
    info = inspect_bundle(file)  # refuse a damaged bundle before contacting any robot
    install_args = []  # type: List[str]
    if allow_downgrade:
        install_args.append("--allow-downgrade")
    for flag, value in (("--min-fps", min_fps), ("--precision", precision), ("--dla", dla), ("--threads", threads)):
        if value is not None:
            install_args += [flag, str(value)]
    plan = FlashPlan(file, info["sha256"], remote_command, remote_root, install_args)
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


fleet_app = typer.Typer(
    help="Look after many robots at once, over ssh.\n\nExample: edge-sdk fleet status --robots fleet.txt",
    no_args_is_help=True,
)


@fleet_app.command("status")
def status_command(
    to: List[str] = _TO,
    robots: Optional[Path] = _ROBOTS,
    parallel: int = typer.Option(16, "--parallel", min=1, max=256, help="Robots asked at the same time."),
    identity: Optional[Path] = _IDENTITY,
    remote_root: Optional[str] = _REMOTE_ROOT,
    remote_command: str = _REMOTE_COMMAND,
    known_hosts: Optional[Path] = _KNOWN_HOSTS,
    strict_host_key_checking: str = _STRICT_HOST_KEY_CHECKING,
    connect_timeout: int = _CONNECT_TIMEOUT,
    as_json: bool = typer.Option(
        False, "--json", help="Print a JSON list: robot, outcome, detail and the robot's `edge-sdk status --json`."
    ),
) -> None:
    """Every robot's active bundle, health record, service state, uptime and last-frame age, asked over
    ssh in parallel (one `edge-sdk status --json` each); exit 1 if any robot could not be read.

    Example: edge-sdk fleet status --robots fleet.txt
    """
    from rich.console import Console
    from rich.table import Table

    from device.flash import fleet_status
    from device.robot_status import status_cells

    targets, options = _targets_and_options(
        to, robots, identity, known_hosts, strict_host_key_checking, connect_timeout
    )
    results = fleet_status(targets, options, remote_command, remote_root, parallel)
    failed = [r for r in results if r.outcome != "ok"]
    if as_json:
        rows = [
            {"robot": r.target.label, "outcome": r.outcome, "detail": r.detail, "status": r.status} for r in results
        ]
        typer.echo(json.dumps(rows, sort_keys=True))
    else:
        columns = ("bundle", "health", "service", "uptime", "last frame")
        table = Table(title="fleet status ({} robots)".format(len(results)), title_justify="left")
        for column in ("robot",) + columns:
            table.add_column(column, overflow="fold")
        for result in results:
            if result.status is None:
                table.add_row(result.target.label, "[red]{}[/]".format(result.outcome))
                continue
            cells = status_cells(result.status)
            table.add_row(result.target.label, *[cells[column] for column in columns])
        Console().print(table)
        for result in failed:
            typer.echo("{}: {}".format(result.target.label, result.detail))
        typer.echo(
            "{} robots: {} read, {} unreachable or failed".format(len(results), len(results) - len(failed), len(failed))
        )
    if failed:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add `flash` and the `fleet` group to the root app."""
    app.command("flash")(flash_command)
    app.add_typer(fleet_app, name="fleet")
