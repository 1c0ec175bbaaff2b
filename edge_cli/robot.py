"""Robot commands: `run`, `bench`, `doctor`, `install`, `rollback`, `list`, `status` and `service install`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional

import typer

from edge_sdk.quiet import VERBOSE_HELP, quiet_libraries

_MAX_CAMERA_SIDE = 8192
_MAX_THREADS = 256
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
        None, "--camera", min=0, max=255, help="Camera index (/dev/videoN) (default: 0 when --source is not given)."
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
    baud: int = typer.Option(115200, "--baud", min=300, max=12_500_000, help="Serial baud rate."),
    serial_mode: str = typer.Option(
        "binary",
        "--serial-mode",
        help="binary: the framed protocol of docs/serial-protocol.md; text: one readable line per message (debugging).",
    ),
    preview: Optional[str] = typer.Option(None, "--preview", help="Serve a live preview page on HOST:PORT."),
    metrics: Optional[str] = typer.Option(
        None,
        "--metrics",
        help="Serve Prometheus metrics at http://HOST:PORT/metrics (and at /metrics of --preview); "
        "needs the monitoring extra (prometheus-client).",
    ),
    mqtt: Optional[str] = typer.Option(
        None,
        "--mqtt",
        help="Publish detections to TOPIC/detections and status events to TOPIC/status of an MQTT broker, "
        "QoS 1: mqtt://HOST[:PORT]/TOPIC[?queue=N] (N messages kept while the broker is away, default 1000; "
        "the oldest are dropped and counted). Needs the monitoring extra (paho-mqtt).",
    ),
    record: Optional[Path] = typer.Option(
        None,
        "--record",
        help="Record annotated video to this .avi or .mp4 file; past 256 MB it becomes FILE-0001.avi and so on "
        "(the names are printed at the end).",
    ),
    jsonl: Optional[str] = typer.Option(
        None, "--jsonl", help="Write one JSON line per frame to FILE, or '-' for stdout."
    ),
    coco_results: Optional[Path] = typer.Option(
        None,
        "--coco-results",
        help="Write the detections as COCO results JSON to FILE at the end, for `edge-sdk eval --gt GT --dt FILE` "
        "(use a low --score-threshold such as 0.01 for mAP). image_id: the frame_id (position in the file or "
        "folder) and category_id: the class index, unless --coco-gt gives them.",
    ),
    coco_gt: Optional[Path] = typer.Option(
        None,
        "--coco-gt",
        help="COCO ground truth of the --source folder: image_id is the id it gives the image's file name "
        "(images it does not list are left out) and category_id the id of the category named like the class.",
    ),
    max_frames: Optional[int] = typer.Option(
        None, "--max-frames", min=1, help="Stop after this many processed frames."
    ),
    precision: Optional[str] = typer.Option(None, "--precision", help=_PRECISION_HELP),
    device: str = typer.Option("auto", "--device", help="auto, cpu or gpu."),
    dla: Optional[int] = typer.Option(
        None, "--dla", min=0, max=1, help="Run TensorRT layers on DLA core 0 or 1 (Xavier/Orin; fp16 or int8)."
    ),
    threads: Optional[int] = typer.Option(
        None, "--threads", min=1, max=_MAX_THREADS, help="CPU math threads (default: all cores)."
    ),
    score_threshold: Optional[float] = typer.Option(
        None, "--score-threshold", min=0.0, max=1.0, help="Minimum score (default: the bundle's)."
    ),
    classes: Optional[str] = typer.Option(
        None, "--classes", help="Comma-separated class names to keep (default: all)."
    ),
    width: Optional[int] = typer.Option(
        None, "--width", min=1, max=_MAX_CAMERA_SIDE, help="Requested camera width in pixels."
    ),
    height: Optional[int] = typer.Option(
        None, "--height", min=1, max=_MAX_CAMERA_SIDE, help="Requested camera height in pixels."
    ),
    fps: Optional[float] = typer.Option(
        None,
        "--fps",
        min=0.1,
        max=1000.0,
        help="Requested camera frame rate; with --realtime, the pace of a video file or folder.",
    ),
    loop: bool = typer.Option(False, "--loop", help="Restart a video file or image folder at its end."),
    realtime: bool = typer.Option(
        False,
        "--realtime",
        help="Play a video file, image folder or the demo at its frame rate (or --fps) like a camera, newest "
        "frame only, to rehearse a live run. Without it every frame is processed and none is dropped.",
    ),
    open_timeout: float = typer.Option(
        10.0,
        "--open-timeout",
        min=0.1,
        max=3600.0,
        help="Seconds an rtsp:// or http:// stream may take to answer before giving up.",
    ),
    engine_cache: Optional[str] = typer.Option(
        None, "--engine-cache", envvar="EDGE_SDK_ENGINE_CACHE", help="Folder for cached TensorRT engines."
    ),
    trusted_key: Optional[Path] = typer.Option(
        None, "--trusted-key", help="Require the bundle to be signed by this public key (file or folder)."
    ),
    verbose: bool = typer.Option(False, "--verbose", help=VERBOSE_HELP),
) -> None:
    """Run the detector on a camera, stream, video file or image folder.

    Cameras and streams are read newest frame only: frames the detector has
    no time for are dropped and counted. A video file or an image folder is
    processed frame by frame to its end, none dropped; a JSON line's frame_id
    is the frame's position in it, and a folder's lines name the image
    (source_name). Shows a live status line; stops cleanly on Ctrl-C or
    SIGTERM. Under a systemd Type=notify unit it reports READY, WATCHDOG
    (only while frames flow) and STATUS.

    Example: edge-sdk run --source boards/ --bundle m.edgebundle --jsonl out.jsonl
    """
    quiet_libraries(verbose)
    from device.runtime import RunOptions, run

    if coco_gt is not None and coco_results is None:
        raise typer.BadParameter("goes with --coco-results FILE", param_hint="--coco-gt")
    options = RunOptions(
        source=_source_uri(camera, source),
        bundle=str(bundle) if bundle else None,
        root=root,
        serial=serial,
        baud=baud,
        serial_mode=serial_mode,
        preview=preview,
        metrics=metrics,
        mqtt=mqtt,
        record=str(record) if record else None,
        jsonl=jsonl,
        coco_results=str(coco_results) if coco_results else None,
        coco_gt=str(coco_gt) if coco_gt else None,
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
        realtime=realtime,
        open_timeout=open_timeout,
        engine_cache=engine_cache,
        trusted_keys=str(trusted_key) if trusted_key else None,
    )
    run(options)


def bench_command(
    bundle: Path = typer.Option(..., "--bundle", help="Bundle file to measure.", show_default=False),
    source: str = typer.Option(
        "demo", "--source", help="Frames for the full pipeline: a video file, an image folder or 'demo'."
    ),
    frames: int = typer.Option(
        100, "--frames", min=2, max=100_000, help="Frames timed on each side, split over the rounds."
    ),
    rounds: int = typer.Option(5, "--rounds", min=1, max=100, help="Alternating rounds of the two measurements."),
    precision: Optional[str] = typer.Option(None, "--precision", help=_PRECISION_HELP),
    device: str = typer.Option("auto", "--device", help="auto, cpu or gpu."),
    dla: Optional[int] = typer.Option(None, "--dla", min=0, max=1, help="DLA core 0 or 1."),
    threads: Optional[int] = typer.Option(
        None, "--threads", min=1, max=_MAX_THREADS, help="CPU math threads (default: all cores)."
    ),
    verbose: bool = typer.Option(False, "--verbose", help=VERBOSE_HELP),
) -> None:
    """Measure how fast the predictor runs alone and inside the full pipeline.

    predictor-only: Paddle Inference alone (inputs in, boxes out) on source
    frames preprocessed beforehand: the ceiling for any pipeline.
    full pipeline: `edge-sdk run` without sinks: the source read frame by
    frame, preprocessed, inferred and postprocessed, in turn in one thread
    when a CPU predictor takes every core, else with reading and
    preprocessing overlapped with inference (the line says which). fps:
    frames per second; e2e p50/p99: milliseconds from capture to detections;
    dropped: frames never processed (0: every frame is taken).
    predictor-only fps and ms: frames per second and median milliseconds
    per frame of the predictor alone.
    ratio: full pipeline fps / predictor-only fps, the median of the
    per-round ratios over alternating rounds of both (so a change of
    machine load hits both alike): the share of the predictor's speed the
    runtime keeps. It cannot truly exceed 1; above 1.05 means the load
    changed during the rounds and a note says so.

    Example: edge-sdk bench --bundle m.edgebundle --source demo --frames 200
    """
    quiet_libraries(verbose)
    from device.runtime import bench_bundle

    result = bench_bundle(
        bundle,
        source=source,
        frames=frames,
        rounds=rounds,
        precision=precision,
        device=device,
        dla_core=dla,
        threads=threads,
    )
    typer.echo("predictor: {}".format(result["plan"]))
    typer.echo(
        "predictor-only  {:8.1f} fps  ({:.1f} ms median per frame)".format(
            result["predictor_fps"], result["predictor_ms"]
        )
    )
    typer.echo(
        "full pipeline   {:8.1f} fps  (e2e p50 {:.1f} ms, p99 {:.1f} ms, dropped {}; {})".format(
            result["pipeline_fps"],
            result["e2e_p50_ms"],
            result["e2e_p99_ms"],
            result["dropped"],
            "overlapped" if result["overlap"] else "in turn, one thread",
        )
    )
    typer.echo(
        "ratio           {:8.3f}  (median of {} rounds: {})".format(
            result["ratio"], len(result["round_ratios"]), " ".join("{:.2f}".format(r) for r in result["round_ratios"])
        )
    )
    if result["ratio"] > 1.05:
        typer.echo(
            "note: the pipeline measured faster than its own predictor: the machine's load changed during the "
            "rounds; rerun on an idle machine or with more --frames"
        )


_DEFAULT_ROOT = "/var/lib/edge-sdk"
_ROOT_HELP = "The robot's bundle store (versions, active pointer, history, keys/, robot.json)."


def install_command(
    file: Path = typer.Argument(..., help="Bundle file (NAME-VERSION.edgebundle) to install.", show_default=False),
    root: Path = typer.Option(_DEFAULT_ROOT, "--root", help=_ROOT_HELP),
    trusted_keys: Optional[Path] = typer.Option(
        None,
        "--trusted-keys",
        help="Public key file or folder (*.pem, *.pub): the bundle must be signed by one of them "
        "(default: ROOT/keys, where signatures are required only once it holds a key).",
    ),
    allow_downgrade: bool = typer.Option(
        False, "--allow-downgrade", help="Install a version older than (or a different build of) the active one."
    ),
    min_fps: float = typer.Option(
        0.0, "--min-fps", min=0.0, help="Health check: minimum frames per second (0: measure only)."
    ),
    fps_frames: int = typer.Option(
        10, "--fps-frames", min=1, max=10_000, help="Health check: frames timed for the FPS figure."
    ),
    keep: int = typer.Option(
        3, "--keep", min=0, max=100, help="Old versions kept besides the active one (the oldest are pruned)."
    ),
    device: str = typer.Option("auto", "--device", help="Health check predictor device: auto, cpu or gpu."),
    precision: Optional[str] = typer.Option(
        None,
        "--precision",
        help="Health check precision: give the service's `run --precision` (default: the bundle's).",
    ),
    dla: Optional[int] = typer.Option(
        None, "--dla", min=0, max=1, help="Health check on DLA core 0 or 1: give the service's `run --dla`."
    ),
    threads: Optional[int] = typer.Option(
        None, "--threads", min=1, max=_MAX_THREADS, help="Health check CPU threads: give the service's `run --threads`."
    ),
    engine_cache: Optional[str] = typer.Option(
        None,
        "--engine-cache",
        help="Where the health check builds the TensorRT engine the service loads "
        "(default: $EDGE_SDK_ENGINE_CACHE, else /var/cache/edge-sdk/engines when run as root).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON (for `edge-sdk flash`)."),
) -> None:
    """Verify a bundle, switch to it, health-check it and commit; restore the previous version on failure.

    On a GPU the health check builds and caches the TensorRT engine `edge-sdk run` will load (give it
    the service's --precision/--dla/--threads), owned by the installed service's user.

    Example: sudo edge-sdk install m.edgebundle
    """
    import os

    from rich.console import Console

    from device.health import HealthSettings
    from device.install import install_bundle
    from device.predictor import install_cache_root

    console = Console(stderr=True)
    with console.status("installing {}".format(file.name)) as status:
        result = install_bundle(
            file,
            root,
            trusted_keys,
            allow_downgrade,
            health=HealthSettings(
                min_fps=min_fps,
                fps_frames=fps_frames,
                device=device,
                precision=precision,
                dla_core=dla,
                threads=threads,
                engine_cache=engine_cache or install_cache_root(dict(os.environ), os.geteuid() == 0),
            ),
            keep=keep,
            log=lambda message: status.update(message),
        )
    for action in result.recovered:
        console.print("[yellow]recovered:[/] " + action)
    if result.health is not None:
        for warning in result.health.warnings:
            console.print("[yellow]warning:[/] " + warning)
    if as_json:
        doc = {
            "outcome": result.outcome,
            "name": result.name,
            "version": result.version,
            "sha256": result.sha256,
            "dir": result.dirname,
            "summary": result.summary(),
            "health": None if result.health is None else result.health.to_dict(),
            "engine_key": None if result.health is None or not result.health.engine else result.health.engine["key"],
            "pruned": result.pruned,
        }
        typer.echo(json.dumps(doc, sort_keys=True))
        return
    typer.echo(result.summary())
    for dirname in result.pruned:
        typer.echo("pruned " + dirname)


def rollback_command(root: Path = typer.Option(_DEFAULT_ROOT, "--root", help=_ROOT_HELP)) -> None:
    """Make the previous good version active again (the current one is kept, marked rolled-back).

    Example: sudo edge-sdk rollback
    """
    from device.install import rollback

    active, previous = rollback(root)
    typer.echo("active: {}; previous: {}".format(active, previous or "none"))


def list_command(
    root: Path = typer.Option(_DEFAULT_ROOT, "--root", help=_ROOT_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the versions as a JSON list."),
) -> None:
    """Show installed versions, newest first: active/previous (else the status), bundle, build (sha256
    prefix), install time (UTC), signer key (prefix) and health; fits an 80-column terminal. --json has
    every field in full.

    Example: edge-sdk list
    """
    from rich import box
    from rich.console import Console
    from rich.table import Table

    from device.install import list_versions

    rows = list_versions(root)
    if as_json:
        typer.echo(json.dumps(rows, sort_keys=True))
        return
    if not rows:
        typer.echo("no versions installed in {}".format(root))
        return
    table = Table(
        title="bundles in {}".format(root),
        title_justify="left",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        padding=(0, 1, 0, 0),
    )
    table.add_column("state", no_wrap=True)
    table.add_column("bundle")
    for column in ("build", "installed (UTC)", "signer"):
        table.add_column(column, no_wrap=True)
    table.add_column("health")
    for row in rows:
        state = "active" if row["active"] else ("previous" if row["previous"] else row["status"])
        health = row["health"] + ("" if row["fps"] is None else " ({:.1f} FPS)".format(row["fps"]))
        table.add_row(
            state,
            "{} {}".format(row["name"], row["version"]),
            row["sha256"][:8],
            row["installed_at"][:16].replace("T", " "),
            (row["signed_by"] or "unsigned")[:8],
            health,
        )
    Console().print(table)


def status_command(
    root: Path = typer.Option(_DEFAULT_ROOT, "--root", help=_ROOT_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the status as one JSON object."),
) -> None:
    """This robot at a glance: active bundle and its health record, `systemctl is-active edge-sdk`, uptime,
    and the age of the last frame the runtime processed (from the runtime/status.json it keeps in the store).

    Example: edge-sdk status --json
    """
    from device.robot_status import robot_status, status_cells

    doc = robot_status(root)
    if as_json:
        typer.echo(json.dumps(doc, sort_keys=True))
        return
    for key, value in status_cells(doc).items():
        typer.echo("{:<11} {}".format(key + ":", value))


service_app = typer.Typer(
    help="Run edge-sdk as a systemd service on the robot.\n\nExample: sudo edge-sdk service install -- --camera 0 --serial /dev/ttyTHS0",
    no_args_is_help=True,
)


def doctor(
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
    and dialout membership, the engine cache folder, free disk and the power mode.

    Example: edge-sdk doctor
    """
    from device.doctor import FAIL, OK, WARN, diagnose, probe_machine
    from device.predictor import SYSTEM_CACHE_ROOT

    checks = diagnose(probe_machine("/", engine_cache or SYSTEM_CACHE_ROOT, with_paddle=not skip_paddle))
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


def _check_run_args(run_args: List[str]) -> Dict[str, Any]:
    """Parse `run_args` with `edge-sdk run`'s own parser: its parameters by name; raise InstallError
    naming the first problem."""
    from edge_sdk.errors import InstallError

    # click's UsageError (bad option, value or count), imported from click itself or from typer's copy of it.
    usage_error = typer.BadParameter.__bases__[0]
    probe = typer.Typer()
    probe.command("run")(run_command)
    try:
        return typer.main.get_command(probe).make_context("edge-sdk run", list(run_args), help_option_names=[]).params
    except usage_error as exc:
        raise InstallError("invalid run arguments: {}".format(exc.format_message())) from None


@service_app.command("install")
def service_install(
    run_args: Optional[List[str]] = typer.Argument(
        None, help="Arguments for `edge-sdk run`, after `--` (default: --camera 0)."
    ),
    unit_dir: str = typer.Option("/etc/systemd/system", help="Where to write edge-sdk.service."),
    user: str = typer.Option("edge", help="User the service runs as (needs the video and dialout groups)."),
    watchdog: int = typer.Option(
        30, min=2, max=3600, help="Seconds without frames before systemd restarts the runtime."
    ),
    executable: Optional[str] = typer.Option(None, help="Path of edge-sdk [default: the one on PATH]."),
    enable: bool = typer.Option(True, help="Run systemctl daemon-reload and enable --now."),
    print_only: bool = typer.Option(False, "--print", help="Print the unit instead of installing it."),
) -> None:
    """Install a systemd unit that runs `edge-sdk run` with Restart=always and a watchdog.

    Also makes the store's runtime/ folder (`run --root`, default /var/lib/edge-sdk), where the runtime
    keeps the status.json that `status` and `fleet status` read, writable for --user.

    Example: sudo edge-sdk service install -- --camera 0 --serial /dev/ttyTHS0 --preview 0.0.0.0:8080
    """
    from device.service import default_executable, install_unit, render_unit
    from device.store import DEFAULT_ROOT

    run_args = run_args or ["--camera", "0"]
    store_root = _check_run_args(run_args).get("root") or DEFAULT_ROOT
    text = render_unit(
        run_args,
        executable=executable or default_executable() or "/usr/local/bin/edge-sdk",
        user=user,
        watchdog_seconds=watchdog,
    )
    if print_only:
        typer.echo(text, nl=False)
        return
    for message in install_unit(text, unit_dir=unit_dir, enable=enable, store_root=store_root):
        typer.echo(message)


def register(app: typer.Typer) -> None:
    """Add the robot's commands to the root app."""
    app.command("run")(run_command)
    app.command("bench")(bench_command)
    app.command("doctor")(doctor)
    app.command("install")(install_command)
    app.command("rollback")(rollback_command)
    app.command("list")(list_command)
    app.command("status")(status_command)
    app.add_typer(service_app, name="service")
