"""Measuring a bundle the way the robot runs it: device.detector.Detector (Paddle Inference, CPU) over a
val set, scored with COCO mAP. (A single evaluator in device/ for bundles and model folders can take this
function's place.)"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any, Dict, Optional

from edge_sdk.data.dataset import Dataset
from edge_sdk.errors import DataError


def measure_bundle(
    bundle_path: Path, val_set: Dataset, threads: Optional[int] = None, latency_images: int = 20
) -> Dict[str, Any]:
    """Run a bundle through device.detector.Detector (Paddle Inference) on every val image.

    Returns map50, map (COCO, every score kept), latency_ms (median per image of the first
    `latency_images` images after one warm-up, preprocessing + inference + postprocessing, CPU),
    bytes (model files in the bundle) and per_class.
    """
    import cv2

    from device.detector import Detector
    from edge_sdk.bundle import open_bundle
    from edge_sdk.metrics import evaluate

    with open_bundle(bundle_path) as bundle:
        model_bytes = sum(e.size for e in bundle.manifest.files if e.path.startswith("model/"))
        detector = Detector(bundle, device="cpu", threads=threads)
        try:
            predictions, times = [], []
            for i, record in enumerate(val_set.images):
                image = cv2.imread(str(record.path), cv2.IMREAD_COLOR)
                if image is None:
                    raise DataError("cannot decode image {}".format(record.path))
                if i == 0:
                    detector.detect(image, score_threshold=0.0)
                started = time.perf_counter()
                predictions.append(detector.detect(image, score_threshold=0.0))
                if i < latency_images:
                    times.append((time.perf_counter() - started) * 1000.0)
        finally:
            detector.close()
    result = evaluate(val_set, predictions)
    return {
        "map50": result.map50,
        "map": result.map,
        "latency_ms": statistics.median(times) if times else None,
        "bytes": model_bytes,
        "per_class": [c.to_dict() for c in result.per_class],
    }
