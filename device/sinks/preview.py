"""Live preview over HTTP: `--preview 0.0.0.0:8080` serves the annotated stream and statistics.

    /             the page (device/sinks/preview_page.py: inline CSS/JS, works offline)
    /stream.mjpg  multipart/x-mixed-replace JPEG stream, latest frame only, at most `max_fps`
    /snapshot.jpg the latest annotated frame
    /stats.json   the pipeline's statistics plus the latest frame's detections and vision status, and
                  what is running (bundle, precision, device, links, uptime) when given a RunStatus
    /metrics      the Prometheus metrics, when given them (`edge-sdk run --metrics` with --preview)

`write` only stores the newest frame (O(1)). One encoder thread annotates and JPEG-encodes it, and
only while someone is watching; every client thread sends the newest JPEG when it is ready, so a slow
client skips frames and never holds up the pipeline or the other clients.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Optional, Sequence, Tuple

from edge_sdk.errors import SinkError

from .jsonl import jsonable
from .overlay import annotate, class_name
from .preview_page import PAGE

log = logging.getLogger(__name__)

BOUNDARY = "edgesdkframe"
STREAM_SEND_BUFFER = 256 * 1024  # bytes


def parse_address(address: str, what: str = "preview") -> Tuple[str, int]:
    """ "HOST:PORT" (or "[V6]:PORT", or ":PORT" for all interfaces) -> (host, port); SinkError if malformed."""
    host, sep, port_text = str(address).rpartition(":")
    if not sep or not port_text.isdigit() or int(port_text) > 65535:
        raise SinkError("{} address must be HOST:PORT (e.g. 0.0.0.0:8080), got {!r}".format(what, address))
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port_text)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    preview: PreviewSink


class _V6Server(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = 10.0  # a client that cannot take a JPEG for this long is disconnected
    server_version = "edge-sdk-preview"

    def log_message(self, format: str, *args) -> None:  # noqa: A002  (the base class's name)
        log.debug("preview %s: " + format, self.address_string(), *args)

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        preview = self.server.preview
        try:
            if path in ("/", "/index.html"):
                self._send(200, "text/html; charset=utf-8", PAGE.encode("utf-8"))
            elif path == "/stats.json":
                body = json.dumps(preview.stats_snapshot(), allow_nan=False).encode("utf-8")
                self._send(200, "application/json", body)
            elif path == "/snapshot.jpg":
                jpeg = preview.snapshot()
                if jpeg is None:
                    self._send(503, "text/plain; charset=utf-8", b"no frame yet\n")
                else:
                    self._send(200, "image/jpeg", jpeg)
            elif path == "/stream.mjpg":
                self._stream(preview)
            elif path == "/metrics" and preview.metrics is not None:
                body, content_type = preview.metrics()
                self._send(200, content_type, body)
            else:
                self._send(404, "text/plain; charset=utf-8", b"not found\n")
        except (BrokenPipeError, ConnectionResetError, socket.timeout):
            self.close_connection = True

    def _send(self, code: int, content_type: str, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def _stream(self, preview: PreviewSink) -> None:
        self.close_connection = True
        # A small send buffer keeps a slow client a frame or two behind, not seconds of queued JPEGs.
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, STREAM_SEND_BUFFER)
        self.send_response(200)
        self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=" + BOUNDARY)
        self.send_header("Cache-Control", "no-store")
        self.send_header("Connection", "close")
        self.end_headers()
        last = 0
        with preview.watching():
            while True:
                jpeg, last = preview.next_jpeg(after=last, timeout=0.5)
                if preview.stopping:
                    return
                if jpeg is None:
                    continue
                head = "--{}\r\nContent-Type: image/jpeg\r\nContent-Length: {}\r\n\r\n".format(BOUNDARY, len(jpeg))
                self.wfile.write(head.encode("ascii") + jpeg + b"\r\n")
                self.wfile.flush()


class PreviewSink:
    """HTTP preview on `address` ("HOST:PORT"; port 0 picks a free one, see `.port` and `.url`).

    run_status: a device.status.RunStatus (what is running; None: the page leaves it out).
    metrics: () -> (body, content type) served at /metrics (None: 404).
    """

    def __init__(
        self,
        address: str = "0.0.0.0:8080",
        classes: Sequence[str] = (),
        jpeg_quality: int = 80,
        max_fps: float = 15.0,
        run_status: Optional[Any] = None,
        metrics: Optional[Callable[[], Tuple[bytes, str]]] = None,
    ) -> None:
        host, port = parse_address(address)
        self.classes = tuple(classes)
        self.run_status = run_status
        self.metrics = metrics
        self.jpeg_quality = int(jpeg_quality)
        self.min_interval = 1.0 / max_fps if max_fps > 0 else 0.0
        self.stopping = False
        self._closed = False
        self._started = time.monotonic()
        self._condition = threading.Condition()
        self._raw = None  # (image, detections) of the newest frame
        self._raw_seq = 0
        self._encoded_raw_seq = 0
        self._jpeg: Optional[bytes] = None
        self._jpeg_seq = 0
        self._watchers = 0
        self._snapshot_wanted = False
        self._stats: dict = {}
        self._frame_info: dict = {}
        self._status = {"state": "starting", "message": "", "time": self._started}
        server_class = _V6Server if ":" in host else _Server
        try:
            self._server = server_class((host, port), _Handler)
        except OSError as error:
            if error.errno in (98, 48):  # EADDRINUSE on Linux, macOS
                raise SinkError("preview port {} on {} is busy".format(port, host)) from None
            raise SinkError("preview cannot listen on {}:{}: {}".format(host, port, error.strerror or error)) from None
        self._server.preview = self
        self.host = host
        self.port = int(self._server.server_address[1])
        self._server_thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.2}, name="preview-http", daemon=True
        )
        self._encoder_thread = threading.Thread(target=self._encode_loop, name="preview-encoder", daemon=True)
        self._server_thread.start()
        self._encoder_thread.start()

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return "http://{}:{}/".format("[{}]".format(host) if ":" in host else host, self.port)

    # The pipeline's side: O(1).

    def write(self, frame, detections, stats: dict) -> None:
        counts: dict = {}
        for class_id in detections.class_ids.tolist():
            name = class_name(class_id, self.classes)
            counts[name] = counts.get(name, 0) + 1
        with self._condition:
            self._raw = (frame.image, detections)
            self._raw_seq += 1
            self._stats = dict(stats or {})
            self._frame_info = {
                "frame_id": int(detections.frame_id),
                "source_id": frame.source_id,
                "frame_size": [frame.width, frame.height],
                "detections": len(detections),
                "detections_by_class": counts,
                "frame_time": time.monotonic(),
            }
            self._condition.notify_all()

    def status(self, state: str, message: str) -> None:
        with self._condition:
            self._status = {"state": str(state), "message": str(message), "time": time.monotonic()}

    def close(self) -> None:
        """Stop serving (open streams end within ~0.5 s) and release the port."""
        if self._closed:
            return
        self._closed = True
        with self._condition:
            self.stopping = True
            self._condition.notify_all()
        self._server.shutdown()
        self._server.server_close()
        self._encoder_thread.join(timeout=5.0)
        self._server_thread.join(timeout=5.0)

    # The HTTP side.

    def stats_snapshot(self) -> dict:
        """What /stats.json returns: the pipeline's stats dict plus frame, detections and status fields."""
        now = time.monotonic()
        with self._condition:
            stats = dict(self._stats)
            info = dict(self._frame_info)
            status = dict(self._status)
            watchers = self._watchers
        frame_time = info.pop("frame_time", None)
        result = {
            "fps": None,
            "latency_ms_p50": None,
            "latency_ms_p99": None,
            "dropped_frames": None,
            "frames": None,
            "source_state": status["state"] if status["state"] != "starting" else None,
            "temperatures": {},
            "gpu_load": None,
            "detections": None,
            "detections_by_class": {},
            "classes": list(self.classes),
        }
        result.update(stats)
        result.update(info)
        result["frame_age_s"] = None if frame_time is None else round(now - frame_time, 3)
        result["status"] = {
            "state": status["state"],
            "message": status["message"],
            "age_s": round(now - status["time"], 3),
        }
        result["uptime_s"] = round(now - self._started, 3)
        if self.run_status is not None:
            result["run"] = self.run_status.describe()
            result["uptime_s"] = result["run"]["uptime_s"]
        result["stream_clients"] = watchers
        return jsonable(result)

    def watching(self):
        """Context manager: while inside, the encoder produces JPEGs."""
        preview = self

        class _Watch:
            def __enter__(self):
                with preview._condition:
                    preview._watchers += 1
                    preview._condition.notify_all()

            def __exit__(self, *exc):
                with preview._condition:
                    preview._watchers -= 1

        return _Watch()

    def next_jpeg(self, after: int, timeout: float):
        """(jpeg, seq) of the first JPEG newer than `after`, or (None, after) after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        with self._condition:
            while self._jpeg_seq <= after and not self.stopping:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None, after
                self._condition.wait(left)
            if self._jpeg_seq <= after:
                return None, after
            return self._jpeg, self._jpeg_seq

    def snapshot(self, timeout: float = 2.0) -> Optional[bytes]:
        """The newest frame as JPEG (encoding it if no stream is open), None when there is no frame yet."""
        deadline = time.monotonic() + timeout
        with self._condition:
            if self._raw is None:
                return None
            target = self._raw_seq
            self._snapshot_wanted = True
            self._condition.notify_all()
            while self._encoded_raw_seq < target and not self.stopping:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._condition.wait(left)
            return self._jpeg

    def _encode_loop(self) -> None:
        import cv2

        params = [int(cv2.IMWRITE_JPEG_QUALITY), self.jpeg_quality]
        while True:
            with self._condition:
                while not self.stopping and not (
                    self._raw_seq > self._encoded_raw_seq and (self._watchers > 0 or self._snapshot_wanted)
                ):
                    self._condition.wait(1.0)
                if self.stopping:
                    return
                image, detections = self._raw
                raw_seq = self._raw_seq
                self._snapshot_wanted = False
            started = time.monotonic()
            ok, buffer = cv2.imencode(".jpg", annotate(image, detections, self.classes), params)
            with self._condition:
                self._encoded_raw_seq = raw_seq
                if ok:
                    self._jpeg = buffer.tobytes()
                    self._jpeg_seq += 1
                self._condition.notify_all()
            wait = self.min_interval - (time.monotonic() - started)
            if wait > 0:
                with self._condition:
                    if not self._snapshot_wanted:
                        self._condition.wait_for(lambda: self.stopping or self._snapshot_wanted, timeout=wait)
