"""`edge-sdk run` / `edge-sdk bench` end to end: a video file as the camera, JSON lines on stdout,
clean stop on SIGTERM/SIGINT, and systemd's notify protocol over a real unix datagram socket."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from device.runtime import SystemdNotifier, status_text

EDGE_SDK = [sys.executable, "-m", "edge_cli"]


def write_video(path: Path, frames: int = 10) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30, (128, 96))
    rng = np.random.default_rng(0)
    for _ in range(frames):
        writer.write(rng.integers(0, 256, (96, 128, 3), dtype=np.uint8))
    writer.release()
    return path


def edge_sdk(*args: str, env=None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(EDGE_SDK + list(args), capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    return write_video(tmp_path_factory.mktemp("video") / "camera.avi")


def test_run_on_a_video_writes_json_lines(tiny_bundle, video):
    result = edge_sdk(
        "run",
        "--source",
        str(video),
        "--bundle",
        str(tiny_bundle),
        "--max-frames",
        "5",
        "--jsonl",
        "-",
        "--score-threshold",
        "0",
        "--threads",
        "1",
    )
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    frames = [line for line in lines if line["event"] == "frame"]
    assert [f["frame_id"] for f in frames] == [0, 1, 2, 3, 4]
    assert all(f["width"] == 128 and f["height"] == 96 for f in frames)
    assert sum(len(f["detections"]) for f in frames) > 0
    assert "stopped:" in result.stderr and "frames 5" in result.stderr
    assert "Traceback" not in result.stderr


def frame_lines(path: Path) -> list:
    return [line for line in map(json.loads, path.read_text().splitlines()) if line["event"] == "frame"]


def test_a_folder_run_writes_one_line_per_image_named_in_order(tiny_bundle, tmp_path):
    folder = tmp_path / "boards"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(60):
        cv2.imwrite(str(folder / "{:04d}.jpg".format(i)), rng.integers(0, 256, (96, 128, 3), dtype=np.uint8))
    output = tmp_path / "out.jsonl"
    result = edge_sdk(
        "run", "--source", str(folder), "--bundle", str(tiny_bundle), "--jsonl", str(output), "--threads", "1"
    )
    assert result.returncode == 0, result.stderr
    frames = frame_lines(output)
    assert [f["source_name"] for f in frames] == ["{:04d}.jpg".format(i) for i in range(60)]
    assert [f["frame_id"] for f in frames] == list(range(60))
    assert frames[-1]["stats"]["dropped_frames"] == 0
    assert "dropped 0 " in result.stderr and "frames 60" in result.stderr
    assert "opening folder {}: every frame".format(folder) in result.stderr.splitlines()


def test_the_demo_source_is_named_once_when_opened(tiny_bundle):
    result = edge_sdk("run", "--source", "demo", "--bundle", str(tiny_bundle), "--max-frames", "1", "--threads", "1")
    assert result.returncode == 0, result.stderr
    assert "opening demo: every frame" in result.stderr.splitlines()  # not "opening demo demo"


def test_a_video_run_processes_every_frame_up_to_max_frames(tiny_bundle, tmp_path):
    video = tmp_path / "inspection.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 500, (128, 96))  # faster than inference
    rng = np.random.default_rng(2)
    for _ in range(300):
        writer.write(rng.integers(0, 256, (96, 128, 3), dtype=np.uint8))
    writer.release()
    output = tmp_path / "out.jsonl"
    result = edge_sdk(
        "run",
        "--source",
        str(video),
        "--max-frames",
        "60",
        "--bundle",
        str(tiny_bundle),
        "--jsonl",
        str(output),
        "--threads",
        "1",
    )
    assert result.returncode == 0, result.stderr
    frames = frame_lines(output)
    assert [f["frame_id"] for f in frames] == list(range(60))
    assert all(f["source_name"] is None for f in frames)
    assert frames[-1]["stats"]["dropped_frames"] == 0


def test_a_run_over_a_coco_image_folder_writes_results_eval_can_score(tiny_bundle, tmp_path):
    from edge_sdk.data.synth import synthesize

    synthesize(tmp_path / "pcb", 5, seed=0, size=(128, 128), val_fraction=0.4, progress=False, workers=1)
    gt = tmp_path / "pcb" / "val.json"
    val_ids = sorted(image["id"] for image in json.loads(gt.read_text())["images"])
    results = tmp_path / "results.json"
    result = edge_sdk(
        "run",
        "--source",
        str(tmp_path / "pcb" / "images"),
        "--bundle",
        str(tiny_bundle),
        "--coco-results",
        str(results),
        "--coco-gt",
        str(gt),
        "--score-threshold",
        "0.01",
        "--threads",
        "1",
    )
    assert result.returncode == 0, result.stderr
    detections = json.loads(results.read_text())
    assert detections and {d["image_id"] for d in detections} <= set(val_ids)
    assert all(len(d["bbox"]) == 4 and 1 <= d["category_id"] <= 6 for d in detections)
    assert "on 2 images to {} (3 images not in {} left out)".format(results, gt) in result.stderr
    scored = edge_sdk("eval", "--gt", str(gt), "--dt", str(results), "--json")
    assert scored.returncode == 0, scored.stderr
    assert json.loads(scored.stdout)["num_detections"] == len(detections)


def test_coco_gt_without_the_bundles_classes_is_refused_before_the_predictor_is_built(tiny_bundle, video, tmp_path):
    gt = tmp_path / "val.json"
    gt.write_text(json.dumps({"images": [], "annotations": [], "categories": [{"id": 1, "name": "class0"}]}))
    results = tmp_path / "results.json"
    result = edge_sdk(
        "run",
        "--source",
        str(video),
        "--bundle",
        str(tiny_bundle),
        "--coco-results",
        str(results),
        "--coco-gt",
        str(gt),
    )
    assert result.returncode != 0
    lines = result.stderr.splitlines()
    assert lines[-1].startswith("error: --coco-gt {} has no category named missing_hole".format(gt)), lines
    assert not [line for line in lines if line.startswith("predictor:")], lines  # no predictor was built
    assert not results.exists()


def test_coco_gt_without_coco_results_is_one_line(tiny_bundle, video, tmp_path):
    result = edge_sdk("run", "--source", str(video), "--bundle", str(tiny_bundle), "--coco-gt", "val.json")
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert result.stderr.startswith("error: ") and "--coco-results" in result.stderr


def _read_datagrams(server: socket.socket, until: str, timeout: float) -> list:
    messages = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        server.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            messages.append(server.recv(4096).decode())
        except socket.timeout:
            break
        if any(until in m for m in messages):
            break
    return messages


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_cleanly_and_systemd_is_told(tiny_bundle, video, tmp_path, signum):
    address = str(tmp_path / "notify.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(address)
    env = dict(os.environ, NOTIFY_SOCKET=address, WATCHDOG_USEC="300000")
    output = tmp_path / "out.jsonl"
    process = subprocess.Popen(
        EDGE_SDK
        + [
            "run",
            "--source",
            str(video),
            "--loop",
            "--fps",
            "30",
            "--bundle",
            str(tiny_bundle),
            "--jsonl",
            str(output),
            "--threads",
            "1",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        messages = _read_datagrams(server, "READY=1", timeout=90)
        assert any("READY=1" in m for m in messages), messages
        messages += _read_datagrams(server, "WATCHDOG=1", timeout=10)
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    messages += _read_datagrams(server, "STOPPING=1", timeout=1)
    server.close()
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr and "stopped:" in stderr
    assert any("WATCHDOG=1" in m for m in messages)
    assert any(m.startswith("STATUS=") and "fps" in m for m in messages)
    assert any("STOPPING=1" in m for m in messages)
    lines = output.read_text().splitlines()
    assert lines and all(json.loads(line)["event"] in ("frame", "status") for line in lines)  # closed cleanly


def test_notifier_speaks_to_an_abstract_socket():
    name = "edge-sdk-test-{}".format(os.getpid())
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind("\0" + name)
    server.settimeout(5)
    notifier = SystemdNotifier("@" + name)
    assert notifier.notify(READY=1, STATUS="warming up")
    assert server.recv(4096) == b"READY=1\nSTATUS=warming up"
    notifier.close()
    server.close()
    assert not SystemdNotifier("").notify(READY=1)


def test_status_text_mentions_the_numbers():
    text = status_text(
        {
            "fps": 12.34,
            "frames": 9,
            "dropped": 3,
            "detections": 2,
            "latency_ms": {"end_to_end": {"p50": 80.4, "p99": 120.0}, "inference": {"p50": 40.2, "p99": 50.0}},
            "source": {"state": "reconnecting", "last_error": "camera 0 could not be opened"},
        }
    )
    assert "12.3 fps" in text and "80/120 ms" in text and "dropped 3" in text and "2 det" in text
    assert "source reconnecting (camera 0 could not be opened)" in text


def test_missing_installed_bundle_is_one_line(tmp_path):
    result = edge_sdk("run", "--root", str(tmp_path / "store"), "--source", "demo", "--max-frames", "1", timeout=60)
    assert result.returncode != 0
    assert result.stderr.startswith("error: no bundle is installed in {}".format(tmp_path / "store"))
    assert "Traceback" not in result.stderr


def test_run_uses_the_installed_bundle(tiny_bundle, video, tmp_path):
    from device.install import install_bundle

    store = tmp_path / "store"
    store.mkdir()
    (store / "robot.json").write_text(json.dumps({"l4t": "35.4.1", "compute_capability": "7.2"}))
    install_bundle(tiny_bundle, root=store, skip_health=True)
    result = edge_sdk(
        "run", "--root", str(store), "--source", str(video), "--max-frames", "2", "--jsonl", "-", "--threads", "1"
    )
    assert result.returncode == 0, result.stderr
    assert "bundle tiny 0.1.0" in result.stderr and str(store) in result.stderr
    assert len(result.stdout.splitlines()) == 2


@pytest.mark.parametrize(
    "args,message",
    [
        (["--camera", "97"], "error: camera 97 does not exist"),
        (["--classes", "missing_hole,scratch"], "error: --classes: 'scratch' is not a class"),
        (["--device", "gpu"], "error: --device gpu asked for, but this Paddle"),
    ],
)
def test_user_errors_are_one_line(tiny_bundle, video, args, message):
    base = ["run", "--bundle", str(tiny_bundle), "--max-frames", "1"]
    if "--camera" not in args:
        base += ["--source", str(video)]
    result = edge_sdk(*(base + args))
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "args,message",
    [
        (["--fps", "0"], "error: Invalid value for '--fps'"),
        (["--width", "-1"], "error: Invalid value for '--width'"),
        (["--fps", "nan"], "error: Invalid value for '--fps'"),
        (["--open-timeout", "0"], "error: Invalid value for '--open-timeout'"),
    ],
)
def test_numbers_out_of_range_are_one_line_before_any_work(tiny_bundle, video, tmp_path, args, message):
    output = tmp_path / "out.jsonl"
    result = edge_sdk("run", "--bundle", str(tiny_bundle), "--source", str(video), "--jsonl", str(output), *args)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [result.stderr.strip()] and result.stderr.startswith(message)
    assert not output.exists()


def test_record_writes_the_file_named_and_says_so(tiny_bundle, video, tmp_path):
    target = tmp_path / "rec.avi"
    result = edge_sdk(
        "run", "--source", str(video), "--bundle", str(tiny_bundle), "--record", str(target), "--threads", "1"
    )
    assert result.returncode == 0, result.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["rec.avi"]
    assert "recorded {}".format(target) in result.stderr
    capture = cv2.VideoCapture(str(target))
    assert capture.isOpened() and capture.read()[0]
    capture.release()


def test_a_stream_that_never_answers_says_so_while_opening_and_when_it_gives_up(tiny_bundle, silent_stream):
    uri = silent_stream.uri
    result = edge_sdk("run", "--source", uri, "--bundle", str(tiny_bundle), "--open-timeout", "1")
    assert silent_stream.accepted  # it was reached, accepted the connection and never answered
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert "opening {} (gives up after 1 s)".format(uri) in lines
    assert lines[-1] == "error: {}: no answer: timed out after 1 s".format(uri)


def test_bench_alternates_rounds_and_says_what_each_number_means(tiny_bundle, video):
    from typer.testing import CliRunner

    from edge_cli import app

    result = CliRunner().invoke(
        app,
        ["bench", "--bundle", str(tiny_bundle), "--source", str(video), "--frames", "12", "--rounds", "3"]
        + ["--threads", "1"],
    )
    assert result.exit_code == 0, result.output
    assert "predictor-only" in result.output and "full pipeline" in result.output
    ratio, rounds = result.output.split("ratio")[1].split("(median of 3 rounds:")
    per_round = [float(value) for value in rounds.split(")")[0].split()]
    assert len(per_round) == 3 and float(ratio) == pytest.approx(sorted(per_round)[1], abs=0.01)
    assert "dropped 0" in result.output
    assert ("; overlapped)" if (os.cpu_count() or 1) > 1 else "; in turn, one thread)") in result.output
    help_text = " ".join(CliRunner().invoke(app, ["bench", "--help"]).output.split())
    meanings = ("predictor-only: Paddle Inference alone", "full pipeline: `edge-sdk run` without", "ratio: full")
    for meaning in meanings + ("e2e p50/p99: milliseconds from capture", "It cannot truly exceed 1"):
        assert meaning in help_text


def test_watchdog_pings_stop_while_frames_do_not_flow(tiny_bundle, video, tmp_path, monkeypatch):
    """One frame every 4 s: pings follow the first frame, then stop until the next one arrives."""
    import threading

    from device.runtime import RunOptions, run

    address = str(tmp_path / "notify.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(address)
    server.settimeout(0.2)
    received = []
    done = threading.Event()

    def listen():
        while not done.is_set():
            try:
                received.append((time.monotonic(), server.recv(4096).decode()))
            except socket.timeout:
                continue

    listener = threading.Thread(target=listen)
    listener.start()
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    monkeypatch.setenv("WATCHDOG_USEC", "300000")  # a ping every 0.1 s while frames flow
    try:
        stats = run(
            RunOptions(source=str(video), bundle=str(tiny_bundle), fps=0.25, realtime=True, max_frames=2, threads=1),
            log=lambda m: None,
        )
    finally:
        done.set()
        listener.join()
        server.close()
    assert stats["frames"] == 2
    pings = [t for t, m in received if "WATCHDOG=1" in m]
    ready = [t for t, m in received if "READY=1" in m]
    assert len(ready) == 1 and len(pings) >= 3
    assert max(b - a for a, b in zip(pings, pings[1:])) > 1.2  # silence while the stream was frozen
