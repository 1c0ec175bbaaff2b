"""A bundle's model behind Paddle Inference: BGR image in, `Detections` in source-image pixels out.

`Detector` wraps the predictor built by `device.predictor`, preprocesses with `device.preprocess`
and maps PaddleDetection's output rows with `device.postprocess`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from device.postprocess import boxes_to_detections
from device.preprocess import Preprocessor
from edge_sdk.bundle import MODEL_PARAMS, MODEL_PROGRAM
from edge_sdk.detections import Detections
from edge_sdk.errors import PredictorError
from edge_sdk.model_files import ModelFiles


class Detector:
    """A bundle's model behind Paddle Inference: BGR image in, Detections in source pixels out.

    bundle: `ModelFiles` (an opened `edge_sdk.bundle.Bundle`, an installed version, a model folder),
    or the path of a bundle file (opened, and closed by `close()`).
    precision / device / dla_core / threads / cache_root: see `device.predictor.plan`.
    class_ids: keep only these classes (None: all).
    log: receives the plan's notes and the engine-build notice (None: silent).
    plan_options: a `device.predictor.PlanOptions` instead of precision ... cache_root.
    """

    def __init__(
        self,
        bundle: Union[str, Path, ModelFiles],
        precision: Optional[str] = None,
        device: str = "auto",
        threads: Optional[int] = None,
        dla_core: Optional[int] = None,
        cache_root: Optional[Path] = None,
        class_ids: Optional[Sequence[int]] = None,
        environment: Any = None,
        log: Optional[Callable[[str], None]] = None,
        trusted_keys: Any = None,
        plan_options: Any = None,
    ) -> None:
        from device import predictor as predictor_module

        self._owned_bundle = None
        if isinstance(bundle, (str, Path)):
            from edge_sdk.bundle import open_bundle

            bundle = open_bundle(bundle, trusted_keys=trusted_keys)
            self._owned_bundle = bundle
        self.bundle = bundle
        self.manifest = bundle.manifest
        self.classes = tuple(self.manifest.classes)
        self.class_ids = None if class_ids is None else tuple(int(c) for c in class_ids)
        env = environment if environment is not None else predictor_module.probe_environment()
        try:
            options = plan_options or predictor_module.PlanOptions(
                precision, device, dla_core, threads, None if cache_root is None else str(cache_root)
            )
            self.plan = predictor_module.plan_for(self.manifest, env, options, getattr(bundle, "sha256", None))
            self.predictor = predictor_module.apply_plan(
                self.plan, (bundle.path_of(MODEL_PROGRAM), bundle.path_of(MODEL_PARAMS)), log
            )
        except BaseException:
            self.close()
            raise
        self.preprocessor = Preprocessor(self.manifest.input)
        self.input_names = list(self.predictor.get_input_names())
        self.output_names = list(self.predictor.get_output_names())
        self._input_handles = {name: self.predictor.get_input_handle(name) for name in self.input_names}
        self._input_shapes: Dict[str, Tuple[int, ...]] = {}
        self._output_handle = self.predictor.get_output_handle(self.output_names[0])

    def preprocess(self, image_bgr: np.ndarray) -> Dict[str, np.ndarray]:
        """See `Preprocessor`: the inputs for one (H, W, 3) uint8 BGR image."""
        return self.preprocessor(image_bgr)

    def infer(self, inputs: Dict[str, np.ndarray]) -> np.ndarray:
        """Run the predictor; returns PaddleDetection's boxes [M,6] (class, score, x1, y1, x2, y2)."""
        for name, handle in self._input_handles.items():
            if name not in inputs:
                raise PredictorError(
                    "the bundle's program wants an input {!r} the preprocessor does not make".format(name)
                )
            array = inputs[name]
            if self._input_shapes.get(name) != array.shape:
                handle.reshape(list(array.shape))
                self._input_shapes[name] = array.shape
            handle.copy_from_cpu(array)
        self.predictor.run()
        return self._output_handle.copy_to_cpu()

    def postprocess(
        self,
        raw: np.ndarray,
        image_height: int,
        image_width: int,
        score_threshold: Optional[float] = None,
        frame_id: int = -1,
        timestamp: float = 0.0,
    ) -> Detections:
        threshold = self.manifest.postprocess.score_threshold if score_threshold is None else float(score_threshold)
        return boxes_to_detections(
            raw, image_height, image_width, threshold, len(self.classes), self.class_ids, frame_id, timestamp
        )

    def detect(
        self, image_bgr: np.ndarray, score_threshold: Optional[float] = None, frame_id: int = -1, timestamp: float = 0.0
    ) -> Detections:
        """Detections in `image_bgr` (H, W, 3 uint8) pixels. score_threshold None: the manifest's; 0.0 keeps all."""
        raw = self.infer(self.preprocess(image_bgr))
        height, width = image_bgr.shape[:2]
        return self.postprocess(raw, height, width, score_threshold, frame_id, timestamp)

    def close(self) -> None:
        """Release the predictor and the bundle's staging folder if this Detector opened it."""
        self.predictor = None
        if self._owned_bundle is not None:
            self._owned_bundle.close()
            self._owned_bundle = None

    def __enter__(self) -> Detector:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def predictor_fps(detector: Detector, images_bgr: Any, frames: int = 50, warmup: int = 5) -> Tuple[float, float]:
    """Predictor-only speed: (frames per second, median ms per frame) of `frames` runs of
    `Detector.infer`, cycling over `images_bgr` (one (H, W, 3) uint8 image or a list of them),
    all preprocessed before the clock starts."""
    images = [images_bgr] if isinstance(images_bgr, np.ndarray) else list(images_bgr)
    prepared = [detector.preprocess(image) for image in images]
    for index in range(warmup):
        detector.infer(prepared[index % len(prepared)])
    durations: List[float] = []
    started = time.perf_counter()
    for index in range(frames):
        t0 = time.perf_counter()
        detector.infer(prepared[index % len(prepared)])
        durations.append(time.perf_counter() - t0)
    total = time.perf_counter() - started
    return frames / total, float(np.median(durations) * 1000.0)
