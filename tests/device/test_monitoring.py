"""`edge-sdk run --metrics`: scraped by a real Prometheus server (Debian package `prometheus`, started
here on loopback with its own config and storage), /metrics on the preview server, the preview page
in headless Chromium, and the fleet alert rules of docs/monitoring checked by promtool."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from tests.device.test_preview import _chromium, _run_chromium
from tests.device.test_run_cli import EDGE_SDK, edge_sdk, write_video
from tests.device.test_serial_sink import PtyReader

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "docs" / "monitoring" / "edge-sdk-alerts.yml"
FLEET_CONFIG = REPO / "docs" / "monitoring" / "prometheus-fleet.yml"
RULE_TESTS = REPO / "docs" / "monitoring" / "edge-sdk-alerts.test.yml"
STAGES = ("preprocess", "inference", "postprocess", "sinks", "end_to_end")
needs_prometheus = pytest.mark.skipif(
    shutil.which("prometheus") is None or shutil.which("promtool") is None,
    reason="prometheus is not installed (Debian: apt-get install --no-install-recommends prometheus)",
)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until(what: str, check, timeout: float = 60.0, every: float = 0.2):
    """Poll check() until it returns something truthy; fail naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail("gave up waiting for " + what)
        time.sleep(every)


def http_get(url: str, timeout: float = 5.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read()


class Runtime:
    """`edge-sdk run` in a subprocess with metrics, preview and a serial port (a pty); stderr collected."""

    def __init__(self, bundle: Path, video: Path) -> None:
        self.serial = PtyReader()
        self.preview_port = free_port()
        self.process = subprocess.Popen(
            EDGE_SDK
            + ["run", "--source", str(video), "--bundle", str(bundle), "--loop", "--realtime", "--fps", "15"]
            + ["--metrics", "127.0.0.1:0", "--preview", "127.0.0.1:{}".format(self.preview_port)]
            + ["--serial", self.serial.name, "--score-threshold", "0", "--threads", "1"],
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
        )
        self.stderr: list = []
        self._reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._reader.start()
        match = wait_until("the 'metrics on' line", lambda: self._find(r"metrics on http://127\.0\.0\.1:(\d+)/metrics"))
        self.metrics_url = "http://127.0.0.1:{}/metrics".format(match.group(1))
        self.preview_url = "http://127.0.0.1:{}/".format(self.preview_port)

    def _read_stderr(self) -> None:
        for line in self.process.stderr:
            self.stderr.append(line)

    def _find(self, pattern: str):
        assert self.process.poll() is None, "edge-sdk run ended early:\n" + "".join(self.stderr)
        for line in list(self.stderr):
            match = re.search(pattern, line)
            if match:
                return match
        return None

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=60)
        self._reader.join(timeout=10)
        self.serial.unplug()
        return code


@pytest.fixture(scope="module")
def runtime(tiny_bundle, tmp_path_factory):
    video = write_video(tmp_path_factory.mktemp("monitoring") / "camera.avi", frames=30)
    running = Runtime(tiny_bundle, video)
    wait_until(
        "frames to flow",
        lambda: re.search(rb"^edge_sdk_frames_processed_total [1-9]", http_get(running.metrics_url), re.M),
    )
    yield running
    code = running.stop()
    assert code == 0, "".join(running.stderr)
    assert "Traceback" not in "".join(running.stderr)


class Prometheus:
    """A real Prometheus server on loopback scraping `target` (HOST:PORT) every second."""

    def __init__(self, target: str, folder: Path) -> None:
        config = folder / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            "scrape_configs:\n  - job_name: edge-sdk\n    static_configs:\n"
            "      - targets: ['{}']\n        labels: {{robot: test-robot}}\n".format(target)
        )
        self.url = "http://127.0.0.1:{}".format(free_port())
        self.log = folder / "prometheus.log"
        with open(self.log, "w") as log:
            self.process = subprocess.Popen(
                [
                    "prometheus",
                    "--config.file={}".format(config),
                    "--storage.tsdb.path={}".format(folder / "data"),
                    "--web.listen-address={}".format(self.url[len("http://") :]),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_until("prometheus to be ready", self._ready)

    def _ready(self) -> bool:
        assert self.process.poll() is None, "prometheus ended:\n" + self.log.read_text()[-3000:]
        try:
            return http_get(self.url + "/-/ready") is not None
        except OSError:
            return False

    def query(self, expression: str) -> list:
        """The instant vector of `expression`: [(labels, float value), ...]."""
        body = json.loads(http_get(self.url + "/api/v1/query?" + urllib.parse.urlencode({"query": expression})))
        assert body["status"] == "success", body
        return [(item["metric"], float(item["value"][1])) for item in body["data"]["result"]]

    def value(self, expression: str):
        """The value of a one-series expression, None while Prometheus has no such series."""
        result = self.query(expression)
        assert len(result) <= 1, result
        return result[0][1] if result else None

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture(scope="module")
def prometheus(runtime, tmp_path_factory):
    if shutil.which("prometheus") is None:
        pytest.skip("prometheus is not installed (Debian: apt-get install --no-install-recommends prometheus)")
    server = Prometheus(runtime.metrics_url.split("/")[2], tmp_path_factory.mktemp("prometheus"))
    yield server
    server.stop()


def test_a_real_prometheus_scrapes_the_runtime(runtime, prometheus, tiny_bundle):
    first = wait_until("a scraped frame count", lambda: prometheus.value("edge_sdk_frames_processed_total"))
    assert first > 0
    later = wait_until(
        "the frame count to grow",
        lambda: (
            (prometheus.value("edge_sdk_frames_processed_total") or 0) > first
            and prometheus.value("edge_sdk_frames_processed_total")
        ),
    )
    assert later > first
    assert prometheus.value('up{job="edge-sdk"}') == 1.0

    [(labels, value)] = prometheus.query("edge_sdk_bundle_info")
    assert value == 1.0
    assert labels["bundle"] == "tiny" and labels["version"] == "0.1.0" and labels["robot"] == "test-robot"
    assert labels["sha256"] == hashlib.sha256(tiny_bundle.read_bytes()).hexdigest()
    assert labels["precision"] == "fp32" and labels["device"] == "cpu"

    for stage in STAGES:
        count = prometheus.value('edge_sdk_stage_latency_seconds_count{{stage="{}"}}'.format(stage))
        assert count is not None and count > 0, stage
        assert prometheus.value('edge_sdk_stage_latency_seconds_sum{{stage="{}"}}'.format(stage)) > 0, stage
    median = prometheus.value(
        'histogram_quantile(0.5, rate(edge_sdk_stage_latency_seconds_bucket{stage="inference"}[10s]))'
    )
    assert 0 < median < 60
    assert prometheus.value("edge_sdk_fps") > 0
    assert prometheus.value("sum(edge_sdk_detections_total)") > 0
    assert prometheus.value('edge_sdk_source_state{state="ok"}') == 1.0
    assert prometheus.value('edge_sdk_source_state{state="reconnecting"}') == 0.0
    assert prometheus.value("edge_sdk_frames_dropped_total") >= 0
    assert prometheus.value("edge_sdk_source_reconnects_total") == 0
    assert prometheus.value("edge_sdk_serial_connected") == 1.0
    assert prometheus.value("edge_sdk_serial_sent_bytes_total") > 0
    assert prometheus.value("edge_sdk_serial_sent_messages_total") > 0
    assert prometheus.value("edge_sdk_serial_write_timeouts_total") == 0
    assert prometheus.value("edge_sdk_uptime_seconds") > 0
    assert prometheus.value("process_open_fds") > 0 and prometheus.value("process_resident_memory_bytes") > 0
    assert len(runtime.serial.messages) > 0  # the far end of the serial link really got them
    for labels, value in sorted(prometheus.query('{__name__=~"edge_sdk_.*",le=""}'), key=lambda s: s[0]["__name__"]):
        extra = {k: v for k, v in labels.items() if k not in ("__name__", "job", "instance", "robot")}
        print("scraped:", labels["__name__"], extra or "", value)  # shown with pytest -s


def test_the_preview_server_serves_the_same_metrics(runtime):
    text = http_get(runtime.preview_url + "metrics").decode()
    assert "# TYPE edge_sdk_frames_processed_total counter" in text
    assert re.search(r'^edge_sdk_bundle_info\{.*bundle="tiny".*\} 1\.0$', text, re.M)
    assert re.search(r'^edge_sdk_stage_latency_seconds_bucket\{le="\+Inf",stage="end_to_end"\} [1-9]', text, re.M)


@pytest.mark.skipif(_chromium() is None, reason="chromium is not installed (Debian: apt-get install chromium)")
def test_the_preview_page_says_what_is_running(runtime, tmp_path):
    stats = json.loads(http_get(runtime.preview_url + "stats.json"))
    assert stats["run"]["bundle"] == "tiny" and stats["run"]["links"] == {"serial": "connected"}
    dom = _run_chromium(runtime.preview_url, tmp_path, "--dump-dom")
    assert '<td id="bundle">tiny 0.1.0</td>' in dom
    assert '<td id="precision">fp32</td>' in dom
    assert re.search(r'<td id="device">cpu, fp32(, oneDNN)?, 1 thread</td>', dom)  # the predictor plan
    assert '<td id="serial">connected</td>' in dom and '<td id="mqtt">not used</td>' in dom
    uptime = re.search(r'<td id="uptime">([^<]*)</td>', dom).group(1)
    assert re.fullmatch(r"(\d+ h )?(\d+ min )?\d+ s", uptime), uptime


def test_without_prometheus_client_run_works_and_metrics_is_one_error_line(tiny_bundle, tmp_path):
    video = write_video(tmp_path / "camera.avi", frames=3)
    no_client = "import sys; sys.modules['prometheus_client'] = None; from edge_cli import main; main()"
    command = [sys.executable, "-c", no_client, "run", "--source", str(video), "--bundle", str(tiny_bundle)]
    result = subprocess.run(command + ["--threads", "1"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "frames 3" in result.stderr, result.stderr
    result = subprocess.run(command + ["--metrics", "127.0.0.1:0"], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1].startswith("error: --metrics needs prometheus-client")
    assert "Traceback" not in result.stderr


def test_a_busy_metrics_port_is_one_error_line(tiny_bundle, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = edge_sdk(
            "run", "--source", "demo", "--bundle", str(tiny_bundle), "--metrics", "127.0.0.1:{}".format(port)
        )
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1] == "error: metrics port {} on 127.0.0.1 is busy".format(port)


@needs_prometheus
def test_the_documented_alert_rules_pass_promtool():
    check = subprocess.run(["promtool", "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS" in check.stdout
    tested = subprocess.run(
        ["promtool", "test", "rules", str(RULE_TESTS)], capture_output=True, text=True, timeout=60, cwd=RULES.parent
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr
    fleet = subprocess.run(
        ["promtool", "check", "config", str(FLEET_CONFIG)], capture_output=True, text=True, timeout=60
    )
    assert fleet.returncode == 0, fleet.stdout + fleet.stderr


def test_the_field_guide_shows_the_checked_fleet_config():
    guide = (REPO / "docs" / "deploy-to-robot.md").read_text()
    assert "```yaml\n" + FLEET_CONFIG.read_text() + "```" in guide
