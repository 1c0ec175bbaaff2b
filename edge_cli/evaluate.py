"""CLI commands: evaluate (`edge-sdk eval`, COCO bbox mAP of a results file)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer


def register(app: typer.Typer) -> None:
    """Add this area's commands to the root app."""
    app.command("eval")(eval_command)


def eval_command(
    gt: Path = typer.Option(
        ..., "--gt", help="COCO ground-truth JSON (images, annotations, categories). Image files are not needed."
    ),
    dt: Path = typer.Option(
        ..., "--dt", help="COCO results JSON: a list of {image_id, category_id, bbox (x, y, w, h), score}."
    ),
    as_json: bool = typer.Option(
        False, "--json", help="Print machine-readable JSON (keys mAP, mAP50, per_class, ...; null when undefined)."
    ),
) -> None:
    """COCO bbox mAP of detections against ground truth, computed like pycocotools' COCOeval.

    Prints AP@[.5:.95], AP@.5 and AR@100 per class, then mAP, mAP50, mAP75 and mAP by object size.
    """
    from edge_sdk.metrics import evaluate_coco

    result = evaluate_coco(gt, dt)
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2, allow_nan=False))
        return
    _print_tables(result)


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
