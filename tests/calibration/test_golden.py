"""calibration.golden: JPEG golden images with the bundle's detections on their decoded pixels; the
robot's health check reproduces them, catches a tampered reference, and still reads old PNG sets."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from calibration.golden import make_golden, pick_golden_records
from device.golden import (
    GOLDEN_JSON,
    check_golden,
    decode_golden_image,
    golden_files,
    load_golden,
    read_golden_image,
)
from edge_sdk.bundle import open_bundle, write_bundle
from edge_sdk.errors import DataError


def test_pick_golden_records_spreads_evenly(pcb_data):
    records = pcb_data[1].images
    assert [r.image_id for r in pick_golden_records(records, 3)] == [
        records[0].image_id,
        records[round((len(records) - 1) / 2)].image_id,
        records[-1].image_id,
    ]
    assert pick_golden_records(records, 0) == [] and pick_golden_records(records, 99) == list(records)


@pytest.fixture(scope="module")
def jpeg_golden(tiny_bundle, pcb_data):
    """make_golden's members for 2 val images of the tiny bundle."""
    return make_golden(tiny_bundle, pcb_data[1].images, count=2)


def _ship(tiny_bundle, files, folder):
    """The tiny bundle again with `files` (golden members) added; returns its path."""
    folder.mkdir()
    with open_bundle(tiny_bundle, staging_dir=folder) as fp32:
        members = {e.path: fp32.path_of(e.path) for e in fp32.manifest.files}
        members.update(files)
        return write_bundle(folder / "tiny-golden.edgebundle", replace(fp32.manifest, files=()), members)


def _health(path, folder):
    from device.health import HealthSettings, health_check

    with open_bundle(path, staging_dir=folder) as bundle:
        return health_check(bundle, HealthSettings(device="cpu", fps_frames=1))


def test_make_golden_writes_jpegs_and_detections_on_their_decoded_pixels(jpeg_golden, tiny_bundle, tmp_path):
    from device.detector import Detector

    assert sorted(jpeg_golden) == ["calibration/golden.json", "calibration/golden/0.jpg", "calibration/golden/1.jpg"]
    assert all(jpeg_golden["calibration/golden/{}.jpg".format(i)].startswith(b"\xff\xd8\xff") for i in range(2))
    document = json.loads(jpeg_golden[GOLDEN_JSON])
    with open_bundle(tiny_bundle, staging_dir=tmp_path) as fp32:
        assert document["score_threshold"] == fp32.manifest.postprocess.score_threshold
    assert [e["image"] for e in document["images"]] == ["calibration/golden/0.jpg", "calibration/golden/1.jpg"]
    assert len(document["images"][0]["boxes"]) > 0

    with open_bundle(_ship(tiny_bundle, jpeg_golden, tmp_path / "ship"), staging_dir=tmp_path) as bundle:
        golden = load_golden(bundle)
        with Detector(bundle, device="cpu", threads=1) as detector:
            # The robot reads the same pixels the reference was computed on: a near-exact match.
            strict = check_golden(detector, bundle, golden, iou=0.999, score_tolerance=1e-4)
            assert all(r.ok and r.pixels_match for r in strict), [r.report for r in strict]
            assert [r.matched for r in strict] == [len(e["boxes"]) for e in document["images"]]
            pixels = read_golden_image(bundle, golden.entries[0])
    assert np.array_equal(pixels, decode_golden_image(jpeg_golden["calibration/golden/0.jpg"]))


def test_jpeg_golden_set_passes_the_health_check(jpeg_golden, tiny_bundle, tmp_path):
    report = _health(_ship(tiny_bundle, jpeg_golden, tmp_path / "ship"), tmp_path)
    assert report.passed and report.checks["golden"].startswith("ok: 2 images"), report.checks
    assert ", 0 unmatched" in report.checks["golden"]


def test_tampered_reference_fails_the_health_check_with_the_reason(jpeg_golden, tiny_bundle, tmp_path):
    # Every box of the first image moved 8 px (the untrained tiny model finds ~100 boxes per image, and
    # the health check allows 10% of them unmatched).
    document = json.loads(jpeg_golden[GOLDEN_JSON])
    first = document["images"][0]
    first["boxes"] = [[v + 8.0 for v in box] for box in first["boxes"]]
    tampered = dict(jpeg_golden)
    tampered[GOLDEN_JSON] = json.dumps(document).encode("utf-8")
    report = _health(_ship(tiny_bundle, tampered, tmp_path / "ship"), tmp_path)
    assert not report.passed and report.checks["golden"] == "failed: " + report.reason
    reason = report.reason
    assert "\n" not in reason
    assert reason.startswith("golden check failed: 2 images, ")
    assert "calibration/golden/0.jpg: missing class" in reason and "IoU" in reason


def test_a_golden_jpeg_decoding_to_other_pixels_is_named(jpeg_golden, tiny_bundle, tmp_path):
    """Stands in for a robot whose JPEG decoder differs: the image is re-encoded, so its pixels change."""
    from device.detector import Detector
    from device.golden import encode_golden_image

    changed = dict(jpeg_golden)
    changed["calibration/golden/1.jpg"] = encode_golden_image(
        decode_golden_image(jpeg_golden["calibration/golden/1.jpg"]), quality=50
    )
    with open_bundle(_ship(tiny_bundle, changed, tmp_path / "ship"), staging_dir=tmp_path) as bundle:
        with Detector(bundle, device="cpu", threads=1) as detector:
            results = check_golden(detector, bundle, load_golden(bundle))
    assert [r.pixels_match for r in results] == [True, False]
    assert "(decoded pixels differ from the workstation's)" in results[1].report


def test_old_png_golden_set_still_passes(tiny_bundle, pcb_data, tmp_path):
    import cv2

    from device.detector import Detector

    images = [cv2.imread(str(r.path), cv2.IMREAD_COLOR) for r in pick_golden_records(pcb_data[1].images, 2)]
    with Detector(tiny_bundle, device="cpu") as detector:
        samples = [(image, detector.detect(image)) for image in images]
    files = golden_files(samples)  # the format of earlier SDKs: PNGs and a plain list
    assert sorted(files) == ["calibration/golden.json", "calibration/golden/0.png", "calibration/golden/1.png"]
    document = json.loads(files[GOLDEN_JSON])
    for entry in document:
        del entry["pixels_sha256"]  # earlier SDKs did not write it
    files[GOLDEN_JSON] = json.dumps(document).encode("utf-8")
    report = _health(_ship(tiny_bundle, files, tmp_path / "ship"), tmp_path)
    assert report.passed and report.checks["golden"].startswith("ok: 2 images"), report.checks


def test_make_golden_refuses_an_unreadable_image(tiny_bundle, pcb_data, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    record = replace(pcb_data[1].images[0], path=broken)
    with pytest.raises(DataError, match="cannot decode image"):
        make_golden(tiny_bundle, [record], count=1)


def _int8_params(int8_dir, activation_scale=1.0, weight_noise_lsb=0.0):
    """model.pdiparams bytes of the int8_dir program with every activation quantization scale times
    `activation_scale` and N(0, weight_noise_lsb) added to the int8 conv weights: a bad calibration."""
    import paddle

    from calibration.ptq import PROGRAM_FILE

    paddle.enable_static()
    try:
        executor = paddle.static.Executor(paddle.CPUPlace())
        scope = paddle.static.Scope()
        with paddle.static.scope_guard(scope):
            prefix = str(int8_dir / PROGRAM_FILE)[: -len(".pdmodel")]
            program, feeds, fetches = paddle.static.load_inference_model(prefix, executor)
            block = program.global_block()
            activation_scales = {op.input("Scale")[0] for op in block.ops if op.type == "quantize_linear"}
            rng = np.random.default_rng(0)
            for var in program.list_vars():
                if not var.persistable or var.type != paddle.framework.core.VarDesc.VarType.LOD_TENSOR:
                    continue
                tensor = scope.find_var(var.name).get_tensor()
                value = np.array(tensor)
                if var.name in activation_scales:
                    tensor.set((value * activation_scale).astype(value.dtype), paddle.CPUPlace())
                elif value.dtype == np.int8 and value.size > 100:
                    noisy = value.astype(np.int32) + np.round(rng.normal(0.0, weight_noise_lsb, value.shape))
                    tensor.set(np.clip(noisy, -127, 127).astype(np.int8), paddle.CPUPlace())
            return paddle.static.io.serialize_persistables(
                [block.var(n) for n in feeds], fetches, executor, program=program
            )
    finally:
        paddle.disable_static()


def _int8_bundle(tiny_bundle, int8_dir, golden, folder, params=None):
    """A real INT8 bundle of the tiny model (the int8_dir program, or its `params` bytes) carrying
    the FP32 model's golden set."""
    from calibration.budget import int8_manifest
    from calibration.ptq import PARAMS_FILE, PROGRAM_FILE
    from edge_sdk.manifest import Quantization

    folder.mkdir()
    with open_bundle(tiny_bundle, staging_dir=folder) as fp32:
        manifest = int8_manifest(fp32.manifest, Quantization(method="ptq", algo="abs_max", calibration_images=8))
    members = {
        "model/model.pdmodel": int8_dir / PROGRAM_FILE,
        "model/model.pdiparams": int8_dir / PARAMS_FILE if params is None else params,
    }
    members.update(golden)
    return write_bundle(folder / "tiny-int8.edgebundle", replace(manifest, files=()), members)


@pytest.mark.workstation  # PaddleSlim's PTQ
def test_int8_bundle_passes_its_own_golden_check_and_badly_calibrated_ones_do_not(
    jpeg_golden, tiny_bundle, int8_dir, tmp_path
):
    from calibration.golden import self_check
    from device.golden import PRECISION_TOLERANCES
    from device.health import HealthSettings, health_check

    int8 = _int8_bundle(tiny_bundle, int8_dir, jpeg_golden, tmp_path / "int8")
    assert self_check(int8) == []
    with open_bundle(int8, staging_dir=tmp_path) as bundle:
        report = health_check(bundle, HealthSettings(device="cpu", fps_frames=1))
        as_if_fp32 = health_check(bundle, HealthSettings.for_precision("fp32", device="cpu", fps_frames=1))
    tolerance = PRECISION_TOLERANCES["int8"]
    assert report.passed, report.reason
    assert "at IoU {:g}, score +-{:g}".format(tolerance.iou, tolerance.score_tolerance) in report.checks["golden"]
    assert not as_if_fp32.passed  # INT8 drifts further than FP32's tolerances allow

    broken = {
        # The untrained tiny model shrugs off channel order, mean/std and milder scale errors (they
        # are measured on the trained demo model instead, see docs/deploy-to-robot.md).
        "clipped_activations": _int8_params(int8_dir, activation_scale=0.05),
        "noisy_weights": _int8_params(int8_dir, weight_noise_lsb=30.0),
    }
    problems = {
        name: self_check(_int8_bundle(tiny_bundle, int8_dir, jpeg_golden, tmp_path / name, params))
        for name, params in broken.items()
    }
    for name, found in problems.items():
        assert len(found) == 1 and found[0].startswith("golden check failed: 2 images, "), (name, found)
