"""The two types every runtime stage passes along: `Frame` (an image) and `Detections` (its boxes)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np


@dataclass(frozen=True)
class Frame:
    """One captured image.

    image: (H, W, 3) uint8, BGR (OpenCV's order).
    frame_id: increasing per source, starting at 0; gaps mean dropped frames. For a video file or a
        folder, the frame's position in it (a looping source counts on across passes).
    timestamp: capture time in seconds on `time.monotonic()`'s clock.
    source_id: the URI or name of the source that produced it.
    source_name: the image's file name when the source is a folder of images, else "".
    """

    image: np.ndarray
    frame_id: int
    timestamp: float
    source_id: str = ""
    source_name: str = ""

    def __post_init__(self) -> None:
        img = self.image
        if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            raise ValueError("Frame.image must be an (H, W, 3) uint8 array, got {}".format(_describe(img)))
        if img.shape[0] == 0 or img.shape[1] == 0:
            raise ValueError("Frame.image is empty: shape {}".format(img.shape))

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        return int(self.image.shape[1])


@dataclass(frozen=True)
class Detections:
    """Boxes found in one frame.

    boxes: (N, 4) float32, x1, y1, x2, y2 in source-image pixels (x2 >= x1, y2 >= y1).
    scores: (N,) float32 in [0, 1].
    class_ids: (N,) int32, indices into the manifest's class list.
    frame_id, timestamp: copied from the `Frame` the boxes were found in (-1 / 0.0 when none).
    """

    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    scores: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.float32))
    class_ids: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int32))
    frame_id: int = -1
    timestamp: float = 0.0

    def __post_init__(self) -> None:
        boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        class_ids = np.asarray(self.class_ids).reshape(-1)
        if class_ids.size and not np.all(np.equal(np.mod(class_ids, 1), 0)):
            raise ValueError("Detections.class_ids must be integers")
        class_ids = class_ids.astype(np.int32)
        n = boxes.shape[0]
        if scores.shape[0] != n or class_ids.shape[0] != n:
            raise ValueError(
                "Detections: boxes ({}), scores ({}) and class_ids ({}) must have the same length".format(
                    n, scores.shape[0], class_ids.shape[0]
                )
            )
        if n and not np.all(np.isfinite(boxes)):
            raise ValueError("Detections.boxes must be finite")
        if n and np.any(boxes[:, 2:] < boxes[:, :2]):
            raise ValueError("Detections.boxes must be x1, y1, x2, y2 with x2 >= x1 and y2 >= y1")
        if n and np.any(class_ids < 0):
            raise ValueError("Detections.class_ids must be >= 0")
        object.__setattr__(self, "boxes", boxes)
        object.__setattr__(self, "scores", scores)
        object.__setattr__(self, "class_ids", class_ids)

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    @classmethod
    def empty(cls, frame_id: int = -1, timestamp: float = 0.0) -> Detections:
        return cls(frame_id=frame_id, timestamp=timestamp)

    def filter(self, min_score: float = 0.0, class_ids: Optional[np.ndarray] = None) -> Detections:
        """Keep detections with score >= min_score and (if given) a class id in class_ids."""
        keep = self.scores >= min_score
        if class_ids is not None:
            keep &= np.isin(self.class_ids, np.asarray(class_ids))
        return Detections(self.boxes[keep], self.scores[keep], self.class_ids[keep], self.frame_id, self.timestamp)


def _describe(a: object) -> str:
    if isinstance(a, np.ndarray):
        return "{} array of shape {}".format(a.dtype, a.shape)
    return type(a).__name__
