"""What `edge-sdk run` is running, in one object the preview page and the metrics read on request.

`RunStatus` knows the bundle, the predictor plan (once built), the sinks and the pipeline; it does
no counting of its own: frames and latencies live in the pipeline, dropped frames and reconnects in
the source, bytes sent and write timeouts in the sinks.

A sink that keeps a link (serial port, MQTT broker) has a `link_name` attribute ("serial", "mqtt")
and a `counters()` method returning {"connected": bool, ...}: monotonic counts (int), plus, for a
sink with a queue, "queued" (messages waiting now). Both the preview and /metrics show them.
"""

from __future__ import annotations

import time
from typing import Any, Dict, List, Optional, Sequence

# counters() keys that are a current value, not a count since the start.
LINK_GAUGES = ("connected", "queued")


class RunStatus:
    """bundle: the opened bundle (manifest, sha256). plan, pipeline and sinks are set as the run starts."""

    def __init__(self, bundle: Any) -> None:
        self.bundle = bundle
        self.plan: Optional[Any] = None
        self.pipeline: Optional[Any] = None
        self.sinks: List[Any] = []
        self.started_at = time.monotonic()

    def uptime_s(self) -> float:
        return time.monotonic() - self.started_at

    def info(self) -> Dict[str, str]:
        """bundle, version, sha256, precision (the predictor's, after any fallback) and device
        ("cpu" or "gpu"; "" and the manifest's precision until the predictor is built)."""
        manifest = self.bundle.manifest
        return {
            "bundle": str(manifest.name),
            "version": str(manifest.version),
            "sha256": str(getattr(self.bundle, "sha256", "")),
            "precision": str(self.plan.precision if self.plan is not None else manifest.precision),
            "device": str(self.plan.device if self.plan is not None else ""),
        }

    def links(self, sinks: Optional[Sequence[Any]] = None) -> Dict[str, Dict[str, Any]]:
        """{link name: the sink's counters()} for every sink with a link."""
        return link_counters(self.sinks if sinks is None else sinks)

    def describe(self) -> Dict[str, Any]:
        """For the preview page: info() plus plan (one line), links {name: "connected" | "disconnected"}
        and uptime_s."""
        result: Dict[str, Any] = dict(self.info())
        result["plan"] = self.plan.describe() if self.plan is not None else ""
        result["links"] = {
            name: "connected" if counters.get("connected") else "disconnected"
            for name, counters in self.links().items()
        }
        result["uptime_s"] = round(self.uptime_s(), 1)
        return result


def link_counters(sinks: Sequence[Any]) -> Dict[str, Dict[str, Any]]:
    """{link name: the sink's counters()} for every sink in `sinks` with a link."""
    result = {}
    for sink in sinks:
        name = getattr(sink, "link_name", None)
        if name and hasattr(sink, "counters"):
            result[str(name)] = dict(sink.counters())
    return result
