"""MobileNetV1 backbone with PaddleDetection's layer names (ppdet/modeling/backbones/mobilenet_v1.py)."""

from __future__ import annotations

from typing import List

import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from compress.models.common import scale_channels

# name, pointwise output channels (width 1.0), stride of the depthwise conv
_MOBILENET_V1_BLOCKS = (
    ("conv2_1", 64, 1),
    ("conv2_2", 128, 2),
    ("conv3_1", 128, 1),
    ("conv3_2", 256, 2),
    ("conv4_1", 256, 1),
    ("conv4_2", 512, 2),
    ("conv5_1", 512, 1),
    ("conv5_2", 512, 1),
    ("conv5_3", 512, 1),
    ("conv5_4", 512, 1),
    ("conv5_5", 512, 1),
    ("conv5_6", 1024, 2),
    ("conv6", 1024, 1),
)
# 1-based indices of the blocks whose outputs feed the neck (PaddleDetection's feature_maps).
_FEATURE_MAPS = (4, 6, 13)


class ConvBNLayer(nn.Layer):
    """Conv2D (no bias, Kaiming normal) + BatchNorm2D + ReLU."""

    def __init__(self, ch_in: int, ch_out: int, kernel_size: int, stride: int, padding: int, groups: int = 1) -> None:
        super().__init__()
        self._conv = nn.Conv2D(
            ch_in,
            ch_out,
            kernel_size,
            stride=stride,
            padding=padding,
            groups=groups,
            weight_attr=paddle.ParamAttr(initializer=nn.initializer.KaimingNormal()),
            bias_attr=False,
        )
        self._batch_norm = nn.BatchNorm2D(ch_out)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return F.relu(self._batch_norm(self._conv(x)))


class DepthwiseSeparable(nn.Layer):
    """3x3 depthwise ConvBNLayer then 1x1 pointwise ConvBNLayer."""

    def __init__(self, ch_in: int, ch_out: int, stride: int) -> None:
        super().__init__()
        self._depthwise_conv = ConvBNLayer(ch_in, ch_in, 3, stride, 1, groups=ch_in)
        self._pointwise_conv = ConvBNLayer(ch_in, ch_out, 1, 1, 0)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return self._pointwise_conv(self._depthwise_conv(x))


class MobileNetV1(nn.Layer):
    """Returns feature maps at strides 8, 16, 32 (256, 512, 1024 channels at width 1)."""

    def __init__(self, width: float = 1.0) -> None:
        super().__init__()
        ch_in = scale_channels(32, width)
        self.conv1 = ConvBNLayer(3, ch_in, 3, 2, 1)
        self.blocks = []
        self.out_channels = []
        for index, (name, ch_out, stride) in enumerate(_MOBILENET_V1_BLOCKS, start=1):
            ch_out = scale_channels(ch_out, width)
            self.blocks.append(self.add_sublayer(name, DepthwiseSeparable(ch_in, ch_out, stride)))
            if index in _FEATURE_MAPS:
                self.out_channels.append(ch_out)
            ch_in = ch_out

    def forward(self, image: paddle.Tensor) -> List[paddle.Tensor]:
        x = self.conv1(image)
        feats = []
        for index, block in enumerate(self.blocks):
            x = block(x)
            if index + 1 in _FEATURE_MAPS:
                feats.append(x)
        return feats
