"""YOLOv3 head with PaddleDetection's layer names (ppdet/modeling/heads/yolo_head.py, YOLOv3Head)."""

from __future__ import annotations

from typing import List, Sequence

import paddle
import paddle.nn as nn


class YOLOv3Head(nn.Layer):
    """One 1x1 conv per level: `yolo_output.<i>` maps the neck's tip to anchors * (5 + num_classes) channels.

    Channel layout per anchor: x, y, w, h, objectness, class logits (what `yolo_box` decodes).
    """

    def __init__(self, in_channels: Sequence[int], anchors_per_level: Sequence[int], num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.yolo_outputs = []
        for i, (ch_in, num_anchors) in enumerate(zip(in_channels, anchors_per_level)):
            conv = nn.Conv2D(ch_in, num_anchors * (5 + num_classes), 1)
            conv.skip_quant = True  # as PaddleDetection: the output convs stay in float under QAT
            self.yolo_outputs.append(self.add_sublayer("yolo_output.{}".format(i), conv))

    def reset_outputs(self) -> None:
        """Re-initialise the output convs with Paddle's default Conv2D initialisation (bias zero)."""
        for conv in self.yolo_outputs:
            fresh = nn.Conv2D(conv.weight.shape[1], conv.weight.shape[0], 1)
            conv.weight.set_value(fresh.weight)
            conv.bias.set_value(fresh.bias)

    def forward(self, feats: List[paddle.Tensor]) -> List[paddle.Tensor]:
        return [conv(feat) for conv, feat in zip(self.yolo_outputs, feats)]
