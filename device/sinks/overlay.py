"""Boxes and labels drawn on a frame: the one drawing shared by the recorder and the live preview."""

from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np

# BGR colours, distinct on a PCB's green and on grey; class i uses PALETTE[i % len(PALETTE)].
PALETTE: Tuple[Tuple[int, int, int], ...] = (
    (56, 56, 255),
    (255, 157, 151),
    (31, 112, 255),
    (29, 178, 255),
    (207, 210, 49),
    (236, 24, 0),
    (255, 56, 132),
    (133, 0, 82),
    (255, 149, 200),
    (0, 217, 255),
)


def class_name(class_id: int, classes: Sequence[str]) -> str:
    return classes[class_id] if 0 <= class_id < len(classes) else str(class_id)


def annotate(image: np.ndarray, detections, classes: Sequence[str] = ()) -> np.ndarray:
    """A copy of `image` ((H, W, 3) uint8 BGR) with each detection's box and "class score" label drawn."""
    import cv2

    out = np.ascontiguousarray(image).copy()
    height, width = out.shape[:2]
    thickness = max(1, int(round(min(height, width) / 320)))
    font_scale = max(0.35, min(height, width) / 900.0)
    for box, score, class_id in zip(
        detections.boxes.tolist(), detections.scores.tolist(), detections.class_ids.tolist()
    ):
        color = PALETTE[class_id % len(PALETTE)]
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        cv2.rectangle(out, (x1, y1), (x2, y2), color, thickness, cv2.LINE_8)
        label = "{} {:.2f}".format(class_name(class_id, classes), score)
        (text_w, text_h), baseline = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, font_scale, 1)
        top = y1 - text_h - baseline - 2
        if top < 0:
            top = min(y1 + thickness, max(height - text_h - baseline - 2, 0))
        cv2.rectangle(out, (x1, top), (x1 + text_w + 4, top + text_h + baseline + 2), color, -1)
        cv2.putText(
            out,
            label,
            (x1 + 2, top + text_h + 1),
            cv2.FONT_HERSHEY_SIMPLEX,
            font_scale,
            (255, 255, 255),
            1,
            cv2.LINE_AA,
        )
    return out
