"""YOLOv3 neck with PaddleDetection's layer names (ppdet/modeling/necks/yolo_fpn.py, YOLOv3FPN).

The width multiplier scales the neck as well as the backbone: at full width the 512/1024-channel
yolo_blocks dominate the cost of a small-backbone YOLOv3 (see NOTES-paddle26.md).
"""

from __future__ import annotations

from typing import List, Sequence, Tuple

import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from compress.models.common import scale_channels
from compress.models.darknet import ConvBNLayer


class YoloDetBlock(nn.Layer):
    """Five alternating 1x1/3x3 ConvBNLayers (`conv_module`, ending in `route`) and a 3x3 `tip`.

    forward(x) -> (route [N, channel, H, W], tip [N, 2 * channel, H, W]).
    """

    def __init__(self, ch_in: int, channel: int) -> None:
        super().__init__()
        conv_def = (
            ("conv0", ch_in, channel, 1),
            ("conv1", channel, channel * 2, 3),
            ("conv2", channel * 2, channel, 1),
            ("conv3", channel, channel * 2, 3),
            ("route", channel * 2, channel, 1),
        )
        self.conv_module = nn.Sequential()
        for name, c_in, c_out, size in conv_def:
            self.conv_module.add_sublayer(name, ConvBNLayer(c_in, c_out, filter_size=size, padding=(size - 1) // 2))
        self.tip = ConvBNLayer(channel, channel * 2, filter_size=3, padding=1)

    def forward(self, x: paddle.Tensor) -> Tuple[paddle.Tensor, paddle.Tensor]:
        route = self.conv_module(x)
        return route, self.tip(route)


class YOLOv3FPN(nn.Layer):
    """Top-down neck over three backbone maps (strides 8, 16, 32, given in that order).

    forward(feats) -> [tip at stride 32, tip at stride 16, tip at stride 8] with `out_channels`
    channels (1024, 512, 256 at width 1).
    """

    def __init__(self, in_channels: Sequence[int], width: float = 1.0) -> None:
        super().__init__()
        self.yolo_blocks = []
        self.routes = []
        self.out_channels = []
        num_blocks = len(in_channels)
        route_channels = 0
        for i in range(num_blocks):
            channel = scale_channels(512 // 2**i, width)
            block = YoloDetBlock(in_channels[-i - 1] + route_channels, channel)
            self.yolo_blocks.append(self.add_sublayer("yolo_block.{}".format(i), block))
            self.out_channels.append(channel * 2)
            if i < num_blocks - 1:
                route_channels = scale_channels(256 // 2**i, width)
                transition = ConvBNLayer(channel, route_channels, filter_size=1, padding=0)
                self.routes.append(self.add_sublayer("yolo_transition.{}".format(i), transition))

    def forward(self, feats: List[paddle.Tensor]) -> List[paddle.Tensor]:
        tips = []
        route = None
        for i, feat in enumerate(feats[::-1]):
            if route is not None:
                feat = paddle.concat([route, feat], axis=1)
            route, tip = self.yolo_blocks[i](feat)
            tips.append(tip)
            if i < len(self.routes):
                route = F.interpolate(self.routes[i](route), scale_factor=2.0)
        return tips
