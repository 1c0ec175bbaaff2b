"""Dataset statistics and the box-size histogram."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from edge_sdk.data import Dataset, ImageRecord, plot_box_sizes, stats


def _dataset() -> Dataset:
    boxes = np.array([[0, 0, 10, 10], [0, 0, 4, 9], [5, 5, 25, 25]], np.float32)
    return Dataset(
        classes=("a", "b", "c"),
        images=(
            ImageRecord(
                Path("/x/1.png"), 1, 64, 48, boxes, np.array([0, 0, 1], np.int32), np.array([False, True, False])
            ),
            ImageRecord(Path("/x/2.png"), 2, 64, 48),
            ImageRecord(Path("/x/3.png"), 3, 32, 32),
        ),
        source=Path("/x/val.json"),
    )


def test_stats_counts_and_sizes() -> None:
    summary = stats(_dataset())
    json.dumps(summary)  # JSON-ready
    assert summary["images"] == 3 and summary["images_without_boxes"] == 2
    assert summary["boxes"] == 3 and summary["crowd_boxes"] == 1
    assert summary["boxes_per_class"] == {"a": 2, "b": 1, "c": 0}
    assert summary["box_size_percentiles"]["min"] == 6.0 and summary["box_size_percentiles"]["max"] == 20.0
    assert summary["box_size_percentiles"]["p50"] == 10.0
    assert summary["box_size_percentiles_per_class"]["b"]["p50"] == 20.0
    assert summary["box_size_percentiles_per_class"]["c"] is None
    assert summary["image_sizes"] == {"64x48": 2, "32x32": 1}


def test_empty_dataset() -> None:
    summary = stats(Dataset(classes=("a",), images=()))
    assert summary["boxes"] == 0 and summary["box_size_percentiles"] is None


def test_histogram_is_a_png(tmp_path: Path) -> None:
    out = plot_box_sizes(_dataset(), tmp_path / "sizes.png")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    assert [p.name for p in tmp_path.iterdir()] == ["sizes.png"]  # no temp file left
    empty = plot_box_sizes(Dataset(classes=("a",), images=()), tmp_path / "empty.png")
    assert empty.read_bytes()[:4] == b"\x89PNG"
