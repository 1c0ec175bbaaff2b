"""Fixtures of the calibration tests: a small synthetic PCB dataset and the tiny model's INT8 program.

The tiny model (tests/conftest.py) is untrained, so its mAP against the synthetic ground truth is 0.
The accuracy-budget tests therefore measure mAP@.5 against `pseudo_val`: the val images with the
FP32 program's own detections (score >= the manifest's threshold) as ground truth. FP32 scores 1.0
on it by construction, and the INT8 loss is exactly the disagreement quantization causes.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import TINY_CLASSES, TINY_INPUT_SIZE


@pytest.fixture(scope="session")
def pcb_data(tmp_path_factory):
    """(train, val) Datasets of 40 synthetic 128x128 PCB images (32 train, 8 val)."""
    from edge_sdk.data.coco import load_coco
    from edge_sdk.data.synth import synthesize

    out = tmp_path_factory.mktemp("pcb")
    train_json, val_json = synthesize(out, 40, seed=3, size=(128, 128), progress=False)
    return load_coco(train_json), load_coco(val_json)


@pytest.fixture(scope="session")
def tiny_manifest(tiny_bundle):
    from edge_sdk.bundle import open_bundle

    with open_bundle(tiny_bundle) as bundle:
        return bundle.manifest


@pytest.fixture(scope="session")
def calibration_records(pcb_data):
    from calibration.calibration_set import select_calibration_set

    return select_calibration_set(pcb_data[0], 8, seed=0).records


@pytest.fixture(scope="session")
def int8_dir(tiny_model_dir, calibration_records, tmp_path_factory) -> Path:
    """The tiny model quantized with abs_max on 8 chosen training images."""
    from calibration.ptq import quantize_post_training
    from edge_sdk.manifest import InputSpec

    out = tmp_path_factory.mktemp("int8") / "model"
    return quantize_post_training(
        tiny_model_dir,
        calibration_records,
        InputSpec(size=TINY_INPUT_SIZE),
        out,
        algo="abs_max",
        batch_size=4,
        progress=False,
    )


@pytest.fixture(scope="session")
def pseudo_val(tiny_model_dir, tiny_manifest, pcb_data):
    """(val Dataset with FP32 detections as ground truth, FP32 evaluation on it)."""
    from calibration.budget import detections_as_dataset
    from device.evaluate import ModelFolder, evaluate_model

    val = pcb_data[1]
    model = ModelFolder(tiny_manifest, tiny_model_dir)
    fp32 = evaluate_model(model, val, device="cpu")
    truth = detections_as_dataset(val.images, fp32.detections, TINY_CLASSES, tiny_manifest.postprocess.score_threshold)
    return truth, evaluate_model(model, truth, device="cpu")
