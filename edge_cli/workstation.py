"""Workstation commands: `compress`, `demo`, `export` and `eval`."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import Any, List, Optional, Tuple

import typer

from edge_sdk.manifest import ARCHS
from edge_sdk.quiet import VERBOSE_HELP, quiet_libraries

INTERRUPTED_EXIT = 130
WORKER_SCRIPT = Path(__file__).resolve().parent / "worker.py"
"""The script paddle.distributed.launch runs in every process (it runs files, not modules)."""
DEMO_RECIPE = Path(__file__).resolve().parent / "recipes" / "demo.yml"
"""The built-in demo recipe, shipped as package data."""
DEMO_TRAIN_PROCESSES = 2
"""The demo trains data-parallel on this many CPU processes: one dygraph process keeps about one core busy."""


def launch_command(
    gpus: str, argv: List[str], python: Optional[str] = None, log_dir: Optional[str] = None
) -> List[str]:
    """The command that re-runs this CLI invocation on several devices with paddle.distributed.launch.

    gpus: "0,1,2,3" (GPU ids) or "cpu:N" (N CPU processes, gloo; `--devices` must then be left out).
    argv: this process's arguments after the program name; `--gpus` and its value are removed.
    The launcher runs a `.py` file (it has no `-m`), so the entry is edge_cli/worker.py.
    """
    gpus = gpus.strip()
    rest: List[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--gpus":
            skip = True
            continue
        if arg.startswith("--gpus="):
            continue
        rest.append(arg)
    entry = str(WORKER_SCRIPT)
    command = [python or sys.executable, "-m", "paddle.distributed.launch"]
    if gpus.startswith("cpu:"):
        count = gpus[4:]
        if not count.isdigit() or int(count) < 1:
            raise ValueError("--gpus cpu:N needs a positive process count, got {!r}".format(gpus))
        command += ["--nproc_per_node", count]
    else:
        ids = [g.strip() for g in gpus.split(",") if g.strip()]
        if not ids or not all(g.isdigit() for g in ids):
            raise ValueError("--gpus expects device ids like 0,1,2,3 (or cpu:N), got {!r}".format(gpus))
        command += ["--devices", ",".join(ids)]
    if log_dir:
        command += ["--log_dir", log_dir]
    return command + [entry] + rest


def _relaunch(gpus: str, workdir: Path, recipe_path: Path, data: Optional[Path], verbose: bool = False) -> None:
    """Re-run this command under paddle.distributed.launch on `gpus` (see launch_command); exits with its code.

    Checked first, so that mistakes end in one line before anything starts: the --gpus value, CUDA
    and the device ids, the recipe and the data folder. See edge_cli.launcher.run_launcher for
    what the launcher is given and what is kept of its output and files.
    """
    import shutil
    import tempfile

    from compress.config import load_recipe
    from compress.data import prepare_data
    from edge_cli.launcher import check_cuda_devices, run_launcher
    from edge_sdk.errors import RecipeError

    try:
        launch_command(gpus, [])
    except ValueError as exc:
        raise RecipeError(str(exc)) from None
    spec = gpus.strip()
    if spec.startswith("cpu:"):
        processes = int(spec[4:])
    else:
        ids = [int(g) for g in spec.split(",") if g.strip()]
        check_cuda_devices(ids, "--gpus {}".format(spec))
        processes = len(ids)
    recipe = load_recipe(recipe_path)
    if data is not None or recipe.data.path != "synthetic":
        prepare_data(recipe, workdir, data, progress=False)
    logs = workdir / "launch-logs"
    final_lines = []

    def show(line: str) -> None:
        if line.startswith(("error:", "interrupted")):
            final_lines.append(line)
        typer.echo(line, err=line.startswith(("error:", "interrupted")))

    log_dir = tempfile.mkdtemp(prefix="edge-sdk-launch-")
    try:
        command = launch_command(gpus, sys.argv[1:], log_dir=log_dir)
        if "--workdir" not in sys.argv:
            command += ["--workdir", str(workdir)]
        if verbose:
            typer.echo(" ".join(command), err=True)
        typer.echo("running {} data-parallel processes (their logs: {})".format(processes, logs), err=True)
        code = run_launcher(
            command, Path(log_dir), logs, os.environ, verbose, out=show, err=lambda line: typer.echo(line, err=True)
        )
    except KeyboardInterrupt:
        if not any(line.startswith("interrupted") for line in final_lines):
            rank0 = logs / "workerlog.0"
            said = [
                line
                for line in (rank0.read_text(errors="replace").splitlines() if rank0.is_file() else [])
                if line.startswith("interrupted")
            ]
            typer.echo(said[-1] if said else "interrupted", err=True)
        raise typer.Exit(INTERRUPTED_EXIT) from None
    finally:
        shutil.rmtree(log_dir, ignore_errors=True)
    if code not in (0, INTERRUPTED_EXIT) and not final_lines:
        typer.echo("error: a data-parallel process failed (exit code {}); see {}".format(code, logs), err=True)
    raise typer.Exit(RecipeError.exit_code if any(line.startswith("error:") for line in final_lines) else code)


def _run_pipeline(
    recipe_path: Path,
    workdir: Path,
    out: Optional[Path],
    data: Optional[Path],
    resume: bool,
    progress: bool,
    stages: Optional[str] = None,
) -> None:
    from rich.console import Console

    from compress.config import load_recipe
    from compress.pipeline import run
    from compress.train import TrainingInterrupted

    console = Console(stderr=True)
    recipe = load_recipe(recipe_path)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM (systemd, kill) ends a run as Ctrl-C does
    try:
        result = run(
            recipe,
            workdir,
            out=out,
            data_dir=data,
            resume=resume,
            progress=progress,
            log=lambda m: console.print(m, highlight=False),
            stages=[s.strip() for s in stages.split(",") if s.strip()] if stages else None,
        )
    except TrainingInterrupted as exc:
        console.print(
            "interrupted: checkpoint saved to {} (continue with --resume)".format(exc.checkpoint), highlight=False
        )
        raise typer.Exit(INTERRUPTED_EXIT) from None
    except KeyboardInterrupt:
        console.print("interrupted", highlight=False)
        raise typer.Exit(INTERRUPTED_EXIT) from None
    if result is None:
        return
    _print_summary(result)


def _print_summary(result) -> None:
    from rich.console import Console
    from rich.table import Table

    from compress.pipeline import summary_rows

    table = Table(title="bundle {}".format(result.bundle))
    for column in ("stage", "mAP@.5", "mAP", "GFLOPs", "params (M)", "bundle MB", "CPU ms"):
        table.add_column(column, justify="left" if column == "stage" else "right")
    for row in summary_rows(result):
        table.add_row(*row)
    console = Console()
    console.print(table)
    for line in result.speed:
        console.print(line, highlight=False)
    if result.per_class:
        parts = ["{} {:.3f}".format(c["name"], c["ap50"]) for c in result.per_class if c.get("ap50") is not None]
        console.print("AP@.5 per class: " + ", ".join(parts), highlight=False)


def compress_command(
    recipe: Path = typer.Argument(..., help="Recipe YAML (see recipes/*.yml).", exists=False),
    data: Optional[Path] = typer.Option(
        None, "--data", help="Dataset folder holding the recipe's train/val COCO files; overrides data.path."
    ),
    out: Optional[Path] = typer.Option(
        None, "--out", help="Bundle file to write (default: WORKDIR/NAME-VERSION.edgebundle)."
    ),
    gpus: Optional[str] = typer.Option(
        None,
        "--gpus",
        help="Train and fine-tune data-parallel on these GPU ids, e.g. 0,1,2,3 (or cpu:N for N CPU processes); relaunches through paddle.distributed.launch.",
    ),
    resume: bool = typer.Option(False, "--resume", help="Continue training from WORKDIR/train/last.pdckpt."),
    workdir: Optional[Path] = typer.Option(
        None, "--workdir", help="Folder for data, checkpoints, curves and the bundle (default: runs/<recipe name>)."
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
    stages: Optional[str] = typer.Option(
        None,
        "--stages",
        help="Run only these of the recipe's stages, comma-separated (e.g. prune,distill); the others are read from WORKDIR (unchanged stages are always reused).",
    ),
    verbose: bool = typer.Option(False, "--verbose", help=VERBOSE_HELP),
) -> None:
    """Train, prune, distill, quantize and export a YOLOv3 from a recipe (its `stages`), each stage cached in WORKDIR and measured on the val set; writes the bundle and WORKDIR/report.md.

    Example: edge-sdk compress recipes/demo.yml --data data/pcb
    """
    quiet_libraries(verbose)
    workdir = workdir or Path("runs") / recipe.stem
    if gpus:
        _relaunch(gpus, workdir, recipe, data, verbose)
    _run_pipeline(recipe, workdir, out, data, resume, progress, stages)


def demo_command(
    workdir: Path = typer.Option(Path("demo-out"), "--workdir", help="Folder for the data, checkpoints and bundle."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted demo run."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
    verbose: bool = typer.Option(False, "--verbose", help=VERBOSE_HELP),
) -> None:
    """Synthesize the PCB-defect data and run recipes/demo.yml on the CPU: train (data-parallel over 2 CPU processes when there are 2 cores), prune, distill, INT8, export; prints the per-stage table (about 18 minutes on 2 cores).

    Example: edge-sdk demo --workdir demo-out
    """
    quiet_libraries(verbose)
    recipe = DEMO_RECIPE
    if not recipe.is_file():
        from edge_sdk.errors import RecipeError

        raise RecipeError("the demo recipe is missing: {}".format(recipe))
    processes = min(DEMO_TRAIN_PROCESSES, os.cpu_count() or 1)
    if processes > 1 and "PADDLE_TRAINER_ID" not in os.environ:
        _relaunch("cpu:{}".format(processes), workdir, recipe, None, verbose)
    _run_pipeline(recipe, workdir, None, None, resume, progress)


def _parse_input_size(text: str) -> Tuple[int, int]:
    """ "320" -> (320, 320); "320x416" -> (320, 416) as (height, width)."""
    from edge_sdk.errors import RecipeError
    from edge_sdk.manifest import MAX_INPUT_SIDE

    parts = text.lower().split("x")
    try:
        dims = [int(p) for p in parts]
    except ValueError:
        dims = []
    if len(dims) == 1:
        dims = dims * 2
    if len(dims) != 2 or not all(32 <= d <= MAX_INPUT_SIDE and d % 32 == 0 for d in dims):
        raise RecipeError(
            "--input-size must be S or HxW, multiples of 32 from 32 to {} (e.g. 320 or 320x416), got {!r}".format(
                MAX_INPUT_SIDE, text
            )
        )
    return dims[0], dims[1]


def _parse_classes(text: Optional[str], num_classes: int) -> Tuple[Tuple[str, ...], bool]:
    """Class names from "a,b,c", or class0..K-1 when not given. Returns (names, defaulted)."""
    from edge_sdk.errors import RecipeError

    if text is None:
        return tuple("class{}".format(i) for i in range(num_classes)), True
    names = tuple(n.strip() for n in text.split(","))
    if any(not n for n in names):
        raise RecipeError("--classes has an empty name: {!r}".format(text))
    if len(set(names)) != len(names):
        raise RecipeError("--classes has duplicate names: {!r}".format(text))
    if len(names) != num_classes:
        raise RecipeError("--classes lists {} names but --num-classes is {}".format(len(names), num_classes))
    return names, False


def export_command(
    arch: str = typer.Option(..., "--arch", help="Backbone: " + ", ".join(ARCHS) + ".", show_default=False),
    weights: Path = typer.Option(
        ..., "--weights", help="PaddleDetection-layout YOLOv3 checkpoint (.pdparams).", show_default=False
    ),
    num_classes: int = typer.Option(
        ..., "--num-classes", min=1, max=10_000, help="Number of classes the model detects.", show_default=False
    ),
    input_size: str = typer.Option(
        ..., "--input-size", help="Network input: S (square) or HxW, multiples of 32 up to 4096.", show_default=False
    ),
    out: Path = typer.Option(
        ..., "--out", help="Bundle file to write (e.g. NAME-VERSION.edgebundle).", show_default=False
    ),
    classes: Optional[str] = typer.Option(
        None, "--classes", help="Comma-separated class names in class-id order (default: class0..K-1)."
    ),
    width: float = typer.Option(
        1.0, "--width", min=0.01, max=4.0, help="Channel width multiplier the checkpoint was trained with."
    ),
    name: Optional[str] = typer.Option(None, "--name", help="Bundle name (default: yolov3_ARCH)."),
    version: str = typer.Option("0.1.0", "--version", help="Bundle version."),
    golden_images: Optional[Path] = typer.Option(
        None,
        "--golden-images",
        help="Folder of images: the bundle ships --golden-count of them as golden images with this model's "
        "detections, which the robot's install compares (without them it only checks that the model loads).",
    ),
    golden_count: int = typer.Option(4, "--golden-count", min=1, max=64, help="Golden images to ship."),
    verbose: bool = typer.Option(False, "--verbose", help=VERBOSE_HELP),
) -> None:
    """Export a trained checkpoint straight to an fp32 bundle (no training, no compression).

    The checkpoint must match the architecture, width and class count exactly. Decoding and NMS use PaddleDetection's YOLOv3 defaults (conf 0.005, NMS IoU 0.45, top 1000, keep 100).

    Example: edge-sdk export --arch mobilenet_v1 --weights model.pdparams --num-classes 6 --input-size 320 --golden-images data/pcb/images --out m.edgebundle
    """
    from edge_sdk.errors import DataError, RecipeError

    quiet_libraries(verbose)
    if arch not in ARCHS:
        raise RecipeError("unknown architecture {!r}: expected one of {}".format(arch, ", ".join(ARCHS)))
    if not weights.is_file():
        raise DataError("weights file not found: {}".format(weights))
    golden_paths = _golden_candidates(golden_images) if golden_images is not None else []
    size = _parse_input_size(input_size)
    names, defaulted = _parse_classes(classes, num_classes)
    if defaulted:
        typer.echo("note: no --classes given; naming the classes class0..class{}".format(num_classes - 1), err=True)

    from rich.console import Console

    from edge_sdk.progress import status

    console = Console(stderr=True)
    with console.status("building yolov3_{} and loading {}".format(arch, weights.name)):
        from compress.export import count_params, export_bundle, model_flops
        from compress.models import build_yolov3, load_pretrained
        from edge_sdk.manifest import StageMetrics

        model = build_yolov3(arch, num_classes, width=width)
        report = load_pretrained(model, str(weights))
        model.eval()
    if report.reinitialised:
        raise DataError(
            "weights file {} has {} classes, --num-classes is {}: exporting would ship an untrained head".format(
                weights, report.checkpoint_classes, num_classes
            )
        )
    for message in report.messages:
        typer.echo("note: " + message, err=True)
    bundle_name = name or "yolov3_{}".format(arch)
    golden_note = ", {} golden images".format(min(golden_count, len(golden_paths))) if golden_paths else ""
    with status("exporting at {}x{}{} and writing {}".format(size[0], size[1], golden_note, out), console):
        metrics = StageMetrics(stage="export", flops=model_flops(model, size), params=float(count_params(model)))
        if golden_paths:
            path = _export_with_golden(
                model, names, size, out, bundle_name, version, metrics, golden_paths, golden_count
            )
        else:
            path = export_bundle(model, names, size, out, bundle_name, version, metrics=[metrics])
    typer.echo(
        "wrote {} ({}, {} classes, input {}x{}, {:.2f} GFLOPs, {:.2f} M params{})".format(
            path,
            "yolov3_{}".format(arch),
            num_classes,
            size[0],
            size[1],
            metrics.flops / 1e9,
            metrics.params / 1e6,
            golden_note,
        )
    )


def _golden_candidates(folder: Path) -> List[Path]:
    """The images in `folder` (sorted by name); DataError when it is not a folder or holds none."""
    from device.sources import IMAGE_SUFFIXES
    from edge_sdk.errors import DataError

    if not folder.is_dir():
        raise DataError("--golden-images: {} is not a folder".format(folder))
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise DataError("--golden-images: {} holds no images ({})".format(folder, ", ".join(IMAGE_SUFFIXES)))
    return images


def _export_with_golden(model, names, size, out, bundle_name, version, metrics, images, count) -> Path:
    """export_bundle to a draft next to `out`, then `out` = the draft plus golden images of `images`."""
    import tempfile

    from calibration.golden import make_golden
    from compress.export import export_bundle, rewrite_bundle
    from edge_sdk.bundle import open_bundle

    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".export-", dir=str(out.parent)) as tmp:
        draft = export_bundle(model, names, size, Path(tmp) / out.name, bundle_name, version, metrics=[metrics])
        with open_bundle(draft) as opened:
            return rewrite_bundle(opened, out, extra_files=make_golden(opened, images, count))


def eval_command(
    gt: Optional[Path] = typer.Option(
        None, "--gt", help="COCO ground-truth JSON (images, annotations, categories). Image files are not needed."
    ),
    dt: Optional[Path] = typer.Option(
        None,
        "--dt",
        help="COCO results JSON: a list of {image_id, category_id, bbox (x, y, w, h), score} "
        "(`edge-sdk run --coco-results` writes one).",
    ),
    bundle: Optional[Path] = typer.Option(
        None,
        "--bundle",
        help="Instead of --gt/--dt: detect with this bundle on every image of --data through the robot's "
        "predictor (Paddle Inference, as `edge-sdk run` runs it), every score kept.",
    ),
    data: Optional[Path] = typer.Option(
        None,
        "--data",
        help="With --bundle: COCO ground-truth JSON whose image files lie beside it, in images/ or ../images.",
    ),
    device: str = typer.Option("auto", "--device", help="With --bundle: auto, cpu or gpu."),
    threads: Optional[int] = typer.Option(
        None, "--threads", min=1, max=256, help="With --bundle: CPU math threads (default: all cores)."
    ),
    trusted_key: Optional[Path] = typer.Option(
        None, "--trusted-key", help="With --bundle: require it to be signed by this public key (file or folder)."
    ),
    as_json: bool = typer.Option(
        False, "--json", help="Print machine-readable JSON (keys mAP, mAP50, per_class, ...; null when undefined)."
    ),
    verbose: bool = typer.Option(False, "--verbose", help="With --bundle: " + VERBOSE_HELP),
) -> None:
    """COCO bbox mAP, computed like pycocotools' COCOeval: of a results file
    against ground truth (--gt, --dt), or of a bundle on a COCO dataset
    (--bundle, --data), like `yolo val`.

    Prints AP@[.5:.95], AP@.5 and AR@100 per class, then mAP, mAP50, mAP75
    and mAP by object size; with --bundle also the median time per image.

    Example: edge-sdk eval --bundle m.edgebundle --data data/pcb/val.json
    """
    from edge_sdk.metrics import evaluate_coco

    quiet_libraries(verbose)
    if bundle is not None or data is not None:
        if bundle is None or data is None or gt is not None or dt is not None:
            raise typer.BadParameter("give --bundle and --data together, or --gt and --dt", param_hint="--bundle")
        result, latency_ms = _evaluate_bundle(bundle, data, device, threads, trusted_key)
    elif gt is None or dt is None:
        raise typer.BadParameter("give --gt and --dt together, or --bundle and --data", param_hint="--gt")
    else:
        result, latency_ms = evaluate_coco(gt, dt), None
    if as_json:
        document = result.to_dict()
        if latency_ms is not None:
            document["latency_ms"] = latency_ms
        typer.echo(json.dumps(document, indent=2, allow_nan=False))
        return
    _print_tables(result)
    if latency_ms is not None:
        typer.echo("median {:.1f} ms per image (preprocessing, inference, postprocessing)".format(latency_ms))


def _evaluate_bundle(
    bundle: Path, data: Path, device: str, threads: Optional[int], trusted_key: Optional[Path]
) -> Tuple[Any, float]:
    """(EvalResult, median ms per image) of `bundle` on the COCO set `data`, with a status line."""
    from device.evaluate import evaluate_model
    from device.runtime import StatusLine
    from edge_sdk.data import load_coco

    dataset = load_coco(data)
    status = StatusLine(every=5.0)
    done = [0]

    def progress() -> None:
        done[0] += 1
        status.update("evaluating {}: {}/{} images".format(bundle.name, done[0], len(dataset.images)))

    evaluation = evaluate_model(
        bundle, dataset, device=device, threads=threads, progress=progress, trusted_keys=trusted_key
    )
    status.finish("evaluated {} on {} images".format(bundle.name, len(dataset.images)))
    return evaluation.result, evaluation.latency_ms


def _print_tables(result: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    per_class = Table(title="Per class (IoU .50:.95, maxDets 100)")
    per_class.add_column("class")
    for name in ("AP", "AP50", "recall", "#GT"):
        per_class.add_column(name, justify="right")
    for c in result.per_class:
        per_class.add_row(c.name, _fmt(c.ap), _fmt(c.ap50), _fmt(c.recall), str(c.num_gt))

    summary = Table(
        title="Summary (maxDets 100)",
        caption="{} images, {} detections".format(result.num_images, result.num_detections),
    )
    summary.add_column("metric")
    summary.add_column("value", justify="right")
    for label, value in (
        ("mAP@[.5:.95]", result.map),
        ("mAP50", result.map50),
        ("mAP75", result.map75),
        ("mAP small (area < 32^2)", result.map_small),
        ("mAP medium", result.map_medium),
        ("mAP large (area > 96^2)", result.map_large),
        ("AR@100", result.ar100),
    ):
        summary.add_row(label, _fmt(value))

    console = Console()
    console.print(per_class)
    console.print(summary)


def _fmt(value: Optional[float]) -> str:
    """Three decimals, or '-' when undefined (no ground truth)."""
    return "-" if value is None else "{:.3f}".format(value)


def register(app: typer.Typer) -> None:
    """Add `compress`, `demo`, `export` and `eval` to the root app."""
    app.command("compress")(compress_command)
    app.command("demo")(demo_command)
    app.command("export")(export_command)
    app.command("eval")(eval_command)
