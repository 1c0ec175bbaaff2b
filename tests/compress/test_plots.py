"""The compress plots are readable: no text drawn over other text, legible labels, single points visible."""

from __future__ import annotations

import itertools

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
from matplotlib.text import Text  # noqa: E402

from compress.compression_report import stages_figure  # noqa: E402
from compress.report import history_figure  # noqa: E402
from compress.sensitivity import sensitivity_figure  # noqa: E402
from edge_sdk.manifest import StageMetrics  # noqa: E402


def _overlapping_texts(fig):
    """Pairs of visible, non-empty texts whose drawn boxes overlap (tick labels meeting at an axes corner aside)."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    ticks = {id(t) for ax in fig.axes for t in ax.get_xticklabels() + ax.get_yticklabels()}
    texts = [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]
    boxes = [(t.get_text(), id(t) in ticks, t.get_window_extent(renderer)) for t in texts]
    return [
        (a, b)
        for (a, a_tick, box_a), (b, b_tick, box_b) in itertools.combinations(boxes, 2)
        if not (a_tick and b_tick) and box_a.overlaps(box_b)
    ]


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def test_sensitivity_is_a_heatmap_with_a_readable_row_per_group() -> None:
    names = ["neck.yolo_block.{}.conv_module.conv{}.conv".format(b, c) for b in range(9) for c in range(5)]
    sensitivities = {name: {0.1: 0.001 * i, 0.3: 0.004 * i, 0.6: 0.01 * i} for i, name in enumerate(names)}
    fig = sensitivity_figure(sensitivities, baseline=0.85)
    ax = fig.axes[0]
    assert ax.get_legend() is None
    (image,) = ax.get_images()
    assert image.get_array().shape == (45, 3)
    labels = ax.get_yticklabels()
    assert [t.get_text() for t in labels] == names
    assert min(t.get_fontsize() for t in labels) >= 7
    assert _overlapping_texts(fig) == []


def test_stage_labels_do_not_overlap_when_stages_share_size_or_latency() -> None:
    metrics = [
        StageMetrics("train", 0.916, 0.6, 0.53e9, 0.9e6, 1.49e6, 59.8),
        StageMetrics("prune", 0.85, 0.55, 0.26e9, 0.4e6, 0.646e6, 39.9),
        StageMetrics("distill", 0.851, 0.57, 0.26e9, 0.4e6, 0.646e6, 40.0),
        StageMetrics("int8", 0.918, 0.58, 0.26e9, 0.4e6, 0.299e6, 59.8),
    ]
    fig = stages_figure(metrics)
    assert _overlapping_texts(fig) == []
    shown = {t.get_text() for t in fig.findobj(Text)}
    assert {"train", "prune", "distill", "int8"} <= shown


def test_a_single_epoch_shows_as_points() -> None:
    history = [{"epoch": 1, "loss": 41.9, "loss_obj": 12.0, "loss_xy": 5.0, "loss_wh": 11.0, "loss_cls": 9.0,
                "map50": 0.12, "map": 0.05}]  # fmt: skip
    fig = history_figure(history)
    lines = [line for ax in fig.axes for line in ax.get_lines()]
    assert len(lines) == 7
    assert all(line.get_marker() not in (None, "", " ", "None") for line in lines)
    low, high = fig.axes[0].get_xlim()
    assert [tick for tick in fig.axes[0].get_xticks() if low <= tick <= high] == [1]
