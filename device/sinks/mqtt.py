"""Detections and status events to an MQTT broker: `edge-sdk run --mqtt mqtt://HOST[:PORT]/TOPIC`.

Topics (payloads are the JSON-lines schema of device/sinks/jsonl.py, one object per message, QoS 1):

    TOPIC/detections   every frame: {"event": "frame", "frame_id", "timestamp", ..., "detections", "stats"}
    TOPIC/status       {"event": "status", "timestamp", "state", "message", ...} when the run starts
                       ("started", with "bundle": name, version, sha256, precision, device), the
                       source degrades or recovers ("reconnecting", "stale", "ok", "ended"), another
                       link drops or comes back ("serial-lost", "serial-restored"), the run stops
                       ("stopping"); the broker publishes "offline" (the last will) if the runtime
                       vanishes without saying goodbye.
    TOPIC/bundle       the running bundle (retained): what a subscriber joining later sees first;
                       "bundle-changed" goes to TOPIC/status when the broker held another one.

`write` and `status` only append to a bounded queue and return: paho's network thread and this
sink's publisher thread do all I/O, so a slow or absent broker never blocks inference. The queue is
ours (a deque of `queue` messages, status events in a small one of their own), not paho's
max_queued_messages: paho refuses the newest message when full, while a robot's operator wants the
newest frames, so a full queue drops its OLDEST message and counts it. At most `INFLIGHT` published
messages wait for their PUBACK inside paho, which re-sends them after a reconnect. paho reconnects
with back-off (0.5 s doubling to 8 s); the run starts even when the broker is down.

Needs the `monitoring` extra (paho-mqtt), imported only when --mqtt is given.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import socket
import threading
import time
from typing import Any, Deque, Dict, Optional, Sequence, Set, Tuple
from urllib.parse import parse_qs, urlsplit

from edge_sdk.errors import SinkError

from .jsonl import frame_record, status_record

log = logging.getLogger(__name__)

DEFAULT_PORT = 1883
DEFAULT_QUEUE = 1000
"""Messages kept while the broker is away: about 33 s of detections at 30 fps, ~1 MB."""
INFLIGHT = 20
"""Published messages waiting for their PUBACK at most (paho re-sends them after a reconnect)."""
MAX_QUEUED_STATUS = 64
WATCH_PERIOD_S = 0.5


def parse_mqtt_url(url: str) -> Tuple[str, int, str, int]:
    """mqtt://HOST[:PORT]/TOPIC[?queue=N] -> (host, port, topic, queue); SinkError when malformed."""
    parts = urlsplit(url)
    if parts.scheme != "mqtt":
        raise SinkError("--mqtt must look like mqtt://HOST[:PORT]/TOPIC, got {!r}".format(url))
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError:
        raise SinkError("--mqtt {!r}: the port must be a number from 1 to 65535".format(url)) from None
    topic = parts.path.strip("/")
    if not parts.hostname or not topic:
        raise SinkError("--mqtt {!r}: give a host and a topic, e.g. mqtt://broker:1883/plant/robot7".format(url))
    if "+" in topic or "#" in url:  # urlsplit reads "#..." as a fragment
        raise SinkError("--mqtt {!r}: the topic may not contain the wildcards + or #".format(url))
    options = parse_qs(parts.query)
    unknown = sorted(set(options) - {"queue"})
    if unknown:
        raise SinkError("--mqtt {!r}: unknown option {} (only ?queue=N)".format(url, unknown[0]))
    queue = DEFAULT_QUEUE
    if "queue" in options:
        text = options["queue"][-1]
        if not text.isdigit() or not 1 <= int(text) <= 1_000_000:
            raise SinkError("--mqtt {!r}: queue must be a number of messages from 1 to 1000000".format(url))
        queue = int(text)
    return parts.hostname, port, topic, queue


def check_mqtt(url: str) -> None:
    """SinkError when `url` is malformed or paho-mqtt is missing (before the run builds its predictor)."""
    parse_mqtt_url(url)
    _import_paho()


def _import_paho() -> Any:
    try:
        import paho.mqtt.client as mqtt
    except ImportError:
        raise SinkError("--mqtt needs paho-mqtt: pip install 'edge-sdk[monitoring]' (or paho-mqtt)") from None
    return mqtt


class MqttSink:
    """Publishes frames and status events to the broker of `url` (see the module's docstring).

    classes: class names for the detections. bundle: RunStatus.info()-like dict for "started" and
    TOPIC/bundle. reconnect_min, reconnect_max: seconds of paho's reconnect back-off.
    """

    link_name = "mqtt"  # counters() show in the status line, the JSON lines' stats, the preview and /metrics

    def __init__(
        self,
        url: str,
        classes: Sequence[str] = (),
        bundle: Optional[Dict[str, str]] = None,
        reconnect_min: float = 0.5,
        reconnect_max: float = 8.0,
    ) -> None:
        self.host, self.port, self.topic, self.max_queued = parse_mqtt_url(url)
        mqtt = _import_paho()
        self.classes = tuple(classes)
        self.bundle = dict(bundle or {})
        self._condition = threading.Condition()
        self._frames: Deque[dict] = collections.deque()
        self._status: Deque[dict] = collections.deque()
        self._unacked: Set[int] = set()
        self._early_acks: Set[int] = set()
        self._connected = False
        self._stopping = False
        self._closed = False
        self._connects = 0
        self._bundle_checked = False
        self._announce = False  # publish the retained TOPIC/bundle (after each connect)
        self._said_unreachable = False
        self._peers: Sequence[Any] = ()
        self._peer_state: Dict[str, bool] = {}
        self._counters = {"sent": 0, "dropped": 0, "reconnects": 0}
        client_id = "edge-sdk-{}-{}".format(socket.gethostname(), os.getpid())
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311)
        self._client.max_inflight_messages_set(INFLIGHT)
        self._client.max_queued_messages_set(0)  # unbounded inside paho: our deques are the bound
        self._client.reconnect_delay_set(min_delay=reconnect_min, max_delay=reconnect_max)  # type: ignore[arg-type]
        self._client.will_set(self._topic("status"), self._payload(status_record("offline", "connection lost")), qos=1)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_connect_fail = self._on_connect_fail
        self._client.on_publish = self._on_publish
        self._client.on_message = self._on_bundle_message
        started = "bundle {} {}".format(self.bundle.get("bundle", "?"), self.bundle.get("version", "?"))
        self.status("started", started, bundle=self.bundle)
        try:
            self._client.connect_async(self.host, self.port, keepalive=30)
        except (OSError, ValueError) as error:
            raise SinkError("--mqtt {}:{}: {}".format(self.host, self.port, error)) from None
        self._client.loop_start()
        self._thread = threading.Thread(target=self._run, name="mqtt-sink", daemon=True)
        self._thread.start()

    # The pipeline's side: appends to a deque, never touches the network.

    def write(self, frame, detections, stats: dict) -> None:
        self._append(self._frames, self.max_queued, frame_record(frame, detections, stats, self.classes))

    def status(self, state: str, message: str, **extra: Any) -> None:
        self._append(self._status, MAX_QUEUED_STATUS, status_record(state, message, **extra))

    def watch(self, sinks: Sequence[Any]) -> None:
        """Publish "<link>-lost" / "<link>-restored" when another sink's link (serial) drops or returns."""
        self._peers = [sink for sink in sinks if sink is not self and getattr(sink, "link_name", None)]

    def counters(self) -> Dict[str, object]:
        """connected (now), queued (waiting now, incl. unacknowledged), sent (acknowledged by the broker),
        dropped (pushed out of a full queue, or still unsent when the run stopped), reconnects."""
        with self._condition:
            result: Dict[str, object] = dict(self._counters)
            result["queued"] = len(self._frames) + len(self._status) + len(self._unacked)
            result["connected"] = self._connected
        return result

    def report(self) -> str:
        counts = self.counters()
        return "mqtt {}:{}/{}: {} messages sent, {} dropped (queue of {}), {} reconnects".format(
            self.host, self.port, self.topic, counts["sent"], counts["dropped"], self.max_queued, counts["reconnects"]
        )

    def close(self, timeout: float = 3.0) -> None:
        """Publish "stopping" and what is queued (up to `timeout` s; the rest counts as dropped), disconnect."""
        with self._condition:
            if self._closed:
                return
        self.status("stopping", "edge-sdk run is stopping")
        deadline = time.monotonic() + timeout
        with self._condition:
            self._closed = True
            while (self._frames or self._status or self._unacked or self._announce) and time.monotonic() < deadline:
                self._condition.wait(timeout=min(0.1, max(deadline - time.monotonic(), 0.0)))
            self._stopping = True
            self._counters["dropped"] += len(self._frames) + len(self._status) + len(self._unacked)
            self._frames.clear()
            self._status.clear()
            self._unacked.clear()
            self._condition.notify_all()
        self._thread.join(timeout=2.0)
        self._client.disconnect()
        self._client.loop_stop()

    # Internals.

    def _topic(self, leaf: str) -> str:
        return "{}/{}".format(self.topic, leaf)

    @staticmethod
    def _payload(record: dict) -> bytes:
        return json.dumps(record, allow_nan=False, separators=(",", ":")).encode("utf-8")

    def _append(self, queue: Deque[dict], limit: int, record: dict) -> None:
        with self._condition:
            if self._closed:
                return
            if len(queue) >= limit:
                queue.popleft()
                self._counters["dropped"] += 1
            queue.append(record)
            self._condition.notify_all()

    def _run(self) -> None:
        """Publish queued messages while connected, at most INFLIGHT unacknowledged; watch the peers' links."""
        next_watch = 0.0
        while True:
            with self._condition:
                while not self._stopping and not self._can_publish():
                    wait = next_watch - time.monotonic()
                    if wait <= 0:
                        break
                    self._condition.wait(timeout=wait)
                if self._stopping:
                    return
                leaf, record, retain = "", None, False
                if self._can_publish():
                    if self._announce:
                        self._announce = False
                        leaf, record, retain = "bundle", self.bundle, True
                    elif self._status:
                        leaf, record = "status", self._status.popleft()
                    else:
                        leaf, record = "detections", self._frames.popleft()
            if record is not None:
                self._publish(leaf, record, retain)
            if time.monotonic() >= next_watch:
                next_watch = time.monotonic() + WATCH_PERIOD_S
                self._watch_peers()

    def _can_publish(self) -> bool:
        """Connected, room in flight and something to send (caller holds the lock)."""
        pending = self._announce or self._status or self._frames
        return bool(self._connected and pending and len(self._unacked) < INFLIGHT)

    def _publish(self, leaf: str, record: dict, retain: bool = False) -> None:
        info = self._client.publish(self._topic(leaf), self._payload(record), qos=1, retain=retain)
        with self._condition:
            if info.mid in self._early_acks:  # the PUBACK came before publish() returned
                self._early_acks.discard(info.mid)
                self._counters["sent"] += 1
            else:
                self._unacked.add(info.mid)

    def _watch_peers(self) -> None:
        for peer in self._peers:
            name = str(peer.link_name)
            try:
                connected = bool(peer.counters().get("connected"))
            except Exception as error:  # a peer's counters must not stop the publisher
                log.debug("%s counters: %s", name, error)
                continue
            before = self._peer_state.get(name, True)
            self._peer_state[name] = connected
            if connected != before:
                where = getattr(peer, "port_name", "")
                self.status(
                    "{}-{}".format(name, "restored" if connected else "lost"),
                    "{} link {}{}".format(
                        name, "back" if connected else "lost", " ({})".format(where) if where else ""
                    ),
                )

    # paho's network thread.

    def _on_connect(self, client, _userdata, _flags, reason_code, _properties=None) -> None:
        if reason_code.is_failure:
            with self._condition:
                first, self._said_unreachable = not self._said_unreachable, True
            if first:
                log.warning("mqtt broker %s:%s refused the connection: %s", self.host, self.port, reason_code)
            return
        client.subscribe(self._topic("bundle"), qos=1)
        with self._condition:
            self._connected = True
            self._said_unreachable = False
            self._announce = bool(self.bundle)
            self._connects += 1
            if self._connects > 1:
                self._counters["reconnects"] += 1
            self._condition.notify_all()

    def _on_connect_fail(self, _client, _userdata) -> None:
        with self._condition:
            first, self._said_unreachable = not self._said_unreachable, True
        if first:
            log.warning("mqtt broker %s:%s unreachable; retrying in the background", self.host, self.port)

    def _on_disconnect(self, _client, _userdata, _flags, reason_code, _properties=None) -> None:
        with self._condition:
            self._connected = False
            self._said_unreachable = True  # the line below says it once
        if not self._stopping:
            log.warning("mqtt broker %s:%s lost (%s); reconnecting", self.host, self.port, reason_code)

    def _on_publish(self, _client, _userdata, mid, _reason_code, _properties=None) -> None:
        with self._condition:
            if mid in self._unacked:
                self._unacked.discard(mid)
                self._counters["sent"] += 1
            else:
                self._early_acks.add(mid)
            self._condition.notify_all()

    def _on_bundle_message(self, _client, _userdata, message) -> None:
        """TOPIC/bundle: the retained bundle of the previous run (once), then our own."""
        with self._condition:
            if self._bundle_checked:
                return
            self._bundle_checked = True
        try:
            previous = json.loads(message.payload.decode("utf-8"))
        except ValueError:
            previous = {}
        if (
            isinstance(previous, dict)
            and previous.get("sha256")
            and previous.get("sha256") != self.bundle.get("sha256")
        ):
            self.status(
                "bundle-changed",
                "{} {} -> {} {}".format(
                    previous.get("bundle"),
                    previous.get("version"),
                    self.bundle.get("bundle"),
                    self.bundle.get("version"),
                ),
                previous=previous,
                bundle=self.bundle,
            )
