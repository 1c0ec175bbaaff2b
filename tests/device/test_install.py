"""`edge-sdk install | rollback | list` on a store under tmp: the refusal matrix, health gate, rollback.

Every refusal must print one line `error: ...` naming the reason, exit non-zero, and leave the
active version untouched: same pointers, same version folders, same bytes in every stored file.
Bundles are variants of the session's tiny YOLOv3 bundle (real model, real Paddle on CPU).
"""

from __future__ import annotations

import json
import lzma
import os
import re
import shutil
import subprocess
import sys
import tarfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from device.golden import golden_files
from device.health import HealthSettings
from device.install import install_bundle, list_versions
from device.installed import InstalledBundle
from device.robot import version_key
from device.store import Store
from edge_sdk.bundle import CODEC_KEY, TargetConstraints, open_bundle, write_bundle
from edge_sdk.detections import Detections
from edge_sdk.errors import InstallError
from edge_sdk.fileio import file_sha256
from edge_sdk.signing import generate_keypair

ROBOT = {"l4t": "35.4.1", "compute_capability": "7.2"}
GOLDEN_THRESHOLD = 0.05


def edge_sdk(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge_cli", *args], capture_output=True, text=True, timeout=300)


def error_line(result: subprocess.CompletedProcess) -> str:
    """The CLI's error: exactly one line on stderr starting with 'error: '."""
    assert result.returncode != 0, result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def snapshot(root: Path) -> dict:
    """Pointers, version folders and the sha256 of every stored file."""
    store = Store(root)
    files = {str(p.relative_to(root)): file_sha256(p) for p in sorted(store.bundles.rglob("*")) if p.is_file()}
    return {"pointers": store.pointers(), "dirs": store.version_dirs(), "files": files}


def variant(source: Path, out_dir: Path, version: str, key=None, target=None, files=None, tag: str = "") -> Path:
    """A bundle like `source` with another version (and optionally target, files, signature)."""
    with open_bundle(source, staging_dir=out_dir) as bundle:
        members = {e.path: bundle.path_of(e.path) for e in bundle.manifest.files}
        members.update(files or {})
        manifest = replace(bundle.manifest, version=version, files=())
        if target is not None:
            manifest = replace(manifest, target=target)
        out = out_dir / "tiny-{}{}.edgebundle".format(version, tag)
        return write_bundle(out, manifest, members, signing_key=key)


def rewrite_tar(source: Path, out: Path, drop=(), add=None) -> Path:
    """Copy a bundle's tar member by member, dropping and adding members (manifest untouched)."""
    import io

    with tarfile.open(str(source)) as tin, tarfile.open(str(out), "w", format=tarfile.PAX_FORMAT) as tout:
        for member in tin:
            if member.name not in drop:
                tout.addfile(member, tin.extractfile(member))
        for name, data in (add or {}).items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tout.addfile(info, io.BytesIO(data))
    return out


def flip_byte(source: Path, out: Path, member_name: str) -> Path:
    """`source` with one bit of `member_name`'s file flipped (an xz member decoded, flipped, encoded again)."""
    import io

    with tarfile.open(str(source)) as tin, tarfile.open(str(out), "w", format=tarfile.PAX_FORMAT) as tout:
        for member in tin:
            data = tin.extractfile(member).read()
            if member.name == member_name:
                packed = member.pax_headers.get(CODEC_KEY) == "xz"
                content = bytearray(lzma.decompress(data) if packed else data)
                content[len(content) // 2] ^= 0x01
                data = lzma.compress(bytes(content), format=lzma.FORMAT_XZ) if packed else bytes(content)
                member.size = len(data)
            tout.addfile(member, io.BytesIO(data))
    return out


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    folder = tmp_path_factory.mktemp("keys")
    generate_keypair(folder / "trusted.key", folder / "trusted.pem")
    generate_keypair(folder / "other.key", folder / "other.pem")
    return folder


@pytest.fixture(scope="module")
def golden_samples(tiny_bundle):
    """Two images and the tiny model's detections on them (what the workstation would record)."""
    from device.detector import Detector

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (96, 128, 3), dtype=np.uint8) for _ in range(2)]
    with Detector(tiny_bundle, device="cpu") as detector:
        samples = [(image, detector.detect(image, score_threshold=GOLDEN_THRESHOLD)) for image in images]
    assert sum(len(d.scores) for _, d in samples) > 0, "the tiny model should detect something at 0.05"
    return samples


@pytest.fixture(scope="module")
def made(tiny_bundle, keys, golden_samples, tmp_path_factory):
    """The bundles of the matrix (all signed by the trusted key unless said otherwise)."""
    out = tmp_path_factory.mktemp("variants")
    trusted = keys / "trusted.key"
    good_golden = golden_files(golden_samples, score_threshold=GOLDEN_THRESHOLD)
    shifted = [
        (image, Detections(d.boxes + 20.0, d.scores, d.class_ids, d.frame_id, d.timestamp))
        for image, d in golden_samples
    ]
    b = {
        "v1": variant(tiny_bundle, out, "0.1.0", trusted),
        "v2": variant(tiny_bundle, out, "0.2.0", trusted, files=good_golden),
        "v3": variant(tiny_bundle, out, "0.3.0", trusted),
        "unsigned": variant(tiny_bundle, out, "0.3.0", tag="-unsigned"),
        "wrong_key": variant(tiny_bundle, out, "0.3.0", keys / "other.key", tag="-other"),
        "wrong_l4t": variant(
            tiny_bundle, out, "0.3.0", trusted, target=TargetConstraints(l4t_min="36.2", l4t_max="36.99"), tag="-l4t"
        ),
        "wrong_cc": variant(
            tiny_bundle, out, "0.3.0", trusted, target=TargetConstraints(compute_capability=("8.7",)), tag="-cc"
        ),
        "new_runtime": variant(
            tiny_bundle, out, "0.3.0", trusted, target=TargetConstraints(min_runtime_version="9.0"), tag="-rt"
        ),
        "same_version_rebuilt": variant(
            tiny_bundle, out, "0.2.0", trusted, files={"calibration/note.txt": b"rebuilt"}, tag="-rebuilt"
        ),
        "bad_golden": variant(
            tiny_bundle, out, "0.3.0", trusted, files=golden_files(shifted, GOLDEN_THRESHOLD), tag="-badgolden"
        ),
        "bad_model": variant(
            tiny_bundle, out, "0.3.0", trusted, files={"model/model.pdmodel": b"not a paddle program"}, tag="-badmodel"
        ),
    }
    b["flipped"] = flip_byte(b["v3"], out / "flipped.edgebundle", "model/model.pdiparams")
    b["extra"] = rewrite_tar(b["v3"], out / "extra.edgebundle", add={"model/extra.bin": b"smuggled"})
    b["missing"] = rewrite_tar(b["v3"], out / "missing.edgebundle", drop={"model/model.pdiparams"})
    return b


@pytest.fixture(scope="module")
def template(made, keys, tmp_path_factory):
    """A robot store that trusts `trusted.pem`, with 0.1.0 then 0.2.0 (golden images) installed."""
    root = tmp_path_factory.mktemp("store") / "root"
    root.mkdir()
    (root / "robot.json").write_text(json.dumps(ROBOT))
    (root / "keys").mkdir()
    shutil.copy(str(keys / "trusted.pem"), str(root / "keys" / "trusted.pem"))
    install_bundle(made["v1"], root, skip_health=True)
    result = install_bundle(made["v2"], root, health=HealthSettings(device="cpu"))
    assert result.health is not None and result.health.passed, result.health
    assert result.health.checks["golden"].startswith("ok: 2 images"), result.health.checks
    assert not result.health.warnings
    return root


@pytest.fixture
def store(template, tmp_path) -> Path:
    root = tmp_path / "root"
    shutil.copytree(str(template), str(root), symlinks=True)
    return root


REFUSALS = [
    ("unsigned", "not signed"),
    ("wrong_key", "not trusted"),
    ("flipped", "does not match its sha256"),
    ("extra", "not listed in the manifest"),
    ("missing", "missing from the bundle"),
    ("wrong_l4t", "needs L4T 36.2..36.99, this robot has L4T 35.4.1"),
    ("wrong_cc", "targets compute capability 8.7, this robot's GPU is 7.2"),
    ("new_runtime", "needs edge-sdk runtime >= 9.0"),
    ("v1", "older than the active 0.2.0"),
    ("same_version_rebuilt", "differs from the active tiny 0.2.0"),
]


@pytest.mark.parametrize("name,reason", REFUSALS, ids=[r[0] for r in REFUSALS])
def test_refused_with_one_line_and_active_untouched(made, store, name, reason):
    before = snapshot(store)
    line = error_line(edge_sdk("install", str(made[name]), "--root", str(store)))
    assert reason in line
    assert snapshot(store) == before
    last = list(Store(store).history())[-1]
    assert last["event"] == "refused" and reason in last["reason"]


def test_robot_without_description_is_refused_clearly(made, store):
    (store / "robot.json").unlink()
    before = snapshot(store)
    line = error_line(edge_sdk("install", str(made["v3"]), "--root", str(store)))
    assert "robot.json" in line
    assert snapshot(store) == before


def test_downgrade_accepted_with_flag(made, store):
    result = edge_sdk("install", str(made["v1"]), "--root", str(store), "--allow-downgrade", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    pointers = Store(store).pointers()
    assert pointers["active"].startswith("tiny-0.1.0-") and pointers["previous"].startswith("tiny-0.2.0-")


def test_same_bundle_again_is_a_no_op(made, store):
    before = snapshot(store)
    result = edge_sdk("install", str(made["v2"]), "--root", str(store), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["outcome"] == "already-installed"
    assert snapshot(store) == before


HEALTH_FAILURES = [
    ("bad_golden", (), r"golden check failed: 2 images, .* unmatched .*: (missing|extra) class"),
    # Paddle 2.6 segfaults on a garbage program: the isolated health check turns that into a failure.
    ("bad_model", (), "the model (does not load|crashed the health check)"),
    ("v3", ("--min-fps", "1000000"), r"below the minimum 1e\+06"),
]


@pytest.mark.parametrize("name,extra,reason", HEALTH_FAILURES, ids=[h[0] + "".join(h[1]) for h in HEALTH_FAILURES])
def test_health_failure_restores_previous_version(made, store, name, extra, reason):
    before = snapshot(store)
    line = error_line(edge_sdk("install", str(made[name]), "--root", str(store), "--device", "cpu", *extra))
    assert "health check failed for tiny 0.3.0" in line and re.search(reason, line)
    assert "restored tiny-0.2.0-" in line
    assert snapshot(store) == before  # the failed version's folder is gone too
    last = list(Store(store).history())[-1]
    assert last["event"] == "health-failed" and re.search(reason, last["reason"])


def test_health_pass_commits_and_list_shows_it(made, store):
    result = edge_sdk("install", str(made["v3"]), "--root", str(store), "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert "installed tiny 0.3.0" in result.stdout and "FPS" in result.stdout
    assert "golden check skipped" in result.stderr  # v3 carries no golden images
    rows = json.loads(edge_sdk("list", "--root", str(store), "--json").stdout)
    assert [(r["version"], r["active"], r["previous"]) for r in rows] == [
        ("0.3.0", True, False),
        ("0.2.0", False, True),
        ("0.1.0", False, False),
    ]
    assert all(r["signed_by"] for r in rows) and rows[0]["fps"] > 0
    # "passed" only where golden images were compared: v2 carries them, v3 does not, v1 skipped the check
    assert [r["health"] for r in rows] == ["loaded (no golden check)", "passed", "skipped"]
    assert list(Store(store).history())[-1]["health"] == "loaded (no golden check)"
    table = edge_sdk("list", "--root", str(store))
    assert table.returncode == 0 and "active" in table.stdout and "previous" in table.stdout


def test_list_fits_an_80_column_terminal(made, store):
    """Every line within 80 characters, and each version's build, install date and signer unbroken on its row."""
    install_bundle(made["v3"], store, skip_health=True)
    result = subprocess.run(
        [sys.executable, "-m", "edge_cli", "list", "--root", str(store)],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, COLUMNS="80"),
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80, result.stdout
    for row in list_versions(store):
        line = next((line for line in lines if row["sha256"][:8] in line), "")
        assert row["installed_at"][:10] in line and row["signed_by"][:8] in line, result.stdout
        assert "tiny " + row["version"] in line, result.stdout


def test_rollback_and_list(made, store):
    install_bundle(made["v3"], store, skip_health=True)
    result = edge_sdk("rollback", "--root", str(store))
    assert result.returncode == 0, result.stderr
    rows = {r["version"]: r for r in list_versions(store)}
    assert rows["0.2.0"]["active"] and rows["0.1.0"]["previous"]
    assert rows["0.3.0"]["status"] == "rolled-back" and not rows["0.3.0"]["active"]
    InstalledBundle(Store(store).version_dir(Store(store).pointer("active"))).verify()
    assert edge_sdk("rollback", "--root", str(store)).returncode == 0
    assert {r["version"] for r in list_versions(store) if r["active"]} == {"0.1.0"}
    line = error_line(edge_sdk("rollback", "--root", str(store)))
    assert "nothing to roll back to" in line


def test_old_versions_are_pruned(made, store, tmp_path):
    v4 = variant(made["v3"], tmp_path, "0.4.0")
    (store / "keys" / "trusted.pem").unlink()  # unsigned v4 is fine once no key is trusted
    install_bundle(made["v3"], store, skip_health=True, keep=3)
    result = install_bundle(v4, store, skip_health=True, keep=1)
    assert [d.split("-")[1] for d in result.pruned] == ["0.2.0", "0.1.0"]
    assert [r["version"] for r in list_versions(store)] == ["0.4.0", "0.3.0"]


def test_first_install_health_failure_leaves_nothing_active(made, tmp_path):
    root = tmp_path / "fresh"
    root.mkdir()
    (root / "robot.json").write_text(json.dumps(ROBOT))
    with pytest.raises(InstallError, match="restored nothing"):
        install_bundle(made["bad_model"], root, health=HealthSettings(device="cpu"))
    assert Store(root).pointers() == {"active": None, "previous": None}
    assert Store(root).version_dirs() == []


def test_explicit_trusted_keys_without_keys_is_refused(made, store, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InstallError, match="no trusted keys"):
        install_bundle(made["v3"], store, trusted_keys=empty, skip_health=True)


def test_version_order():
    assert version_key("0.10.0") > version_key("0.9.1") > version_key("0.9")
    assert version_key("1.0.0") > version_key("1.0.0rc1")
    assert version_key("1.0") == version_key("1.0.0")
