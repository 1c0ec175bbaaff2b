"""Dataset statistics: counts per class, images without boxes, box sizes, and a box-size histogram."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Union

import numpy as np

from edge_sdk.data.dataset import Dataset
from edge_sdk.fileio import atomic_output

PERCENTILES = (5, 25, 50, 75, 95)


def box_sizes(dataset: Dataset) -> List[np.ndarray]:
    """Per class, the size of every box as sqrt(width * height) in pixels: a list of (N_c,) float arrays."""
    sizes: List[List[np.ndarray]] = [[] for _ in dataset.classes]
    for record in dataset.images:
        if len(record.boxes) == 0:
            continue
        wh = np.clip(record.boxes[:, 2:4] - record.boxes[:, 0:2], 0, None)
        side = np.sqrt(wh[:, 0] * wh[:, 1])
        for class_id in np.unique(record.class_ids):
            if 0 <= class_id < len(sizes):
                sizes[int(class_id)].append(side[record.class_ids == class_id])
    return [np.concatenate(parts) if parts else np.zeros((0,), np.float32) for parts in sizes]


def _summary(values: np.ndarray) -> Optional[Dict[str, float]]:
    if len(values) == 0:
        return None
    points = np.percentile(values, PERCENTILES)
    summary = {"p{}".format(p): round(float(v), 2) for p, v in zip(PERCENTILES, points)}
    summary["min"] = round(float(values.min()), 2)
    summary["max"] = round(float(values.max()), 2)
    return summary


def stats(dataset: Dataset) -> dict:
    """A JSON-ready summary of a dataset.

    Keys: source, classes, images, images_without_boxes, boxes, crowd_boxes, boxes_per_class
    (name -> count), box_size_percentiles and box_size_percentiles_per_class (p5/p25/p50/p75/p95,
    min, max of sqrt(box area) in pixels; None where there are no boxes), image_sizes ("WxH" -> count).
    """
    counts = np.zeros(len(dataset.classes), np.int64)
    crowd = 0
    without = 0
    image_sizes: Dict[str, int] = {}
    for record in dataset.images:
        if len(record.boxes) == 0:
            without += 1
        counts += np.bincount(record.class_ids, minlength=len(dataset.classes))[: len(dataset.classes)]
        crowd += int(np.count_nonzero(record.iscrowd))
        key = "{}x{}".format(record.width, record.height)
        image_sizes[key] = image_sizes.get(key, 0) + 1
    sizes = box_sizes(dataset)
    everything = np.concatenate(sizes) if sizes else np.zeros((0,), np.float32)
    return {
        "source": str(dataset.source),
        "classes": list(dataset.classes),
        "images": len(dataset.images),
        "images_without_boxes": without,
        "boxes": int(counts.sum()),
        "crowd_boxes": crowd,
        "boxes_per_class": {name: int(n) for name, n in zip(dataset.classes, counts)},
        "box_size_percentiles": _summary(everything),
        "box_size_percentiles_per_class": {name: _summary(v) for name, v in zip(dataset.classes, sizes)},
        "image_sizes": dict(sorted(image_sizes.items(), key=lambda item: -item[1])),
    }


def plotting_available() -> bool:
    """Whether matplotlib, which `plot_box_sizes` needs, can be imported (robots do not install it)."""
    try:
        import matplotlib.figure  # noqa: F401
    except ImportError:
        return False
    return True


def plot_box_sizes(dataset: Dataset, out_path: Union[str, Path], bins: int = 30) -> Path:
    """Write a PNG histogram of box sizes (sqrt(area) in pixels), one outline per class; returns its path.

    Needs matplotlib (see `plotting_available`).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    out = Path(out_path)
    sizes = box_sizes(dataset)
    everything = np.concatenate(sizes) if sizes else np.zeros((0,), np.float32)
    figure = Figure(figsize=(8, 4.5), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    if len(everything):
        edges = np.linspace(float(everything.min()) * 0.9, max(float(everything.max()), 1.0) * 1.05, bins + 1)
        for name, values in zip(dataset.classes, sizes):
            if len(values):
                axes.hist(values, bins=edges, histtype="step", linewidth=1.6, label="{} ({})".format(name, len(values)))
        axes.legend(fontsize=8, loc="upper right")
    else:
        axes.text(0.5, 0.5, "no boxes", ha="center", va="center", transform=axes.transAxes)
    axes.set_xlabel("box size: sqrt(width x height), pixels")
    axes.set_ylabel("boxes")
    axes.set_title("{} boxes in {} images ({})".format(len(everything), len(dataset.images), dataset.source.name))
    axes.grid(alpha=0.3)
    figure.tight_layout()
    with atomic_output(out) as tmp:
        figure.savefig(str(tmp), format="png")
    return out
