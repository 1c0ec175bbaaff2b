"""Prometheus metrics of `edge-sdk run`: `--metrics HOST:PORT` serves /metrics in the text format.

Needs the `monitoring` extra (prometheus-client); this module is imported only when --metrics is
given. Every value is read at scrape time from where the runtime already keeps it (the pipeline,
the source, the sinks, the telemetry: see device/status.py), so nothing is counted twice. Each run
has its own registry (never prometheus_client's global one). Names, all prefixed `edge_sdk_`:

    bundle_info{bundle,version,sha256,precision,device}  1 once the predictor is built
    uptime_seconds                                        since `run` started
    frames_processed_total, frames_captured_total, frames_dropped_total, fps, last_frame_age_seconds
    stage_latency_seconds{stage}                          histogram: preprocess, inference, postprocess,
                                                          sinks, end_to_end
    detections_total{class}                               boxes reported since the start
    source_state{state}                                   1 for the current state (ok, stale,
                                                          reconnecting, ended), 0 for the others
    source_reconnects_total
    <link>_connected, <link>_<count>_total, <link>_queued  per sink link (serial, mqtt): e.g.
                                                          serial_sent_bytes_total, serial_write_timeouts_total
    temperature_celsius{sensor}, gpu_load_percent, power_milliwatts{rail}   from the telemetry
plus prometheus-client's process_* (memory, open fds, CPU) and python_info.
"""

from __future__ import annotations

import threading
from typing import Any, Iterator, Tuple

from edge_sdk.errors import EdgeSdkError

from .status import LINK_GAUGES, RunStatus

SOURCE_STATES = ("ok", "stale", "reconnecting", "ended")
PREFIX = "edge_sdk_"


def _import_client() -> Any:
    try:
        import prometheus_client
    except ImportError:
        raise EdgeSdkError(
            "--metrics needs prometheus-client: pip install 'edge-sdk[monitoring]' (or prometheus-client)"
        ) from None
    return prometheus_client


class RunCollector:
    """A prometheus-client custom collector reading a `RunStatus` at each scrape."""

    def __init__(self, status: RunStatus) -> None:
        self.status = status

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
            InfoMetricFamily,
        )

        status = self.status
        if status.plan is not None:
            yield InfoMetricFamily(
                PREFIX + "bundle", "The running bundle and how its predictor runs.", value=status.info()
            )
        yield GaugeMetricFamily(PREFIX + "uptime_seconds", "Seconds since edge-sdk run started.", status.uptime_s())
        pipeline = status.pipeline
        if pipeline is not None:
            stats = pipeline.stats(max_age=0.5)
            totals = pipeline.totals()
            source = stats.get("source", {})
            yield CounterMetricFamily(
                PREFIX + "frames_processed", "Frames inferred and handed to the sinks.", totals["frames"]
            )
            yield CounterMetricFamily(
                PREFIX + "frames_captured", "Frames read from the source.", source.get("captured", totals["frames"])
            )
            yield CounterMetricFamily(
                PREFIX + "frames_dropped",
                "Frames the source captured but the detector had no time for (cameras and streams).",
                stats.get("dropped", 0),
            )
            yield GaugeMetricFamily(PREFIX + "fps", "Processed frames per second (last 64 frames).", stats["fps"])
            if stats.get("last_frame_age_s") is not None:
                yield GaugeMetricFamily(
                    PREFIX + "last_frame_age_seconds",
                    "Seconds since the last frame was processed.",
                    stats["last_frame_age_s"],
                )
            histogram = HistogramMetricFamily(
                PREFIX + "stage_latency_seconds",
                "Latency of each pipeline stage; end_to_end is capture to detections delivered.",
                labels=["stage"],
            )
            for stage, (buckets, _count, total_ms) in totals["latency_histograms"].items():
                histogram.add_metric(
                    [stage], [(_bound(upper_ms), count) for upper_ms, count in buckets], total_ms / 1000.0
                )
            yield histogram
            detections = CounterMetricFamily(
                PREFIX + "detections", "Boxes reported to the sinks, by class.", labels=["class"]
            )
            classes = list(status.bundle.manifest.classes)
            for class_id, count in sorted(totals["detections_by_class"].items()):
                name = classes[class_id] if 0 <= class_id < len(classes) else str(class_id)
                detections.add_metric([name], count)
            yield detections
            state = stats.get("source_state") or "ok"
            states = GaugeMetricFamily(
                PREFIX + "source_state", "1 for the source's current state, 0 for the others.", labels=["state"]
            )
            for name in SOURCE_STATES + (() if state in SOURCE_STATES else (state,)):
                states.add_metric([name], 1.0 if name == state else 0.0)
            yield states
            yield CounterMetricFamily(
                PREFIX + "source_reconnects", "Times the source was reopened.", source.get("reconnects", 0)
            )
            yield from _telemetry(stats)
        for link, counters in status.links().items():
            yield from _link(link, counters)


def _bound(upper_ms: float) -> str:
    return "+Inf" if upper_ms == float("inf") else repr(upper_ms / 1000.0)


def _telemetry(stats: dict) -> Iterator[Any]:
    from prometheus_client.core import GaugeMetricFamily

    temperatures = GaugeMetricFamily(
        PREFIX + "temperature_celsius", "Temperatures from tegrastats or sysfs.", labels=["sensor"]
    )
    for sensor, celsius in sorted((stats.get("temperatures") or {}).items()):
        temperatures.add_metric([sensor], celsius)
    yield temperatures
    power = GaugeMetricFamily(PREFIX + "power_milliwatts", "Power draw per rail (tegrastats).", labels=["rail"])
    for rail, milliwatts in sorted((stats.get("power_mw") or {}).items()):
        power.add_metric([rail], milliwatts)
    yield power
    if stats.get("gpu_load") is not None:
        yield GaugeMetricFamily(PREFIX + "gpu_load_percent", "GPU (GR3D) load in percent.", stats["gpu_load"])


def _link(link: str, counters: dict) -> Iterator[Any]:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    for key, value in sorted(counters.items()):
        name = "{}{}_{}".format(PREFIX, link, key)
        if key in LINK_GAUGES or isinstance(value, bool):
            yield GaugeMetricFamily(name, "{} link: {} (now).".format(link, key.replace("_", " ")), float(value))
        elif isinstance(value, (int, float)):
            yield CounterMetricFamily(name, "{} link: {} since the start.".format(link, key.replace("_", " ")), value)


class RunMetrics:
    """The run's registry (RunCollector plus process metrics) and, with `address`, its HTTP server.

    address: "HOST:PORT" (port 0 picks a free one, see `.port`); EdgeSdkError when it is busy.
    """

    def __init__(self, status: RunStatus, address: str) -> None:
        from device.sinks.preview import parse_address

        client = _import_client()
        self._client = client
        self.registry = client.CollectorRegistry(auto_describe=False)
        self.registry.register(RunCollector(status))
        client.ProcessCollector(registry=self.registry)
        client.PlatformCollector(registry=self.registry)
        host, port = parse_address(address, what="metrics")
        try:
            self._server, self._thread = client.start_http_server(port, addr=host, registry=self.registry)
        except OSError as error:
            if error.errno in (98, 48):  # EADDRINUSE on Linux, macOS
                raise EdgeSdkError("metrics port {} on {} is busy".format(port, host)) from None
            raise EdgeSdkError(
                "metrics cannot listen on {}:{}: {}".format(host, port, error.strerror or error)
            ) from None
        self.host = host
        self.port = int(self._server.server_address[1])
        self._closed = threading.Event()

    def exposition(self) -> Tuple[bytes, str]:
        """(body, content type) of /metrics, e.g. for the preview server."""
        return self._client.generate_latest(self.registry), self._client.CONTENT_TYPE_LATEST

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5.0)
