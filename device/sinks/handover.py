"""Handing work to a sink's writer thread: dropped when the queue is full, or waited for."""

from __future__ import annotations

import queue
import threading
from typing import Any


def hand_over(work: queue.Queue[Any], item: Any, writer: threading.Thread, wait: bool) -> bool:
    """Put `item` on the writer thread's queue; False when it was not taken.

    wait=False (live sources): a full queue drops the item, so a slow disk or reader never blocks
    inference. wait=True (files and folders, which keep every frame): block until there is room,
    for as long as the `writer` thread is alive.
    """
    if not wait:
        try:
            work.put_nowait(item)
            return True
        except queue.Full:
            return False
    while writer.is_alive():
        try:
            work.put(item, timeout=0.5)
            return True
        except queue.Full:
            continue
    return False
