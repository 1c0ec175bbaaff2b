"""An installed bundle version, read from the store: usable wherever an opened `Bundle` is."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict

from device.store import BUNDLE_FILE, DEFAULT_ROOT, FILES, INSTALL_INFO, Store
from edge_sdk.errors import BundleError, InstallError
from edge_sdk.fileio import file_sha256


class InstalledBundle:
    """An installed version: `ModelFiles`, usable wherever an opened `edge_sdk.bundle.Bundle` is (e.g. Detector).

    root: the folder of its extracted files; path: its stored .edgebundle file.
    """

    def __init__(self, folder: Path) -> None:
        from edge_sdk.manifest import Manifest

        info = _read_required(folder / INSTALL_INFO)
        self.folder = folder
        self.dirname = folder.name
        self.path = folder / BUNDLE_FILE
        self.root = folder / FILES
        self.sha256 = info["sha256"]  # type: str
        self.signed = bool(info.get("signed"))
        self.signer_key_id = info.get("signer_key_id")  # type: Optional[str]
        self.info = info
        try:
            self.manifest = Manifest.from_bytes((self.root / "manifest.json").read_bytes())
        except OSError as exc:
            raise InstallError("installed version {} is damaged: {}".format(folder.name, exc)) from None

    def path_of(self, arcname: str) -> Path:
        if self.manifest.file(arcname) is None:
            raise BundleError("bundle {} has no file {!r}".format(self.dirname, arcname))
        return self.root.joinpath(*arcname.split("/"))

    def verify(self) -> None:
        """Check the stored bundle file's sha256 and every extracted file's sha256 (IntegrityError)."""
        from edge_sdk.errors import IntegrityError

        if file_sha256(self.path) != self.sha256:
            raise IntegrityError(
                "installed version {}: stored bundle file does not match its sha256".format(self.dirname)
            )
        for entry in self.manifest.files:
            path = self.root.joinpath(*entry.path.split("/"))
            if not path.is_file() or file_sha256(path) != entry.sha256:
                raise IntegrityError(
                    "installed version {}: file {} is missing or altered".format(self.dirname, entry.path)
                )

    def close(self) -> None:
        """Nothing to release (kept for symmetry with Bundle)."""


def _read_required(path: Path) -> Dict[str, Any]:
    from device.store import read_json

    doc = read_json(path)
    if doc is None:
        raise InstallError("{} is missing or unreadable".format(path))
    return doc


def active_bundle(root: Any = DEFAULT_ROOT) -> InstalledBundle:
    """The active version (after recovery), for `edge-sdk run`. Raises InstallError if none."""
    from device.store import recover

    recover(root)
    store = Store(root)
    active = store.pointer("active")
    if active is None:
        raise InstallError("no bundle is installed in {} (use `edge-sdk install FILE`)".format(store.root))
    return InstalledBundle(store.version_dir(active))
