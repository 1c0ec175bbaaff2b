"""WORKDIR/report.md: the per-stage table (accuracy, cost, size, CPU latency) and its plots (stages.png)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

COLUMNS = ("stage", "mAP@.5", "mAP", "GFLOPs", "params (M)", "bundle MB", "CPU ms")


def _fmt(value: Optional[float], scale: float = 1.0, digits: int = 3) -> str:
    return "-" if value is None else "{:.{}f}".format(value / scale, digits)


def metrics_rows(metrics: Sequence[Any]) -> List[List[str]]:
    """One text row per StageMetrics, in COLUMNS order."""
    return [
        [
            m.stage,
            _fmt(m.map50),
            _fmt(m.map),
            _fmt(m.flops, 1e9, 3),
            _fmt(m.params, 1e6, 3),
            _fmt(m.bytes, 1e6, 3),
            _fmt(m.latency_ms, 1.0, 1),
        ]
        for m in metrics
    ]


def stages_figure(metrics: Sequence[Any]) -> Any:
    """Three panels (a matplotlib Figure): mAP@.5 against bundle MB, mAP@.5 against CPU ms, GFLOPs bars.

    Each stage has its own colour and marker, named once in the figure's legend, so stages that share
    a size or a latency (prune and distill, often) stay readable.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [m.stage for m in metrics]
    map50 = [m.map50 or 0.0 for m in metrics]
    colors = ["C{}".format(i % 10) for i in range(len(metrics))]
    markers = ["o", "s", "D", "^", "v", "P", "X"]
    fig, (ax_size, ax_latency, ax_flops) = plt.subplots(1, 3, figsize=(14, 4.2))
    for ax, values, label in (
        (ax_size, [(m.bytes or 0.0) / 1e6 for m in metrics], "bundle size (MB)"),
        (ax_latency, [m.latency_ms or 0.0 for m in metrics], "CPU latency (ms, Paddle Inference)"),
    ):
        ax.plot(values, map50, "-", color="lightgrey", zorder=1)
        for i, (name, x, y) in enumerate(zip(names, values, map50)):
            ax.scatter([x], [y], s=60, color=colors[i], marker=markers[i % len(markers)], label=name, zorder=2)
        ax.set_xlabel(label)
        ax.set_ylabel("val mAP@.5")
        ax.grid(True, alpha=0.3)
    ax_flops.bar(range(len(names)), [(m.flops or 0.0) / 1e9 for m in metrics], color=colors)
    ax_flops.set_xticks(range(len(names)), names)
    ax_flops.set_ylabel("GFLOPs")
    ax_flops.set_title("compute per stage")
    handles, labels = ax_size.get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=len(names), frameon=False, bbox_to_anchor=(0.5, 0.95))
    fig.suptitle("accuracy vs size vs latency per compression stage")
    fig.tight_layout(rect=(0, 0, 1, 0.9))
    return fig


def plot_stages(metrics: Sequence[Any], path: Path) -> Path:
    """`stages_figure` as a PNG at `path` (atomic)."""
    import matplotlib.pyplot as plt

    from edge_sdk.fileio import atomic_output

    path = Path(path)
    fig = stages_figure(metrics)
    with atomic_output(path) as tmp:
        fig.savefig(str(tmp), dpi=100, format="png")
    plt.close(fig)
    return path


def side_by_side_ms(bundles: Mapping[str, Path], images_bgr: Sequence[Any], rounds: int = 3) -> Dict[str, float]:
    """Median end-to-end milliseconds per image {label: ms} of each bundle, run the way the robot runs it
    (device.detector.Detector.detect: preprocess + predict + postprocess, the CPU plan) in interleaved
    rounds: each round runs every bundle over all of `images_bgr` ((H, W, 3) uint8 BGR) in turn, so a
    machine that slows down mid-run slows every bundle alike. A first round warms up and is not counted."""
    import statistics
    import time

    from device.detector import Detector

    detectors = {label: Detector(path, device="cpu") for label, path in bundles.items()}
    times: Dict[str, List[float]] = {label: [] for label in detectors}
    try:
        for round_index in range(rounds + 1):
            for label, detector in detectors.items():
                for image in images_bgr:
                    started = time.perf_counter()
                    detector.detect(image)
                    if round_index:
                        times[label].append((time.perf_counter() - started) * 1000.0)
    finally:
        for detector in detectors.values():
            detector.close()
    return {label: statistics.median(values) for label, values in times.items()}


def speed_lines(speed_ms: Mapping[str, float], base: str, images: int, rounds: int) -> List[str]:
    """Lines for `side_by_side_ms`'s result: FPS of each bundle and its speedup over `base`'s."""
    lines = [
        "end to end on this CPU (preprocess + predict + postprocess), side by side: medians of {} interleaved "
        "rounds over {} val images".format(rounds, images)
    ]
    for label, ms in speed_ms.items():
        lines.append(
            "{}: {:.1f} FPS ({:.1f} ms), {:.2f}x the {}".format(label, 1000.0 / ms, ms, speed_ms[base] / ms, base)
        )
    return lines


def write_report(
    workdir: Path, metrics: Sequence[Any], bundle: Path, notes: Sequence[str] = (), speed: Sequence[str] = ()
) -> Path:
    """WORKDIR/report.md with the stage table, ratios to the train stage, the `speed_lines`, notes and
    stages.png."""
    from edge_sdk.fileio import atomic_write_text

    workdir = Path(workdir)
    plot = plot_stages(metrics, workdir / "stages.png")
    lines = ["# Compression report", "", "Bundle: `{}`".format(bundle), ""]
    lines.append("| " + " | ".join(COLUMNS) + " |")
    lines.append("|" + "---|" * len(COLUMNS))
    for row in metrics_rows(metrics):
        lines.append("| " + " | ".join(row) + " |")
    base = metrics[0] if metrics else None
    if base is not None and len(metrics) > 1:
        lines += ["", "Relative to `{}`:".format(base.stage), ""]
        lines.append("| stage | mAP@.5 | FLOPs | bundle bytes | CPU latency |")
        lines.append("|---|---|---|---|---|")
        for m in metrics[1:]:
            lines.append(
                "| {} | {} | {} | {} | {} |".format(
                    m.stage,
                    _ratio(m.map50, base.map50),
                    _ratio(m.flops, base.flops),
                    _ratio(m.bytes, base.bytes),
                    _ratio(m.latency_ms, base.latency_ms),
                )
            )
    if speed:
        lines += ["", speed[0] + ":", ""] + ["- " + line for line in speed[1:]]
    lines += ["", "mAP on the val set through device.detector.Detector (Paddle Inference, CPU); latency = median"]
    lines += ["per image including pre- and postprocessing; bytes = the stage's .edgebundle file.", ""]
    lines += ["- " + note for note in notes]
    lines += ["", "![stages]({})".format(plot.name), ""]
    return atomic_write_text(workdir / "report.md", "\n".join(lines))


def _ratio(value: Optional[float], base: Optional[float]) -> str:
    if value is None or not base:
        return "-"
    return "{:.3f}".format(value / base)
