"""device.latency: the latency ring's percentiles."""

from __future__ import annotations

import pytest

from device.latency import LatencyRing


def test_latency_ring_percentiles():
    ring = LatencyRing(size=100)
    assert ring.summary() == {"p50": None, "p99": None}
    for value in range(1, 201):
        ring.add(value)
    assert ring.percentile(50) == pytest.approx(150.5)
    assert ring.percentile(99) == pytest.approx(199.01)
