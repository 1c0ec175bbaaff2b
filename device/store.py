"""The robot's bundle store: a crash-consistent folder of installed versions and the active pointer.

Layout (everything under one root, default /var/lib/edge-sdk)::

    bundles/<name>-<version>-<sha12>/   one installed version, complete once it has this name:
        bundle.edgebundle               the verified bundle file as received
        files/...                       its extracted, verified files (manifest.json included)
        install.json                    name, version, sha256, signer, install time (written once)
        status.json                     "good" once committed (+ health report), or "rolled-back"
    active   -> bundles/<dir>           relative symlink: the version the runtime loads
    previous -> bundles/<dir>           relative symlink: what `edge-sdk rollback` goes back to
    journal.json                        write-ahead record of a switch in progress (absent when idle)
    history.jsonl                       one JSON line per install, refusal, failure, rollback, recovery
    keys/                               trusted public keys (*.pem, *.pub)
    robot.json                          optional description of this robot (see device.robot)
    runtime/status.json                 what the running `edge-sdk run` last reported (see device.robot_status)
    lock                                flock(2) held by the process changing the store

Every change is made so that a power cut at any instant leaves the active pointer on the old or
the new version, each complete and verifiable:

- a version folder is staged under `bundles/.staging-*`, every file and folder fsynced, then
  renamed to its final name (a folder with a final name is always complete);
- pointers are swapped by creating a temporary symlink and `os.replace`-ing it over the old one;
- before pointers move, `journal.json` records the old and new pointers and a phase: "switching"
  (undo on recovery: restore the old pointers, drop a version folder this install created) or
  "commit" (redo on recovery: set the new pointers). Removing the journal ends the operation;
- folders are removed by renaming them to `bundles/.trash-*` first, then deleting;
- `recover(root)` runs before every install, rollback, list and run and finishes that work.

`crash_point(name)` marks each write and rename: with EDGE_SDK_CRASH_AT set to that name (or to a
number N: the N-th crash point reached) the process SIGKILLs itself there, which is how the
power-cut tests stop the installer at every step.
"""

from __future__ import annotations

import datetime
import errno
import hashlib
import json
import os
import shutil
import signal
import uuid
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

from edge_sdk.errors import InstallError
from edge_sdk.fileio import atomic_write_bytes, fsync_dir, fsync_tree, is_temp_name, temp_name_for

DEFAULT_ROOT = "/var/lib/edge-sdk"
BUNDLES = "bundles"
ACTIVE = "active"
PREVIOUS = "previous"
JOURNAL = "journal.json"
HISTORY = "history.jsonl"
KEYS = "keys"
ROBOT = "robot.json"
LOCK = "lock"
BUNDLE_FILE = "bundle.edgebundle"
FILES = "files"
INSTALL_INFO = "install.json"
STATUS = "status.json"
RUNTIME = "runtime"
STAGING_PREFIX = ".staging-"
TRASH_PREFIX = ".trash-"
POINTERS = (ACTIVE, PREVIOUS)
CRASH_ENV = "EDGE_SDK_CRASH_AT"
CHUNK_BYTES = 1 << 20

_crash_counter = [0]


def crash_point(name: str) -> None:
    """Power-cut test hook: SIGKILL this process here if EDGE_SDK_CRASH_AT names this point.

    EDGE_SDK_CRASH_AT=<name> kills at the first point of that name; =<N> at the N-th point reached.
    Does nothing when the variable is unset.
    """
    wanted = os.environ.get(CRASH_ENV)
    if not wanted:
        return
    _crash_counter[0] += 1
    if wanted == name or (wanted.isdigit() and int(wanted) == _crash_counter[0]):
        os.kill(os.getpid(), signal.SIGKILL)


def now_iso() -> str:
    """UTC time like 2024-05-01T12:00:00Z."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# ----------------------------------------------------------------------------- durable writes


def write_json(path: Path, doc: Any, point: str) -> None:
    """Replace `path` with `doc` atomically (mode 0644); crash points POINT.written / .synced / .replaced."""
    atomic_write_bytes(
        path,
        (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode("utf-8"),
        mode=0o644,
        on_step=lambda step: crash_point("{}.{}".format(point, step)),
    )


def read_json(path: Path) -> Optional[Dict[str, Any]]:
    """A JSON object from `path`; None when the file is absent or not a JSON object."""
    try:
        with open(str(path), "rb") as f:
            doc = json.loads(f.read().decode("utf-8"))
    except FileNotFoundError:
        return None
    except (UnicodeDecodeError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def copy_file_durably(src: Path, dest: Path, expected_sha256: str) -> None:
    """Copy `src` to the new file `dest`, fsync it, and check its sha256 while copying.

    The sha256 check catches a source file replaced between verification and copy.
    """
    digest = hashlib.sha256()
    with open(str(src), "rb") as fin, open(str(dest), "xb") as fout:
        for chunk in iter(lambda: fin.read(CHUNK_BYTES), b""):
            digest.update(chunk)
            fout.write(chunk)
        fout.flush()
        os.fsync(fout.fileno())
    if digest.hexdigest() != expected_sha256:
        raise InstallError("bundle file {} changed while it was being installed".format(src))


# ----------------------------------------------------------------------------- the store


class Store:
    """One root folder of installed versions. Methods that change it expect the lock to be held."""

    def __init__(self, root: Any) -> None:
        self.root = Path(root)
        self.bundles = self.root / BUNDLES
        self.journal_path = self.root / JOURNAL
        self.history_path = self.root / HISTORY
        self.keys = self.root / KEYS
        self.robot_path = self.root / ROBOT
        self._lock_fd = None  # type: Optional[int]

    # -- setup and locking

    def ensure_layout(self) -> None:
        """Create the root, bundles/ and keys/ folders if missing (durably)."""
        for folder in (self.root, self.bundles, self.keys):
            if not folder.is_dir():
                try:
                    folder.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    raise InstallError("cannot create {}: {}".format(folder, exc.strerror or exc)) from None
                fsync_dir(folder.parent)

    def lock(self, wait: bool = False) -> bool:
        """Take the store's exclusive lock; return False if another process holds it and not `wait`."""
        import fcntl

        if self._lock_fd is not None:
            return True
        fd = os.open(str(self.root / LOCK), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return False
            raise
        self._lock_fd = fd
        return True

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = None

    # -- version folders

    def version_dir(self, dirname: str) -> Path:
        return self.bundles / dirname

    def version_dirs(self) -> List[str]:
        """Names of complete version folders (staging and trash excluded), sorted."""
        if not self.bundles.is_dir():
            return []
        return sorted(p.name for p in self.bundles.iterdir() if not p.name.startswith(".") and p.is_dir())

    def install_info(self, dirname: str) -> Optional[Dict[str, Any]]:
        return read_json(self.version_dir(dirname) / INSTALL_INFO)

    def status(self, dirname: str) -> Optional[Dict[str, Any]]:
        return read_json(self.version_dir(dirname) / STATUS)

    def set_status(self, dirname: str, doc: Dict[str, Any]) -> None:
        write_json(self.version_dir(dirname) / STATUS, doc, "status")

    def new_staging_dir(self) -> Path:
        path = self.bundles / (STAGING_PREFIX + uuid.uuid4().hex[:12])
        path.mkdir()
        return path

    def publish(self, staging: Path, dirname: str) -> None:
        """Make a fully written staging folder a version folder (fsync all, one rename)."""
        fsync_tree(staging)
        crash_point("publish.synced")
        os.rename(str(staging), str(self.version_dir(dirname)))
        crash_point("publish.renamed")
        fsync_dir(self.bundles)

    def discard(self, folder: Path) -> None:
        """Remove a folder: rename it into trash (one atomic step), then delete the trash."""
        if not folder.exists():
            return
        trash = self.bundles / (TRASH_PREFIX + uuid.uuid4().hex[:12])
        os.rename(str(folder), str(trash))
        crash_point("discard.renamed")
        fsync_dir(self.bundles)
        shutil.rmtree(str(trash), ignore_errors=True)
        crash_point("discard.deleted")

    # -- pointers

    def pointer(self, name: str) -> Optional[str]:
        """The version folder name `active`/`previous` points to, or None."""
        try:
            target = os.readlink(str(self.root / name))
        except (FileNotFoundError, OSError):
            return None
        return os.path.basename(target.rstrip("/")) or None

    def pointers(self) -> Dict[str, Optional[str]]:
        return {name: self.pointer(name) for name in POINTERS}

    def set_pointer(self, name: str, dirname: Optional[str]) -> None:
        """Point `name` at a version folder (atomic symlink swap), or remove it when None."""
        link = self.root / name
        if dirname is None:
            if os.path.lexists(str(link)):
                os.unlink(str(link))
                crash_point("pointer.{}.removed".format(name))
                fsync_dir(self.root)
            return
        if self.pointer(name) == dirname:
            return
        tmp = temp_name_for(link)
        os.symlink(os.path.join(BUNDLES, dirname), str(tmp))
        crash_point("pointer.{}.linked".format(name))
        os.replace(str(tmp), str(link))
        crash_point("pointer.{}.replaced".format(name))
        fsync_dir(self.root)

    def apply_pointers(self, pointers: Dict[str, Optional[str]]) -> None:
        """Set `active` first (what the runtime reads), then `previous`."""
        for name in POINTERS:
            self.set_pointer(name, pointers.get(name))

    # -- journal and history

    def journal(self) -> Optional[Dict[str, Any]]:
        return read_json(self.journal_path)

    def write_journal(self, doc: Dict[str, Any]) -> None:
        write_json(self.journal_path, doc, "journal." + str(doc.get("phase")))

    def clear_journal(self) -> None:
        if self.journal_path.exists():
            os.unlink(str(self.journal_path))
            crash_point("journal.removed")
            fsync_dir(self.root)

    def record(self, event: str, **fields: Any) -> None:
        """Append one line to history.jsonl (O_APPEND, fsync). A torn last line is skipped on read."""
        entry = {"time": now_iso(), "event": event}
        entry.update(fields)
        line = (json.dumps(entry, sort_keys=True) + "\n").encode("utf-8")
        fd = os.open(str(self.history_path), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            if os.fstat(fd).st_size > 0:
                # A crash may have left a torn line without its newline: start on a fresh line.
                with open(str(self.history_path), "rb") as f:
                    f.seek(-1, os.SEEK_END)
                    if f.read(1) != b"\n":
                        line = b"\n" + line
            os.write(fd, line)
            crash_point("history.written")
            os.fsync(fd)
        finally:
            os.close(fd)

    def history(self) -> Iterator[Dict[str, Any]]:
        try:
            with open(str(self.history_path), "rb") as f:
                lines = f.read().splitlines()
        except FileNotFoundError:
            return
        for raw in lines:
            try:
                entry = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, ValueError):
                continue
            if isinstance(entry, dict):
                yield entry


def recover(root: Any) -> List[str]:
    """Finish or undo a switch a crash interrupted, and remove leftovers. Returns what it did.

    Safe to call any time: when another process holds the store's lock (an install in progress)
    it does nothing. A missing root is nothing to recover.
    """
    store = Store(root)
    if not store.root.is_dir():
        return []
    if not _needs_recovery(store):
        return []
    if not store.lock(wait=False):
        return []
    try:
        return recover_locked(store)
    finally:
        store.unlock()


def _needs_recovery(store: Store) -> bool:
    if store.journal_path.exists():
        return True
    if any(is_temp_name(p.name) for p in store.root.iterdir()):
        return True
    if store.bundles.is_dir():
        for entry in store.bundles.iterdir():
            if entry.name.startswith((STAGING_PREFIX, TRASH_PREFIX)) or is_temp_name(entry.name):
                return True
            if entry.is_dir() and any(is_temp_name(p.name) for p in entry.iterdir()):
                return True
    return False


def recover_locked(store: Store) -> List[str]:
    """`recover` for a caller that already holds the lock."""
    actions = []  # type: List[str]
    journal = store.journal_path.exists()
    doc = store.journal()
    if journal and doc is None:
        # The journal is only ever written by atomic replace, so this is a foreign/corrupt file.
        store.clear_journal()
        actions.append("removed an unreadable journal")
    elif doc is not None:
        target = doc.get("target")
        old = doc.get("old") or {}
        new = doc.get("new") or {}
        if doc.get("phase") == "commit":
            store.apply_pointers(new)
            for dirname, status in (doc.get("set_status") or {}).items():
                if store.version_dir(dirname).is_dir():
                    store.set_status(dirname, status)
            store.record("recovered", op=doc.get("op"), action="completed", dir=target)
            actions.append("completed the interrupted {} of {}".format(doc.get("op"), target))
        else:
            store.apply_pointers(old)
            if target and target not in old.values():
                if doc.get("created"):
                    store.discard(store.version_dir(target))
                elif doc.get("old_status") is not None and store.version_dir(target).is_dir():
                    store.set_status(target, doc["old_status"])
            store.record("recovered", op=doc.get("op"), action="undone", dir=target)
            actions.append("undid the interrupted {} of {}".format(doc.get("op"), target))
        store.clear_journal()
    for leftover in sorted(store.root.iterdir()):
        if is_temp_name(leftover.name):
            os.unlink(str(leftover))
            actions.append("removed " + leftover.name)
    if store.bundles.is_dir():
        for leftover in sorted(store.bundles.iterdir()):
            if leftover.name.startswith((STAGING_PREFIX, TRASH_PREFIX)):
                shutil.rmtree(str(leftover), ignore_errors=True)
                actions.append("removed " + leftover.name)
            elif is_temp_name(leftover.name):
                os.unlink(str(leftover))
            elif leftover.is_dir():
                for tmp in leftover.iterdir():
                    if is_temp_name(tmp.name):
                        os.unlink(str(tmp))
                        actions.append("removed {}/{}".format(leftover.name, tmp.name))
    if actions:
        fsync_dir(store.root)
        if store.bundles.is_dir():
            fsync_dir(store.bundles)
    return actions
