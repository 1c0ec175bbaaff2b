"""The pipeline: source -> detector -> sinks.

`Pipeline` drives a source, a `device.detector.Detector` and sinks, and keeps per-stage latency
statistics (`device.latency.LatencyRing`). `overlap_for` decides from the predictor's plan how:
overlapped (capture and preprocessing of frame n+1 in their own thread while frame n is inferred;
Paddle releases the GIL while it runs) on the GPU, for live sources and when the predictor leaves a
core free, else in turn in one thread (a CPU predictor on every core). Sinks that encode or send
(recording, MQTT, serial) do so on their own writer threads either way.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import numpy as np

from device.detector import Detector
from device.latency import LatencyRing
from device.status import link_counters
from edge_sdk.detections import Frame

STAGES = ("preprocess", "inference", "postprocess", "sinks", "end_to_end")


_END = object()


def overlap_for(plan: Any, live: bool, cpu_count: int) -> bool:
    """Whether reading and preprocessing frame n+1 should run in a thread beside the inference of frame n.

    plan: the detector's `device.predictor.PredictorPlan`. live: the source sets the pace (a camera,
    or a file played in real time). Overlap pays when a core is free while the predictor runs: on
    the GPU (the CPU cores decode and resize meanwhile), or when the predictor's CPU threads leave a
    core idle; and for a live source, whose newest frame is taken as soon as inference is free.
    When the predictor's oneDNN threads take every core, a thread beside them only makes them wait
    (on 2 cores it cost 30% of a YOLOv3's speed): every step then runs in turn in one thread.
    """
    if plan.device != "cpu" or live:
        return True
    return plan.cpu_threads < cpu_count


class Pipeline:
    """source -> preprocess -> detector -> sinks, overlapped or in turn (see `overlap_for`).

    sinks: objects with write(frame, detections, stats) and close(); the Pipeline does not close them.
    score_threshold: None for the manifest's. read_timeout: seconds one wait for a frame may last
    (the loop re-checks for stop in between, so a frozen camera never hangs the process).
    opencv_threads: set OpenCV's (process-wide) thread count; None leaves it alone.
    overlap: read and preprocess in a thread beside inference (True) or all in turn in the caller's
    thread (False); None: `overlap_for(detector.plan, not source.pulled, os.cpu_count())`.
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
        overlap: Optional[bool] = None,
    ) -> None:
        if opencv_threads is not None:
            import cv2

            # Preprocessing is small; OpenCV's own thread pool would only fight the predictor's threads.
            cv2.setNumThreads(opencv_threads)
        self.source = source
        self.detector = detector
        if overlap is None:
            live = not getattr(source, "pulled", False)
            overlap = overlap_for(detector.plan, live, os.cpu_count() or 1)
        self.overlap = overlap
        self.sinks = list(sinks)
        self.telemetry = telemetry
        self.score_threshold = score_threshold
        self.read_timeout = read_timeout
        self.latency = {stage: LatencyRing(ring_size) for stage in STAGES}
        self.frames = 0
        self.last_detections = 0
        self.detections_by_class: Dict[int, int] = {}
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
        """Worker: once the hand-off slot is free, read the source and preprocess the frame. The
        pipeline pulls: a live source hands over its newest frame (never older than one inference),
        a file or folder its next one (every frame, none dropped)."""
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
        if not self.overlap:
            return self._run_in_turn(max_frames, on_frame)
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

    def _run_in_turn(self, max_frames: Optional[int], on_frame: Optional[Callable[[Pipeline], None]]) -> Dict[str, Any]:
        """`run` without overlap: read, preprocess, infer, postprocess and sinks in turn in this thread."""
        try:
            while not self._stop.is_set():
                frame = self.source.read(self.read_timeout)
                if frame is not None:
                    started = time.perf_counter()
                    inputs = self.detector.preprocess(frame.image)
                    self._process(frame, inputs, (time.perf_counter() - started) * 1000.0)
                elif getattr(self.source, "ended", False):
                    break
                self._watch_source()
                if on_frame is not None:
                    on_frame(self)
                if max_frames is not None and self.frames >= max_frames:
                    break
        finally:
            self._stop.set()
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
            for class_id in detections.class_ids.tolist():
                self.detections_by_class[class_id] = self.detections_by_class.get(class_id, 0) + 1
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
        (end to end), detections, reconnects, source_state, temperatures (name -> Celsius), gpu_load (%),
        and links ({"serial" | "mqtt": counters}, see device/status.py) when a sink keeps a link."""
        stats = self.stats(max_age=0.5)
        e2e = stats["latency_ms"]["end_to_end"]
        flat = {
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
        if "links" in stats:
            flat["links"] = stats["links"]
        return flat

    def totals(self) -> Dict[str, Any]:
        """Counts since the start: frames, detections_by_class {class id: boxes}, latency_histograms
        {stage: LatencyRing.histogram()} (ms)."""
        with self._lock:
            return {
                "frames": self.frames,
                "detections_by_class": dict(self.detections_by_class),
                "latency_histograms": {stage: ring.histogram() for stage, ring in self.latency.items()},
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
        source {...} (Source.stats), links {name: counters} when a sink keeps a link. max_age: reuse
        latency percentiles computed less than this many seconds ago (they cost ~0.5 ms to compute)."""
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
        links = link_counters(self.sinks)
        if links:
            stats["links"] = links
        if self.telemetry is not None:
            stats.update(self.telemetry.latest().to_stats())
        return stats
