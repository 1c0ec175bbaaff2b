"""Detections to the robot controller over a serial port (protocol: device/sinks/protocol.py).

`SerialSink.write` only stores a reference and returns: a writer thread encodes and sends. The newest
DETECTIONS message replaces an unsent older one (latest-only); STATUS messages queue (bounded) and go
first; a HEARTBEAT goes every `heartbeat_period` seconds, frames or not. When a write fails (cable
pulled, USB adapter gone) the port is closed and reopened with back-off (0.5 s doubling to 5 s);
messages produced meanwhile are dropped and counted.
"""

from __future__ import annotations

import collections
import errno
import logging
import queue
import threading
import time
from typing import Dict, Sequence

from edge_sdk.errors import SinkError

from .protocol import (
    MAX_DETECTIONS,
    Message,
    detections_message,
    encode_message,
    format_text,
    heartbeat_message,
    status_message,
)

log = logging.getLogger(__name__)

SERIAL_MODES = ("binary", "text")
_ABSENT = (errno.ENOENT, errno.ENODEV, errno.ENXIO)
_BUSY = (errno.EBUSY, errno.EAGAIN, errno.EWOULDBLOCK)


def open_port(port: str, baud: int = 115200, write_timeout: float = 0.5):
    """Open `port` (a device path or any pyserial URL, e.g. loop://) exclusively; SinkError on failure."""
    import serial

    try:
        return serial.serial_for_url(port, baudrate=baud, timeout=0, write_timeout=write_timeout, exclusive=True)
    except (serial.SerialException, OSError, ValueError) as error:
        code = getattr(error, "errno", None)
        text = str(error)
        if code in _ABSENT or "No such file" in text:
            raise SinkError("serial port {} not found".format(port)) from None
        if code in _BUSY or "lock" in text.lower():
            raise SinkError("serial port {} is busy (another program has it open)".format(port)) from None
        if code == errno.EACCES:
            raise SinkError(
                "serial port {}: permission denied (add the user to the 'dialout' group)".format(port)
            ) from None
        raise SinkError("serial port {} cannot be opened: {}".format(port, text)) from None


class SerialSink:
    """Sends DETECTIONS, HEARTBEAT and STATUS messages to `port` (binary COBS frames or text lines).

    port: a device path ("/dev/ttyTHS0") or pyserial URL ("loop://"). baud: line speed.
    mode: "binary" (the protocol) or "text" (one human-readable line per message, for debugging).
    heartbeat_period, write_timeout, reconnect_min, reconnect_max: seconds.
    """

    link_name = "serial"  # its counters() show on the preview page and in /metrics (device/status.py)

    def __init__(
        self,
        port: str,
        baud: int = 115200,
        mode: str = "binary",
        classes: Sequence[str] = (),
        heartbeat_period: float = 1.0,
        write_timeout: float = 0.5,
        reconnect_min: float = 0.5,
        reconnect_max: float = 5.0,
        max_detections: int = MAX_DETECTIONS,
        max_queued_status: int = 32,
    ) -> None:
        if mode not in SERIAL_MODES:
            raise SinkError("serial mode must be one of {}, got {!r}".format(", ".join(SERIAL_MODES), mode))
        self.port_name = port
        self.baud = baud
        self.mode = mode
        self.classes = tuple(classes)
        self.heartbeat_period = heartbeat_period
        self.write_timeout = write_timeout
        self.reconnect_min = reconnect_min
        self.reconnect_max = reconnect_max
        self.max_detections = max_detections
        self._port = open_port(port, baud, write_timeout)
        self._started = time.monotonic()
        self._condition = threading.Condition()
        self._pending_detections = None  # (Detections, width, height), latest only
        self._pending_status: collections.deque = collections.deque(maxlen=max_queued_status)
        self._stats: dict = {}
        self._state = "starting"
        self._last_frame_id = -1
        self._stopping = False
        self._closed = False
        self._seq = 0
        self._need_delimiter = True  # a leading 0x00 lets the receiver drop any partial frame
        self._backoff = reconnect_min
        self._next_retry = 0.0
        self._next_heartbeat = time.monotonic()
        self._counters: Dict[str, int] = {
            "sent_messages": 0,
            "sent_bytes": 0,
            "dropped_messages": 0,
            "replaced_detections": 0,
            "dropped_status": 0,
            "write_timeouts": 0,
            "write_errors": 0,
            "reconnects": 0,
        }
        self._thread = threading.Thread(target=self._run, name="serial-sink", daemon=True)
        self._thread.start()

    # The pipeline's side: O(1), never touches the port.

    def write(self, frame, detections, stats: dict) -> None:
        with self._condition:
            if self._pending_detections is not None:
                self._counters["replaced_detections"] += 1
            self._pending_detections = (detections, frame.width, frame.height)
            self._last_frame_id = detections.frame_id
            if stats:
                self._stats = dict(stats)
                if stats.get("source_state"):
                    self._state = str(stats["source_state"])
            self._condition.notify()

    def status(self, state: str, message: str) -> None:
        with self._condition:
            if len(self._pending_status) == self._pending_status.maxlen:
                self._counters["dropped_status"] += 1
            self._state = str(state)
            self._pending_status.append((time.monotonic(), str(state), str(message), self._last_frame_id))
            self._condition.notify()

    def counters(self) -> Dict[str, object]:
        """Messages sent/dropped, write timeouts and errors, reconnects, and whether the port is open now."""
        with self._condition:
            result: Dict[str, object] = dict(self._counters)
        result["connected"] = self._port is not None
        return result

    def close(self) -> None:
        """Send queued STATUS messages (bounded by the write timeout), stop the writer, close the port."""
        with self._condition:
            if self._closed:
                return
            self._closed = True
            self._stopping = True
            self._condition.notify()
        self._thread.join(timeout=self.write_timeout * (len(self._pending_status) + 1) + 2.0)
        self._close_port()

    # The writer thread.

    def _run(self) -> None:
        while True:
            with self._condition:
                message = self._next_message()
                while message is None and not self._stopping:
                    now = time.monotonic()
                    wake = (
                        self._next_heartbeat if self._port is not None else min(self._next_heartbeat, self._next_retry)
                    )
                    self._condition.wait(timeout=max(wake - now, 0.0))
                    message = self._next_message()
                if message is None and self._stopping:
                    return
            self._send(message)

    def _next_message(self):
        """The next message to send, by priority: status, due heartbeat, latest detections (caller holds lock)."""
        now = time.monotonic()
        if self._port is None and now >= self._next_retry and not self._stopping:
            self._condition.release()
            try:
                self._reconnect()
            finally:
                self._condition.acquire()
        if self._pending_status:
            stamp, state, reason, frame_id = self._pending_status.popleft()
            return ("status", stamp, state, reason, frame_id)
        if self._stopping:
            return None
        if now >= self._next_heartbeat:
            self._next_heartbeat = max(self._next_heartbeat + self.heartbeat_period, now)
            return ("heartbeat", now, dict(self._stats, source_state=self._state), self._last_frame_id)
        if self._pending_detections is not None:
            pending = self._pending_detections
            self._pending_detections = None
            return ("detections",) + pending
        return None

    def _build(self, item, seq: int) -> Message:
        kind = item[0]
        if kind == "detections":
            _, detections, width, height = item
            return detections_message(seq, detections, width, height, self.max_detections)
        if kind == "heartbeat":
            _, stamp, stats, frame_id = item
            return heartbeat_message(seq, stamp, stamp - self._started, stats, frame_id)
        _, stamp, state, reason, frame_id = item
        return status_message(seq, stamp, state, reason, frame_id)

    def _send(self, item) -> None:
        import serial

        if self._port is None:
            self._count("dropped_messages")
            return
        message = self._build(item, self._seq)
        if self.mode == "binary":
            data = encode_message(message)
            if self._need_delimiter:
                data = b"\x00" + data
        else:
            data = (format_text(message, self.classes) + "\n").encode("utf-8")
        self._seq = (self._seq + 1) & 0xFFFF
        try:
            self._port.write(data)
        except (serial.SerialTimeoutException, queue.Full):  # loop:// reports a full buffer as queue.Full
            self._count("write_timeouts")
            self._need_delimiter = True
            return
        except (serial.SerialException, OSError) as error:
            self._count("write_errors")
            self._count("dropped_messages")
            log.warning("serial port %s: %s; reopening", self.port_name, error)
            self._close_port()
            self._next_retry = time.monotonic() + self._backoff
            return
        self._need_delimiter = False
        with self._condition:
            self._counters["sent_messages"] += 1
            self._counters["sent_bytes"] += len(data)

    def _reconnect(self) -> None:
        try:
            port = open_port(self.port_name, self.baud, self.write_timeout)
        except SinkError as error:
            self._backoff = min(self._backoff * 2.0, self.reconnect_max)
            self._next_retry = time.monotonic() + self._backoff
            log.debug("%s; next try in %.1f s", error, self._backoff)
            return
        self._port = port
        self._backoff = self.reconnect_min
        self._need_delimiter = True
        self._count("reconnects")
        log.warning("serial port %s reopened", self.port_name)

    def _count(self, name: str) -> None:
        with self._condition:
            self._counters[name] += 1

    def _close_port(self) -> None:
        port, self._port = self._port, None
        if port is not None:
            try:
                port.close()
            except Exception:  # a port whose device is gone cannot always be closed cleanly
                pass
