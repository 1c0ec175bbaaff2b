"""The procedural PCB-defect generator: determinism, COCO validity, class balance, box geometry."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edge_sdk.data import CLASSES, load_coco, render_board, stats, synthesize
from edge_sdk.data.synth import image_rng
from edge_sdk.errors import DataError


def _tree_bytes(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def dataset_200(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth200")
    synthesize(out, 200, seed=1, progress=False)
    return out


def test_same_seed_gives_identical_bytes_serial_and_parallel(tmp_path: Path) -> None:
    synthesize(tmp_path / "a", 12, seed=7, progress=False, workers=1)
    synthesize(tmp_path / "b", 12, seed=7, progress=False, workers=2)
    first, second = _tree_bytes(tmp_path / "a"), _tree_bytes(tmp_path / "b")
    assert sorted(first) == sorted(second)
    assert "train.json" in first and "val.json" in first and len(first) == 14
    assert first == second


def test_different_seed_gives_different_images(tmp_path: Path) -> None:
    synthesize(tmp_path / "a", 4, seed=7, progress=False, val_fraction=0.25)
    synthesize(tmp_path / "b", 4, seed=8, progress=False, val_fraction=0.25)
    for name in ("000000.png", "000003.png"):
        assert (tmp_path / "a" / "images" / name).read_bytes() != (tmp_path / "b" / "images" / name).read_bytes()
    assert (tmp_path / "a" / "train.json").read_bytes() != (tmp_path / "b" / "train.json").read_bytes()


def test_pycocotools_loads_the_output_and_counts_match(dataset_200: Path) -> None:
    from pycocotools.coco import COCO

    total_images = 0
    for name, expected_images in (("train.json", 160), ("val.json", 40)):
        coco = COCO(str(dataset_200 / name))
        dataset = load_coco(dataset_200 / name)
        assert len(coco.getImgIds()) == len(dataset) == expected_images
        assert len(coco.getAnnIds()) == sum(len(r.boxes) for r in dataset.images)
        assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(CLASSES)
        for record in dataset.images[:10]:
            annotations = coco.loadAnns(coco.getAnnIds(imgIds=[record.image_id]))
            xywh = np.array([a["bbox"] for a in annotations], np.float32).reshape(-1, 4)
            np.testing.assert_allclose(record.boxes[:, :2], xywh[:, :2], atol=1e-3)
            np.testing.assert_allclose(record.boxes[:, 2:], xywh[:, :2] + xywh[:, 2:], atol=1e-3)
            assert record.path.is_file()
        total_images += len(dataset)
    assert total_images == 200
    # train and val are disjoint
    train = {img["file_name"] for img in json.loads((dataset_200 / "train.json").read_text())["images"]}
    val = {img["file_name"] for img in json.loads((dataset_200 / "val.json").read_text())["images"]}
    assert not train & val and len(train | val) == 200


def test_every_class_is_well_represented_and_boxes_are_inside(dataset_200: Path) -> None:
    counts = np.zeros(len(CLASSES), int)
    for name in ("train.json", "val.json"):
        dataset = load_coco(dataset_200 / name)
        summary = stats(dataset)
        counts += np.array([summary["boxes_per_class"][c] for c in CLASSES])
        for record in dataset.images:
            assert 1 <= len(record.boxes) <= 4
            assert len(set(record.class_ids.tolist())) == len(record.class_ids)
            boxes = record.boxes
            assert np.all(boxes[:, 0] >= 0) and np.all(boxes[:, 1] >= 0)
            assert np.all(boxes[:, 2] <= record.width) and np.all(boxes[:, 3] <= record.height)
            sides = boxes[:, 2:] - boxes[:, :2]
            assert np.all(sides >= 14.0 - 1e-3) and np.all(sides <= 48.0)
    # 200 images x 2.5 defects on average = about 83 per class; balanced sampling keeps each near that
    assert counts.min() >= 0.6 * counts.mean(), counts


def test_images_match_the_declared_size(dataset_200: Path) -> None:
    import cv2

    dataset = load_coco(dataset_200 / "val.json")
    image = cv2.imread(str(dataset.images[0].path), cv2.IMREAD_UNCHANGED)
    assert image.shape == (256, 256, 3) and image.dtype == np.uint8


def test_render_board_types_and_a_non_square_size() -> None:
    image, boxes, class_ids = render_board(image_rng(3, 0), (320, 192))
    assert image.shape == (192, 320, 3) and image.dtype == np.uint8
    assert boxes.dtype == np.float32 and boxes.shape == (len(class_ids), 4)
    assert class_ids.dtype == np.int32 and len(class_ids) >= 1
    assert np.all(boxes[:, 2] <= 320) and np.all(boxes[:, 3] <= 192) and np.all(boxes >= 0)
    again = render_board(image_rng(3, 0), (320, 192))
    assert np.array_equal(image, again[0]) and np.array_equal(boxes, again[1])


def test_render_board_draws_the_requested_classes() -> None:
    for class_id in range(len(CLASSES)):
        _, _, class_ids = render_board(np.random.default_rng(class_id), classes=[class_id])
        assert class_ids.tolist() == [class_id]


def test_a_defect_changes_the_pixels_inside_its_box() -> None:
    # same layout with and without the defect: the difference lies inside the defect's box
    for class_id in range(len(CLASSES)):
        clean, _, _ = render_board(np.random.default_rng(100 + class_id), classes=[])
        defect, boxes, class_ids = render_board(np.random.default_rng(100 + class_id), classes=[class_id])
        assert class_ids.tolist() == [class_id]
        diff = np.abs(clean.astype(int) - defect.astype(int)).max(axis=2)
        x1, y1, x2, y2 = boxes[0]
        inside = diff[int(y1) : int(np.ceil(y2)), int(x1) : int(np.ceil(x2))]
        outside = diff.copy()
        outside[max(0, int(y1) - 5) : int(np.ceil(y2)) + 5, max(0, int(x1) - 5) : int(np.ceil(x2)) + 5] = 0
        assert inside.max() > 30, CLASSES[class_id]
        assert outside.max() == 0, CLASSES[class_id]


def test_bad_arguments_raise_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="size"):
        synthesize(tmp_path, 2, seed=0, size=(16, 16), progress=False)
    with pytest.raises(DataError, match="images"):
        synthesize(tmp_path, 0, seed=0, progress=False)
    with pytest.raises(DataError, match="seed"):
        synthesize(tmp_path, 2, seed=-1, progress=False)
    with pytest.raises(DataError, match="at least 2"):
        synthesize(tmp_path, 1, seed=0, progress=False)


def test_rerun_removes_old_json_before_writing_images(tmp_path: Path) -> None:
    (tmp_path / "val.json").write_text("stale")
    calls = []
    synthesize(tmp_path, 3, seed=0, progress=lambda done, total: calls.append((done, total)), val_fraction=0.0)
    assert calls == [(1, 3), (2, 3), (3, 3)]
    assert json.loads((tmp_path / "val.json").read_text())["images"] == []
    assert len(json.loads((tmp_path / "train.json").read_text())["images"]) == 3
    assert not [p for p in tmp_path.rglob(".*tmp*")]
