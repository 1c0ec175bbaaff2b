"""Ed25519 bundle signatures: key files, signing, and what a robot with trusted keys refuses."""

from __future__ import annotations

import hashlib
import io
import json
import lzma
import stat
import subprocess
import sys
import tarfile
from dataclasses import replace
from pathlib import Path
from typing import Dict

import pytest
from cryptography.hazmat.primitives import serialization

from edge_sdk.bundle import (
    CODEC_KEY,
    InputSpec,
    Manifest,
    generate_keypair,
    inspect_bundle,
    open_bundle,
    sign_bundle,
    verify_bundle,
    write_bundle,
)
from edge_sdk.errors import BundleError, SignatureError
from edge_sdk.signing import load_private_key, load_public_key
from tests.conftest import OLD_FORMAT_TINY_BUNDLE

FILES = {"model/model.pdmodel": b"program" * 50, "model/model.pdiparams": b"\x01\x02\x03" * 500}


def make_manifest() -> Manifest:
    return Manifest(
        name="pcb",
        version="0.3.0",
        architecture="yolov3_mobilenet_v1",
        classes=("missing_hole", "short"),
        input=InputSpec(size=(96, 96)),
    )


@pytest.fixture
def keys(tmp_path) -> Dict[str, Path]:
    folder = tmp_path / "keys"
    folder.mkdir()
    generate_keypair(folder / "dev.key", folder / "dev.pub")
    other = tmp_path / "other"
    other.mkdir()
    generate_keypair(other / "intruder.key", other / "intruder.pub")
    return {
        "private": folder / "dev.key",
        "public": folder / "dev.pub",
        "folder": folder,
        "other_private": other / "intruder.key",
        "other_public": other / "intruder.pub",
    }


def members_of(path: Path) -> Dict[str, bytes]:
    """Every member's file as extracted (xz members decoded)."""
    with tarfile.open(str(path)) as tar:
        return {
            m.name: lzma.decompress(data) if m.pax_headers.get(CODEC_KEY) == "xz" else data
            for m, data in ((m, tar.extractfile(m).read()) for m in tar.getmembers())
        }


def retar(path: Path, members: Dict[str, bytes]) -> Path:
    """Write `members` as a bundle of today's layout, every file stored as it is."""
    with tarfile.open(str(path), "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_keypair_files_modes_and_key_id(keys):
    assert stat.S_IMODE(keys["private"].stat().st_mode) == 0o600
    assert keys["private"].read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS8
    assert keys["public"].read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    private = load_private_key(keys["private"])
    public = load_public_key(keys["public"])
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert raw == private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert sorted(p.name for p in keys["folder"].iterdir()) == ["dev.key", "dev.pub"]  # no temp files left


def test_keygen_refuses_to_overwrite(keys):
    before = keys["private"].read_bytes()
    with pytest.raises(BundleError, match="already exists"):
        generate_keypair(keys["private"], keys["folder"] / "new.pub")
    with pytest.raises(BundleError, match="already exists"):
        generate_keypair(keys["folder"] / "new.key", keys["public"])
    assert keys["private"].read_bytes() == before
    assert sorted(p.name for p in keys["folder"].iterdir()) == ["dev.key", "dev.pub"]


def test_signed_bundle_verifies_with_the_right_key(tmp_path, keys):
    path = write_bundle(tmp_path / "b.edgebundle", make_manifest(), FILES, signing_key=keys["private"])
    assert "manifest.sig" in members_of(path)
    raw = load_public_key(keys["public"]).public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    expected_id = hashlib.sha256(raw).hexdigest()[:16]
    for trusted in ([keys["public"]], keys["public"], [keys["folder"]], [keys["other_public"], keys["public"]]):
        with open_bundle(path, staging_dir=tmp_path, trusted_keys=trusted) as bundle:
            assert bundle.signed and bundle.signer_key_id == expected_id
            assert bundle.path_of("model/model.pdmodel").read_bytes() == FILES["model/model.pdmodel"]
    info = inspect_bundle(path, trusted_keys=[keys["public"]])
    assert info["signed"] and info["trusted"] and info["signer_key_id"] == expected_id


def test_signature_reported_but_not_required_without_keys(tmp_path, keys):
    signed = write_bundle(tmp_path / "s.edgebundle", make_manifest(), FILES, signing_key=keys["private"])
    unsigned = write_bundle(tmp_path / "u.edgebundle", make_manifest(), FILES)
    with open_bundle(signed) as bundle:
        assert bundle.signed and len(bundle.signer_key_id) == 16
    with open_bundle(unsigned) as bundle:
        assert not bundle.signed and bundle.signer_key_id is None


def _assert_refused_signature(tmp_path: Path, path: Path, trusted, match: str) -> None:
    staging = tmp_path / "staging"
    staging.mkdir(exist_ok=True)
    with pytest.raises(SignatureError, match=match) as info:
        open_bundle(path, staging_dir=staging, trusted_keys=trusted)
    assert "\n" not in str(info.value)
    assert list(staging.iterdir()) == []
    with pytest.raises(SignatureError, match=match):
        verify_bundle(path, trusted_keys=trusted)


def test_unsigned_bundle_refused_when_keys_configured(tmp_path, keys):
    path = write_bundle(tmp_path / "u.edgebundle", make_manifest(), FILES)
    _assert_refused_signature(tmp_path, path, [keys["public"]], "not signed")


def test_bundle_signed_by_another_key_refused(tmp_path, keys):
    path = write_bundle(tmp_path / "b.edgebundle", make_manifest(), FILES, signing_key=keys["other_private"])
    _assert_refused_signature(tmp_path, path, [keys["public"]], "not trusted")


def test_empty_trusted_folder_trusts_nothing(tmp_path, keys):
    empty = tmp_path / "empty"
    empty.mkdir()
    path = write_bundle(tmp_path / "b.edgebundle", make_manifest(), FILES, signing_key=keys["private"])
    _assert_refused_signature(tmp_path, path, [empty], r"not trusted \(trusted: none\)")


def test_tampered_manifest_refused(tmp_path, keys):
    path = write_bundle(tmp_path / "b.edgebundle", make_manifest(), FILES, signing_key=keys["private"])
    members = members_of(path)
    manifest = Manifest.from_bytes(members["manifest.json"])
    members["manifest.json"] = replace(manifest, classes=("missing_hole", "open_circuit")).canonical_bytes()
    retar(path, members)
    _assert_refused_signature(tmp_path, path, [keys["public"]], "does not match")
    with pytest.raises(SignatureError, match="does not match"):  # also caught with no trusted keys
        verify_bundle(path)


def test_tampered_file_with_rewritten_manifest_refused(tmp_path, keys):
    """Swapping weights and updating the manifest's sha256 to match still breaks the signature."""
    path = write_bundle(tmp_path / "b.edgebundle", make_manifest(), FILES, signing_key=keys["private"])
    members = members_of(path)
    evil = b"\x00" * len(FILES["model/model.pdiparams"])
    manifest = Manifest.from_bytes(members["manifest.json"])
    files = tuple(
        replace(f, sha256=hashlib.sha256(evil).hexdigest()) if f.path == "model/model.pdiparams" else f
        for f in manifest.files
    )
    members["manifest.json"] = replace(manifest, files=files).canonical_bytes()
    members["model/model.pdiparams"] = evil
    retar(path, members)
    _assert_refused_signature(tmp_path, path, [keys["public"]], "does not match")


def test_signature_replaced_by_attackers_own_refused(tmp_path, keys):
    path = write_bundle(tmp_path / "b.edgebundle", make_manifest(), FILES, signing_key=keys["private"])
    sign_bundle(path, keys["other_private"])
    _assert_refused_signature(tmp_path, path, [keys["public"]], "not trusted")


@pytest.mark.parametrize(
    "signature",
    [b"not json", b"{}", json.dumps({"algorithm": "ed25519", "public_key": "!!", "signature": "x"}).encode()],
)
def test_malformed_signature_refused(tmp_path, keys, signature):
    path = write_bundle(tmp_path / "b.edgebundle", make_manifest(), FILES, signing_key=keys["private"])
    members = members_of(path)
    members["manifest.sig"] = signature
    retar(path, members)
    _assert_refused_signature(tmp_path, path, [keys["public"]], "manifest.sig")


def test_sign_bundle_in_place_and_to_another_file(tmp_path, keys):
    path = write_bundle(tmp_path / "b.edgebundle", make_manifest(), FILES)
    original = path.read_bytes()
    out = sign_bundle(path, keys["private"], out=tmp_path / "signed.edgebundle")
    assert path.read_bytes() == original
    assert verify_bundle(out, trusted_keys=[keys["public"]]) == verify_bundle(path)
    assert sign_bundle(path, keys["private"]) == path
    assert (
        verify_bundle(path, trusted_keys=[keys["public"]]).files
        == Manifest.from_bytes(members_of(out)["manifest.json"]).files
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.edgebundle", "keys", "other", "signed.edgebundle"]


def test_signing_copies_the_files_records_and_matches_a_bundle_written_signed(tmp_path, keys):
    """Signing writes the manifest and signature records anew and copies the files' records as they are
    (a 90 MB bundle took 82 s to sign when the whole tar was compressed again)."""
    manifest = replace(make_manifest(), created_at="2026-01-02T03:04:05Z")
    unsigned = write_bundle(tmp_path / "unsigned.edgebundle", manifest, FILES)
    written_signed = write_bundle(tmp_path / "written.edgebundle", manifest, FILES, signing_key=keys["private"])
    signed = sign_bundle(unsigned, keys["private"], out=tmp_path / "signed.edgebundle")
    with tarfile.open(str(unsigned)) as tar:
        body = unsigned.read_bytes()[tar.getmembers()[1].offset :]
    assert signed.read_bytes().endswith(body) and len(signed.read_bytes()) > len(unsigned.read_bytes())
    assert signed.read_bytes() == written_signed.read_bytes()
    assert set(members_of(signed)) == {"manifest.json", "manifest.sig", *FILES}
    verify_bundle(signed, trusted_keys=[keys["public"]])
    resigned = sign_bundle(signed, keys["other_private"], out=tmp_path / "resigned.edgebundle")
    assert verify_bundle(resigned, trusted_keys=[keys["other_public"]]) == verify_bundle(signed)


def test_signing_an_older_xz_bundle_writes_todays_layout(tmp_path, keys):
    """A bundle written before each file had its own codec (OLD_FORMAT_TINY_BUNDLE) is signed into today's layout."""
    signed = sign_bundle(OLD_FORMAT_TINY_BUNDLE, keys["private"], out=tmp_path / "signed.edgebundle")
    assert not signed.read_bytes().startswith(b"\xfd7zXZ\x00")
    with tarfile.open(str(signed), mode="r:") as tar:
        assert tar.getnames()[:2] == ["manifest.json", "manifest.sig"]
    assert verify_bundle(signed, trusted_keys=[keys["public"]]) == verify_bundle(OLD_FORMAT_TINY_BUNDLE)


def test_sign_refuses_a_corrupt_bundle(tmp_path, keys):
    path = write_bundle(tmp_path / "b.edgebundle", make_manifest(), FILES)
    members = members_of(path)
    members["model/model.pdmodel"] = b"X" + members["model/model.pdmodel"][1:]
    retar(path, members)
    corrupt = path.read_bytes()
    with pytest.raises(BundleError, match="bundle member 'model/model.pdmodel' does not match its sha256"):
        sign_bundle(path, keys["private"])
    assert path.read_bytes() == corrupt
    with pytest.raises(BundleError, match="sha256"):  # the copy is verified before it is kept
        sign_bundle(path, keys["private"], out=tmp_path / "signed.edgebundle")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.edgebundle", "keys", "other"]


def test_public_key_is_not_a_signing_key(tmp_path, keys):
    with pytest.raises(BundleError, match="not an unencrypted PEM private key"):
        write_bundle(tmp_path / "b.edgebundle", make_manifest(), FILES, signing_key=keys["public"])
    with pytest.raises(SignatureError, match="not a PEM public key"):
        verify_bundle(write_bundle(tmp_path / "b.edgebundle", make_manifest(), FILES), trusted_keys=[keys["private"]])


def test_signing_imports_without_a_warning():
    """cryptography 47 warns on every import under Python 3.8 (the robot's): pyproject keeps it below 47 there."""
    result = subprocess.run(
        [sys.executable, "-c", "import edge_sdk.signing"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and result.stderr == "", result.stderr
