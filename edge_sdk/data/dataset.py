"""The in-memory form of an annotated dataset, whatever file format it came from."""

from __future__ import annotations

import math
import posixpath
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Tuple

import numpy as np

from edge_sdk.errors import DataError

MAX_IMAGE_SIDE = 65535
"""Largest image width or height a dataset may declare, in pixels (JPEG's limit)."""

BOX_MARGIN = 1.0
"""How far (pixels) a box may reach past the image border: rounding in annotation tools, VOC's 1-based pixels."""


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


def image_size_problem(width: object, height: object) -> Optional[str]:
    """Why (width, height) is not an image size in pixels, or None if it is one."""
    for value in (width, height):
        if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= MAX_IMAGE_SIDE:
            return "width and height must be whole numbers of pixels in 1..{}, got {!r} x {!r}".format(
                MAX_IMAGE_SIDE, width, height
            )
    return None


def check_box(box: Sequence[float], width: int, height: int, where: str) -> None:
    """Raise DataError `where + problem` unless box (x1, y1, x2, y2 pixels) is a real box in the image.

    A usable box has positive width and height, and lies inside the width x height image
    (it may reach BOX_MARGIN pixels past the border). `where` names the file, the entry and the
    field as written, e.g. "val.json: annotations[3] (id 7): bbox [1, 2, 0, 5]".
    """
    x1, y1, x2, y2 = box
    if any(math.isnan(v) for v in box):
        raise DataError("{} is not a number".format(where))
    if x2 < x1:
        raise DataError("{} has negative width".format(where))
    if y2 < y1:
        raise DataError("{} has negative height".format(where))
    for edge, value, limit in (("left", x1, width), ("top", y1, height), ("right", x2, width), ("bottom", y2, height)):
        if not -BOX_MARGIN <= value <= limit + BOX_MARGIN:
            raise DataError(
                "{} is outside the {} x {} image ({} edge at {:g})".format(where, width, height, edge, value)
            )
    if x2 == x1 or y2 == y1:
        raise DataError("{} has zero area".format(where))


def relative_name_problem(file_name: str) -> Optional[str]:
    """Why `file_name` could point outside the dataset folder (absolute, or a '..' part), or None."""
    if posixpath.isabs(file_name) or Path(file_name).is_absolute():
        return "is an absolute path"
    if ".." in file_name.replace("\\", "/").split("/"):
        return "has a '..' part"
    return None
