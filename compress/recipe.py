"""The recipe: the YAML a user writes for `edge-sdk compress`, typed and validated on load.

Every section is a frozen dataclass; a field's type and its `metadata` (minimum, maximum,
choices, multiple_of) drive one generic validator, so a new stage (prune, distill, quantize) is
a new dataclass and a new field of `Recipe`. Errors name the field::

    train.epochs: expected an integer >= 1, got 'ten'
    train.lerning_rate: unknown field (did you mean 'lr'?)
"""

from __future__ import annotations

import difflib
import hashlib
import typing
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

from calibration.config import Int8Section
from compress.distill import DistillSection
from compress.prune import PruneSection
from compress.qat import QATSection
from edge_sdk.errors import RecipeError

ARCHS = ("mobilenet_v1", "darknet53", "mobilenet_v3_large")
STAGES = ("train", "prune", "distill", "int8", "export")


def _f(default: Any = MISSING, **meta: Any) -> Any:
    """A dataclass field with validation metadata (minimum, maximum, choices, multiple_of)."""
    if isinstance(default, (list, dict)):
        value = default
        return field(default_factory=lambda: type(value)(value), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class ModelSection:
    """arch: backbone name; width: channel multiplier of backbone, neck and head (1.0 = PaddleDetection's).

    input_size: square network input in pixels (multiple of 32). pretrained: optional .pdparams path
    (whole model or backbone). anchors: null (COCO anchors), "auto" (k-means on the training boxes
    at input_size) or nine [w, h] pairs in input pixels, smallest first.
    """

    arch: str = _f("mobilenet_v1", choices=ARCHS)
    width: float = _f(1.0, minimum=0.05, maximum=4.0)
    input_size: int = _f(608, minimum=32, multiple_of=32)
    pretrained: Optional[str] = None
    anchors: Union[None, str, List[List[float]]] = None


@dataclass(frozen=True)
class DataSection:
    """path: a dataset folder, or "synthetic" for the built-in PCB defect generator.

    train / val: COCO JSON files (or Pascal VOC folders) relative to `path`. images, seed, size (w, h): the synthetic data.
    """

    path: str = "synthetic"
    train: str = "train.json"
    val: str = "val.json"
    images: int = _f(200, minimum=2)
    seed: int = 0
    size: List[int] = _f([320, 320])


@dataclass(frozen=True)
class AugmentSection:
    """Training augmentations (PaddleDetection's YOLOv3 list); mixup only for the first mixup_epochs."""

    distort: bool = True
    expand: bool = True
    crop: bool = True
    flip: bool = True
    mixup_epochs: int = _f(0, minimum=0)


@dataclass(frozen=True)
class LossSection:
    """YOLOv3 loss settings (PaddleDetection's YOLOv3Loss)."""

    ignore_thresh: float = _f(0.7, minimum=0.0, maximum=1.0)
    label_smooth: bool = False
    iou_thresh: float = _f(1.0, minimum=0.0, maximum=1.0)
    """Also assign a box to every anchor with shape IoU above this (1.0: best anchor only, as YOLOv3)."""


@dataclass(frozen=True)
class TrainSection:
    """Optimisation. lr is the peak learning rate for one step of batch_size * accumulate_steps images
    (per GPU); warmup_steps linear from 0; milestones: epochs where piecewise multiplies lr by gamma.
    multi_scale: sizes (multiples of 32) drawn per batch, or null for input_size only.
    """

    epochs: int = _f(270, minimum=1)
    batch_size: int = _f(8, minimum=1)
    accumulate_steps: int = _f(1, minimum=1)
    optimizer: str = _f("momentum", choices=("momentum", "adamw"))
    lr: float = _f(0.001, minimum=0.0)
    momentum: float = _f(0.9, minimum=0.0, maximum=1.0)
    weight_decay: float = _f(0.0005, minimum=0.0)
    warmup_steps: int = _f(1000, minimum=0)
    schedule: str = _f("piecewise", choices=("cosine", "piecewise"))
    milestones: List[int] = _f([216, 243])
    gamma: float = _f(0.1, minimum=0.0)
    ema: bool = True
    ema_decay: float = _f(0.9998, minimum=0.0, maximum=1.0)
    amp: bool = True
    freeze_backbone_epochs: int = _f(0, minimum=0)
    multi_scale: Optional[List[int]] = None
    augment: AugmentSection = field(default_factory=AugmentSection)
    loss: LossSection = field(default_factory=LossSection)
    max_boxes: int = _f(50, minimum=1)
    num_workers: int = _f(2, minimum=0)
    eval_every: int = _f(1, minimum=1)
    seed: int = 0


@dataclass(frozen=True)
class PostprocessSection:
    """Decoding and NMS baked into the exported graph; score_threshold is the runtime default."""

    conf_threshold: float = _f(0.005, minimum=0.0, maximum=1.0)
    nms_iou: float = _f(0.45, minimum=0.0, maximum=1.0)
    nms_top_k: int = _f(1000, minimum=1)
    keep_top_k: int = _f(100, minimum=1)
    score_threshold: float = _f(0.3, minimum=0.0, maximum=1.0)


@dataclass(frozen=True)
class ExportSection:
    """How every stage's bundle is written. golden_images: val images shipped with the bundle's own FP32
    detections (an INT8 bundle carries those of the FP32 model it was quantized from), which the robot
    checks after install (device.golden); 0 ships none."""

    postprocess: PostprocessSection = field(default_factory=PostprocessSection)
    golden_images: int = _f(2, minimum=0)


@dataclass(frozen=True)
class OutputSection:
    """The bundle's name and version (file NAME-VERSION.edgebundle)."""

    name: str = "yolov3"
    version: str = "0.1.0"


@dataclass(frozen=True)
class Recipe:
    """A whole recipe. stages: the compress stages to run, in order (train, prune, distill, int8, export;
    see compress.stages). prune / distill / int8 / qat: those stages' settings (qat: int8.fallback qat)."""

    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    train: TrainSection = field(default_factory=TrainSection)
    prune: PruneSection = field(default_factory=PruneSection)
    distill: DistillSection = field(default_factory=DistillSection)
    int8: Int8Section = field(default_factory=Int8Section)
    qat: QATSection = field(default_factory=QATSection)
    export: ExportSection = field(default_factory=ExportSection)
    output: OutputSection = field(default_factory=OutputSection)
    stages: List[str] = _f(["train", "export"])
    source: str = ""
    """Path the recipe was loaded from ("" when built in code); not a YAML field."""
    sha256: str = ""
    """sha256 of the recipe file's bytes; not a YAML field."""

    def to_dict(self) -> Dict[str, Any]:
        """The YAML fields only (source and sha256 left out)."""
        out = _to_plain(self)
        out.pop("source", None)
        out.pop("sha256", None)
        return out


_NOT_YAML = {"source", "sha256"}
_ALIASES = {
    "learning_rate": "lr",
    "base_lr": "lr",
    "batch": "batch_size",
    "epoch": "epochs",
    "image_size": "input_size",
}


def _to_plain(value: Any) -> Any:
    if is_dataclass(value):
        return {f.name: _to_plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    return value


def _show(value: Any) -> str:
    return repr(value)


def _check_number(value: Any, path: str, integer: bool, meta: Dict[str, Any]) -> Any:
    lo, hi, mult = meta.get("minimum"), meta.get("maximum"), meta.get("multiple_of")
    noun = "an integer" if integer else "a number"
    bounds = []
    if lo is not None and hi is not None:
        bounds.append("between {} and {}".format(lo, hi))
    elif lo is not None:
        bounds.append(">= {}".format(lo))
    elif hi is not None:
        bounds.append("<= {}".format(hi))
    if mult is not None:
        bounds.append("and a multiple of {}".format(mult))
    expected = " ".join([noun] + bounds)
    ok_types = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, ok_types):
        raise RecipeError("{}: expected {}, got {}".format(path, expected, _show(value)))
    if (lo is not None and value < lo) or (hi is not None and value > hi) or (mult is not None and value % mult):
        raise RecipeError("{}: expected {}, got {}".format(path, expected, _show(value)))
    return value if integer else float(value)


def _convert(value: Any, tp: Any, path: str, meta: Dict[str, Any]) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Union:
        if value is None and type(None) in args:
            return None
        errors = []
        for option in args:
            if option is type(None):
                continue
            try:
                return _convert(value, option, path, meta)
            except RecipeError as exc:
                errors.append(str(exc).split(": expected ", 1)[1].split(", got")[0])
        raise RecipeError(
            "{}: expected {}{}, got {}".format(
                path, " or ".join(errors), " or null" if type(None) in args else "", _show(value)
            )
        )
    if is_dataclass(tp):
        return _load_section(tp, value, path)
    if origin in (list, List, tuple, Tuple):
        if not isinstance(value, list):
            raise RecipeError("{}: expected a list, got {}".format(path, _show(value)))
        item_tp = args[0] if args else Any
        return [_convert(v, item_tp, "{}[{}]".format(path, i), meta) for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise RecipeError("{}: expected true or false, got {}".format(path, _show(value)))
        return value
    if tp is int:
        return _check_number(value, path, True, meta)
    if tp is float:
        return _check_number(value, path, False, meta)
    if tp is str:
        choices = meta.get("choices")
        if not isinstance(value, str) or not value:
            expected = "one of " + ", ".join(choices) if choices else "a non-empty string"
            raise RecipeError("{}: expected {}, got {}".format(path, expected, _show(value)))
        if choices and value not in choices:
            hint = difflib.get_close_matches(value, choices, n=1)
            raise RecipeError(
                "{}: expected one of {}, got {}{}".format(
                    path, ", ".join(choices), _show(value), " (did you mean {!r}?)".format(hint[0]) if hint else ""
                )
            )
        return value
    if tp is Any:
        return value
    raise TypeError("unsupported recipe field type {!r} at {}".format(tp, path))


def _load_section(cls: Any, data: Any, path: str) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RecipeError("{}: expected a mapping of fields, got {}".format(path or "recipe", _show(data)))
    hints = typing.get_type_hints(cls)
    known = [f.name for f in fields(cls) if f.name not in _NOT_YAML]
    for key in data:
        if key not in known:
            where = "{}.{}".format(path, key) if path else str(key)
            hint = difflib.get_close_matches(str(key), known, n=1, cutoff=0.6)
            if not hint:
                alias = difflib.get_close_matches(str(key), list(_ALIASES), n=1, cutoff=0.6)
                hint = [_ALIASES[alias[0]]] if alias and _ALIASES[alias[0]] in known else []
            suggestion = (
                " (did you mean {!r}?)".format(hint[0]) if hint else " (known fields: {})".format(", ".join(known))
            )
            raise RecipeError("{}: unknown field{}".format(where, suggestion))
    kwargs = {}
    for f in fields(cls):
        if f.name in _NOT_YAML or f.name not in data:
            continue
        where = "{}.{}".format(path, f.name) if path else f.name
        kwargs[f.name] = _convert(data[f.name], hints[f.name], where, dict(f.metadata))
    return cls(**kwargs)


def _cross_check(recipe: Recipe) -> None:
    """Constraints spanning fields."""
    model, train = recipe.model, recipe.train
    anchors = model.anchors
    if isinstance(anchors, str) and anchors != "auto":
        raise RecipeError("model.anchors: expected null, 'auto' or nine [w, h] pairs, got {!r}".format(anchors))
    if isinstance(anchors, list):
        if len(anchors) != 9 or any(len(a) != 2 or min(a) <= 0 for a in anchors):
            raise RecipeError("model.anchors: expected nine [w, h] pairs of positive numbers, got {!r}".format(anchors))
    if train.multi_scale is not None:
        if not train.multi_scale:
            raise RecipeError("train.multi_scale: expected a non-empty list of sizes or null, got []")
        for i, s in enumerate(train.multi_scale):
            if s < 32 or s % 32:
                raise RecipeError(
                    "train.multi_scale[{}]: expected an integer >= 32 and a multiple of 32, got {!r}".format(i, s)
                )
    if train.schedule == "piecewise" and sorted(train.milestones) != list(train.milestones):
        raise RecipeError("train.milestones: expected increasing epochs, got {!r}".format(train.milestones))
    if train.augment.mixup_epochs > train.epochs:
        raise RecipeError(
            "train.augment.mixup_epochs: expected at most train.epochs ({}), got {}".format(
                train.epochs, train.augment.mixup_epochs
            )
        )
    if train.freeze_backbone_epochs > train.epochs:
        raise RecipeError(
            "train.freeze_backbone_epochs: expected at most train.epochs ({}), got {}".format(
                train.epochs, train.freeze_backbone_epochs
            )
        )
    if len(recipe.data.size) != 2 or min(recipe.data.size) < 32:
        raise RecipeError(
            "data.size: expected [width, height] of at least 32 pixels, got {!r}".format(recipe.data.size)
        )
    for i, stage in enumerate(recipe.stages):
        if stage not in STAGES:
            hint = difflib.get_close_matches(stage, STAGES, n=1)
            raise RecipeError(
                "stages[{}]: expected one of {}, got {!r}{}".format(
                    i, ", ".join(STAGES), stage, " (did you mean {!r}?)".format(hint[0]) if hint else ""
                )
            )
    if len(set(recipe.stages)) != len(recipe.stages) or [s for s in STAGES if s in recipe.stages] != list(
        recipe.stages
    ):
        raise RecipeError(
            "stages: expected each stage at most once, in the order {}, got {!r}".format(
                ", ".join(STAGES), recipe.stages
            )
        )


def _check_compression(recipe: Recipe) -> None:
    """Constraints of the prune / distill stages."""
    prune = recipe.prune
    if not prune.ratios:
        raise RecipeError("prune.ratios: expected a non-empty list of ratios, got []")
    if sorted(set(prune.ratios)) != list(prune.ratios):
        raise RecipeError("prune.ratios: expected increasing ratios, got {!r}".format(list(prune.ratios)))
    if "distill" in recipe.stages and "prune" not in recipe.stages:
        raise RecipeError("stages: distill fine-tunes the pruned model, so it needs prune before it")
    if "train" not in recipe.stages:
        raise RecipeError("stages: expected train as the first stage, got {!r}".format(recipe.stages))


def recipe_from_dict(data: Any, source: str = "", sha256: str = "") -> Recipe:
    """Validate a parsed YAML document; raises RecipeError naming the first bad field."""
    recipe = _load_section(Recipe, data, "")
    _cross_check(recipe)
    _check_compression(recipe)
    return _replace(recipe, source=source, sha256=sha256)


def _replace(obj: Any, **changes: Any) -> Any:
    import dataclasses

    return dataclasses.replace(obj, **changes)


def load_recipe(path: Union[str, Path]) -> Recipe:
    """Read and validate a recipe YAML file."""
    import yaml

    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise RecipeError("cannot read recipe {}: {}".format(path, exc.strerror or exc)) from None
    try:
        data = yaml.safe_load(raw.decode("utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise RecipeError("recipe {} is not valid YAML: {}".format(path, str(exc).replace("\n", " "))) from None
    if not data:
        raise RecipeError("recipe {} sets no fields (it is empty or only comments); see recipes/*.yml".format(path))
    try:
        return recipe_from_dict(data, source=str(path), sha256=hashlib.sha256(raw).hexdigest())
    except RecipeError as exc:
        raise RecipeError("{}: {}".format(path.name, exc)) from None


def replace(obj: Any, **changes: Any) -> Any:
    """dataclasses.replace, re-exported for callers that tweak a loaded recipe (tests, the demo)."""
    return _replace(obj, **changes)
