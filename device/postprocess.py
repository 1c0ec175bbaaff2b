"""PaddleDetection's output rows [M,6] (class, score, x1, y1, x2, y2) -> `Detections`."""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from edge_sdk.detections import Detections


def boxes_to_detections(
    raw: np.ndarray,
    image_height: int,
    image_width: int,
    min_score: float,
    num_classes: int,
    class_ids: Optional[Sequence[int]] = None,
    frame_id: int = -1,
    timestamp: float = 0.0,
) -> Detections:
    """PaddleDetection's boxes [M,6] (class, score, x1, y1, x2, y2) -> Detections clipped to the image.

    Rows with a negative or out-of-range class (PaddleDetection's "no box" filler row), a score
    below min_score, or no area left after clipping are dropped.
    """
    rows = np.asarray(raw, np.float32).reshape(-1, 6)
    if rows.shape[0] == 0:
        return Detections.empty(frame_id, timestamp)
    classes = rows[:, 0]
    keep = (classes >= 0) & (classes < num_classes) & (rows[:, 1] >= min_score) & np.all(np.isfinite(rows), axis=1)
    if class_ids is not None:
        keep &= np.isin(classes.astype(np.int64), np.asarray(list(class_ids), np.int64))
    rows = rows[keep]
    boxes = rows[:, 2:6].copy()
    boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0.0, float(image_width))
    boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0.0, float(image_height))
    boxes[:, 2] = np.maximum(boxes[:, 2], boxes[:, 0])
    boxes[:, 3] = np.maximum(boxes[:, 3], boxes[:, 1])
    has_area = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return Detections(boxes[has_area], rows[has_area, 1], rows[has_area, 0].astype(np.int32), frame_id, timestamp)
