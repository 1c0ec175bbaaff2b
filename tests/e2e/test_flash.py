"""`edge-sdk flash` against a real sshd on 127.0.0.1: two robots (two install roots), one unreachable.

Robot A accepts the bundle (remote install with its health check), robot B is a different GPU
(compute capability 8.7) and rejects it with the remote install's one-line reason, and a port with
nothing listening is unreachable. A second flash skips robot A, which already runs the bundle.
The remote `edge-sdk` is this virtualenv's, running this checkout. Needs openssh-server and openssh-client.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from device.flash import Target, parse_target
from device.install import list_versions
from edge_sdk.errors import InstallError
from tests.e2e.sshd_fixture import free_port

EDGE_SDK = Path(sys.executable).parent / "edge-sdk"
REPO = Path(__file__).resolve().parents[2]
# The robot runs this checkout's code (ssh does not pass the test's PYTHONPATH on).
REMOTE_EDGE_SDK = "env PYTHONPATH={} {}".format(REPO, EDGE_SDK)


def robot_root(folder: Path, compute_capability: str) -> Path:
    folder.mkdir()
    (folder / "robot.json").write_text(json.dumps({"l4t": "35.4.1", "compute_capability": compute_capability}))
    return folder


def flash(bundle: Path, sshd, *args: str) -> subprocess.CompletedProcess:
    command = [
        sys.executable,
        "-m",
        "edge_cli",
        "flash",
        str(bundle),
        "--identity",
        str(sshd.identity),
        "--known-hosts",
        str(sshd.known_hosts),
        "--remote-command",
        REMOTE_EDGE_SDK,
        "--connect-timeout",
        "5",
        "--json",
        *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=600)


def test_flash_two_robots_and_an_unreachable_one(tiny_bundle, sshd, tmp_path):
    assert EDGE_SDK.exists()
    robot_a = robot_root(tmp_path / "robot-a", "7.2")
    robot_b = robot_root(tmp_path / "robot-b", "8.7")
    closed_port = free_port()
    targets = [sshd.target(robot_a), sshd.target(robot_b), "{}@127.0.0.1:{}/tmp/nowhere".format(sshd.user, closed_port)]
    result = flash(tiny_bundle, sshd, *[arg for t in targets for arg in ("--to", t)], "--parallel", "3")
    assert result.returncode == 1, result.stderr
    rows = json.loads(result.stdout)
    assert [r["robot"] for r in rows] == targets
    outcome = {r["robot"]: r for r in rows}
    assert outcome[targets[0]]["outcome"] == "installed", rows
    assert "health" in outcome[targets[0]]["detail"]
    assert outcome[targets[1]]["outcome"] == "rejected"
    assert outcome[targets[1]]["detail"] == (
        "bundle tiny 0.1.0 targets compute capability 7.2, this robot's GPU is 8.7"
    )
    assert outcome[targets[2]]["outcome"] == "unreachable"
    assert "refused" in outcome[targets[2]]["detail"].lower()

    active = [r for r in list_versions(robot_a) if r["active"]]
    assert [(r["name"], r["version"], r["health"]) for r in active] == [("tiny", "0.1.0", "loaded (no golden check)")]
    assert list_versions(robot_b) == []
    assert not list(Path("/tmp").glob("edge-sdk-flash-*-{}".format(tiny_bundle.name)))  # uploads removed

    # Again, to robot A only, its root given by --remote-root: skipped (already active), exit 0.
    again = flash(
        tiny_bundle, sshd, "--to", "{}@127.0.0.1:{}".format(sshd.user, sshd.port), "--remote-root", str(robot_a)
    )
    assert again.returncode == 0, again.stderr
    assert [r["outcome"] for r in json.loads(again.stdout)] == ["skipped"]


def test_unknown_host_key_is_refused(tiny_bundle, sshd, tmp_path):
    robot = robot_root(tmp_path / "robot", "7.2")
    empty_known_hosts = tmp_path / "known_hosts"
    empty_known_hosts.write_text("")
    command = [sys.executable, "-m", "edge_cli", "flash", str(tiny_bundle), "--to", sshd.target(robot)]
    command += ["--identity", str(sshd.identity), "--known-hosts", str(empty_known_hosts), "--json"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    row = json.loads(result.stdout)[0]
    assert row["outcome"] == "unreachable" and "host key verification failed" in row["detail"].lower()


def test_table_output_and_summary(tiny_bundle, sshd, tmp_path):
    robot = robot_root(tmp_path / "robot", "7.2")
    command = [sys.executable, "-m", "edge_cli", "flash", str(tiny_bundle), "--to", sshd.target(robot)]
    command += [
        "--identity",
        str(sshd.identity),
        "--known-hosts",
        str(sshd.known_hosts),
        "--remote-command",
        REMOTE_EDGE_SDK,
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "1 robots: 1 installed, 0 skipped, 0 failed" in result.stdout
    assert [r["health"] for r in list_versions(robot)] == ["loaded (no golden check)"]


def test_the_services_predictor_options_reach_the_robots_install(tiny_bundle, sshd, tmp_path):
    """--precision/--threads reach the health check (its load line names the plan); --dla is refused by a CPU robot."""
    robot = robot_root(tmp_path / "robot", "7.2")
    result = flash(tiny_bundle, sshd, "--to", sshd.target(robot), "--precision", "fp32", "--threads", "2")
    assert result.returncode == 0, result.stderr
    [row] = json.loads(result.stdout)
    assert row["outcome"] == "installed" and "load ok" in row["detail"], row
    assert "cpu, fp32" in row["detail"] and "2 threads" in row["detail"], row
    other = robot_root(tmp_path / "robot-dla", "7.2")
    refused = flash(tiny_bundle, sshd, "--to", sshd.target(other), "--dla", "0")
    [row] = json.loads(refused.stdout)
    assert row["outcome"] == "rejected" and "--dla asked for" in row["detail"], row
    assert list_versions(other) == []


@pytest.mark.parametrize(
    "text,expected",
    [
        ("robot-7", Target("robot-7")),
        ("edge@10.0.0.7", Target("10.0.0.7", "edge")),
        ("edge@10.0.0.7:2222", Target("10.0.0.7", "edge", 2222)),
        ("edge@10.0.0.7:2222/var/lib/edge-sdk", Target("10.0.0.7", "edge", 2222, "/var/lib/edge-sdk")),
        ("robot-7/srv/edge", Target("robot-7", None, None, "/srv/edge")),
        ("edge@[fe80::1]:22", Target("[fe80::1]", "edge", 22)),
    ],
)
def test_parse_target(text, expected):
    assert parse_target(text) == expected


@pytest.mark.parametrize("text", ["", "edge@", "edge@host:port", "edge@host:99999", "edge@host:22:23", "a b"])
def test_parse_target_refuses_bad_syntax(text):
    with pytest.raises(InstallError):
        parse_target(text)
