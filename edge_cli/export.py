"""CLI commands: `edge-sdk export` (a PaddleDetection-layout YOLOv3 checkpoint straight to a bundle)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Tuple

import typer

_ARCHS = ("darknet53", "mobilenet_v1", "mobilenet_v3_large")


def _parse_input_size(text: str) -> Tuple[int, int]:
    """ "320" -> (320, 320); "320x416" -> (320, 416) as (height, width)."""
    from edge_sdk.errors import RecipeError

    parts = text.lower().split("x")
    try:
        dims = [int(p) for p in parts]
    except ValueError:
        dims = []
    if len(dims) == 1:
        dims = dims * 2
    if len(dims) != 2 or min(dims) < 32 or any(d % 32 for d in dims):
        raise RecipeError(
            "--input-size must be S or HxW with multiples of 32 (e.g. 320 or 320x416), got {!r}".format(text)
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
    arch: str = typer.Option(..., "--arch", help="Backbone: " + ", ".join(_ARCHS) + ".", show_default=False),
    weights: Path = typer.Option(
        ..., "--weights", help="PaddleDetection-layout YOLOv3 checkpoint (.pdparams).", show_default=False
    ),
    num_classes: int = typer.Option(
        ..., "--num-classes", min=1, help="Number of classes the model detects.", show_default=False
    ),
    input_size: str = typer.Option(
        ..., "--input-size", help="Network input: S (square) or HxW, multiples of 32.", show_default=False
    ),
    out: Path = typer.Option(
        ..., "--out", help="Bundle file to write (e.g. NAME-VERSION.edgebundle).", show_default=False
    ),
    classes: Optional[str] = typer.Option(
        None, "--classes", help="Comma-separated class names in class-id order (default: class0..K-1)."
    ),
    width: float = typer.Option(1.0, "--width", help="Channel width multiplier the checkpoint was trained with."),
    name: Optional[str] = typer.Option(None, "--name", help="Bundle name (default: yolov3_ARCH)."),
    version: str = typer.Option("0.1.0", "--version", help="Bundle version."),
) -> None:
    """Export a trained checkpoint straight to an fp32 bundle (no training, no compression).

    The checkpoint must match the architecture, width and class count exactly. Decoding and NMS use PaddleDetection's YOLOv3 defaults (conf 0.005, NMS IoU 0.45, top 1000, keep 100).
    """
    from edge_sdk.errors import DataError, RecipeError

    if arch not in _ARCHS:
        raise RecipeError("unknown architecture {!r}: expected one of {}".format(arch, ", ".join(_ARCHS)))
    if not weights.is_file():
        raise DataError("weights file not found: {}".format(weights))
    size = _parse_input_size(input_size)
    names, defaulted = _parse_classes(classes, num_classes)
    if defaulted:
        typer.echo("note: no --classes given; naming the classes class0..class{}".format(num_classes - 1), err=True)

    from rich.console import Console

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
    with console.status("exporting at {}x{}".format(*size)):
        metrics = StageMetrics(stage="export", flops=model_flops(model, size), params=float(count_params(model)))
        path = export_bundle(model, names, size, out, name or "yolov3_{}".format(arch), version, metrics=[metrics])
    typer.echo(
        "wrote {} ({}, {} classes, input {}x{}, {:.2f} GFLOPs, {:.2f} M params)".format(
            path, "yolov3_{}".format(arch), num_classes, size[0], size[1], metrics.flops / 1e9, metrics.params / 1e6
        )
    )


def register(app: typer.Typer) -> None:
    """Add this area's commands to the root app."""
    app.command("export")(export_command)
