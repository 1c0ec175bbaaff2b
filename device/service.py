"""The systemd unit that keeps `edge-sdk run` alive on a robot.

`render_unit(...)` is pure (tested): values are quoted and escaped for systemd (`%` and `$` stay
literal) and a value with a line break is refused. `install_unit(...)` writes the unit atomically and
asks systemd to load and start it; when systemctl fails, the previous unit (or none) is put back.
Before the unit is written, the store's runtime/ folder (where the runtime keeps runtime/status.json)
is made and handed to the unit's user. The unit is `Type=notify` with `WatchdogSec`: the runtime sends READY=1 once
frames flow and WATCHDOG=1 only while they keep flowing, so a hung camera or predictor gets the
service restarted (`Restart=always`).
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
from typing import List, Optional, Sequence

from device.predictor import SYSTEM_CACHE_ROOT
from device.store import RUNTIME
from edge_sdk.errors import InstallError
from edge_sdk.fileio import atomic_write_text

UNIT_NAME = "edge-sdk.service"
DEFAULT_UNIT_DIR = "/etc/systemd/system"
_PLAIN_WORD = re.compile(r"[\w@%+=:,./-]+")


def _checked_value(what: str, value: str) -> str:
    """`value`, refused when it holds a line break or another control character (it would end the unit line)."""
    if any(ord(char) < 32 or ord(char) == 127 for char in value):
        raise InstallError("{} {!r} contains a line break or control character".format(what, value))
    return value


def _systemd_word(value: str) -> str:
    """One word of a unit setting meaning exactly `value`: single-quoted (with C escapes) unless
    plain, and `%` (systemd's specifier character) doubled."""
    if not _PLAIN_WORD.fullmatch(value):
        value = "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return value.replace("%", "%%")


def _exec_word(arg: str) -> str:
    """One ExecStart word meaning exactly `arg`: as `_systemd_word`, and `$` (variable expansion) doubled."""
    return _systemd_word(arg).replace("$", "$$")


def render_unit(
    run_args: Sequence[str],
    executable: str = "/usr/local/bin/edge-sdk",
    user: str = "edge",
    watchdog_seconds: int = 30,
    restart_seconds: int = 2,
    engine_cache: str = SYSTEM_CACHE_ROOT,
) -> str:
    """The unit file text. run_args: the arguments after `edge-sdk run`, e.g. ["--camera", "0"].

    Raises InstallError for a watchdog under 2 s or a value with a line break."""
    if watchdog_seconds < 2:
        raise InstallError("watchdog must be at least 2 seconds, got {}".format(watchdog_seconds))
    for arg in run_args:
        _checked_value("run argument", arg)
    command = " ".join(_exec_word(a) for a in [_checked_value("executable", executable), "run", *run_args])
    user = _checked_value("user", user).replace("%", "%%")
    engine_cache = _systemd_word("EDGE_SDK_ENGINE_CACHE=" + _checked_value("engine cache", engine_cache))
    return "\n".join(
        [
            "[Unit]",
            "Description=edge-sdk inspection runtime (camera -> detector -> robot controller)",
            "After=network-online.target",
            "Wants=network-online.target",
            # Never give up restarting: a robot in the field has nobody to run `systemctl start`.
            "StartLimitIntervalSec=0",
            "",
            "[Service]",
            "Type=notify",
            "NotifyAccess=main",
            "ExecStart=" + command,
            "Restart=always",
            "RestartSec={}".format(restart_seconds),
            "WatchdogSec={}".format(watchdog_seconds),
            # The first start builds the TensorRT engine, which can take minutes.
            "TimeoutStartSec=900",
            "TimeoutStopSec=20",
            "KillSignal=SIGTERM",
            "User=" + user,
            "SupplementaryGroups=video dialout",
            "Environment=PYTHONUNBUFFERED=1",
            "Environment=" + engine_cache,
            "",
            "[Install]",
            "WantedBy=multi-user.target",
            "",
        ]
    )


def install_unit(
    text: str, unit_dir: str = DEFAULT_UNIT_DIR, enable: bool = True, store_root: Optional[str] = None
) -> List[str]:
    """Write `text` as unit_dir/edge-sdk.service atomically; with enable, reload systemd and
    enable --now the service. With store_root (the `--root` of the unit's `run`), first make
    store_root/runtime for the unit's user (`prepare_runtime_dir`). Returns the messages to show the user.

    With enable, systemctl must be on PATH before anything is written; when a systemctl call fails,
    the unit that was there before (or none) is put back."""
    path = os.path.join(unit_dir, UNIT_NAME)
    systemctl = shutil.which("systemctl") if enable else None
    if enable and systemctl is None:
        raise InstallError("systemctl not found: cannot enable {} (use --no-enable to only write it)".format(UNIT_NAME))
    messages = []  # type: List[str]
    if store_root is not None:
        messages.append(prepare_runtime_dir(store_root, unit_user(text) or "root"))
    try:
        with open(path, encoding="utf-8") as f:
            previous: Optional[str] = f.read()
    except (FileNotFoundError, NotADirectoryError):
        previous = None
    except OSError as exc:
        raise InstallError("cannot read the unit {}: {}".format(path, exc.strerror or exc)) from None
    _write_unit(path, text)
    messages.append("wrote " + path)
    if systemctl is None:
        return messages
    for args in (["daemon-reload"], ["enable", "--now", UNIT_NAME]):
        result = subprocess.run([systemctl, *args], capture_output=True, text=True)
        if result.returncode != 0:
            reason = (result.stderr.strip().splitlines() or ["exit {}".format(result.returncode)])[-1]
            if previous is None:
                os.remove(path)
                undone = "removed " + path
            else:
                _write_unit(path, previous)
                undone = "restored the previous " + path
            raise InstallError("systemctl {} failed: {}; {}".format(" ".join(args), reason, undone))
        messages.append("systemctl " + " ".join(args))
    return messages


def prepare_runtime_dir(store_root: str, user: str) -> str:
    """Make store_root/runtime (where `edge-sdk run` rewrites status.json) writable for the service's
    `user`: created if missing, mode 0755 and, when the installer is root, owned by `user` and its group.
    Returns the message to show. Raises InstallError for an unknown user or a folder that cannot be made."""
    try:
        account = pwd.getpwnam(user)
    except KeyError:
        raise InstallError(
            "no user {0!r} on this machine: create it (sudo useradd --system --groups video,dialout {0}) "
            "or give --user".format(user)
        ) from None
    path = os.path.join(store_root, RUNTIME)
    try:
        os.makedirs(path, exist_ok=True)
        os.chmod(path, 0o755)
        if os.geteuid() == 0:
            os.chown(path, account.pw_uid, account.pw_gid)
    except OSError as exc:
        raise InstallError("cannot prepare {}: {} (run with sudo?)".format(path, exc.strerror or exc)) from None
    if os.geteuid() != 0 and os.geteuid() != account.pw_uid:
        return "made {} (not root: `sudo chown {} {}` so the service can write it)".format(path, user, path)
    return "made {} for user {}".format(path, user)


def _write_unit(path: str, text: str) -> None:
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        atomic_write_text(path, text)
        os.chmod(path, 0o644)
    except OSError as exc:
        raise InstallError(
            "cannot write the unit to {}: {} (run with sudo?)".format(os.path.dirname(path), exc.strerror or exc)
        ) from None


def unit_user(text: str) -> Optional[str]:
    """The User= of a unit file's text (as `render_unit` writes it), None without one."""
    for line in text.splitlines():
        if line.startswith("User="):
            return line[len("User=") :].strip().replace("%%", "%") or None
    return None


def installed_unit_user(unit_dir: str = DEFAULT_UNIT_DIR) -> Optional[str]:
    """The user the installed edge-sdk.service runs as, None when there is no unit (or it is unreadable)."""
    try:
        with open(os.path.join(unit_dir, UNIT_NAME), encoding="utf-8") as f:
            return unit_user(f.read())
    except OSError:
        return None


def default_executable() -> Optional[str]:
    """Absolute path of the `edge-sdk` on PATH, if any."""
    return shutil.which("edge-sdk")
