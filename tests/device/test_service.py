"""The systemd unit: its settings, and an atomic install into a folder."""

from __future__ import annotations

import configparser
import os
import pwd
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
        [sys.executable, "-m", "edge_cli", "service", "install", "--unit-dir", str(blocker / "x"), "--no-enable"]
        + ["--user", SERVICE_USER, "--", "--camera", "0", "--root", str(tmp_path / "store")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert failed.returncode != 0
    assert failed.stderr.startswith("error: cannot write the unit") and "Traceback" not in failed.stderr


# A user that exists here: the service's user must exist before `service install` writes anything.
SERVICE_USER = "nobody" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name


def service_install(*args, path=None):
    """`edge-sdk service install ARGS` in a subprocess (PATH replaced when given)."""
    env = dict(os.environ)
    if path is not None:
        env["PATH"] = path
    return subprocess.run(
        [sys.executable, "-m", "edge_cli", "service", "install", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def assert_one_error_line(result, starts_with):
    assert result.returncode != 0
    assert result.stderr.startswith("error: " + starts_with), result.stderr
    assert result.stderr.count("\n") == 1, result.stderr


@pytest.mark.parametrize(
    "run_args, message",
    [
        (["--camra", "0"], "No such option: --camra"),
        (["--camera", "zero"], "Invalid value for '--camera'"),
        (["--max-frames", "0"], "Invalid value for '--max-frames'"),
        (["--camera"], "Option '--camera' requires an argument"),
        (["--help"], "No such option: --help"),
    ],
)
def test_run_arguments_are_checked_by_runs_parser_before_a_unit_is_written(tmp_path, run_args, message):
    unit_dir = tmp_path / "systemd"
    result = service_install("--unit-dir", str(unit_dir), "--no-enable", "--", *run_args)
    assert_one_error_line(result, "invalid run arguments")
    assert message in result.stderr
    assert not unit_dir.exists()


@pytest.mark.parametrize("value", ["/data/a.mp4\nExecStartPre=/bin/rm -rf /", "/data/a.mp4\r", "/data/\ta.mp4"])
def test_values_with_line_breaks_are_refused(tmp_path, value):
    with pytest.raises(InstallError, match="line break"):
        render_unit(["--source", value])
    with pytest.raises(InstallError, match="line break"):
        render_unit(["--camera", "0"], executable="/opt/edge-sdk\n")
    unit_dir = tmp_path / "systemd"
    assert_one_error_line(service_install("--unit-dir", str(unit_dir), "--no-enable", "--", "--source", value), "run")
    assert not unit_dir.exists()


def test_percent_and_dollar_stay_literal_for_systemd():
    """systemd expands %x specifiers in ExecStart, User and Environment, and $VAR in ExecStart: both are doubled."""
    service = parse(
        render_unit(
            ["--source", "/data/100%/$HOME it's.mp4", "--jsonl", "/logs/%H.jsonl"],
            executable="/opt/$edge/bin/edge-sdk",
            engine_cache="/cache/%i dir",
        )
    )["Service"]
    assert service["ExecStart"] == (
        "'/opt/$$edge/bin/edge-sdk' run --source '/data/100%%/$$HOME it\\'s.mp4' --jsonl /logs/%%H.jsonl"
    )
    assert service["Environment"] == "'EDGE_SDK_ENGINE_CACHE=/cache/%%i dir'"


@pytest.fixture
def failing_systemctl(tmp_path):
    """A PATH whose systemctl is a real program that fails like systemctl without a system bus."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    systemctl = bin_dir / "systemctl"
    systemctl.write_text(
        "#!/bin/sh\necho 'System has not been booted with systemd as init system (PID 1).' >&2\nexit 1\n"
    )
    systemctl.chmod(0o755)
    return str(bin_dir) + os.pathsep + os.environ.get("PATH", "")


def test_failing_systemctl_leaves_no_unit_behind(tmp_path, failing_systemctl):
    unit_dir = tmp_path / "systemd"
    result = service_install(
        "--unit-dir", str(unit_dir), "--user", SERVICE_USER, "--", "--camera", "0", "--root", str(tmp_path / "store"),
        path=failing_systemctl,
    )  # fmt: skip
    assert_one_error_line(result, "systemctl daemon-reload failed: System has not been booted")
    assert "removed" in result.stderr
    assert list(unit_dir.iterdir()) == []


def test_failing_systemctl_puts_the_previous_unit_back(tmp_path, failing_systemctl):
    unit_dir = tmp_path / "systemd"
    unit_dir.mkdir()
    previous = render_unit(["--camera", "1"])
    (unit_dir / UNIT_NAME).write_text(previous)
    result = service_install(
        "--unit-dir", str(unit_dir), "--user", SERVICE_USER, "--", "--camera", "0", "--root", str(tmp_path / "store"),
        path=failing_systemctl,
    )  # fmt: skip
    assert_one_error_line(result, "systemctl daemon-reload failed")
    assert (unit_dir / UNIT_NAME).read_text() == previous
    assert sorted(p.name for p in unit_dir.iterdir()) == [UNIT_NAME]


def test_missing_systemctl_is_found_out_before_writing(tmp_path):
    empty = tmp_path / "empty-path"
    empty.mkdir()
    unit_dir = tmp_path / "systemd"
    store = tmp_path / "store"
    result = service_install("--unit-dir", str(unit_dir), "--", "--camera", "0", "--root", str(store), path=str(empty))
    assert_one_error_line(result, "systemctl not found")
    assert not unit_dir.exists() and not store.exists()


def test_install_makes_the_runtime_folder_for_the_service_user(tmp_path):
    """`edge-sdk run` (as the unit's user) rewrites ROOT/runtime/status.json for `status` and `fleet status`."""
    store = tmp_path / "store"
    result = service_install(
        "--unit-dir", str(tmp_path / "systemd"), "--no-enable", "--user", SERVICE_USER,
        "--", "--camera", "0", "--root", str(store),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    runtime = store / "runtime"
    assert runtime.is_dir() and runtime.stat().st_mode & 0o777 == 0o755
    account = pwd.getpwnam(SERVICE_USER)
    assert (runtime.stat().st_uid, runtime.stat().st_gid) == (account.pw_uid, account.pw_gid)
    assert result.stdout.splitlines()[0] == "made {} for user {}".format(runtime, SERVICE_USER)
    assert (tmp_path / "systemd" / UNIT_NAME).exists()


def test_an_unknown_service_user_is_one_line_before_anything_is_written(tmp_path):
    unit_dir, store = tmp_path / "systemd", tmp_path / "store"
    result = service_install(
        "--unit-dir", str(unit_dir), "--no-enable", "--user", "no-such-user-here", "--", "--root", str(store)
    )
    assert_one_error_line(result, "no user 'no-such-user-here' on this machine")
    assert not unit_dir.exists() and not store.exists()
