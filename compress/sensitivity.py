"""Pruning sensitivity: how much val mAP@.5 each prunable group loses when pruned alone, per ratio.

The scan prunes one group at a time (PaddleSlim's L1-norm pruner), evaluates, and restores the
weights. Results are cached in a JSON file keyed by a hash of the model weights, the val set and
the ratios, written after every group, so a re-run (or a run interrupted half-way) reuses them.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import paddle.nn as nn

from compress.config import DEFAULT_PRUNE_RATIOS
from compress.evaluation import evaluate_net
from compress.pruning import ChannelPruner
from edge_sdk.data.dataset import Dataset
from edge_sdk.errors import DataError
from edge_sdk.fileio import atomic_output, atomic_write_text
from edge_sdk.manifest import Postprocess

CACHE_VERSION = 1
Sensitivities = Dict[str, Dict[float, float]]


def weights_digest(model: nn.Layer) -> str:
    """sha256 over the structural names, shapes and values of the model's state dict."""
    digest = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        array = np.ascontiguousarray(np.asarray(value.numpy()))
        digest.update(key.encode("utf-8"))
        digest.update(str(array.dtype).encode("ascii"))
        digest.update(repr(array.shape).encode("ascii"))
        digest.update(array.tobytes())
    return digest.hexdigest()


def cache_key(model: nn.Layer, val_key: str, ratios: Sequence[float], input_size: Tuple[int, int]) -> str:
    """Hash of the weights, the val set identity, the ratios and the traced input size."""
    text = json.dumps(
        {
            "weights": weights_digest(model),
            "val": str(val_key),
            "ratios": [round(float(r), 4) for r in ratios],
            "input_size": [int(input_size[0]), int(input_size[1])],
        },
        sort_keys=True,
    )
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _read_cache(path: Path) -> Dict[str, Any]:
    if not path.is_file():
        return {"version": CACHE_VERSION, "entries": {}}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError("sensitivity cache {} is unreadable: {} (delete it to recompute)".format(path, exc)) from None
    if not isinstance(data, dict) or data.get("version") != CACHE_VERSION or not isinstance(data.get("entries"), dict):
        return {"version": CACHE_VERSION, "entries": {}}
    return data


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(data, indent=1, sort_keys=True))


def _as_float_keys(losses: Mapping[str, float]) -> Dict[float, float]:
    return {float(r): float(v) for r, v in losses.items()}


def sensitivity(
    model: nn.Layer,
    eval_fn: Callable[[nn.Layer], Optional[float]],
    input_size: Tuple[int, int],
    ratios: Sequence[float] = DEFAULT_PRUNE_RATIOS,
    cache_path: Optional[Union[str, Path]] = None,
    val_key: str = "",
    plot_path: Optional[Union[str, Path]] = None,
    progress: Optional[Callable[[str, float], None]] = None,
) -> Sensitivities:
    """{group name: {ratio: metric loss}}: loss = eval_fn(unpruned) - eval_fn(group pruned by ratio).

    eval_fn(model) -> mAP@.5 on a (small) val subset (None counts as 0). val_key identifies that
    subset in the cache key (e.g. the sha256 of its annotation file and the image count).
    cache_path: JSON cache (see the module docstring); plot_path: PNG of the curves (default: the
    cache path with .png, when a cache path is given). progress(group, ratio) is called before
    each evaluation. The model's weights are restored afterwards.
    """
    ratios = [round(float(r), 4) for r in ratios]
    if not ratios or any(not 0.0 < r < 1.0 for r in ratios):
        raise DataError("sensitivity ratios must be in (0, 1), got {!r}".format(ratios))
    cache_path = Path(cache_path) if cache_path is not None else None
    key = cache_key(model, val_key, ratios, input_size)
    cache = _read_cache(cache_path) if cache_path is not None else {"version": CACHE_VERSION, "entries": {}}
    entry = cache["entries"].setdefault(key, {"baseline": None, "sensitivities": {}, "groups": None})
    done = entry["sensitivities"]
    wanted = {str(r) for r in ratios}
    names = entry.get("groups")
    if names is not None and all(set(done.get(n, {})) == wanted for n in names):
        return _finish({n: _as_float_keys(done[n]) for n in names}, cache_path, plot_path, entry["baseline"])
    was_training = model.training
    model.eval()
    try:
        pruner = ChannelPruner(model, input_size)
        entry["groups"] = [g.name for g in pruner.groups]
        todo = [g for g in pruner.groups if set(done.get(g.name, {})) != wanted]
        if todo and entry["baseline"] is None:
            entry["baseline"] = float(eval_fn(model) or 0.0)
        for group in todo:
            losses = {}
            for ratio in ratios:
                if progress is not None:
                    progress(group.name, ratio)
                plan = pruner.apply({group.name: ratio})
                try:
                    metric = float(eval_fn(model) or 0.0)
                finally:
                    pruner.restore(plan)
                losses[str(ratio)] = entry["baseline"] - metric
            done[group.name] = losses
            if cache_path is not None:
                _write_json(cache_path, cache)
    finally:
        if was_training:
            model.train()
    if cache_path is not None:
        _write_json(cache_path, cache)
    return _finish({n: _as_float_keys(done[n]) for n in entry["groups"]}, cache_path, plot_path, entry["baseline"])


def _finish(
    result: Sensitivities, cache_path: Optional[Path], plot_path: Any, baseline: Optional[float]
) -> Sensitivities:
    if plot_path is None and cache_path is not None:
        plot_path = cache_path.with_suffix(".png")
    if plot_path is not None:
        plot_sensitivities(result, Path(plot_path), baseline)
    return result


def sensitivity_figure(sensitivities: Mapping[str, Mapping[float, float]], baseline: Optional[float] = None) -> Any:
    """A heatmap of the mAP@.5 loss, one row per group and one column per pruning ratio (a matplotlib Figure).

    Red is accuracy lost, blue gained, white none; each cell also shows its value when there are few ratios.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(sensitivities)
    ratios = sorted({float(r) for losses in sensitivities.values() for r in losses})
    grid = np.full((len(names), len(ratios)), np.nan)
    for row, name in enumerate(names):
        for col, ratio in enumerate(ratios):
            value = dict((float(r), v) for r, v in sensitivities[name].items()).get(ratio)
            if value is not None:
                grid[row, col] = value
    limit = float(np.nanmax(np.abs(grid))) if np.isfinite(grid).any() else 0.0
    limit = max(limit, 1e-3)
    width = 4.0 + 0.02 * max((len(n) for n in names), default=0) * 8 + 0.9 * len(ratios)
    fig, ax = plt.subplots(figsize=(width, 1.6 + 0.24 * max(len(names), 4)))
    image = ax.imshow(np.ma.masked_invalid(grid), cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto")
    ax.set_xticks(range(len(ratios)), ["{:g}".format(r) for r in ratios])
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set_xlabel("fraction of output channels pruned")
    ax.set_title(
        "val mAP@.5 lost by pruning one group" + (" (baseline {:.3f})".format(baseline) if baseline is not None else "")
    )
    if len(ratios) <= 10:
        for (row, col), value in np.ndenumerate(grid):
            if np.isfinite(value):
                color = "white" if abs(value) > 0.6 * limit else "black"
                ax.text(
                    col, row, "{:.3f}".format(round(value, 3) + 0.0), ha="center", va="center", fontsize=7, color=color
                )
    fig.colorbar(image, ax=ax, label="mAP@.5 loss", fraction=0.05, pad=0.02)
    fig.tight_layout()
    return fig


def plot_sensitivities(
    sensitivities: Mapping[str, Mapping[float, float]], path: Path, baseline: Optional[float] = None
) -> Path:
    """`sensitivity_figure` as a PNG at `path` (atomic)."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = sensitivity_figure(sensitivities, baseline)
    with atomic_output(path) as tmp:
        fig.savefig(str(tmp), dpi=90, format="png")
    plt.close(fig)
    return path


def map50_evaluator(
    val_set: Dataset,
    input_size: int,
    postprocess: Optional[Postprocess] = None,
    max_images: int = 0,
) -> Tuple[Callable[[nn.Layer], Optional[float]], str]:
    """(eval_fn, val_key) for `sensitivity`: eval_fn(model) is the val mAP@.5 on the first
    `max_images` images of `val_set` (an edge_sdk Dataset; 0 = all) with the export's decoding and
    NMS; val_key hashes those images' paths and boxes and the input size."""
    records = list(val_set.images)[: int(max_images)] if max_images else list(val_set.images)
    subset = Dataset(classes=tuple(val_set.classes), images=tuple(records), source=val_set.source)
    digest = hashlib.sha256(json.dumps([int(input_size), list(val_set.classes)]).encode("utf-8"))
    for record in records:
        digest.update(str(record.path).encode("utf-8"))
        digest.update(np.ascontiguousarray(np.asarray(record.boxes, np.float32)).tobytes())
        digest.update(np.ascontiguousarray(np.asarray(record.class_ids, np.int64)).tobytes())
    post = postprocess or Postprocess()

    def eval_fn(model: nn.Layer) -> Optional[float]:
        return evaluate_net(model, subset, int(input_size), post).map50

    return eval_fn, digest.hexdigest()
