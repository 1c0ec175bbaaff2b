"""The prune stage: a sensitivity scan of every prunable group on a val subset, then per-group
ratios that reach the recipe's FLOPs target (compress.pruning holds the mechanism)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple, Union

import paddle.nn as nn

from compress.config import PruneSection
from compress.pruning import prune_to_target
from compress.sensitivity import map50_evaluator, sensitivity
from edge_sdk.data.dataset import Dataset
from edge_sdk.manifest import Postprocess


def prune_model(
    model: nn.Layer,
    val_set: Dataset,
    input_size: int,
    cfg: PruneSection,
    cache_dir: Union[str, Path],
    postprocess: Optional[Postprocess] = None,
    progress: Optional[Callable[[str, float], None]] = None,
) -> Tuple[nn.Layer, Dict[str, Any]]:
    """The prune stage: sensitivity scan on `cfg.val_images` val images (cached in
    cache_dir/sensitivity.json, curves in sensitivity.png), then `prune_to_target`.

    Returns (pruned model, info) with info: ratios, flops_before, flops_after, flops_ratio,
    sensitivity (path of the JSON cache). progress(group, ratio) is called before each evaluation.
    """
    size = (int(input_size), int(input_size))
    eval_fn, val_key = map50_evaluator(val_set, int(input_size), postprocess, cfg.val_images)
    cache = Path(cache_dir) / "sensitivity.json"
    sens = sensitivity(model, eval_fn, size, cfg.ratios, cache_path=cache, val_key=val_key, progress=progress)
    pruned, ratios, before, after = prune_to_target(model, size, cfg.flops_reduction, sens, cfg.channel_multiple)
    info = {
        "ratios": ratios,
        "flops_before": before,
        "flops_after": after,
        "flops_ratio": after / before,
        "sensitivity": str(cache),
    }
    return pruned, info
