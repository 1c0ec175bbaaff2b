from __future__ import annotations

import json

import numpy as np

from calibration.golden import GOLDEN_JSON, GoldenEntry, compare_golden, load_golden, pick_golden_records, write_golden
from edge_sdk.detections import Detections


def _detections(boxes, scores, class_ids) -> Detections:
    return Detections(
        np.asarray(boxes, np.float32).reshape(-1, 4),
        np.asarray(scores, np.float32),
        np.asarray(class_ids, np.int32),
        -1,
        0.0,
    )


EXPECTED = GoldenEntry(
    "calibration/golden/0.png",
    np.array([[10, 10, 50, 50], [60, 20, 90, 70]], np.float32),
    np.array([0.9, 0.6], np.float32),
    np.array([1, 3], np.int32),
)


def test_same_detections_match_in_any_order():
    ok, report = compare_golden(
        _detections(EXPECTED.boxes[::-1], EXPECTED.scores[::-1] + 0.01, EXPECTED.class_ids[::-1]), EXPECTED
    )
    assert ok, report
    assert "2/2" in report


def test_moved_box_wrong_class_missing_or_extra_box_fail():
    moved = EXPECTED.boxes.copy()
    moved[0] += 6.0
    ok, report = compare_golden(_detections(moved, EXPECTED.scores, EXPECTED.class_ids), EXPECTED)
    assert not ok and "missing class 1" in report and "IoU" in report
    ok, _ = compare_golden(_detections(EXPECTED.boxes, EXPECTED.scores, [1, 2]), EXPECTED)
    assert not ok
    ok, report = compare_golden(_detections(EXPECTED.boxes[:1], EXPECTED.scores[:1], EXPECTED.class_ids[:1]), EXPECTED)
    assert not ok and "1/2" in report
    extra = np.vstack([EXPECTED.boxes, [[0, 0, 5, 5]]])
    ok, report = compare_golden(_detections(extra, [0.9, 0.6, 0.8], [1, 3, 0]), EXPECTED)
    assert not ok and "extra class 0" in report
    ok, report = compare_golden(_detections(EXPECTED.boxes, [0.9, 0.4], EXPECTED.class_ids), EXPECTED)
    assert not ok


def test_borderline_boxes_may_come_and_go_and_empty_matches_empty():
    ok, report = compare_golden(
        _detections(EXPECTED.boxes[:1], EXPECTED.scores[:1], EXPECTED.class_ids[:1]), EXPECTED, score_threshold=0.58
    )
    assert ok, report
    empty = GoldenEntry(
        "calibration/golden/1.png", np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int32)
    )
    assert compare_golden(Detections.empty(), empty)[0]
    assert compare_golden(Detections.empty(), empty.to_dict())[0]


def test_golden_files_from_the_fp32_bundle_reproduce_on_the_robot_side(tiny_bundle, pcb_data, tmp_path):
    import cv2

    from calibration.golden import check_golden
    from device.pipeline import Detector

    records = pick_golden_records(pcb_data[1].images, 2)
    with Detector(tiny_bundle, device="cpu", threads=1) as detector:
        files = write_golden(detector, records, tmp_path)
        assert sorted(files) == ["calibration/golden.json", "calibration/golden/0.png", "calibration/golden/1.png"]
        document = json.loads(files[GOLDEN_JSON].read_text())
        assert [sorted(entry) for entry in document] == [["boxes", "class_ids", "image", "scores"]] * 2
        assert document[0]["image"] == "calibration/golden/0.png"
        assert len(document[0]["boxes"]) > 0
        ok, reports = check_golden(detector, tmp_path)
        assert ok, reports
        entry = load_golden(tmp_path)[0]
        found = detector.detect(cv2.imread(str(tmp_path / entry.image)))
    found.boxes[0] += 8.0
    ok, report = compare_golden(found, entry, score_threshold=detector.manifest.postprocess.score_threshold)
    assert not ok and "missing" in report
