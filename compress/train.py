"""Train a YOLOv3 from a recipe: AMP, gradient accumulation, freeze-then-unfreeze, EMA, multi-scale,
warm-up + cosine/piecewise decay, evaluation with the exported postprocess, atomic checkpoints,
resume, Ctrl-C, and data-parallel training across processes (paddle.distributed.launch).

Files in out_dir: last.pdckpt (resumable state), best.pdparams (EMA weights with the best val
mAP@.5, plus what is needed to rebuild the model), metrics.jsonl (one JSON object per epoch) and
training.png (loss and mAP curves).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import paddle
import paddle.nn as nn

from compress.config import Recipe
from compress.loss import YOLOv3Loss
from edge_sdk.data.dataset import Dataset, ImageRecord
from edge_sdk.data.images import read_bgr
from edge_sdk.errors import DataError, RecipeError
from edge_sdk.fileio import atomic_output, atomic_write_text
from edge_sdk.progress import progress_display

LAST_CHECKPOINT = "last.pdckpt"
BEST_CHECKPOINT = "best.pdparams"
METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "training.png"


class TrainingInterrupted(Exception):
    """Ctrl-C during training; the state was saved to `checkpoint` (resume with resume=True)."""

    def __init__(self, checkpoint: Path) -> None:
        super().__init__("training interrupted; checkpoint saved to {}".format(checkpoint))
        self.checkpoint = checkpoint


@dataclass
class TrainResult:
    """best_checkpoint: EMA weights with the best val mAP@.5; history: one dict per epoch (as metrics.jsonl)."""

    best_checkpoint: Path
    history: List[Dict[str, Any]] = field(default_factory=list)
    last_checkpoint: Optional[Path] = None
    best_map50: Optional[float] = None


# ---------------------------------------------------------------------------------------------
# Pieces


def lr_at(step: int, steps_per_epoch: int, train_cfg: Any) -> float:
    """Learning rate at optimizer step `step` (0-based): linear warm-up from 0, then cosine to 0 over
    all epochs, or piecewise (x gamma at each milestone epoch)."""
    base = float(train_cfg.lr)
    warmup = int(train_cfg.warmup_steps)
    total = max(1, steps_per_epoch * int(train_cfg.epochs))
    if train_cfg.schedule == "cosine":
        value = base * 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))
    else:
        epoch = step // max(1, steps_per_epoch)
        value = base * float(train_cfg.gamma) ** sum(1 for m in train_cfg.milestones if epoch >= m)
    if warmup > 0 and step < warmup:
        value *= step / warmup
    return value


def kmeans_anchors(
    wh: np.ndarray, count: int = 9, seed: int = 0, iterations: int = 100, restarts: int = 5
) -> List[List[float]]:
    """k-means of box sizes (N, 2) in pixels with 1 - IoU as distance -> `count` [w, h], smallest area first.

    k-means++ seeding, `restarts` runs, the one with the best mean IoU kept. Whole pixels: paddle's yolo_box op (the exported decoder) takes integer anchors.
    """
    wh = np.asarray(wh, np.float64).reshape(-1, 2)
    wh = wh[(wh[:, 0] > 0) & (wh[:, 1] > 0)]
    if len(wh) < count:
        raise DataError(
            "model.anchors 'auto' needs at least {} boxes in the training set, got {}".format(count, len(wh))
        )
    rng = np.random.default_rng(seed)

    def iou(boxes: np.ndarray, anchors: np.ndarray) -> np.ndarray:
        inter = np.minimum(boxes[:, None, 0], anchors[None, :, 0]) * np.minimum(boxes[:, None, 1], anchors[None, :, 1])
        return inter / (boxes[:, None, 0] * boxes[:, None, 1] + anchors[None, :, 0] * anchors[None, :, 1] - inter)

    best, best_fit = None, -1.0
    for _ in range(restarts):
        # k-means++ seeding with 1 - IoU as distance, then Lloyd iterations with medians.
        centres = wh[[int(rng.integers(len(wh)))]]
        while len(centres) < count:
            distance = 1.0 - iou(wh, centres).max(1)
            weights = distance**2
            pick = (
                int(rng.choice(len(wh), p=weights / weights.sum())) if weights.sum() > 0 else int(rng.integers(len(wh)))
            )
            centres = np.concatenate([centres, wh[[pick]]])
        for _ in range(iterations):
            nearest = np.argmax(iou(wh, centres), axis=1)
            updated = np.array(
                [np.median(wh[nearest == k], axis=0) if np.any(nearest == k) else centres[k] for k in range(count)]
            )
            if np.allclose(updated, centres):
                break
            centres = updated
        fit = float(iou(wh, centres).max(1).mean())
        if fit > best_fit:
            best, best_fit = centres, fit
    centres = best
    centres = centres[np.argsort(centres[:, 0] * centres[:, 1])]
    return [[max(1, int(round(w))), max(1, int(round(h)))] for w, h in centres]


def resolve_anchors(recipe: Recipe, records: Sequence[ImageRecord]) -> Optional[List[List[float]]]:
    """The recipe's anchors in input pixels: None (model default), given pairs, or k-means ("auto")."""
    anchors = recipe.model.anchors
    if anchors is None:
        return None
    if isinstance(anchors, list):
        return [[max(1, int(round(w))), max(1, int(round(h)))] for w, h in anchors]
    size = recipe.model.input_size
    sizes = []
    for r in records:
        b = np.asarray(r.boxes, np.float32).reshape(-1, 4)
        if len(b):
            sizes.append(np.stack([(b[:, 2] - b[:, 0]) * size / r.width, (b[:, 3] - b[:, 1]) * size / r.height], 1))
    return kmeans_anchors(np.concatenate(sizes) if sizes else np.zeros((0, 2)), seed=recipe.train.seed)


def build_model(recipe: Recipe, num_classes: int, anchors: Optional[Sequence[Sequence[float]]]) -> nn.Layer:
    """The recipe's YOLOv3, initialised from `model.pretrained` when set (seeded by train.seed)."""
    from compress.models import build_yolov3

    paddle.seed(recipe.train.seed)
    model = build_yolov3(recipe.model.arch, num_classes, recipe.model.width, anchors)
    set_objectness_prior(model)
    if recipe.model.pretrained:
        from compress.models import load_pretrained

        if not Path(recipe.model.pretrained).is_file():
            raise RecipeError("model.pretrained: no such file {}".format(recipe.model.pretrained))
        load_pretrained(model, recipe.model.pretrained)
    return model


def set_objectness_prior(model: nn.Layer, prior: float = 0.01) -> None:
    """Start every objectness logit at log(p / (1 - p)) (RetinaNet's prior) instead of 0.

    With a zero bias each of the thousands of empty anchors starts at BCE log 2, so the first
    hundreds of steps only push objectness down everywhere; a prior of 0.01 skips that phase.
    A pretrained checkpoint loaded afterwards overrides it.
    """
    value = math.log(prior / (1.0 - prior))
    stride = 5 + model.num_classes
    for conv in model.yolo_head.yolo_outputs:
        bias = conv.bias.numpy()
        bias[4::stride] = value
        conv.bias.set_value(bias)


def set_backbone_frozen(model: nn.Layer, frozen: bool) -> None:
    """Freeze (stop_gradient, BatchNorm statistics fixed via eval mode) or unfreeze the backbone.

    Only parameters that were trainable are touched (BatchNorm's running mean and variance are
    non-trainable parameters in Paddle and stay so). Call after `model.train()`: that switches the
    backbone's BatchNorm back to training mode.
    """
    if not hasattr(model, "_backbone_trainable"):
        model._backbone_trainable = [p for p in model.backbone.parameters() if not p.stop_gradient]
    for param in model._backbone_trainable:
        param.stop_gradient = frozen
    if frozen:
        model.backbone.eval()


class ModelEMA:
    """Exponential moving average of every float entry of the state dict (weights and BN statistics).

    decay ramps up as PaddleDetection's "threshold" type: min(decay, (1 + n) / (10 + n)) at update n.
    """

    def __init__(self, model: nn.Layer, decay: float) -> None:
        self.decay = float(decay)
        self.updates = 0
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @paddle.no_grad()
    def update(self, model: nn.Layer) -> None:
        self.updates += 1
        d = min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))
        for key, value in model.state_dict().items():
            ema = self.state[key]
            if paddle.is_floating_point(value):
                ema.set_value(ema * d + value.detach().astype(ema.dtype) * (1.0 - d))
            else:
                ema.set_value(value)

    def state_dict(self) -> Dict[str, Any]:
        return {"decay": self.decay, "updates": self.updates, "state": self.state}

    def set_state_dict(self, saved: Dict[str, Any]) -> None:
        self.decay = float(saved["decay"])
        self.updates = int(saved["updates"])
        for key, value in saved["state"].items():
            if key in self.state:
                self.state[key].set_value(value)


ExtraLoss = Callable[[paddle.Tensor, Sequence[paddle.Tensor]], paddle.Tensor]


class Trainer:
    """One optimisation step over `accumulate_steps` micro-batches (loss scaled by 1/k), with AMP.

    `model` is what runs forward (possibly a paddle.DataParallel); `net` the YOLOv3 inside.
    extra_loss(images, outputs) -> scalar Tensor, added to the detection loss of each micro-batch
    (outputs: the model's raw head maps [N, A*(5+K), H, W] for `images` [N, 3, H, W]); when the
    callable has a `last` dict of floats after the call (compress.distill.Distiller), those parts
    join the returned losses. `steps` counts the optimizer steps applied (set it when resuming).
    """

    def __init__(
        self,
        net: nn.Layer,
        loss_fn: YOLOv3Loss,
        optimizer: paddle.optimizer.Optimizer,
        accumulate_steps: int = 1,
        use_amp: bool = False,
        ema: Optional[ModelEMA] = None,
        model: Optional[nn.Layer] = None,
        extra_loss: Optional[ExtraLoss] = None,
    ) -> None:
        self.net = net
        self.model = model if model is not None else net
        self.loss_fn = loss_fn
        self.optimizer = optimizer
        self.accumulate_steps = int(accumulate_steps)
        self.use_amp = bool(use_amp)
        self.scaler = paddle.amp.GradScaler(enable=self.use_amp, init_loss_scaling=1024.0)
        self.ema = ema
        self.extra_loss = extra_loss
        self.pending = 0
        self.steps = 0

    def micro_batch(self, batch: Sequence[Any], sync: bool = True) -> Dict[str, float]:
        """Forward + backward of one micro-batch (image, gt_box, gt_class, gt_score); returns its losses.

        sync False (data parallel, not the last micro-batch of a step): skip the gradient all-reduce.
        """
        images, gt_box, gt_class, gt_score = batch
        size = images.shape[2:4]
        context = self.model.no_sync() if (not sync and hasattr(self.model, "no_sync")) else contextlib.nullcontext()
        with context:
            with paddle.amp.auto_cast(enable=self.use_amp, level="O1"):
                outputs = self.model(images)
            losses = self.loss_fn(outputs, gt_box, gt_class, gt_score, size)
            parts = {k: float(v) for k, v in losses.items()}
            total = losses["loss"]
            if self.extra_loss is not None:
                total = total + self.extra_loss(images, outputs)
                parts.update(getattr(self.extra_loss, "last", None) or {})
            self.scaler.scale(total / self.accumulate_steps).backward()
        self.pending += 1
        return parts

    def step(self) -> None:
        """Apply the accumulated gradients, clear them, update the EMA."""
        if self.pending == 0:
            return
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.clear_grad()
        self.pending = 0
        self.steps += 1
        if self.ema is not None:
            self.ema.update(self.net)

    def epoch(
        self,
        batches: Iterable[Sequence[Any]],
        micro_batches: int,
        lr_schedule: Optional[Callable[[int], float]] = None,
    ) -> Iterator[Tuple[Dict[str, float], float]]:
        """One pass over `batches` (`micro_batches` of them): yields (losses, lr) of each micro-batch.

        Before each micro-batch the learning rate is set to lr_schedule(self.steps) (None: left as is);
        the optimizer steps after every `accumulate_steps` micro-batches and after the last one, each
        time after the yield of the micro-batch closing the group, so a caller that raises on a
        non-finite loss stops before the update.
        """
        for i, batch in enumerate(batches):
            closes_step = (i + 1) % self.accumulate_steps == 0 or i == micro_batches - 1
            if lr_schedule is not None:
                self.optimizer.set_lr(lr_schedule(self.steps))
            yield self.micro_batch(batch, sync=closes_step), self.optimizer.get_lr()
            if closes_step:
                self.step()
        if self.pending:
            self.step()

    def fit(self, batches: Iterable[Sequence[Any]]) -> List[Dict[str, float]]:
        """Micro-batches in order; a step after every `accumulate_steps` of them and after the last."""
        batches = list(batches)
        return [losses for losses, _ in self.epoch(batches, len(batches))]


def make_optimizer(net: nn.Layer, train_cfg: Any) -> paddle.optimizer.Optimizer:
    """Momentum (L2 weight decay) or AdamW (decoupled) over all parameters; lr is set per step."""
    if train_cfg.optimizer == "adamw":
        return paddle.optimizer.AdamW(
            learning_rate=train_cfg.lr, parameters=net.parameters(), weight_decay=train_cfg.weight_decay
        )
    return paddle.optimizer.Momentum(
        learning_rate=train_cfg.lr,
        momentum=train_cfg.momentum,
        parameters=net.parameters(),
        weight_decay=paddle.regularizer.L2Decay(train_cfg.weight_decay) if train_cfg.weight_decay else None,
    )


def make_loss(net: nn.Layer, train_cfg: Any) -> YOLOv3Loss:
    """The YOLOv3 loss for `net`'s classes, anchors and strides with the recipe's train.loss settings."""
    return YOLOv3Loss(
        net.num_classes,
        net.anchors,
        net.anchor_masks,
        net.downsample_ratios,
        train_cfg.loss.ignore_thresh,
        train_cfg.loss.label_smooth,
        train_cfg.loss.iou_thresh,
    )


@dataclass
class TrainingData:
    """The augmented training set, its multi-scale batch sampler and loader for one process.

    micro_batches: batches per epoch; steps_per_epoch: optimizer steps per epoch (one per
    `accumulate_steps` micro-batches, the last group possibly shorter), what `lr_at` counts in.
    """

    dataset: Any
    sampler: Any
    loader: Any
    steps_per_epoch: int

    @property
    def micro_batches(self) -> int:
        return len(self.sampler)

    def set_epoch(self, epoch: int) -> None:
        """Reseed the augmentations and the shuffle for `epoch` (0-based)."""
        self.dataset.set_epoch(epoch)
        self.sampler.set_epoch(epoch)


def make_training_data(
    records: Sequence[ImageRecord], input_size: int, train_cfg: Any, rank: int = 0, world: int = 1
) -> TrainingData:
    """Dataset (train_cfg.augment), sampler (batch_size, multi_scale or [input_size], seed, this
    rank's share of `world` processes) and loader (num_workers). Raises DataError without a full batch."""
    from compress.transforms import DetectionDataset, MultiScaleBatchSampler, make_loader

    dataset = DetectionDataset(records, input_size, train_cfg.augment, train_cfg.max_boxes, train_cfg.seed)
    sampler = MultiScaleBatchSampler(
        dataset, train_cfg.batch_size, train_cfg.multi_scale or [input_size], train_cfg.seed, True, True, rank, world
    )
    if len(sampler) == 0:
        raise DataError("the training set has no full batch of {} images".format(train_cfg.batch_size))
    loader = make_loader(dataset, sampler, train_cfg.num_workers)
    return TrainingData(dataset, sampler, loader, math.ceil(len(sampler) / int(train_cfg.accumulate_steps)))


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


def atomic_save(obj: Any, path: Path) -> Path:
    """paddle.save to `path` atomically (edge_sdk.fileio.atomic_output)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as tmp:
        paddle.save(obj, str(tmp))
    return path


# ---------------------------------------------------------------------------------------------
# Evaluation


@paddle.no_grad()
def predict(
    net: nn.Layer, records: Sequence[ImageRecord], input_size: int, postprocess: Any, batch_size: int = 8
) -> List[Any]:
    """Detections (source pixels, every score >= conf_threshold) for each record, with the export's
    decoding + NMS (`compress.export.InferenceModel`) on the dygraph model in eval mode."""
    from compress.export import InferenceModel
    from compress.transforms import preprocess_bgr
    from device.postprocess import boxes_to_detections

    was_training = net.training
    wrapper = InferenceModel(net, postprocess)
    wrapper.eval()
    detections = []
    try:
        for start in range(0, len(records), batch_size):
            chunk = records[start : start + batch_size]
            images, shapes = [], []
            for r in chunk:
                image = read_bgr(r.path)
                shapes.append(image.shape[:2])
                images.append(preprocess_bgr(image, (input_size, input_size)))
            n = len(chunk)
            im_shape = np.full((n, 2), input_size, np.float32)
            scale = np.array([[input_size / h, input_size / w] for h, w in shapes], np.float32)
            boxes, counts = wrapper(
                paddle.to_tensor(np.stack(images)), paddle.to_tensor(im_shape), paddle.to_tensor(scale)
            )
            boxes, counts = boxes.numpy().reshape(-1, 6), counts.numpy().reshape(-1)
            offset = 0
            for (h, w), count in zip(shapes, counts):
                rows = boxes[offset : offset + int(count)]
                offset += int(count)
                detections.append(boxes_to_detections(rows, h, w, 0.0, net.num_classes))
    finally:
        if was_training:
            net.train()
    return detections


def evaluate_net(net: nn.Layer, dataset: Dataset, input_size: int, postprocess: Any) -> Any:
    """edge_sdk.metrics.EvalResult of `net` on `dataset`."""
    from edge_sdk.metrics import evaluate

    return evaluate(dataset, predict(net, list(dataset.images), input_size, postprocess))


# ---------------------------------------------------------------------------------------------
# The loop


def _postprocess_of(recipe: Recipe) -> Any:
    from edge_sdk.manifest import Postprocess

    p = recipe.export.postprocess
    return Postprocess(
        conf_threshold=p.conf_threshold,
        nms_iou=p.nms_iou,
        nms_top_k=p.nms_top_k,
        keep_top_k=p.keep_top_k,
        score_threshold=p.score_threshold,
    )


def load_datasets(recipe: Recipe, data_dir: Path) -> Tuple[Dataset, Dataset]:
    """The recipe's train and val sets under data_dir (COCO .json files or Pascal VOC folders)."""
    from edge_sdk.data import load_dataset

    data_dir = Path(data_dir)
    paths = [data_dir / recipe.data.train, data_dir / recipe.data.val]
    for key, path in zip(("data.train", "data.val"), paths):
        if not path.exists():
            raise DataError("{}: no such file or folder {}".format(key, path))
    train_set, val_set = load_dataset(paths[0]), load_dataset(paths[1])
    if tuple(train_set.classes) != tuple(val_set.classes):
        raise DataError("train and val class lists differ: {} vs {}".format(train_set.classes, val_set.classes))
    if len(train_set) == 0 or len(val_set) == 0:
        raise DataError(
            "the train and val sets need at least one image each ({} and {})".format(len(train_set), len(val_set))
        )
    return train_set, val_set


def load_trained(checkpoint: Path) -> nn.Layer:
    """Rebuild the YOLOv3 saved in a best.pdparams, or the pruned one of a checkpoint carrying a
    prune_plan (compress.prune.save_pruned), in eval mode."""
    from compress.models import build_yolov3

    if not Path(checkpoint).is_file():
        raise DataError("no checkpoint at {}".format(checkpoint))
    saved = paddle.load(str(checkpoint))
    plan = saved.get("prune_plan")
    if plan:
        from compress.prune import load_pruned

        return load_pruned(plan["arch"], plan["num_classes"], plan["width"], plan, saved["model"])
    net = build_yolov3(saved["arch"], len(saved["classes"]), saved["width"], saved["anchors"])
    net.set_state_dict(saved["model"])
    net.eval()
    return net


def read_checkpoint_info(checkpoint: Path) -> Dict[str, Any]:
    """classes, input_size, arch, width, anchors, epoch, map50 of a best.pdparams."""
    saved = paddle.load(str(checkpoint))
    return {k: v for k, v in saved.items() if k != "model"}


def distributed() -> Tuple[int, int]:
    """(rank, world size) of this process, set on its device (its GPU, else the CPU); initialises the
    parallel environment once when world > 1."""
    world = paddle.distributed.get_world_size()
    paddle.set_device("gpu:{}".format(paddle.distributed.ParallelEnv().device_id) if use_gpu() else "cpu")
    if world > 1 and not paddle.distributed.is_initialized():
        paddle.distributed.init_parallel_env()
    return paddle.distributed.get_rank(), world


def use_gpu() -> bool:
    """True when Paddle was built with CUDA and sees a GPU."""
    return paddle.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0


def train(
    recipe: Recipe,
    data_dir: Path,
    out_dir: Path,
    resume: bool = False,
    progress: bool = True,
    on_epoch_end: Optional[Callable[[int, nn.Layer], None]] = None,
) -> TrainResult:
    """Train `recipe` on data_dir/<data.train>, evaluating on data_dir/<data.val>; see the module docstring.

    resume: continue from out_dir/last.pdckpt (model, optimizer, EMA, scaler, epoch, history).
    on_epoch_end(epoch, net): called on every rank after each finished epoch (0-based).
    Raises TrainingInterrupted on Ctrl-C after saving out_dir/last.pdckpt.
    """
    from rich.console import Console

    console = Console(stderr=True)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = recipe.train
    rank, world = distributed()
    main_rank = rank == 0
    on_gpu = use_gpu()
    use_amp = cfg.amp and on_gpu
    if not on_gpu and world == 1 and "OMP_NUM_THREADS" not in os.environ:
        paddle.base.core.set_num_threads(os.cpu_count() or 1)  # dygraph CPU math defaults to 1 thread
    if cfg.amp and not on_gpu and main_rank:
        console.print("note: AMP skipped (no GPU); training in float32 on the CPU")

    train_set, val_set = load_datasets(recipe, data_dir)
    classes = tuple(train_set.classes)
    anchors = resolve_anchors(recipe, train_set.images)
    net = build_model(recipe, len(classes), anchors)
    model: nn.Layer = net
    if world > 1:
        model = paddle.DataParallel(net, find_unused_parameters=cfg.freeze_backbone_epochs > 0)
    optimizer = make_optimizer(net, cfg)
    ema = ModelEMA(net, cfg.ema_decay) if cfg.ema else None
    trainer = Trainer(net, make_loss(net, cfg), optimizer, cfg.accumulate_steps, use_amp, ema, model)

    input_size = recipe.model.input_size
    data = make_training_data(train_set.images, input_size, cfg, rank, world)
    micro_per_epoch = data.micro_batches

    def lr_of_step(step: int) -> float:
        return lr_at(step, data.steps_per_epoch, cfg)

    last_path, best_path = out_dir / LAST_CHECKPOINT, out_dir / BEST_CHECKPOINT
    history: List[Dict[str, Any]] = []
    start_epoch, best_map50 = 0, None
    if resume:
        if not last_path.is_file():
            raise DataError("--resume: no checkpoint at {}".format(last_path))
        saved = paddle.load(str(last_path))
        net.set_state_dict(saved["model"])
        load_optimizer_state(optimizer, net, saved["optimizer"])
        if ema is not None and saved.get("ema"):
            ema.set_state_dict(saved["ema"])
        if saved.get("scaler"):
            trainer.scaler.load_state_dict(saved["scaler"])
        start_epoch, trainer.steps = int(saved["epoch"]), int(saved["step"])
        history, best_map50 = list(saved["history"]), saved.get("best_map50")
        if saved.get("recipe_sha256") != recipe.sha256 and main_rank:
            console.print("note: the recipe changed since this checkpoint was written; continuing with the new one")
        if main_rank:
            console.print("resuming from {} after epoch {}".format(last_path, start_epoch))

    meta = {
        "arch": recipe.model.arch,
        "width": recipe.model.width,
        "anchors": [list(a) for a in net.anchors],
        "classes": list(classes),
        "input_size": input_size,
        "recipe_sha256": recipe.sha256,
    }

    def checkpoint(epoch_done: int) -> Path:
        return atomic_save(
            {
                "model": net.state_dict(),
                "optimizer": optimizer_state(optimizer, net),
                "ema": ema.state_dict() if ema is not None else None,
                "scaler": trainer.scaler.state_dict(),
                "epoch": epoch_done,
                "step": trainer.steps,
                "history": history,
                "best_map50": best_map50,
                **meta,
            },
            last_path,
        )

    def eval_weights() -> Dict[str, Any]:
        return ema.state if ema is not None else net.state_dict()

    if main_rank:
        console.print(
            "training {} {}x{} on {} images ({} classes), {} epochs of {} iterations, batch {} x {} accumulation x {} process(es)".format(
                recipe.model.arch,
                input_size,
                input_size,
                len(train_set),
                len(classes),
                cfg.epochs,
                micro_per_epoch,
                cfg.batch_size,
                cfg.accumulate_steps,
                world,
            ),
            highlight=False,
        )
        sys.stderr.flush()

    bar = _Bars(progress and main_rank, console, cfg.epochs, micro_per_epoch, start_epoch)
    epochs_done = start_epoch
    try:
        with bar, InterruptAtSafePoints() as interrupt:
            for epoch in range(start_epoch, cfg.epochs):
                frozen = epoch < cfg.freeze_backbone_epochs
                model.train()
                set_backbone_frozen(net, frozen)
                data.set_epoch(epoch)
                started = time.time()
                sums: Dict[str, float] = {}
                seen = 0
                bar.start_epoch(epoch)
                for losses, lr in trainer.epoch(data.loader, micro_per_epoch, lr_of_step):
                    if not all(math.isfinite(v) for v in losses.values()):
                        raise DataError(
                            "the loss became {} at epoch {}, iteration {}: lower train.lr".format(
                                losses["loss"], epoch + 1, seen + 1
                            )
                        )
                    for k, v in losses.items():
                        sums[k] = sums.get(k, 0.0) + v
                    seen += 1
                    bar.advance(losses["loss"], lr)
                    interrupt.check()
                record: Dict[str, Any] = {
                    "epoch": epoch + 1,
                    "lr": lr_of_step(trainer.steps),
                    "frozen_backbone": frozen,
                }
                record.update({k: v / max(seen, 1) for k, v in sums.items()})
                record["seconds"] = round(time.time() - started, 2)
                if main_rank:
                    if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs:
                        record.update(_evaluate_with(net, eval_weights(), val_set, input_size, _postprocess_of(recipe)))
                        if best_map50 is None or (record["map50"] or 0.0) > best_map50 or not best_path.exists():
                            best_map50 = record["map50"] or 0.0
                            atomic_save(
                                {"model": eval_weights(), "epoch": epoch + 1, "map50": best_map50, **meta}, best_path
                            )
                    history.append(record)
                    checkpoint(epoch + 1)
                    epochs_done = epoch + 1
                    _write_history(out_dir, history)
                    bar.log(_epoch_line(record, cfg.epochs))
                else:
                    history.append(record)
                    epochs_done = epoch + 1
                if on_epoch_end is not None:
                    on_epoch_end(epoch, net)
    except KeyboardInterrupt:
        if main_rank:
            del history[epochs_done:]  # an epoch interrupted after its record was added restarts on resume
            path = checkpoint(epochs_done)
            raise TrainingInterrupted(path) from None
        raise
    if not main_rank:
        return TrainResult(best_checkpoint=best_path, history=history, last_checkpoint=last_path, best_map50=best_map50)
    if not best_path.exists():  # resumed after the final epoch, or never evaluated
        atomic_save({"model": eval_weights(), "epoch": epochs_done, "map50": best_map50, **meta}, best_path)
    return TrainResult(best_checkpoint=best_path, history=history, last_checkpoint=last_path, best_map50=best_map50)


def _evaluate_with(
    net: nn.Layer, weights: Dict[str, Any], val_set: Dataset, input_size: int, postprocess: Any
) -> Dict[str, Any]:
    """Evaluate `net` carrying `weights` (the EMA), then put its own weights back."""
    own = {k: v.detach().clone() for k, v in net.state_dict().items()}
    net.set_state_dict(weights)
    try:
        result = evaluate_net(net, val_set, input_size, postprocess)
    finally:
        net.set_state_dict(own)
    return {"map50": result.map50, "map": result.map}


def _epoch_line(record: Dict[str, Any], epochs: int) -> str:
    text = "epoch {}/{}  loss {:.3f}  lr {:.2e}  {:.0f}s".format(
        record["epoch"], epochs, record.get("loss", float("nan")), record["lr"], record["seconds"]
    )
    if "map50" in record:
        text += "  mAP@.5 {:.3f}  mAP {:.3f}".format(record["map50"] or 0.0, record["map"] or 0.0)
    return text


def _write_history(out_dir: Path, history: List[Dict[str, Any]]) -> None:
    atomic_write_text(out_dir / METRICS_FILE, "".join(json.dumps(r, sort_keys=True) + "\n" for r in history))
    try:
        from compress.report import plot_history

        plot_history(history, out_dir / PLOT_FILE)
    except ImportError:  # matplotlib missing: the curves are still in metrics.jsonl
        pass


class InterruptAtSafePoints:
    """Ctrl-C (or SIGTERM, as systemd and kill send) during training sets a flag that `check()` (called
    between iterations) turns into KeyboardInterrupt: a KeyboardInterrupt raised wherever the signal lands
    (a data loader's __del__ runs between epochs) can be swallowed as "exception ignored". A second
    Ctrl-C raises at once; repeated SIGTERMs do not (paddle.distributed.launch sends up to three within
    a second to stop a worker). SIGTERM's handler also replaces Paddle's, which dumps a C++ FatalError and
    leaves DataLoader workers behind. Only the main thread can install handlers; elsewhere this does nothing."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested = False
        self.previous: Dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True

    def check(self) -> None:
        if self.requested:
            raise KeyboardInterrupt

    def __enter__(self) -> InterruptAtSafePoints:
        import threading

        if threading.current_thread() is threading.main_thread():
            self.previous = {signum: signal.signal(signum, self._handle) for signum in self.SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, previous in self.previous.items():
            signal.signal(signum, signal.SIG_DFL if previous is None else previous)


class _Bars:
    """Rich progress bars (epochs and iterations of the current epoch), or plain epoch lines when disabled."""

    def __init__(self, enabled: bool, console: Any, epochs: int, iterations: int, start_epoch: int) -> None:
        self.enabled = enabled
        self.console = console
        self.epochs, self.iterations = epochs, iterations
        self.start = start_epoch
        self.progress = None

    def __enter__(self) -> _Bars:
        if self.enabled:
            self.progress = progress_display(self.console, field="info")
            self.progress.__enter__()
            self.epoch_task = self.progress.add_task("epochs", total=self.epochs, completed=self.start, info="")
            self.iter_task = self.progress.add_task("iterations", total=self.iterations, info="")
        return self

    def start_epoch(self, epoch: int) -> None:
        if self.progress is not None:
            self.progress.update(self.epoch_task, completed=epoch)
            self.progress.reset(
                self.iter_task, total=self.iterations, description="epoch {}".format(epoch + 1), info=""
            )

    def advance(self, loss: float, lr: float) -> None:
        if self.progress is not None:
            self.progress.update(self.iter_task, advance=1, info="loss {:.3f} lr {:.2e}".format(loss, lr))

    def log(self, line: str) -> None:
        if self.progress is not None:
            self.progress.console.print(line, highlight=False)
            self.progress.update(self.epoch_task, advance=1)
        else:
            self.console.print(line, highlight=False)

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.__exit__(None, None, None)
