"""DarkNet-53 backbone with PaddleDetection's layer names (ppdet/modeling/backbones/darknet.py).

Its `ConvBNLayer` (conv + batch_norm + leaky ReLU 0.1) is also the building block of the YOLOv3 neck.
"""

from __future__ import annotations

from typing import List

import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from compress.models.common import scale_channels

DARKNET53_STAGE_BLOCKS = (1, 2, 8, 8, 4)


class ConvBNLayer(nn.Layer):
    """Conv2D (no bias) + BatchNorm2D + activation ("leaky" = leaky ReLU 0.1, or None)."""

    def __init__(
        self,
        ch_in: int,
        ch_out: int,
        filter_size: int = 3,
        stride: int = 1,
        groups: int = 1,
        padding: int = 0,
        act: str = "leaky",
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2D(
            ch_in, ch_out, filter_size, stride=stride, padding=padding, groups=groups, bias_attr=False
        )
        self.batch_norm = nn.BatchNorm2D(ch_out)
        self.act = act

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        x = self.batch_norm(self.conv(x))
        if self.act == "leaky":
            x = F.leaky_relu(x, 0.1)
        return x


class DownSample(nn.Layer):
    """3x3 stride-2 ConvBNLayer."""

    def __init__(self, ch_in: int, ch_out: int) -> None:
        super().__init__()
        self.conv_bn_layer = ConvBNLayer(ch_in, ch_out, filter_size=3, stride=2, padding=1)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return self.conv_bn_layer(x)


class BasicBlock(nn.Layer):
    """Residual block: 1x1 to `ch_mid`, 3x3 back to `2 * ch_mid`, plus the input."""

    def __init__(self, ch_in: int, ch_mid: int) -> None:
        super().__init__()
        self.conv1 = ConvBNLayer(ch_in, ch_mid, filter_size=1, padding=0)
        self.conv2 = ConvBNLayer(ch_mid, ch_mid * 2, filter_size=3, padding=1)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return paddle.add(x, self.conv2(self.conv1(x)))


class Blocks(nn.Layer):
    """`count` BasicBlocks; the first is `basicblock0`, the others `<name>.<i>` as in PaddleDetection."""

    def __init__(self, ch_in: int, ch_mid: int, count: int, name: str) -> None:
        super().__init__()
        self.basicblock0 = BasicBlock(ch_in, ch_mid)
        self.res_out_list = []
        for i in range(1, count):
            block = self.add_sublayer("{}.{}".format(name, i), BasicBlock(ch_mid * 2, ch_mid))
            self.res_out_list.append(block)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        x = self.basicblock0(x)
        for block in self.res_out_list:
            x = block(x)
        return x


class DarkNet(nn.Layer):
    """DarkNet-53 returning stages 2, 3, 4: strides 8, 16, 32 with 256, 512, 1024 channels at width 1."""

    def __init__(self, width: float = 1.0) -> None:
        super().__init__()
        mids = [scale_channels(32 * 2**i, width) for i in range(len(DARKNET53_STAGE_BLOCKS))]
        self.return_idx = (2, 3, 4)
        self.conv0 = ConvBNLayer(3, scale_channels(32, width), filter_size=3, padding=1)
        self.downsample0 = DownSample(scale_channels(32, width), mids[0] * 2)
        self.stages = []
        for i, count in enumerate(DARKNET53_STAGE_BLOCKS):
            name = "stage.{}".format(i)
            self.stages.append(self.add_sublayer(name, Blocks(mids[i] * 2, mids[i], count, name)))
        self.downsamples = []
        for i in range(len(DARKNET53_STAGE_BLOCKS) - 1):
            layer = DownSample(mids[i] * 2, mids[i + 1] * 2)
            self.downsamples.append(self.add_sublayer("stage.{}.downsample".format(i), layer))
        self.out_channels = [mids[i] * 2 for i in self.return_idx]

    def forward(self, image: paddle.Tensor) -> List[paddle.Tensor]:
        x = self.downsample0(self.conv0(image))
        feats = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i in self.return_idx:
                feats.append(x)
            if i < len(self.downsamples):
                x = self.downsamples[i](x)
        return feats
