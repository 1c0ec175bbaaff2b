"""One JSON object per line: every frame's detections and the pipeline's statistics.

Frame lines:  {"event": "frame", "frame_id", "timestamp", "source_id", "source_name", "width", "height",
               "detections": [{"class_id", "class", "score", "box": [x1, y1, x2, y2]}], "stats": {...}}
              source_name: the image's file name when the source is a folder, else null.
Status lines: {"event": "status", "timestamp", "state", "message"}

Lines are written by a background thread through a bounded queue, flushed one by one. In a live
run a stalled reader of stdout or a slow disk never blocks the pipeline: lines that do not fit
are dropped, counted and reported at the end. With `lossless` (files and folders) every line waits
for room instead.
A file is opened in append mode, so a restarted runtime keeps the earlier lines.
"""

from __future__ import annotations

import json
import math
import queue
import sys
import threading
import time
from typing import Sequence

from device.sinks.handover import hand_over
from edge_sdk.errors import SinkError

_STOP = object()


def detections_to_json(detections, classes: Sequence[str] = ()) -> list:
    """[{class_id, class, score, box: [x1, y1, x2, y2]}] for a `Detections` (pixels, scores 0..1)."""
    rows = []
    for box, score, class_id in zip(
        detections.boxes.tolist(), detections.scores.tolist(), detections.class_ids.tolist()
    ):
        rows.append(
            {
                "class_id": int(class_id),
                "class": classes[class_id] if 0 <= class_id < len(classes) else str(class_id),
                "score": round(float(score), 4),
                "box": [round(float(v), 1) for v in box],
            }
        )
    return rows


def jsonable(value):
    """`value` with numpy scalars/arrays turned into Python numbers and NaN/inf into None."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if hasattr(value, "tolist"):
        return jsonable(value.tolist())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (str, int, bool)):
        return value
    return str(value)


def frame_record(frame, detections, stats: dict, classes: Sequence[str] = ()) -> dict:
    """A frame line of the schema above (a dict ready for json.dumps, no NaN)."""
    return {
        "event": "frame",
        "frame_id": int(detections.frame_id),
        "timestamp": float(detections.timestamp),
        "source_id": frame.source_id,
        "source_name": frame.source_name or None,
        "width": frame.width,
        "height": frame.height,
        "detections": detections_to_json(detections, classes),
        "stats": jsonable(stats or {}),
    }


def status_record(state: str, message: str, **extra) -> dict:
    """A status line of the schema above; `extra` adds fields (JSON-able values)."""
    record = {"event": "status", "timestamp": time.monotonic(), "state": str(state), "message": str(message)}
    record.update(jsonable(extra))
    return record


class JsonlSink:
    """Writes JSON lines to `path` (a file, appended) or "-" (stdout)."""

    def __init__(
        self, path: str, classes: Sequence[str] = (), max_queued_lines: int = 1024, lossless: bool = False
    ) -> None:
        self.path = path
        self.lossless = lossless
        self.classes = tuple(classes)
        self.dropped_lines = 0
        self.written_lines = 0
        if path == "-":
            self._stream = sys.stdout
            self._owns_stream = False
        else:
            try:
                self._stream = open(path, "a", buffering=1, encoding="utf-8")
            except OSError as error:
                raise SinkError("cannot open JSON lines file {}: {}".format(path, error.strerror or error)) from None
            self._owns_stream = True
        self._queue: queue.Queue = queue.Queue(maxsize=max_queued_lines)
        self._closed = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="jsonl-sink", daemon=True)
        self._thread.start()

    def write(self, frame, detections, stats: dict) -> None:
        self._put(frame_record(frame, detections, stats, self.classes))

    def status(self, state: str, message: str) -> None:
        self._put(status_record(state, message))

    def _put(self, record: dict) -> None:
        if self._closed:
            return
        line = json.dumps(record, allow_nan=False, separators=(",", ":")) + "\n"
        if not hand_over(self._queue, line, self._thread, wait=self.lossless):
            with self._lock:
                self.dropped_lines += 1

    def report(self) -> str:
        """One line for the end of the run when lines were lost, else ""."""
        if not self.dropped_lines:
            return ""
        return "{}: {} JSON lines dropped (the writer fell behind or failed)".format(self.path, self.dropped_lines)

    def _run(self) -> None:
        while True:
            line = self._queue.get()
            if line is _STOP:
                return
            try:
                self._stream.write(line)
                self._stream.flush()
            except (OSError, ValueError):
                with self._lock:
                    self.dropped_lines += 1
                continue
            with self._lock:
                self.written_lines += 1

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued (up to `timeout` seconds), then close the file (stdout stays open)."""
        if self._closed:
            return
        self._closed = True
        deadline = time.monotonic() + timeout
        try:
            self._queue.put(_STOP, timeout=timeout)
        except queue.Full:
            pass
        self._thread.join(timeout=max(deadline - time.monotonic(), 0.0))
        if self._owns_stream:
            try:
                self._stream.close()
            except OSError:
                pass
