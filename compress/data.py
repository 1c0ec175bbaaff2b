"""The data a compress run trains and measures on: the recipe's dataset folder, or synthetic data made once
in WORKDIR/data, and the sha256 that stage keys and bundle provenance carry."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Optional

from compress.config import Recipe
from edge_sdk.errors import DataError

DATA_STAMP = "synthetic.json"


def prepare_data(recipe: Recipe, workdir: Path, data_dir: Optional[Path] = None, progress: bool = True) -> Path:
    """The folder holding the recipe's train/val COCO files: `data_dir` if given, the synthetic data
    (made once per (images, seed, size) in workdir/data), or data.path (relative to the recipe file)."""
    if data_dir is not None:
        path = Path(data_dir)
        if not path.is_dir():
            raise DataError("--data: no such folder {}".format(path))
        return path
    if recipe.data.path != "synthetic":
        path = Path(recipe.data.path).expanduser()
        if not path.is_absolute() and recipe.source:
            path = Path(recipe.source).parent / path
        if not path.is_dir():
            raise DataError("data.path: no such folder {}".format(path))
        return path
    from edge_sdk.data.synth import GENERATOR_VERSION, synthesize

    out = Path(workdir) / "data"
    wanted = {
        "images": recipe.data.images,
        "seed": recipe.data.seed,
        "size": list(recipe.data.size),
        "generator": GENERATOR_VERSION,
    }
    stamp = out / DATA_STAMP
    train_json, val_json = out / recipe.data.train, out / recipe.data.val
    try:
        current = json.loads(stamp.read_text()) if stamp.is_file() else None
    except ValueError:
        current = None
    if current != wanted or not train_json.is_file() or not val_json.is_file():
        made_train, made_val = synthesize(
            out, recipe.data.images, recipe.data.seed, tuple(recipe.data.size), progress=progress
        )
        if (made_train.name, made_val.name) != (recipe.data.train, recipe.data.val):
            raise DataError(
                "synthetic data is written as {} / {}: set data.train / data.val to those".format(
                    made_train.name, made_val.name
                )
            )
        stamp.write_text(json.dumps(wanted))
    return out


def wait_for_data(recipe: Recipe, workdir: Path, data_dir: Optional[Path], timeout_s: float = 3600.0) -> Path:
    """Ranks > 0 wait for rank 0 to prepare the data (synthetic data is written once)."""
    if data_dir is not None or recipe.data.path != "synthetic":
        return prepare_data(recipe, workdir, data_dir, progress=False)
    stamp = Path(workdir) / "data" / DATA_STAMP
    deadline = time.time() + timeout_s
    while not stamp.is_file():
        if time.time() > deadline:
            raise DataError("timed out waiting for rank 0 to write {}".format(stamp))
        time.sleep(1.0)
    return stamp.parent


def data_sha256(recipe: Recipe, data_dir: Path) -> str:
    """sha256 over the bytes of the recipe's train then val annotation files in `data_dir` (one digest of
    both, not a digest per file)."""
    digest = hashlib.sha256()
    for path in (Path(data_dir) / recipe.data.train, Path(data_dir) / recipe.data.val):
        digest.update(path.read_bytes())
    return digest.hexdigest()
