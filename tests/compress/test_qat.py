from __future__ import annotations

import cv2
import numpy as np
import pytest

from tests.conftest import TINY_CLASSES, TINY_INPUT_SIZE


@pytest.fixture(scope="module")
def pcb_train(tmp_path_factory):
    from edge_sdk.data.coco import load_coco
    from edge_sdk.data.synth import synthesize

    train_json, _ = synthesize(tmp_path_factory.mktemp("qat_pcb"), 18, seed=4, size=(128, 128), progress=False)
    return load_coco(train_json)


def test_qat_fine_tunes_a_copy_and_exports_an_int8_program(
    tiny_model, tiny_model_dir, tiny_manifest_for_qat, pcb_train, tmp_path
):
    from calibration.budget import int8_manifest
    from compress.config import QATSection
    from compress.qat import quantize_aware_train
    from device.detector import Detector
    from device.evaluate import ModelFolder
    from edge_sdk.manifest import Quantization

    before = {k: v.numpy().copy() for k, v in tiny_model.state_dict().items()}
    result = quantize_aware_train(
        tiny_model,
        pcb_train,
        TINY_INPUT_SIZE[0],
        tmp_path / "qat",
        QATSection(epochs=1, batch_size=8, warmup_steps=1),
        progress=False,
    )
    assert len(result.history) == 1 and np.isfinite(result.history[0]["loss"])
    after = tiny_model.state_dict()
    assert all(np.array_equal(before[k], after[k].numpy()) for k in before)
    ratio = (result.model_dir / "model.pdiparams").stat().st_size / (tiny_model_dir / "model.pdiparams").stat().st_size
    assert b"op_callstack" not in (result.model_dir / "model.pdmodel").read_bytes()
    print("QAT INT8 / FP32 params size ratio: {:.3f}".format(ratio))
    assert ratio <= 0.35
    manifest = int8_manifest(tiny_manifest_for_qat, Quantization(method="qat"))
    image = cv2.imread(str(pcb_train.images[0].path))
    with Detector(ModelFolder(manifest, result.model_dir), device="cpu", threads=1) as detector:
        assert detector.plan.use_mkldnn_int8
        found = detector.detect(image, score_threshold=0.0)
    assert len(found) > 0
    assert set(found.class_ids.tolist()) <= set(range(len(TINY_CLASSES)))


@pytest.fixture(scope="module")
def tiny_manifest_for_qat(tiny_bundle):
    from edge_sdk.bundle import open_bundle

    with open_bundle(tiny_bundle) as bundle:
        return bundle.manifest
