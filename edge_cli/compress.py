"""CLI commands: compress, demo."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import List, Optional

import typer

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


def _relaunch(gpus: str, workdir: Path) -> None:
    """Re-run this command under paddle.distributed.launch on `gpus` (see launch_command); exits with its code."""
    import subprocess

    try:
        command = launch_command(gpus, sys.argv[1:], log_dir=str(workdir / "launch-logs"))
    except ValueError as exc:
        from edge_sdk.errors import RecipeError

        raise RecipeError(str(exc)) from None
    if "--workdir" not in sys.argv:
        command += ["--workdir", str(workdir)]
    typer.echo(" ".join(command), err=True)
    try:
        code = subprocess.call(command, env=dict(os.environ))
    except KeyboardInterrupt:
        code = INTERRUPTED_EXIT
    raise typer.Exit(code)


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

    from compress.pipeline import run
    from compress.recipe import load_recipe
    from compress.train import TrainingInterrupted

    console = Console(stderr=True)
    recipe = load_recipe(recipe_path)
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
    if result.per_class:
        parts = ["{} {:.3f}".format(c["name"], c["ap50"]) for c in result.per_class if c.get("ap50") is not None]
        console.print("AP@.5 per class: " + ", ".join(parts), highlight=False)
    if getattr(result, "report", None):
        console.print("report: {}".format(result.report), highlight=False)


def register(app: typer.Typer) -> None:
    """Add this area's commands to the root app."""

    @app.command("compress")
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
    ) -> None:
        """Train, prune, distill, quantize and export a YOLOv3 from a recipe (its `stages`), each stage cached in WORKDIR and measured on the val set; writes the bundle and WORKDIR/report.md."""
        workdir = workdir or Path("runs") / recipe.stem
        if gpus:
            _relaunch(gpus, workdir)
        _run_pipeline(recipe, workdir, out, data, resume, progress, stages)

    @app.command("demo")
    def demo_command(
        workdir: Path = typer.Option(
            Path("demo-out"), "--workdir", help="Folder for the data, checkpoints and bundle."
        ),
        resume: bool = typer.Option(False, "--resume", help="Continue an interrupted demo run."),
        progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
    ) -> None:
        """Synthesize the PCB-defect data and run recipes/demo.yml on the CPU: train (data-parallel over 2 CPU processes when there are 2 cores), prune, distill, INT8, export; prints the per-stage table (about 18 minutes on 2 cores)."""
        recipe = DEMO_RECIPE
        if not recipe.is_file():
            from edge_sdk.errors import RecipeError

            raise RecipeError("the demo recipe is missing: {}".format(recipe))
        processes = min(DEMO_TRAIN_PROCESSES, os.cpu_count() or 1)
        if processes > 1 and "PADDLE_TRAINER_ID" not in os.environ:
            _relaunch("cpu:{}".format(processes), workdir)
        _run_pipeline(recipe, workdir, None, None, resume, progress)
