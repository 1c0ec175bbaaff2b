"""Power cuts during install and rollback: SIGKILL at every crash point and at 200 random moments.

After every kill, recovery must leave the active version on the old or the new bundle (never
neither, never a half-written one), verifiable by the sha256 of its stored .edgebundle and of every
extracted file, with no journal or staging leftovers, and the store must accept the next install.
The installer runs in a child process (`install_bundle` / `rollback` through `python -c`) without
the health check, so one install is a fraction of a second and the whole file runs in about a minute.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from device.install import install_bundle, list_versions
from device.installed import InstalledBundle
from device.store import CRASH_ENV, Store, recover
from edge_sdk.bundle import InputSpec, Manifest, open_bundle, write_bundle
from edge_sdk.fileio import file_sha256

RANDOM_KILLS = 200
REPO = Path(__file__).resolve().parents[2]


def make_bundle(folder: Path, version: str) -> Path:
    """A small bundle (no real model: these tests skip the health check) with a few files."""
    manifest = Manifest(
        name="pc",
        version=version,
        architecture="yolov3_mobilenet_v1",
        classes=("a", "b"),
        input=InputSpec(size=(32, 32)),
    )
    seed = version.encode()
    files = {
        "model/model.pdmodel": seed * 3000,
        "model/model.pdiparams": os.urandom(200_000),
        "calibration/table.txt": b"scale " + seed,
        "calibration/golden/0.png": seed * 10,
    }
    return write_bundle(folder / "pc-{}.edgebundle".format(version), manifest, files)


# The installer in a child process that can be killed: ROOT install BUNDLE [KEEP] | ROOT rollback.
INSTALLER = """
import sys
from device.install import DEFAULT_KEEP, install_bundle, rollback
root, command, rest = sys.argv[1], sys.argv[2], sys.argv[3:]
if command == "rollback":
    rollback(root)
else:
    keep = int(rest[1]) if len(rest) > 1 else DEFAULT_KEEP
    install_bundle(rest[0], root, allow_downgrade=True, skip_health=True, keep=keep)
"""


def installer(root: Path, *args: str, crash_at: str = "") -> subprocess.Popen:
    env = dict(os.environ)
    env.pop(CRASH_ENV, None)
    if crash_at:
        env[CRASH_ENV] = crash_at
    return subprocess.Popen(
        [sys.executable, "-c", INSTALLER, str(root), *args],
        cwd=str(REPO),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def install_args(bundle: Path):
    return ("install", str(bundle))


def run(root: Path, *args: str, crash_at: str = "") -> int:
    proc = installer(root, *args, crash_at=crash_at)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode in (0, -signal.SIGKILL), err.decode()
    return proc.returncode


def check_consistent(root: Path, allowed: set) -> str:
    """Recover, then assert the store is whole; return the active version folder."""
    recover(root)
    store = Store(root)
    assert not store.journal_path.exists(), "journal left behind after recovery"
    leftovers = [p.name for p in store.bundles.iterdir() if p.name.startswith(".")]
    leftovers += [p.name for p in root.iterdir() if p.name.startswith(".")]
    assert not leftovers, leftovers
    active = store.pointer("active")
    assert active in allowed, "active is {!r}, expected one of {}".format(active, sorted(allowed))
    installed = InstalledBundle(store.version_dir(active))
    installed.verify()
    with open_bundle(installed.path, staging_dir=root) as reopened:
        assert reopened.sha256 == installed.sha256
    assert (store.status(active) or {}).get("status") == "good", "active version is not committed"
    previous = store.pointer("previous")
    if previous is not None:
        InstalledBundle(store.version_dir(previous)).verify()
    for dirname in store.version_dirs():  # every stored version is complete
        InstalledBundle(store.version_dir(dirname)).verify()
    return active


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    folder = tmp_path_factory.mktemp("powercut-bundles")
    return [make_bundle(folder, v) for v in ("1.0.0", "2.0.0", "3.0.0")]


def dirname_of(root: Path, bundle: Path) -> str:
    sha = file_sha256(bundle)
    return next(d for d in Store(root).version_dirs() if d.endswith(sha[:12]))


@pytest.fixture(scope="module")
def template(tmp_path_factory, bundles):
    """A store with robot.json and 1.0.0 installed and active."""
    root = tmp_path_factory.mktemp("powercut-template") / "root"
    root.mkdir()
    (root / "robot.json").write_text('{"l4t": "35.4.1", "compute_capability": "7.2"}')
    assert run(root, *install_args(bundles[0])) == 0
    return root


def fresh_copy(template: Path, dest: Path) -> Path:
    if dest.exists():
        shutil.rmtree(str(dest))
    shutil.copytree(str(template), str(dest), symlinks=True)
    return dest


def crash_at_every_point(template: Path, work: Path, bundle: Path, keep: int, allowed: set) -> int:
    """Kill an install at crash point 1, 2, ... until it completes; check the store after each kill.

    After each kill and recovery, the same install (in this process) must then succeed.
    """
    kills = 0
    for step in range(1, 500):
        root = fresh_copy(template, work)
        args = install_args(bundle) + (str(keep),)
        if run(root, *args, crash_at=str(step)) == 0:
            check_consistent(root, allowed)
            return kills
        kills += 1
        check_consistent(root, allowed)
        install_bundle(bundle, root, allow_downgrade=True, skip_health=True, keep=keep)
        check_consistent(root, allowed)
    raise AssertionError("the install never completed")


def test_kill_at_every_crash_point_of_a_new_install(template, bundles, tmp_path):
    allowed = {Store(template).pointer("active"), "pc-2.0.0-" + file_sha256(bundles[1])[:12]}
    kills = crash_at_every_point(template, tmp_path / "root", bundles[1], 3, allowed)
    print("new install: survived {} kills, one at each crash point".format(kills))
    assert kills >= 15


def test_kill_at_every_crash_point_of_a_reinstall_with_pruning(template, bundles, tmp_path):
    """1.0.0, 2.0.0 and 3.0.0 stored; reinstall 1.0.0 (stored folder reused) with --keep 0 (prunes)."""
    base = fresh_copy(template, tmp_path / "base")
    assert run(base, *install_args(bundles[1])) == 0
    assert run(base, *install_args(bundles[2])) == 0
    assert len(Store(base).version_dirs()) == 3
    allowed = {dirname_of(base, bundles[0]), dirname_of(base, bundles[2])}
    kills = crash_at_every_point(base, tmp_path / "root", bundles[0], 0, allowed)
    print("reinstall + prune: survived {} kills".format(kills))
    assert kills >= 8


def test_kill_at_every_crash_point_of_a_rollback(template, bundles, tmp_path):
    base = fresh_copy(template, tmp_path / "base")
    assert run(base, *install_args(bundles[1])) == 0
    dirs = set(Store(base).version_dirs())
    kills = 0
    for step in range(1, 100):
        root = fresh_copy(base, tmp_path / "root")
        code = run(root, "rollback", crash_at=str(step))
        check_consistent(root, dirs)
        if code == 0:
            break
        kills += 1
    print("rollback: survived {} kills".format(kills))
    assert kills >= 3
    assert Store(root).pointer("active") == dirname_of(root, bundles[0])


# Installs A, B, A, B, ... until killed, so a kill after any delay lands somewhere in the work.
INSTALL_LOOP = """
import sys
from device.install import install_bundle
root, bundles = sys.argv[1], sys.argv[2:]
print("ready", flush=True)
for i in range(10000):
    install_bundle(bundles[i % len(bundles)], root, allow_downgrade=True, skip_health=True)
"""
WORKERS = 4


def _interrupted_work(root: Path) -> bool:
    """Whether a kill left something for recovery to finish or undo (journal, staging, temp files)."""
    store = Store(root)
    return store.journal_path.exists() or any(
        p.name.startswith(".") for folder in (root, store.bundles) for p in folder.iterdir()
    )


def test_two_hundred_random_power_cuts(template, bundles, tmp_path):
    """4 stores in parallel, 50 random kills each: SIGKILL an install loop 0.2-1.2 s after its imports, recover,
    check. The clock starts when the loop says it is ready, so a loaded machine's slow Python start-up does
    not eat the window."""
    from concurrent.futures import ThreadPoolExecutor

    allowed = {dirname_of(template, bundles[0]), "pc-2.0.0-" + file_sha256(bundles[1])[:12]}
    env = dict(os.environ)
    env.pop(CRASH_ENV, None)

    def worker(index: int):
        root = fresh_copy(template, tmp_path / "root{}".format(index))
        rng = random.Random(index)
        kills = interrupted = 0
        for _ in range(RANDOM_KILLS // WORKERS):
            proc = subprocess.Popen(
                [sys.executable, "-c", INSTALL_LOOP, str(root), str(bundles[0]), str(bundles[1])],
                cwd=str(REPO),
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            assert proc.stdout.readline() == b"ready\n", proc.stderr.read().decode()[-2000:]
            time.sleep(rng.uniform(0.2, 1.2))
            proc.send_signal(signal.SIGKILL)
            _, err = proc.communicate(timeout=60)
            assert proc.returncode == -signal.SIGKILL, err.decode()[-2000:]
            kills += 1
            interrupted += _interrupted_work(root)
            check_consistent(root, allowed)
        history = [e["event"] for e in Store(root).history()]
        return kills, interrupted, history.count("installed"), history.count("recovered")

    with ThreadPoolExecutor(WORKERS) as pool:
        results = list(pool.map(worker, range(WORKERS)))
    kills = sum(r[0] for r in results)
    interrupted = sum(r[1] for r in results)
    installs = sum(r[2] for r in results)
    recovered = sum(r[3] for r in results)
    print(
        "random power cuts: {} kills survived; {} left half-done work that recovery finished or undid "
        "({} journal recoveries); {} installs completed between kills".format(kills, interrupted, recovered, installs)
    )
    assert kills == RANDOM_KILLS
    assert interrupted >= RANDOM_KILLS // 5  # many kills land in the middle of an install (not in start-up)
    assert installs >= RANDOM_KILLS // 4
    root = tmp_path / "root0"
    install_bundle(bundles[2], root, skip_health=True)
    assert [r["version"] for r in list_versions(root) if r["active"]] == ["3.0.0"]
