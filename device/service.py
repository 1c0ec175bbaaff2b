"""The systemd unit that keeps `edge-sdk run` alive on a robot.

`render_unit(...)` is pure (tested); `install_unit(...)` writes it atomically and asks systemd to
load and start it. The unit is `Type=notify` with `WatchdogSec`: the runtime sends READY=1 once
frames flow and WATCHDOG=1 only while they keep flowing, so a hung camera or predictor gets the
service restarted (`Restart=always`).
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from typing import List, Optional, Sequence

from edge_sdk.errors import InstallError
from edge_sdk.fileio import atomic_write_text

UNIT_NAME = "edge-sdk.service"
DEFAULT_UNIT_DIR = "/etc/systemd/system"


def render_unit(
    run_args: Sequence[str],
    executable: str = "/usr/local/bin/edge-sdk",
    user: str = "edge",
    watchdog_seconds: int = 30,
    restart_seconds: int = 2,
    engine_cache: str = "/var/cache/edge-sdk/engines",
) -> str:
    """The unit file text. run_args: the arguments after `edge-sdk run`, e.g. ["--camera", "0"]."""
    if watchdog_seconds < 2:
        raise InstallError("watchdog must be at least 2 seconds, got {}".format(watchdog_seconds))
    command = " ".join(shlex.quote(a) for a in [executable, "run", *run_args])
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
            "Environment=EDGE_SDK_ENGINE_CACHE=" + engine_cache,
            "",
            "[Install]",
            "WantedBy=multi-user.target",
            "",
        ]
    )


def install_unit(text: str, unit_dir: str = DEFAULT_UNIT_DIR, enable: bool = True) -> List[str]:
    """Write `text` as unit_dir/edge-sdk.service atomically; with enable, reload systemd and
    enable --now the service. Returns the messages to show the user."""
    path = os.path.join(unit_dir, UNIT_NAME)
    try:
        os.makedirs(unit_dir, exist_ok=True)
        atomic_write_text(path, text)
        os.chmod(path, 0o644)
    except OSError as exc:
        raise InstallError(
            "cannot write the unit to {}: {} (run with sudo?)".format(unit_dir, exc.strerror or exc)
        ) from None
    messages = ["wrote " + path]
    if not enable:
        return messages
    systemctl = shutil.which("systemctl")
    if systemctl is None:
        raise InstallError("systemctl not found: wrote {} but could not enable it".format(path))
    for args in (["daemon-reload"], ["enable", "--now", UNIT_NAME]):
        result = subprocess.run([systemctl, *args], capture_output=True, text=True)
        if result.returncode != 0:
            reason = (result.stderr.strip().splitlines() or ["exit {}".format(result.returncode)])[-1]
            raise InstallError("systemctl {} failed: {}".format(" ".join(args), reason))
        messages.append("systemctl " + " ".join(args))
    return messages


def default_executable() -> Optional[str]:
    """Absolute path of the `edge-sdk` on PATH, if any."""
    return shutil.which("edge-sdk")
