"""Bundle format v1: round trip, and one test per hostile archive (nothing written outside staging)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import lzma
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import zlib
from dataclasses import replace
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pytest

from edge_sdk.bundle import (
    CODEC_KEY,
    EXPANSION_ALLOWANCE,
    MAX_EXPANSION,
    MAX_XZ_MEMBER_BYTES,
    FileEntry,
    InputSpec,
    Manifest,
    StageMetrics,
    default_bundle_name,
    inspect_bundle,
    open_bundle,
    opened_bundle,
    verify_bundle,
    write_bundle,
)
from edge_sdk.errors import BundleError, IntegrityError, ManifestError, UnsafeArchiveError
from tests.conftest import OLD_FORMAT_TINY_BUNDLE

MODEL = b"\x0apaddle-program" * 64
PARAMS = bytes(range(256)) * 40
GOLDEN = b"\xff\xd8 not really a jpeg"


def make_manifest(**changes) -> Manifest:
    """A minimal valid manifest."""
    base = Manifest(
        name="pcb-defects",
        version="1.2.0",
        architecture="yolov3_mobilenet_v1",
        classes=("missing_hole", "mouse_bite", "short"),
        input=InputSpec(size=(96, 96)),
    )
    return replace(base, **changes)


def model_files() -> Dict[str, bytes]:
    return {"model/model.pdmodel": MODEL, "model/model.pdiparams": PARAMS, "calibration/golden/0.jpg": GOLDEN}


def entry(name: str, data: bytes) -> FileEntry:
    return FileEntry(name, len(data), hashlib.sha256(data).hexdigest())


def regular(name: str, data: bytes) -> Tuple[tarfile.TarInfo, Optional[bytes]]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def special(name: str, kind: bytes, linkname: str = "") -> Tuple[tarfile.TarInfo, Optional[bytes]]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    if kind in (tarfile.CHRTYPE, tarfile.BLKTYPE):
        info.devmajor, info.devminor = 1, 3
    return info, None


def encode(tar_bytes: bytes, encoding: str) -> bytes:
    """The bytes of a bundle file holding this tar: "plain" (written today), "xz" or "gzip" (older bundles)."""
    if encoding == "xz":
        return lzma.compress(tar_bytes, format=lzma.FORMAT_XZ, preset=1)
    return gzip.compress(tar_bytes, mtime=0) if encoding == "gzip" else tar_bytes


def build_tar(path: Path, encoding: str, members: List[Tuple[tarfile.TarInfo, Optional[bytes]]]) -> Path:
    """Write a tar by hand from (header, data) pairs, exactly as given, then encode it."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, None if data is None else io.BytesIO(data))
    path.write_bytes(encode(buffer.getvalue(), encoding))
    return path


def hostile_bundle(
    path: Path,
    encoding: str,
    extra: List[Tuple[tarfile.TarInfo, Optional[bytes]]],
    listed: Optional[List[FileEntry]] = None,
    files: Optional[Dict[str, bytes]] = None,
) -> Path:
    """A bundle whose manifest lists `files` (+ `listed`), followed by those files and `extra` members."""
    files = model_files() if files is None else files
    entries = [entry(n, d) for n, d in sorted(files.items())] + list(listed or [])
    manifest = make_manifest(files=tuple(entries))
    members = [regular("manifest.json", manifest.canonical_bytes())]
    members += [regular(n, d) for n, d in sorted(files.items())]
    return build_tar(path, encoding, members + extra)


def snapshot(root: Path) -> Dict[str, Optional[bytes]]:
    """Every path under root: regular files map to their bytes, anything else to None (never followed)."""
    out = {}  # type: Dict[str, Optional[bytes]]
    for folder, dirs, names in os.walk(str(root)):
        for name in dirs + names:
            p = Path(folder) / name
            rel = str(p.relative_to(root))
            out[rel] = p.read_bytes() if p.is_file() and not p.is_symlink() else None
    return out


@pytest.fixture(params=["plain", "xz", "gzip"])
def encoding(request) -> str:
    """Every hostile archive is tried as a plain tar (written today), inside an xz and a gzip stream (older bundles)."""
    return request.param


@pytest.fixture(params=["xz", "gzip"])
def compressed(request) -> str:
    """The compressed encodings, for compression bombs."""
    return request.param


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    """tmp_path laid out as in/ (bundles), staging/ (staging parent), work/deep/ (cwd), tmp/ (TMPDIR)."""
    for sub in ("in", "staging", "work/deep", "tmp"):
        (tmp_path / sub).mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "work" / "deep")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    return tmp_path


def assert_refused(sandbox: Path, bundle: Path, error: type, match: Optional[str] = None, **limits) -> None:
    """open_bundle raises `error` and writes nothing anywhere under the sandbox; so does verify_bundle."""
    before = snapshot(sandbox)
    with pytest.raises(error, match=match) as info:
        open_bundle(bundle, staging_dir=sandbox / "staging", **limits)
    assert "\n" not in str(info.value)
    assert snapshot(sandbox) == before
    assert list((sandbox / "staging").iterdir()) == []
    if not limits:
        with pytest.raises(error, match=match):
            verify_bundle(bundle)
        assert snapshot(sandbox) == before


# ----------------------------------------------------------------------------- round trip


def test_round_trip_write_open_compare(sandbox):
    manifest = make_manifest(metrics=(StageMetrics("train", map50=0.61, map=0.33, flops=1.2e9),))
    out = write_bundle(sandbox / "in" / "b.edgebundle", manifest, model_files())
    assert out == sandbox / "in" / "b.edgebundle"
    with tarfile.open(str(out)) as tar:
        names = tar.getnames()
        stored_manifest = tar.extractfile("manifest.json").read()
    assert names[0] == "manifest.json" and sorted(names[1:]) == sorted(model_files())

    with open_bundle(out, staging_dir=sandbox / "staging") as bundle:
        assert stored_manifest == bundle.manifest.canonical_bytes()
        assert bundle.manifest.classes == manifest.classes
        assert bundle.manifest.metrics == manifest.metrics
        assert bundle.manifest.input.size == (96, 96)
        assert bundle.manifest.created_at.endswith("Z") and bundle.manifest.sdk_version
        assert {f.path: (f.size, f.sha256) for f in bundle.manifest.files} == {
            n: (len(d), hashlib.sha256(d).hexdigest()) for n, d in model_files().items()
        }
        for name, data in model_files().items():
            assert bundle.path_of(name).read_bytes() == data
            assert bundle.root in bundle.path_of(name).parents
        assert bundle.sha256 == hashlib.sha256(out.read_bytes()).hexdigest()
        assert not bundle.signed and bundle.signer_key_id is None
        with pytest.raises(BundleError, match="nope"):
            bundle.path_of("model/nope")
        root = bundle.root
        assert root.parent == sandbox / "staging"
    assert not root.exists()
    assert verify_bundle(out) == bundle.manifest


def test_written_bundle_is_deterministic_with_a_codec_per_file(sandbox):
    """Same manifest (created_at included) and files: byte-identical files. The tar is not compressed: the
    program and small files are xz streams, JPEGs and weights over MAX_XZ_MEMBER_BYTES are stored as they are."""
    manifest = make_manifest(created_at="2024-01-02T03:04:05Z", sdk_version="9.9", paddle_version="2.6.2")
    src = sandbox / "work" / "model.pdiparams"
    big = bytes(range(256)) * ((MAX_XZ_MEMBER_BYTES >> 8) + 1)
    src.write_bytes(big)
    files = {"model/model.pdiparams": src, "model/model.pdmodel": MODEL, "calibration/golden/0.jpg": GOLDEN}
    first = write_bundle(sandbox / "in" / "first.edgebundle", manifest, files).read_bytes()
    second = write_bundle(sandbox / "work" / "second.edgebundle", manifest, files).read_bytes()
    assert first == second
    with tarfile.open(fileobj=io.BytesIO(first), mode="r:") as tar:  # a plain tar
        members = {m.name: m for m in tar.getmembers()}
        assert tar.getnames()[0] == "manifest.json"
        assert CODEC_KEY not in members["model/model.pdiparams"].pax_headers
        assert tar.extractfile("model/model.pdiparams").read() == big
        assert CODEC_KEY not in members["calibration/golden/0.jpg"].pax_headers
        assert members["model/model.pdmodel"].pax_headers[CODEC_KEY] == "xz"
        assert lzma.decompress(tar.extractfile("model/model.pdmodel").read()) == MODEL
        assert members["model/model.pdmodel"].size < len(MODEL) // 4
    with open_bundle(sandbox / "in" / "first.edgebundle", staging_dir=sandbox / "staging") as bundle:
        assert bundle.path_of("model/model.pdmodel").read_bytes() == MODEL
        assert bundle.path_of("model/model.pdiparams").read_bytes() == big


def test_opened_bundle_closes_only_what_it_opened(sandbox):
    path = write_bundle(sandbox / "in" / "b.edgebundle", make_manifest(), model_files())
    with opened_bundle(path) as from_path:
        assert from_path.path_of("model/model.pdiparams").read_bytes() == PARAMS
    assert from_path.closed
    with open_bundle(path) as owned:
        with opened_bundle(owned) as same:
            assert same is owned
        assert not owned.closed


@pytest.mark.parametrize("older", ["xz", "gzip", "plain"])
def test_older_bundles_still_open(sandbox, older):
    """Robots in the field hold bundles written by earlier versions: the whole tar (no codec per file) in an
    xz stream (OLD_FORMAT_TINY_BUNDLE, as written until this layout), a gzip stream, or plain."""
    old_tar = lzma.decompress(OLD_FORMAT_TINY_BUNDLE.read_bytes())
    old_path = sandbox / "in" / "old.edgebundle"
    old_path.write_bytes(encode(old_tar, older))
    with tarfile.open(str(old_path), mode={"xz": "r:xz", "gzip": "r:gz", "plain": "r:"}[older]) as tar:
        assert not any(CODEC_KEY in m.pax_headers for m in tar.getmembers())
        stored = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isreg()}
    with open_bundle(old_path, staging_dir=sandbox / "staging") as old:
        assert old.manifest.name == "tiny" and len(old.manifest.files) == 3
        assert old.sha256 == hashlib.sha256(old_path.read_bytes()).hexdigest()
        assert old.size == old_path.stat().st_size
        for entry in old.manifest.files:
            assert old.path_of(entry.path).read_bytes() == stored[entry.path]
        files = {entry.path: old.path_of(entry.path) for entry in old.manifest.files}
        rewritten = write_bundle(sandbox / "work" / "new.edgebundle", old.manifest, files)
    assert verify_bundle(rewritten) == old.manifest
    info = inspect_bundle(old_path)
    assert info["size"] == old_path.stat().st_size and info["manifest"]["name"] == "tiny"


def test_write_keeps_given_metadata_and_sources_from_paths(sandbox):
    src = sandbox / "work" / "model.pdiparams"
    src.write_bytes(PARAMS)
    manifest = make_manifest(created_at="2024-01-02T03:04:05Z", sdk_version="9.9", paddle_version="2.6.2")
    out = write_bundle(sandbox / "in", manifest, {"model/model.pdiparams": src, "model/model.pdmodel": MODEL})
    assert out.name == default_bundle_name(manifest) == "pcb-defects-1.2.0.edgebundle"
    got = verify_bundle(out)
    assert (got.created_at, got.sdk_version, got.paddle_version) == ("2024-01-02T03:04:05Z", "9.9", "2.6.2")
    assert got.file("model/model.pdiparams").sha256 == hashlib.sha256(PARAMS).hexdigest()
    assert [p.name for p in (sandbox / "in").iterdir()] == [out.name]


def test_default_bundle_name_is_a_plain_file_name():
    assert default_bundle_name(make_manifest(name="../ev il", version="1/2")) == "_ev_il-1_2.edgebundle"


def test_default_staging_folder_is_removed_on_close(sandbox):
    out = write_bundle(sandbox / "in" / "b.edgebundle", make_manifest(), model_files())
    bundle = open_bundle(out)
    assert bundle.root.parent == sandbox / "tmp"
    bundle.close()
    assert list((sandbox / "tmp").iterdir()) == []


def test_verify_and_inspect_write_nothing(sandbox):
    out = write_bundle(sandbox / "in" / "b.edgebundle", make_manifest(), model_files())
    before = snapshot(sandbox)
    info = inspect_bundle(out)
    assert snapshot(sandbox) == before
    assert info["manifest"]["name"] == "pcb-defects"
    assert info["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert info["size"] == out.stat().st_size
    assert info["signed"] is False and info["signer_key_id"] is None
    assert json.loads(json.dumps(info)) == info


def test_write_does_not_import_paddle_and_records_its_version(tmp_path):
    code = (
        "import sys\n"
        "from edge_sdk.bundle import write_bundle, verify_bundle, Manifest, InputSpec\n"
        "m = Manifest(name='n', version='1', architecture='yolov3_mobilenet_v1', classes=('a',), input=InputSpec(size=(96, 96)))\n"
        "p = write_bundle(sys.argv[1], m, {'model/model.pdmodel': b'x'})\n"
        "assert 'paddle' not in sys.modules, 'paddle was imported'\n"
        "print(verify_bundle(p).paddle_version)\n"
    )
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    from importlib import metadata

    try:
        expected = metadata.version("paddlepaddle")
    except metadata.PackageNotFoundError:
        expected = ""
    assert result.stdout.strip() == expected


@pytest.mark.parametrize(
    "name",
    ["../evil", "/abs/evil", "model/../../evil", "a\\b", "C:/evil", "manifest.json", "manifest.sig", "", "a//b", "./a"],
)
def test_write_refuses_unsafe_archive_names(sandbox, name):
    files = dict(model_files())
    files[name] = b"x"
    with pytest.raises(BundleError):
        write_bundle(sandbox / "in" / "b.edgebundle", make_manifest(), files)
    assert snapshot(sandbox / "in") == {}


def test_write_refuses_names_that_collide(sandbox):
    with pytest.raises(BundleError, match="twice"):
        write_bundle(sandbox / "in" / "b.edgebundle", make_manifest(), {"model/A.bin": b"1", "model/a.bin": b"2"})
    with pytest.raises(BundleError, match="file and a folder"):
        write_bundle(sandbox / "in" / "b.edgebundle", make_manifest(), {"model": b"1", "model/a.bin": b"2"})
    assert snapshot(sandbox / "in") == {}


def test_write_refuses_missing_source(sandbox):
    with pytest.raises(BundleError, match="does not exist"):
        write_bundle(sandbox / "in" / "b.edgebundle", make_manifest(), {"model/model.pdmodel": sandbox / "none"})
    assert snapshot(sandbox / "in") == {}


class _Interrupted(BaseException):
    """Stands for Ctrl-C without risking a real KeyboardInterrupt reaching pytest."""


def test_interrupted_write_leaves_no_file(sandbox):
    big = sandbox / "work" / "big.pdiparams"
    with open(str(big), "wb") as f:
        f.truncate(200 << 20)  # sparse, but hashing, copying and re-verifying it take a while
    out_dir = sandbox / "in"
    seen_temp = []

    def interrupt_once_the_temp_file_exists(signum, frame):
        temps = [p.name for p in out_dir.iterdir()]
        if temps:
            seen_temp.extend(temps)
            raise _Interrupted()
        signal.setitimer(signal.ITIMER_REAL, 0.002)

    previous = signal.signal(signal.SIGALRM, interrupt_once_the_temp_file_exists)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.002)
        with pytest.raises(_Interrupted):
            write_bundle(
                out_dir / "b.edgebundle", make_manifest(), {"model/model.pdiparams": big, "model/model.pdmodel": MODEL}
            )
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert seen_temp and seen_temp[0].endswith(".tmp")  # interrupted mid-write, not before it started
    assert list(out_dir.iterdir()) == []


def test_existing_bundle_survives_interrupted_overwrite(sandbox):
    out = write_bundle(sandbox / "in" / "b.edgebundle", make_manifest(), model_files())
    original = out.read_bytes()
    with pytest.raises(BundleError):
        write_bundle(out, make_manifest(), {"model/model.pdmodel": sandbox / "missing"})
    assert out.read_bytes() == original
    assert [p.name for p in (sandbox / "in").iterdir()] == ["b.edgebundle"]


# ----------------------------------------------------------------------------- hostile archives


def test_hand_built_valid_bundle_opens(sandbox, encoding):
    """The hostile-bundle builder itself makes openable bundles, so each refusal below is the attack's."""
    path = hostile_bundle(sandbox / "in" / "ok.edgebundle", encoding, [])
    with open_bundle(path, staging_dir=sandbox / "staging") as bundle:
        assert bundle.path_of("model/model.pdiparams").read_bytes() == PARAMS


def test_folder_entries_for_listed_files_are_allowed(sandbox, encoding):
    path = hostile_bundle(sandbox / "in" / "ok.edgebundle", encoding, [special("model", tarfile.DIRTYPE)])
    with open_bundle(path, staging_dir=sandbox / "staging") as bundle:
        assert bundle.path_of("model/model.pdmodel").read_bytes() == MODEL


def test_refuses_absolute_path(sandbox, encoding):
    target = str(sandbox / "evil.txt")
    path = hostile_bundle(sandbox / "in" / "b.edgebundle", encoding, [regular(target, b"pwned")])
    with tarfile.open(str(path)) as tar:
        assert target in tar.getnames()
    assert_refused(sandbox, path, UnsafeArchiveError, "absolute path")
    assert not (sandbox / "evil.txt").exists()


@pytest.mark.parametrize("name", ["../../../evil.txt", "model/../../../../evil.txt", ".."])
def test_refuses_dot_dot(sandbox, encoding, name):
    path = hostile_bundle(sandbox / "in" / "b.edgebundle", encoding, [regular(name, b"pwned")])
    assert_refused(sandbox, path, UnsafeArchiveError, r"'\.\.' path component")


@pytest.mark.parametrize("name", ["..\\..\\evil.txt", "model\\evil.txt", "C:/evil.txt", "C:evil.txt", "a/./b", "a//b"])
def test_refuses_backslash_drive_letter_and_odd_components(sandbox, encoding, name):
    path = hostile_bundle(sandbox / "in" / "b.edgebundle", encoding, [regular(name, b"pwned")])
    assert_refused(sandbox, path, UnsafeArchiveError, "bundle member")


def test_refuses_control_characters_in_names(sandbox, encoding):
    path = hostile_bundle(sandbox / "in" / "b.edgebundle", encoding, [regular("model/evil\x1b[2J.txt", b"x")])
    assert_refused(sandbox, path, UnsafeArchiveError, "control")


def test_refuses_symlink(sandbox, encoding):
    link = special("model/link", tarfile.SYMTYPE, linkname=str(sandbox))
    through = regular("model/link/evil.txt", b"pwned")
    path = hostile_bundle(sandbox / "in" / "b.edgebundle", encoding, [link, through], [entry("model/link", b"")])
    assert_refused(sandbox, path, UnsafeArchiveError, "'model/link' is a symbolic link")


def test_refuses_hardlink(sandbox, encoding):
    link = special("model/passwd", tarfile.LNKTYPE, linkname="/etc/passwd")
    path = hostile_bundle(sandbox / "in" / "b.edgebundle", encoding, [link], [entry("model/passwd", b"")])
    assert_refused(sandbox, path, UnsafeArchiveError, "hard link")


@pytest.mark.parametrize(
    "kind, word", [(tarfile.CHRTYPE, "device"), (tarfile.BLKTYPE, "device"), (tarfile.FIFOTYPE, "FIFO")]
)
def test_refuses_device_and_fifo(sandbox, encoding, kind, word):
    path = hostile_bundle(
        sandbox / "in" / "b.edgebundle", encoding, [special("model/dev", kind)], [entry("model/dev", b"")]
    )
    assert_refused(sandbox, path, UnsafeArchiveError, word)


def test_refuses_duplicate_member(sandbox, encoding):
    evil = b"y" * len(MODEL)
    path = hostile_bundle(sandbox / "in" / "b.edgebundle", encoding, [regular("model/model.pdmodel", evil)])
    assert_refused(sandbox, path, UnsafeArchiveError, "appears twice")


def test_refuses_member_names_differing_only_in_case(sandbox, encoding):
    path = hostile_bundle(sandbox / "in" / "b.edgebundle", encoding, [regular("MODEL/model.pdmodel", MODEL)])
    assert_refused(sandbox, path, UnsafeArchiveError, "appears twice")


def test_refuses_oversized_member(sandbox, encoding):
    path = hostile_bundle(sandbox / "in" / "b.edgebundle", encoding, [])
    assert_refused(
        sandbox, path, UnsafeArchiveError, "model.pdiparams.*over the limit", max_member_bytes=len(PARAMS) - 1
    )


def test_refuses_total_size_over_limit(sandbox, encoding):
    path = hostile_bundle(sandbox / "in" / "b.edgebundle", encoding, [])
    total = sum(len(d) for d in model_files().values())
    assert_refused(sandbox, path, UnsafeArchiveError, "add up to more than", max_total_bytes=total)


def test_refuses_file_far_larger_than_the_limits_before_reading_it(sandbox, encoding):
    path = hostile_bundle(sandbox / "in" / "b.edgebundle", encoding, [])
    with open(str(path), "ab") as f:
        f.truncate(path.stat().st_size + (64 << 20))  # e.g. a huge PAX record tarfile would load into memory
    assert_refused(
        sandbox, path, UnsafeArchiveError, "b.edgebundle is .* bytes, over the limit", max_total_bytes=1 << 20
    )


def test_refuses_too_many_members(sandbox, encoding):
    files = {"calibration/golden/{}.jpg".format(i): b"x" for i in range(20)}
    path = hostile_bundle(sandbox / "in" / "b.edgebundle", encoding, [], files=files)
    assert_refused(sandbox, path, UnsafeArchiveError, "more than 10 members", max_members=10)


def test_refuses_unlisted_extra_file(sandbox, encoding):
    path = hostile_bundle(sandbox / "in" / "b.edgebundle", encoding, [regular("model/extra.pkl", b"\x80\x04.")])
    assert_refused(sandbox, path, IntegrityError, "'model/extra.pkl' is not listed")


def test_refuses_unlisted_folder(sandbox, encoding):
    path = hostile_bundle(sandbox / "in" / "b.edgebundle", encoding, [special("other", tarfile.DIRTYPE)])
    assert_refused(sandbox, path, IntegrityError, "'other' is not listed")


def test_refuses_missing_listed_file(sandbox, encoding):
    path = hostile_bundle(sandbox / "in" / "b.edgebundle", encoding, [], [entry("calibration/table.txt", b"scales")])
    assert_refused(sandbox, path, IntegrityError, "'calibration/table.txt' listed in the manifest is missing")


def test_refuses_sha256_mismatch_with_same_size(sandbox, encoding):
    files = model_files()
    entries = [entry(n, d) for n, d in sorted(files.items())]
    flipped = bytearray(PARAMS)
    flipped[len(flipped) // 2] ^= 0x01
    files["model/model.pdiparams"] = bytes(flipped)
    manifest = make_manifest(files=tuple(entries))
    # the tampered file comes last, so the good ones were already written to staging
    order = ["calibration/golden/0.jpg", "model/model.pdmodel", "model/model.pdiparams"]
    members = [regular("manifest.json", manifest.canonical_bytes())] + [regular(n, files[n]) for n in order]
    path = build_tar(sandbox / "in" / "b.edgebundle", encoding, members)
    assert_refused(sandbox, path, IntegrityError, "'model/model.pdiparams' does not match its sha256")


def test_refuses_size_mismatch(sandbox, encoding):
    listed = [entry(n, d) for n, d in sorted(model_files().items())]
    listed[0] = FileEntry(listed[0].path, listed[0].size + 1, listed[0].sha256)
    members = [regular("manifest.json", make_manifest(files=tuple(listed)).canonical_bytes())]
    members += [regular(n, d) for n, d in sorted(model_files().items())]
    path = build_tar(sandbox / "in" / "b.edgebundle", encoding, members)
    assert_refused(sandbox, path, IntegrityError, "bytes, the manifest says")


def _good_tar_bytes(sandbox: Path) -> bytes:
    """A bundle written by write_bundle (a plain tar)."""
    path = write_bundle(sandbox / "work" / "good.edgebundle", make_manifest(), model_files())
    data = path.read_bytes()
    path.unlink()
    return data


def _last_member(tar_bytes: bytes) -> tarfile.TarInfo:
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        return tar.getmembers()[-1]


def test_refuses_archive_truncated_inside_a_member(sandbox, encoding):
    data = _good_tar_bytes(sandbox)
    last = _last_member(data)
    cut = sandbox / "in" / "cut.edgebundle"
    cut.write_bytes(encode(data[: last.offset_data + last.size // 2], encoding))
    assert_refused(sandbox, cut, IntegrityError, "truncated")


def test_refuses_archive_truncated_between_members(sandbox, encoding):
    data = _good_tar_bytes(sandbox)
    cut = sandbox / "in" / "cut.edgebundle"
    cut.write_bytes(encode(data[: _last_member(data).offset], encoding))
    assert_refused(sandbox, cut, IntegrityError, "end-of-archive marker is missing")


def test_refuses_archive_without_its_last_member(sandbox, encoding):
    data = _good_tar_bytes(sandbox)
    cut = sandbox / "in" / "cut.edgebundle"
    cut.write_bytes(encode(data[: _last_member(data).offset] + bytes(2 * tarfile.BLOCKSIZE), encoding))
    assert_refused(sandbox, cut, IntegrityError, "missing from the bundle")


@pytest.mark.parametrize("keep", [0.3, 0.6, 0.9, -8, -1])
def test_refuses_truncated_compressed_bundle(sandbox, keep):
    """Cut anywhere in an older (xz) bundle, down to its last byte (the xz stream footer)."""
    good = encode(_good_tar_bytes(sandbox), "xz")
    cut = sandbox / "in" / "cut.edgebundle"
    cut.write_bytes(good[: int(len(good) * keep)] if keep > 0 else good[:keep])
    assert_refused(sandbox, cut, IntegrityError, "cut.edgebundle is truncated")


def test_refuses_bundle_with_corrupt_compressed_data(sandbox):
    good = bytearray(encode(_good_tar_bytes(sandbox), "xz"))
    for offset in (len(good) // 2, len(good) - 6):  # inside the LZMA2 data, inside the stream footer
        bad = bytearray(good)
        bad[offset] ^= 0x55
        path = sandbox / "in" / "bad.edgebundle"
        path.write_bytes(bytes(bad))
        assert_refused(sandbox, path, IntegrityError, "bad.edgebundle")
        path.unlink()


def _xz_member(name: str, packed: bytes) -> Tuple[tarfile.TarInfo, Optional[bytes]]:
    info, data = regular(name, packed)
    info.pax_headers = {CODEC_KEY: "xz"}
    return info, data


def _bundle_with_xz_member(sandbox: Path, packed: bytes, listed: bytes = MODEL) -> Path:
    """Today's layout by hand: the manifest lists model.pdmodel as `listed`; its member holds `packed`."""
    manifest = make_manifest(files=(entry("model/model.pdmodel", listed),))
    members = [regular("manifest.json", manifest.canonical_bytes()), _xz_member("model/model.pdmodel", packed)]
    return build_tar(sandbox / "in" / "b.edgebundle", "plain", members)


def test_xz_member_opens_and_must_decode_to_what_the_manifest_lists(sandbox):
    good = _bundle_with_xz_member(sandbox, lzma.compress(MODEL))
    with open_bundle(good, staging_dir=sandbox / "staging") as bundle:
        assert bundle.path_of("model/model.pdmodel").read_bytes() == MODEL
    good.unlink()
    flipped = bytearray(lzma.compress(MODEL))
    flipped[len(flipped) // 2] ^= 0x55
    assert_refused(sandbox, _bundle_with_xz_member(sandbox, bytes(flipped)), IntegrityError, "b.edgebundle|sha256")
    (sandbox / "in" / "b.edgebundle").unlink()
    cut = lzma.compress(MODEL)[:-12]
    assert_refused(sandbox, _bundle_with_xz_member(sandbox, cut), IntegrityError, "ends early|corrupt")
    (sandbox / "in" / "b.edgebundle").unlink()
    trailing = lzma.compress(MODEL) + b"junk"
    assert_refused(sandbox, _bundle_with_xz_member(sandbox, trailing), IntegrityError, "data after its xz stream")


def test_refuses_xz_member_decoding_to_more_than_the_manifest_says(sandbox):
    """A member bomb: 64 MiB of zeros in a few KiB, listed as 10 bytes: refused after one byte too many."""
    packer = lzma.LZMACompressor(format=lzma.FORMAT_XZ, preset=1)
    packed = b"".join([packer.compress(bytes(1 << 20)) for _ in range(64)] + [packer.flush()])
    path = _bundle_with_xz_member(sandbox, packed, listed=bytes(10))
    assert path.stat().st_size < (1 << 20)
    assert_refused(sandbox, path, IntegrityError, "holds more than the 10 bytes the manifest says")


def test_refuses_a_member_with_an_unknown_codec(sandbox):
    manifest = make_manifest(files=(entry("model/model.pdmodel", MODEL),))
    info, data = regular("model/model.pdmodel", MODEL)
    info.pax_headers = {CODEC_KEY: "pickle"}
    path = build_tar(
        sandbox / "in" / "b.edgebundle", "plain", [regular("manifest.json", manifest.canonical_bytes()), (info, data)]
    )
    assert_refused(sandbox, path, IntegrityError, "unknown codec 'pickle'")


def test_refuses_a_manifest_that_is_not_the_first_member(sandbox, encoding):
    files = model_files()
    manifest = make_manifest(files=tuple(entry(n, d) for n, d in sorted(files.items())))
    members = [regular(n, d) for n, d in sorted(files.items())] + [regular("manifest.json", manifest.canonical_bytes())]
    path = build_tar(sandbox / "in" / "b.edgebundle", encoding, members)
    assert_refused(sandbox, path, IntegrityError, "has no manifest.json first")


def _tar_header(info: tarfile.TarInfo) -> bytes:
    return info.tobuf(format=tarfile.PAX_FORMAT)


def test_refuses_bomb_member_declaring_a_huge_size(sandbox, compressed):
    """A few hundred bytes on disk whose header claims a 5 GiB member: refused from the header alone."""
    info = tarfile.TarInfo("model/model.pdiparams")
    info.size = 5 << 30
    path = sandbox / "in" / "bomb.edgebundle"
    path.write_bytes(encode(_tar_header(info) + bytes(1 << 20), compressed))
    assert path.stat().st_size < 4096
    assert_refused(sandbox, path, UnsafeArchiveError, "over the limit of {}".format(4 << 30))


def test_refuses_bomb_pax_header_over_the_decompressed_cap(sandbox, compressed):
    """tarfile would read a PAX header into memory whole: 4 MiB of zeros, ~4 KiB compressed, over a ~1 MiB cap."""
    pax = tarfile.TarInfo("././@PaxHeader")
    pax.type = tarfile.XHDTYPE
    pax.size = 4 << 20
    path = sandbox / "in" / "bomb.edgebundle"
    path.write_bytes(encode(_tar_header(pax) + bytes(pax.size + 2 * tarfile.BLOCKSIZE), compressed))
    assert path.stat().st_size < (1 << 20)
    assert_refused(
        sandbox, path, UnsafeArchiveError, "decompresses to more than", max_total_bytes=1 << 20, max_members=4
    )


def test_refuses_bomb_pax_header_with_default_limits(sandbox, compressed):
    """Within the default 8 GiB cap, but tarfile would still load the record into memory: refused before reading."""
    pax = tarfile.TarInfo("././@PaxHeader")
    pax.type = tarfile.XHDTYPE
    pax.size = 64 << 20
    path = sandbox / "in" / "bomb.edgebundle"
    path.write_bytes(encode(_tar_header(pax) + bytes(pax.size + 2 * tarfile.BLOCKSIZE), compressed))
    assert path.stat().st_size < (1 << 20)
    assert_refused(sandbox, path, UnsafeArchiveError, "bomb.edgebundle holds a tar header record over")


def test_refuses_bomb_after_the_end_of_the_tar(sandbox, compressed):
    """A valid bundle followed, inside the compressed stream, by 32 MiB of zeros: the stream is read to its end, capped."""
    tar_bytes = _good_tar_bytes(sandbox)
    path = sandbox / "in" / "bomb.edgebundle"
    path.write_bytes(encode(tar_bytes, compressed))
    with open_bundle(path, staging_dir=sandbox / "staging", max_total_bytes=1 << 20, max_members=4) as bundle:
        assert bundle.path_of("model/model.pdiparams").read_bytes() == PARAMS
    path.write_bytes(encode(tar_bytes + bytes(32 << 20), compressed))
    assert path.stat().st_size < (1 << 20)
    assert_refused(
        sandbox, path, UnsafeArchiveError, "decompresses to more than", max_total_bytes=1 << 20, max_members=4
    )


def test_refuses_a_bomb_within_the_limits_early(sandbox, compressed):
    """320 MiB of zeros after a valid tar, well within the default 8 GiB: refused from the expansion over the
    file's size (weights barely compress), not after decompressing up to the limit."""
    tar_bytes = _good_tar_bytes(sandbox)
    packer = (
        lzma.LZMACompressor(format=lzma.FORMAT_XZ, preset=1) if compressed == "xz" else zlib.compressobj(9, wbits=31)
    )
    chunks = [packer.compress(tar_bytes)] + [packer.compress(bytes(1 << 20)) for _ in range(320)] + [packer.flush()]
    path = sandbox / "in" / "bomb.edgebundle"
    path.write_bytes(b"".join(chunks))
    assert path.stat().st_size < (1 << 20)
    cap = MAX_EXPANSION * path.stat().st_size + EXPANSION_ALLOWANCE
    assert_refused(sandbox, path, UnsafeArchiveError, "decompresses to more than {} bytes".format(cap))


def test_refuses_xz_bundle_needing_a_huge_decoder_dictionary(sandbox):
    """An xz block header may ask for a 1.5 GiB dictionary, which the decoder would allocate: refused at 128 MiB."""
    good = bytearray(lzma.compress(_good_tar_bytes(sandbox), format=lzma.FORMAT_XZ, preset=1))
    header_start = 12  # after the stream header
    header_size = (good[header_start] + 1) * 4
    header = good[header_start : header_start + header_size]
    lzma2 = header.index(bytes([0x21, 0x01]))  # filter id LZMA2, one property byte: the dictionary size
    header[lzma2 + 2] = 40  # 1.5 GiB
    header[-4:] = zlib.crc32(bytes(header[:-4])).to_bytes(4, "little")
    good[header_start : header_start + header_size] = header
    path = sandbox / "in" / "greedy.edgebundle"
    path.write_bytes(bytes(good))
    assert_refused(sandbox, path, UnsafeArchiveError, "more than 128 MiB of memory to decompress")


def test_refuses_to_extract_what_does_not_fit_on_disk(sandbox, monkeypatch):
    path = write_bundle(sandbox / "in" / "b.edgebundle", make_manifest(), model_files())
    total = sum(len(d) for d in model_files().values())
    real_disk_usage = shutil.disk_usage

    def nearly_full(folder):
        usage = real_disk_usage(folder)
        return usage._replace(free=total - 1)

    monkeypatch.setattr(shutil, "disk_usage", nearly_full)
    before = snapshot(sandbox)
    with pytest.raises(BundleError, match="needs {} bytes in .*only {} are free".format(total, total - 1)):
        open_bundle(path, staging_dir=sandbox / "staging")
    assert snapshot(sandbox) == before
    assert verify_bundle(path).name == "pcb-defects"  # verifying writes nothing, so needs no space


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"\x00" * 100,
        os.urandom(5000),
        b"PK\x03\x04 a zip file",
        b"\x1f\x8b" + os.urandom(5000),
        gzip.compress(b"", mtime=0),
        gzip.compress(os.urandom(5000), mtime=0),
        gzip.compress(b"PK\x03\x04 a zip file", mtime=0),
        b"\xfd7zXZ\x00" + os.urandom(5000),
        lzma.compress(b"", format=lzma.FORMAT_XZ),
        lzma.compress(os.urandom(5000), format=lzma.FORMAT_XZ),
    ],
)
def test_refuses_what_is_not_a_tar(sandbox, content):
    path = sandbox / "in" / "junk.edgebundle"
    path.write_bytes(content)
    assert_refused(sandbox, path, IntegrityError)


def test_refuses_paths_that_are_not_bundle_files(sandbox):
    fifo = sandbox / "in" / "pipe.edgebundle"
    os.mkfifo(str(fifo))
    for path, match in [
        (fifo, "not a regular file"),
        (sandbox / "in", "not a regular file"),
        (sandbox / "none", "does not exist"),
    ]:
        assert_refused(sandbox, path, BundleError, match)


def test_refuses_missing_manifest(sandbox, encoding):
    path = build_tar(sandbox / "in" / "b.edgebundle", encoding, [regular("model/model.pdmodel", MODEL)])
    assert_refused(sandbox, path, IntegrityError, "has no manifest.json")


def _bundle_with_manifest_bytes(sandbox: Path, encoding: str, manifest_bytes: bytes) -> Path:
    return build_tar(sandbox / "in" / "b.edgebundle", encoding, [regular("manifest.json", manifest_bytes)])


def test_refuses_manifest_that_is_not_json(sandbox, encoding):
    assert_refused(
        sandbox, _bundle_with_manifest_bytes(sandbox, encoding, b"{not json"), ManifestError, "not valid JSON"
    )


def test_refuses_unknown_schema_version(sandbox, encoding):
    d = make_manifest().to_dict()
    d["schema_version"] = 2
    assert_refused(
        sandbox, _bundle_with_manifest_bytes(sandbox, encoding, json.dumps(d).encode()), ManifestError, "schema_version"
    )


def test_refuses_manifest_with_unknown_field(sandbox, encoding):
    d = make_manifest().to_dict()
    d["run_this"] = "os.system"
    assert_refused(
        sandbox, _bundle_with_manifest_bytes(sandbox, encoding, json.dumps(d).encode()), ManifestError, "run_this"
    )


def test_refuses_manifest_with_repeated_key(sandbox, encoding):
    text = make_manifest().canonical_bytes().decode()
    text = text.replace('"name": "pcb-defects"', '"name": "pcb-defects", "name": "other"')
    assert_refused(sandbox, _bundle_with_manifest_bytes(sandbox, encoding, text.encode()), ManifestError, "repeats")


def test_refuses_manifest_listing_unsafe_path(sandbox, encoding):
    manifest = make_manifest(files=(entry("../evil", b"x"),))
    assert_refused(
        sandbox, _bundle_with_manifest_bytes(sandbox, encoding, manifest.canonical_bytes()), ManifestError, "evil"
    )


def test_refuses_oversized_manifest(sandbox, encoding):
    path = build_tar(sandbox / "in" / "b.edgebundle", encoding, [regular("manifest.json", b" " * ((16 << 20) + 1))])
    assert_refused(sandbox, path, UnsafeArchiveError, "manifest.json")
