"""`ModelFiles`: what the runtime needs of a model's files, whatever holds them.

An opened bundle (`edge_sdk.bundle.Bundle`), an installed version (`device.installed.InstalledBundle`)
and a bare model folder (`device.evaluate.ModelFolder`) all are `ModelFiles`: the manifest, the
location of each file it lists, and the bundle's sha256 when there is a bundle file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Protocol

from edge_sdk.manifest import Manifest


class ModelFiles(Protocol):
    """manifest: the model's manifest. sha256: hex sha256 of the bundle file (None: no bundle file,
    e.g. a model folder). path_of(arcname): where the file the manifest lists as `arcname`
    ("model/model.pdmodel") is on disk. close(): release what opening them took (a staging folder)."""

    @property
    def manifest(self) -> Manifest: ...

    @property
    def sha256(self) -> Optional[str]: ...

    def path_of(self, arcname: str) -> Path: ...

    def close(self) -> None: ...
