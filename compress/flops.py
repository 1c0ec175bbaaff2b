"""Model cost: FLOPs counted as 2 x multiply-adds of every Conv2D and Linear, and parameter counts.

Batch norm, activations, pooling, upsampling and the box decoding are not counted (together well
under 1% of a YOLOv3). This is the convention of the manifest's `StageMetrics.flops`; note that
`paddle.flops` reports multiply-adds (half of this number) and prints a table.
"""

from __future__ import annotations

from typing import Tuple

import numpy as np


def model_flops(model, input_size: Tuple[int, int]) -> float:
    """FLOPs (2 x multiply-adds) of one forward pass of `model` on a [1, 3, h, w] image.

    input_size: (height, width) in pixels. The model is run once in eval mode without gradients;
    its training/eval state is restored afterwards.
    """
    import paddle
    import paddle.nn as nn

    total = [0]

    def count_conv(layer, inputs, output):
        kh, kw = layer.weight.shape[2], layer.weight.shape[3]
        ch_in_per_group = layer.weight.shape[1]
        total[0] += 2 * int(np.prod(output.shape[1:])) * ch_in_per_group * kh * kw

    def count_linear(layer, inputs, output):
        total[0] += 2 * int(np.prod(output.shape[1:])) * layer.weight.shape[0]

    hooks = []
    for layer in model.sublayers(include_self=True):
        if isinstance(layer, nn.Conv2D):
            hooks.append(layer.register_forward_post_hook(count_conv))
        elif isinstance(layer, nn.Linear):
            hooks.append(layer.register_forward_post_hook(count_linear))
    was_training = model.training
    model.eval()
    try:
        with paddle.no_grad():
            model(paddle.zeros([1, 3, int(input_size[0]), int(input_size[1])], dtype="float32"))
    finally:
        for hook in hooks:
            hook.remove()
        if was_training:
            model.train()
    return float(total[0])


def count_params(model) -> int:
    """Number of parameters (weights and biases, batch-norm scale and shift; not running statistics)."""
    return int(sum(int(np.prod(p.shape)) for p in model.parameters()))
