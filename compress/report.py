"""Training curves: loss and mAP per epoch, as a PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Sequence

from edge_sdk.fileio import atomic_output


def plot_history(history: Sequence[Dict[str, Any]], path: Path) -> Path:
    """Write loss (left) and val mAP@.5 / mAP (right) against epoch to `path` (PNG, atomic)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    epochs = [r["epoch"] for r in history]
    fig, (ax_loss, ax_map) = plt.subplots(1, 2, figsize=(10, 4))
    for key in ("loss", "loss_obj", "loss_xy", "loss_wh", "loss_cls"):
        values = [r.get(key) for r in history]
        if any(v is not None for v in values):
            ax_loss.plot(epochs, values, label=key, linewidth=2 if key == "loss" else 1)
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
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(str(tmp), dpi=80, format="png")
    plt.close(fig)
    return path
