"""COCO reader: a hand-written round trip, and one DataError per kind of bad entry."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

from edge_sdk.data import load_coco, load_dataset
from edge_sdk.errors import DataError

DOCUMENT = {
    "images": [
        {"id": 10, "file_name": "a.png", "width": 64, "height": 48},
        {"id": 11, "file_name": "b.png", "width": 64, "height": 48},
        {"id": 12, "file_name": "c.png", "width": 32, "height": 32},
    ],
    "annotations": [
        {"id": 1, "image_id": 10, "category_id": 7, "bbox": [1, 2, 10, 20], "area": 150.0, "iscrowd": 0},
        {"id": 2, "image_id": 10, "category_id": 3, "bbox": [5.5, 6, 4, 2], "iscrowd": 1},
        {"id": 3, "image_id": 12, "category_id": 7, "bbox": [0, 0, 32, 32], "area": 1024, "iscrowd": 0},
    ],
    "categories": [{"id": 7, "name": "spur"}, {"id": 3, "name": "short"}],
}


def _write(folder: Path, document: object, name: str = "val.json", images_in: str = "images") -> Path:
    image_dir = folder / images_in if images_in else folder
    image_dir.mkdir(parents=True, exist_ok=True)
    for file_name in ("a.png", "b.png", "c.png"):
        (image_dir / file_name).write_bytes(b"not decoded by the reader")
    path = folder / name
    path.write_text(json.dumps(document) if not isinstance(document, str) else document)
    return path


@pytest.mark.parametrize("images_in", ["images", ""])
def test_round_trip(tmp_path: Path, images_in: str) -> None:
    dataset = load_coco(_write(tmp_path, DOCUMENT, images_in=images_in))
    assert dataset.classes == ("short", "spur")  # category-id order: 3, 7
    assert [r.image_id for r in dataset.images] == [10, 11, 12]
    first, second, third = dataset.images
    assert first.path == (tmp_path / images_in / "a.png").resolve()
    assert (first.width, first.height) == (64, 48)
    np.testing.assert_allclose(first.boxes, [[1, 2, 11, 22], [5.5, 6, 9.5, 8]])
    assert first.boxes.dtype == np.float32 and first.class_ids.dtype == np.int32
    assert first.class_ids.tolist() == [1, 0]
    assert first.iscrowd.tolist() == [False, True]
    np.testing.assert_allclose(first.areas, [150.0, 8.0])  # given area, else w * h
    assert second.boxes.shape == (0, 4) and len(second.class_ids) == 0  # kept without annotations
    assert third.class_ids.tolist() == [1]
    assert load_dataset(tmp_path / "val.json").images[0].boxes.tolist() == first.boxes.tolist()


def test_file_without_annotations_key_is_an_unlabelled_set(tmp_path: Path) -> None:
    document = {k: v for k, v in DOCUMENT.items() if k != "annotations"}
    dataset = load_coco(_write(tmp_path, document))
    assert len(dataset) == 3 and all(len(r.boxes) == 0 for r in dataset.images)


def _broken(change) -> dict:
    document = copy.deepcopy(DOCUMENT)
    change(document)
    return document


CASES = [
    (
        lambda d: d["annotations"][2]["bbox"].__setitem__(2, -3),
        r"val\.json: annotations\[2\] \(id 3\): bbox \[0, 0, -3, 32\] has negative width",
    ),
    (
        lambda d: d["annotations"][1]["bbox"].__setitem__(3, -1),
        r"val\.json: annotations\[1\] \(id 2\): bbox \[5\.5, 6, 4, -1\] has negative height",
    ),
    (lambda d: d["annotations"][1]["bbox"].__setitem__(2, 0), r"annotations\[1\] \(id 2\): bbox .* has zero area"),
    (lambda d: d["annotations"][0]["bbox"].__setitem__(3, 0.0), r"annotations\[0\] \(id 1\): bbox .* has zero area"),
    (
        lambda d: d["annotations"][0]["bbox"].__setitem__(0, 1e39),
        r"annotations\[0\] \(id 1\): bbox \[1e\+39, 2, 10, 20\] is outside the 64 x 48 image \(left edge at 1e\+39\)",
    ),
    (
        lambda d: d["annotations"][0].__setitem__("bbox", [1e308, 1e308, 1e308, 1e308]),
        r"annotations\[0\] \(id 1\): bbox .* is outside the 64 x 48 image",
    ),
    (
        lambda d: d["annotations"][0].__setitem__("bbox", [60, 2, 10, 20]),
        r"annotations\[0\] \(id 1\): bbox \[60, 2, 10, 20\] is outside the 64 x 48 image \(right edge at 70\)",
    ),
    (
        lambda d: d["annotations"][2].__setitem__("bbox", [-40, -40, 10, 10]),
        r"annotations\[2\] \(id 3\): bbox .* is outside the 32 x 32 image \(left edge at -40\)",
    ),
    (
        lambda d: d["annotations"][0].__setitem__("area", 1e39),
        r"annotations\[0\] \(id 1\): area must be a number in 0\.\.3072",
    ),
    (
        lambda d: d["images"][0].__setitem__("file_name", "../../../../etc/passwd"),
        r"images\[0\]: 'file_name' '\.\./\.\./\.\./\.\./etc/passwd' has a '\.\.' part: image files must be inside the dataset",
    ),
    (
        lambda d: d["images"][0].__setitem__("file_name", "images/../../a.png"),
        r"images\[0\]: 'file_name' 'images/\.\./\.\./a\.png' has a '\.\.' part",
    ),
    (
        lambda d: d["images"][0].__setitem__("file_name", "/etc/passwd"),
        r"images\[0\]: 'file_name' '/etc/passwd' is an absolute path",
    ),
    (
        lambda d: d["images"][0].__setitem__("width", 10**40),
        r"images\[0\]: width and height must be whole numbers of pixels in 1\.\.65535, got 10{40} x 48",
    ),
    (
        lambda d: d["annotations"][1].__setitem__("bbox", [1, 2, 3]),
        r"annotations\[1\] \(id 2\): bbox must be a list of 4",
    ),
    (
        lambda d: d["annotations"][0].__setitem__("category_id", 99),
        r"annotations\[0\] \(id 1\): unknown category id 99",
    ),
    (lambda d: d["annotations"][2].__setitem__("image_id", 5), r"annotations\[2\] \(id 3\): unknown image_id 5"),
    (lambda d: d["annotations"][0].__setitem__("iscrowd", 2), r"annotations\[0\] \(id 1\): iscrowd must be 0 or 1"),
    (
        lambda d: d["images"][1].__setitem__("file_name", "missing.png"),
        r"images\[1\]: image file 'missing\.png' not found",
    ),
    (lambda d: d["images"][2].__setitem__("id", 10), r"images\[2\]: duplicate image id 10"),
    (lambda d: d["images"][0].pop("width"), r"images\[0\]: width and height must be whole numbers of pixels"),
    (lambda d: d["categories"][1].__setitem__("id", 7), r"categories\[1\]: duplicate category id 7"),
    (lambda d: d["categories"][0].pop("name"), r"categories\[0\]: 'name' must be a non-empty string"),
    (lambda d: d.pop("categories"), r"val\.json: no 'categories' list"),
    (lambda d: d.__setitem__("images", {}), r"val\.json: 'images' must be a list"),
]


@pytest.mark.parametrize("change, message", CASES)
def test_bad_entry_names_file_and_entry(tmp_path: Path, change, message: str) -> None:
    path = _write(tmp_path, _broken(change))
    with pytest.raises(DataError, match=message) as info:
        load_coco(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_malformed_json(tmp_path: Path) -> None:
    path = _write(tmp_path, '{"images": [', name="train.json")
    with pytest.raises(DataError, match=r"train\.json: not valid JSON: .*line 1"):
        load_coco(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        load_coco(tmp_path / "nope.json")


def test_load_dataset_picks_by_path(tmp_path: Path) -> None:
    _write(tmp_path, DOCUMENT, name="train.json")
    _write(tmp_path, DOCUMENT, name="val.json")
    with pytest.raises(DataError, match=r"pass one of them: .*train\.json, .*val\.json"):
        load_dataset(tmp_path)
    with pytest.raises(DataError, match="no such file or folder"):
        load_dataset(tmp_path / "absent")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="not a dataset"):
        load_dataset(tmp_path / "notes.txt")


def test_file_name_outside_the_dataset_folder_is_refused_even_when_it_exists(tmp_path: Path) -> None:
    dataset_folder = tmp_path / "set"
    (tmp_path / "secret.png").write_bytes(b"outside the dataset")
    document = _broken(lambda d: d["images"][0].__setitem__("file_name", "../secret.png"))
    path = _write(dataset_folder, document, images_in="")
    with pytest.raises(DataError, match=r"images\[0\]: 'file_name' '\.\./secret\.png' has a '\.\.' part"):
        load_coco(path)
