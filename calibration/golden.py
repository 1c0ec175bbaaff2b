"""Golden images, workstation side: pick a few val images and record the FP32 bundle's detections.

The bundle members, their format, and the robot's check after install live in `device.golden`.

Robot code: no paddleslim, Python 3.8; OpenCV and Paddle only inside the functions that need them.
"""

from __future__ import annotations

from typing import Any, Dict, List, Sequence

import numpy as np

from device.golden import golden_files
from edge_sdk.data.dataset import ImageRecord
from edge_sdk.errors import DataError


def pick_golden_records(records: Sequence[ImageRecord], count: int) -> List[ImageRecord]:
    """`count` records spread evenly over `records` (deterministic; all of them when fewer)."""
    if count <= 0 or not records:
        return []
    if count >= len(records):
        return list(records)
    picks = np.linspace(0, len(records) - 1, count).round().astype(int)
    return [records[i] for i in picks]


def make_golden(fp32_bundle: Any, records: Sequence[ImageRecord], count: int = 4) -> Dict[str, bytes]:
    """Golden bundle members (archive name -> bytes, for write_bundle / export_bundle extra_files):
    the FP32 bundle (an opened Bundle or a path) run on the CPU at its manifest's score threshold
    over `count` of `records` (see pick_golden_records). Raises DataError for an unreadable image."""
    import cv2

    from device.pipeline import Detector

    samples = []
    with Detector(fp32_bundle, device="cpu") as detector:
        for record in pick_golden_records(records, count):
            image = cv2.imread(str(record.path), cv2.IMREAD_COLOR)
            if image is None:
                raise DataError("cannot decode image {}".format(record.path))
            samples.append((image, detector.detect(image)))
    return golden_files(samples)
