"""The optimizer and the learning-rate schedule of a recipe's `train` section."""

from __future__ import annotations

import math

import paddle
import paddle.nn as nn

from compress.config import TrainSection


def lr_at(step: int, steps_per_epoch: int, train_cfg: TrainSection) -> float:
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


def make_optimizer(net: nn.Layer, train_cfg: TrainSection) -> paddle.optimizer.Optimizer:
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
