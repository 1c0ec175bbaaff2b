"""The runtime's outputs: serial (to the robot controller), JSON lines, annotated recording, live
preview, COCO results, MQTT.

Every sink has `write(frame, detections, stats)` (returns at once: I/O happens on the sink's own
thread behind a bounded, latest-only or drop-counting queue, or is kept for `close()`), `close()`
(idempotent) and `status(state, message)` (vision degraded or recovered: "ok", "reconnecting",
"stale", "ended"). A sink may have `report()`: one line the run prints when it ends.

`stats` keys (any may be missing): fps, latency_ms_p50, latency_ms_p99, dropped_frames, frames,
source_state ("ok" | "reconnecting" | "stale" | "ended"), temperatures ({name: deg C}), gpu_load
(0-100 or None), links ({"serial" | "mqtt": {"connected", counts...}}, see device/status.py).

cv2, pyserial and paho-mqtt are imported inside the sinks that use them, not when this package is imported.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, List, Optional, Protocol, Sequence, Tuple

log = logging.getLogger(__name__)


class Sink(Protocol):
    def write(self, frame, detections, stats: dict) -> None: ...

    def status(self, state: str, message: str) -> None: ...

    def close(self) -> None: ...


def open_sinks(
    serial: Optional[str] = None,
    baud: int = 115200,
    serial_mode: str = "binary",
    jsonl: Optional[str] = None,
    record: Optional[str] = None,
    preview: Optional[str] = None,
    coco_results: Optional[str] = None,
    coco_gt: Optional[str] = None,
    classes: Sequence[str] = (),
    lossless: bool = False,
    run_status: Optional[Any] = None,
    metrics: Optional[Callable[[], Tuple[bytes, str]]] = None,
    mqtt: Optional[str] = None,
) -> List[Sink]:
    """Open the sinks asked for; on any failure close those already open and raise SinkError.

    serial: device path or pyserial URL. jsonl: file path or "-" (stdout). record: video path
    (.avi or .mp4, rotated by size). preview: "HOST:PORT" of the HTTP preview, which shows
    `run_status` (device.status.RunStatus) and serves `metrics` at /metrics (see PreviewSink).
    coco_results: COCO results JSON written at the end, ids from the COCO ground truth `coco_gt` when given.
    lossless: the JSON lines and recording sinks wait for room instead of dropping (files and
    folders, where every frame is kept).
    mqtt: "mqtt://HOST[:PORT]/TOPIC" of a broker (device/sinks/mqtt.py); it reports the other sinks' links.
    """
    sinks: List[Sink] = []
    try:
        if serial:
            from .serial_sink import SerialSink

            sinks.append(SerialSink(serial, baud=baud, mode=serial_mode, classes=classes))
        if jsonl:
            from .jsonl import JsonlSink

            sinks.append(JsonlSink(jsonl, classes=classes, lossless=lossless))
        if record:
            from .recorder import RecorderSink

            sinks.append(RecorderSink(record, classes=classes, lossless=lossless))
        if preview:
            from .preview import PreviewSink

            sinks.append(PreviewSink(preview, classes=classes, run_status=run_status, metrics=metrics))
        if coco_results:
            from .coco_results import CocoResultsSink

            sinks.append(CocoResultsSink(coco_results, classes=classes, gt=coco_gt))
        if mqtt:
            from .mqtt import MqttSink

            bundle = run_status.info() if run_status is not None else None
            publisher = MqttSink(mqtt, classes=classes, bundle=bundle)
            sinks.append(publisher)
            publisher.watch(sinks)
    except BaseException:
        close_all(sinks)
        raise
    return sinks


def close_all(sinks: Sequence[Sink]) -> None:
    """Close every sink, even if one of them fails to close (the failure is logged)."""
    for sink in sinks:
        try:
            sink.close()
        except Exception as error:  # one broken sink must not keep the others open
            log.warning("closing %s failed: %s", type(sink).__name__, error)
