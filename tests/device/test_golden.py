"""device.golden: the golden.json format, the members writer, loading from a bundle, the comparison."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from device.golden import (
    GOLDEN_JSON,
    GoldenEntry,
    box_iou,
    compare_golden,
    decode_golden_image,
    encode_golden_image,
    golden_files,
    load_golden,
    parse_golden,
    pixels_digest,
    read_golden_image,
)
from edge_sdk.bundle import InputSpec, Manifest, open_bundle, write_bundle
from edge_sdk.detections import Detections
from edge_sdk.errors import BundleError, DataError


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


# ----------------------------------------------------------------------------- comparison


def test_same_detections_match_in_any_order():
    result = compare_golden(
        _detections(EXPECTED.boxes[::-1], EXPECTED.scores[::-1] + 0.01, EXPECTED.class_ids[::-1]), EXPECTED
    )
    assert result.ok, result.report
    assert "2/2" in result.report
    assert (result.matched, result.unmatched, result.counted) == (2, 0, 2)


def test_moved_box_wrong_class_missing_or_extra_box_fail():
    moved = EXPECTED.boxes.copy()
    moved[0] += 6.0
    result = compare_golden(_detections(moved, EXPECTED.scores, EXPECTED.class_ids), EXPECTED)
    assert not result.ok and "missing class 1" in result.report and "IoU" in result.report
    assert not compare_golden(_detections(EXPECTED.boxes, EXPECTED.scores, [1, 2]), EXPECTED).ok
    result = compare_golden(_detections(EXPECTED.boxes[:1], EXPECTED.scores[:1], EXPECTED.class_ids[:1]), EXPECTED)
    assert not result.ok and "1/2" in result.report
    extra = np.vstack([EXPECTED.boxes, [[0, 0, 5, 5]]])
    result = compare_golden(_detections(extra, [0.9, 0.6, 0.8], [1, 3, 0]), EXPECTED)
    assert not result.ok and "extra class 0" in result.report
    assert (result.matched, result.unmatched) == (2, 1)
    assert not compare_golden(_detections(EXPECTED.boxes, [0.9, 0.4], EXPECTED.class_ids), EXPECTED).ok


def test_borderline_boxes_may_come_and_go_and_empty_matches_empty():
    result = compare_golden(
        _detections(EXPECTED.boxes[:1], EXPECTED.scores[:1], EXPECTED.class_ids[:1]), EXPECTED, score_threshold=0.58
    )
    assert result.ok, result.report
    assert (result.matched, result.unmatched, result.counted) == (1, 0, 1)
    empty = GoldenEntry(
        "calibration/golden/1.png", np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int32)
    )
    assert compare_golden(Detections.empty(), empty).ok
    assert compare_golden(Detections.empty(), GoldenEntry.from_dict(empty.to_dict())).ok


def test_golden_comparison_tolerances():
    golden = GoldenEntry.from_dict(
        {
            "image": "calibration/golden/0.png",
            "boxes": [[10, 10, 50, 50], [60, 60, 90, 90]],
            "scores": [0.9, 0.32],
            "class_ids": [1, 2],
        }
    )

    def counts(boxes, scores, classes):
        result = compare_golden(_detections(boxes, scores, classes), golden, 0.9, 0.05, score_threshold=0.3)
        return result.matched, result.unmatched, result.counted

    # Same first box slightly moved (IoU > 0.9), borderline second box (0.32 < 0.3 + 0.05) missing: agrees.
    assert counts([[10.5, 10, 50, 50]], [0.88], [1]) == (1, 0, 1)
    # Wrong class, or a score off by more than 0.05: unmatched (the golden box and the robot box).
    assert counts([[10, 10, 50, 50]], [0.9], [3])[1] == 2
    assert counts([[10, 10, 50, 50]], [0.8], [1])[1] == 2
    # A borderline extra robot box does not count either.
    assert counts([[10, 10, 50, 50], [0, 0, 5, 5]], [0.9, 0.33], [1, 0]) == (1, 0, 1)


def test_each_problem_names_what_went_wrong():
    result = compare_golden(_detections([[0, 0, 5, 5]], [0.7], [0]), EXPECTED)
    assert len(result.problems) == result.unmatched == 3
    assert result.problems[0].startswith("missing class 1 score 0.900 at [10.0, 10.0, 50.0, 50.0]")
    assert result.problems[2] == "extra class 0 score 0.700 at [0.0, 0.0, 5.0, 5.0]"
    assert result.report.startswith("calibration/golden/0.png: 0/2 expected boxes matched, 3 problem(s): ")


def test_box_iou_is_pairwise():
    a = np.array([[0, 0, 10, 10], [0, 0, 0, 0]], np.float32)
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]], np.float32)
    np.testing.assert_allclose(box_iou(a, b), [[1.0, 50 / 150, 0.0], [0.0, 0.0, 0.0]])
    assert box_iou(a, np.zeros((0, 4))).shape == (2, 0)


# ----------------------------------------------------------------------------- format and writer


def _samples():
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (24, 32, 3), dtype=np.uint8) for _ in range(2)]
    found = [
        _detections([[1.23456, 2, 10, 12.5]], [0.912345678], [4]),
        Detections.empty(),
    ]
    return list(zip(images, found))


def test_golden_files_round_trip_both_shapes():
    import cv2

    samples = _samples()
    files = golden_files(samples)
    assert sorted(files) == ["calibration/golden.json", "calibration/golden/0.png", "calibration/golden/1.png"]
    for index, (image, _) in enumerate(samples):
        decoded = cv2.imdecode(np.frombuffer(files["calibration/golden/{}.png".format(index)], np.uint8), 1)
        assert np.array_equal(decoded, image)
    document = json.loads(files[GOLDEN_JSON])
    assert (
        isinstance(document, list)
        and [sorted(e) for e in document] == [["boxes", "class_ids", "image", "pixels_sha256", "scores"]] * 2
    )
    golden = parse_golden(document, 0.25)
    assert golden.score_threshold == 0.25
    first, second = golden.entries
    assert first.image == "calibration/golden/0.png"
    np.testing.assert_allclose(first.boxes, [[1.235, 2, 10, 12.5]])
    np.testing.assert_allclose(first.scores, [0.91235])
    assert first.class_ids.tolist() == [4] and first.class_ids.dtype == np.int32
    assert first.pixels_sha256 == pixels_digest(samples[0][0]) != second.pixels_sha256
    assert second.boxes.shape == (0, 4) and second.scores.shape == (0,)

    document = json.loads(golden_files(samples, score_threshold=0.05)[GOLDEN_JSON])
    assert document["score_threshold"] == 0.05
    assert parse_golden(document, 0.25).score_threshold == 0.05
    assert parse_golden(document, 0.25).entries[0].to_dict() == first.to_dict()


def test_golden_files_refuses_a_non_image():
    with pytest.raises(DataError, match="golden image 0"):
        golden_files([(np.zeros((4, 4), np.float32), Detections.empty())])
    with pytest.raises(DataError, match="golden image 0: the bytes are neither a JPEG nor a PNG"):
        golden_files([(b"GIF89a", Detections.empty())])


def test_jpeg_golden_image_round_trip():
    image = np.zeros((48, 64, 3), np.uint8)
    image[8:40, 16:48] = (40, 180, 220)
    encoded = encode_golden_image(image)
    assert encoded.startswith(b"\xff\xd8\xff")
    decoded = decode_golden_image(encoded)
    assert decoded.shape == image.shape and decoded.dtype == np.uint8
    assert 0 < np.abs(decoded.astype(int) - image).mean() < 3.0
    assert len(encode_golden_image(image, quality=50)) < len(encoded) < len(encode_golden_image(image, quality=100))
    with pytest.raises(DataError, match="quality must be within 1..100"):
        encode_golden_image(image, quality=0)
    with pytest.raises(DataError, match="golden image to encode"):
        encode_golden_image(image[:, :, 0])
    with pytest.raises(BundleError, match="golden image 3.jpg: cannot decode it"):
        decode_golden_image(encoded[:20], "golden image 3.jpg")
    with pytest.raises(BundleError, match="cannot decode it"):
        decode_golden_image(b"")


def test_golden_files_stores_encoded_images_as_they_are():
    samples = _samples()
    jpeg = encode_golden_image(samples[0][0])
    png = golden_files(samples[1:])["calibration/golden/0.png"]
    files = golden_files([(jpeg, samples[0][1]), (png, samples[1][1])], score_threshold=0.3)
    assert sorted(files) == ["calibration/golden.json", "calibration/golden/0.jpg", "calibration/golden/1.png"]
    assert files["calibration/golden/0.jpg"] == jpeg and files["calibration/golden/1.png"] == png
    golden = parse_golden(json.loads(files[GOLDEN_JSON]), 0.25)
    assert [e.image for e in golden.entries] == ["calibration/golden/0.jpg", "calibration/golden/1.png"]
    np.testing.assert_allclose(golden.entries[0].boxes, [[1.235, 2, 10, 12.5]])
    assert golden.entries[0].pixels_sha256 == pixels_digest(decode_golden_image(jpeg))
    assert golden.entries[0].pixels_sha256 != pixels_digest(samples[0][0])
    assert golden.entries[1].pixels_sha256 == pixels_digest(samples[1][0])


def test_pixels_digest_covers_shape_and_pixels_and_is_optional_in_golden_json():
    image = np.zeros((4, 6, 3), np.uint8)
    changed = image.copy()
    changed[3, 5, 2] = 1
    digests = {pixels_digest(image), pixels_digest(changed), pixels_digest(image.reshape(6, 4, 3))}
    assert len(digests) == 3 and pixels_digest(image.copy()) == pixels_digest(image)
    old = GoldenEntry.from_dict({"image": "calibration/golden/0.png", "boxes": [], "scores": [], "class_ids": []})
    assert old.pixels_sha256 == "" and "pixels_sha256" not in old.to_dict()
    with pytest.raises(BundleError, match="malformed pixels_sha256"):
        GoldenEntry.from_dict({"image": "a.png", "pixels_sha256": 12})


def test_report_says_when_the_decoded_pixels_differ():
    result = replace(compare_golden(_detections([], [], []), EXPECTED), pixels_match=False)
    assert result.report.startswith(
        "calibration/golden/0.png: 0/2 expected boxes matched (decoded pixels differ from the workstation's), "
        "2 problem(s): missing class 1"
    )
    assert "differ" not in replace(result, pixels_match=True).report


@pytest.mark.parametrize(
    "document, message",
    [
        ({"boxes": []}, "must list"),
        ([{"boxes": []}], 'needs an "image" name'),
        ([{"image": "a.png", "boxes": [[1, 2, 3]], "scores": [0.5], "class_ids": [0]}], "malformed"),
        ([{"image": "a.png", "boxes": [[1, 2, 3, 4]], "scores": [], "class_ids": [0]}], "1 boxes, 0 scores"),
        ({"score_threshold": "high", "images": []}, "score_threshold must be a number"),
    ],
)
def test_parse_golden_refuses_malformed_documents(document, message):
    with pytest.raises(BundleError, match=message):
        parse_golden(document, 0.3)


# ----------------------------------------------------------------------------- loading from a bundle


def _bundle(tmp_path, files):
    manifest = Manifest(
        name="golden-test",
        version="1.0.0",
        architecture="yolov3_mobilenet_v1",
        classes=("a", "b", "c", "d", "e"),
        input=InputSpec(size=(32, 32)),
    )
    members = {"model/model.pdmodel": b"program", "model/model.pdiparams": b"params"}
    members.update(files)
    return write_bundle(tmp_path / "golden-test.edgebundle", replace(manifest, files=()), members)


def test_load_golden_from_an_opened_bundle(tmp_path):
    samples = _samples()
    jpeg = encode_golden_image(samples[0][0])
    path = _bundle(tmp_path, golden_files([(jpeg, samples[0][1]), samples[1]]))
    with open_bundle(path, staging_dir=tmp_path) as bundle:
        golden = load_golden(bundle)
        assert golden is not None
        assert golden.score_threshold == bundle.manifest.postprocess.score_threshold
        assert [e.image for e in golden.entries] == ["calibration/golden/0.jpg", "calibration/golden/1.png"]
        assert np.array_equal(read_golden_image(bundle, golden.entries[0]), decode_golden_image(jpeg))
        assert np.array_equal(read_golden_image(bundle, golden.entries[1]), samples[1][0])
        with pytest.raises(BundleError, match="golden image missing.png"):
            read_golden_image(bundle, replace(golden.entries[0], image="missing.png"))


def test_load_golden_without_golden_data_or_with_bad_data(tmp_path):
    with open_bundle(_bundle(tmp_path, {}), staging_dir=tmp_path) as bundle:
        assert load_golden(bundle) is None
    bad = {GOLDEN_JSON: b"[{not json", "calibration/golden/0.png": b"not a png"}
    (tmp_path / "bad").mkdir()
    with open_bundle(_bundle(tmp_path / "bad", bad), staging_dir=tmp_path) as bundle:
        with pytest.raises(BundleError, match="not valid JSON"):
            load_golden(bundle)
        entry = GoldenEntry.from_dict({"image": "calibration/golden/0.png"})
        with pytest.raises(BundleError, match="cannot decode"):
            read_golden_image(bundle, entry)


def test_tolerance_follows_the_loosest_precision_and_settings_override_it():
    from device.golden import PRECISION_TOLERANCES, tolerance_for
    from device.health import HealthSettings

    assert tolerance_for("fp32") == PRECISION_TOLERANCES["fp32"] == (0.9, 0.05, 0.1)
    assert tolerance_for("fp32", "fp16") == PRECISION_TOLERANCES["fp16"]
    assert tolerance_for("int8", "fp32") == tolerance_for("int8") == PRECISION_TOLERANCES["int8"]
    assert tolerance_for("bf16") == tolerance_for() == PRECISION_TOLERANCES["fp32"]
    int8 = PRECISION_TOLERANCES["int8"]
    assert int8.iou < 0.9 and int8.score_tolerance > 0.05 and int8.max_miss_fraction > 0.1
    settings = HealthSettings.for_precision("int8", device="cpu")
    assert (settings.iou, settings.score_tolerance, settings.max_miss_fraction, settings.device) == (*int8, "cpu")
    pinned = HealthSettings(iou=0.95, device="cpu").resolved("int8")
    assert (pinned.iou, pinned.score_tolerance, pinned.max_miss_fraction) == (0.95, *int8[1:])
    assert HealthSettings().iou is None  # unresolved until the precision is known
