"""The accuracy budget, measured against the FP32 program's own detections (see conftest.pseudo_val)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from calibration.budget import AccuracyBudgetExceeded, quantize_within_budget
from calibration.ptq import list_quantizable_layers
from edge_sdk.data.dataset import ImageRecord
from edge_sdk.errors import RecipeError


@pytest.mark.workstation  # PaddleSlim's PTQ
def test_good_calibration_passes_and_records_how(
    tiny_model_dir, tiny_manifest, calibration_records, pseudo_val, tmp_path
):
    truth, fp32 = pseudo_val
    assert fp32.map50 > 0.99
    result = quantize_within_budget(
        tiny_model_dir,
        tiny_manifest,
        calibration_records,
        truth,
        tmp_path / "int8",
        algo="abs_max",
        budget_points=40.0,
        max_retries=0,
        batch_size=4,
        fp32=fp32,
        progress=False,
    )
    print(
        "FP32 mAP@.5 {:.4f} ({:.1f} ms), INT8 {:.4f} ({:.1f} ms)".format(
            fp32.map50, fp32.latency_ms, result.int8.map50, result.int8.latency_ms
        )
    )
    assert result.loss_points <= 40.0
    assert result.int8.map50 > 0.6
    assert (result.model_dir / "model.pdiparams").is_file()
    assert result.quantization.method == "ptq"
    assert result.quantization.algo == "abs_max"
    assert result.quantization.calibration_images == 8
    assert result.quantization.float_layers == ()


@pytest.mark.workstation  # PaddleSlim's PTQ
def test_black_calibration_image_is_refused_with_a_clear_error(tiny_model_dir, tiny_manifest, pseudo_val, tmp_path):
    truth, fp32 = pseudo_val
    black = tmp_path / "black.png"
    cv2.imwrite(str(black), np.zeros((128, 128, 3), np.uint8))
    broken = [ImageRecord(path=black, image_id=1, width=128, height=128)]
    candidates = [layer.name for layer in list_quantizable_layers(tiny_model_dir)[-4:]]
    with pytest.raises(AccuracyBudgetExceeded) as caught:
        quantize_within_budget(
            tiny_model_dir,
            tiny_manifest,
            broken,
            truth,
            tmp_path / "int8",
            algo="abs_max",
            budget_points=40.0,
            max_retries=1,
            layers_per_retry=2,
            sensitivity_images=4,
            candidate_layers=candidates,
            fp32=fp32,
            progress=False,
        )
    error = caught.value
    message = str(error)
    print(message)
    assert isinstance(error, RecipeError)
    assert "\n" not in message
    assert error.loss_points > 40.0
    assert "over the budget of 40" in message
    assert len(error.float_layers) == 2 and set(error.float_layers) <= set(candidates)
    assert all(name in message for name in error.float_layers)
    assert all(name.startswith(("yolo_head.", "neck.")) for name in error.float_layers)
    assert ".w_0" not in message and "conv2d_" not in message
    assert not (tmp_path / "int8").exists()
    assert not any(p.name.startswith(".int8.") for p in tmp_path.iterdir())


def test_val_set_without_ground_truth_is_refused(
    tiny_model_dir, tiny_manifest, calibration_records, pcb_data, tmp_path
):
    from edge_sdk.data.dataset import Dataset

    empty = Dataset(
        classes=pcb_data[1].classes,
        images=tuple(
            ImageRecord(path=r.path, image_id=r.image_id, width=r.width, height=r.height)
            for r in pcb_data[1].images[:2]
        ),
    )
    with pytest.raises(RecipeError, match="no ground-truth boxes"):
        quantize_within_budget(
            tiny_model_dir, tiny_manifest, calibration_records, empty, tmp_path / "x", progress=False
        )
