"""Bundle format v1: one tar file `NAME-VERSION.edgebundle` carrying a model to the robot.

Members, in this order: `manifest.json` (exactly `Manifest.canonical_bytes()`), an optional
`manifest.sig` (Ed25519, see `edge_sdk.signing`), then the files the manifest lists
(`model/model.pdmodel`, `model/model.pdiparams`, `calibration/...`). The tar itself is not
compressed (PAX format, deterministic bytes); each file picks its codec: a member with the PAX record
`EDGESDK.codec=xz` holds its file as one xz stream (the program, JSON, small weights), any other member
holds it as it is (large weights, which barely compress, and JPEG images). Signing therefore rewrites
only the first two records and copies the rest, and opening a 90 MB bundle costs about two sha256
passes over it. Older bundles (the whole tar in an xz or gzip stream) still open: the outer format
is told by its magic bytes. `Bundle.sha256` is the sha256 of the file as flashed; the manifest lists
the size and sha256 of every file as extracted, and the signature covers the manifest only, so
codecs do not change what is signed.

Opening never trusts the archive, and reads it once, in order (hashing the file while it reads).
The manifest and the signature come first and are checked (JSON, bounds, the files' sizes against
the limits and the bundle's size, the signature and trusted keys) before anything is written; each
further member header is checked (name, type, count, size, listed in the manifest) before its data
is read; its data is streamed into a fresh private staging folder while its size and sha256 are
checked, xz data with a capped decoder memory and an output capped at the size the manifest says.
Nothing is decompressed into memory as a whole. Any failure raises a typed error naming the member
(UnsafeArchiveError, IntegrityError, SignatureError, ManifestError) and removes the staging folder.
Nothing is ever unpickled. tarfile only parses headers (its extraction helpers and `filter=`, absent
on Python 3.8, are not used): member data is read straight from the stream.
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
CODEC_KEY = "EDGESDK.codec"
"""PAX record naming a member's codec; absent: the member holds its file as it is."""
CODEC_XZ = "xz"
# xz rather than gzip: a Paddle program (.pdmodel) is repetitive protobuf that LZMA packs to half of
# gzip's size (demo INT8 program 28 KB -> 13 KB), which decides the INT8/FP32 size of small bundles.
# Preset 9e with the dictionary cut to the file (`_xz_filters`): the demo's INT8 bundle 4.6 KB and its
# FP32 one 8.7 KB smaller than preset 1 (INT8/FP32 bytes 0.300 -> 0.298), for 0.35 s per MB written
# (files over MAX_XZ_MEMBER_BYTES are stored) and a decoder no larger than the file.
XZ_PRESET = 9 | lzma.PRESET_EXTREME
MAX_XZ_MEMBER_BYTES = 8 << 20
"""Files up to this size are xz-compressed (at most ~0.5 s each) when that makes them smaller. Larger
ones (real weights) are stored: float32 weights gain only ~7-8 %, and xz would cost ~5 s per 100 MB
to write and ~1 s to every open (zlib level 1: ~2 s per 100 MB to write, 0.5 s to open). The demo's
1 MB weights still gain their 8-13 %, which keeps its INT8/FP32 bundle bytes under 0.30."""
STORED_SUFFIXES = (".jpg", ".jpeg", ".png", ".gz", ".xz", ".zip")
"""Files already compressed, stored as they are whatever their size."""
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
    body_offset: Optional[int]
    """File offset of the first member after manifest.json and manifest.sig when the file is the tar
    itself (not inside an outer gzip or xz stream, as older bundles are); else None."""


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


class _HashingFile:
    """read() over the bundle file that feeds every byte it returns to a sha256 (the file's own hash)."""

    def __init__(self, f: IO[bytes]) -> None:
        self._f = f
        self.digest = hashlib.sha256()
        self.size = 0

    def read(self, size: int = -1) -> bytes:
        data = self._f.read(size)
        self.digest.update(data)
        self.size += len(data)
        return data

    def read_to_end(self) -> None:
        while self.read(CHUNK_BYTES):
            pass


class _CappedReader:
    """read/seek/tell over the tar stream, forward only, that refuses to pass `cap` bytes.

    tarfile needs these three. Seeking forward reads (and so hashes) what it skips; seeking back is
    refused: a bundle is read in one pass. One read returns at most MAX_READ_BYTES: member data is read
    in chunks, but tarfile reads a PAX or GNU long-name record whole into memory, and a few MB of xz
    can declare one of gigabytes. `last_block` is the last 512-byte read (tarfile's header reads).
    """

    def __init__(self, stream: Any, cap: int, bundle_name: str) -> None:
        self._stream = stream
        self._cap = cap
        self._bundle_name = bundle_name
        self._position = 0
        self.last_block = b""

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
        allowed = self._cap - self._position + 1  # one byte more than allowed tells "over" from "exactly at the cap"
        data = self._stream.read(min(size, allowed))
        self._position += len(data)
        if self._position > self._cap:
            raise self._over()
        if size == tarfile.BLOCKSIZE:
            self.last_block = data
        return data

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if whence == os.SEEK_CUR:
            offset += self._position
        elif whence != os.SEEK_SET:
            raise ValueError("bundle streams seek from the start or the current position only")
        if offset < self._position:
            raise IntegrityError("bundle {} is not a tar archive read in one pass".format(self._bundle_name))
        while self._position < offset:
            if not self.read(min(CHUNK_BYTES, offset - self._position)):
                break
        return self._position

    def tell(self) -> int:
        return self._position

    def read_exact(self, size: int) -> bytes:
        """`size` bytes (at most MAX_READ_BYTES), or fewer when the stream ends first."""
        parts = []
        while size > 0:
            chunk = self.read(min(size, CHUNK_BYTES))
            if not chunk:
                break
            parts.append(chunk)
            size -= len(chunk)
        return b"".join(parts)


def _tar_stream(raw: _HashingFile, magic: bytes) -> Any:
    """The tar stream inside a bundle file: the file itself, or (older bundles) its gzip or xz stream."""
    if magic.startswith(GZIP_MAGIC):
        return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[arg-type]
    if magic == XZ_MAGIC:
        import _compression  # the stdlib's reader behind lzma.LZMAFile, which cannot set memlimit

        decoded = _compression.DecompressReader(
            raw, lzma.LZMADecompressor, trailing_error=lzma.LZMAError, format=lzma.FORMAT_XZ, memlimit=XZ_MEMORY_LIMIT
        )
        return io.BufferedReader(decoded)  # whole reads: tarfile takes a short header read for the end
    return raw


class _MemberSink:
    """Takes one member's decoded bytes: checks the byte cap and sha256, writes them under `dest` if given."""

    def __init__(self, name: str, entry: FileEntry, dest: Optional[Path]) -> None:
        self._name = name
        self._entry = entry
        self._digest = hashlib.sha256()
        self._written = 0
        self._out = None  # type: Optional[IO[bytes]]
        if dest is not None:
            target = dest.joinpath(*name.split("/"))
            target.parent.mkdir(parents=True, exist_ok=True)
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
            self._out = os.fdopen(os.open(str(target), flags, 0o600), "wb")

    def write(self, data: bytes) -> None:
        self._written += len(data)
        if self._written > self._entry.size:
            raise IntegrityError(
                "bundle member {!r} holds more than the {} bytes the manifest says".format(self._name, self._entry.size)
            )
        self._digest.update(data)
        if self._out is not None:
            self._out.write(data)

    def finish(self) -> None:
        self.close()
        if self._written != self._entry.size:
            raise IntegrityError(
                "bundle member {!r} has {} bytes, the manifest says {}".format(
                    self._name, self._written, self._entry.size
                )
            )
        if self._digest.hexdigest() != self._entry.sha256:
            raise IntegrityError("bundle member {!r} does not match its sha256 in the manifest".format(self._name))

    def close(self) -> None:
        if self._out is not None:
            self._out.close()


def _read_member(reader: _CappedReader, member: tarfile.TarInfo, bundle_name: str) -> Iterator[bytes]:
    """The stored bytes of `member`, in chunks, straight from the stream (tarfile left it at the data)."""
    reader.seek(member.offset_data)
    left = member.size
    while left > 0:
        chunk = reader.read(min(left, CHUNK_BYTES))
        if not chunk:
            raise IntegrityError("bundle {} is truncated (inside member {!r})".format(bundle_name, member.name))
        left -= len(chunk)
        yield chunk


def _copy_member(
    reader: _CappedReader, member: tarfile.TarInfo, entry: FileEntry, dest: Optional[Path], bundle_name: str
) -> None:
    """Stream one member through its codec into a _MemberSink (which checks its size and sha256)."""
    codec = member.pax_headers.get(CODEC_KEY)
    if codec is None and member.size != entry.size:
        raise IntegrityError(
            "bundle member {!r} has {} bytes, the manifest says {}".format(member.name, member.size, entry.size)
        )
    if codec not in (None, CODEC_XZ):
        raise IntegrityError("bundle member {!r} has the unknown codec {!r}".format(member.name, codec))
    sink = _MemberSink(member.name, entry, dest)
    try:
        if codec is None:
            for chunk in _read_member(reader, member, bundle_name):
                sink.write(chunk)
        else:
            decoder = lzma.LZMADecompressor(format=lzma.FORMAT_XZ, memlimit=XZ_MEMORY_LIMIT)
            for chunk in _read_member(reader, member, bundle_name):
                if decoder.eof:
                    raise IntegrityError("bundle member {!r} has data after its xz stream".format(member.name))
                # at most one byte over the size the manifest says: the sink refuses it
                sink.write(decoder.decompress(chunk, max_length=entry.size + 1))
                while not decoder.needs_input and not decoder.eof:
                    sink.write(decoder.decompress(b"", max_length=entry.size + 1))
            if not decoder.eof:
                raise IntegrityError("bundle member {!r} is truncated (its xz stream ends early)".format(member.name))
            if decoder.unused_data:
                raise IntegrityError("bundle member {!r} has data after its xz stream".format(member.name))
    finally:
        sink.close()
    sink.finish()


def _check_header(member: tarfile.TarInfo, limits: _Limits, seen: Dict[str, str]) -> None:
    """One member header, before any of its data is read: safe name and type, no duplicate, within the limits."""
    if len(seen) >= limits.members:
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
    if member.isreg() and (member.size < 0 or member.size > limits.member_bytes):
        raise UnsafeArchiveError(
            "bundle member {!r} is {} bytes, over the limit of {}".format(name, member.size, limits.member_bytes)
        )


def _check_listed(
    manifest: Manifest, head_bytes: int, limits: _Limits, max_decoded_bytes: int, bundle_name: str
) -> None:
    """The files the manifest lists, within the limits, before any is read. head_bytes: the sizes of
    manifest.json and manifest.sig."""
    if len(manifest.files) + 1 > limits.members:
        raise UnsafeArchiveError("bundle has more than {} members".format(limits.members))
    total = head_bytes
    for entry in manifest.files:
        if entry.size > limits.member_bytes:
            raise UnsafeArchiveError(
                "bundle member {!r} is {} bytes, over the limit of {}".format(
                    entry.path, entry.size, limits.member_bytes
                )
            )
        total += entry.size
    if total > limits.total_bytes:
        raise UnsafeArchiveError("bundle members add up to more than {} bytes".format(limits.total_bytes))
    if total > max_decoded_bytes:
        raise UnsafeArchiveError(
            "bundle {} decompresses to more than {} bytes (a compression bomb?)".format(bundle_name, max_decoded_bytes)
        )


def _read_small(reader: _CappedReader, member: tarfile.TarInfo, cap: int, bundle_name: str) -> bytes:
    if member.size > cap:
        raise UnsafeArchiveError(
            "bundle member {!r} is {} bytes, over the limit of {}".format(member.name, member.size, cap)
        )
    if CODEC_KEY in member.pax_headers:
        raise IntegrityError("bundle member {!r} must be stored as it is".format(member.name))
    return b"".join(_read_member(reader, member, bundle_name))


def _check_end(reader: _CappedReader, tar: tarfile.TarFile, bundle_name: str) -> None:
    """The two zero blocks that end a tar: tarfile stops at the first one (or at anything it cannot read)."""
    zero_block = bytes(tarfile.BLOCKSIZE)
    if reader.tell() == tar.offset + tarfile.BLOCKSIZE and reader.last_block == zero_block:
        needed = tarfile.BLOCKSIZE
    elif reader.tell() == tar.offset:
        needed = 2 * tarfile.BLOCKSIZE
    else:
        needed = -1
    if needed < 0 or reader.read_exact(needed) != bytes(needed):
        raise IntegrityError("bundle {} is truncated (its end-of-archive marker is missing)".format(bundle_name))


def _scan(
    path: Path,
    limits: _Limits,
    trusted_keys: Optional[Union[PathLike, Iterable[PathLike]]],
    dest: Optional[Path],
    head_only: bool = False,
    name: Optional[str] = None,
) -> _ScanResult:
    """Check the bundle at `path` completely in one pass over its bytes; write its files under `dest` if given.

    head_only: read only as far as the manifest (checked alone; sha256 and size are then left empty).
    name: the bundle's name in error messages (default: the file's).
    """
    trusted = None
    if trusted_keys is not None:
        from edge_sdk.signing import load_trusted_keys

        trusted = load_trusted_keys(trusted_keys)
    bundle_name = name or path.name
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
                "bundle {} is {} bytes, over the limit of {}".format(bundle_name, info.st_size, max_file_bytes)
            )
        max_tar_bytes = min(max_file_bytes, MAX_EXPANSION * info.st_size + EXPANSION_ALLOWANCE)
        magic = f.read(len(XZ_MAGIC))
        f.seek(0)
        raw = _HashingFile(f)
        try:
            stream = _tar_stream(raw, magic)
            reader = _CappedReader(stream, max_tar_bytes, bundle_name)
            scan = _scan_tar(reader, bundle_name, limits, max_tar_bytes, trusted, dest, head_only)
            if head_only:
                return _ScanResult(scan[0], "", 0, False, None, scan[2] if stream is raw else None)
            while reader.read(CHUNK_BYTES):  # to the end: xz and gzip check their checksums there
                pass
            raw.read_to_end()
        except (tarfile.TarError, EOFError) as exc:  # EOFError: a compressed stream that ends early
            raise IntegrityError("bundle {} is truncated or not a tar archive ({})".format(bundle_name, exc)) from None
        except (zlib.error, gzip.BadGzipFile, lzma.LZMAError) as exc:
            if isinstance(exc, lzma.LZMAError) and "memory usage limit" in str(exc).lower():
                raise UnsafeArchiveError(
                    "bundle {} needs more than {} MiB of memory to decompress".format(
                        bundle_name, XZ_MEMORY_LIMIT >> 20
                    )
                ) from None
            raise IntegrityError("bundle {} has corrupt compressed data ({})".format(bundle_name, exc)) from None
    manifest, signer, body_offset = scan
    return _ScanResult(
        manifest,
        raw.digest.hexdigest(),
        raw.size,
        signer is not None,
        signer,
        body_offset if stream is raw else None,
    )


def _scan_tar(
    reader: _CappedReader,
    bundle_name: str,
    limits: _Limits,
    max_decoded_bytes: int,
    trusted: Optional[Dict[str, Any]],
    dest: Optional[Path],
    head_only: bool = False,
) -> Tuple[Manifest, Optional[str], int]:
    """Read the tar once, in order: manifest.json, manifest.sig if signed (both checked before anything is
    written), then every file, each header checked before its data is read. Returns (manifest, signer key
    id or None, offset of the first member after the manifest and signature)."""
    seen = {}  # type: Dict[str, str]
    tar = tarfile.open(fileobj=reader, mode="r:")  # type: ignore[call-overload]
    member = tar.next()
    if member is not None:
        _check_header(member, limits, seen)
    if member is None or member.name != MANIFEST_NAME or not member.isreg():
        raise IntegrityError("bundle {} has no {} first (not an edge-sdk bundle?)".format(bundle_name, MANIFEST_NAME))
    manifest_bytes = _read_small(reader, member, MAX_MANIFEST_BYTES, bundle_name)
    member = tar.next()
    signature_bytes = None
    if member is not None:
        _check_header(member, limits, seen)
        if member.name == SIGNATURE_NAME and member.isreg():
            signature_bytes = _read_small(reader, member, MAX_SIGNATURE_BYTES, bundle_name)
            member = tar.next()
            if member is not None:
                _check_header(member, limits, seen)
    body_offset = member.offset if member is not None else tar.offset
    manifest = _parse_manifest(manifest_bytes)
    if head_only:
        return manifest, None, body_offset
    head_bytes = len(manifest_bytes) + len(signature_bytes or b"")
    _check_listed(manifest, head_bytes, limits, max_decoded_bytes, bundle_name)
    listed = {entry.path: entry for entry in manifest.files}
    listed_folders = {p for name in listed for p in _parents(name)}

    signer = None
    if signature_bytes is not None:
        from edge_sdk.signing import check_signature

        signer = check_signature(manifest_bytes, signature_bytes, trusted)
    elif trusted is not None:
        raise SignatureError(
            "bundle {} is not signed, and this machine accepts only signed bundles".format(bundle_name)
        )
    if dest is not None:
        _check_free_space(Path(bundle_name), dest, sum(entry.size for entry in listed.values()))

    done = set()
    while member is not None:
        name = member.name
        if member.isdir():
            if name not in listed_folders:
                raise IntegrityError("bundle member {!r} is not listed in the manifest".format(name))
        elif name not in listed:
            raise IntegrityError("bundle member {!r} is not listed in the manifest".format(name))
        else:
            _copy_member(reader, member, listed[name], dest, bundle_name)
            done.add(name)
        member = tar.next()
        if member is not None:
            _check_header(member, limits, seen)
    _check_end(reader, tar, bundle_name)
    for name in listed:
        if name not in done:
            raise IntegrityError("file {!r} listed in the manifest is missing from the bundle".format(name))
    return manifest, signer, body_offset


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


def _tar_info(name: str, size: int, mtime: int, codec: Optional[str] = None) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    if codec is not None:
        info.pax_headers = {CODEC_KEY: codec}
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
    or an Ed25519PrivateKey, to add manifest.sig. Each file is stored as it is or xz-compressed
    (XZ_PRESET, `_xz_filters`), see `_codec_for`; the bytes are deterministic: the same manifest (created_at
    included) and files give the same file. The written file is verified before it replaces
    `out_path`; an interruption leaves no partial file.
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
            f.write(_head_records(manifest_bytes, signature, mtime))
            for entry in entries:
                _write_member(f, entry, sources[entry.path], mtime)
            f.write(bytes(2 * tarfile.BLOCKSIZE))  # the end-of-archive marker, no padding to a record size
        limits = _Limits(DEFAULT_MAX_MEMBER_BYTES, DEFAULT_MAX_TOTAL_BYTES, DEFAULT_MAX_MEMBERS)
        try:
            _scan(tmp, limits, None, None)
        except IntegrityError as exc:
            raise BundleError("a source file changed while the bundle was written: {}".format(exc)) from None
    return out


def _codec_for(entry: FileEntry) -> Optional[str]:
    """CODEC_XZ for a file worth compressing (up to MAX_XZ_MEMBER_BYTES, not already compressed), else None."""
    if entry.size > MAX_XZ_MEMBER_BYTES or entry.path.lower().endswith(STORED_SUFFIXES):
        return None
    return CODEC_XZ


def _xz_filters(size: int) -> List[Dict[str, int]]:
    """LZMA2 at XZ_PRESET with a dictionary of the smallest power of two (at least 4 KiB) that holds
    `size` bytes: a dictionary larger than its file packs it no smaller, and sets what the decoder allocates."""
    dict_size = 4096
    while dict_size < size:
        dict_size *= 2
    return [{"id": lzma.FILTER_LZMA2, "preset": XZ_PRESET, "dict_size": dict_size}]


def _write_member(f: IO[bytes], entry: FileEntry, source: Union[bytes, Path], mtime: int) -> None:
    """Append one file's tar record to `f` with the codec `_codec_for` picks (stored when xz would not
    make it smaller)."""
    if _codec_for(entry) == CODEC_XZ:
        data = source if isinstance(source, bytes) else source.read_bytes()
        packed = lzma.compress(data, format=lzma.FORMAT_XZ, filters=_xz_filters(len(data)))
        if len(packed) < entry.size:
            f.write(_tar_info(entry.path, len(packed), mtime, CODEC_XZ).tobuf(format=tarfile.PAX_FORMAT))
            f.write(packed + bytes(-len(packed) % tarfile.BLOCKSIZE))
            return
        source = data
    f.write(_tar_info(entry.path, entry.size, mtime).tobuf(format=tarfile.PAX_FORMAT))
    if isinstance(source, bytes):
        f.write(source)
    else:
        with open(str(source), "rb") as src:
            left = entry.size
            while left > 0:  # the sizes were taken just before; the final check catches a file that changed
                chunk = src.read(min(left, CHUNK_BYTES))
                if not chunk:
                    break
                f.write(chunk)
                left -= len(chunk)
            f.write(bytes(left))
    f.write(bytes(-entry.size % tarfile.BLOCKSIZE))


def _head_records(manifest_bytes: bytes, signature: Optional[bytes], mtime: int) -> bytes:
    """The first tar records of a bundle: manifest.json and manifest.sig (when signed), stored."""
    buffer = io.BytesIO()
    records = [(MANIFEST_NAME, manifest_bytes)] + ([(SIGNATURE_NAME, signature)] if signature is not None else [])
    for name, data in records:
        buffer.write(_tar_info(name, len(data), mtime).tobuf(format=tarfile.PAX_FORMAT))
        buffer.write(data + bytes(-len(data) % tarfile.BLOCKSIZE))
    return buffer.getvalue()


def sign_bundle(path: PathLike, private_key_path: PathLike, out: Optional[PathLike] = None) -> Path:
    """Verify a bundle, then write it atomically (to `out`, default in place) with manifest.sig.

    An existing signature is replaced. Only the first records (manifest and signature) are written
    anew; the files' records are copied as they are and verified once, as written, before the copy
    replaces the target. Older bundles (inside an xz or gzip stream) are written in today's layout.
    Returns the written path.
    """
    from edge_sdk.signing import load_private_key, sign_manifest

    path = Path(path)
    private_key = load_private_key(private_key_path)
    target = path if out is None else Path(out)
    staging_parent = target.parent if target.parent.is_dir() else None
    limits = _Limits(DEFAULT_MAX_MEMBER_BYTES, DEFAULT_MAX_TOTAL_BYTES, DEFAULT_MAX_MEMBERS)
    scan = _scan(path, limits, None, None, head_only=True)  # the copy is verified in full below
    if scan.body_offset is None:
        with open_bundle(path, staging_dir=staging_parent) as bundle:
            files = {entry.path: bundle.path_of(entry.path) for entry in bundle.manifest.files}
            return write_bundle(target, bundle.manifest, files, signing_key=private_key)
    manifest_bytes = scan.manifest.canonical_bytes()
    head = _head_records(manifest_bytes, sign_manifest(manifest_bytes, private_key), _mtime(scan.manifest))
    with atomic_output(target) as tmp:
        with open(str(path), "rb") as src, open(str(tmp), "wb") as dst:
            dst.write(head)
            src.seek(scan.body_offset)
            shutil.copyfileobj(src, dst, CHUNK_BYTES)
        written = _scan(tmp, limits, None, None, name=path.name)
        if written.manifest != scan.manifest:
            raise BundleError("bundle {} changed while it was signed".format(path))
    return target


def generate_keypair(private_path: PathLike, public_path: PathLike) -> str:
    """Write a new Ed25519 key pair (see `edge_sdk.signing.generate_keypair`); return its key id."""
    from edge_sdk.signing import generate_keypair as _generate

    return _generate(private_path, public_path)
