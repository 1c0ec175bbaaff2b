"""Distillation of a pruned YOLOv3 (student) from the unpruned trained one (teacher).

Output distillation follows PaddleDetection/PaddleSlim's YOLOv3 distillation (`DistillYOLOv3Loss`,
yolov3_mobilenet_v1 distill configs), per level over the raw head maps [N, A*(5+K), H, W], with the
teacher's objectness probability weighting the student's terms:
- x, y: BCE of the student's logits against the teacher's sigmoid, weighted by sigmoid(teacher obj);
- w, h: L1 between student and teacher, weighted by sigmoid(teacher obj);
- classes: BCE against the teacher's sigmoid, weighted by sigmoid(teacher obj);
- objectness: BCE against sigmoid(teacher obj), weighted by sigmoid(teacher obj) itself, so that it
  counts where the teacher sees an object and not on the background the detection loss handles.
Every BCE against a soft target p is taken minus its minimum (the entropy of p): a binary KL
divergence, with the same gradients, that is zero when the student reproduces the teacher.
Terms are summed over anchors and cells and averaged over the batch, as compress.loss does, so
distill.weight 1 puts both on the same scale.

PaddleDetection distills objectness on every anchor (BCE against the teacher's objectness
thresholded at 0.5); there the background dominates it. On the demo the objectness term is what
makes distillation beat plain fine-tuning, and distillation helps only while the teacher is ahead
of what the student reaches on its own (benchmarks/compression.py measures it over seeds; the demo
recipe gives the numbers).

Optional feature distillation: MSE between the neck outputs (the three tips feeding the head),
after a 1x1 adapter conv on the student's side when its (pruned) channel count differs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence

import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from compress.config import DistillSection, TrainSection
from compress.ema import ModelEMA
from compress.evaluation import evaluate_net
from compress.loop import Trainer, make_training_data, run_epochs, use_gpu
from compress.loss import make_loss
from compress.optim import lr_at, make_optimizer
from edge_sdk.data.dataset import Dataset, ImageRecord
from edge_sdk.manifest import Postprocess


def _soft_bce(logits: paddle.Tensor, target_prob: paddle.Tensor) -> paddle.Tensor:
    """Elementwise BCE(logits, p) - H(p): the binary KL divergence KL(p || sigmoid(logits)) >= 0."""
    eps = 1e-7
    p = paddle.clip(target_prob, eps, 1.0 - eps)
    entropy = -(p * paddle.log(p) + (1.0 - p) * paddle.log(1.0 - p))
    return F.binary_cross_entropy_with_logits(logits, target_prob, reduction="none") - entropy


class DistillationLoss(nn.Layer):
    """forward(student_outputs, teacher_outputs, student_features=None, teacher_features=None) -> dict.

    outputs: the three raw head maps [N, A*(5+K), H, W] of each model (same shapes). features: the
    neck outputs [N, C, H, W] per level (channel counts may differ; needed when feature_weight > 0).
    Returned: distill_xy, distill_wh, distill_cls, distill_obj, distill_feat (unweighted, scalars)
    and "distill" = weight * (xy + wh + cls + obj) + feature_weight * feat.
    student_channels / teacher_channels: neck output channels per level, to build the adapters.
    """

    def __init__(
        self,
        weight: float = 1.0,
        feature_weight: float = 0.0,
        anchors_per_level: int = 3,
        student_channels: Optional[Sequence[int]] = None,
        teacher_channels: Optional[Sequence[int]] = None,
    ) -> None:
        super().__init__()
        self.weight = float(weight)
        self.feature_weight = float(feature_weight)
        self.anchors_per_level = int(anchors_per_level)
        self.adapters = nn.LayerList()
        if self.feature_weight > 0:
            if student_channels is None or teacher_channels is None:
                raise ValueError("feature distillation needs student_channels and teacher_channels")
            for c_s, c_t in zip(student_channels, teacher_channels):
                self.adapters.append(nn.Conv2D(int(c_s), int(c_t), 1) if int(c_s) != int(c_t) else nn.Identity())

    def _level(self, student: paddle.Tensor, teacher: paddle.Tensor) -> Dict[str, paddle.Tensor]:
        n, c, h, w = student.shape
        a = self.anchors_per_level
        s = student.reshape([n, a, c // a, h, w])
        t = teacher.reshape([n, a, c // a, h, w]).detach()
        t_obj = F.sigmoid(t[:, :, 4:5])
        xy = (_soft_bce(s[:, :, 0:2], F.sigmoid(t[:, :, 0:2])) * t_obj).sum([1, 2, 3, 4])
        wh = (paddle.abs(s[:, :, 2:4] - t[:, :, 2:4]) * t_obj).sum([1, 2, 3, 4])
        cls = (_soft_bce(s[:, :, 5:], F.sigmoid(t[:, :, 5:])) * t_obj).sum([1, 2, 3, 4])
        obj = (_soft_bce(s[:, :, 4:5], t_obj) * t_obj).sum([1, 2, 3, 4])
        return {"distill_xy": xy.mean(), "distill_wh": wh.mean(), "distill_cls": cls.mean(), "distill_obj": obj.mean()}

    def forward(
        self,
        student_outputs: Sequence[paddle.Tensor],
        teacher_outputs: Sequence[paddle.Tensor],
        student_features: Optional[Sequence[paddle.Tensor]] = None,
        teacher_features: Optional[Sequence[paddle.Tensor]] = None,
    ) -> Dict[str, paddle.Tensor]:
        if len(student_outputs) != len(teacher_outputs):
            raise ValueError("student and teacher have different numbers of output levels")
        totals: Dict[str, Any] = {}
        for s_out, t_out in zip(student_outputs, teacher_outputs):
            if list(s_out.shape) != list(t_out.shape):
                raise ValueError("student output {} and teacher output {} differ".format(s_out.shape, t_out.shape))
            for key, value in self._level(s_out.astype("float32"), t_out.astype("float32")).items():
                totals[key] = totals[key] + value if key in totals else value
        feat = paddle.zeros([], dtype="float32")
        if self.feature_weight > 0:
            if student_features is None or teacher_features is None:
                raise ValueError("feature_weight > 0 needs student_features and teacher_features")
            for adapter, s_feat, t_feat in zip(self.adapters, student_features, teacher_features):
                diff = adapter(s_feat.astype("float32")) - t_feat.astype("float32").detach()
                feat = feat + (diff * diff).mean()
        totals["distill_feat"] = feat
        totals["distill"] = (
            self.weight * (totals["distill_xy"] + totals["distill_wh"] + totals["distill_cls"] + totals["distill_obj"])
            + self.feature_weight * feat
        )
        return totals


class Distiller:
    """The teacher side of distillation, as a training-loop callback.

    `extra_loss(images, outputs) -> scalar Tensor`: runs the teacher (eval mode, no gradients) on
    `images`, compares with the student's `outputs` (the student's forward on the same images,
    just done) and returns the weighted distillation loss; `last` holds its parts as floats. The
    neck features are captured with forward hooks on both necks when feature_weight > 0.
    `parameters()`: the adapter convs, to be optimised with the student. Call `close()` at the end.
    """

    def __init__(self, teacher: nn.Layer, student: nn.Layer, weight: float = 1.0, feature_weight: float = 0.0) -> None:
        self.teacher = teacher
        self.student = student
        teacher.eval()
        for param in teacher.parameters():
            param.stop_gradient = True
        self.loss = DistillationLoss(
            weight,
            feature_weight,
            anchors_per_level=len(student.anchor_masks[0]),
            student_channels=_neck_channels(student),
            teacher_channels=_neck_channels(teacher),
        )
        self.last: Dict[str, float] = {}
        self._features: Dict[str, List[paddle.Tensor]] = {}
        self._hooks = []
        if feature_weight > 0:
            for name, model in (("student", student), ("teacher", teacher)):
                self._hooks.append(model.neck.register_forward_post_hook(self._capture(name)))

    def _capture(self, name: str) -> Callable:
        def hook(layer, inputs, outputs):
            self._features[name] = list(outputs)

        return hook

    def parameters(self) -> List[paddle.Tensor]:
        return self.loss.parameters()

    def extra_loss(self, images: paddle.Tensor, outputs: Sequence[paddle.Tensor]) -> paddle.Tensor:
        with paddle.no_grad():
            teacher_outputs = self.teacher(images)
        parts = self.loss(outputs, teacher_outputs, self._features.get("student"), self._features.get("teacher"))
        self._features = {}
        self.last = {k: float(v) for k, v in parts.items()}
        return parts["distill"]

    __call__ = extra_loss

    def close(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []


def _neck_channels(model: nn.Layer) -> List[int]:
    """Channels of the neck's outputs as they are now (after pruning): the head convs' input channels."""
    return [int(conv.weight.shape[1]) for conv in model.yolo_head.yolo_outputs]


@dataclass
class FinetuneResult:
    """history: one dict per epoch (mean losses, seconds, and map50/map when evaluated)."""

    history: List[Dict[str, Any]]
    map50: Optional[float] = None
    map: Optional[float] = None


def finetune(
    student: nn.Layer,
    train_records: Sequence[ImageRecord],
    input_size: int,
    train_cfg: TrainSection,
    epochs: int,
    teacher: Optional[nn.Layer] = None,
    distill: Optional[DistillSection] = None,
    val_set: Optional[Dataset] = None,
    postprocess: Optional[Postprocess] = None,
    progress: Optional[Callable[[int, Dict[str, float]], None]] = None,
    rank: int = 0,
    world: int = 1,
) -> FinetuneResult:
    """Fine-tune `student` in place on `train_records` for `epochs` with the detection loss, plus
    `distill.weight` x distillation from `teacher` when both are given.

    train_cfg: a compress.config.TrainSection (batch size, accumulation, AMP on a GPU, optimizer,
    augmentation, EMA, loss); the schedule is cosine from train_cfg.lr with at most one epoch of
    warm-up. With EMA the student ends up holding the EMA weights. val_set: evaluated (mAP@.5 and
    mAP) at the end. progress(epoch, losses) after each epoch. Ctrl-C raises KeyboardInterrupt at the
    next batch boundary. rank, world: with world > 1 every rank calls this with the same arguments
    and the student runs in paddle.DataParallel, each rank on its share of every batch
    (compress.stages hands the job to the other ranks). The loop is compress.loop.run_epochs, with
    the Distiller as the Trainer's extra loss.
    """
    data = make_training_data(train_records, input_size, train_cfg, rank, world)
    distilling = teacher is not None and distill is not None and (distill.weight > 0 or distill.feature_weight > 0)
    distiller = Distiller(teacher, student, distill.weight, distill.feature_weight) if distilling else None
    trainable = nn.LayerList([student] + ([distiller.loss] if distiller is not None else []))
    if world > 1 and distiller is not None and distiller.loss.parameters():
        distiller.loss = paddle.DataParallel(distiller.loss)  # the feature adapters' gradients are all-reduced too
    schedule = dataclasses.replace(
        train_cfg,
        epochs=int(epochs),
        schedule="cosine",
        warmup_steps=min(int(train_cfg.warmup_steps), data.steps_per_epoch),
    )
    trainer = Trainer(
        student,
        make_loss(student, train_cfg),
        make_optimizer(trainable, schedule),
        train_cfg.accumulate_steps,
        use_amp=bool(train_cfg.amp) and use_gpu(),
        ema=ModelEMA(student, train_cfg.ema_decay) if train_cfg.ema else None,
        model=paddle.DataParallel(student) if world > 1 else None,
        extra_loss=distiller,
    )

    def lr_of_step(step: int) -> float:
        return lr_at(step, data.steps_per_epoch, schedule)

    def loss_error(losses: Dict[str, float], epoch: int, iteration: int) -> str:
        return "the fine-tuning loss became {} at epoch {}: lower the learning rate".format(
            losses["loss"] + losses.get("distill", 0.0), epoch
        )

    history: List[Dict[str, Any]] = []

    def after_epoch(epoch: int, losses: Dict[str, float], seconds: float) -> None:
        record: Dict[str, Any] = {**losses, "epoch": epoch + 1, "seconds": seconds}
        history.append(record)
        if progress is not None:
            progress(epoch, record)

    try:
        run_epochs(trainer, data, range(int(epochs)), lr_of_step, loss_error, after_epoch=after_epoch)
    finally:
        if distiller is not None:
            distiller.close()
    if trainer.ema is not None:
        student.set_state_dict(trainer.ema.state)
    student.eval()
    result = FinetuneResult(history=history)
    if val_set is not None:
        evaluation = evaluate_net(student, val_set, input_size, postprocess or Postprocess())
        result.map50, result.map = evaluation.map50, evaluation.map
        history[-1].update({"map50": result.map50, "map": result.map})
    return result
