"""`edge-sdk run --mqtt` against a real Mosquitto broker started by the test on loopback: frames in
order and in the JSON-lines schema, status events, and a broker restart mid-run whose loss is at
most the bounded queue and is counted."""

from __future__ import annotations

import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import List, Tuple

import pytest

from device.runtime import status_text
from device.sinks.mqtt import parse_mqtt_url
from edge_sdk.errors import SinkError
from tests.device.test_run_cli import EDGE_SDK, edge_sdk, write_video

mqtt = pytest.importorskip("paho.mqtt.client", reason="paho-mqtt is not installed (the monitoring extra)")
needs_mosquitto = pytest.mark.skipif(
    shutil.which("mosquitto") is None, reason="mosquitto is not installed (apt-get install mosquitto)"
)

FRAME_FIELDS = {"event", "frame_id", "timestamp", "source_id", "source_name", "width", "height", "detections", "stats"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Broker:
    """mosquitto on 127.0.0.1:port with its own config; persistence keeps sessions over a restart."""

    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.folder = folder
        self.config = folder / "mosquitto.conf"
        self.config.write_text(
            "listener {} 127.0.0.1\nallow_anonymous true\nuser root\npersistence true\n"
            "persistence_location {}/\nmax_queued_messages 0\nlog_dest file {}\n".format(
                self.port, folder, folder / "mosquitto.log"
            )
        )
        self.process = None
        self.start()

    def start(self) -> None:
        self.process = subprocess.Popen(["mosquitto", "-c", str(self.config)], stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError("mosquitto exited: {}".format(self.process.stderr.read().decode()))
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not listen on port {}".format(self.port))

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # saves the persistence file
            self.process.wait(timeout=10)


@pytest.fixture
def broker(tmp_path):
    server = Broker(tmp_path)
    yield server
    server.stop()


class Subscriber:
    """A persistent-session QoS 1 subscriber to TOPIC/#: (topic, payload) in arrival order."""

    def __init__(self, port: int, topic: str) -> None:
        self.messages: List[Tuple[str, dict]] = []
        self.subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="test-subscriber", clean_session=False)
        self.client.reconnect_delay_set(min_delay=0.2, max_delay=1)
        self.client.on_connect = lambda client, *_: client.subscribe(topic + "/#", qos=1)
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert self.subscribed.wait(10)

    def _on_message(self, _client, _userdata, message) -> None:
        self.messages.append((message.topic, json.loads(message.payload.decode("utf-8"))))

    def frame_ids(self) -> List[int]:
        return [payload["frame_id"] for topic, payload in list(self.messages) if topic.endswith("/detections")]

    def states(self) -> List[str]:
        return [payload["state"] for topic, payload in list(self.messages) if topic.endswith("/status")]

    def wait_for(self, predicate, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate() and time.monotonic() < deadline:
            time.sleep(0.05)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def publish_retained(port: int, topic: str, payload: dict) -> None:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="test-publisher")
    client.connect("127.0.0.1", port)
    client.loop_start()
    client.publish(topic, json.dumps(payload), qos=1, retain=True).wait_for_publish(10)
    client.disconnect()
    client.loop_stop()


def final_counts(stderr: str) -> Tuple[int, int]:
    """(sent, dropped) from the run's last line about the broker."""
    match = re.search(r"mqtt 127\.0\.0\.1:\d+/\S+: (\d+) messages sent, (\d+) dropped", stderr)
    assert match, stderr
    return int(match.group(1)), int(match.group(2))


@needs_mosquitto
def test_frames_arrive_in_order_in_the_json_lines_schema_with_status_events(tiny_bundle, broker, tmp_path):
    publish_retained(broker.port, "edge/test/bundle", {"bundle": "old", "version": "0.1", "sha256": "00"})
    subscriber = Subscriber(broker.port, "edge/test")
    video = write_video(tmp_path / "camera.avi", frames=30)
    try:
        result = edge_sdk(
            "run",
            "--source",
            str(video),
            "--bundle",
            str(tiny_bundle),
            "--mqtt",
            "mqtt://127.0.0.1:{}/edge/test".format(broker.port),
            "--score-threshold",
            "0",
            "--threads",
            "1",
        )
        assert result.returncode == 0, result.stderr
        subscriber.wait_for(lambda: "stopping" in subscriber.states())
    finally:
        subscriber.close()
    frames = [payload for topic, payload in subscriber.messages if topic == "edge/test/detections"]
    assert [frame["frame_id"] for frame in frames] == list(range(30))
    assert all(set(frame) == FRAME_FIELDS and frame["event"] == "frame" for frame in frames)
    assert all(frame["width"] == 128 and frame["height"] == 96 for frame in frames)
    assert sum(len(frame["detections"]) for frame in frames) > 0
    assert set(frames[0]["detections"][0]) == {"class_id", "class", "score", "box"}
    assert frames[-1]["stats"]["links"]["mqtt"]["connected"] is True
    status = [payload for topic, payload in subscriber.messages if topic == "edge/test/status"]
    states = [s["state"] for s in status]
    assert states[0] == "started" and sorted(states[1:-1]) == ["bundle-changed", "ended"] and states[-1] == "stopping"
    assert status[0]["bundle"]["sha256"] and status[0]["bundle"]["bundle"] in status[0]["message"]
    changed = status[states.index("bundle-changed")]
    assert changed["previous"]["bundle"] == "old" and "old 0.1 -> " in changed["message"]
    announced = [payload for topic, payload in subscriber.messages if topic == "edge/test/bundle"]
    assert announced[-1]["sha256"] == status[0]["bundle"]["sha256"]
    assert final_counts(result.stderr) == (30 + 4 + 1, 0)  # frames, status events, the bundle (retained)
    assert "Traceback" not in result.stderr


@needs_mosquitto
def test_a_broker_restart_mid_run_loses_at_most_the_queue_and_counts_it(tiny_bundle, broker, tmp_path):
    pytest.importorskip("prometheus_client", reason="prometheus-client is not installed (the monitoring extra)")
    subscriber = Subscriber(broker.port, "edge/test")
    video = write_video(tmp_path / "camera.avi", frames=400)
    jsonl = tmp_path / "frames.jsonl"
    queue = 5
    metrics_port = free_port()
    run = subprocess.Popen(
        EDGE_SDK
        + [
            "run",
            "--source",
            str(video),
            "--realtime",
            "--fps",
            "20",
            "--bundle",
            str(tiny_bundle),
            "--mqtt",
            "mqtt://127.0.0.1:{}/edge/test?queue={}".format(broker.port, queue),
            "--jsonl",
            str(jsonl),
            "--metrics",
            "127.0.0.1:{}".format(metrics_port),
            "--threads",
            "1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        subscriber.wait_for(lambda: len(subscriber.frame_ids()) >= 20, timeout=120)
        assert run.poll() is None, run.communicate()[1]
        broker.stop()
        time.sleep(3.0)
        assert run.poll() is None  # the run goes on without its broker
        broker.start()
        before = len(subscriber.frame_ids())
        subscriber.wait_for(lambda: len(subscriber.frame_ids()) > before + 5)
        metrics = urllib.request.urlopen("http://127.0.0.1:{}/metrics".format(metrics_port), timeout=10).read()
        _, stderr = run.communicate(timeout=120)
        subscriber.wait_for(lambda: "stopping" in subscriber.states())
    finally:
        if run.poll() is None:
            run.kill()
        subscriber.close()
    assert run.returncode == 0, stderr
    processed = [
        line["frame_id"] for line in map(json.loads, jsonl.read_text().splitlines()) if line["event"] == "frame"
    ]
    received = subscriber.frame_ids()
    unique = list(dict.fromkeys(received))  # QoS 1 may deliver a message twice after a reconnect
    assert unique == sorted(unique) and set(unique) <= set(processed)  # in order
    assert unique[-1] == processed[-1]  # frames after the restart arrived
    missing = len(set(processed) - set(unique))
    sent, dropped = final_counts(stderr)
    assert dropped > 0  # 3 s without a broker at 20 fps overflow a queue of 5
    assert missing <= dropped  # every lost frame is counted
    assert "mqtt broker 127.0.0.1:{} lost".format(broker.port) in stderr
    scraped = dict(re.findall(r"^edge_sdk_mqtt_(\w+) (\S+)$", metrics.decode(), re.MULTILINE))
    assert scraped["connected"] == "1.0" and scraped["reconnects_total"] == "1.0"
    assert 0 < float(scraped["dropped_total"]) <= dropped and 0 < float(scraped["sent_total"]) < sent
    print("processed", len(processed), "received", len(unique), "duplicates", len(received) - len(unique))
    print("missing", missing, "sent", sent, "dropped", dropped)


def test_mqtt_urls_are_checked():
    assert parse_mqtt_url("mqtt://broker/plant/robot7") == ("broker", 1883, "plant/robot7", 1000)
    assert parse_mqtt_url("mqtt://10.0.0.2:1884/r7?queue=50") == ("10.0.0.2", 1884, "r7", 50)
    for url, words in [
        ("http://broker/t", "must look like"),
        ("mqtt://broker", "give a host and a topic"),
        ("mqtt://broker:99999/t", "port"),
        ("mqtt://broker/plant/#", "wildcards"),
        ("mqtt://broker/t?queue=0", "queue"),
        ("mqtt://broker/t?qos=2", "unknown option qos"),
    ]:
        with pytest.raises(SinkError, match=words):
            parse_mqtt_url(url)


def test_a_bad_mqtt_url_is_one_line_before_the_bundle_is_opened(tmp_path):
    video = write_video(tmp_path / "camera.avi", frames=2)
    missing = str(tmp_path / "missing.edgebundle")
    result = edge_sdk("run", "--source", str(video), "--bundle", missing, "--mqtt", "mqtt://broker")
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        "error: --mqtt 'mqtt://broker': give a host and a topic, e.g. mqtt://broker:1883/plant/robot7"
    ]


def test_without_paho_the_runtime_imports_and_mqtt_says_what_to_install(tmp_path):
    video = write_video(tmp_path / "camera.avi", frames=2)
    code = (
        "import sys\n"
        "sys.modules['paho'] = None\n"
        "import device.runtime, device.pipeline, device.sinks, device.sinks.jsonl, device.sinks.serial_sink\n"
        "from edge_cli import main\n"
        "sys.argv = ['edge-sdk', 'run', '--source', {!r}, '--mqtt', 'mqtt://127.0.0.1/t']\n"
        "main()\n"
    ).format(str(video))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1] == (
        "error: --mqtt needs paho-mqtt: pip install 'edge-sdk[monitoring]' (or paho-mqtt)"
    )


def test_the_status_line_says_whether_each_link_is_up():
    stats = {"links": {"mqtt": {"connected": False, "queued": 40, "dropped": 2}, "serial": {"connected": True}}}
    assert status_text(stats).endswith(" | mqtt down 40 queued 2 dropped | serial up")


def test_without_a_broker_the_run_goes_on_and_counts_what_it_could_not_send(tiny_bundle, tmp_path):
    video = write_video(tmp_path / "camera.avi", frames=5)
    port = free_port()  # nobody listens there
    url = "mqtt://127.0.0.1:{}/edge/test".format(port)
    result = edge_sdk("run", "--source", str(video), "--bundle", str(tiny_bundle), "--mqtt", url, "--threads", "1")
    assert result.returncode == 0, result.stderr
    assert "mqtt broker 127.0.0.1:{} unreachable; retrying in the background".format(port) in result.stderr
    assert final_counts(result.stderr) == (0, 5 + 3)  # the frames; started, ended, stopping


@needs_mosquitto
def test_a_pulled_serial_cable_is_published_as_status(broker, tmp_path):
    from device.sinks import close_all, open_sinks
    from tests.device.test_serial_sink import PtyReader

    subscriber = Subscriber(broker.port, "edge/test")
    link = tmp_path / "ttyROBOT"
    first = PtyReader()
    link.symlink_to(first.name)
    second = None
    sinks = open_sinks(serial=str(link), mqtt="mqtt://127.0.0.1:{}/edge/test".format(broker.port))
    try:
        subscriber.wait_for(lambda: "started" in subscriber.states())
        first.unplug()  # the heartbeat's next write fails: the serial sink closes the port
        link.unlink()
        subscriber.wait_for(lambda: "serial-lost" in subscriber.states())
        second = PtyReader()
        link.symlink_to(second.name)
        subscriber.wait_for(lambda: "serial-restored" in subscriber.states())
    finally:
        close_all(sinks)
        if second is not None:
            second.unplug()
        subscriber.close()
    status = {payload["state"]: payload for topic, payload in subscriber.messages if topic.endswith("/status")}
    assert list(status) == ["started", "serial-lost", "serial-restored", "stopping"]
    assert status["serial-lost"]["message"] == "serial link lost ({})".format(link)
