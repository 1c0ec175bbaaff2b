"""Exponential moving average of a model's weights, as PaddleDetection's ModelEMA ("threshold" type)."""

from __future__ import annotations

from typing import Any, Dict

import paddle
import paddle.nn as nn


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
