"""Train a YOLOv3 from a recipe: AMP, gradient accumulation, freeze-then-unfreeze, EMA, multi-scale,
warm-up + cosine/piecewise decay, evaluation with the exported postprocess, atomic checkpoints,
resume, Ctrl-C, and data-parallel training across processes (paddle.distributed.launch).

Files in out_dir: last.pdckpt (resumable state), best.pdparams (EMA weights with the best val
mAP@.5, plus what is needed to rebuild the model), metrics.jsonl (one JSON object per epoch) and
training.png (loss and mAP curves). The pieces: compress.loop (Trainer, run_epochs),
compress.checkpoint, compress.evaluation, compress.optim, compress.ema, compress.anchors.
"""

from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import paddle
import paddle.nn as nn

from compress.anchors import resolve_anchors
from compress.checkpoint import (
    BEST_CHECKPOINT,
    LAST_CHECKPOINT,
    load_training_state,
    save_best,
    save_training_state,
)
from compress.config import Recipe
from compress.ema import ModelEMA
from compress.evaluation import evaluate_weights
from compress.loop import Trainer, distributed, make_training_data, run_epochs, use_gpu
from compress.loss import make_loss
from compress.models import build_yolov3, load_pretrained
from compress.optim import lr_at, make_optimizer
from edge_sdk.data.dataset import Dataset
from edge_sdk.errors import DataError, RecipeError
from edge_sdk.fileio import atomic_write_text
from edge_sdk.manifest import Postprocess
from edge_sdk.progress import progress_display

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


def build_model(recipe: Recipe, num_classes: int, anchors: Optional[Sequence[Sequence[float]]]) -> nn.Layer:
    """The recipe's YOLOv3, initialised from `model.pretrained` when set (seeded by train.seed)."""
    paddle.seed(recipe.train.seed)
    model = build_yolov3(recipe.model.arch, num_classes, recipe.model.width, anchors)
    set_objectness_prior(model)
    if recipe.model.pretrained:
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


def postprocess_of(recipe: Recipe) -> Postprocess:
    """The recipe's export.postprocess as the manifest's Postprocess."""
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
        resumed = load_training_state(last_path, trainer)
        start_epoch, history, best_map50 = resumed.epoch, resumed.history, resumed.best_map50
        if resumed.recipe_sha256 != recipe.sha256 and main_rank:
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

    def before_epoch(epoch: int) -> None:
        set_backbone_frozen(net, epoch < cfg.freeze_backbone_epochs)
        bar.start_epoch(epoch)

    def after_epoch(epoch: int, losses: Dict[str, float], seconds: float) -> None:
        nonlocal best_map50, epochs_done
        record: Dict[str, Any] = {
            "epoch": epoch + 1,
            "lr": lr_of_step(trainer.steps),
            "frozen_backbone": epoch < cfg.freeze_backbone_epochs,
            **losses,
            "seconds": seconds,
        }
        if main_rank:
            if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs:
                record.update(evaluate_weights(net, eval_weights(), val_set, input_size, postprocess_of(recipe)))
                if best_map50 is None or (record["map50"] or 0.0) > best_map50 or not best_path.exists():
                    best_map50 = record["map50"] or 0.0
                    save_best(best_path, eval_weights(), epoch + 1, best_map50, meta)
            history.append(record)
            save_training_state(last_path, trainer, epoch + 1, history, best_map50, meta)
            epochs_done = epoch + 1
            _write_history(out_dir, history)
            bar.log(_epoch_line(record, cfg.epochs))
        else:
            history.append(record)
            epochs_done = epoch + 1
        if on_epoch_end is not None:
            on_epoch_end(epoch, net)

    def loss_error(losses: Dict[str, float], epoch: int, iteration: int) -> str:
        return "the loss became {} at epoch {}, iteration {}: lower train.lr".format(losses["loss"], epoch, iteration)

    try:
        with bar:
            run_epochs(
                trainer,
                data,
                range(start_epoch, cfg.epochs),
                lr_of_step,
                loss_error,
                before_epoch,
                lambda losses, lr: bar.advance(losses["loss"], lr),
                after_epoch,
            )
    except KeyboardInterrupt:
        if main_rank:
            del history[epochs_done:]  # an epoch interrupted after its record was added restarts on resume
            path = save_training_state(last_path, trainer, epochs_done, history, best_map50, meta)
            raise TrainingInterrupted(path) from None
        raise
    if not main_rank:
        return TrainResult(best_checkpoint=best_path, history=history, last_checkpoint=last_path, best_map50=best_map50)
    if not best_path.exists():  # resumed after the final epoch, or never evaluated
        save_best(best_path, eval_weights(), epochs_done, best_map50, meta)
    return TrainResult(best_checkpoint=best_path, history=history, last_checkpoint=last_path, best_map50=best_map50)


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
