"""The training loop: one optimisation step (`Trainer`) and one epoch loop (`run_epochs`) that
training, fine-tuning (with or without distillation) and QAT all run, plus the training data and
the process setup they share.

AMP, gradient accumulation, EMA and the data-parallel gradient sync live in `Trainer`; what differs
between the callers (learning-rate schedule, backbone freezing, progress display, evaluation,
checkpoints, the epoch record) comes in as callbacks.
"""

from __future__ import annotations

import contextlib
import math
import signal
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import paddle
import paddle.nn as nn

from compress.config import AugmentSection, TrainSection
from compress.ema import ModelEMA
from compress.loss import YOLOv3Loss
from compress.transforms import DetectionDataset, MultiScaleBatchSampler, make_loader
from edge_sdk.data.dataset import ImageRecord
from edge_sdk.errors import DataError

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


def run_epochs(
    trainer: Trainer,
    data: TrainingData,
    epochs: Iterable[int],
    lr_schedule: Optional[Callable[[int], float]],
    loss_error: Callable[[Dict[str, float], int, int], str],
    before_epoch: Optional[Callable[[int], None]] = None,
    after_batch: Optional[Callable[[Dict[str, float], float], None]] = None,
    after_epoch: Optional[Callable[[int, Dict[str, float], float], None]] = None,
) -> None:
    """Run `trainer` over `data` for each epoch (0-based) of `epochs`.

    Each epoch: trainer.model in training mode, before_epoch(epoch), the data reseeded for the epoch,
    then `Trainer.epoch` with lr_schedule (see there). A loss part that is not finite raises
    DataError(loss_error(losses, epoch + 1, iteration + 1)) before the optimizer steps on it;
    after_batch(losses, lr) follows every micro-batch; after_epoch(epoch, mean of each loss part
    over the epoch's micro-batches, seconds) ends the epoch. Ctrl-C raises KeyboardInterrupt at the
    next micro-batch boundary (`InterruptAtSafePoints`).
    """
    with InterruptAtSafePoints(across_ranks=isinstance(trainer.model, paddle.DataParallel)) as interrupt:
        for epoch in epochs:
            trainer.model.train()
            if before_epoch is not None:
                before_epoch(epoch)
            data.set_epoch(epoch)
            started = time.time()
            sums: Dict[str, float] = {}
            seen = 0
            for losses, lr in trainer.epoch(data.loader, data.micro_batches, lr_schedule):
                if not all(math.isfinite(v) for v in losses.values()):
                    raise DataError(loss_error(losses, epoch + 1, seen + 1))
                for k, v in losses.items():
                    sums[k] = sums.get(k, 0.0) + v
                seen += 1
                if after_batch is not None:
                    after_batch(losses, lr)
                interrupt.check()
            means = {k: v / max(seen, 1) for k, v in sums.items()}
            if after_epoch is not None:
                after_epoch(epoch, means, round(time.time() - started, 2))


@dataclass
class TrainingData:
    """The augmented training set, its multi-scale batch sampler and loader for one process.

    micro_batches: batches per epoch; steps_per_epoch: optimizer steps per epoch (one per
    `accumulate_steps` micro-batches, the last group possibly shorter), what `lr_at` counts in.
    """

    dataset: DetectionDataset
    sampler: MultiScaleBatchSampler
    loader: paddle.io.DataLoader
    steps_per_epoch: int

    @property
    def micro_batches(self) -> int:
        return len(self.sampler)

    def set_epoch(self, epoch: int) -> None:
        """Reseed the augmentations and the shuffle for `epoch` (0-based)."""
        self.dataset.set_epoch(epoch)
        self.sampler.set_epoch(epoch)


def training_data(
    records: Sequence[ImageRecord],
    input_size: int,
    batch_size: int,
    sizes: Sequence[int],
    augment: Optional[AugmentSection],
    max_boxes: int,
    seed: int,
    num_workers: int = 0,
    accumulate_steps: int = 1,
    rank: int = 0,
    world: int = 1,
) -> TrainingData:
    """Dataset (augment: an AugmentSection, None for none), shuffled sampler of full batches of
    `batch_size` at one of `sizes` per batch (this rank's share of `world` processes) and loader.
    micro_batches is 0 when there is no full batch."""
    dataset = DetectionDataset(records, input_size, augment, max_boxes, seed)
    sampler = MultiScaleBatchSampler(dataset, batch_size, sizes, seed, True, True, rank, world)
    loader = make_loader(dataset, sampler, num_workers)
    return TrainingData(dataset, sampler, loader, math.ceil(len(sampler) / int(accumulate_steps)))


def make_training_data(
    records: Sequence[ImageRecord], input_size: int, train_cfg: TrainSection, rank: int = 0, world: int = 1
) -> TrainingData:
    """`training_data` as a recipe's train section sets it (augment, batch_size, multi_scale or
    [input_size], seed, num_workers, accumulate_steps). Raises DataError without a full batch."""
    data = training_data(
        records,
        input_size,
        train_cfg.batch_size,
        train_cfg.multi_scale or [input_size],
        train_cfg.augment,
        train_cfg.max_boxes,
        train_cfg.seed,
        train_cfg.num_workers,
        train_cfg.accumulate_steps,
        rank,
        world,
    )
    if data.micro_batches == 0:
        raise DataError("the training set has no full batch of {} images".format(train_cfg.batch_size))
    return data


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


class InterruptAtSafePoints:
    """Ctrl-C (or SIGTERM, as systemd and kill send) during training sets a flag that `check()` (called
    between iterations) turns into KeyboardInterrupt: a KeyboardInterrupt raised wherever the signal lands
    (a data loader's __del__ runs between epochs) can be swallowed as "exception ignored". A second
    Ctrl-C raises at once; repeated SIGTERMs do not (paddle.distributed.launch sends up to three within
    a second to stop a worker). SIGTERM's handler also replaces Paddle's, which dumps a C++ FatalError and
    leaves DataLoader workers behind. Only the main thread can install handlers; elsewhere this does nothing.
    across_ranks (data-parallel training, where every rank runs the same batches): `check()` stops every
    rank at the same batch when any was signalled, else the others would wait in its next all-reduce."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, across_ranks: bool = False) -> None:
        self.requested = False
        self.across_ranks = across_ranks
        self.previous: Dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True

    def check(self) -> None:
        requested = self.requested
        if self.across_ranks:
            flag = paddle.to_tensor([int(requested)], dtype="int32")
            paddle.distributed.all_reduce(flag, op=paddle.distributed.ReduceOp.MAX)
            self.requested = requested = bool(flag.item())
        if requested:
            raise KeyboardInterrupt

    def __enter__(self) -> InterruptAtSafePoints:
        import threading

        if threading.current_thread() is threading.main_thread():
            self.previous = {signum: signal.signal(signum, self._handle) for signum in self.SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, previous in self.previous.items():
            if self.requested and signum == signal.SIGTERM:
                previous = signal.SIG_IGN  # stopping already; the launcher repeats SIGTERM while we save
            signal.signal(signum, signal.SIG_DFL if previous is None else previous)
