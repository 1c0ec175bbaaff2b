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


def test_the_histogram_counts_every_sample_since_the_start_cumulatively():
    ring = LatencyRing(size=2, buckets_ms=(10, 100))
    for value in (5, 10, 10.5, 99, 1000):
        ring.add(value)
    buckets, count, total = ring.histogram()
    assert buckets == [(10.0, 2), (100.0, 4), (float("inf"), 5)]  # le: a sample equal to a bound is in it
    assert count == 5 and total == pytest.approx(1124.5)
    assert list(ring.samples) == [99.0, 1000.0]  # the ring still keeps only the last `size`
