"""SerialSink over real pseudo-terminals: frames decode, heartbeats flow, a pulled cable is survived."""

from __future__ import annotations

import os
import select
import threading
import time

import numpy as np
import pytest

from device.sinks.protocol import Decoder, DetectionsMessage, HeartbeatMessage, StatusMessage
from device.sinks.serial_sink import SerialSink
from edge_sdk.detections import Detections, Frame
from edge_sdk.errors import SinkError

IMAGE = np.zeros((48, 64, 3), np.uint8)


class PtyReader:
    """The robot controller's end: reads the master side of a pty on a thread, decodes as it goes."""

    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        self.name = os.ttyname(self.slave)
        self.raw = bytearray()
        self.decoder = Decoder()
        self.messages = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self.master], [], [], 0.05)
            if not ready:
                continue
            try:
                chunk = os.read(self.master, 65536)
            except OSError:
                return
            with self._lock:
                self.raw += chunk
                self.messages += self.decoder.feed(chunk)

    def of_type(self, kind):
        with self._lock:
            return [m for m in self.messages if isinstance(m, kind)]

    def wait_for(self, predicate, timeout=5.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if predicate(list(self.messages)):
                    return True
            time.sleep(0.02)
        return False

    def unplug(self) -> None:
        self._stop.set()
        self._thread.join()
        os.close(self.master)
        os.close(self.slave)


def _write(sink, frame_id, n=2, stats=None):
    timestamp = time.monotonic()
    boxes = np.array([[frame_id % 50, 2, 40, 30]] * n, np.float32)
    dets = Detections(boxes, np.full(n, 0.75), np.arange(n) % 6, frame_id=frame_id, timestamp=timestamp)
    sink.write(
        Frame(IMAGE, frame_id, timestamp), dets, stats or {"source_state": "ok", "fps": 20.0, "frames": frame_id}
    )


@pytest.fixture
def reader():
    pty = PtyReader()
    yield pty
    if not pty._stop.is_set():
        pty.unplug()


def test_every_frame_sent_decodes_with_increasing_sequence_numbers(reader):
    sink = SerialSink(reader.name, heartbeat_period=0.2)
    try:
        for frame_id in range(40):
            _write(sink, frame_id)
            time.sleep(0.01)
        sink.status("stale", "no frame for 2.0 s")
        assert reader.wait_for(lambda ms: any(isinstance(m, StatusMessage) for m in ms))
        assert reader.wait_for(lambda ms: any(isinstance(m, DetectionsMessage) and m.frame_id == 39 for m in ms))
    finally:
        sink.close()
    sink.close()  # idempotent

    assert reader.decoder.rejected == 0  # every frame's CRC checked out
    seqs = [m.seq for m in reader.messages]
    assert seqs == list(range(len(seqs)))
    frame_ids = [m.frame_id for m in reader.of_type(DetectionsMessage)]
    assert frame_ids == sorted(frame_ids) and frame_ids[-1] == 39
    counters = sink.counters()
    # Latest-only: each frame was either sent or replaced by a newer one before it went out.
    assert len(frame_ids) + counters["replaced_detections"] == 40
    assert counters["sent_messages"] == len(reader.messages)
    first = reader.of_type(DetectionsMessage)[0]
    assert (first.width, first.height, first.total) == (64, 48, 2)
    (status,) = reader.of_type(StatusMessage)
    assert status.state_name == "stale" and status.reason == "no frame for 2.0 s"


def test_heartbeats_arrive_without_frames(reader):
    sink = SerialSink(reader.name, heartbeat_period=0.1)
    try:
        assert reader.wait_for(lambda ms: len(ms) >= 4, timeout=5.0)
    finally:
        sink.close()
    heartbeats = reader.of_type(HeartbeatMessage)
    assert len(heartbeats) == len(reader.messages) >= 4
    assert all(h.state_name == "starting" for h in heartbeats)
    stamps = [h.timestamp_us for h in heartbeats]
    assert stamps == sorted(stamps)


def test_text_mode_writes_one_line_per_message(reader):
    sink = SerialSink(reader.name, mode="text", classes=["missing_hole", "mouse_bite"], heartbeat_period=10.0)
    try:
        _write(sink, 3)
        deadline = time.monotonic() + 5
        while b"DET " not in bytes(reader.raw) and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        sink.close()
    lines = bytes(reader.raw).decode("utf-8").splitlines()
    assert lines[0].startswith("HB seq=0 ")
    assert (
        lines[1].startswith("DET seq=1 ")
        and "frame=3 64x48 n=2 | 0 missing_hole 0.750 3,2,40,30 | 1 mouse_bite" in lines[1]
    )


def test_busy_and_absent_ports_raise_one_line_sink_errors(reader, tmp_path):
    sink = SerialSink(reader.name, heartbeat_period=10.0)
    try:
        with pytest.raises(SinkError, match="serial port {} is busy".format(reader.name)):
            SerialSink(reader.name)
    finally:
        sink.close()
    missing = str(tmp_path / "ttyTHS0")
    with pytest.raises(SinkError, match="serial port {} not found".format(missing)):
        SerialSink(missing)
    with pytest.raises(SinkError, match="serial mode"):
        SerialSink(reader.name, mode="hex")


def test_pulled_cable_reconnects_and_resumes(tmp_path):
    link = str(tmp_path / "ttyROBOT")
    first = PtyReader()
    os.symlink(first.name, link)
    sink = SerialSink(link, heartbeat_period=0.1, write_timeout=0.2, reconnect_min=0.05, reconnect_max=0.2)
    second = None
    try:
        frame_id = 0
        while not first.of_type(DetectionsMessage) and frame_id < 200:
            _write(sink, frame_id)
            frame_id += 1
            time.sleep(0.02)
        assert first.of_type(DetectionsMessage)

        first.unplug()  # the cable is pulled: the pty is gone, and so is the device node
        os.unlink(link)
        deadline = time.monotonic() + 5
        while (
            not (sink.counters()["write_errors"] and not sink.counters()["connected"]) and time.monotonic() < deadline
        ):
            _write(sink, frame_id)
            frame_id += 1
            time.sleep(0.02)
        counters = sink.counters()
        assert counters["write_errors"] >= 1 and not counters["connected"]
        for _ in range(10):  # unplugged for a while: messages are dropped, the pipeline never waits
            _write(sink, frame_id)
            frame_id += 1
            time.sleep(0.02)
        unplugged_until = frame_id

        second = PtyReader()  # plugged back in (a new device node behind the same name)
        os.symlink(second.name, link)
        deadline = time.monotonic() + 5
        while not second.of_type(DetectionsMessage) and time.monotonic() < deadline:
            _write(sink, frame_id)
            frame_id += 1
            time.sleep(0.02)
    finally:
        sink.close()
        if second is not None:
            second.unplug()

    counters = sink.counters()
    assert counters["reconnects"] == 1
    assert counters["dropped_messages"] >= 1
    resumed = second.of_type(DetectionsMessage)
    assert resumed and resumed[0].frame_id >= unplugged_until
    assert second.decoder.rejected == 0
    seqs = [m.seq for m in second.messages]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # the sequence continues, one per message


def test_open_sinks_closes_what_it_opened_when_one_sink_fails(reader, tmp_path):
    import socket

    from device.sinks import close_all, open_sinks

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        with pytest.raises(SinkError, match="is busy"):
            open_sinks(
                serial=reader.name,
                jsonl=str(tmp_path / "d.jsonl"),
                preview="127.0.0.1:{}".format(taken.getsockname()[1]),
            )
    sinks = open_sinks(serial=reader.name, serial_mode="text", classes=["a"])  # the port was released
    assert [type(s).__name__ for s in sinks] == ["SerialSink"] and sinks[0].mode == "text"
    close_all(sinks)
    close_all(sinks)
