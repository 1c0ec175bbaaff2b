"""The systemd unit: its settings, and an atomic install into a folder."""

from __future__ import annotations

import configparser
import subprocess
import sys

import pytest

from device.service import UNIT_NAME, install_unit, render_unit
from edge_sdk.errors import InstallError


def parse(text):
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str
    parser.read_string(text)
    return parser


def test_unit_restarts_forever_with_a_watchdog():
    unit = parse(
        render_unit(
            ["--camera", "0", "--serial", "/dev/ttyTHS0"], executable="/opt/edge/bin/edge-sdk", watchdog_seconds=20
        )
    )
    service = unit["Service"]
    assert service["Type"] == "notify"
    assert service["Restart"] == "always"
    assert service["WatchdogSec"] == "20"
    assert service["ExecStart"] == "/opt/edge/bin/edge-sdk run --camera 0 --serial /dev/ttyTHS0"
    assert "dialout" in service["SupplementaryGroups"] and "video" in service["SupplementaryGroups"]
    assert unit["Unit"]["StartLimitIntervalSec"] == "0"
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def test_arguments_with_spaces_are_quoted():
    unit = parse(render_unit(["--source", "/data/line 2.mp4"]))
    assert unit["Service"]["ExecStart"].endswith("run --source '/data/line 2.mp4'")


def test_too_short_watchdog_is_refused():
    with pytest.raises(InstallError):
        render_unit(["--camera", "0"], watchdog_seconds=1)


def test_install_writes_the_unit_atomically(tmp_path):
    unit_dir = tmp_path / "systemd"
    messages = install_unit(render_unit(["--camera", "0"]), unit_dir=str(unit_dir), enable=False)
    assert (unit_dir / UNIT_NAME).read_text() == render_unit(["--camera", "0"])
    assert sorted(p.name for p in unit_dir.iterdir()) == [UNIT_NAME]
    assert messages == ["wrote " + str(unit_dir / UNIT_NAME)]


def test_cli_print_and_unwritable_folder(tmp_path):
    printed = subprocess.run(
        [sys.executable, "-m", "edge_cli", "service", "install", "--print", "--", "--camera", "1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert printed.returncode == 0 and "run --camera 1" in printed.stdout
    blocker = tmp_path / "file"
    blocker.write_text("")
    failed = subprocess.run(
        [sys.executable, "-m", "edge_cli", "service", "install", "--unit-dir", str(blocker / "x"), "--no-enable"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert failed.returncode != 0
    assert failed.stderr.startswith("error: cannot write the unit") and "Traceback" not in failed.stderr
