"""Per-stage latency statistics: a ring of the last samples (p50/p99 over them) and a cumulative
histogram since the start (for Prometheus)."""

from __future__ import annotations

import bisect
from collections import deque
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

# Upper bounds of the histogram buckets in milliseconds (a last, unbounded bucket follows).
BUCKETS_MS = (1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0)


class LatencyRing:
    """The last `size` samples of one stage's latency in milliseconds (p50/p99 over them), and every
    sample since the start counted into `buckets_ms` (upper bounds in ms)."""

    def __init__(self, size: int = 256, buckets_ms: Sequence[float] = BUCKETS_MS) -> None:
        self.samples: deque = deque(maxlen=size)
        self.bounds_ms = tuple(float(b) for b in buckets_ms)
        self._bucket_counts = [0] * (len(self.bounds_ms) + 1)
        self.count = 0
        self.total_ms = 0.0

    def add(self, milliseconds: float) -> None:
        value = float(milliseconds)
        self.samples.append(value)
        self._bucket_counts[bisect.bisect_left(self.bounds_ms, value)] += 1
        self.count += 1
        self.total_ms += value

    def percentile(self, q: float) -> Optional[float]:
        if not self.samples:
            return None
        return float(np.percentile(np.fromiter(self.samples, np.float64), q))

    def summary(self) -> Dict[str, Optional[float]]:
        return {"p50": self.percentile(50), "p99": self.percentile(99)}

    def histogram(self) -> Tuple[List[Tuple[float, int]], int, float]:
        """(cumulative buckets [(upper bound ms, samples <= it), ..., (inf, count)], count, sum in ms)."""
        buckets = []
        running = 0
        for bound, count in zip(self.bounds_ms + (float("inf"),), self._bucket_counts):
            running += count
            buckets.append((bound, running))
        return buckets, self.count, self.total_ms
