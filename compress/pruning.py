"""Channel pruning of a YOLOv3 with PaddleSlim's L1-norm filter pruner, chosen by structure.

Layers are named by their sub-layer path in the model (`neck.yolo_block.0.conv_module.conv1.conv`),
never by Paddle's generated parameter names (`conv2d_27.w_0`), which change with construction order.
PaddleSlim traces the model and collects, for each conv, every parameter that must lose the same
channels (the batch norm after it, the convs that read it, a depthwise conv in between, all convs
of a residual trunk): a `Group`. Pruning removes output channels of a whole group at once.

Not prunable: the three `yolo_head.yolo_output.*` convs (their outputs are the prediction layout)
and convs whose output feeds a concat (PaddleSlim 2.6 has no pruning rule for concat: the two
backbone maps feeding the neck, the `neck.yolo_transition.*` convs, and residual trunks that
include such a map).

A pruned model's channel counts are described by its `PrunePlan` (the model's `prune_plan`), saved
as a plain dict beside its state dict (compress.checkpoint.save_pruned), from which `load_pruned`
rebuilds it. The prune stage (sensitivity scan, then `prune_to_target`) is compress.prune.
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import paddle
import paddle.nn as nn

from compress.config import DEFAULT_PRUNE_RATIOS
from compress.flops import model_flops
from compress.models import build_yolov3
from edge_sdk.errors import DataError, RecipeError

HEAD_OUTPUT_PREFIX = "yolo_head.yolo_output."
PLAN_VERSION = 1
_TOLERANCE = 0.05  # prune_to_target lands pruned/unpruned FLOPs in [target - tolerance, target]
_SLIM_LOGGERS = (
    "paddleslim.prune.collections",
    "paddleslim.dygraph.prune.var_group",
    "paddleslim.dygraph.prune.filter_pruner",
    "paddleslim.dygraph.prune.pruning_plan",
    "paddleslim.core.graph_wrapper",
    "paddleslim.core.dygraph",
)


@dataclass(frozen=True)
class Group:
    """Convs that lose the same output channels together.

    name: sub-layer path of the conv PaddleSlim leads the group with (the "master").
    params: structural names of the conv weights whose output channels (axis 0) are removed.
    consumers: structural names of the conv weights whose input channels (axis 1) follow.
    out_channels: channels of the group before pruning.
    """

    name: str
    params: Tuple[str, ...]
    consumers: Tuple[str, ...]
    out_channels: int


@contextlib.contextmanager
def _quiet_paddleslim() -> Iterator[None]:
    """PaddleSlim logs every pruned variable at INFO and every graph leaf at WARNING: keep it to errors."""
    loggers = [logging.getLogger(name) for name in _SLIM_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _weight_path(param_name: str) -> str:
    """ "a.b.conv.weight" -> "a.b.conv" (the conv's sub-layer path)."""
    return param_name[: -len(".weight")] if param_name.endswith(".weight") else param_name


class ChannelPruner:
    """PaddleSlim's `L1NormFilterPruner` over `model`, addressed by structural names.

    Tracing the model takes a few seconds (tens for DarkNet-53). `apply(ratios)` prunes the model in
    place and returns PaddleSlim's plan, which `restore(plan)` undoes; `finalize()` makes the
    current pruning permanent (drops PaddleSlim's backup copies of the original weights).
    """

    def __init__(self, model: nn.Layer, input_size: Tuple[int, int]) -> None:
        from paddleslim.dygraph import L1NormFilterPruner

        self.model = model
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.structural = {p.name: n for n, p in model.named_parameters()}
        self.generated = {n: p.name for n, p in model.named_parameters()}
        was_training = model.training
        model.eval()
        try:
            with _quiet_paddleslim():
                self.pruner = L1NormFilterPruner(model, [1, 3, self.input_size[0], self.input_size[1]])
        finally:
            if was_training:
                model.train()
        self.groups = self._collect_groups()
        self._by_name = {g.name: g for g in self.groups}

    def _collect_groups(self) -> List[Group]:
        shapes = {n: list(p.shape) for n, p in self.model.named_parameters()}
        groups = []
        for collection in self.pruner.collections:
            master = self.structural.get(collection.master_name)
            if master is None or collection.master_axis != 0 or len(shapes[master]) != 4:
                continue
            outputs, inputs = [], []
            for detail in collection.all_pruning_details():
                name = self.structural.get(detail.name)
                if name is None or len(shapes[name]) != 4:
                    continue
                (outputs if detail.axis == 0 else inputs).append(name)
            if any(n.startswith(HEAD_OUTPUT_PREFIX) for n in outputs):
                continue
            groups.append(
                Group(
                    name=_weight_path(master),
                    params=tuple(dict.fromkeys(outputs)),
                    consumers=tuple(dict.fromkeys(inputs)),
                    out_channels=int(shapes[master][0]),
                )
            )
        return groups

    def group(self, name: str) -> Group:
        if name not in self._by_name:
            raise RecipeError("{!r} is not a prunable group of this model".format(name))
        return self._by_name[name]

    def apply(self, ratios: Mapping[str, float], channel_multiple: int = 1):
        """Prune each named group by its ratio (fraction of output channels removed); returns the plan.

        channel_multiple > 1: the remaining channel count of each group is rounded to that multiple
        (never below it). A group always keeps at least one channel.
        """
        generated = {}
        for name, ratio in ratios.items():
            group = self.group(name)
            ratio = rounded_ratio(group.out_channels, float(ratio), channel_multiple)
            if ratio > 0:
                generated[self.generated[name + ".weight"]] = ratio
        with _quiet_paddleslim():
            return self.pruner.prune_vars(generated, axis=0)

    def restore(self, plan) -> None:
        """Undo `apply` (the weights come back from PaddleSlim's backups)."""
        with _quiet_paddleslim():
            plan.restore(self.model)

    def finalize(self) -> None:
        """Make the current pruning permanent: drop the "*_backup" buffers PaddleSlim adds to layers."""
        _drop_backups(self.model)


def rounded_ratio(channels: int, ratio: float, multiple: int = 1) -> float:
    """The ratio actually applied to a group of `channels`: at least one channel (or `multiple`) is
    kept and, for multiple > 1, the remaining count is a multiple of `multiple`."""
    ratio = min(max(ratio, 0.0), 1.0)
    remaining = channels * (1.0 - ratio)
    if multiple > 1:
        if channels <= multiple:
            return 0.0
        remaining = max(multiple, int(round(remaining / multiple)) * multiple)
    else:
        remaining = max(1, int(round(remaining)))
    return max(0.0, (channels - remaining) / float(channels))


def _drop_backups(model: nn.Layer) -> None:
    for layer in model.sublayers(include_self=True):
        for key in [k for k in layer._buffers if k.endswith("_backup")]:
            del layer._buffers[key]


def prunable_groups(model: nn.Layer, input_size: Tuple[int, int]) -> List[Group]:
    """The prunable groups of `model` traced at input_size (height, width); see the module docstring."""
    return ChannelPruner(model, input_size).groups


# ---------------------------------------------------------------------------------------------
# Allocation: per-group ratios that reach a FLOPs target with the least sensitivity loss


def _loss_curve(losses: Mapping[Any, float], ratios: Sequence[float]) -> Tuple[np.ndarray, np.ndarray]:
    """(ratios, losses) starting at (0, 0), losses made non-decreasing (noise removed) and strictly
    increasing by a tiny ratio term, so that equally insensitive groups are pruned evenly."""
    points = {0.0: 0.0}
    for r in ratios:
        points.setdefault(float(r), 0.0)
    for r, loss in losses.items():
        points[round(float(r), 4)] = float(loss) if loss is not None and math.isfinite(float(loss)) else 0.0
    xs = np.array(sorted(points), np.float64)
    ys = np.maximum.accumulate(np.maximum([points[x] for x in xs], 0.0)) + 1e-6 * xs
    return xs, ys


def ratios_for_loss(curves: Mapping[str, Tuple[np.ndarray, np.ndarray]], threshold: float) -> Dict[str, float]:
    """Per group, the largest ratio whose (interpolated) loss stays <= threshold (PaddleSlim's
    `get_ratios_by_loss`, on monotone curves)."""
    out = {}
    for name, (xs, ys) in curves.items():
        if threshold >= ys[-1]:
            out[name] = float(xs[-1])
        else:
            out[name] = float(np.interp(threshold, ys, xs))
    return out


def prune_to_target(
    model: nn.Layer,
    input_size: Tuple[int, int],
    flops_reduction: float,
    sensitivities: Optional[Mapping[str, Mapping[Any, float]]] = None,
    channel_multiple: int = 1,
    max_ratio: Optional[float] = None,
    iterations: int = 30,
) -> Tuple[nn.Layer, Dict[str, float], float, float]:
    """Prune a copy of `model` so that its FLOPs are <= flops_reduction x the original's (within 0.05).

    sensitivities: {group: {ratio: metric loss}} from `compress.sensitivity.sensitivity`; groups
    without an entry count as insensitive. None prunes all groups evenly. The per-group ratios come
    from a bisection on a loss threshold over the sensitivity curves (each group pruned as far as
    its loss stays under the threshold), FLOPs measured with `compress.flops.model_flops` on the
    pruned model each time. max_ratio: the most a group is pruned (default: the highest ratio in
    `sensitivities`, else 0.7).

    Returns (pruned model with its plan in `.prune_plan`, applied ratios per group, FLOPs before,
    FLOPs after). Raises RecipeError when the target cannot be reached.
    """
    if not 0.0 < float(flops_reduction) < 1.0:
        raise RecipeError("prune.flops_reduction: expected a number in (0, 1), got {!r}".format(flops_reduction))
    target = float(flops_reduction)
    pruned = clone_model(model)
    pruned.eval()
    pruner = ChannelPruner(pruned, input_size)
    if not pruner.groups:
        raise RecipeError("the model has no prunable convolution group")
    flops_before = model_flops(pruned, input_size)
    grid = sorted({float(r) for losses in (sensitivities or {}).values() for r in losses}) or list(DEFAULT_PRUNE_RATIOS)
    cap = float(max_ratio) if max_ratio is not None else max(grid)
    curves = {}
    for group in pruner.groups:
        losses = {float(r): v for r, v in ((sensitivities or {}).get(group.name) or {}).items() if float(r) <= cap}
        curves[group.name] = _loss_curve(losses, [r for r in grid if r <= cap])

    def measure(ratios: Mapping[str, float]) -> float:
        plan = pruner.apply(ratios, channel_multiple)
        try:
            return model_flops(pruned, input_size) / flops_before
        finally:
            pruner.restore(plan)

    low, high = 0.0, max(float(ys[-1]) for _, ys in curves.values())
    best = None  # (flops ratio, ratios) of the feasible candidate closest to the target
    most = ratios_for_loss(curves, high)
    fraction = measure(most)
    if fraction > target:
        raise RecipeError(
            "prune.flops_reduction {:.2f} is out of reach: pruning every group by up to {:.0%} leaves {:.1%} of the FLOPs".format(
                target, cap, fraction
            )
        )
    best = (fraction, most)
    for _ in range(iterations):
        if best[0] >= target - _TOLERANCE:
            break
        threshold = 0.5 * (low + high)
        ratios = ratios_for_loss(curves, threshold)
        fraction = measure(ratios)
        if fraction <= target:
            high = threshold
            if fraction > best[0]:
                best = (fraction, ratios)
        else:
            low = threshold
    if best[0] < target - _TOLERANCE:
        best = _greedy_fill(pruner, curves, best, target, channel_multiple, measure)
    applied = {name: rounded_ratio(pruner.group(name).out_channels, r, channel_multiple) for name, r in best[1].items()}
    applied = {name: r for name, r in applied.items() if r > 0}
    pruner.apply(applied, channel_multiple=1)
    pruner.finalize()
    flops_after = model_flops(pruned, input_size)
    pruned.prune_plan = make_plan(pruned, applied, input_size, flops_before, flops_after)
    return pruned, applied, float(flops_before), float(flops_after)


def _greedy_fill(pruner, curves, best, target, channel_multiple, measure):
    """The bisection jumped over the window (coarse channel rounding): start from the feasible ratios
    and give back pruning, most sensitive group first, while the FLOPs stay under the target."""
    fraction, ratios = best
    ratios = dict(ratios)
    order = sorted(ratios, key=lambda n: -float(np.interp(ratios[n], *curves[n])))
    for name in order:
        channels = pruner.group(name).out_channels
        step = max(channel_multiple, 1) / float(channels)
        while ratios[name] > 0 and fraction < target - _TOLERANCE:
            trial = dict(ratios)
            trial[name] = max(0.0, ratios[name] - step)
            trial_fraction = measure(trial)
            if trial_fraction > target:
                break
            ratios, fraction = trial, trial_fraction
        if fraction >= target - _TOLERANCE:
            break
    return fraction, ratios


# ---------------------------------------------------------------------------------------------
# Copies and plans


def clone_model(model: nn.Layer) -> nn.Layer:
    """A new YOLOv3 with the same architecture, channel counts (prune plan) and weights as `model` (eval mode)."""
    copy = build_yolov3(model.arch, model.num_classes, model.width, model.anchors)
    if model.prune_plan is not None:
        _reshape_to_plan(copy, model.prune_plan)
        copy.prune_plan = model.prune_plan
    copy.set_state_dict(model.state_dict())
    copy.eval()
    return copy


@dataclass(frozen=True)
class PrunePlan:
    """The channel counts of a pruned YOLOv3, enough to rebuild it before loading its state dict.

    arch, num_classes, width, anchors: the unpruned model's build arguments; input_size: (height,
    width) it was traced and measured at; ratios: pruning ratio applied per group; shapes: the shape
    of every parameter that differs from the unpruned model's; conv_groups: the group count of every
    grouped conv (depthwise convs lose channels with their group); flops_before, flops_after: FLOPs
    at input_size. Stored in checkpoints as the plain dict `to_dict` gives (JSON-serialisable).
    """

    arch: str
    num_classes: int
    width: float
    anchors: List[List[float]]
    input_size: List[int]
    ratios: Dict[str, float]
    shapes: Dict[str, List[int]]
    conv_groups: Dict[str, int]
    flops_before: float
    flops_after: float
    version: int = PLAN_VERSION

    def to_dict(self) -> Dict[str, Any]:
        """The plan as saved in a checkpoint's "prune_plan"."""
        return {
            "version": self.version,
            "arch": self.arch,
            "num_classes": self.num_classes,
            "width": self.width,
            "anchors": self.anchors,
            "input_size": self.input_size,
            "ratios": self.ratios,
            "shapes": self.shapes,
            "conv_groups": self.conv_groups,
            "flops_before": self.flops_before,
            "flops_after": self.flops_after,
        }

    @classmethod
    def from_dict(cls, saved: Mapping[str, Any]) -> PrunePlan:
        """Inverse of `to_dict`; DataError for another plan version."""
        if int(saved.get("version", 0)) != PLAN_VERSION:
            raise DataError("unsupported pruning plan version {!r}".format(saved.get("version")))
        return cls(
            arch=saved["arch"],
            num_classes=saved["num_classes"],
            width=saved["width"],
            anchors=saved.get("anchors"),
            input_size=saved.get("input_size"),
            ratios=saved.get("ratios", {}),
            shapes=saved.get("shapes", {}),
            conv_groups=saved.get("conv_groups", {}),
            flops_before=saved.get("flops_before"),
            flops_after=saved.get("flops_after"),
            version=int(saved["version"]),
        )


def make_plan(
    model: nn.Layer,
    ratios: Mapping[str, float],
    input_size: Tuple[int, int],
    flops_before: float,
    flops_after: float,
) -> PrunePlan:
    """The plan of a pruned `model`: architecture, ratios per group and the shape of every parameter
    that differs from the unpruned model, plus grouped-conv counts."""
    reference = dict(build_yolov3(model.arch, model.num_classes, model.width, model.anchors).named_parameters())
    shapes = {n: list(p.shape) for n, p in model.named_parameters() if list(p.shape) != list(reference[n].shape)}
    conv_groups = {}
    for path, layer in model.named_sublayers():
        if isinstance(layer, nn.Conv2D) and layer._groups > 1:
            conv_groups[path] = int(layer._groups)
    return PrunePlan(
        arch=model.arch,
        num_classes=int(model.num_classes),
        width=float(model.width),
        anchors=[list(a) for a in model.anchors],
        input_size=[int(input_size[0]), int(input_size[1])],
        ratios={k: float(v) for k, v in sorted(ratios.items())},
        shapes=shapes,
        conv_groups=conv_groups,
        flops_before=float(flops_before),
        flops_after=float(flops_after),
    )


def _place_of(tensor):
    """The paddle Place object a LoDTensor lives on (what `LoDTensor.set` accepts)."""
    place = tensor._place()
    if place.is_cpu_place():
        return paddle.CPUPlace()
    if place.is_cuda_pinned_place():
        return paddle.CUDAPinnedPlace()
    generic = paddle.framework.core.Place()
    generic.set_place(place)
    return paddle.CUDAPlace(generic.gpu_device_id())


def _reshape_to_plan(model: nn.Layer, plan: PrunePlan) -> None:
    """Give the parameters of an unpruned `model` the plan's shapes (values zero) and grouped convs
    their group counts, so that a pruned state dict loads into it."""
    params = dict(model.named_parameters())
    for name, shape in plan.shapes.items():
        if name not in params:
            raise DataError("pruning plan names parameter {} that the model does not have".format(name))
        param = params[name]
        tensor = param.value().get_tensor()
        tensor.set(np.zeros([int(s) for s in shape], dtype=np.asarray(param.numpy()).dtype), _place_of(tensor))
    layers = dict(model.named_sublayers())
    for path, groups in plan.conv_groups.items():
        if path not in layers:
            raise DataError("pruning plan names layer {} that the model does not have".format(path))
        layers[path]._groups = int(groups)


def load_pruned(plan: PrunePlan, state_dict: Mapping[str, Any]) -> nn.Layer:
    """Rebuild a pruned YOLOv3 from its plan (`make_plan`) and state dict (eval mode)."""
    model = build_yolov3(plan.arch, int(plan.num_classes), float(plan.width), plan.anchors)
    _reshape_to_plan(model, plan)
    own = dict(model.state_dict())
    for key, value in state_dict.items():
        if key in own and list(np.shape(value)) != list(own[key].shape):
            raise DataError(
                "pruned checkpoint: {} has shape {}, the plan gives {}".format(
                    key, list(np.shape(value)), list(own[key].shape)
                )
            )
    missing = sorted(set(own) - set(state_dict))
    if missing:
        raise DataError("pruned checkpoint lacks {} entries, e.g. {}".format(len(missing), missing[0]))
    model.set_state_dict(dict(state_dict))
    model.prune_plan = plan
    model.eval()
    return model
