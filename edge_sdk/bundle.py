"""Bundle format v1: one xz-compressed tar file `NAME-VERSION.edgebundle` carrying a model to the robot.

Members: `manifest.json` (exactly `Manifest.canonical_bytes()`), the files it lists
(`model/model.pdmodel`, `model/model.pdiparams`, `calibration/...`) and an optional
`manifest.sig` (Ed25519, see `edge_sdk.signing`). The tar is PAX format, xz-compressed (LZMA2,
deterministic bytes) as two concatenated xz streams: the manifest and signature records, then the
rest, so signing replaces the first stream and copies the second. Older bundles (one xz stream,
gzip or a plain tar) still open: the format is detected by its magic bytes. `Bundle.sha256` is the sha256 of the file as flashed;
the manifest lists the size and sha256 of every uncompressed member, and the signature covers
the manifest only, so compression does not change what is signed.

Opening never trusts the archive. Every member header is checked before anything is written
(names, types, counts, sizes); the compressed stream is decompressed to its end (its checksums
checked) with caps on the decompressed bytes and on the decoder's memory; the manifest is parsed
and compared with the members; the signature is checked; only then are regular files streamed
into a fresh private staging folder with a byte cap while their sha256 is computed. Nothing is
decompressed into memory as a whole. Any failure raises a typed error naming the member (UnsafeArchiveError,
IntegrityError, SignatureError, ManifestError) and removes the staging folder. Nothing is ever
unpickled. tarfile's extraction helpers (and its `filter=`, absent on Python 3.8) are not used:
the members are read with `extractfile` only.
"""

from __future__ import annotations

import contextlib
import datetime
import gzip
import hashlib
import io
import json
import lzma
import os
import shutil
import stat
import tarfile
import tempfile
import weakref
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any, Dict, Iterable, Iterator, List, Mapping, Optional, Tuple, Union

from edge_sdk.errors import BundleError, IntegrityError, ManifestError, SignatureError, UnsafeArchiveError
from edge_sdk.fileio import atomic_output
from edge_sdk.manifest import (  # re-exported: the bundle module is where users meet the manifest
    FileEntry,
    InputSpec,
    Manifest,
    Postprocess,
    Provenance,
    Quantization,
    ShapeRange,
    StageMetrics,
    TargetConstraints,
    TensorRTHints,
)

__all__ = [
    "BUNDLE_SUFFIX",
    "Bundle",
    "FileEntry",
    "InputSpec",
    "Manifest",
    "Postprocess",
    "Provenance",
    "Quantization",
    "ShapeRange",
    "StageMetrics",
    "TargetConstraints",
    "TensorRTHints",
    "default_bundle_name",
    "generate_keypair",
    "inspect_bundle",
    "open_bundle",
    "opened_bundle",
    "sign_bundle",
    "verify_bundle",
    "write_bundle",
]

BUNDLE_SUFFIX = ".edgebundle"
MANIFEST_NAME = "manifest.json"
SIGNATURE_NAME = "manifest.sig"
PROGRAM_FILE = "model.pdmodel"
"""An exported model folder's inference program (beside PARAMS_FILE, its weights)."""
PARAMS_FILE = "model.pdiparams"
MODEL_PROGRAM = "model/" + PROGRAM_FILE
"""The bundle member holding the inference program (MODEL_PARAMS: its weights)."""
MODEL_PARAMS = "model/" + PARAMS_FILE
RESERVED_NAMES = (MANIFEST_NAME, SIGNATURE_NAME)

DEFAULT_MAX_MEMBER_BYTES = 4 << 30  # one file (a YOLOv3 DarkNet53 fp32 .pdiparams is ~250 MB)
DEFAULT_MAX_TOTAL_BYTES = 8 << 30
DEFAULT_MAX_MEMBERS = 10000
MAX_MANIFEST_BYTES = 16 << 20
MAX_SIGNATURE_BYTES = 64 << 10
MAX_NAME_CHARS = 1024
MAX_COMPONENT_BYTES = 255
CHUNK_BYTES = 1 << 20
MAX_READ_BYTES = MAX_MANIFEST_BYTES + CHUNK_BYTES  # the largest single read tarfile needs from a bundle
GZIP_MAGIC = b"\x1f\x8b"
XZ_MAGIC = b"\xfd7zXZ\x00"
# xz rather than gzip: a Paddle program (.pdmodel) is repetitive protobuf that LZMA packs to half of
# gzip's size (demo INT8 program 28 KB -> 13 KB), which decides the INT8/FP32 size of small bundles.
# Weights gain ~0-1 %. Preset 1 against 6: the same demo sizes within 1 %, half the write time
# (100 MB of float32: 28 s against 57 s; gzip 3 s) and a 2 MiB decoder; opening reads ~20 MB/s.
XZ_PRESET = 1
XZ_MEMORY_LIMIT = 128 << 20  # decoder memory: xz presets 0-9 need at most 65 MiB (preset 1: 2 MiB)
MAX_EXPANSION = 100
EXPANSION_ALLOWANCE = 64 << 20
"""A bundle may decompress to at most MAX_EXPANSION x its file size + EXPANSION_ALLOWANCE bytes (and the
limits): weights barely compress (about 1.1x), so a bomb is refused after decompressing a little
instead of up to the 8 GiB limit (38 s)."""

PathLike = Union[str, "os.PathLike[str]"]
FileSource = Union[PathLike, bytes, bytearray, memoryview]


# ----------------------------------------------------------------------------- names


def _name_problem(name: str) -> Optional[str]:
    """Why `name` is not a safe relative POSIX archive name, or None if it is."""
    if not isinstance(name, str):
        return "a name that is not a string"
    if not name:
        return "an empty name"
    if len(name) > MAX_NAME_CHARS:
        return "a name longer than {} characters".format(MAX_NAME_CHARS)
    if not all(ch.isprintable() for ch in name):
        return "control or undecodable characters"
    if "\\" in name:
        return "a backslash"
    if ":" in name:
        return "a colon (drive letter)"
    if name.startswith("/"):
        return "an absolute path"
    for part in name.split("/"):
        if part in ("", ".", ".."):
            return "a {!r} path component".format(part)
        if len(part.encode("utf-8", "surrogateescape")) > MAX_COMPONENT_BYTES:
            return "a path component longer than {} bytes".format(MAX_COMPONENT_BYTES)
    return None


def _parents(name: str) -> List[str]:
    parts = name.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def _check_file_names(names: Iterable[str], error: type, what: str) -> None:
    """Each name safe, no duplicates (also ignoring case), no file that is another's folder."""
    seen = {}  # type: Dict[str, str]
    folders = set()
    names = list(names)
    for name in names:
        problem = _name_problem(name)
        if problem is not None:
            raise error("{} {!r} has {}".format(what, name, problem))
        if name in RESERVED_NAMES:
            raise error("{} {!r} is a reserved bundle name".format(what, name))
        folded = name.casefold()
        if folded in seen:
            raise error("{} {!r} appears twice (as {!r})".format(what, name, seen[folded]))
        seen[folded] = name
        folders.update(p.casefold() for p in _parents(name))
    for folded, name in seen.items():
        if folded in folders:
            raise error("{} {!r} is both a file and a folder".format(what, name))


def default_bundle_name(manifest: Manifest) -> str:
    """`NAME-VERSION.edgebundle`, with characters outside [A-Za-z0-9._-] replaced by '_'."""

    def clean(text: str) -> str:
        return "".join(ch if (ch.isascii() and ch.isalnum()) or ch in "._-" else "_" for ch in text).strip(".") or "_"

    return "{}-{}{}".format(clean(manifest.name), clean(manifest.version), BUNDLE_SUFFIX)


# ----------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class _Limits:
    member_bytes: int
    total_bytes: int
    members: int


@dataclass(frozen=True)
class _ScanResult:
    manifest: Manifest
    sha256: str
    size: int
    signed: bool
    signer_key_id: Optional[str]


def _member_kind(member: tarfile.TarInfo) -> str:
    if member.issym():
        return "a symbolic link"
    if member.islnk():
        return "a hard link"
    if member.ischr() or member.isblk():
        return "a device file"
    if member.isfifo():
        return "a FIFO"
    if member.isdir():
        return "a folder"
    if member.issparse():
        return "a sparse file"
    if member.isreg():
        return "a regular file"
    return "an unknown member type {!r}".format(member.type)


def _check_headers(tar: tarfile.TarFile, limits: _Limits) -> Tuple[Dict[str, tarfile.TarInfo], List[str]]:
    """Check every member header (no data read); return (regular files by name, folder names)."""
    files = {}  # type: Dict[str, tarfile.TarInfo]
    folders = []  # type: List[str]
    seen = {}  # type: Dict[str, str]
    total = 0
    count = 0
    for member in tar:
        count += 1
        if count > limits.members:
            raise UnsafeArchiveError("bundle has more than {} members".format(limits.members))
        name = member.name
        problem = _name_problem(name)
        if problem is not None:
            raise UnsafeArchiveError("bundle member {!r} has {}".format(name, problem))
        kind = _member_kind(member)
        if kind not in ("a regular file", "a folder"):
            raise UnsafeArchiveError("bundle member {!r} is {}; only regular files are allowed".format(name, kind))
        folded = name.casefold()
        if folded in seen:
            raise UnsafeArchiveError("bundle member {!r} appears twice (as {!r})".format(name, seen[folded]))
        seen[folded] = name
        if member.isdir():
            folders.append(name)
            continue
        if member.size < 0 or member.size > limits.member_bytes:
            raise UnsafeArchiveError(
                "bundle member {!r} is {} bytes, over the limit of {}".format(name, member.size, limits.member_bytes)
            )
        total += member.size
        if total > limits.total_bytes:
            raise UnsafeArchiveError("bundle members add up to more than {} bytes".format(limits.total_bytes))
        files[name] = member
    return files, folders


def _read_small(tar: tarfile.TarFile, member: tarfile.TarInfo, cap: int) -> bytes:
    if member.size > cap:
        raise UnsafeArchiveError(
            "bundle member {!r} is {} bytes, over the limit of {}".format(member.name, member.size, cap)
        )
    stream = tar.extractfile(member)
    if stream is None:  # pragma: no cover - regular files always have a stream
        raise UnsafeArchiveError("bundle member {!r} has no data".format(member.name))
    data = stream.read(cap + 1)
    if len(data) != member.size:
        raise IntegrityError("bundle member {!r} is truncated".format(member.name))
    return data


def _reject_duplicate_keys(pairs: List[Tuple[str, Any]]) -> Dict[str, Any]:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        dupes = sorted({k for k in keys if keys.count(k) > 1})
        raise ManifestError("manifest.json repeats the key(s): " + ", ".join(dupes))
    return dict(pairs)


def _parse_manifest(data: bytes) -> Manifest:
    try:
        json.loads(data.decode("utf-8"), object_pairs_hook=_reject_duplicate_keys)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ManifestError("manifest.json is not valid JSON: {}".format(exc)) from None
    manifest = Manifest.from_bytes(data)
    _check_file_names((f.path for f in manifest.files), ManifestError, "manifest file")
    return manifest


def _copy_member(
    tar: tarfile.TarFile, member: tarfile.TarInfo, entry: FileEntry, dest: Optional[Path], cap: int
) -> None:
    """Stream one member (into `dest` if given) with a byte cap; check its size and sha256."""
    stream = tar.extractfile(member)
    if stream is None:  # pragma: no cover - regular files always have a stream
        raise UnsafeArchiveError("bundle member {!r} has no data".format(member.name))
    digest = hashlib.sha256()
    written = 0
    out = None  # type: Optional[IO[bytes]]
    if dest is not None:
        target = dest.joinpath(*member.name.split("/"))
        target.parent.mkdir(parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
        out = os.fdopen(os.open(str(target), flags, 0o600), "wb")
    try:
        while True:
            chunk = stream.read(CHUNK_BYTES)
            if not chunk:
                break
            written += len(chunk)
            if written > cap:
                raise UnsafeArchiveError("bundle member {!r} holds more than {} bytes".format(member.name, cap))
            digest.update(chunk)
            if out is not None:
                out.write(chunk)
    finally:
        if out is not None:
            out.close()
    if written != entry.size:
        raise IntegrityError(
            "bundle member {!r} has {} bytes, the manifest says {}".format(member.name, written, entry.size)
        )
    if digest.hexdigest() != entry.sha256:
        raise IntegrityError("bundle member {!r} does not match its sha256 in the manifest".format(member.name))


def _file_sha256(f: IO[bytes]) -> Tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    for chunk in iter(lambda: f.read(CHUNK_BYTES), b""):
        digest.update(chunk)
        size += len(chunk)
    return digest.hexdigest(), size


def _check_free_space(path: Path, folder: Path, needed: int) -> None:
    """Refuse to start extracting what cannot fit (a small compressed bundle can expand a lot)."""
    free = shutil.disk_usage(str(folder)).free
    if needed > free:
        raise BundleError(
            "bundle {} needs {} bytes in {}, only {} are free".format(path.name, needed, folder.parent, free)
        )


class _CappedReader:
    """read/seek/tell over the (decompressed) tar stream that refuses to pass `cap` bytes.

    tarfile only needs these three; seeking forward in a gzip stream decompresses up to the target,
    so both reads and seeks are checked before they happen. One read returns at most MAX_READ_BYTES:
    member data is read in chunks, but tarfile reads a PAX or GNU long-name record whole into memory,
    and a few MB of gzip can declare one of gigabytes.
    """

    def __init__(self, stream: IO[bytes], cap: int, bundle_name: str) -> None:
        self._stream = stream
        self._cap = cap
        self._bundle_name = bundle_name

    def _over(self) -> UnsafeArchiveError:
        return UnsafeArchiveError(
            "bundle {} decompresses to more than {} bytes (a compression bomb?)".format(self._bundle_name, self._cap)
        )

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0 or size > MAX_READ_BYTES:
            raise UnsafeArchiveError(
                "bundle {} holds a tar header record over {} bytes (a compression bomb?)".format(
                    self._bundle_name, MAX_READ_BYTES
                )
            )
        start = self._stream.tell()
        allowed = self._cap - start + 1  # one byte more than allowed tells "over" from "exactly at the cap"
        data = self._stream.read(min(size, allowed))
        if start + len(data) > self._cap:
            raise self._over()
        return data

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if whence == os.SEEK_CUR:
            offset += self._stream.tell()
        elif whence != os.SEEK_SET:
            raise ValueError("bundle streams seek from the start or the current position only")
        if offset > self._cap:
            raise self._over()
        return self._stream.seek(offset)

    def tell(self) -> int:
        return self._stream.tell()


def _decompressed(f: IO[bytes]) -> IO[bytes]:
    """The tar stream inside bundle file `f` (xz, gzip or plain, told by the magic bytes): readable,
    seekable (backwards by decompressing again from the start) and telling its decompressed position."""
    magic = f.read(len(XZ_MAGIC))
    f.seek(0)
    if magic.startswith(GZIP_MAGIC):
        return gzip.GzipFile(fileobj=f, mode="rb")
    if magic == XZ_MAGIC:
        import _compression  # the stdlib's seekable reader behind lzma.LZMAFile, which cannot set memlimit

        raw = _compression.DecompressReader(
            f, lzma.LZMADecompressor, trailing_error=lzma.LZMAError, format=lzma.FORMAT_XZ, memlimit=XZ_MEMORY_LIMIT
        )
        return io.BufferedReader(raw)
    return f


def _scan(
    path: Path,
    limits: _Limits,
    trusted_keys: Optional[Union[PathLike, Iterable[PathLike]]],
    dest: Optional[Path],
) -> _ScanResult:
    """Check the bundle at `path` completely; write its files under `dest` if given."""
    trusted = None
    if trusted_keys is not None:
        from edge_sdk.signing import load_trusted_keys

        trusted = load_trusted_keys(trusted_keys)
    try:
        if not stat.S_ISREG(path.stat().st_mode):  # opening a FIFO would block
            raise BundleError("bundle {} is not a regular file".format(path))
        f = open(str(path), "rb")
    except FileNotFoundError:
        raise BundleError("bundle {} does not exist".format(path)) from None
    with f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise BundleError("bundle {} is not a regular file".format(path))
        # headers, PAX records and padding take far less than 4 KiB per member
        max_file_bytes = limits.total_bytes + (limits.members + 4) * 4096
        if info.st_size > max_file_bytes:
            raise UnsafeArchiveError(
                "bundle {} is {} bytes, over the limit of {}".format(path.name, info.st_size, max_file_bytes)
            )
        sha256, size = _file_sha256(f)
        f.seek(0)
        max_tar_bytes = min(max_file_bytes, MAX_EXPANSION * info.st_size + EXPANSION_ALLOWANCE)
        try:
            with contextlib.ExitStack() as stack:
                stream = stack.enter_context(_decompressed(f))
                reader = _CappedReader(stream, max_tar_bytes, path.name)
                tar = stack.enter_context(tarfile.open(fileobj=reader, mode="r:"))
                files, folders = _check_headers(tar, limits)
                reader.seek(tar.offset)
                if reader.read(2 * tarfile.BLOCKSIZE) != bytes(2 * tarfile.BLOCKSIZE):
                    raise IntegrityError(
                        "bundle {} is truncated (its end-of-archive marker is missing)".format(path.name)
                    )
                while reader.read(CHUNK_BYTES):  # to the end: xz and gzip check their checksums there
                    pass
                manifest_member = files.pop(MANIFEST_NAME, None)
                if manifest_member is None:
                    raise IntegrityError(
                        "bundle {} has no {} (not an edge-sdk bundle?)".format(path.name, MANIFEST_NAME)
                    )
                manifest_bytes = _read_small(tar, manifest_member, MAX_MANIFEST_BYTES)
                signature_member = files.pop(SIGNATURE_NAME, None)
                signature_bytes = None
                if signature_member is not None:
                    signature_bytes = _read_small(tar, signature_member, MAX_SIGNATURE_BYTES)
                manifest = _parse_manifest(manifest_bytes)

                listed = {entry.path: entry for entry in manifest.files}
                for name in files:
                    if name not in listed:
                        raise IntegrityError("bundle member {!r} is not listed in the manifest".format(name))
                listed_folders = {p for name in listed for p in _parents(name)}
                for name in folders:
                    if name not in listed_folders:
                        raise IntegrityError("bundle member {!r} is not listed in the manifest".format(name))
                for name, entry in listed.items():
                    member = files.get(name)
                    if member is None:
                        raise IntegrityError("file {!r} listed in the manifest is missing from the bundle".format(name))
                    if member.size != entry.size:
                        raise IntegrityError(
                            "bundle member {!r} has {} bytes, the manifest says {}".format(
                                name, member.size, entry.size
                            )
                        )

                signer = None
                if signature_bytes is not None:
                    from edge_sdk.signing import check_signature

                    signer = check_signature(manifest_bytes, signature_bytes, trusted)
                elif trusted is not None:
                    raise SignatureError(
                        "bundle {} is not signed, and this machine accepts only signed bundles".format(path.name)
                    )

                if dest is not None:
                    _check_free_space(path, dest, sum(entry.size for entry in listed.values()))
                for name in sorted(files, key=lambda n: files[n].offset_data):
                    _copy_member(tar, files[name], listed[name], dest, min(limits.member_bytes, listed[name].size))
        except (tarfile.TarError, EOFError) as exc:  # EOFError: a compressed stream that ends early
            raise IntegrityError("bundle {} is truncated or not a tar archive ({})".format(path.name, exc)) from None
        except (zlib.error, gzip.BadGzipFile, lzma.LZMAError) as exc:
            if isinstance(exc, lzma.LZMAError) and "memory usage limit" in str(exc).lower():
                raise UnsafeArchiveError(
                    "bundle {} needs more than {} MiB of memory to decompress".format(path.name, XZ_MEMORY_LIMIT >> 20)
                ) from None
            raise IntegrityError("bundle {} has corrupt compressed data ({})".format(path.name, exc)) from None
    return _ScanResult(manifest, sha256, size, signer is not None, signer)


class Bundle:
    """An opened, fully verified bundle whose files are extracted under `root`.

    manifest: the parsed manifest. root: private staging folder with the extracted files.
    sha256: hex sha256 of the whole bundle file. signed / signer_key_id: the signature, if any
    (checked against the trusted keys when `open_bundle` was given some).
    The staging folder is removed by `close()`, at the end of a `with` block, or when the object
    is garbage collected: keep a reference while files under `root` are in use.
    """

    def __init__(self, path: Path, root: Path, scan: _ScanResult) -> None:
        self.path = path
        self.root = root
        self.manifest = scan.manifest
        self.sha256 = scan.sha256
        self.size = scan.size
        self.signed = scan.signed
        self.signer_key_id = scan.signer_key_id
        self._cleanup = weakref.finalize(self, shutil.rmtree, str(root), True)

    def path_of(self, arcname: str) -> Path:
        """Extracted location of a file listed in the manifest (e.g. "model/model.pdmodel")."""
        if self.manifest.file(arcname) is None:
            raise BundleError("bundle {} has no file {!r}".format(self.path.name, arcname))
        return self.root.joinpath(*arcname.split("/"))

    def close(self) -> None:
        """Remove the staging folder."""
        self._cleanup()

    @property
    def closed(self) -> bool:
        return not self._cleanup.alive

    def __enter__(self) -> Bundle:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return "Bundle({!r}, {} {}, root={})".format(
            str(self.path), self.manifest.name, self.manifest.version, self.root
        )


def open_bundle(
    path: PathLike,
    staging_dir: Optional[PathLike] = None,
    trusted_keys: Optional[Union[PathLike, Iterable[PathLike]]] = None,
    max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES,
    max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES,
    max_members: int = DEFAULT_MAX_MEMBERS,
) -> Bundle:
    """Verify a bundle and extract its files into a fresh private staging folder.

    staging_dir: folder in which the staging folder is created (default: the system temp folder).
    trusted_keys: public key files and/or folders of *.pem / *.pub; when given, the bundle must
    be signed by one of them. Without it a signature is checked and reported but not required.
    max_*: limits on one member's size, the sum of sizes (bytes) and the number of members.
    Raises UnsafeArchiveError, IntegrityError, SignatureError or ManifestError; on failure the
    staging folder is removed.
    """
    path = Path(path)
    limits = _Limits(max_member_bytes, max_total_bytes, max_members)
    if staging_dir is not None and not Path(staging_dir).is_dir():
        raise BundleError("staging folder {} does not exist".format(staging_dir))
    root = Path(tempfile.mkdtemp(prefix="edgebundle-", dir=None if staging_dir is None else str(staging_dir)))
    try:
        scan = _scan(path, limits, trusted_keys, root)
    except BaseException:
        shutil.rmtree(str(root), ignore_errors=True)
        raise
    return Bundle(path, root, scan)


@contextlib.contextmanager
def opened_bundle(source: Any, trusted_keys: Optional[Union[PathLike, Iterable[PathLike]]] = None) -> Iterator[Any]:
    """`source` as an opened bundle for a `with` block: a path is opened (open_bundle) and closed at
    the end; anything else (an opened Bundle) is used as it is and left open for its owner."""
    if not isinstance(source, (str, os.PathLike)):
        yield source
        return
    with open_bundle(source, trusted_keys=trusted_keys) as bundle:
        yield bundle


def verify_bundle(path: PathLike, trusted_keys: Optional[Union[PathLike, Iterable[PathLike]]] = None) -> Manifest:
    """Run every check of `open_bundle` without writing anything to disk; return the manifest."""
    limits = _Limits(DEFAULT_MAX_MEMBER_BYTES, DEFAULT_MAX_TOTAL_BYTES, DEFAULT_MAX_MEMBERS)
    return _scan(Path(path), limits, trusted_keys, None).manifest


def inspect_bundle(
    path: PathLike, trusted_keys: Optional[Union[PathLike, Iterable[PathLike]]] = None
) -> Dict[str, Any]:
    """Verify a bundle without writing to disk and summarise it as plain JSON types.

    Keys: path, size (bytes), sha256, signed, signer_key_id, trusted (whether trusted_keys were
    checked), manifest (`Manifest.to_dict()`, whose "files" lists path, size and sha256).
    """
    path = Path(path)
    limits = _Limits(DEFAULT_MAX_MEMBER_BYTES, DEFAULT_MAX_TOTAL_BYTES, DEFAULT_MAX_MEMBERS)
    scan = _scan(path, limits, trusted_keys, None)
    return {
        "path": str(path),
        "size": scan.size,
        "sha256": scan.sha256,
        "signed": scan.signed,
        "signer_key_id": scan.signer_key_id,
        "trusted": trusted_keys is not None,
        "manifest": scan.manifest.to_dict(),
    }


# ----------------------------------------------------------------------------- writing


def _installed_version(*distributions: str) -> str:
    from importlib import metadata

    for name in distributions:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return ""


def _fill_defaults(manifest: Manifest) -> Manifest:
    import edge_sdk

    changes = {}  # type: Dict[str, str]
    if not manifest.created_at:
        changes["created_at"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    if not manifest.sdk_version:
        changes["sdk_version"] = edge_sdk.__version__
    if not manifest.paddle_version:
        changes["paddle_version"] = _installed_version("paddlepaddle", "paddlepaddle-gpu", "paddle-inference")
    return replace(manifest, **changes)


def _mtime(manifest: Manifest) -> int:
    try:
        when = datetime.datetime.strptime(manifest.created_at, "%Y-%m-%dT%H:%M:%SZ")
    except ValueError:
        return 0
    return int(when.replace(tzinfo=datetime.timezone.utc).timestamp())


def _tar_info(name: str, size: int, mtime: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = mtime
    info.mode = 0o644
    info.type = tarfile.REGTYPE
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _source_digest(arcname: str, source: FileSource) -> Tuple[FileEntry, Union[bytes, Path]]:
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        return FileEntry(arcname, len(data), hashlib.sha256(data).hexdigest()), data
    if not isinstance(source, (str, os.PathLike)):
        raise BundleError("bundle file {!r}: expected a path or bytes, got {}".format(arcname, type(source).__name__))
    src = Path(source)
    try:
        with open(str(src), "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise BundleError("source {} of bundle file {!r} is not a regular file".format(src, arcname))
            digest, size = _file_sha256(f)
    except FileNotFoundError:
        raise BundleError("source {} of bundle file {!r} does not exist".format(src, arcname)) from None
    except IsADirectoryError:
        raise BundleError("source {} of bundle file {!r} is a folder".format(src, arcname)) from None
    return FileEntry(arcname, size, digest), src


def _load_signing_key(signing_key: Any) -> Any:
    from edge_sdk.signing import Ed25519PrivateKey, load_private_key

    if isinstance(signing_key, Ed25519PrivateKey):
        return signing_key
    if isinstance(signing_key, (str, os.PathLike)):
        return load_private_key(signing_key)
    raise BundleError("signing_key must be a private key file path, got {}".format(type(signing_key).__name__))


def write_bundle(
    out_path: PathLike,
    manifest: Manifest,
    files: Mapping[str, FileSource],
    signing_key: Any = None,
) -> Path:
    """Write a bundle atomically and return its path.

    out_path: the bundle file, or an existing folder to write `default_bundle_name(manifest)` in.
    files: archive name ("model/model.pdmodel", "calibration/golden/0.jpg") -> source file path
    or bytes. The manifest's `files` is replaced by their sizes and sha256; created_at (UTC),
    sdk_version and paddle_version are filled in when empty. signing_key: a private key PEM path
    or an Ed25519PrivateKey, to add manifest.sig. The tar is xz-compressed (preset XZ_PRESET)
    with deterministic bytes: the same manifest (created_at included) and files give the same file.
    The manifest and signature records are an xz stream of their own, followed by the stream of the
    rest (one xz file, two concatenated streams), so `sign_bundle` replaces the first one only.
    The written file is verified before it replaces `out_path`; an interruption leaves no partial file.
    """
    if not isinstance(manifest, Manifest):
        raise BundleError("write_bundle needs a Manifest, got {}".format(type(manifest).__name__))
    out = Path(out_path)
    if out.is_dir():
        out = out / default_bundle_name(manifest)
    if not out.parent.is_dir():
        raise BundleError("folder {} does not exist".format(out.parent))
    _check_file_names(files, BundleError, "bundle file")
    private_key = None if signing_key is None else _load_signing_key(signing_key)

    entries = []  # type: List[FileEntry]
    sources = {}  # type: Dict[str, Union[bytes, Path]]
    for arcname in sorted(files):
        entry, source = _source_digest(arcname, files[arcname])
        entries.append(entry)
        sources[arcname] = source
    manifest = _fill_defaults(replace(manifest, files=tuple(entries)))
    manifest_bytes = manifest.canonical_bytes()
    Manifest.from_bytes(manifest_bytes)  # a manifest that would not load must not be written
    mtime = _mtime(manifest)

    signature = None
    if private_key is not None:
        from edge_sdk.signing import sign_manifest

        signature = sign_manifest(manifest_bytes, private_key)
    with atomic_output(out) as tmp:
        with open(str(tmp), "wb") as f:
            xz = _XzStreams(f)
            f.write(_head_stream(manifest_bytes, signature, mtime))
            with tarfile.open(fileobj=xz, mode="w", format=tarfile.PAX_FORMAT) as tar:
                for entry in entries:
                    info = _tar_info(entry.path, entry.size, mtime)
                    source = sources[entry.path]
                    if isinstance(source, bytes):
                        tar.addfile(info, _BytesReader(source))
                    else:
                        with open(str(source), "rb") as src:
                            tar.addfile(info, src)
            xz.close()
        limits = _Limits(DEFAULT_MAX_MEMBER_BYTES, DEFAULT_MAX_TOTAL_BYTES, DEFAULT_MAX_MEMBERS)
        try:
            _scan(tmp, limits, None, None)
        except IntegrityError as exc:
            raise BundleError("a source file changed while the bundle was written: {}".format(exc)) from None
    return out


class _BytesReader:
    """Minimal read-only file over bytes (io.BytesIO would copy them)."""

    def __init__(self, data: bytes) -> None:
        self._view = memoryview(data)
        self._pos = 0

    def read(self, size: int = -1) -> bytes:
        end = len(self._view) if size is None or size < 0 else min(len(self._view), self._pos + size)
        chunk = self._view[self._pos : end].tobytes()
        self._pos = end
        return chunk


class _XzStreams:
    """A write-only file that xz-compresses what it is given into `f` (tarfile needs write and tell)."""

    def __init__(self, f: IO[bytes]) -> None:
        self._f = f
        self._compressor = lzma.LZMACompressor(format=lzma.FORMAT_XZ, preset=XZ_PRESET)
        self._written = 0

    def write(self, data: bytes) -> int:
        self._f.write(self._compressor.compress(data))
        self._written += len(data)
        return len(data)

    def tell(self) -> int:
        return self._written

    def close(self) -> None:
        self._f.write(self._compressor.flush())


def _head_stream(manifest_bytes: bytes, signature: Optional[bytes], mtime: int) -> bytes:
    """The first xz stream of a bundle: the tar records of manifest.json and manifest.sig (when signed)."""
    buffer = io.BytesIO()
    records = [(MANIFEST_NAME, manifest_bytes)] + ([(SIGNATURE_NAME, signature)] if signature is not None else [])
    for name, data in records:
        buffer.write(_tar_info(name, len(data), mtime).tobuf(format=tarfile.PAX_FORMAT))
        buffer.write(data + bytes(-len(data) % tarfile.BLOCKSIZE))
    return lzma.compress(buffer.getvalue(), format=lzma.FORMAT_XZ, preset=XZ_PRESET)


def _body_offset(path: Path) -> Optional[int]:
    """Where the second xz stream of the bundle at `path` starts, when its first stream holds only the
    manifest and signature records (bundles written by write_bundle); else None."""
    decompressor = lzma.LZMADecompressor(format=lzma.FORMAT_XZ, memlimit=XZ_MEMORY_LIMIT)
    head = b""
    consumed = 0
    with open(str(path), "rb") as f:
        if f.read(len(XZ_MAGIC)) != XZ_MAGIC:
            return None
        f.seek(0)
        while not decompressor.eof:
            chunk = f.read(CHUNK_BYTES)
            if not chunk:
                return None
            consumed += len(chunk)
            head += decompressor.decompress(chunk, max_length=MAX_READ_BYTES)
            if len(head) > MAX_MANIFEST_BYTES + MAX_SIGNATURE_BYTES + 4 * tarfile.BLOCKSIZE:
                return None
    try:
        with tarfile.open(fileobj=io.BytesIO(head), mode="r:") as tar:
            names = [member.name for member in tar.getmembers()]
    except tarfile.TarError:
        return None
    if names not in ([MANIFEST_NAME], [MANIFEST_NAME, SIGNATURE_NAME]):
        return None
    return consumed - len(decompressor.unused_data)


def sign_bundle(path: PathLike, private_key_path: PathLike, out: Optional[PathLike] = None) -> Path:
    """Verify a bundle, then write it atomically (to `out`, default in place) with manifest.sig.

    An existing signature is replaced. The files are not compressed again when the bundle has the
    layout write_bundle gives (its first xz stream holds only the manifest and signature): only that
    stream is replaced and the rest is copied. Returns the written path.
    """
    from edge_sdk.signing import load_private_key, sign_manifest

    path = Path(path)
    private_key = load_private_key(private_key_path)
    target = path if out is None else Path(out)
    staging_parent = target.parent if target.parent.is_dir() else None
    limits = _Limits(DEFAULT_MAX_MEMBER_BYTES, DEFAULT_MAX_TOTAL_BYTES, DEFAULT_MAX_MEMBERS)
    manifest = _scan(path, limits, None, None).manifest
    body_offset = _body_offset(path)
    if body_offset is None:
        with open_bundle(path, staging_dir=staging_parent) as bundle:
            files = {entry.path: bundle.path_of(entry.path) for entry in bundle.manifest.files}
            return write_bundle(target, bundle.manifest, files, signing_key=private_key)
    manifest_bytes = manifest.canonical_bytes()
    head = _head_stream(manifest_bytes, sign_manifest(manifest_bytes, private_key), _mtime(manifest))
    with atomic_output(target) as tmp:
        with open(str(path), "rb") as src, open(str(tmp), "wb") as dst:
            dst.write(head)
            src.seek(body_offset)
            shutil.copyfileobj(src, dst, CHUNK_BYTES)
        _scan(tmp, limits, None, None)
    return target


def generate_keypair(private_path: PathLike, public_path: PathLike) -> str:
    """Write a new Ed25519 key pair (see `edge_sdk.signing.generate_keypair`); return its key id."""
    from edge_sdk.signing import generate_keypair as _generate

    return _generate(private_path, public_path)
