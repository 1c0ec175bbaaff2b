"""Pick the reader for a dataset path: a COCO JSON file or a Pascal VOC folder."""

from __future__ import annotations

from pathlib import Path
from typing import Union

from edge_sdk.data.coco import load_coco
from edge_sdk.data.dataset import Dataset
from edge_sdk.data.voc import load_voc
from edge_sdk.errors import DataError


def load_dataset(path: Union[str, Path]) -> Dataset:
    """Read `path` as COCO (a .json file) or Pascal VOC (a folder with Annotations/ or *.xml files)."""
    target = Path(path)
    if target.is_file():
        if target.suffix.lower() == ".json":
            return load_coco(target)
        raise DataError("{}: not a dataset (expected a COCO .json file or a VOC folder)".format(path))
    if not target.is_dir():
        raise DataError("{}: no such file or folder".format(path))
    if (target / "Annotations").is_dir() or any(target.glob("*.xml")):
        return load_voc(target)
    json_files = sorted(p for p in target.glob("*.json") if p.is_file())
    if json_files:
        choices = ", ".join(str(Path(path) / p.name) for p in json_files)
        raise DataError("{} holds COCO files; pass one of them: {}".format(path, choices))
    raise DataError("{}: no COCO .json file or VOC annotations (Annotations/ or *.xml) found".format(path))
