"""Atomic file writes: a temp name in the same folder, fsync, os.replace. Readers see the old file
or the whole new one, never half of it (a power cut included)."""

from __future__ import annotations

import errno
import hashlib
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
    fsync_dir(path.parent)
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
    fsync_dir(Path(path).parent)


def fsync_dir(folder: Union[str, Path]) -> None:
    """Make a folder's entries (creations, renames, removals) durable. Filesystems that cannot
    fsync a folder (EINVAL, ENOTSUP) are accepted; any other error is raised."""
    fd = os.open(str(folder), os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def fsync_tree(top: Union[str, Path]) -> None:
    """fsync every file and folder under `top` (folders after their contents), then `top`."""
    for dirpath, _dirnames, filenames in os.walk(str(top), topdown=False):
        for filename in filenames:
            fd = os.open(os.path.join(dirpath, filename), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(dirpath)


def file_sha256(path: Union[str, Path], chunk_bytes: int = 1 << 20) -> str:
    """Hex sha256 of a file's contents, read in chunks of `chunk_bytes`."""
    digest = hashlib.sha256()
    with open(str(path), "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_bytes), b""):
            digest.update(chunk)
    return digest.hexdigest()
