"""`edge-sdk run`: wire a source, the detector and the sinks, and keep the robot informed.

The run loop shows a one-line live status (fps, latency, dropped frames, detections), stops
cleanly on SIGINT/SIGTERM (sinks closed, exit 0), and speaks systemd's notify protocol when
started by a `Type=notify` unit: READY=1 once frames flow, WATCHDOG=1 only while they keep
flowing, STATUS=... with the same numbers as the status line. The notify protocol is one
datagram on the unix socket named by $NOTIFY_SOCKET, so no dependency is needed for it.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, TextIO, Tuple

from edge_sdk.errors import EdgeSdkError, SourceError


class SystemdNotifier:
    """sd_notify(3) in a few lines: datagrams "KEY=value\\n..." to $NOTIFY_SOCKET (a path, or
    "@name" for the abstract namespace). Without the variable every call is a no-op."""

    def __init__(self, address: Optional[str] = None) -> None:
        address = address if address is not None else os.environ.get("NOTIFY_SOCKET", "")
        self.address: Optional[str] = None
        self._socket: Optional[socket.socket] = None
        if address and hasattr(socket, "AF_UNIX"):
            self.address = "\0" + address[1:] if address.startswith("@") else address
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)

    @property
    def enabled(self) -> bool:
        return self._socket is not None

    def notify(self, **fields: Any) -> bool:
        """Send e.g. notify(READY=1, STATUS="warming up"); False when not under systemd or on error."""
        if self._socket is None or self.address is None:
            return False
        message = "\n".join("{}={}".format(key, value) for key, value in fields.items())
        try:
            self._socket.sendto(message.encode("utf-8", "replace"), self.address)
            return True
        except OSError:
            return False

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def watchdog_interval(default: float = 1.0) -> float:
    """Seconds between WATCHDOG=1 pings: a third of $WATCHDOG_USEC, or `default` without it."""
    try:
        usec = int(os.environ.get("WATCHDOG_USEC", "0"))
    except ValueError:
        usec = 0
    return usec / 3e6 if usec > 0 else default


def _fmt_ms(value: Optional[float]) -> str:
    return "-" if value is None else "{:.0f}".format(value)


def status_text(stats: Dict[str, Any]) -> str:
    """One line: "12.4 fps | e2e 81/120 ms (p50/p99) | infer 40 ms | dropped 3 | 2 det | frames 310 | mqtt down
    40 queued 2 dropped | source reconnecting (...)": each link (serial, mqtt) says up or down."""
    latency = stats.get("latency_ms", {})
    e2e = latency.get("end_to_end", {})
    infer = latency.get("inference", {})
    source = stats.get("source", {})
    text = "{:.1f} fps | e2e {}/{} ms (p50/p99) | infer {} ms | dropped {} | {} det | frames {}".format(
        stats.get("fps", 0.0),
        _fmt_ms(e2e.get("p50")),
        _fmt_ms(e2e.get("p99")),
        _fmt_ms(infer.get("p50")),
        stats.get("dropped", 0),
        stats.get("detections", 0),
        stats.get("frames", 0),
    )
    temperatures = stats.get("temperatures") or {}
    if temperatures:
        hottest = max(temperatures, key=temperatures.get)
        text += " | {} {:.0f}C".format(hottest, temperatures[hottest])
    if stats.get("gpu_load") is not None:
        text += " | gpu {}%".format(stats["gpu_load"])
    for name, counters in sorted((stats.get("links") or {}).items()):
        text += " | {} {}".format(name, "up" if counters.get("connected") else "down")
        if counters.get("queued"):
            text += " {} queued".format(counters["queued"])
        if counters.get("dropped"):
            text += " {} dropped".format(counters["dropped"])
    state = source.get("state")
    if state and state != "ok":
        text += " | source {}".format(state)
        if source.get("last_error") and state in ("reconnecting", "stale"):
            text += " ({})".format(source["last_error"])
    return text


class StatusLine:
    """The live status on a terminal (rewritten in place with \\r) or, when not a terminal, one
    line every `every` seconds (for the journal)."""

    def __init__(self, stream: TextIO = sys.stderr, refresh: float = 0.25, every: float = 10.0) -> None:
        self.stream = stream
        self.is_tty = bool(getattr(stream, "isatty", lambda: False)())
        self.interval = refresh if self.is_tty else every
        self._last = 0.0
        self._width = 0

    def update(self, text: str, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < self.interval:
            return
        self._last = now
        if self.is_tty:
            padded = text.ljust(self._width)
            self._width = len(text)
            self.stream.write("\r" + padded)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def finish(self, text: str) -> None:
        if self.is_tty and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
        self.stream.write(text + "\n")
        self.stream.flush()


@dataclass
class RunOptions:
    """Everything `edge-sdk run` takes; see its --help for each field."""

    source: str = "0"
    bundle: Optional[str] = None
    root: Optional[str] = None
    serial: Optional[str] = None
    baud: int = 115200
    serial_mode: str = "binary"
    preview: Optional[str] = None
    record: Optional[str] = None
    jsonl: Optional[str] = None
    coco_results: Optional[str] = None
    coco_gt: Optional[str] = None
    max_frames: Optional[int] = None
    precision: Optional[str] = None
    device: str = "auto"
    dla_core: Optional[int] = None
    threads: Optional[int] = None
    score_threshold: Optional[float] = None
    classes: Optional[Sequence[str]] = None
    width: Optional[int] = None
    height: Optional[int] = None
    fps: Optional[float] = None
    loop: bool = False
    realtime: bool = False
    open_timeout: Optional[float] = None
    engine_cache: Optional[str] = None
    trusted_keys: Optional[str] = None
    metrics: Optional[str] = None
    mqtt: Optional[str] = None

    def plan_options(self) -> Any:
        """The predictor options of this run (device.predictor.PlanOptions)."""
        from device.predictor import PlanOptions

        return PlanOptions(self.precision, self.device, self.dla_core, self.threads, self.engine_cache or None)


def store_trusted_keys(root: Optional[str] = None) -> Optional[Path]:
    """The store's keys/ folder when it holds public keys: a --bundle FILE must then be signed by one."""
    from device import store

    keys = Path(root or store.DEFAULT_ROOT) / store.KEYS
    if keys.is_dir() and any(p.suffix in (".pem", ".pub") for p in keys.iterdir()):
        return keys
    return None


def open_run_bundle(bundle: Optional[str], root: Optional[str], trusted_keys: Optional[str]) -> Any:
    """--bundle FILE (verified, signature required when the store or --trusted-key has keys), or the
    store's active version (re-hashed: nothing on disk is trusted without a check)."""
    if bundle:
        from edge_sdk.bundle import open_bundle

        return open_bundle(bundle, trusted_keys=trusted_keys or store_trusted_keys(root))
    from device.installed import active_bundle
    from device.store import DEFAULT_ROOT

    installed = active_bundle(root or DEFAULT_ROOT)
    installed.verify()
    return installed


def class_ids_for(names: Optional[Sequence[str]], classes: Sequence[str]) -> Optional[List[int]]:
    """Class names -> indices into `classes`; EdgeSdkError naming an unknown class."""
    if not names:
        return None
    ids = []
    for name in names:
        if name not in classes:
            raise EdgeSdkError("--classes: {!r} is not a class of this bundle ({})".format(name, ", ".join(classes)))
        ids.append(list(classes).index(name))
    return ids


class _SignalStop:
    """SIGINT/SIGTERM -> callback, for the duration of a with-block (main thread only)."""

    def __init__(self, on_signal: Callable[[int], None]) -> None:
        self.on_signal = on_signal
        self.previous: Dict[int, Any] = {}
        self.received: Optional[int] = None

    def _handle(self, signum: int, _frame: Any) -> None:
        self.received = signum
        self.on_signal(signum)

    def install(self) -> None:
        """(Re)install the handlers: Paddle installs its own SIGTERM handler when a predictor is built."""
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                previous = signal.signal(signum, self._handle)
                self.previous.setdefault(signum, previous)

    def __enter__(self) -> _SignalStop:
        self.install()
        return self

    def __exit__(self, *exc_info: object) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)


def _open_sinks(
    options: RunOptions, classes: Sequence[str], lossless: bool, status: Any, metrics: Optional[Any]
) -> List[Any]:
    """The sinks asked for; lossless: they wait for room rather than drop (a file or folder run)."""
    if not any((options.serial, options.jsonl, options.record, options.preview, options.coco_results, options.mqtt)):
        return []
    from device.sinks import open_sinks

    return list(
        open_sinks(
            serial=options.serial,
            baud=options.baud,
            serial_mode=options.serial_mode,
            jsonl=options.jsonl,
            record=options.record,
            preview=options.preview,
            coco_results=options.coco_results,
            coco_gt=options.coco_gt,
            classes=tuple(classes),
            lossless=lossless,
            run_status=status,
            metrics=metrics.exposition if metrics is not None else None,
            mqtt=options.mqtt,
        )
    )


def run(
    options: RunOptions, log: Callable[[str], None] = lambda m: print(m, file=sys.stderr, flush=True)
) -> Dict[str, Any]:
    """Run until the source ends, --max-frames, or SIGINT/SIGTERM; returns the final pipeline stats."""
    from device.detector import Detector
    from device.pipeline import Pipeline
    from device.sources import check_source
    from device.status import RunStatus
    from device.telemetry import Telemetry

    notifier = SystemdNotifier()
    stop_requested = threading.Event()
    pipeline_box: List[Any] = []

    def on_signal(signum: int) -> None:
        stop_requested.set()
        if pipeline_box:
            pipeline_box[0].stop()

    spec = check_source(options.source)  # a missing camera fails now, not after a minutes-long engine build
    if options.mqtt:  # so do a malformed --mqtt URL and a missing paho-mqtt
        from device.sinks.mqtt import check_mqtt

        check_mqtt(options.mqtt)
    sinks: List[Any] = []
    source = None
    detector = None
    telemetry = None
    metrics = None
    with _SignalStop(on_signal) as signals:
        notifier.notify(STATUS="opening the bundle")
        bundle = open_run_bundle(options.bundle, options.root, options.trusted_keys)
        try:
            log(
                "bundle {} {} ({}, {} classes) from {}".format(
                    bundle.manifest.name,
                    bundle.manifest.version,
                    bundle.manifest.precision,
                    len(bundle.manifest.classes),
                    bundle.path,
                )
            )
            class_ids = class_ids_for(options.classes, bundle.manifest.classes)
            if options.coco_results:  # a wrong --coco-gt fails now, not after the predictor is built
                from device.sinks.coco_results import check_coco_results

                check_coco_results(options.coco_results, bundle.manifest.classes, options.coco_gt)
            status = RunStatus(bundle)
            if options.metrics:  # before the predictor: a busy port fails now, not after an engine build
                from device.metrics import RunMetrics

                metrics = RunMetrics(status, options.metrics)
                log("metrics on http://{}:{}/metrics".format(metrics.host, metrics.port))
            notifier.notify(STATUS="building the predictor")
            detector = Detector(bundle, plan_options=options.plan_options(), class_ids=class_ids, log=log)
            signals.install()
            log("predictor: {}".format(detector.plan.describe()))
            status.plan = detector.plan
            if stop_requested.is_set():
                return {"frames": 0}
            source = _open_run_source(spec, options, notifier, log)
            sinks = _open_sinks(options, bundle.manifest.classes, not (spec.live or options.realtime), status, metrics)
            status.sinks = sinks
            telemetry = Telemetry().start()
            pipeline = Pipeline(source, detector, sinks, score_threshold=options.score_threshold, telemetry=telemetry)
            pipeline_box.append(pipeline)
            status.pipeline = pipeline
            if stop_requested.is_set():
                pipeline.stop()
            return _drive(pipeline, options, notifier, _runtime_status_file(options, bundle, log), log)
        finally:
            notifier.notify(STOPPING=1, STATUS="stopping")
            errors = []
            for sink in sinks:
                try:
                    sink.close()
                except Exception as exc:  # close every sink even if one fails
                    errors.append(exc)
                report = sink.report() if hasattr(sink, "report") else ""
                if report:
                    log(report)
            if source is not None:
                source.close()
            if telemetry is not None:
                telemetry.stop()
            if detector is not None:
                detector.close()
            if metrics is not None:
                metrics.close()
            bundle.close()
            notifier.close()
            if errors and sys.exc_info()[0] is None:
                raise errors[0]


def _open_run_source(spec: Any, options: RunOptions, notifier: SystemdNotifier, log: Callable[[str], None]) -> Any:
    """Open the run's source, saying so first (a network stream may take up to open_timeout s)."""
    from device.sources import STREAM_OPEN_TIMEOUT_S, open_source

    open_timeout = options.open_timeout or STREAM_OPEN_TIMEOUT_S
    what = spec.uri if spec.kind == spec.uri else "{} {}".format(spec.kind, spec.uri)  # "demo", "folder boards/"
    if spec.kind == "stream":
        message = "opening {} (gives up after {:g} s)".format(spec.uri, open_timeout)
    elif spec.live:
        message = "opening " + what
    else:
        message = "opening {}: {}".format(
            what, "paced like a camera (--realtime)" if options.realtime else "every frame"
        )
    log(message)
    notifier.notify(STATUS=message)
    return open_source(
        spec,
        width=options.width,
        height=options.height,
        fps=options.fps,
        loop=options.loop,
        realtime=options.realtime,
        open_timeout=open_timeout,
    )


def _runtime_status_file(options: RunOptions, bundle: Any, log: Callable[[str], None]) -> Any:
    """The store's runtime/status.json, which `edge-sdk status` (and so `fleet status`) reads."""
    from device.robot_status import RuntimeStatusFile
    from device.store import DEFAULT_ROOT

    manifest = bundle.manifest
    described = {"name": manifest.name, "version": manifest.version, "sha256": bundle.sha256}
    return RuntimeStatusFile(options.root or DEFAULT_ROOT, described, log)


def _drive(
    pipeline: Any, options: RunOptions, notifier: SystemdNotifier, status_file: Any, log: Callable[[str], None]
) -> Dict[str, Any]:
    status_line = StatusLine()
    ping_every = watchdog_interval()
    stale_after = max(2.0, ping_every * 3.0)
    state = {"ready": False, "last_ping": 0.0, "last_status": 0.0}

    def on_frame(p: Any) -> None:
        now = time.monotonic()
        flowing = p.last_frame_time is not None and now - p.last_frame_time < stale_after
        if flowing and not state["ready"]:
            state["ready"] = True
            notifier.notify(READY=1, STATUS="running")
        if flowing and now - state["last_ping"] >= ping_every:
            state["last_ping"] = now
            notifier.notify(WATCHDOG=1)
        if now - state["last_status"] >= 1.0:
            state["last_status"] = now
            stats = p.stats(max_age=0.5)
            text = status_text(stats)
            notifier.notify(STATUS=text)
            status_line.update(text)
            status_file.update(stats)

    stats = pipeline.run(max_frames=options.max_frames, on_frame=on_frame)
    status_line.finish("stopped: " + status_text(stats))
    return stats


def bench_bundle(
    bundle: Any,
    source: str = "demo",
    frames: int = 100,
    warmup: int = 5,
    precision: Optional[str] = None,
    device: str = "auto",
    dla_core: Optional[int] = None,
    threads: Optional[int] = None,
    width: int = 640,
    height: int = 480,
    rounds: int = 5,
) -> Dict[str, Any]:
    """Predictor-only FPS against full-pipeline FPS on the same bundle and the same source.

    predictor-only: `Detector.infer` alone (Paddle Inference: inputs in, boxes out) on source frames
    preprocessed before the clock starts; the most any pipeline can reach. full pipeline: what
    `edge-sdk run` does without sinks: the source pulled frame by frame, preprocessing, inference
    and postprocessing (overlapped or in turn as `device.pipeline.overlap_for` decides from the
    plan). The `frames` are split over `rounds`
    alternating rounds of both, so a change of machine load hits both sides alike; each figure is
    the median over rounds, and ratio is the median of the per-round ratios pipeline/predictor (at
    most about 1: the runtime's efficiency). Returns plan, predictor_fps, predictor_ms,
    pipeline_fps, ratio, round_ratios, e2e_p50_ms and e2e_p99_ms (capture to detections, ms),
    dropped, overlap (bool) and the last round's latency_ms per stage.
    """
    import numpy as np

    from device.detector import Detector, predictor_fps
    from device.pipeline import Pipeline
    from device.sources import open_source

    per_round = max(2, frames // max(1, rounds))
    predictor_rounds: List[Tuple[float, float]] = []
    pipeline_rates: List[float] = []
    end_to_end: List[float] = []
    dropped = 0
    with Detector(bundle, precision=precision, device=device, dla_core=dla_core, threads=threads) as detector:
        with open_source(source, width=width, height=height, loop=True) as frames_in:

            def next_images(count: int) -> List[Any]:
                images = []
                for _ in range(count):
                    frame = frames_in.read(10.0)
                    if frame is None:
                        raise SourceError("source {} gave no frame".format(source))
                    images.append(frame.image)
                return images

            predictor_fps(detector, next_images(1), 1, warmup)  # warm-up, not counted
            for _ in range(max(1, rounds)):
                predictor_rounds.append(predictor_fps(detector, next_images(per_round), per_round, 0))
                pipeline = Pipeline(frames_in, detector)
                marks: Dict[str, float] = {}

                def mark(p: Any, marks: Dict[str, float] = marks) -> None:
                    if p.frames == 1 and "start" not in marks:  # the worker thread is running from here
                        marks["start"] = time.perf_counter()

                stats = pipeline.run(max_frames=per_round + 1, on_frame=mark)
                elapsed = time.perf_counter() - marks["start"]
                pipeline_rates.append((stats["frames"] - 1) / elapsed if elapsed > 0 else 0.0)
                end_to_end.extend(pipeline.latency["end_to_end"].samples)
                dropped += stats["dropped"]
    predictor_rates = [rate for rate, _ in predictor_rounds]
    round_ratios = [pipe / pred if pred > 0 else 0.0 for pipe, pred in zip(pipeline_rates, predictor_rates)]
    return {
        "plan": detector.plan.describe(),
        "predictor_fps": float(np.median(predictor_rates)),
        "predictor_ms": float(np.median([ms for _, ms in predictor_rounds])),
        "pipeline_fps": float(np.median(pipeline_rates)),
        "ratio": float(np.median(round_ratios)),
        "round_ratios": round_ratios,
        "e2e_p50_ms": float(np.percentile(end_to_end, 50)),
        "e2e_p99_ms": float(np.percentile(end_to_end, 99)),
        "dropped": dropped,
        "overlap": pipeline.overlap,
        "latency_ms": stats["latency_ms"],
    }
