"""The in-memory form of an annotated dataset, whatever file format it came from."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Tuple

import numpy as np


@dataclass(frozen=True)
class ImageRecord:
    """One annotated image.

    path: absolute path of the image file.
    image_id: the COCO image id (or a 1-based index for VOC).
    width, height: image size in pixels.
    boxes: (N, 4) float32, x1, y1, x2, y2 in pixels.
    class_ids: (N,) int32, indices into `Dataset.classes` (0-based, contiguous).
    iscrowd: (N,) bool; crowd regions are ignored by evaluation, as in COCO.
    areas: (N,) float32 region areas in square pixels (COCO's `area`, else box area).
    """

    path: Path
    image_id: int
    width: int
    height: int
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    class_ids: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int32))
    iscrowd: np.ndarray = field(default_factory=lambda: np.zeros((0,), bool))
    areas: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.float32))


@dataclass(frozen=True)
class Dataset:
    """classes: names in class-id order; images: every image, including ones without boxes."""

    classes: Tuple[str, ...]
    images: Tuple[ImageRecord, ...]
    source: Path = Path(".")

    def __len__(self) -> int:
        return len(self.images)
