"""device.robot_status: the runtime/status.json the runtime leaves in the store and how `edge-sdk status` reads it."""

from __future__ import annotations

import json
import subprocess
import sys

from device.robot_status import RUNTIME_FILE, RuntimeStatusFile, format_duration, read_runtime, status_cells


def test_runtime_file_round_trip_with_ages(tmp_path):
    messages = []
    writer = RuntimeStatusFile(tmp_path, {"name": "pcb", "version": "1.2.0", "sha256": "ab"}, messages.append)
    writer.update({"frames": 12, "fps": 14.5, "last_frame_age_s": 0.5})
    written = json.loads((tmp_path / RUNTIME_FILE).read_text())
    assert written["frames"] == 12 and written["bundle"]["name"] == "pcb"
    doc = read_runtime(tmp_path, now=written["updated_at"] + 10.0)
    assert doc["last_frame_age_s"] == 10.5 and doc["updated_age_s"] == 10.0
    assert doc["uptime_s"] >= 10.0 and messages == []


def test_a_runtime_without_frames_yet(tmp_path):
    RuntimeStatusFile(tmp_path, {}, print).update({"frames": 0, "last_frame_age_s": None})
    doc = read_runtime(tmp_path)
    assert doc["last_frame_age_s"] is None
    assert status_cells({"runtime": doc})["last frame"] == "none yet"


def test_recovery_of_the_store_does_not_touch_the_runtime_folder(tmp_path):
    """The store's recovery removes temp files it finds in the root: the runtime's are not there."""
    from device.store import recover

    RuntimeStatusFile(tmp_path, {}, print).update({"frames": 1, "last_frame_age_s": 0.0})
    stray = tmp_path / "runtime" / ".status.json.0123456789ab.tmp"
    stray.write_text("{}")
    assert recover(tmp_path) == [] and stray.exists()


def test_a_missing_store_is_left_alone(tmp_path):
    RuntimeStatusFile(tmp_path / "absent", {}, print).update({"frames": 1, "last_frame_age_s": 0.0})
    assert not (tmp_path / "absent").exists() and read_runtime(tmp_path / "absent") is None


def test_status_cells():
    doc = {
        "active": {"name": "pcb", "version": "1.2.0", "health": "passed"},
        "service": "active",
        "uptime_s": 90061.0,
        "runtime": {"last_frame_age_s": 61.2},
    }
    assert status_cells(doc) == {
        "bundle": "pcb 1.2.0",
        "health": "passed",
        "service": "active",
        "uptime": "1d01h01m",
        "last frame": "1m01s ago",
    }
    assert status_cells({"active": None, "runtime": None})["bundle"] == "none installed"
    assert status_cells({"runtime": None})["last frame"] == "no runtime record"
    assert format_duration(None) == "-" and format_duration(59.9) == "59s" and format_duration(3600) == "1h00m"


def test_status_command_of_an_empty_store(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "edge_cli", "status", "--root", str(tmp_path), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["active"] is None and doc["runtime"] is None and doc["root"] == str(tmp_path)
