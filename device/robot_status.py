"""What a robot is doing, for `edge-sdk status` and the workstation's `edge-sdk fleet status`.

The running runtime leaves `runtime/status.json` in the store root (see device.store; a folder of
its own, so the store's recovery never meets its temp files and the service's user needs write
access there only), rewritten atomically every few seconds while `edge-sdk run` is alive::

    {"pid": 1234, "started_at": 1764771200.0, "updated_at": 1764771260.0,
     "last_frame_at": 1764771259.9, "frames": 912, "fps": 15.1,
     "bundle": {"name": "pcb", "version": "1.2.0", "sha256": "..."}}

Times are seconds since the epoch (the robot's clock; ages are computed on the robot).
`robot_status(root)` combines it with the store's active version and health record, the systemd
service state and the robot's uptime into one JSON-ready dict.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional

from device.store import RUNTIME
from edge_sdk.fileio import atomic_write_text

RUNTIME_FILE = RUNTIME + "/status.json"
WRITE_EVERY_S = 5.0
SERVICE = "edge-sdk"


class RuntimeStatusFile:
    """The runtime's side: `update(stats)` after each frame rewrites root/runtime/status.json at most
    every `every` seconds. stats: Pipeline.stats() (frames, fps, last_frame_age_s in s). Nothing is
    written when the store root does not exist; a failed write is reported once through `log`."""

    def __init__(
        self, root: Any, bundle: Dict[str, str], log: Callable[[str], None], every: float = WRITE_EVERY_S
    ) -> None:
        self.path = Path(root) / RUNTIME_FILE
        self.bundle = dict(bundle)
        self.log = log
        self.every = every
        self.started_at = time.time()
        self._last_write = None  # type: Optional[float]
        self._enabled = Path(root).is_dir()
        self._warned = False

    def update(self, stats: Dict[str, Any]) -> None:
        now = time.monotonic()
        if not self._enabled or (self._last_write is not None and now - self._last_write < self.every):
            return
        self._last_write = now
        wall = time.time()
        age = stats.get("last_frame_age_s")
        doc = {
            "pid": os.getpid(),
            "started_at": self.started_at,
            "updated_at": wall,
            "last_frame_at": None if age is None else wall - age,
            "frames": stats.get("frames", 0),
            "fps": stats.get("fps"),
            "bundle": self.bundle,
        }
        try:
            self.path.parent.mkdir(exist_ok=True)
            atomic_write_text(self.path, json.dumps(doc, sort_keys=True))
        except OSError as exc:
            if not self._warned:
                self._warned = True
                self.log("cannot write {}: {}".format(self.path, exc.strerror or exc))


def read_runtime(root: Any, now: Optional[float] = None) -> Optional[Dict[str, Any]]:
    """root/runtime/status.json with ages added (uptime_s, updated_age_s, last_frame_age_s), or None."""
    from device.store import read_json

    doc = read_json(Path(root) / RUNTIME_FILE)
    if doc is None:
        return None
    now = time.time() if now is None else now

    def age(key: str) -> Optional[float]:
        value = doc.get(key)
        return round(max(0.0, now - value), 1) if isinstance(value, (int, float)) else None

    doc["uptime_s"] = age("started_at")
    doc["updated_age_s"] = age("updated_at")
    doc["last_frame_age_s"] = age("last_frame_at")
    return doc


def service_state(unit: str = SERVICE) -> str:
    """`systemctl is-active UNIT` (active, inactive, failed, activating, ...), or "no systemd"."""
    systemctl = shutil.which("systemctl")
    if systemctl is None:
        return "no systemd"
    try:
        result = subprocess.run([systemctl, "is-active", unit], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return "unknown ({})".format(exc)
    return result.stdout.strip() or "unknown"


def robot_uptime_s() -> Optional[float]:
    """Seconds since the robot booted (/proc/uptime), or None where there is none."""
    try:
        with open("/proc/uptime", encoding="ascii") as f:
            return round(float(f.read().split()[0]), 1)
    except (OSError, ValueError, IndexError):
        return None


def robot_status(root: Any) -> Dict[str, Any]:
    """One robot's state: active (dir, name, version, sha256, health, installed_at; None when nothing
    is installed), service (systemctl state), uptime_s (robot), runtime (read_runtime or None)."""
    from device.install import list_versions

    active = next((row for row in list_versions(root) if row["active"]), None)
    keep = ("dir", "name", "version", "sha256", "health", "installed_at")
    return {
        "root": str(root),
        "active": None if active is None else {key: active[key] for key in keep},
        "service": service_state(),
        "uptime_s": robot_uptime_s(),
        "runtime": read_runtime(root),
    }


def format_duration(seconds: Optional[float]) -> str:
    """61 -> "1m01s", 90061 -> "1d01h01m"; None -> "-"."""
    if seconds is None:
        return "-"
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return "{}d{:02d}h{:02d}m".format(days, hours, minutes)
    if hours:
        return "{}h{:02d}m".format(hours, minutes)
    return "{}m{:02d}s".format(minutes, secs) if minutes else "{}s".format(secs)


def status_cells(doc: Dict[str, Any]) -> Dict[str, str]:
    """A robot_status dict as short texts: bundle, health, service, uptime (robot), last frame (age)."""
    active = doc.get("active")
    runtime = doc.get("runtime") or {}
    age = runtime.get("last_frame_age_s")
    if not runtime:
        last_frame = "no runtime record"
    elif age is None:
        last_frame = "none yet"
    else:
        last_frame = format_duration(age) + " ago"
    return {
        "bundle": "none installed" if active is None else "{} {}".format(active["name"], active["version"]),
        "health": "-" if active is None else active["health"],
        "service": doc.get("service") or "-",
        "uptime": format_duration(doc.get("uptime_s")),
        "last frame": last_frame,
    }
