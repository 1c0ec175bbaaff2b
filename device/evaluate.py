"""Run a bundle or a model folder over a dataset through the robot's predictor: detections, mAP, latency.

`evaluate_model` is the one place a model is measured on images: the compression stages, the
PTQ budget and `edge-sdk eval --bundle` all use it, so what is measured is what the robot runs
(`device.detector.Detector`, Paddle Inference).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, List, Optional, Tuple, Union

from device.detector import Detector
from edge_sdk.data.dataset import Dataset
from edge_sdk.data.images import read_bgr
from edge_sdk.detections import Detections
from edge_sdk.manifest import Manifest
from edge_sdk.metrics import EvalResult, evaluate
from edge_sdk.model_files import ModelFiles


class ModelFolder:
    """A folder with model.pdmodel + model.pdiparams, and the manifest describing them, as `ModelFiles`."""

    def __init__(self, manifest: Manifest, model_dir: Union[str, Path]) -> None:
        self.manifest = manifest
        self.root = Path(model_dir)
        self.sha256: Optional[str] = None

    def path_of(self, arcname: str) -> Path:
        return self.root / arcname.split("/")[-1]

    def close(self) -> None:
        return None


@dataclass(frozen=True)
class Evaluation:
    """detections: one per dataset image, in source pixels, every score kept.
    result: `edge_sdk.metrics.EvalResult` of those detections (map50, map, per_class, ...).
    latency_ms: median `Detector.detect` time per image (preprocessing + inference +
    postprocessing), None without images."""

    detections: Tuple[Detections, ...]
    result: EvalResult
    latency_ms: Optional[float]

    @property
    def map50(self) -> Optional[float]:
        """mAP@.5 in [0, 1], None without ground truth."""
        return self.result.map50

    @property
    def map(self) -> Optional[float]:
        """mAP@[.5:.95] in [0, 1], None without ground truth."""
        return self.result.map


def evaluate_model(
    model: Union[str, Path, ModelFiles],
    dataset: Dataset,
    device: str = "auto",
    threads: Optional[int] = None,
    latency_images: Optional[int] = None,
    progress: Optional[Callable[[], None]] = None,
    trusted_keys: Any = None,
) -> Evaluation:
    """Detect on every image of `dataset` with `model` (a bundle file, or opened `ModelFiles`) and
    score the detections against its ground truth.

    device / threads: see `device.predictor.plan`. The first image is detected once more, untimed,
    before the timed runs (warm-up); latency_images: time only the first this many images (None:
    all). progress: called after each image. Raises DataError for an image that cannot be read.
    """
    detections: List[Detections] = []
    milliseconds: List[float] = []
    with Detector(model, device=device, threads=threads, trusted_keys=trusted_keys) as detector:
        for index, record in enumerate(dataset.images):
            image = read_bgr(record.path)
            if index == 0:
                detector.detect(image, score_threshold=0.0)
            started = time.perf_counter()
            detections.append(detector.detect(image, score_threshold=0.0))
            if latency_images is None or index < latency_images:
                milliseconds.append((time.perf_counter() - started) * 1000.0)
            if progress is not None:
                progress()
    latency = statistics.median(milliseconds) if milliseconds else None
    return Evaluation(tuple(detections), evaluate(dataset, detections), latency)
