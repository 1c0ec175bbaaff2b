"""PreviewSink: a real HTTP server on loopback, read with urllib, and the page rendered by headless Chromium."""

from __future__ import annotations

import fcntl
import json
import shutil
import socket
import struct
import subprocess
import termios
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

from device.sinks.preview import BOUNDARY, PreviewSink
from edge_sdk.detections import Detections, Frame
from edge_sdk.errors import SinkError

cv2 = pytest.importorskip("cv2")

CLASSES = ["missing_hole", "mouse_bite", "open_circuit", "short", "spur", "spurious_copper"]
MAGENTA = (255, 0, 255)  # BGR: a colour no UI element of the page uses
STATS = {
    "fps": 12.34,
    "latency_ms_p50": 41.5,
    "latency_ms_p99": 60.25,
    "frames": 0,
    "dropped_frames": 3,
    "source_state": "ok",
    "temperatures": {"GPU": 45.5, "CPU": 51.0},
    "gpu_load": 37,
}


class Feeder:
    """The pipeline: writes frames to the sink on its own thread until stopped."""

    def __init__(self, sink, image, period=0.03):
        self.sink, self.image, self.period = sink, image, period
        self.frames = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            frame_id = self.frames
            dets = Detections(
                np.array([[40, 40, 200, 160], [220, 20, 300, 90]]),
                np.array([0.91, 0.55]),
                np.array([3, 3]),
                frame_id=frame_id,
                timestamp=time.monotonic(),
            )
            self.sink.write(Frame(self.image, frame_id, dets.timestamp, "test.mp4"), dets, dict(STATS, frames=frame_id))
            self.frames += 1
            self._stop.wait(self.period)

    def stop(self):
        self._stop.set()
        self._thread.join()


@pytest.fixture
def preview():
    sink = PreviewSink("127.0.0.1:0", classes=CLASSES)
    image = np.zeros((240, 320, 3), np.uint8)
    image[:] = MAGENTA
    feeder = Feeder(sink, image)
    yield sink
    feeder.stop()
    sink.close()


def _read_parts(response, count):
    """The first `count` JPEG parts of a multipart/x-mixed-replace response."""
    parts = []
    while len(parts) < count:
        line = response.readline()
        assert line, "stream ended"
        if line.strip() != b"--" + BOUNDARY.encode():
            continue
        headers = {}
        while True:
            header = response.readline().strip()
            if not header:
                break
            name, _, value = header.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
        assert headers["content-type"] == "image/jpeg"
        parts.append(response.read(int(headers["content-length"])))
    return parts


def test_stats_json_reports_the_pipeline_and_detections(preview):
    time.sleep(0.2)
    preview.status("stale", "no frame for 2.0 s")
    with urllib.request.urlopen(preview.url + "stats.json", timeout=10) as response:
        assert response.headers["Content-Type"] == "application/json"
        stats = json.load(response)
    for key in (
        "fps",
        "latency_ms_p50",
        "latency_ms_p99",
        "dropped_frames",
        "frames",
        "source_state",
        "temperatures",
        "gpu_load",
    ):
        assert stats[key] == (STATS[key] if key != "frames" else stats["frames"])
    assert stats["frames"] >= 1 and stats["frame_id"] == stats["frames"]
    assert stats["detections"] == 2 and stats["detections_by_class"] == {"short": 2}
    assert stats["frame_size"] == [320, 240] and stats["source_id"] == "test.mp4"
    assert stats["status"]["state"] == "stale" and stats["status"]["message"] == "no frame for 2.0 s"


def test_stream_yields_annotated_jpeg_parts(preview):
    with urllib.request.urlopen(preview.url + "stream.mjpg", timeout=10) as response:
        assert response.headers["Content-Type"] == "multipart/x-mixed-replace; boundary=" + BOUNDARY
        parts = _read_parts(response, 3)
    assert len(set(parts)) >= 1
    for jpeg in parts:
        assert jpeg[:2] == b"\xff\xd8" and jpeg[-2:] == b"\xff\xd9"
        image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
        assert image.shape == (240, 320, 3)
        assert np.abs(image[120, 100].astype(int) - MAGENTA).max() < 20  # the frame itself
        assert np.abs(image[100, 40].astype(int) - MAGENTA).max() > 60  # a box edge drawn over it
    with urllib.request.urlopen(preview.url + "snapshot.jpg", timeout=10) as response:
        assert response.read()[:2] == b"\xff\xd8"
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(preview.url + "nothing-here", timeout=10)
    assert error.value.code == 404


def test_a_stalled_client_does_not_hold_up_the_pipeline_or_other_clients():
    sink = PreviewSink("127.0.0.1:0", max_fps=100)
    noise = np.random.default_rng(0).integers(0, 256, size=(480, 640, 3), dtype=np.uint8)  # ~250 kB JPEGs
    feeder = Feeder(sink, noise, period=0.005)
    stalled = socket.socket()
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        stalled.connect(("127.0.0.1", sink.port))
        stalled.sendall(b"GET /stream.mjpg HTTP/1.1\r\nHost: x\r\n\r\n")  # and never reads
        with urllib.request.urlopen(sink.url + "stream.mjpg", timeout=10) as response:
            first_frames = feeder.frames
            parts = _read_parts(response, 12)
            assert feeder.frames > first_frames  # the pipeline kept going meanwhile
        assert len(parts) == 12
        # 12 parts are ~2.4 MB: more than the stalled client's receive and the server's send buffers hold.
        queued_for_stalled = struct.unpack("i", fcntl.ioctl(stalled.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0]
        assert queued_for_stalled < sum(len(p) for p in parts) / 2  # it really fell behind
        stats = json.load(urllib.request.urlopen(sink.url + "stats.json", timeout=10))
        assert stats["stream_clients"] >= 1
    finally:
        feeder.stop()
        sink.close()
        stalled.close()


def test_busy_port_and_bad_address_are_sink_errors():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with pytest.raises(SinkError, match="preview port {} on 127.0.0.1 is busy".format(port)):
            PreviewSink("127.0.0.1:{}".format(port))
    with pytest.raises(SinkError, match="HOST:PORT"):
        PreviewSink("localhost")


def test_close_stops_the_server_and_open_streams():
    sink = PreviewSink("127.0.0.1:0")
    image = np.full((60, 80, 3), 90, np.uint8)
    feeder = Feeder(sink, image)
    response = urllib.request.urlopen(sink.url + "stream.mjpg", timeout=10)
    _read_parts(response, 1)
    feeder.stop()
    sink.close()
    sink.close()
    assert response.read() is not None  # the stream ends (EOF) instead of hanging
    response.close()
    with pytest.raises(OSError):
        urllib.request.urlopen(sink.url + "stats.json", timeout=5)


def _chromium():
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _run_chromium(url, tmp_path, *args):
    command = [
        _chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--user-data-dir={}".format(tmp_path / "chromium-profile"),
        "--window-size=1024,768",
        "--virtual-time-budget=3000",
        *args,
        url,
    ]
    env = {"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


@pytest.mark.skipif(_chromium() is None, reason="chromium is not installed (Debian: apt-get install chromium)")
def test_page_shows_the_stream_and_statistics_in_headless_chromium(preview, tmp_path):
    screenshot = tmp_path / "preview.png"
    _run_chromium(preview.url, tmp_path, "--screenshot={}".format(screenshot))
    image = cv2.imread(str(screenshot))
    assert image is not None and image.shape[:2] == (768, 1024)
    magenta = np.all(np.abs(image.astype(int) - MAGENTA) < 30, axis=2)
    ys, xs = np.nonzero(magenta)
    assert magenta.sum() > 0.8 * 320 * 240 - 3000, "the streamed frame is not on the page"
    assert xs.max() < 740 and ys.min() > 40  # inside the video area, left of the statistics, below the header
    assert ys.max() - ys.min() >= 230 and xs.max() - xs.min() >= 310  # the whole 320x240 frame

    dom = _run_chromium(preview.url, tmp_path, "--dump-dom")
    assert '<td id="fps">12.3</td>' in dom
    assert '<td id="p99">60.3 ms</td>' in dom or '<td id="p99">60.2 ms</td>' in dom
    assert '<td id="dropped">3</td>' in dom and '<td id="gpu">37 %</td>' in dom
    assert "45.5 °C" in dom and '<td id="detections">2</td>' in dom and ">short<" in dom
