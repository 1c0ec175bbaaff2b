"""The TensorRT engine is built at install: the install health check plans the predictor exactly as
`edge-sdk run` does (same plan, same cache key, same cache folder), reports the engine, says what it
is doing while it runs, and hands the engine to the service's user."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from device.health import HealthSettings
from device.predictor import (
    SYSTEM_CACHE_ROOT,
    Environment,
    engine_cache_handover,
    install_cache_root,
    plan_for,
)
from device.runtime import RunOptions
from device.service import render_unit, unit_user
from tests.device.test_predictor_plan import XAVIER, make_manifest

ORIN = dataclasses.replace(XAVIER, compute_capability="8.7", device_name="Orin", tensorrt_version="8.5.2.2")
SHA = "c" * 64


@pytest.mark.parametrize("environment", [XAVIER, ORIN], ids=["xavier", "orin"])
@pytest.mark.parametrize(
    "run_args",
    [
        {},
        {"precision": "fp16", "dla_core": 0, "threads": 4},
        {"precision": "fp16", "device": "gpu", "engine_cache": "/srv/engines"},
    ],
    ids=["defaults", "fp16-dla", "own-cache"],
)
def test_install_plans_the_engine_run_loads(monkeypatch, environment: Environment, run_args):
    """The service runs with EDGE_SDK_ENGINE_CACHE=SYSTEM_CACHE_ROOT (its unit sets it); `sudo edge-sdk
    install` runs without it, as root, given the service's run options."""
    manifest = make_manifest("fp32")
    monkeypatch.setenv("EDGE_SDK_ENGINE_CACHE", SYSTEM_CACHE_ROOT)
    run = plan_for(manifest, environment, RunOptions(source="0", **run_args).plan_options(), SHA)

    monkeypatch.delenv("EDGE_SDK_ENGINE_CACHE")
    install = HealthSettings(
        device=run_args.get("device", "auto"),
        precision=run_args.get("precision"),
        dla_core=run_args.get("dla_core"),
        threads=run_args.get("threads"),
        engine_cache=run_args.get("engine_cache") or install_cache_root({}, running_as_root=True),
    )
    installed = plan_for(manifest, environment, install.plan_options(), SHA)

    assert installed == run
    assert installed.use_tensorrt and installed.cache_key == run.cache_key
    assert installed.engine_cache_dir.parent == Path(run_args.get("engine_cache", SYSTEM_CACHE_ROOT))


def test_install_cache_root():
    assert install_cache_root({"EDGE_SDK_ENGINE_CACHE": "/x"}, running_as_root=True) == "/x"
    assert install_cache_root({}, running_as_root=True) == SYSTEM_CACHE_ROOT
    assert install_cache_root({}, running_as_root=False) is None


def test_engine_cache_handover():
    folders, files = [Path("/c/e"), Path("/c/e/sub")], [Path("/c/e/engine.trt")]
    assert engine_cache_handover(folders, files, "edge", running_as_root=True) == [
        (Path("/c/e"), "edge", 0o755),
        (Path("/c/e/sub"), "edge", 0o755),
        (Path("/c/e/engine.trt"), "edge", 0o644),
    ]
    assert engine_cache_handover(folders, files, "edge", running_as_root=False) == []
    assert engine_cache_handover(folders, files, None, running_as_root=True) == []


def test_unit_user():
    assert unit_user(render_unit(["--camera", "0"], user="inspector")) == "inspector"
    assert unit_user("[Service]\nExecStart=/bin/true\n") is None


def test_install_says_what_the_health_check_is_doing_and_reports_the_engine_key(tiny_bundle, tmp_path):
    """The health check runs in a child process; its progress reaches the installer's status line."""
    from device.install import install_bundle

    root = tmp_path / "robot"
    root.mkdir()
    (root / "robot.json").write_text(json.dumps({"l4t": "35.4.1", "compute_capability": "7.2"}))
    messages = []
    install_bundle(tiny_bundle, root, health=HealthSettings(device="cpu", threads=1), log=messages.append)
    assert "health: model loaded" in messages and "health: golden check done" in messages

    done = subprocess.run(
        [sys.executable, "-m", "edge_cli", "install", str(tiny_bundle), "--root", str(root), "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert "engine_key" in doc and doc["engine_key"] is None  # already installed: no check, no engine


@pytest.mark.gpu
def test_install_builds_the_engine_run_loads(tiny_bundle, tmp_path, monkeypatch):
    from device.detector import Detector
    from device.installed import active_bundle

    cache = tmp_path / "engines"
    root = tmp_path / "robot"
    done = subprocess.run(
        [sys.executable, "-m", "edge_cli", "install", str(tiny_bundle), "--root", str(root)]
        + ["--precision", "fp16", "--engine-cache", str(cache), "--json"],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["engine_key"] and doc["health"]["engine"]["key"] == doc["engine_key"]
    engine_dir = Path(doc["health"]["engine"]["folder"])
    assert engine_dir.parent == cache and any(engine_dir.iterdir())

    messages = []
    options = RunOptions(source="0", precision="fp16", engine_cache=str(cache))
    detector = Detector(active_bundle(root), plan_options=options.plan_options(), log=messages.append)
    try:
        assert detector.plan.cache_key == doc["engine_key"]
        assert not any("building the TensorRT engine" in m for m in messages)  # loaded from the cache
    finally:
        detector.close()
