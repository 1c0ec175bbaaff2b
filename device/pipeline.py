"""From frames to detections: manifest preprocessing, the detector, and the overlapped pipeline.

`Preprocessor` turns a BGR image into the three inputs of a PaddleDetection-style YOLOv3 export,
exactly as the bundle's manifest says. `Detector` wraps the predictor built by `device.predictor`
and returns `Detections` in source-image pixels. `Pipeline` drives source -> detector -> sinks with
capture and preprocessing of frame n+1 running in their own thread while frame n is inferred
(Paddle releases the GIL while it runs), and keeps per-stage latency statistics.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from edge_sdk.detections import Detections, Frame
from edge_sdk.errors import PredictorError
from edge_sdk.manifest import InputSpec

MODEL_PROGRAM = "model/model.pdmodel"
MODEL_PARAMS = "model/model.pdiparams"
STAGES = ("preprocess", "inference", "postprocess", "sinks", "end_to_end")


def _cv2_interpolation(name: str) -> int:
    import cv2

    return {"nearest": cv2.INTER_NEAREST, "linear": cv2.INTER_LINEAR, "cubic": cv2.INTER_CUBIC, "area": cv2.INTER_AREA}[
        name
    ]


class Preprocessor:
    """BGR uint8 image (H, W, 3) -> {"image": [1,3,h,w] float32, "im_shape": [1,2], "scale_factor": [1,2]}.

    (h, w) is the manifest's input size. stretch (PaddleDetection's Resize with keep_ratio false):
    im_shape = (h, w), scale_factor = (h / H, w / W). keep_ratio: one scale s = min(h/H, w/W), the
    resized image padded with zeros at the bottom/right after normalisation, im_shape = (h, w) and
    scale_factor = (s, s), so the exported decoder still maps network pixels to source pixels.
    Normalisation: channel order as the manifest says, x/255 when `scale`, then (x - mean) / std.
    """

    def __init__(self, spec: InputSpec) -> None:
        self.spec = spec
        self.height, self.width = (int(v) for v in spec.size)
        mean = np.asarray(spec.mean, np.float32).reshape(1, 1, 3)
        std = np.asarray(spec.std, np.float32).reshape(1, 1, 3)
        # ((x / 255) - mean) / std folded into one multiply-add: x * gain + offset.
        self.gain = (np.float32(1.0 / 255.0) if spec.scale else np.float32(1.0)) / std
        self.offset = -mean / std
        self.interpolation = _cv2_interpolation(spec.interpolation)

    def __call__(self, image_bgr: np.ndarray) -> Dict[str, np.ndarray]:
        import cv2

        src_h, src_w = image_bgr.shape[:2]
        if self.spec.resize_mode == "keep_ratio":
            scale = min(self.height / src_h, self.width / src_w)
            new_h = max(1, min(self.height, int(round(src_h * scale))))
            new_w = max(1, min(self.width, int(round(src_w * scale))))
            scale_factor = (scale, scale)
        else:
            new_h, new_w = self.height, self.width
            scale_factor = (self.height / src_h, self.width / src_w)
        resized = cv2.resize(image_bgr, (new_w, new_h), interpolation=self.interpolation)
        if self.spec.channel_order == "RGB":
            resized = cv2.cvtColor(resized, cv2.COLOR_BGR2RGB)
        pixels = np.multiply(resized, self.gain, dtype=np.float32)
        pixels += self.offset
        if (new_h, new_w) != (self.height, self.width):
            padded = np.zeros((self.height, self.width, 3), np.float32)
            padded[:new_h, :new_w] = pixels
            pixels = padded
        return {
            "image": np.ascontiguousarray(pixels.transpose(2, 0, 1)[np.newaxis]),
            "im_shape": np.array([[self.height, self.width]], np.float32),
            "scale_factor": np.array([scale_factor], np.float32),
        }


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


class Detector:
    """A bundle's model behind Paddle Inference: BGR image in, Detections in source pixels out.

    bundle: an opened `edge_sdk.bundle.Bundle`, or a path (opened, and closed by `close()`).
    precision / device / dla_core / threads / cache_root: see `device.predictor.plan`.
    class_ids: keep only these classes (None: all).
    log: receives the plan's notes and the engine-build notice (None: silent).
    """

    def __init__(
        self,
        bundle: Any,
        precision: Optional[str] = None,
        device: str = "auto",
        threads: Optional[int] = None,
        dla_core: Optional[int] = None,
        cache_root: Optional[Path] = None,
        class_ids: Optional[Sequence[int]] = None,
        environment: Any = None,
        log: Optional[Callable[[str], None]] = None,
        trusted_keys: Any = None,
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
            self.plan = predictor_module.plan(
                self.manifest,
                env,
                precision=precision,
                device=device,
                dla_core=dla_core,
                threads=threads,
                cache_root=cache_root,
                bundle_sha256=getattr(bundle, "sha256", None),
            )
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


class LatencyRing:
    """The last `size` samples of one stage's latency in milliseconds; p50/p99 over them."""

    def __init__(self, size: int = 256) -> None:
        self.samples: deque = deque(maxlen=size)

    def add(self, milliseconds: float) -> None:
        self.samples.append(float(milliseconds))

    def percentile(self, q: float) -> Optional[float]:
        if not self.samples:
            return None
        return float(np.percentile(np.fromiter(self.samples, np.float64), q))

    def summary(self) -> Dict[str, Optional[float]]:
        return {"p50": self.percentile(50), "p99": self.percentile(99)}


_END = object()


class Pipeline:
    """source -> preprocess (own thread, overlapped with inference) -> detector -> sinks.

    sinks: objects with write(frame, detections, stats) and close(); the Pipeline does not close them.
    score_threshold: None for the manifest's. read_timeout: seconds one wait for a frame may last
    (the loop re-checks for stop in between, so a frozen camera never hangs the process).
    opencv_threads: set OpenCV's (process-wide) thread count; None leaves it alone.
    """

    def __init__(
        self,
        source: Any,
        detector: Detector,
        sinks: Sequence[Any] = (),
        score_threshold: Optional[float] = None,
        read_timeout: float = 0.5,
        ring_size: int = 256,
        opencv_threads: Optional[int] = 1,
        telemetry: Optional[Any] = None,
    ) -> None:
        if opencv_threads is not None:
            import cv2

            # Preprocessing is small; OpenCV's own thread pool would only fight the predictor's threads.
            cv2.setNumThreads(opencv_threads)
        self.source = source
        self.detector = detector
        self.sinks = list(sinks)
        self.telemetry = telemetry
        self.score_threshold = score_threshold
        self.read_timeout = read_timeout
        self.latency = {stage: LatencyRing(ring_size) for stage in STAGES}
        self.frames = 0
        self.last_detections = 0
        self.last_frame_time: Optional[float] = None
        self._done_times: deque = deque(maxlen=64)
        self._stop = threading.Event()
        self._handoff = threading.Condition()
        self._ready: Optional[Tuple[Frame, Dict[str, np.ndarray], float]] = None
        self._worker_done = False
        self._error: Optional[BaseException] = None
        self._source_state = "ok"
        self._lock = threading.Lock()
        self._latency_cache: Optional[Tuple[float, Dict[str, Any], int]] = None
        self.started_at = time.monotonic()

    def stop(self) -> None:
        """Ask `run` to return after the frame in flight (safe from a signal handler or another thread)."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def _prepare(self) -> None:
        """Worker: once the hand-off slot is free, take the newest frame and preprocess it, so the
        frame inferred next is never older than one inference."""
        try:
            while not self._stop.is_set():
                with self._handoff:
                    while self._ready is not None and not self._stop.is_set():
                        self._handoff.wait(self.read_timeout)
                if self._stop.is_set():
                    break
                frame = self.source.read(self.read_timeout)
                if frame is None:
                    if getattr(self.source, "ended", False):
                        break
                    continue
                started = time.perf_counter()
                inputs = self.detector.preprocess(frame.image)
                with self._handoff:
                    self._ready = (frame, inputs, (time.perf_counter() - started) * 1000.0)
                    self._handoff.notify_all()
        except BaseException as exc:  # handed to the main thread, which raises it
            self._error = exc
        finally:
            with self._handoff:
                self._worker_done = True
                self._handoff.notify_all()

    def _take(self) -> Any:
        """The next prepared (frame, inputs, preprocess_ms), None after a wait of read_timeout, or _END."""
        with self._handoff:
            if self._ready is None and not self._worker_done:
                self._handoff.wait(self.read_timeout)
            item = self._ready
            if item is None:
                return _END if self._worker_done else None
            self._ready = None
            self._handoff.notify_all()
            return item

    def run(
        self, max_frames: Optional[int] = None, on_frame: Optional[Callable[[Pipeline], None]] = None
    ) -> Dict[str, Any]:
        """Process frames until the source ends, `max_frames` were processed, or `stop()`; returns `stats()`.

        on_frame: called after each frame and at least every read_timeout s (for a status line or a
        watchdog), in this thread.
        """
        self.started_at = time.monotonic()
        self._worker_done = False
        worker = threading.Thread(target=self._prepare, name="pipeline-prepare", daemon=True)
        worker.start()
        try:
            while not self._stop.is_set():
                item = self._take()
                if item is _END:
                    break
                if item is not None:
                    self._process(*item)
                self._watch_source()
                if on_frame is not None:
                    on_frame(self)
                if max_frames is not None and self.frames >= max_frames:
                    break
        finally:
            self._stop.set()
            with self._handoff:
                self._handoff.notify_all()
            worker.join(timeout=5.0)
        if self._error is not None:
            raise self._error
        return self.stats()

    def _process(self, frame: Frame, inputs: Dict[str, np.ndarray], preprocess_ms: float) -> None:
        t0 = time.perf_counter()
        raw = self.detector.infer(inputs)
        t1 = time.perf_counter()
        detections = self.detector.postprocess(
            raw, frame.height, frame.width, self.score_threshold, frame.frame_id, frame.timestamp
        )
        t2 = time.perf_counter()
        with self._lock:
            self.latency["preprocess"].add(preprocess_ms)
            self.latency["inference"].add((t1 - t0) * 1000.0)
            self.latency["postprocess"].add((t2 - t1) * 1000.0)
        if self.sinks:
            stats = self.sink_stats()
            for sink in self.sinks:
                sink.write(frame, detections, stats)
        t3 = time.perf_counter()
        done = time.monotonic()
        with self._lock:
            self.latency["sinks"].add((t3 - t2) * 1000.0)
            self.latency["end_to_end"].add((done - frame.timestamp) * 1000.0)
            self.frames += 1
            self.last_detections = len(detections)
            self.last_frame_time = done
            self._done_times.append(done)

    def _watch_source(self) -> None:
        """Tell the sinks when the source's state changes (ok, stale, reconnecting, ended)."""
        if not hasattr(self.source, "stats"):
            return
        source_stats = self.source.stats()
        state = source_stats.get("state", "ok")
        if state == "closed" or state == self._source_state:
            return
        self._source_state = state
        reason = source_stats.get("last_error", "") if state in ("reconnecting", "stale") else ""
        if state == "stale":
            reason = "no new frame for {:.1f} s".format(source_stats.get("last_frame_age_s", 0.0))
        for sink in self.sinks:
            status = getattr(sink, "status", None)
            if status is not None:
                status(state, reason)

    def sink_stats(self) -> Dict[str, Any]:
        """The flat dict handed to every sink: frames, fps, dropped_frames, latency_ms_p50/p99
        (end to end), detections, reconnects, source_state, temperatures (name -> Celsius), gpu_load (%)."""
        stats = self.stats(max_age=0.5)
        e2e = stats["latency_ms"]["end_to_end"]
        return {
            "frames": stats["frames"],
            "fps": stats["fps"],
            "dropped_frames": stats["dropped"],
            "latency_ms_p50": e2e["p50"],
            "latency_ms_p99": e2e["p99"],
            "detections": stats["detections"],
            "reconnects": stats["source"].get("reconnects", 0),
            "source_state": stats["source_state"],
            "temperatures": stats.get("temperatures", {}),
            "gpu_load": stats.get("gpu_load"),
        }

    def fps(self) -> float:
        """Processed frames per second over the last 64 frames."""
        with self._lock:
            times = list(self._done_times)
        if len(times) < 2 or times[-1] <= times[0]:
            return 0.0
        return (len(times) - 1) / (times[-1] - times[0])

    def stats(self, max_age: float = 0.0) -> Dict[str, Any]:
        """frames, fps, detections (last frame), dropped, last_frame_age_s, latency_ms {stage: {p50, p99}},
        source {...} (Source.stats). max_age: reuse latency percentiles computed less than this many
        seconds ago (they cost ~0.5 ms to compute)."""
        source_stats = self.source.stats() if hasattr(self.source, "stats") else {}
        now = time.monotonic()
        with self._lock:
            cache = self._latency_cache
            if cache is None or now - cache[0] > max_age or cache[2] < min(self.frames, 32):
                cache = (now, {stage: ring.summary() for stage, ring in self.latency.items()}, self.frames)
                self._latency_cache = cache
            latency = cache[1]
            frames = self.frames
            last = self.last_detections
            last_time = self.last_frame_time
        stats = {
            "frames": frames,
            "fps": self.fps(),
            "detections": last,
            "dropped": source_stats.get("dropped", 0),
            "source_state": source_stats.get("state", ""),
            "last_frame_age_s": None if last_time is None else now - last_time,
            "latency_ms": latency,
            "source": source_stats,
        }
        if self.telemetry is not None:
            stats.update(self.telemetry.latest().to_stats())
        return stats


def predictor_fps(detector: Detector, image_bgr: np.ndarray, frames: int = 50, warmup: int = 5) -> Tuple[float, float]:
    """Predictor-only speed on one preprocessed image: (frames per second, median ms per frame)."""
    inputs = detector.preprocess(image_bgr)
    for _ in range(warmup):
        detector.infer(inputs)
    durations: List[float] = []
    started = time.perf_counter()
    for _ in range(frames):
        t0 = time.perf_counter()
        detector.infer(inputs)
        durations.append(time.perf_counter() - t0)
    total = time.perf_counter() - started
    return frames / total, float(np.median(durations) * 1000.0)


def source_image(path: Union[str, Path]) -> np.ndarray:
    """Read an image file as BGR uint8 or raise SourceError."""
    import cv2

    from edge_sdk.errors import SourceError

    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise SourceError("cannot read image {}".format(path))
    return image
