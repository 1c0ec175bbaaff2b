"""YOLOv3 = backbone + YOLOv3FPN neck + YOLOv3Head, laid out as PaddleDetection's YOLOv3 architecture."""

from __future__ import annotations

from typing import List, Optional, Sequence

import paddle
import paddle.nn as nn

from edge_sdk.errors import RecipeError
from edge_sdk.manifest import ARCHS

DEFAULT_ANCHORS = ((10, 13), (16, 30), (33, 23), (30, 61), (62, 45), (59, 119), (116, 90), (156, 198), (373, 326))
DEFAULT_ANCHOR_MASKS = ((6, 7, 8), (3, 4, 5), (0, 1, 2))
DOWNSAMPLE_RATIOS = (32, 16, 8)


def _build_backbone(arch: str, width: float) -> nn.Layer:
    if arch == "darknet53":
        from compress.models.darknet import DarkNet

        return DarkNet(width)
    if arch == "mobilenet_v1":
        from compress.models.mobilenet_v1 import MobileNetV1

        return MobileNetV1(width)
    if arch == "mobilenet_v3_large":
        from compress.models.mobilenet_v3 import MobileNetV3Large

        return MobileNetV3Large(width)
    raise RecipeError("unknown architecture {!r}: expected one of {}".format(arch, ", ".join(ARCHS)))


class YOLOv3(nn.Layer):
    """forward(image [N,3,H,W] float32) -> 3 raw head maps [N, 3*(5+K), H/s, W/s] for s = 32, 16, 8.

    anchors: 9 (w, h) pairs in input pixels; anchor_masks: which anchors each level uses
    (largest anchors on the stride-32 map); downsample_ratios: the stride of each level.
    prune_plan: the compress.pruning.PrunePlan of a pruned model (set by prune_to_target and
    load_pruned), None as built.
    """

    def __init__(
        self,
        arch: str,
        num_classes: int,
        width: float = 1.0,
        anchors: Sequence[Sequence[float]] = DEFAULT_ANCHORS,
        anchor_masks: Sequence[Sequence[int]] = DEFAULT_ANCHOR_MASKS,
    ) -> None:
        super().__init__()
        from compress.models.yolo_fpn import YOLOv3FPN
        from compress.models.yolo_head import YOLOv3Head

        self.arch = arch
        self.width = float(width)
        self.num_classes = int(num_classes)
        self.anchors: List[List[float]] = [list(a) for a in anchors]
        self.anchor_masks: List[List[int]] = [list(m) for m in anchor_masks]
        self.downsample_ratios: List[int] = list(DOWNSAMPLE_RATIOS)
        self.prune_plan = None
        self.backbone = _build_backbone(arch, self.width)
        self.neck = YOLOv3FPN(self.backbone.out_channels, self.width)
        self.yolo_head = YOLOv3Head(self.neck.out_channels, [len(m) for m in self.anchor_masks], self.num_classes)

    @property
    def mask_anchors(self) -> List[List[float]]:
        """Per level, the flattened (w, h) of its anchors, as `paddle.vision.ops.yolo_box` takes them."""
        return [[v for i in mask for v in self.anchors[i]] for mask in self.anchor_masks]

    def forward(self, image: paddle.Tensor) -> List[paddle.Tensor]:
        return self.yolo_head(self.neck(self.backbone(image)))


def build_yolov3(
    arch: str,
    num_classes: int,
    width: float = 1.0,
    anchors: Optional[Sequence[Sequence[float]]] = None,
) -> YOLOv3:
    """A YOLOv3 with PaddleDetection's parameter names and shapes at width 1.0.

    arch: "darknet53", "mobilenet_v1" or "mobilenet_v3_large". width scales every channel count of
    backbone, neck and head input (rounded to multiples of 8). anchors: 9 (w, h) pairs in input
    pixels, default PaddleDetection's (for 320-608 px inputs).
    """
    if arch not in ARCHS:
        raise RecipeError("unknown architecture {!r}: expected one of {}".format(arch, ", ".join(ARCHS)))
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise RecipeError("num_classes must be a positive integer, got {!r}".format(num_classes))
    if not 0 < float(width) <= 4:
        raise RecipeError("width must be in (0, 4], got {!r}".format(width))
    if anchors is None:
        anchors = DEFAULT_ANCHORS
    if len(anchors) != 9 or any(len(a) != 2 or min(a) <= 0 for a in anchors):
        raise RecipeError("anchors must be 9 positive (w, h) pairs, got {!r}".format(anchors))
    return YOLOv3(arch, num_classes, width, anchors)
