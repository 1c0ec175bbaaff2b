"""CLI commands: data (generate the built-in PCB-defect dataset, summarise any dataset)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional, Tuple

import typer

data_app = typer.Typer(
    name="data",
    help="Datasets: generate the built-in PCB-defect dataset, or summarise a COCO / Pascal VOC dataset.\n\n"
    "Example: edge-sdk data synth --out data/pcb --images 500 --seed 0 --size 256x256",
    no_args_is_help=True,
    add_completion=False,
)


def parse_size(text: str) -> Tuple[int, int]:
    """'256x256' -> (256, 256); raises DataError with a one-line message otherwise."""
    from edge_sdk.errors import DataError

    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not match:
        raise DataError("--size must be WIDTHxHEIGHT in pixels, like 256x256 (got {!r})".format(text))
    width, height = int(match.group(1)), int(match.group(2))
    if not (64 <= width <= 4096 and 64 <= height <= 4096):
        raise DataError("--size must be between 64x64 and 4096x4096 (got {}x{})".format(width, height))
    return width, height


@data_app.command("synth")
def synth(
    out: Path = typer.Option(..., "--out", "-o", help="Folder to write train.json, val.json and images/ into."),
    images: int = typer.Option(
        200, "--images", "-n", min=1, max=100_000, help="Number of images to generate (train + val)."
    ),
    seed: int = typer.Option(0, "--seed", min=0, help="Random seed; the same seed writes byte-identical files."),
    size: str = typer.Option("256x256", "--size", help="Image size as WIDTHxHEIGHT in pixels."),
    val_fraction: float = typer.Option(0.2, "--val-fraction", help="Share of the images put in val.json."),
    workers: Optional[int] = typer.Option(
        None, "--workers", min=1, max=64, help="Processes to render with (default: automatic)."
    ),
) -> None:
    """Generate the procedural PCB-defect dataset (6 classes) as COCO: train.json, val.json, images/*.png.

    Classes: missing_hole, mouse_bite, open_circuit, short, spur, spurious_copper; 1-4 defects per image, 14-40 px at 256x256.

    JSON files are written last, so an interrupted run leaves no complete-looking dataset.

    Example: edge-sdk data synth --out data/pcb --images 500 --seed 0 --size 256x256
    """
    from edge_sdk.errors import DataError

    width, height = parse_size(size)
    if not 0.0 <= val_fraction < 1.0:
        raise DataError("--val-fraction must be in [0, 1) (got {})".format(val_fraction))

    import time

    from edge_sdk.data.synth import synthesize

    started = time.monotonic()
    train_json, val_json = synthesize(out, images, seed, (width, height), val_fraction, progress=True, workers=workers)
    typer.echo(
        "wrote {} images ({}x{}) in {:.1f} s: {} and {}".format(
            images, width, height, time.monotonic() - started, train_json, val_json
        )
    )


@data_app.command("stats")
def stats_command(
    path: Path = typer.Argument(..., help="A COCO .json file, or a Pascal VOC folder (Annotations/ or *.xml)."),
    plot: Optional[Path] = typer.Option(
        None,
        "--plot",
        help="Where to write the box-size histogram PNG (default: <name>_box_sizes.png next to the data).",
    ),
    no_plot: bool = typer.Option(False, "--no-plot", help="Do not write the histogram."),
    as_json: bool = typer.Option(False, "--json", help="Print the statistics as JSON instead of a table."),
) -> None:
    """Summarise a dataset: images, boxes per class, images without boxes, box-size percentiles.

    The histogram needs matplotlib (the workstation install); without it the statistics are
    printed and a note says so, and an explicit --plot is an error.

    Example: edge-sdk data stats data/pcb/train.json
    """
    import json

    from edge_sdk.data.load import load_dataset
    from edge_sdk.data.stats import plot_box_sizes, plotting_available, stats
    from edge_sdk.errors import DataError

    plot_path = None
    can_plot = not no_plot and plotting_available()
    if plot is not None and not no_plot:
        if plot.is_dir():
            raise DataError(
                "--plot {} is a folder: give the PNG file to write, e.g. {}".format(plot, plot / "box_sizes.png")
            )
        if not plot.parent.is_dir():
            raise DataError("--plot {}: folder {} does not exist".format(plot, plot.parent))
        if not can_plot:
            raise DataError(
                "--plot needs matplotlib, which is not installed (pip install matplotlib), or use --no-plot"
            )
    if can_plot:
        plot_path = plot if plot is not None else _default_plot_path(path)
    elif not no_plot:
        typer.echo("note: no box-size histogram: matplotlib is not installed (--no-plot hides this note)", err=True)

    dataset = load_dataset(path)
    summary = stats(dataset)
    if plot_path is not None:
        plot_box_sizes(dataset, plot_path)
        summary["plot"] = str(plot_path)
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    _print_table(summary)
    if plot_path is not None:
        typer.echo("box-size histogram: {}".format(plot_path))


def _default_plot_path(path: Path) -> Path:
    if path.is_dir():
        return path / "box_sizes.png"
    return path.with_name("{}_box_sizes.png".format(path.stem))


def _print_table(summary: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(
        "[bold]{}[/bold]: {} images ({} without boxes), {} boxes ({} crowd/difficult), image sizes {}".format(
            summary["source"],
            summary["images"],
            summary["images_without_boxes"],
            summary["boxes"],
            summary["crowd_boxes"],
            ", ".join("{} x{}".format(k, v) for k, v in summary["image_sizes"].items()) or "-",
        ),
        highlight=False,
    )
    table = Table(title="boxes per class; size = sqrt(area) in pixels")
    table.add_column("id", justify="right")
    table.add_column("class")
    table.add_column("boxes", justify="right")
    for column in ("p5", "p50", "p95", "max"):
        table.add_column("size {}".format(column), justify="right")
    per_class = summary["box_size_percentiles_per_class"]
    for class_id, name in enumerate(summary["classes"]):
        sizes = per_class[name] or {}
        table.add_row(
            str(class_id),
            name,
            str(summary["boxes_per_class"][name]),
            *("{:.1f}".format(sizes[k]) if k in sizes else "-" for k in ("p5", "p50", "p95", "max")),
        )
    overall = summary["box_size_percentiles"] or {}
    table.add_row(
        "",
        "[bold]all[/bold]",
        str(summary["boxes"]),
        *("{:.1f}".format(overall[k]) if k in overall else "-" for k in ("p5", "p50", "p95", "max")),
    )
    console.print(table)


def register(app: typer.Typer) -> None:
    """Add this area's commands to the root app: `edge-sdk data synth|stats`."""
    app.add_typer(data_app, name="data")
