"""`edge-sdk bundle inspect|verify|sign` and `edge-sdk keygen`, run as a user would (subprocess)."""

from __future__ import annotations

import hashlib
import io
import json
import lzma
import shutil
import stat
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any, List

import pytest

from edge_sdk.bundle import CODEC_KEY, InputSpec, Manifest, StageMetrics, write_bundle
from tests.conftest import OLD_FORMAT_TINY_BUNDLE

FILES = {"model/model.pdmodel": b"program" * 50, "model/model.pdiparams": b"\x01\x02\x03" * 500}


def edge_sdk(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    exe = shutil.which("edge-sdk") or str(Path(sys.executable).parent / "edge-sdk")
    command = [exe] if Path(exe).exists() else [sys.executable, "-m", "edge_cli"]
    return subprocess.run(command + list(args), cwd=str(cwd), capture_output=True, text=True, timeout=120)


def assert_one_error_line(result: subprocess.CompletedProcess, contains: str) -> None:
    assert result.returncode != 0
    lines: List[str] = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert contains in lines[0]
    assert "Traceback" not in result.stderr + result.stdout


@pytest.fixture
def bundle(tmp_path) -> Path:
    manifest = Manifest(
        name="pcb",
        version="0.3.0",
        architecture="yolov3_mobilenet_v1",
        classes=("missing_hole", "short"),
        input=InputSpec(size=(96, 96)),
        metrics=(
            StageMetrics("train", map50=0.612, map=0.301, flops=2.5e9, params=3.1e6, bytes=12e6, latency_ms=41.0),
        ),
    )
    return write_bundle(tmp_path / "pcb-0.3.0.edgebundle", manifest, FILES)


def test_verify_ok(tmp_path, bundle):
    result = edge_sdk("bundle", "verify", str(bundle), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["OK", "pcb", "0.3.0", hashlib.sha256(bundle.read_bytes()).hexdigest(), "unsigned"]


def test_verify_corrupt_bundle_prints_one_error_line(tmp_path, bundle):
    with tarfile.open(str(bundle)) as tar:
        program = tar.getmember("model/model.pdmodel")
    assert program.pax_headers[CODEC_KEY] == "xz"
    data = bytearray(bundle.read_bytes())
    data[program.offset_data + program.size - 6] ^= 0xFF  # the member's xz stream footer, under a CRC32
    corrupt = tmp_path / "corrupt.edgebundle"
    corrupt.write_bytes(bytes(data))
    assert_one_error_line(edge_sdk("bundle", "verify", str(corrupt), cwd=tmp_path), "corrupt compressed data")

    old_tar = bytearray(lzma.decompress(OLD_FORMAT_TINY_BUNDLE.read_bytes()))
    with tarfile.open(fileobj=io.BytesIO(bytes(old_tar))) as tar:
        old_tar[tar.getmember("model/model.pdiparams").offset_data + 100] ^= 0xFF
    corrupt.write_bytes(lzma.compress(bytes(old_tar), format=lzma.FORMAT_XZ))  # an older xz bundle, a tampered member
    assert_one_error_line(edge_sdk("bundle", "verify", str(corrupt), cwd=tmp_path), "sha256")


def test_verify_truncated_and_missing_bundles(tmp_path, bundle):
    truncated = tmp_path / "truncated.edgebundle"
    truncated.write_bytes(bundle.read_bytes()[: bundle.stat().st_size // 2])
    assert_one_error_line(edge_sdk("bundle", "verify", str(truncated), cwd=tmp_path), "truncated")
    assert_one_error_line(edge_sdk("bundle", "verify", "nope.edgebundle", cwd=tmp_path), "does not exist")


def test_keygen_sign_verify(tmp_path, bundle):
    result = edge_sdk("keygen", "--out-dir", "keys", "--name", "factory", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    private, public = tmp_path / "keys" / "factory.key", tmp_path / "keys" / "factory.pub"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600 and public.exists()
    before = private.read_bytes()
    assert_one_error_line(edge_sdk("keygen", "--out-dir", "keys", "--name", "factory", cwd=tmp_path), "already exists")
    assert private.read_bytes() == before

    assert_one_error_line(
        edge_sdk("bundle", "verify", str(bundle), "--trusted-key", str(public), cwd=tmp_path), "not signed"
    )

    result = edge_sdk("bundle", "sign", str(bundle), "--key", str(private), "--out", "signed.edgebundle", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [  # the long part (verifying) is announced
        "signing {} (0.0 MB): verifying it, then writing it with the signature".format(bundle)
    ]
    assert_one_error_line(edge_sdk("bundle", "sign", str(bundle), "--key", "missing.key", cwd=tmp_path), "missing.key")
    signed = tmp_path / "signed.edgebundle"
    result = edge_sdk("bundle", "verify", str(signed), "--trusted-key", str(tmp_path / "keys"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("OK pcb 0.3.0 ") and "signed-by" in result.stdout

    edge_sdk("keygen", "--out-dir", "other", cwd=tmp_path)
    result = edge_sdk("bundle", "verify", str(signed), "-k", str(tmp_path / "other" / "edge-sdk.pub"), cwd=tmp_path)
    assert_one_error_line(result, "not trusted")


@pytest.mark.parametrize("out_dir", ["afile", "afile/keys"])
def test_keygen_out_dir_that_is_a_file(tmp_path, out_dir):
    (tmp_path / "afile").write_text("not a folder")
    result = edge_sdk("keygen", "--out-dir", out_dir, cwd=tmp_path)
    assert_one_error_line(result, "--out-dir {}: afile is a file, not a folder".format(out_dir))
    assert "Errno" not in result.stderr and sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def _with_manifest_values(bundle: Path, out: Path, **changes: Any) -> Path:
    """A copy of `bundle` whose manifest.json has postprocess/input values replaced (write_bundle refuses them)."""
    with tarfile.open(str(bundle)) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with lzma.open(str(out), "wb", format=lzma.FORMAT_XZ) as xz, tarfile.open(fileobj=xz, mode="w") as tar:
        for member, data in members:
            if member.name == "manifest.json":
                manifest = json.loads(data)
                for key, value in changes.items():
                    section, field = key.split("__")
                    manifest[section][field] = value
                data = json.dumps(manifest).encode()
                member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    return out


OUT_OF_RANGE = [
    ({"postprocess__score_threshold": 1.5}, "postprocess.score_threshold: expected a number between 0 and 1, got 1.5"),
    ({"postprocess__keep_top_k": 10**9}, "postprocess.keep_top_k: expected an integer between 1 and 10000"),
    ({"input__size": [10**9, 10**9]}, "input.size[0]: expected an integer between 1 and 4096, got 1000000000"),
]


@pytest.mark.parametrize("changes, message", OUT_OF_RANGE, ids=[list(c)[0] for c, _ in OUT_OF_RANGE])
def test_manifest_values_out_of_range_are_refused_by_verify_and_install(tmp_path, bundle, changes, message):
    bad = _with_manifest_values(bundle, tmp_path / "bad.edgebundle", **changes)
    assert_one_error_line(edge_sdk("bundle", "verify", str(bad), cwd=tmp_path), "manifest field " + message)
    store = tmp_path / "store"
    store.mkdir()
    (store / "robot.json").write_text(json.dumps({"l4t": "35.4.1", "compute_capability": "7.2"}))
    result = edge_sdk("install", str(bad), "--root", str(store), cwd=tmp_path)
    assert_one_error_line(result, "manifest field " + message)
    assert not any(store.rglob("*.pdmodel")) and not any(store.rglob("manifest.json"))


def test_inspect_json_and_table(tmp_path, bundle):
    result = edge_sdk("bundle", "inspect", str(bundle), "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["manifest"]["classes"] == ["missing_hole", "short"]
    assert {f["path"] for f in info["manifest"]["files"]} == set(FILES)
    assert info["signed"] is False

    result = edge_sdk("bundle", "inspect", str(bundle), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for text in (
        "pcb",
        "yolov3_mobilenet_v1",
        "missing_hole",
        "96x96",
        "fp32",
        "train",
        "0.6120",
        "model/model.pdiparams",
        "unsigned",
    ):
        assert text in result.stdout, text
