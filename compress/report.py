"""Training curves: loss and mAP per epoch, as a PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Sequence

from edge_sdk.fileio import atomic_output


def history_figure(history: Sequence[Dict[str, Any]]) -> Any:
    """Loss (left) and val mAP@.5 / mAP (right) against epoch, a marker on every epoch (a matplotlib Figure)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    epochs = [r["epoch"] for r in history]
    fig, (ax_loss, ax_map) = plt.subplots(1, 2, figsize=(10, 4))
    for key in ("loss", "loss_obj", "loss_xy", "loss_wh", "loss_cls"):
        values = [r.get(key) for r in history]
        if any(v is not None for v in values):
            ax_loss.plot(epochs, values, marker=".", label=key, linewidth=2 if key == "loss" else 1)
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("training loss")
    ax_loss.set_yscale("log")
    ax_loss.legend(fontsize="small")
    evaluated = [r for r in history if r.get("map50") is not None]
    ax_map.plot([r["epoch"] for r in evaluated], [r["map50"] for r in evaluated], "o-", label="mAP@.5")
    ax_map.plot([r["epoch"] for r in evaluated], [r.get("map") or 0.0 for r in evaluated], "s-", label="mAP@[.5:.95]")
    ax_map.set_xlabel("epoch")
    ax_map.set_ylabel("val (EMA weights)")
    ax_map.set_ylim(0, 1)
    ax_map.legend(fontsize="small")
    for ax in (ax_loss, ax_map):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        if epochs:
            ax.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)
    fig.tight_layout()
    return fig


def plot_history(history: Sequence[Dict[str, Any]], path: Path) -> Path:
    """`history_figure` as a PNG at `path` (atomic)."""
    import matplotlib.pyplot as plt

    path = Path(path)
    fig = history_figure(history)
    with atomic_output(path) as tmp:
        fig.savefig(str(tmp), dpi=80, format="png")
    plt.close(fig)
    return path
