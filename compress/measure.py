"""Measuring a bundle the way the robot runs it: `device.evaluate.evaluate_model` (device.detector.Detector,
Paddle Inference, CPU) over a val set, scored with COCO mAP, plus the bundle's model bytes."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional

from edge_sdk.data.dataset import Dataset


def measure_bundle(
    bundle_path: Path, val_set: Dataset, threads: Optional[int] = None, latency_images: int = 20
) -> Dict[str, Any]:
    """Run a bundle through device.detector.Detector (Paddle Inference) on every val image.

    Returns map50, map (COCO, every score kept), latency_ms (median per image of the first
    `latency_images` images after one warm-up, preprocessing + inference + postprocessing, CPU),
    bytes (model files in the bundle) and per_class.
    """
    from device.evaluate import evaluate_model
    from edge_sdk.bundle import open_bundle

    with open_bundle(bundle_path) as bundle:
        model_bytes = sum(e.size for e in bundle.manifest.files if e.path.startswith("model/"))
        evaluation = evaluate_model(bundle, val_set, device="cpu", threads=threads, latency_images=latency_images)
    return {
        "map50": evaluation.map50,
        "map": evaluation.map,
        "latency_ms": evaluation.latency_ms,
        "bytes": model_bytes,
        "per_class": [c.to_dict() for c in evaluation.result.per_class],
    }
