"""YOLOv3 detectors (DarkNet-53, MobileNetV1, MobileNetV3-large backbones) with PaddleDetection's layout.

At width 1.0 and 80 classes, parameter names and shapes equal PaddleDetection's YOLOv3, so its
.pdparams checkpoints load with `load_pretrained`. `width` < 1 shrinks backbone, neck and head.
"""

from compress.models.pretrained import LoadReport, load_pretrained
from compress.models.yolov3 import (
    ARCHS,
    DEFAULT_ANCHOR_MASKS,
    DEFAULT_ANCHORS,
    DOWNSAMPLE_RATIOS,
    YOLOv3,
    build_yolov3,
)

__all__ = [
    "ARCHS",
    "DEFAULT_ANCHORS",
    "DEFAULT_ANCHOR_MASKS",
    "DOWNSAMPLE_RATIOS",
    "LoadReport",
    "YOLOv3",
    "build_yolov3",
    "load_pretrained",
]
