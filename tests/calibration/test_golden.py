"""calibration.golden: the workstation records the FP32 bundle's detections; the robot side reproduces them."""

from __future__ import annotations

import json
from dataclasses import replace

from calibration.golden import make_golden, pick_golden_records
from device.golden import GOLDEN_JSON, check_golden, compare_golden, load_golden, read_golden_image
from edge_sdk.bundle import open_bundle, write_bundle


def test_pick_golden_records_spreads_evenly(pcb_data):
    records = pcb_data[1].images
    assert [r.image_id for r in pick_golden_records(records, 3)] == [
        records[0].image_id,
        records[round((len(records) - 1) / 2)].image_id,
        records[-1].image_id,
    ]
    assert pick_golden_records(records, 0) == [] and pick_golden_records(records, 99) == list(records)


def test_golden_files_from_the_fp32_bundle_reproduce_on_the_robot_side(tiny_bundle, pcb_data, tmp_path):
    from device.pipeline import Detector

    files = make_golden(tiny_bundle, pcb_data[1].images, count=2)
    assert sorted(files) == ["calibration/golden.json", "calibration/golden/0.png", "calibration/golden/1.png"]
    document = json.loads(files[GOLDEN_JSON])
    assert [sorted(entry) for entry in document] == [["boxes", "class_ids", "image", "scores"]] * 2
    assert document[0]["image"] == "calibration/golden/0.png"
    assert len(document[0]["boxes"]) > 0

    with open_bundle(tiny_bundle, staging_dir=tmp_path) as fp32:
        members = {e.path: fp32.path_of(e.path) for e in fp32.manifest.files}
        members.update(files)
        shipped = write_bundle(tmp_path / "tiny-golden.edgebundle", replace(fp32.manifest, files=()), members)
    with open_bundle(shipped, staging_dir=tmp_path) as bundle, Detector(bundle, device="cpu", threads=1) as detector:
        golden = load_golden(bundle)
        assert golden.score_threshold == detector.manifest.postprocess.score_threshold
        results = check_golden(detector, bundle, golden)
        assert all(r.ok for r in results), [r.report for r in results]
        assert [r.matched for r in results] == [len(entry["boxes"]) for entry in document]
        entry = golden.entries[0]
        found = detector.detect(read_golden_image(bundle, entry))
    found.boxes[0] += 8.0
    result = compare_golden(found, entry, score_threshold=golden.score_threshold)
    assert not result.ok and "missing" in result.report
