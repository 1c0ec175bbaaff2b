"""edge_sdk.metrics agrees with pycocotools' COCOeval (bbox) on randomized data and on edge cases."""

from __future__ import annotations

import contextlib
import copy
import io
import json
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np
import pytest

from edge_sdk.data.dataset import Dataset, ImageRecord
from edge_sdk.detections import Detections
from edge_sdk.errors import DataError
from edge_sdk.metrics import EvalResult, evaluate, evaluate_coco

pycocotools = pytest.importorskip("pycocotools")
from pycocotools.coco import COCO  # noqa: E402
from pycocotools.cocoeval import COCOeval  # noqa: E402

CATEGORY_IDS = (1, 3, 7, 8, 12)  # not contiguous; 12 never has ground truth
NO_GT_CATEGORY = 12
TOLERANCE = 1e-4


def random_coco(seed: int, num_images: int = 40, tied_scores: bool = False) -> Tuple[Dict[str, Any], List[Dict]]:
    """A COCO ground truth and a results list that exercise every rule of COCOeval.

    Boxes are multiples of 1/16 px so xywh <-> xyxy and float32 <-> float64 round-trip exactly.
    Sizes span small, medium and large; about 10% of boxes are crowd; GT `area` is smaller than the
    box (like a mask); some images have no GT; category 12 has detections but no GT; detections are
    jittered GT, duplicates, misses, false positives, and on one image more than 100 of one class.
    Some GT areas sit exactly on an area-range limit.
    """
    rng = np.random.default_rng(seed)
    image_ids = rng.choice(np.arange(1, 10 * num_images), size=num_images, replace=False)
    images = [{"id": int(i), "file_name": "{}.jpg".format(i), "width": 640, "height": 480} for i in image_ids]
    categories = [{"id": c, "name": "class_{}".format(c)} for c in reversed(CATEGORY_IDS)]
    annotations: List[Dict] = []
    results: List[Dict] = []

    def quantize(v: np.ndarray) -> np.ndarray:
        return np.round(np.asarray(v, np.float64) * 16) / 16

    def random_box() -> np.ndarray:
        side = np.exp(rng.uniform(np.log(4), np.log(300), size=2))
        xy = rng.uniform(0, [640 - side[0], 480 - side[1]])
        return quantize(np.concatenate([xy, side]))

    def score() -> float:
        s = rng.uniform(0.01, 1.0)
        return float(np.round(s, 1)) if tied_scores else float(np.float32(s))

    for image_number, image_id in enumerate(image_ids.tolist()):
        gt_count = 0 if rng.random() < 0.2 else int(rng.integers(1, 12))
        for _ in range(gt_count):
            category = int(rng.choice(CATEGORY_IDS[:-1]))
            box = random_box()
            crowd = int(rng.random() < 0.1)
            area = float(quantize(box[2] * box[3] * rng.uniform(0.6, 1.0)))
            if rng.random() < 0.1:
                area = float(rng.choice([32.0**2, 96.0**2]))  # on an area-range limit (inclusive on both sides)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category,
                    "bbox": box.tolist(),
                    "area": area,
                    "iscrowd": crowd,
                }
            )
            copies = 0 if rng.random() < 0.2 else (2 if rng.random() < 0.15 else 1)
            if crowd:
                copies = int(rng.integers(0, 4))
            for _ in range(copies):
                jitter = rng.normal(0, 0.08, size=4) * np.array([box[2], box[3], box[2], box[3]])
                dt = quantize(box + jitter)
                dt[2:] = np.maximum(dt[2:], 1 / 16)
                label = category if rng.random() < 0.9 else int(rng.choice(CATEGORY_IDS))
                results.append({"image_id": image_id, "category_id": label, "bbox": dt.tolist(), "score": score()})
        false_positives = int(rng.integers(0, 8))
        if image_number == 3:
            false_positives = 150
        for _ in range(false_positives):
            category = 1 if image_number == 3 else int(rng.choice(CATEGORY_IDS))
            results.append(
                {"image_id": image_id, "category_id": category, "bbox": random_box().tolist(), "score": score()}
            )
    # Detections of class 1 heaped on image 3's GT so that many of its >100 detections can match.
    for ann in annotations:
        if ann["image_id"] == int(image_ids[3]):
            for _ in range(3):
                results.append({"image_id": ann["image_id"], "category_id": 1, "bbox": ann["bbox"], "score": score()})
    order = rng.permutation(len(results))
    results = [results[i] for i in order]
    return {"images": images, "annotations": annotations, "categories": categories}, results


def run_cocoeval(gt: Dict[str, Any], results: List[Dict]) -> COCOeval:
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(copy.deepcopy(results))
        evaluator = COCOeval(coco_gt, coco_dt, "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator


def as_dataset(gt: Dict[str, Any], results: List[Dict]) -> Tuple[Dataset, List[Detections]]:
    """The same data as a Dataset (xyxy float32, in file order of images) and per-image Detections."""
    cat_ids = sorted(c["id"] for c in gt["categories"])
    names = {c["id"]: c["name"] for c in gt["categories"]}
    class_of = {c: k for k, c in enumerate(cat_ids)}
    records, predictions = [], []
    for img in gt["images"]:
        anns = [a for a in gt["annotations"] if a["image_id"] == img["id"]]
        boxes = np.array([a["bbox"] for a in anns], np.float64).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        records.append(
            ImageRecord(
                path=Path(img["file_name"]),
                image_id=img["id"],
                width=img["width"],
                height=img["height"],
                boxes=boxes.astype(np.float32),
                class_ids=np.array([class_of[a["category_id"]] for a in anns], np.int32),
                iscrowd=np.array([bool(a["iscrowd"]) for a in anns], bool),
                areas=np.array([a["area"] for a in anns], np.float32),
            )
        )
        dets = [r for r in results if r["image_id"] == img["id"]]
        dt_boxes = np.array([r["bbox"] for r in dets], np.float64).reshape(-1, 4)
        dt_boxes[:, 2:] += dt_boxes[:, :2]
        predictions.append(
            Detections(
                boxes=dt_boxes,
                scores=np.array([r["score"] for r in dets], np.float32),
                class_ids=np.array([class_of[r["category_id"]] for r in dets], np.int32),
            )
        )
    return Dataset(classes=tuple(names[c] for c in cat_ids), images=tuple(records)), predictions


def coco_per_class_ap(evaluator: COCOeval, iou_index: Any = slice(None)) -> List[float]:
    """COCOeval's precision averaged per class (area all, maxDets 100); -1 for classes without GT."""
    precision = evaluator.eval["precision"][iou_index, :, :, 0, 2]
    precision = precision.reshape(-1, precision.shape[-1])
    out = []
    for k in range(precision.shape[1]):
        column = precision[:, k]
        out.append(float(column[column > -1].mean()) if (column > -1).any() else -1.0)
    return out


def assert_agrees(result: EvalResult, evaluator: COCOeval) -> None:
    stats = evaluator.stats

    def value(v: Any) -> float:
        return -1.0 if v is None else v

    summary = [result.map, result.map50, result.map75, result.map_small, result.map_medium, result.map_large]
    np.testing.assert_allclose([value(v) for v in summary], stats[:6], atol=TOLERANCE)
    np.testing.assert_allclose(value(result.ar100), stats[8], atol=TOLERANCE)
    np.testing.assert_allclose(result.precision_table, evaluator.eval["precision"], atol=TOLERANCE)
    np.testing.assert_allclose(result.recall_table, evaluator.eval["recall"], atol=TOLERANCE)
    np.testing.assert_allclose([value(c.ap) for c in result.per_class], coco_per_class_ap(evaluator), atol=TOLERANCE)
    np.testing.assert_allclose(
        [value(c.ap50) for c in result.per_class], coco_per_class_ap(evaluator, 0), atol=TOLERANCE
    )


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_agrees_with_pycocotools_on_random_data(seed: int) -> None:
    gt, results = random_coco(seed, tied_scores=seed == 3)
    evaluator = run_cocoeval(gt, results)
    from_json = evaluate_coco(gt, results)
    assert_agrees(from_json, evaluator)
    dataset, predictions = as_dataset(gt, results)
    assert_agrees(evaluate(dataset, predictions), evaluator)
    # The data really covers what it is meant to: every area range, a class without GT, >100 detections.
    assert all(v is not None and 0 < v < 1 for v in (from_json.map_small, from_json.map_medium, from_json.map_large))
    assert from_json.per_class[-1].num_gt == 0 and from_json.per_class[-1].ap is None
    assert any(a["iscrowd"] for a in gt["annotations"])
    assert max(sum(r["image_id"] == img["id"] for r in results) for img in gt["images"]) > 100


def test_reads_json_files(tmp_path: Path) -> None:
    gt, results = random_coco(5, num_images=10)
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "dt.json").write_text(json.dumps(results))
    from_files = evaluate_coco(tmp_path / "gt.json", str(tmp_path / "dt.json"))
    assert_agrees(from_files, run_cocoeval(gt, results))
    assert [c.name for c in from_files.per_class] == ["class_{}".format(c) for c in CATEGORY_IDS]


def test_perfect_detections_score_one() -> None:
    gt, _ = random_coco(6, num_images=15)
    results = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
        for a in gt["annotations"]
        if not a["iscrowd"]
    ]
    result = evaluate_coco(gt, results)
    assert [result.map, result.map50, result.map75] == pytest.approx([1.0, 1.0, 1.0], abs=1e-12)
    assert all(c.ap == pytest.approx(1.0) and c.recall == 1.0 for c in result.per_class if c.num_gt)
    assert_agrees(result, run_cocoeval(gt, results))


def test_no_detections_at_all() -> None:
    gt, _ = random_coco(7, num_images=10)
    result = evaluate_coco(gt, [])
    assert result.map == 0.0 and result.map50 == 0.0 and result.ar100 == 0.0
    assert [c.ap for c in result.per_class] == [0.0, 0.0, 0.0, 0.0, None]
    dataset, predictions = as_dataset(gt, [])
    assert evaluate(dataset, predictions).to_dict() == result.to_dict()


def test_empty_gt_image_false_positives_lower_precision() -> None:
    gt = {
        "images": [{"id": 1}, {"id": 2}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 5, "bbox": [10, 10, 50, 50], "area": 2500, "iscrowd": 0}
        ],
        "categories": [{"id": 5, "name": "defect"}],
    }
    hit = {"image_id": 1, "category_id": 5, "bbox": [10, 10, 50, 50], "score": 0.5}
    only_hit = evaluate_coco(gt, [hit])
    assert only_hit.map == pytest.approx(1.0)  # COCO's precision is tp / (tp + fp + eps)
    false_alarm = {"image_id": 2, "category_id": 5, "bbox": [10, 10, 50, 50], "score": 0.9}
    with_false_alarm = evaluate_coco(gt, [hit, false_alarm])
    assert_agrees(with_false_alarm, run_cocoeval(gt, [hit, false_alarm]))
    assert with_false_alarm.map == pytest.approx(0.5, abs=0.01)


def test_exact_iou_tie_goes_to_the_later_gt() -> None:
    """COCOeval keeps the later of two GT boxes with the same IoU; here that choice changes AP@.75."""
    boxes = [[0, 0, 10, 10], [2, 0, 10, 10]]
    gt = {
        "images": [{"id": 1}],
        "annotations": [
            {"id": i + 1, "image_id": 1, "category_id": 1, "bbox": b, "area": 100, "iscrowd": 0}
            for i, b in enumerate(boxes)
        ],
        "categories": [{"id": 1, "name": "a"}],
    }
    results = [
        {"image_id": 1, "category_id": 1, "bbox": [1, 0, 10, 10], "score": 0.9},  # IoU 9/11 with both
        {"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.8},  # IoU 1 with the first
    ]
    result = evaluate_coco(gt, results)
    assert_agrees(result, run_cocoeval(gt, results))
    # Later GT: both match up to IoU .80, then only the second detection (AP .2525 over recall 0..0.5).
    # Taking the first GT instead would give 0.627.
    assert result.map == pytest.approx((7 + 3 * 51 / 202) / 10)


def test_no_ground_truth_gives_null_not_nan() -> None:
    gt = {"images": [{"id": 1}], "annotations": [], "categories": [{"id": 1, "name": "a"}]}
    result = evaluate_coco(gt, [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 0.3}])
    assert result.map is None and result.per_class[0].ap is None
    text = json.dumps(result.to_dict(), allow_nan=False)
    assert json.loads(text)["mAP"] is None


def test_to_dict_keys_and_ranges() -> None:
    gt, results = random_coco(8, num_images=10)
    d = evaluate_coco(gt, results).to_dict()
    assert {"mAP", "mAP50", "mAP75", "mAP_small", "mAP_medium", "mAP_large", "AR100", "per_class"} <= set(d)
    assert set(d["per_class"][0]) == {"name", "ap", "ap50", "recall", "num_gt"}
    values = [d["mAP"], d["mAP50"]] + [c["ap"] for c in d["per_class"] if c["ap"] is not None]
    assert all(0.0 <= v <= 1.0 for v in values)
    json.dumps(d, allow_nan=False)


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"image_id": 999999, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.5}, "unknown image_id"),
        ({"image_id": None, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.5}, "unknown image_id"),
        ({"image_id": "IMG", "category_id": 99, "bbox": [0, 0, 1, 1], "score": 0.5}, "unknown image_id"),
        ({"category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.5}, "no 'image_id'"),
        ({"image_id": "FIRST", "category_id": 99, "bbox": [0, 0, 1, 1], "score": 0.5}, "unknown category_id 99"),
        ({"image_id": "FIRST", "category_id": 2, "bbox": [0, 0, 1, 1], "score": 0.5}, "unknown category_id"),
        ({"image_id": "FIRST", "category_id": 1, "bbox": [0, 0, 1], "score": 0.5}, "bbox must be 4 numbers"),
        ({"image_id": "FIRST", "category_id": 1, "bbox": [0, 0, 1, "2"], "score": 0.5}, "bbox must be 4 numbers"),
        ({"image_id": "FIRST", "category_id": 1, "bbox": [0, 0, -1, 2], "score": 0.5}, "width and height"),
        ({"image_id": "FIRST", "category_id": 1, "bbox": [0, 0, 1e308, 1e308], "score": 0.5}, "overflows"),
        ({"image_id": "FIRST", "category_id": 1, "bbox": [1e308, 0, 1e308, 2], "score": 0.5}, "overflows"),
        ({"image_id": "FIRST", "category_id": 1, "bbox": [0, 0, 1, 2], "score": "high"}, "score must be a number"),
        ({"image_id": "FIRST", "category_id": 1, "bbox": [0, 0, 1, 2], "score": float("nan")}, "score must be"),
        ("not a dict", "is not an object"),
    ],
)
def test_bad_results_are_refused_with_one_line(bad: Any, message: str) -> None:
    gt, results = random_coco(9, num_images=5)
    if isinstance(bad, dict) and bad.get("image_id") == "FIRST":
        bad = dict(bad, image_id=gt["images"][0]["id"])
    with pytest.raises(DataError, match=message) as info:
        evaluate_coco(gt, results[:3] + [bad] + results[3:])
    assert "results[3]" in str(info.value) and "\n" not in str(info.value)


def test_bad_files_are_refused(tmp_path: Path) -> None:
    gt, results = random_coco(10, num_images=5)
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "broken.json").write_text('[{"image_id": 1,')
    with pytest.raises(DataError, match="cannot read results file"):
        evaluate_coco(tmp_path / "gt.json", tmp_path / "missing.json")
    with pytest.raises(DataError, match="not valid JSON"):
        evaluate_coco(tmp_path / "gt.json", tmp_path / "broken.json")
    with pytest.raises(DataError, match="must be a JSON list"):
        evaluate_coco(tmp_path / "gt.json", tmp_path / "gt.json")
    with pytest.raises(DataError, match="unknown category_id"):
        evaluate_coco(dict(gt, annotations=[dict(gt["annotations"][0], category_id=4)]), [])


def test_evaluate_checks_predictions_match_the_dataset() -> None:
    gt, results = random_coco(11, num_images=4)
    dataset, predictions = as_dataset(gt, results)
    with pytest.raises(ValueError, match="predictions for 4 images"):
        evaluate(dataset, predictions[:3])
    too_high = Detections(boxes=[[0, 0, 5, 5]], scores=[0.5], class_ids=[len(dataset.classes)])
    with pytest.raises(DataError, match="class id"):
        evaluate(dataset, [too_high] + predictions[1:])


@pytest.mark.parametrize(
    "bbox, message",
    [
        ([1e308, 1e308, 1e308, 1e308], r"annotations\[0\] \(id 1\): bbox .* is outside the 640 x 480 image"),
        (
            [1, 1, 1e39, 10],
            r"annotations\[0\] \(id 1\): bbox .* is outside the 640 x 480 image \(right edge at 1e\+39\)",
        ),
        ([10, 10, 0, 5], r"annotations\[0\] \(id 1\): bbox \[10, 10, 0, 5\] has zero area"),
    ],
)
def test_bad_ground_truth_boxes_are_refused(bbox: list, message: str) -> None:
    gt, results = random_coco(11, num_images=5)
    gt["annotations"][0] = dict(gt["annotations"][0], bbox=bbox, area=1.0)
    with pytest.raises(DataError, match=r"^ground truth: " + message):
        evaluate_coco(gt, results)


def test_ground_truth_image_without_size_still_bounds_boxes() -> None:
    gt = {
        "images": [{"id": 1}],
        "annotations": [{"id": 7, "image_id": 1, "category_id": 1, "bbox": [1, 1, 1e39, 10], "iscrowd": 0}],
        "categories": [{"id": 1, "name": "a"}],
    }
    with pytest.raises(DataError, match=r"annotations\[0\] \(id 7\): bbox .* is outside the 65535 x 65535 image"):
        evaluate_coco(gt, [])
