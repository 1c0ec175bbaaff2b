"""The recipe: the YAML a user writes for `edge-sdk compress`, typed and validated on load.

`Recipe` and every one of its sections live here, in a module that imports nothing else of compress, so
the modules doing the work (train, prune, distill, qat, the stages) take their settings from here and
never from each other. Every section is a frozen dataclass whose field types and constraints
(`edge_sdk.schema.checked`: minimum, maximum, choices, multiple_of) drive one generic validator
(`edge_sdk.schema.Schema`); a new stage's settings are a new dataclass and a new field of `Recipe`.
Errors name the field::

    train.epochs: expected an integer >= 1, got 'ten'
    train.lerning_rate: unknown field (did you mean 'lr'?)
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

from calibration.config import PTQ_ALGOS
from edge_sdk.errors import RecipeError
from edge_sdk.manifest import ARCHS, MAX_DETECTIONS, MAX_INPUT_SIDE, MAX_NMS_CANDIDATES
from edge_sdk.schema import Schema, checked, to_plain

STAGES = ("train", "prune", "distill", "int8", "export")
"""The names a recipe's `stages` may use, in the order they run (what each does: compress.stages.STAGE_TABLE)."""
DEFAULT_PRUNE_RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
WEIGHT_QUANTIZE_TYPES = ("channel_wise_abs_max", "abs_max")
ACTIVATION_QUANTIZE_TYPES = ("moving_average_abs_max", "range_abs_max", "abs_max")


@dataclass(frozen=True)
class ModelSection:
    """arch: backbone name; width: channel multiplier of backbone, neck and head (1.0 = PaddleDetection's).

    input_size: square network input in pixels (multiple of 32). pretrained: optional .pdparams path
    (whole model or backbone). anchors: null (COCO anchors), "auto" (k-means on the training boxes
    at input_size) or nine [w, h] pairs in input pixels, smallest first.
    """

    arch: str = checked("mobilenet_v1", choices=ARCHS)
    width: float = checked(1.0, minimum=0.05, maximum=4.0)
    input_size: int = checked(608, minimum=32, maximum=MAX_INPUT_SIDE, multiple_of=32)
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
    images: int = checked(200, minimum=2, maximum=100_000)
    seed: int = 0
    size: List[int] = checked([320, 320], maximum=4096)


@dataclass(frozen=True)
class AugmentSection:
    """Training augmentations (PaddleDetection's YOLOv3 list); mixup only for the first mixup_epochs."""

    distort: bool = True
    expand: bool = True
    crop: bool = True
    flip: bool = True
    mixup_epochs: int = checked(0, minimum=0)


@dataclass(frozen=True)
class LossSection:
    """YOLOv3 loss settings (PaddleDetection's YOLOv3Loss)."""

    ignore_thresh: float = checked(0.7, minimum=0.0, maximum=1.0)
    label_smooth: bool = False
    iou_thresh: float = checked(1.0, minimum=0.0, maximum=1.0)
    """Also assign a box to every anchor with shape IoU above this (1.0: best anchor only, as YOLOv3)."""


@dataclass(frozen=True)
class TrainSection:
    """Optimisation. lr is the peak learning rate for one step of batch_size * accumulate_steps images
    (per GPU); warmup_steps linear from 0; milestones: epochs where piecewise multiplies lr by gamma.
    multi_scale: sizes (multiples of 32) drawn per batch, or null for input_size only.
    """

    epochs: int = checked(270, minimum=1)
    batch_size: int = checked(8, minimum=1)
    accumulate_steps: int = checked(1, minimum=1)
    optimizer: str = checked("momentum", choices=("momentum", "adamw"))
    lr: float = checked(0.001, minimum=0.0)
    momentum: float = checked(0.9, minimum=0.0, maximum=1.0)
    weight_decay: float = checked(0.0005, minimum=0.0)
    warmup_steps: int = checked(1000, minimum=0)
    schedule: str = checked("piecewise", choices=("cosine", "piecewise"))
    milestones: List[int] = checked([216, 243])
    gamma: float = checked(0.1, minimum=0.0)
    ema: bool = True
    ema_decay: float = checked(0.9998, minimum=0.0, maximum=1.0)
    amp: bool = True
    freeze_backbone_epochs: int = checked(0, minimum=0)
    multi_scale: Optional[List[int]] = None
    augment: AugmentSection = field(default_factory=AugmentSection)
    loss: LossSection = field(default_factory=LossSection)
    max_boxes: int = checked(50, minimum=1)
    num_workers: int = checked(2, minimum=0)
    eval_every: int = checked(1, minimum=1)
    seed: int = 0


@dataclass(frozen=True)
class PostprocessSection:
    """Decoding and NMS baked into the exported graph; score_threshold is the runtime default."""

    conf_threshold: float = checked(0.005, minimum=0.0, maximum=1.0)
    nms_iou: float = checked(0.45, minimum=0.0, maximum=1.0)
    nms_top_k: int = checked(100, minimum=1, maximum=MAX_NMS_CANDIDATES)  # compress.export.EXPORT_POSTPROCESS
    keep_top_k: int = checked(100, minimum=1, maximum=MAX_DETECTIONS)
    score_threshold: float = checked(0.3, minimum=0.0, maximum=1.0)


@dataclass(frozen=True)
class ExportSection:
    """How every stage's bundle is written. golden_images: val images shipped with the bundle's own FP32
    detections (an INT8 bundle carries those of the FP32 model it was quantized from), which the robot
    checks after install (device.golden); 0 ships none."""

    postprocess: PostprocessSection = field(default_factory=PostprocessSection)
    golden_images: int = checked(2, minimum=0)


@dataclass(frozen=True)
class OutputSection:
    """The bundle's name and version (file NAME-VERSION.edgebundle)."""

    name: str = "yolov3"
    version: str = "0.1.0"


@dataclass(frozen=True)
class PruneSection:
    """Recipe section `prune`.

    flops_reduction: pruned FLOPs <= this fraction of the unpruned model's (0.5 halves them).
    ratios: pruning ratios at which each group's sensitivity is measured (the highest is also the
    most a group is ever pruned). val_images: size of the val subset for the sensitivity scan
    (0 = whole val set). channel_multiple: remaining channel counts are rounded to this multiple
    (8 suits TensorRT's FP16/INT8 kernels; 1 = no rounding). epochs: fine-tuning after pruning
    (with distillation when the `distill` stage runs).
    """

    flops_reduction: float = checked(0.5, minimum=0.05, maximum=0.95)
    ratios: List[float] = checked(list(DEFAULT_PRUNE_RATIOS), minimum=0.01, maximum=0.95)
    val_images: int = checked(50, minimum=0)
    channel_multiple: int = checked(8, minimum=1)
    epochs: int = checked(20, minimum=0)


@dataclass(frozen=True)
class DistillSection:
    """Recipe section `distill`: total loss = detection loss + weight x output distillation
    + feature_weight x neck-feature MSE, fine-tuning the pruned student for `epochs`."""

    weight: float = checked(1.0, minimum=0.0)
    feature_weight: float = checked(0.0, minimum=0.0)
    epochs: int = checked(20, minimum=1)


@dataclass(frozen=True)
class Int8Section:
    """INT8 calibration.

    calibration_images: how many images `select_calibration_set` picks from the training set;
    seed, brightness_bins, size_bins: its selection. algo: PTQ algorithm. batch_size: calibration
    batch. budget_map50: the most mAP@.5 (in points, 1.0 = 0.01 mAP) INT8 may lose against FP32 on
    the val set. max_retries: attempts after the first, each keeping `layers_per_retry` more of the
    most sensitive layers in float. sensitivity_images: val images the per-layer sensitivity is
    measured on. fallback: what to do when PTQ stays over budget: "fail" or "qat" (see compress.qat).
    """

    calibration_images: int = checked(64, minimum=1)
    seed: int = checked(0, minimum=0)
    brightness_bins: int = checked(4, minimum=1)
    size_bins: int = checked(4, minimum=1)
    algo: str = checked("KL", choices=PTQ_ALGOS)
    batch_size: int = checked(8, minimum=1)
    budget_map50: float = checked(1.0, minimum=0.0, maximum=100.0)
    max_retries: int = checked(3, minimum=0)
    layers_per_retry: int = checked(2, minimum=1)
    sensitivity_images: int = checked(16, minimum=1)
    fallback: str = checked("fail", choices=("fail", "qat"))


@dataclass(frozen=True)
class QATSection:
    """The recipe's `qat` section. epochs: fine-tuning epochs; lr: constant after `warmup_steps` linear
    steps (a fraction of the training lr: the model is already trained); batch_size: images per step."""

    epochs: int = checked(3, minimum=1)
    lr: float = checked(0.0001, minimum=0.0)
    warmup_steps: int = checked(20, minimum=0)
    batch_size: int = checked(8, minimum=1)
    momentum: float = checked(0.9, minimum=0.0, maximum=1.0)
    weight_decay: float = checked(0.0005, minimum=0.0)
    weight_quantize_type: str = checked("channel_wise_abs_max", choices=WEIGHT_QUANTIZE_TYPES)
    activation_quantize_type: str = checked("moving_average_abs_max", choices=ACTIVATION_QUANTIZE_TYPES)
    max_boxes: int = checked(50, minimum=1)
    seed: int = 0


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
    stages: List[str] = checked(["train", "export"], choices=STAGES)
    source: str = ""
    """Path the recipe was loaded from ("" when built in code); not a YAML field."""
    sha256: str = ""
    """sha256 of the recipe file's bytes; not a YAML field."""

    def to_dict(self) -> Dict[str, Any]:
        """The YAML fields only (source and sha256 left out)."""
        out = to_plain(self)
        out.pop("source", None)
        out.pop("sha256", None)
        return out


_SCHEMA = Schema(
    RecipeError,
    aliases={
        "learning_rate": "lr",
        "base_lr": "lr",
        "batch": "batch_size",
        "epoch": "epochs",
        "image_size": "input_size",
    },
    skip=("source", "sha256"),
    root="recipe",
)


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
            if not 32 <= s <= MAX_INPUT_SIDE or s % 32:
                raise RecipeError(
                    "train.multi_scale[{}]: expected an integer between 32 and {} and a multiple of 32, got {!r}".format(
                        i, MAX_INPUT_SIDE, s
                    )
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
    check_stages(recipe.stages)


def check_stages(stages: Sequence[str]) -> List[str]:
    """`stages` (the recipe's, or those --stages picks) as a list, checked: known names, each at most once,
    in the order of STAGES. RecipeError in one line otherwise."""
    stages = list(stages)
    for stage in stages:
        if stage not in STAGES:
            hint = difflib.get_close_matches(stage, STAGES, n=1)
            raise RecipeError(
                "unknown stage {!r}: expected one of {}{}".format(
                    stage, ", ".join(STAGES), " (did you mean {!r}?)".format(hint[0]) if hint else ""
                )
            )
    if [s for s in STAGES if s in stages] != stages:
        raise RecipeError(
            "stages: expected each stage at most once, in the order {}, got {}".format(
                ", ".join(STAGES), ", ".join(stages)
            )
        )
    return stages


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
    recipe = _SCHEMA.load(Recipe, data)
    _cross_check(recipe)
    _check_compression(recipe)
    return dataclasses.replace(recipe, source=source, sha256=sha256)


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
