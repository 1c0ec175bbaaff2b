"""Atomic file writes: a temp name in the same folder, fsync, os.replace. Readers see the old file
or the whole new one, never half of it (a power cut included)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Union


def atomic_write_bytes(path: Union[str, Path], data: bytes) -> Path:
    """Write `data` to `path` so that readers see either the old file or the whole new one."""
    path = Path(path)
    tmp = path.with_name(".{}.{}.tmp".format(path.name, os.getpid()))
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if tmp.exists():
            tmp.unlink()
        raise
    return path


def atomic_write_text(path: Union[str, Path], text: str) -> Path:
    """`atomic_write_bytes` of `text` encoded as UTF-8."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def temp_path_for(path: Union[str, Path]) -> Path:
    """A temporary name beside `path`, with the same suffix (for writers that pick a format by suffix)."""
    path = Path(path)
    return path.with_name(".{}.{}.tmp{}".format(path.stem, os.getpid(), path.suffix))


def fsync_and_replace(tmp: Path, path: Path) -> None:
    """fsync an already-written temp file and move it over `path`."""
    with open(tmp, "rb+") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)
