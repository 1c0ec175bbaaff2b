"""JsonlSink: one valid JSON object per line, with the documented keys, to a file or stdout."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from device.sinks.jsonl import JsonlSink
from edge_sdk.detections import Detections, Frame
from edge_sdk.errors import SinkError

CLASSES = ["missing_hole", "mouse_bite", "open_circuit", "short", "spur", "spurious_copper"]
IMAGE = np.zeros((48, 64, 3), np.uint8)


def _feed(sink, frames):
    for frame_id in range(frames):
        n = frame_id % 4
        dets = Detections(
            np.tile(np.array([[1.25, 2.5, 30.0, 40.0]], np.float32), (n, 1)),
            np.linspace(0.3, 0.9, n),
            np.arange(n) + 2,
            frame_id=frame_id,
            timestamp=10.0 + frame_id / 30,
        )
        stats = {
            "fps": np.float32(29.5),
            "latency_ms_p50": 12.5,
            "latency_ms_p99": float("nan"),
            "frames": frame_id + 1,
            "dropped_frames": np.int64(0),
            "source_state": "ok",
            "temperatures": {"GPU": 41.0},
            "gpu_load": None,
        }
        sink.write(Frame(IMAGE, frame_id, dets.timestamp, "video.mp4"), dets, stats)


def test_every_line_is_a_json_object_with_the_schema(tmp_path):
    path = tmp_path / "detections.jsonl"
    sink = JsonlSink(str(path), classes=CLASSES)
    _feed(sink, 50)
    sink.status("stale", "no frame for 2.0 s")
    sink.close()
    sink.close()
    lines = path.read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines]
    assert len(records) == 51 and sink.dropped_lines == 0
    frames = [r for r in records if r["event"] == "frame"]
    assert [r["frame_id"] for r in frames] == list(range(50))
    for record in frames:
        assert {"frame_id", "timestamp", "detections", "stats", "width", "height", "source_id"} <= set(record)
        assert len(record["detections"]) == record["frame_id"] % 4
        for det in record["detections"]:
            assert set(det) == {"class_id", "class", "score", "box"}
            assert det["class"] == CLASSES[det["class_id"]] and len(det["box"]) == 4 and 0 <= det["score"] <= 1
        assert record["stats"]["fps"] == 29.5 and record["stats"]["latency_ms_p99"] is None
        assert record["stats"]["temperatures"] == {"GPU": 41.0}
    assert frames[3]["detections"][0]["box"] == pytest.approx([1.25, 2.5, 30.0, 40.0], abs=0.051)
    assert math.isclose(frames[3]["timestamp"], 10.1)
    assert records[-1] == {
        "event": "status",
        "timestamp": records[-1]["timestamp"],
        "state": "stale",
        "message": "no frame for 2.0 s",
    }

    again = JsonlSink(str(path), classes=CLASSES)  # a restart appends
    _feed(again, 1)
    again.close()
    assert len(path.read_text(encoding="utf-8").splitlines()) == 52


def test_stdout(tmp_path):
    code = textwrap.dedent(
        """
        import numpy as np
        from device.sinks import open_sinks, close_all
        from edge_sdk.detections import Detections, Frame
        sinks = open_sinks(jsonl="-", classes=["a", "b"])
        dets = Detections(np.array([[1, 2, 3, 4]]), np.array([0.5]), np.array([1]), frame_id=9, timestamp=1.0)
        sinks[0].write(Frame(np.zeros((4, 4, 3), np.uint8), 9, 1.0), dets, {"fps": 3.0})
        close_all(sinks)
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    (line,) = result.stdout.splitlines()
    record = json.loads(line)
    assert record["frame_id"] == 9 and record["detections"] == [
        {"class_id": 1, "class": "b", "score": 0.5, "box": [1.0, 2.0, 3.0, 4.0]}
    ]


def test_unwritable_path_is_a_sink_error(tmp_path):
    with pytest.raises(SinkError, match="cannot open JSON lines file"):
        JsonlSink(str(tmp_path / "no" / "such" / "folder.jsonl"))


def _slow_fifo_run(tmp_path, lossless: bool):
    """Feed 400 frames into a JsonlSink writing to a FIFO whose reader takes 1 ms per line."""
    import os
    import threading
    import time

    fifo = tmp_path / "slow.jsonl"
    os.mkfifo(str(fifo))
    received = []

    def read_slowly() -> None:
        with open(str(fifo), encoding="utf-8") as reader:
            for line in reader:
                received.append(json.loads(line)["frame_id"])
                time.sleep(0.001)

    reader = threading.Thread(target=read_slowly)
    reader.start()
    sink = JsonlSink(str(fifo), classes=CLASSES, max_queued_lines=2, lossless=lossless)
    for frame_id in range(400):  # ~1.5 KB per line: the pipe's 64 KB buffer fills up
        dets = Detections(
            np.tile(np.array([[1.0, 2.0, 30.0, 40.0]], np.float32), (16, 1)), np.full(16, 0.5), np.zeros(16, np.int64),
            frame_id=frame_id, timestamp=float(frame_id),
        )  # fmt: skip
        sink.write(Frame(IMAGE, frame_id, float(frame_id), "folder"), dets, {})
    sink.close(timeout=60)
    reader.join(timeout=60)
    return sink, received


def test_a_slow_reader_loses_lines_of_a_live_run_and_says_so(tmp_path):
    sink, received = _slow_fifo_run(tmp_path, lossless=False)
    assert sink.dropped_lines > 0 and len(received) == 400 - sink.dropped_lines
    assert "JSON lines dropped" in sink.report()


def test_a_lossless_sink_keeps_every_line_of_a_file_or_folder_run(tmp_path):
    sink, received = _slow_fifo_run(tmp_path, lossless=True)
    assert received == list(range(400)) and sink.dropped_lines == 0 and sink.report() == ""
