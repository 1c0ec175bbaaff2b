"""Soak: `edge-sdk run` for N minutes under the disruptions of a robot's life, leaks watched.

    python benchmarks/soak.py --minutes 30 [--bundle FILE] [--out DIR] [--json]

`edge-sdk run` runs as a subprocess (as under systemd) with every link a fleet robot has, each one
pulled and put back on a schedule:
- camera: an HTTP MJPEG camera on loopback (`--source http://...`, the `stream` kind, opened by
  OpenCV's FFmpeg backend like an rtsp:// URL without GStreamer). Every 20 s it is unplugged for
  3 s: open streams are cut and new requests answered 503, so the runtime's reader sees a read error
  and goes through `Source._reconnect`, re-creating the capture with back-off (the path the
  jetson-utils RTSP leak reports are about; a renamed video file only reopens at its end);
- serial: a pseudo-terminal behind a symlink (`--serial LINK`); every 15 s the far end closes both
  sides and removes the link for 2 s (a USB adapter pulled), then plugs in a fresh pty; the sink
  must notice, reopen with back-off and go on (messages decoded on the far end);
- preview: every 8 s a client reads `/stats.json`, then `/stream.mjpg` for 3 s and hangs up;
- metrics: `/metrics` scraped every second (and parsed: source state, link state, frames);
- MQTT: a Mosquitto broker on loopback restarted every 60 s (down 3 s), only when this `edge-sdk
  run` has `--mqtt` and `mosquitto` is installed (Debian package `mosquitto`);
- watchdog: $NOTIFY_SOCKET is a unix datagram socket read here, $WATCHDOG_USEC 5 s (the unit file
  says 30 s): WATCHDOG=1 must never pause longer than that while frames can flow, i.e. outside the
  spans from a camera unplug to the runtime's stream getting its first frame again (the camera's
  own record; that delay, the reconnect back-off, is reported on its own). The broker restarts and
  3 of 4 serial pulls fall clear of the camera outages, so a pipeline they stall shows here.

Every second the runtime's RSS, open file descriptors and threads are read from /proc/PID. A sample
is *steady* when every link is up and reconnected by the runtime's account (the scrape just before),
none was pulled meanwhile and no preview client is connected: a pulled serial port takes 5 fds with
it (pyserial's port and two pipes), a preview client a socket and a thread; they come and go with the
disruptions, a leak stays.
Growth = median of the last 5 steady samples - median of the first 5 after the warm-up (the first
quarter of the run). Targets: the runtime alive to the end and exiting 0 on SIGTERM with no
traceback in its log, fd and thread growth 0, RSS growth under 5 MB, watchdog gaps within the
interval, every preview client and scrape answered, the camera and serial link back after every
outage. The exit status is 1 when a target is missed. Writes OUT/soak.png (RSS, fds and threads
over time with the disruptions marked), OUT/samples.json (every sample and disruption) and
OUT/runtime.log; `--json` prints every summary number as one JSON line at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import edge_sdk  # noqa: F401  (zlib before paddle)

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

CLASSES = ("missing_hole", "mouse_bite", "open_circuit", "short", "spur", "spurious_copper")
EDGE_SDK = [sys.executable, "-m", "edge_cli"]

CAMERA_SIZE = (320, 240)  # width, height
CAMERA_FPS = 15.0
# (first, period, down) seconds: the broker goes down at 47 + 60k s, clear of the camera outages
# (17 + 20k s, and their reconnection) and the serial pulls (13 + 15k s; 3 of 4 clear of the camera).
CAMERA_CYCLE = (17.0, 20.0, 3.0)
SERIAL_CYCLE = (13.0, 15.0, 2.0)
BROKER_CYCLE = (47.0, 60.0, 3.0)
PREVIEW_PERIOD_S, PREVIEW_HOLD_S = 8.0, 3.0
SAMPLE_PERIOD_S = 1.0
WATCHDOG_S = 5.0
PREVIEW_LINGER_S = 1.5  # a hung-up preview client's server thread ends at its next failed write
STEADY_WINDOW = 5  # steady samples whose median is a level (after warm-up, at the end)
RSS_TARGET_MB = 5.0


def _now() -> float:
    return time.monotonic()


class Timeline:
    """Disruption spans on one clock: (kind, start_s, end_s) relative to `t0`."""

    def __init__(self, t0: float) -> None:
        self.t0 = t0
        self.spans: List[Tuple[str, float, Optional[float]]] = []
        self._lock = threading.Lock()

    def rel(self, when: Optional[float] = None) -> float:
        return (_now() if when is None else when) - self.t0

    def begin(self, kind: str) -> int:
        with self._lock:
            self.spans.append((kind, self.rel(), None))
            return len(self.spans) - 1

    def end(self, index: int) -> None:
        with self._lock:
            kind, start, _ = self.spans[index]
            self.spans[index] = (kind, start, self.rel())

    def disrupted_since(self, since: float, kinds: Tuple[str, ...] = ("camera", "serial", "broker")) -> bool:
        """Whether a link of `kinds` is down now or went down after `since` (a monotonic time)."""
        since_rel = self.rel(since)
        with self._lock:
            return any(k in kinds and (e is None or s >= since_rel) for k, s, e in self.spans)

    def closed(self, kind: str, until: float) -> List[Tuple[float, float]]:
        with self._lock:
            return [(s, until if e is None else e) for k, s, e in self.spans if k == kind]


class MjpegCamera:
    """An IP camera on loopback: `url` streams multipart JPEGs at CAMERA_FPS; `unplug()` cuts every
    open stream and answers 503 until `plug()`."""

    def __init__(self) -> None:
        import cv2

        from edge_sdk.data.synth import render_board

        width, height = CAMERA_SIZE
        board = render_board(np.random.default_rng(0), (width * 2, height))[0]
        strip = np.concatenate([board, board], axis=1)
        self.jpegs = [
            cv2.imencode(".jpg", np.ascontiguousarray(strip[:, s : s + width]))[1].tobytes()
            for s in range(0, width * 2, 8)
        ]
        self.plugged = threading.Event()
        self.plugged.set()
        self.generation = 0
        self.streams_started: List[float] = []  # when each stream sent its first frame (monotonic)
        self.closing = False
        camera = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

            def do_GET(self) -> None:
                if not camera.plugged.is_set():
                    self.send_error(503, "camera unplugged")
                    return
                generation = camera.generation
                self.close_connection = True
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                due, index = _now(), 0
                try:
                    while camera.plugged.is_set() and camera.generation == generation and not camera.closing:
                        jpeg = camera.jpegs[index % len(camera.jpegs)]
                        head = "--frame\r\nContent-Type: image/jpeg\r\nContent-Length: {}\r\n\r\n".format(len(jpeg))
                        self.wfile.write(head.encode("ascii") + jpeg + b"\r\n")
                        if index == 0:
                            camera.streams_started.append(_now())
                        index += 1
                        due += 1.0 / CAMERA_FPS
                        time.sleep(max(0.0, due - _now()))
                except OSError:  # the runtime hung up
                    pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = "http://127.0.0.1:{}/camera.mjpg".format(self.server.server_address[1])
        self._thread = threading.Thread(target=self.server.serve_forever, name="camera", daemon=True)
        self._thread.start()

    def unplug(self) -> None:
        self.generation += 1
        self.plugged.clear()

    def plug(self) -> None:
        self.plugged.set()

    def close(self) -> None:
        self.closing = True
        self.server.shutdown()
        self.server.server_close()


class PtyCable:
    """The robot controller's end of `--serial LINK`: LINK is a symlink to a fresh pty's slave on each
    `plug()`; the master is read and decoded (device.sinks.protocol). `unplug()` removes the link and
    closes both sides, like pulling a USB adapter. messages_per_plug: decoded messages of each plug."""

    def __init__(self, link: Path) -> None:
        from device.sinks.protocol import Decoder

        self.link = link
        self.decoder = Decoder()
        self.messages_per_plug: List[int] = []
        self._fds: Optional[Tuple[int, int]] = None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def plug(self) -> None:
        master, slave = os.openpty()
        self._fds = (master, slave)
        staging = self.link.with_name(self.link.name + ".new")
        os.symlink(os.ttyname(slave), staging)
        os.replace(staging, self.link)
        self.messages_per_plug.append(0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, args=(master, self._stop), name="pty", daemon=True)
        self._thread.start()

    def _read(self, master: int, stop: threading.Event) -> None:
        while not stop.is_set():
            ready, _, _ = select.select([master], [], [], 0.1)
            if not ready:
                continue
            try:
                chunk = os.read(master, 65536)
            except OSError:
                return
            self.messages_per_plug[-1] += len(self.decoder.feed(chunk))

    def unplug(self) -> None:
        if self._fds is None:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.link.unlink()
        for fd in self._fds:
            os.close(fd)
        self._fds = None


class Broker:
    """Mosquitto on 127.0.0.1:port (its own config and log in `folder`); stop() and start() again."""

    def __init__(self, executable: str, folder: Path) -> None:
        self.executable = executable
        self.port = free_port()
        self.config = folder / "mosquitto.conf"
        self.config.write_text(
            "listener {} 127.0.0.1\nallow_anonymous true\npersistence false\nlog_dest stderr\n".format(self.port)
        )
        self.log = open(folder / "mosquitto.log", "ab")
        self.process: Optional[subprocess.Popen] = None

    def start(self) -> None:
        self.process = subprocess.Popen([self.executable, "-c", str(self.config)], stdout=self.log, stderr=self.log)
        deadline = _now() + 10.0
        while _now() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1.0).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not start (see {})".format(self.log.name))

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        self.process = None

    def close(self) -> None:
        self.stop()
        self.log.close()


class WatchdogListener:
    """systemd's side of sd_notify: a unix datagram socket at `path`; times of READY=1 and WATCHDOG=1."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.socket.bind(str(path))
        self.socket.settimeout(0.2)
        self.ready: Optional[float] = None
        self.pings: List[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, name="notify", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                message = self.socket.recv(4096).decode("utf-8", "replace")
            except socket.timeout:
                continue
            except OSError:
                return
            now = _now()
            fields = message.split("\n")
            if "READY=1" in fields and self.ready is None:
                self.ready = now
            if "WATCHDOG=1" in fields:
                self.pings.append(now)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.socket.close()


class PreviewClients:
    """Every PREVIEW_PERIOD_S: GET /stats.json, then read /stream.mjpg for PREVIEW_HOLD_S and hang up.
    Counts clients, failures (refused, not 200) and JPEGs received; `quiet_since()` is the time the
    last client hung up (None while one is connected)."""

    def __init__(self, host: str, port: int, timeline: Timeline) -> None:
        self.host, self.port, self.timeline = host, port, timeline
        self.clients = 0
        self.failed = 0
        self.with_frames = 0
        self.jpegs = 0
        self._connected = False
        self._last_hangup = _now()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="preview-clients", daemon=True)

    def start(self) -> PreviewClients:
        self._thread.start()
        return self

    def quiet_since(self) -> Optional[float]:
        return None if self._connected else self._last_hangup

    def _loop(self) -> None:
        while not self._stop.wait(PREVIEW_PERIOD_S - PREVIEW_HOLD_S):
            self._connected = True
            span = self.timeline.begin("preview")
            try:
                self.clients += 1
                jpegs = self._watch()
                self.jpegs += jpegs
                self.with_frames += jpegs > 0
            except (OSError, ValueError):
                self.failed += 1
            finally:
                self.timeline.end(span)
                self._last_hangup = _now()
                self._connected = False

    def _watch(self) -> int:
        with urllib.request.urlopen("http://{}:{}/stats.json".format(self.host, self.port), timeout=10) as reply:
            json.loads(reply.read())
        jpegs, head = 0, b""
        with socket.create_connection((self.host, self.port), timeout=10) as connection:
            connection.sendall(b"GET /stream.mjpg HTTP/1.0\r\nHost: soak\r\n\r\n")
            connection.settimeout(0.5)
            until = _now() + PREVIEW_HOLD_S
            tail = b""
            while _now() < until:
                try:
                    chunk = connection.recv(65536)
                except socket.timeout:
                    continue
                if not chunk:
                    break
                if len(head) < 16:
                    head += chunk[:16]
                data = tail + chunk
                jpegs += data.count(b"Content-Type: image/jpeg")
                tail = data[-32:]
                tail = tail[tail.rfind(b"\n") + 1 :]  # a partial marker may straddle two chunks
        if not head.startswith(b"HTTP/1.0 200") and not head.startswith(b"HTTP/1.1 200"):
            raise ValueError("preview answered {!r}".format(head))
        return jpegs

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def cycle(
    stop: threading.Event,
    timeline: Timeline,
    kind: str,
    times: Tuple[float, float, float],
    unplug: Callable[[], None],
    plug: Callable[[], None],
) -> threading.Thread:
    """A thread: unplug() for `down` s then plug() (also when stopped meanwhile), the first time
    `first` s from now, then every `period` s; times: (first, period, down)."""
    first, period, down = times

    def loop() -> None:
        wait = first
        while not stop.wait(wait):
            wait = period - down
            span = timeline.begin(kind)
            unplug()
            stop.wait(down)
            plug()
            timeline.end(span)

    thread = threading.Thread(target=loop, name=kind, daemon=True)
    thread.start()
    return thread


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def scrape(url: str) -> Dict[str, float]:
    """/metrics as {'name{label="value"}': value} (OSError/ValueError when it does not answer)."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=10) as reply:
        text = reply.read().decode("utf-8")
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join('{}="{}"'.format(k, v) for k, v in sorted(sample.labels.items()))
            values[sample.name + ("{" + labels + "}" if labels else "")] = float(sample.value)
    return values


def read_proc(pid: int) -> Optional[Dict[str, float]]:
    """rss_mb, fds and threads of a live process from /proc (None once it is gone)."""
    try:
        status = Path("/proc/{}/status".format(pid)).read_text()
        fds = len(os.listdir("/proc/{}/fd".format(pid)))
    except OSError:
        return None
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return {
        "rss_mb": int(fields["VmRSS"].split()[0]) / 1024.0,
        "fds": fds,
        "threads": int(fields["Threads"]),
    }


def export_tiny_bundle(folder: Path) -> Path:
    """The test suite's tiny model (YOLOv3-MobileNetV1 width 0.125, 96x96, seed 0) as a bundle."""
    import paddle

    from compress.export import export_bundle
    from compress.models import build_yolov3

    paddle.seed(0)
    model = build_yolov3("mobilenet_v1", len(CLASSES), width=0.125)
    model.eval()
    return export_bundle(model, CLASSES, (96, 96), folder / "soak-0.1.0.edgebundle", "soak", "0.1.0")


def run_has_mqtt() -> bool:
    """Whether this `edge-sdk run` has the --mqtt option (the MQTT sink)."""
    result = subprocess.run(EDGE_SDK + ["run", "--help"], capture_output=True, text=True, timeout=120)
    return "--mqtt" in result.stdout


def ping_gaps(pings: List[float], until: float, excused: List[Tuple[float, float]]) -> Tuple[float, float]:
    """(longest pause between WATCHDOG=1 pings, longest part of a pause outside the `excused` spans),
    seconds; the pause after the last ping runs to `until`."""
    longest = longest_flowing = 0.0
    pings = [ping for ping in pings if ping <= until]
    for start, end in zip(pings, pings[1:] + [until]):
        longest = max(longest, end - start)
        cursor = start
        for low, high in sorted(excused):
            if high <= cursor or low >= end:
                continue
            longest_flowing = max(longest_flowing, max(low, cursor) - cursor)
            cursor = max(cursor, high)
        longest_flowing = max(longest_flowing, end - cursor)
    return longest, longest_flowing


def level(samples: List[Dict[str, Any]], key: str) -> Optional[float]:
    return float(statistics.median(s[key] for s in samples)) if samples else None


def growth_table(samples: List[Dict[str, Any]], warmup_s: float) -> Dict[str, Dict[str, Optional[float]]]:
    """Per quantity: start (first steady samples), warmup (first steady samples after the warm-up),
    end (last steady samples), growth = end - warmup, and the fitted slope per hour after warm-up."""
    steady = [s for s in samples if s["steady"]]
    after = [s for s in steady if s["t"] >= warmup_s]
    table = {}
    for key in ("rss_mb", "fds", "threads"):
        row: Dict[str, Optional[float]] = {
            "start": level(steady[:STEADY_WINDOW], key),
            "warmup": level(after[:STEADY_WINDOW], key),
            "end": level(after[-STEADY_WINDOW:], key),
            "min": min((s[key] for s in samples), default=None),
            "max": max((s[key] for s in samples), default=None),
        }
        row["growth"] = None if row["warmup"] is None or len(after) < 2 * STEADY_WINDOW else row["end"] - row["warmup"]
        if len(after) >= 2:
            slope = np.polyfit([s["t"] for s in after], [s[key] for s in after], 1)[0]
            row["per_hour"] = float(slope * 3600.0)
        else:
            row["per_hour"] = None
        table[key] = row
    return table


def run_soak(
    minutes: float,
    bundle: Optional[Path] = None,
    out: Optional[Path] = None,
    watchdog_s: float = WATCHDOG_S,
    log: Callable[[str], None] = lambda m: print(m, file=sys.stderr, flush=True),
) -> Dict[str, Any]:
    """Soak `edge-sdk run` for `minutes` (counted from READY=1) and return every number (see the
    module docstring); `out`: where soak.png and the logs go (a temporary folder by default)."""
    out = Path(out or tempfile.mkdtemp(prefix="soak-"))
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="soak-run-"))  # unix socket paths must stay short
    if bundle is None:
        log("exporting the tiny bundle")
        bundle = export_tiny_bundle(work)
    mosquitto = shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if os.access("/usr/sbin/mosquitto", os.X_OK) else None
    )
    mqtt = run_has_mqtt()
    notes = []
    if not mqtt:
        notes.append("edge-sdk run has no --mqtt: no broker restarts")
    elif mosquitto is None:
        notes.append("mosquitto is not installed: no broker restarts")
        mqtt = False

    camera = MjpegCamera()
    cable = PtyCable(work / "ttySOAK")
    cable.plug()
    watchdog = WatchdogListener(work / "notify.sock")
    broker = Broker(mosquitto, work) if mqtt and mosquitto else None
    if broker is not None:
        broker.start()
    preview_port, metrics_port = free_port(), free_port()
    metrics_url = "http://127.0.0.1:{}/metrics".format(metrics_port)
    command = EDGE_SDK + [
        "run",
        "--source",
        camera.url,
        "--bundle",
        str(bundle),
        "--threads",
        "1",
        "--serial",
        str(cable.link),
        "--preview",
        "127.0.0.1:{}".format(preview_port),
        "--metrics",
        "127.0.0.1:{}".format(metrics_port),
    ]
    if broker is not None:
        command += ["--mqtt", "mqtt://127.0.0.1:{}/edge-sdk/soak".format(broker.port)]
    env = dict(
        os.environ,
        NOTIFY_SOCKET=str(watchdog.path),
        WATCHDOG_USEC=str(int(watchdog_s * 1e6)),
        PYTHONUNBUFFERED="1",
    )
    runtime_log = out / "runtime.log"
    stop = threading.Event()
    samples: List[Dict[str, Any]] = []
    scrapes = {"ok": 0, "failed": 0}
    last_metrics: Dict[str, float] = {}
    threads: List[threading.Thread] = []
    preview: Optional[PreviewClients] = None
    died_at: Optional[float] = None
    ready_s: Optional[float] = None
    with open(runtime_log, "wb") as log_file:
        started = _now()
        timeline = Timeline(started)
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=env)
        log("edge-sdk run (pid {}): {}".format(process.pid, " ".join(command[2:])))
        try:
            while watchdog.ready is None and process.poll() is None and _now() - started < 300:
                time.sleep(0.1)
            ready_s = timeline.rel(watchdog.ready) if watchdog.ready is not None else None
            if ready_s is None:
                log("no READY=1 from the runtime (see {})".format(runtime_log))
            else:
                log("ready after {:.1f} s; soaking for {:g} min".format(ready_s, minutes))
                ends = _now() + minutes * 60.0
                cycles = [("camera", CAMERA_CYCLE, camera.unplug, camera.plug)]
                cycles.append(("serial", SERIAL_CYCLE, cable.unplug, cable.plug))
                if broker is not None:
                    cycles.append(("broker", BROKER_CYCLE, broker.stop, broker.start))
                threads += [cycle(stop, timeline, *arguments) for arguments in cycles]
                preview = PreviewClients("127.0.0.1", preview_port, timeline).start()
                next_sample = _now()
                next_report = _now() + 60.0
                while _now() < ends:
                    if process.poll() is not None:
                        died_at = timeline.rel()
                        log("the runtime exited with {} after {:.0f} s".format(process.returncode, died_at))
                        break
                    scrape_started = _now()
                    try:
                        last_metrics = scrape(metrics_url)
                        scrapes["ok"] += 1
                        scraped = True
                    except (OSError, ValueError):
                        scrapes["failed"] += 1
                        scraped = False
                    time.sleep(0.3)  # the scrape's server thread finishes
                    quiet = preview.quiet_since()
                    sample = read_proc(process.pid)
                    if sample is not None:
                        sample["t"] = timeline.rel()
                        sample["steady"] = (
                            scraped
                            and quiet is not None
                            and _now() - quiet >= PREVIEW_LINGER_S
                            and links_up(last_metrics, broker is not None)
                            and not timeline.disrupted_since(scrape_started)
                        )
                        samples.append(sample)
                    if _now() >= next_report:
                        next_report += 60.0
                        if sample is not None:
                            log(
                                "{:5.1f} min: rss {:.1f} MB, {} fds, {} threads, {:.0f} frames".format(
                                    sample["t"] / 60.0,
                                    sample["rss_mb"],
                                    sample["fds"],
                                    sample["threads"],
                                    last_metrics.get("edge_sdk_frames_processed_total", 0.0),
                                )
                            )
                    next_sample += SAMPLE_PERIOD_S
                    time.sleep(max(0.0, next_sample - _now()))
        finally:
            stop.set()
            for thread in threads:
                thread.join()
            if preview is not None:
                preview.close()
            soak_end = timeline.rel()
            exit_code = _stop_runtime(process)
            watchdog.close()
            cable.unplug()
            camera.close()
            if broker is not None:
                broker.close()
    log_text = runtime_log.read_text(errors="replace")
    result = _summarize(
        minutes=minutes,
        ready_s=ready_s,
        soak_end=soak_end,
        died_at=died_at,
        exit_code=exit_code,
        tracebacks=log_text.count("Traceback (most recent call last)"),
        samples=samples,
        timeline=timeline,
        watchdog=watchdog,
        watchdog_s=watchdog_s,
        preview=preview,
        scrapes=scrapes,
        cable=cable,
        camera=camera,
        metrics=last_metrics,
        mqtt=broker is not None,
        notes=notes,
    )
    result["runtime_log"] = str(runtime_log)
    result["samples_json"] = str(out / "samples.json")
    (out / "samples.json").write_text(json.dumps({"samples": samples, "spans": timeline.spans}))
    result["png"] = str(plot(result, samples, timeline, soak_end, out / "soak.png"))
    shutil.rmtree(work, ignore_errors=True)
    return result


def links_up(metrics: Dict[str, float], mqtt: bool) -> bool:
    """Every link up by the runtime's own account: source state ok, serial (and MQTT) connected."""
    up = metrics.get('edge_sdk_source_state{state="ok"}') == 1.0 and metrics.get("edge_sdk_serial_connected") == 1.0
    return up and (not mqtt or metrics.get("edge_sdk_mqtt_connected", 1.0) == 1.0)


def _stop_runtime(process: subprocess.Popen) -> Optional[int]:
    """SIGTERM and the exit status (killed after 60 s: None)."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        return None


def _summarize(**k: Any) -> Dict[str, Any]:
    timeline: Timeline = k["timeline"]
    soak_end: float = k["soak_end"]
    ready_s = k["ready_s"]
    samples = k["samples"]
    warmup_s = (ready_s or 0.0) + k["minutes"] * 60.0 / 4.0
    table = growth_table(samples, warmup_s)
    outages = timeline.closed("camera", soak_end)
    camera: MjpegCamera = k["camera"]
    # Frames cannot flow from an unplug until the runtime's stream gets its first frame again.
    reconnected = [next((t for t in camera.streams_started if t >= timeline.t0 + e), None) for _, e in outages]
    reconnect_delays = [t - (timeline.t0 + e) for (_, e), t in zip(outages, reconnected) if t is not None]
    excused = [(timeline.t0 + s, timeline.t0 + soak_end if t is None else t) for (s, _), t in zip(outages, reconnected)]
    pings = k["watchdog"].pings
    longest, longest_flowing = ping_gaps(pings, timeline.t0 + soak_end, excused) if pings else (None, None)
    cable: PtyCable = k["cable"]
    completed_plugs = cable.messages_per_plug[:-1]  # the last plug may be cut short by the end
    preview: Optional[PreviewClients] = k["preview"]
    metrics = k["metrics"]
    crashes = int(k["died_at"] is not None or k["exit_code"] != 0) + k["tracebacks"]
    result: Dict[str, Any] = {
        "minutes": k["minutes"],
        "ready_s": ready_s,
        "warmup_end_s": warmup_s,
        "soak_end_s": soak_end,
        "crashes": crashes,
        "exit_code": k["exit_code"],
        "died_at_s": k["died_at"],
        "tracebacks": k["tracebacks"],
        "samples": len(samples),
        "steady_samples": sum(1 for s in samples if s["steady"]),
        "steady_after_warmup": sum(1 for s in samples if s["steady"] and s["t"] >= warmup_s),
        "rss_mb": table["rss_mb"],
        "fds": table["fds"],
        "threads": table["threads"],
        "watchdog": {
            "interval_s": k["watchdog_s"],
            "pings": len(pings),
            "max_gap_s": longest,
            "max_gap_while_frames_can_flow_s": longest_flowing,
        },
        "camera": {
            "outages": len(outages),
            "reconnected": len(reconnect_delays),
            "max_reconnect_s": max(reconnect_delays, default=None),
        },
        "disruptions": {
            "camera_outages": len(outages),
            "serial_pulls": len(timeline.closed("serial", soak_end)),
            "broker_restarts": len(timeline.closed("broker", soak_end)),
            "preview_clients": preview.clients if preview else 0,
            "scrapes": k["scrapes"]["ok"] + k["scrapes"]["failed"],
        },
        "preview": {
            "clients": preview.clients if preview else 0,
            "failed": preview.failed if preview else 0,
            "with_frames": preview.with_frames if preview else 0,
            "jpegs": preview.jpegs if preview else 0,
        },
        "scrapes": dict(k["scrapes"]),
        "serial": {
            "plugs": len(cable.messages_per_plug),
            "completed_plugs_with_messages": sum(1 for n in completed_plugs if n > 0),
            "completed_plugs": len(completed_plugs),
            "messages": sum(cable.messages_per_plug),
            "rejected": cable.decoder.rejected,
        },
        "metrics": {
            name: value
            for name, value in sorted(metrics.items())
            if name.startswith(("edge_sdk_frames_", "edge_sdk_source_reconnects", "edge_sdk_serial_", "edge_sdk_mqtt_"))
            and not name.endswith("_created")
        },
        "mqtt": k["mqtt"],
        "notes": k["notes"],
    }
    result["targets"] = {
        "zero crashes": crashes == 0,
        "fds flat": table["fds"]["growth"] == 0,
        "threads flat": table["threads"]["growth"] == 0,
        "RSS growth < {:g} MB".format(RSS_TARGET_MB): table["rss_mb"]["growth"] is not None
        and table["rss_mb"]["growth"] < RSS_TARGET_MB,
        "watchdog within {:g} s".format(k["watchdog_s"]): longest_flowing is not None
        and longest_flowing <= k["watchdog_s"],
        "preview answered": preview is not None and preview.clients > 0 and preview.failed == 0,
        "scrapes answered": k["scrapes"]["ok"] > 0 and k["scrapes"]["failed"] == 0,
        "camera reconnected": len(outages) > 0 and all(t is not None for t in reconnected[:-1]),
        "serial resumed": len(completed_plugs) > 0 and all(n > 0 for n in completed_plugs),
    }
    result["passed"] = all(result["targets"].values())
    return result


def plot(result: Dict[str, Any], samples: List[Dict[str, Any]], timeline: Timeline, end: float, path: Path) -> Path:
    """RSS, fds and threads against minutes, steady samples as dots, disruptions shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    spans = {
        "camera": ("camera unplugged", "tab:red"),
        "serial": ("serial pulled", "tab:blue"),
        "broker": ("broker down", "tab:green"),
    }
    figure, axes = plt.subplots(3, 1, figsize=(11, 8), sharex=True)
    times = np.array([s["t"] for s in samples]) / 60.0
    for axis, (key, label) in zip(axes, (("rss_mb", "RSS (MB)"), ("fds", "open fds"), ("threads", "threads"))):
        values = [s[key] for s in samples]
        axis.plot(times, values, color="0.6", linewidth=0.8, label="every sample")
        steady = [(t, v) for t, v, s in zip(times, values, samples) if s["steady"]]
        if steady:
            axis.plot(*zip(*steady), "o", color="black", markersize=2.5, label="steady samples")
        for kind, (name, colour) in spans.items():
            for index, (start, stop) in enumerate(timeline.closed(kind, end)):
                axis.axvspan(
                    start / 60.0, stop / 60.0, color=colour, alpha=0.18, linewidth=0, label=None if index else name
                )
        sessions = timeline.closed("preview", end)
        if sessions:
            low = min(values) if values else 0
            for index, (start, stop) in enumerate(sessions):
                axis.plot(
                    [start / 60.0, stop / 60.0],
                    [low, low],
                    color="tab:purple",
                    linewidth=3,
                    alpha=0.5,
                    label=None if index else "preview client",
                )
        axis.axvline(result["warmup_end_s"] / 60.0, color="tab:orange", linestyle="--", label="end of warm-up")
        if result["ready_s"] is not None:
            axis.axvline(result["ready_s"] / 60.0, color="0.3", linestyle=":", label="READY=1")
        row = result[key]
        growth = row["growth"]
        axis.set_ylabel(label)
        if key != "rss_mb":
            axis.yaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_title(
            "{}: start {}, after warm-up {}, end {}, growth {}".format(
                label, _fmt(row["start"]), _fmt(row["warmup"]), _fmt(row["end"]), _fmt(growth)
            ),
            fontsize=9,
            loc="left",
        )
        axis.grid(alpha=0.3)
    axes[-1].set_xlabel("minutes since edge-sdk run started")
    figure.suptitle(
        "edge-sdk run soak, {:g} min: {}".format(
            result["minutes"], "all targets met" if result["passed"] else "targets missed"
        )
    )
    figure.legend(
        *axes[0].get_legend_handles_labels(), loc="upper center", ncol=8, fontsize=7, bbox_to_anchor=(0.5, 0.955)
    )
    figure.tight_layout(rect=(0, 0, 1, 0.93))
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def _fmt(value: Optional[float]) -> str:
    if value is None:
        return "-"
    return "{:.0f}".format(value) if float(value).is_integer() else "{:.1f}".format(value)


def print_table(result: Dict[str, Any]) -> None:
    print(
        "soak of edge-sdk run: {:g} min after READY ({:.0f} s to ready)".format(
            result["minutes"], result["ready_s"] or 0
        )
    )
    print("{:<10}{:>9}{:>14}{:>9}{:>9}{:>10}".format("", "start", "after warm-up", "end", "growth", "per hour"))
    for key, label in (("rss_mb", "RSS MB"), ("fds", "fds"), ("threads", "threads")):
        row = result[key]
        print(
            "{:<10}{:>9}{:>14}{:>9}{:>9}{:>10}".format(
                label,
                _fmt(row["start"]),
                _fmt(row["warmup"]),
                _fmt(row["end"]),
                _fmt(row["growth"]),
                _fmt(row["per_hour"]),
            )
        )
    print(
        "samples {} ({} steady, {} after warm-up); crashes {} (exit {}, tracebacks {})".format(
            result["samples"],
            result["steady_samples"],
            result["steady_after_warmup"],
            result["crashes"],
            result["exit_code"],
            result["tracebacks"],
        )
    )
    d, w = result["disruptions"], result["watchdog"]
    print(
        "disruptions: {} camera outages, {} serial pulls, {} broker restarts, {} preview clients, {} scrapes".format(
            d["camera_outages"], d["serial_pulls"], d["broker_restarts"], d["preview_clients"], d["scrapes"]
        )
    )
    print(
        "watchdog {:g} s: {} pings, longest pause {} s, {} s while frames can flow".format(
            w["interval_s"], w["pings"], _fmt(w["max_gap_s"]), _fmt(w["max_gap_while_frames_can_flow_s"])
        )
    )
    c = result["camera"]
    print(
        "camera: reconnected after {} of {} outages, at most {} s after it came back".format(
            c["reconnected"], c["outages"], _fmt(c["max_reconnect_s"])
        )
    )
    for note in result["notes"]:
        print("note: " + note)
    for target, met in result["targets"].items():
        print("{:<28}{}".format(target, "ok" if met else "MISSED"))
    print("plot: {}".format(result["png"]))


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="soak length after READY=1 (default 30)")
    parser.add_argument("--bundle", type=Path, help="bundle to run (default: the tiny test model, exported)")
    parser.add_argument("--out", type=Path, default=Path("soak-out"), help="folder for soak.png and the logs")
    parser.add_argument("--json", action="store_true", help="print every number as one JSON line at the end")
    args = parser.parse_args(argv)
    if args.minutes <= 0:
        parser.error("--minutes must be positive")
    result = run_soak(args.minutes, bundle=args.bundle, out=args.out)
    print_table(result)
    if args.json:
        print(json.dumps(result))
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
