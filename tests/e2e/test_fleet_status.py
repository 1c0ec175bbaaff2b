"""`edge-sdk fleet status` against a real sshd on 127.0.0.1: a robot with an installed tiny bundle
whose runtime has processed frames, and a port with nothing listening (unreachable, exit 1).

The remote `edge-sdk` is this virtualenv's. Needs openssh-server and openssh-client.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.sshd_fixture import free_port

REPO = Path(__file__).resolve().parents[2]
# This checkout's code on the "robot" too (ssh does not pass PYTHONPATH on).
REMOTE_EDGE_SDK = "env PYTHONPATH={} {}".format(REPO, Path(sys.executable).parent / "edge-sdk")
EDGE_SDK = [sys.executable, "-m", "edge_cli"]


@pytest.fixture(scope="module")
def robot(tiny_bundle, tmp_path_factory) -> Path:
    """An install root with the tiny bundle installed (health check included) and run on 3 demo frames."""
    root = tmp_path_factory.mktemp("robot")
    (root / "robot.json").write_text(json.dumps({"l4t": "35.4.1", "compute_capability": "7.2"}))
    for args in (
        ["install", str(tiny_bundle), "--root", str(root)],
        ["run", "--root", str(root), "--source", "demo", "--max-frames", "3", "--threads", "1"],
    ):
        done = subprocess.run(EDGE_SDK + args, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
    return root


def fleet_status(sshd, targets, *args: str) -> subprocess.CompletedProcess:
    command = EDGE_SDK + ["fleet", "status", "--identity", str(sshd.identity), "--known-hosts", str(sshd.known_hosts)]
    command += ["--remote-command", REMOTE_EDGE_SDK, "--connect-timeout", "5"]
    command += [arg for target in targets for arg in ("--to", target)] + list(args)
    env = dict(os.environ, COLUMNS="250")  # the table on one line per robot, whatever the temp paths' length
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)


def test_fleet_status_json(robot, sshd):
    unreachable = "{}@127.0.0.1:{}/tmp/nowhere".format(sshd.user, free_port())
    targets = [sshd.target(robot), unreachable]
    result = fleet_status(sshd, targets, "--json")
    assert result.returncode == 1, result.stderr
    rows = json.loads(result.stdout)
    assert [(r["robot"], r["outcome"]) for r in rows] == [(targets[0], "ok"), (targets[1], "unreachable")]
    assert "refused" in rows[1]["detail"].lower() and rows[1]["status"] is None

    status = rows[0]["status"]
    active = status["active"]
    assert (active["name"], active["version"], active["health"]) == ("tiny", "0.1.0", "loaded (no golden check)")
    assert isinstance(status["service"], str) and status["service"]
    assert status["uptime_s"] > 0
    runtime = status["runtime"]
    assert (runtime["bundle"]["name"], runtime["bundle"]["sha256"]) == ("tiny", active["sha256"])
    assert runtime["frames"] >= 1 and runtime["last_frame_age_s"] >= 0


def test_fleet_status_table_from_a_robots_file(robot, sshd, tmp_path):
    robots = tmp_path / "robots.txt"
    robots.write_text("# the line\n{}\n{}@127.0.0.1:{}\n".format(sshd.target(robot), sshd.user, free_port()))
    result = fleet_status(sshd, [], "--robots", str(robots))
    assert result.returncode == 1, result.stderr
    assert "tiny 0.1.0" in result.stdout and "loaded (no golden check)" in result.stdout
    assert "unreachable" in result.stdout
    assert "2 robots: 1 read, 1 unreachable or failed" in result.stdout


def test_fleet_status_of_reachable_robots_exits_0(robot, sshd):
    result = fleet_status(sshd, [sshd.target(robot)], "--json")
    assert result.returncode == 0, result.stderr
    assert [r["outcome"] for r in json.loads(result.stdout)] == ["ok"]
