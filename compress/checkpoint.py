"""Checkpoint files, written atomically with paddle.save; the one place that knows their layout.

- last.pdckpt (resumable training state): model, optimizer (keyed by structural parameter names),
  ema, scaler, epoch, step, history, best_map50, and the model's meta (arch, width, anchors,
  classes, input_size, recipe_sha256).
- best.pdparams: model (EMA weights), epoch, map50 and the same meta.
- a pruned checkpoint (prune, distill stages): model, prune_plan (compress.pruning.PrunePlan.to_dict) and
  whatever the caller adds (classes).
`load_trained` rebuilds the model of a best.pdparams or of a pruned checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Union

import paddle
import paddle.nn as nn

from compress.loop import Trainer
from compress.models import build_yolov3
from compress.pruning import PrunePlan, load_pruned
from edge_sdk.errors import DataError, RecipeError
from edge_sdk.fileio import atomic_output

LAST_CHECKPOINT = "last.pdckpt"
BEST_CHECKPOINT = "best.pdparams"


def atomic_save(obj: Any, path: Path) -> Path:
    """paddle.save to `path` atomically (edge_sdk.fileio.atomic_output)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as tmp:
        paddle.save(obj, str(tmp))
    return path


def _rename_keys(state: Dict[str, Any], mapping: Dict[str, str]) -> Dict[str, Any]:
    """Replace the longest `mapping` key that prefixes each key (and nested dict keys) by its value."""
    prefixes = sorted(mapping, key=len, reverse=True)

    def rename(key: str) -> str:
        for prefix in prefixes:
            if key == prefix or key.startswith(prefix + "_"):
                return mapping[prefix] + key[len(prefix) :]
        return key

    return {rename(k): (_rename_keys(v, mapping) if isinstance(v, dict) else v) for k, v in state.items()}


def optimizer_state(optimizer: paddle.optimizer.Optimizer, net: nn.Layer) -> Dict[str, Any]:
    """The optimizer's state keyed by structured parameter names ("backbone.conv1._conv.weight|_velocity_0")
    instead of generated ones ("conv2d_3.w_0_velocity_0"), which change with the creation order."""
    return _rename_keys(optimizer.state_dict(), {p.name: name + "|" for name, p in net.named_parameters()})


def load_optimizer_state(optimizer: paddle.optimizer.Optimizer, net: nn.Layer, state: Dict[str, Any]) -> None:
    """Inverse of `optimizer_state` for this process's parameter names."""
    optimizer.set_state_dict(_rename_keys(state, {name + "|": p.name for name, p in net.named_parameters()}))


@dataclass
class ResumePoint:
    """What a last.pdckpt says besides the weights: epochs done, their records, the best mAP@.5 so far."""

    epoch: int
    history: List[Dict[str, Any]]
    best_map50: Optional[float]
    recipe_sha256: Optional[str]


def save_training_state(
    path: Path,
    trainer: Trainer,
    epoch: int,
    history: List[Dict[str, Any]],
    best_map50: Optional[float],
    meta: Mapping[str, Any],
) -> Path:
    """Write the resumable state of `trainer` (model, optimizer, EMA, scaler, step) after `epoch` epochs."""
    return atomic_save(
        {
            "model": trainer.net.state_dict(),
            "optimizer": optimizer_state(trainer.optimizer, trainer.net),
            "ema": trainer.ema.state_dict() if trainer.ema is not None else None,
            "scaler": trainer.scaler.state_dict(),
            "epoch": epoch,
            "step": trainer.steps,
            "history": history,
            "best_map50": best_map50,
            **meta,
        },
        path,
    )


def load_training_state(path: Path, trainer: Trainer) -> ResumePoint:
    """Put a `save_training_state` file back into `trainer` (model, optimizer, EMA, scaler, step)."""
    saved = paddle.load(str(path))
    trainer.net.set_state_dict(saved["model"])
    load_optimizer_state(trainer.optimizer, trainer.net, saved["optimizer"])
    if trainer.ema is not None and saved.get("ema"):
        trainer.ema.set_state_dict(saved["ema"])
    if saved.get("scaler"):
        trainer.scaler.load_state_dict(saved["scaler"])
    trainer.steps = int(saved["step"])
    return ResumePoint(int(saved["epoch"]), list(saved["history"]), saved.get("best_map50"), saved.get("recipe_sha256"))


def save_best(path: Path, weights: Dict[str, Any], epoch: int, map50: Optional[float], meta: Mapping[str, Any]) -> Path:
    """Write the weights to keep (best.pdparams) with what `load_trained` needs to rebuild the model."""
    return atomic_save({"model": weights, "epoch": epoch, "map50": map50, **meta}, path)


def load_trained(checkpoint: Path) -> nn.Layer:
    """Rebuild the YOLOv3 saved in a best.pdparams, or the pruned one of a checkpoint carrying a
    prune_plan (`save_pruned`), in eval mode."""
    if not Path(checkpoint).is_file():
        raise DataError("no checkpoint at {}".format(checkpoint))
    saved = paddle.load(str(checkpoint))
    plan = saved.get("prune_plan")
    if plan:
        return load_pruned(PrunePlan.from_dict(plan), saved["model"])
    net = build_yolov3(saved["arch"], len(saved["classes"]), saved["width"], saved["anchors"])
    net.set_state_dict(saved["model"])
    net.eval()
    return net


def save_pruned(model: nn.Layer, path: Union[str, Path], extra: Optional[Mapping[str, Any]] = None) -> Path:
    """Write {"model": state dict, "prune_plan": plan, **extra} to `path` atomically (paddle.save)."""
    if model.prune_plan is None:
        raise RecipeError("save_pruned needs a model returned by prune_to_target or load_pruned")
    saved = {"model": model.state_dict(), "prune_plan": model.prune_plan.to_dict(), **dict(extra or {})}
    return atomic_save(saved, Path(path))
