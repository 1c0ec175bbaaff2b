"""`edge-sdk doctor` on fake robot roots, and its decisions on hand-made probes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from device.doctor import FAIL, OK, WARN, Probe, diagnose, parse_power_mode, probe_machine
from device.robot import parse_l4t_release

JETPACK_51 = "# R35 (release), REVISION: 3.1, GCID: 32827747, BOARD: t186ref, EABI: aarch64, DATE: Sun Mar 19 15:19:21 UTC 2023\n"
JETPACK_46 = "# R32 (release), REVISION: 7.1, GCID: 29818004, BOARD: t186ref, EABI: aarch64, DATE: Sat Feb 19 17:07:00 UTC 2022\n"


def make_root(tmp_path, release=JETPACK_51, videos=("video0",), serials=("ttyTHS0",)):
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "dev").mkdir()
    (root / "proc/device-tree").mkdir(parents=True)
    if release is not None:
        (root / "etc/nv_tegra_release").write_text(release)
    (root / "proc/device-tree/model").write_text("Jetson-AGX\x00")
    for name in (*videos, *serials):
        (root / "dev" / name).write_text("")
    return root


def by_name(checks):
    return {c.name: c for c in checks}


def test_l4t_release_parsing():
    assert parse_l4t_release(JETPACK_51) == (35, 3, 1)
    assert parse_l4t_release("# R35 (release), REVISION: 4, GCID") == (35, 4, 0)
    assert parse_l4t_release("garbage") is None
    assert parse_power_mode("NV Power Mode: MAXN\n0\n") == "MAXN"


def test_jetpack51_root_finds_devices(tmp_path):
    root = make_root(tmp_path)
    checks = by_name(diagnose(probe_machine(str(root), str(tmp_path / "cache"), with_paddle=False)))
    assert checks["l4t"].status == OK and "r35.3.1" in checks["l4t"].detail and "Jetson-AGX" in checks["l4t"].detail
    assert checks["camera"].status == OK and str(root / "dev/video0") in checks["camera"].detail
    assert checks["serial"].status == OK and "ttyTHS0" in checks["serial"].detail
    assert checks["engine-cache"].status == OK


def test_old_jetpack_and_missing_devices_fail_with_fixes(tmp_path):
    root = make_root(tmp_path, release=JETPACK_46, videos=(), serials=())
    checks = by_name(diagnose(probe_machine(str(root), str(tmp_path / "cache"), with_paddle=False)))
    assert checks["l4t"].status == FAIL and "JetPack 5.1" in checks["l4t"].fix
    assert checks["camera"].status == WARN and checks["camera"].fix
    assert checks["serial"].status == WARN


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_engine_cache_fails(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    checks = by_name(diagnose(probe_machine(str(make_root(tmp_path)), str(locked / "engines"), with_paddle=False)))
    assert checks["engine-cache"].status == FAIL


def test_engine_cache_that_is_a_file_fails(tmp_path):
    blocker = tmp_path / "cache"
    blocker.write_text("not a folder")
    checks = by_name(diagnose(probe_machine(str(make_root(tmp_path)), str(blocker / "engines"), with_paddle=False)))
    assert checks["engine-cache"].status == FAIL and "mkdir" in checks["engine-cache"].fix


def test_paddle_decisions():
    cpu_build = by_name(diagnose(Probe(python_version=(3, 8, 10), paddle_version="2.6.2")))
    assert cpu_build["paddle"].status == OK and cpu_build["paddle-cuda"].status == WARN
    wrong_major = by_name(diagnose(Probe(python_version=(3, 8, 10), paddle_version="3.0.0")))
    assert wrong_major["paddle"].status == FAIL
    no_trt = by_name(
        diagnose(Probe(python_version=(3, 8, 10), paddle_version="2.6.2", paddle_cuda=True, paddle_tensorrt=(0, 0, 0)))
    )
    assert no_trt["tensorrt"].status == FAIL
    jetson = Probe(
        python_version=(3, 8, 10), paddle_version="2.6.2", paddle_cuda=True, paddle_tensorrt=(8, 5, 2),
        gpu_names=["Xavier"], gpu_capabilities=["7.2"],
    )  # fmt: skip
    checks = by_name(diagnose(jetson))
    assert checks["tensorrt"].status == OK and checks["gpu"].status == OK and "gpu-kernels" not in checks
    jetson.gpu_kernel_error = "no kernel image is available for execution on the device"
    assert by_name(diagnose(jetson))["gpu-kernels"].status == FAIL
    assert by_name(diagnose(Probe(python_version=(3, 7, 0))))["python"].status == FAIL


def test_dialout_membership():
    checks = by_name(diagnose(Probe(python_version=(3, 8, 0), user_groups=["video"])))
    assert checks["dialout"].status == FAIL and "usermod" in checks["dialout"].fix
    assert "dialout" not in by_name(diagnose(Probe(python_version=(3, 8, 0), user_groups=["dialout"])))
    assert "dialout" not in by_name(diagnose(Probe(python_version=(3, 8, 0), user_is_root=True)))


def test_cli_json_and_exit_code(tmp_path):
    """This machine, with an engine cache under a file (a failure on any machine): exit 1, JSON findings."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    cmd = [sys.executable, "-m", "edge_cli", "doctor", "--skip-paddle", "--json", "--engine-cache", str(blocker / "c")]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stderr
    findings = {c["name"]: c for c in json.loads(result.stdout)}
    assert findings["engine-cache"]["status"] == FAIL and findings["engine-cache"]["fix"]
    assert {"python", "l4t", "engine-cache", "disk"} <= set(findings)
