"""Atomic file writes: a temp name in the same folder, fsync, rename, fsync the folder. Readers see
the old file or the whole new one, never half of it (a power cut included).

`atomic_output` is the one mechanism (for writers that need a path: savefig, paddle.save, a tar
writer); `atomic_write_bytes` / `atomic_write_text` are it for data already in memory.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
from pathlib import Path
from typing import Callable, Iterator, Optional, Union

_TEMP_NAME = re.compile(r"\..+\.[0-9a-f]{12}\.tmp")


def temp_name_for(path: Union[str, Path]) -> Path:
    """A fresh hidden name beside `path`: .NAME.<12 hex digits>.tmp."""
    path = Path(path)
    return path.with_name(".{}.{}.tmp".format(path.name, os.urandom(6).hex()))


def is_temp_name(name: str) -> bool:
    """Whether `name` is one `temp_name_for` makes (a leftover of an interrupted write)."""
    return _TEMP_NAME.fullmatch(name) is not None


@contextlib.contextmanager
def atomic_output(
    path: Union[str, Path],
    mode: Optional[int] = None,
    overwrite: bool = True,
    on_step: Optional[Callable[[str], None]] = None,
) -> Iterator[Path]:
    """Yield a new empty temp file beside `path` for the caller to write; on a clean exit it becomes `path`.

    The temp file is fsynced, moved to `path` and the folder fsynced; on an exception it is removed and
    `path` is untouched. mode: exact permission bits from creation on (None: 0o666 minus the umask).
    overwrite=False: raise FileExistsError rather than replace an existing `path` (never a race: link).
    on_step: called with "written", "synced" and "replaced" between the steps (power-cut tests).
    """
    path = Path(path)
    tmp = temp_name_for(path)
    step = on_step or (lambda name: None)
    try:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
        fd = os.open(str(tmp), flags, 0o666 if mode is None else mode)
        try:
            if mode is not None:
                os.fchmod(fd, mode)  # exactly `mode`, whatever the umask
        finally:
            os.close(fd)
        yield tmp
        step("written")
        fd = os.open(str(tmp), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        step("synced")
        if overwrite:
            os.replace(str(tmp), str(path))
        else:
            _link_new(tmp, path)
    finally:
        if os.path.lexists(str(tmp)):
            os.unlink(str(tmp))
    step("replaced")
    fsync_dir(path.parent)


def _link_new(tmp: Path, path: Path) -> None:
    try:
        os.link(str(tmp), str(path))  # atomic and never overwrites
    except FileExistsError:
        raise
    except OSError:  # a filesystem without hard links
        if path.exists():
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(path)) from None
        os.replace(str(tmp), str(path))


def atomic_write_bytes(
    path: Union[str, Path],
    data: bytes,
    mode: Optional[int] = None,
    overwrite: bool = True,
    on_step: Optional[Callable[[str], None]] = None,
) -> Path:
    """Write `data` to `path` so that readers see either the old file or the whole new one (see atomic_output)."""
    with atomic_output(path, mode=mode, overwrite=overwrite, on_step=on_step) as tmp:
        with open(str(tmp), "wb") as handle:
            handle.write(data)
    return Path(path)


def atomic_write_text(path: Union[str, Path], text: str) -> Path:
    """`atomic_write_bytes` of `text` encoded as UTF-8."""
    return atomic_write_bytes(path, text.encode("utf-8"))


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
