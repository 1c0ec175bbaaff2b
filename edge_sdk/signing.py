"""Ed25519 keys and the bundle signature (`manifest.sig`).

A signature covers the exact bytes of `manifest.json`. Those bytes list every other file's size
and sha256, so one signature covers the whole bundle.

Key files are PEM: the private key PKCS8 (unencrypted, file mode 0600), the public key
SubjectPublicKeyInfo. A key id is the first 16 hex digits of the sha256 of the raw 32-byte
public key.

`manifest.sig` is a small JSON document::

    {"algorithm": "ed25519", "public_key": "<base64 raw key>", "signature": "<base64, 64 bytes>"}

The embedded public key lets any reader check that the signature matches the manifest (and name
the signer); trust comes only from comparing that key with the keys a robot is configured with.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from pathlib import Path
from typing import Dict, Iterable, Optional, Union

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edge_sdk.errors import BundleError, SignatureError
from edge_sdk.fileio import atomic_write_bytes

ALGORITHM = "ed25519"
PUBLIC_KEY_SUFFIXES = (".pem", ".pub")
MAX_KEY_FILE_BYTES = 64 * 1024

PathLike = Union[str, "os.PathLike[str]"]


def _raw_public_bytes(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(public_key: Ed25519PublicKey) -> str:
    """First 16 hex digits of the sha256 of the raw 32-byte public key."""
    return hashlib.sha256(_raw_public_bytes(public_key)).hexdigest()[:16]


def _read_key_file(path: Path, kind: str) -> bytes:
    try:
        with open(str(path), "rb") as f:
            data = f.read(MAX_KEY_FILE_BYTES + 1)
    except FileNotFoundError:
        raise BundleError("{} key file {} does not exist".format(kind, path)) from None
    except IsADirectoryError:
        raise BundleError("{} key file {} is a folder".format(kind, path)) from None
    if len(data) > MAX_KEY_FILE_BYTES:
        raise BundleError("{} key file {} is too large to be a key".format(kind, path))
    return data


def load_private_key(path: PathLike) -> Ed25519PrivateKey:
    """Read an unencrypted PKCS8 PEM Ed25519 private key."""
    path = Path(path)
    data = _read_key_file(path, "private")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise BundleError("private key file {} is not an unencrypted PEM private key ({})".format(path, exc)) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise BundleError("private key file {} holds a {} key, not Ed25519".format(path, type(key).__name__))
    return key


def load_public_key(path: PathLike) -> Ed25519PublicKey:
    """Read a PEM Ed25519 public key."""
    path = Path(path)
    data = _read_key_file(path, "public")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise SignatureError("trusted key file {} is not a PEM public key".format(path)) from None
    if not isinstance(key, Ed25519PublicKey):
        raise SignatureError("trusted key file {} holds a {} key, not Ed25519".format(path, type(key).__name__))
    return key


def load_trusted_keys(paths: Union[PathLike, Iterable[PathLike]]) -> Dict[str, Ed25519PublicKey]:
    """Public keys by key id, from key files and/or folders (every *.pem and *.pub inside).

    An empty result is allowed: it means no bundle is trusted.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    keys = {}  # type: Dict[str, Ed25519PublicKey]
    for entry in paths:
        entry = Path(entry)
        if entry.is_dir():
            candidates = sorted(p for p in entry.iterdir() if p.suffix in PUBLIC_KEY_SUFFIXES and p.is_file())
        else:
            candidates = [entry]
        for candidate in candidates:
            public_key = load_public_key(candidate)
            keys[key_id(public_key)] = public_key
    return keys


def _publish_new(path: Path, data: bytes, mode: int) -> None:
    """Write `data` to a new file `path` atomically, with exactly `mode`; refuse an existing file."""
    try:
        atomic_write_bytes(path, data, mode=mode, overwrite=False)
    except FileExistsError:
        raise BundleError("{} already exists; refusing to overwrite it".format(path)) from None


def generate_keypair(private_path: PathLike, public_path: PathLike) -> str:
    """Write a new Ed25519 key pair (private PEM mode 0600, public PEM); return its key id.

    Refuses to overwrite either file.
    """
    private_path, public_path = Path(private_path), Path(public_path)
    if private_path.resolve() == public_path.resolve():
        raise BundleError("private and public key paths are the same file: {}".format(private_path))
    for path in (private_path, public_path):
        if path.exists():
            raise BundleError("{} already exists; refusing to overwrite it".format(path))
        if not path.parent.is_dir():
            raise BundleError("folder {} does not exist".format(path.parent))
    private_key = Ed25519PrivateKey.generate()
    private_pem = private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    _publish_new(private_path, private_pem, 0o600)
    try:
        _publish_new(public_path, public_pem, 0o644)
    except BaseException:
        os.unlink(str(private_path))
        raise
    return key_id(private_key.public_key())


def sign_manifest(manifest_bytes: bytes, private_key: Ed25519PrivateKey) -> bytes:
    """The `manifest.sig` document for these exact manifest bytes."""
    doc = {
        "algorithm": ALGORITHM,
        "public_key": base64.b64encode(_raw_public_bytes(private_key.public_key())).decode("ascii"),
        "signature": base64.b64encode(private_key.sign(manifest_bytes)).decode("ascii"),
    }
    return (json.dumps(doc, sort_keys=True, indent=2) + "\n").encode("ascii")


def _b64(doc: dict, key: str, length: int) -> bytes:
    value = doc.get(key)
    if not isinstance(value, str):
        raise SignatureError("manifest.sig field {} is missing or not a string".format(key))
    try:
        raw = base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise SignatureError("manifest.sig field {} is not base64".format(key)) from None
    if len(raw) != length:
        raise SignatureError("manifest.sig field {} has {} bytes, expected {}".format(key, len(raw), length))
    return raw


def check_signature(
    manifest_bytes: bytes, signature_doc: bytes, trusted: Optional[Dict[str, Ed25519PublicKey]] = None
) -> str:
    """Check `manifest.sig` against the manifest bytes; return the signer's key id.

    The signature must always match the public key it names. With `trusted` (key id -> key),
    that key must also be one of them. Raises SignatureError.
    """
    try:
        doc = json.loads(signature_doc.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise SignatureError("manifest.sig is not valid JSON") from None
    if (
        not isinstance(doc, dict)
        or doc.get("algorithm") != ALGORITHM
        or set(doc) != {"algorithm", "public_key", "signature"}
    ):
        raise SignatureError("manifest.sig is not an {} signature document".format(ALGORITHM))
    public_key = Ed25519PublicKey.from_public_bytes(_b64(doc, "public_key", 32))
    signature = _b64(doc, "signature", 64)
    signer = key_id(public_key)
    if trusted is not None:
        trusted_key = trusted.get(signer)
        if trusted_key is None or _raw_public_bytes(trusted_key) != _raw_public_bytes(public_key):
            known = ", ".join(sorted(trusted)) or "none"
            raise SignatureError("bundle is signed by key {}, which is not trusted (trusted: {})".format(signer, known))
    try:
        public_key.verify(signature, manifest_bytes)
    except InvalidSignature:
        raise SignatureError(
            "manifest.sig does not match manifest.json (signer {}): the bundle was altered".format(signer)
        ) from None
    return signer
