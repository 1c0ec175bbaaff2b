"""MobileNetV3-large backbone with PaddleDetection's layer names (ppdet/modeling/backbones/mobilenet_v3.py)."""

from __future__ import annotations

from typing import List, Optional

import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from compress.models.common import scale_channels

# kernel size, expanded channels, output channels, squeeze-excite, activation, stride (width 1.0)
_LARGE_CFG = (
    (3, 16, 16, False, "relu", 1),
    (3, 64, 24, False, "relu", 2),
    (3, 72, 24, False, "relu", 1),
    (5, 72, 40, True, "relu", 2),
    (5, 120, 40, True, "relu", 1),
    (5, 120, 40, True, "relu", 1),
    (3, 240, 80, False, "hard_swish", 2),
    (3, 200, 80, False, "hard_swish", 1),
    (3, 184, 80, False, "hard_swish", 1),
    (3, 184, 80, False, "hard_swish", 1),
    (3, 480, 112, True, "hard_swish", 1),
    (3, 672, 112, True, "hard_swish", 1),
    (5, 672, 160, True, "hard_swish", 2),
    (5, 960, 160, True, "hard_swish", 1),
    (5, 960, 160, True, "hard_swish", 1),
)
# Block numbers (conv<N>) whose outputs feed the neck: strides 8, 16, 32 (PaddleDetection's feature_maps).
_FEATURE_MAPS = (7, 13, 16)


class ConvBNLayer(nn.Layer):
    """Conv2D (no bias) + BatchNorm2D + optional activation ("relu", "hard_swish" or None)."""

    def __init__(
        self,
        ch_in: int,
        ch_out: int,
        kernel_size: int,
        stride: int,
        padding: int,
        groups: int = 1,
        act: Optional[str] = None,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2D(
            ch_in, ch_out, kernel_size, stride=stride, padding=padding, groups=groups, bias_attr=False
        )
        self.bn = nn.BatchNorm2D(ch_out)
        self.act = act

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        x = self.bn(self.conv(x))
        if self.act == "relu":
            x = F.relu(x)
        elif self.act == "hard_swish":
            x = F.hardswish(x)
        return x


class SEModule(nn.Layer):
    """Squeeze-excite: global average pool, 1x1 to channels/4 (ReLU), 1x1 back (hard sigmoid), multiply."""

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        mid = max(1, channels // reduction)
        self.avg_pool = nn.AdaptiveAvgPool2D(1)
        self.conv1 = nn.Conv2D(channels, mid, 1)
        self.conv2 = nn.Conv2D(mid, channels, 1)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        scale = F.relu(self.conv1(self.avg_pool(x)))
        scale = F.hardsigmoid(self.conv2(scale), slope=0.2, offset=0.5)
        return paddle.multiply(x, scale)


class ResidualUnit(nn.Layer):
    """Inverted residual: 1x1 expand, kxk depthwise, optional SE, 1x1 linear; shortcut when shapes allow."""

    def __init__(
        self, ch_in: int, ch_mid: int, ch_out: int, kernel_size: int, stride: int, use_se: bool, act: str
    ) -> None:
        super().__init__()
        self.if_shortcut = stride == 1 and ch_in == ch_out
        self.use_se = use_se
        self.expand_conv = ConvBNLayer(ch_in, ch_mid, 1, 1, 0, act=act)
        self.bottleneck_conv = ConvBNLayer(
            ch_mid, ch_mid, kernel_size, stride, (kernel_size - 1) // 2, groups=ch_mid, act=act
        )
        if use_se:
            self.mid_se = SEModule(ch_mid)
        self.linear_conv = ConvBNLayer(ch_mid, ch_out, 1, 1, 0, act=None)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        y = self.bottleneck_conv(self.expand_conv(x))
        if self.use_se:
            y = self.mid_se(y)
        y = self.linear_conv(y)
        return paddle.add(x, y) if self.if_shortcut else y


class MobileNetV3Large(nn.Layer):
    """Returns feature maps at strides 8, 16, 32 (40, 112, 160 channels at width 1)."""

    def __init__(self, width: float = 1.0) -> None:
        super().__init__()
        ch_in = scale_channels(16, width)
        self.conv1 = ConvBNLayer(3, ch_in, 3, 2, 1, act="hard_swish")
        self.blocks = []
        self.out_channels = []
        for number, (kernel, expand, ch_out, use_se, act, stride) in enumerate(_LARGE_CFG, start=2):
            ch_mid = scale_channels(expand, width)
            ch_out = scale_channels(ch_out, width)
            unit = ResidualUnit(ch_in, ch_mid, ch_out, kernel, stride, use_se, act)
            self.blocks.append(self.add_sublayer("conv{}".format(number), unit))
            if number in _FEATURE_MAPS:
                self.out_channels.append(ch_out)
            ch_in = ch_out

    def forward(self, image: paddle.Tensor) -> List[paddle.Tensor]:
        x = self.conv1(image)
        feats = []
        for index, block in enumerate(self.blocks):
            x = block(x)
            if index + 2 in _FEATURE_MAPS:
                feats.append(x)
        return feats
