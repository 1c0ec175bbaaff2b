"""The stage cache: each finished stage's record in WORKDIR/<stage>/done.json, written last and atomically.

A record holds the stage key (compress.stages.stage_key), the sha256 of the stage's output files, its
measured StageMetrics and a few facts; a record whose files are gone reads as missing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional

from edge_sdk.fileio import atomic_write_text, file_sha256, fsync_dir
from edge_sdk.manifest import StageMetrics

DONE_FILE = "done.json"


@dataclass
class StageRecord:
    """A finished stage, as stored in WORKDIR/<stage>/done.json.

    files: role -> file name inside the stage folder ("checkpoint", "bundle"); output_sha256: over
    those files; metrics: StageMetrics.to-dict; info: stage facts; reused: True when read from disk.
    """

    stage: str
    key: str
    output_sha256: str
    files: Dict[str, str]
    metrics: Dict[str, Any]
    info: Dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    reused: bool = False

    def path(self, workdir: Path, role: str) -> Path:
        return Path(workdir) / self.stage / self.files[role]

    def stage_metrics(self) -> StageMetrics:
        return StageMetrics(**self.metrics)


class StageStore:
    """Done-records under WORKDIR/<stage>/done.json."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = Path(workdir)

    def folder(self, stage: str) -> Path:
        path = self.workdir / stage
        path.mkdir(parents=True, exist_ok=True)
        return path

    def invalidate(self, stage: str) -> None:
        """Remove the stage's done-record before it is recomputed: a run that fails half-way must not leave
        an old record describing files it has already overwritten."""
        path = self.workdir / stage / DONE_FILE
        if path.exists():
            path.unlink()
            fsync_dir(path.parent)

    def read(self, stage: str) -> Optional[StageRecord]:
        """The stage's record when it exists and all its files are still there, else None."""
        path = self.workdir / stage / DONE_FILE
        try:
            data = json.loads(path.read_text())
            record = StageRecord(**{k: v for k, v in data.items() if k != "reused"})
        except (OSError, ValueError, TypeError):
            return None
        if not all((self.workdir / stage / name).is_file() for name in record.files.values()):
            return None
        record.reused = True
        return record

    def write(
        self, stage: str, key: str, files: Dict[str, str], metrics: StageMetrics, info: Dict[str, Any], seconds: float
    ) -> StageRecord:
        folder = self.folder(stage)
        digest = hashlib.sha256()
        for role in sorted(files):
            digest.update(role.encode("utf-8"))
            digest.update(file_sha256(folder / files[role]).encode("ascii"))
        record = StageRecord(
            stage, key, digest.hexdigest(), dict(files), dataclasses.asdict(metrics), dict(info), round(seconds, 2)
        )
        data = dataclasses.asdict(record)
        data.pop("reused")
        atomic_write_text(folder / DONE_FILE, json.dumps(data, indent=1, sort_keys=True))
        return record
