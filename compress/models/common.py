"""Helpers shared by the backbones, neck and head."""

from __future__ import annotations


def make_divisible(value: float, divisor: int = 8, min_value: int = 8) -> int:
    """Round a scaled channel count to a multiple of `divisor` (never below `min_value`).

    PaddleDetection's MobileNetV3 rule; every channel count of the three YOLOv3 layouts is already
    a multiple of 8, so at width 1.0 it returns the PaddleDetection count unchanged.
    """
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def scale_channels(channels: int, width: float) -> int:
    """`channels` multiplied by the width multiplier, rounded by `make_divisible`."""
    if width == 1.0:
        return channels
    return make_divisible(channels * width)
