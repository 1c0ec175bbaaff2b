"""Per-stage latency statistics: a ring of the last samples, p50/p99 over them."""

from __future__ import annotations

from collections import deque
from typing import Dict, Optional

import numpy as np


class LatencyRing:
    """The last `size` samples of one stage's latency in milliseconds; p50/p99 over them."""

    def __init__(self, size: int = 256) -> None:
        self.samples: deque = deque(maxlen=size)

    def add(self, milliseconds: float) -> None:
        self.samples.append(float(milliseconds))

    def percentile(self, q: float) -> Optional[float]:
        if not self.samples:
            return None
        return float(np.percentile(np.fromiter(self.samples, np.float64), q))

    def summary(self) -> Dict[str, Optional[float]]:
        return {"p50": self.percentile(50), "p99": self.percentile(99)}
