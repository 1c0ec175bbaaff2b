"""Golden images, workstation side: pick a few val images, JPEG them, record a bundle's detections.

The bundle members, their format, and the robot's check after install live in `device.golden`;
`self_check` runs that check here, with the robot's settings for the bundle's precision.

Robot code: no paddleslim, Python 3.8; OpenCV and Paddle only inside the functions that need them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Sequence, Union

import numpy as np

from device.golden import (
    GOLDEN_JPEG_QUALITY,
    PRECISION_TOLERANCES,
    decode_golden_image,
    encode_golden_image,
    golden_files,
)
from edge_sdk.data.dataset import ImageRecord
from edge_sdk.data.images import read_bgr

GOLDEN_CANDIDATES_PER_IMAGE = 4  # images looked at per golden image kept (see make_golden)


def pick_golden_records(records: Sequence[Any], count: int) -> List[Any]:
    """`count` records spread evenly over `records` (deterministic; all of them when fewer)."""
    if count <= 0 or not records:
        return []
    if count >= len(records):
        return list(records)
    picks = np.linspace(0, len(records) - 1, count).round().astype(int)
    return [records[i] for i in picks]


def make_golden(
    bundle: Any,
    records: Sequence[Union[ImageRecord, Path]],
    count: int = 4,
    quality: int = GOLDEN_JPEG_QUALITY,
    candidates_per_image: int = GOLDEN_CANDIDATES_PER_IMAGE,
) -> Dict[str, bytes]:
    """Golden bundle members (archive name -> bytes, for write_bundle / export_bundle extra_files).

    `bundle` (an opened Bundle or a path, any stage: the reference the shipped model must
    reproduce) runs on the CPU at its manifest's score threshold (named in golden.json) on
    count * candidates_per_image of `records` (dataset records or image paths; see
    pick_golden_records), each encoded as JPEG at
    `quality` and decoded again: the robot decodes the same pixels from the same file. The `count`
    candidates with the most detections scoring at least threshold + the loosest health-check
    score tolerance are kept (ties: the earlier record), in record order: those boxes count under
    every precision's tolerance, so a broken engine has boxes to miss. Raises DataError for an
    unreadable image.
    """
    from device.detector import Detector

    candidates = []
    with Detector(bundle, device="cpu") as detector:
        threshold = detector.manifest.postprocess.score_threshold
        for record in pick_golden_records(records, count * max(1, candidates_per_image)):
            path = record.path if isinstance(record, ImageRecord) else Path(record)
            image = read_bgr(path)
            encoded = encode_golden_image(image, quality)
            decoded = decode_golden_image(encoded, "golden JPEG of {}".format(path))
            candidates.append((encoded, detector.detect(decoded, score_threshold=threshold)))
    confident_score = threshold + max(t.score_tolerance for t in PRECISION_TOLERANCES.values())
    confident = [int((found.scores >= confident_score).sum()) for _, found in candidates]
    kept = sorted(sorted(range(len(candidates)), key=lambda i: -confident[i])[: max(0, count)])
    return golden_files([candidates[i] for i in kept], score_threshold=threshold)


def self_check(bundle: Any, trusted_keys: Any = None) -> List[str]:
    """Problems the robot's install health check would find in `bundle` (a path or an opened
    Bundle); [] when it would pass.

    Runs `device.health.health_check` on this machine's CPU with the robot's default settings
    for the bundle's precision (`HealthSettings.for_precision`): the model loads, its detections on
    the golden images agree with golden.json within that precision's tolerances. Each problem is
    one line (today at most one: the health check's reason). A bundle without golden images passes
    (the robot skips the check with a warning). Raises BundleError when the bundle does not open.
    """
    from device.health import HealthSettings, health_check
    from edge_sdk.bundle import opened_bundle

    with opened_bundle(bundle, trusted_keys=trusted_keys) as opened:
        report = health_check(opened, HealthSettings(device="cpu", fps_frames=1))
    return [] if report.passed else [report.reason]
