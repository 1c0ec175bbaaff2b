from __future__ import annotations

import cv2
import pytest

from calibration.budget import ModelDirBundle, int8_manifest
from calibration.ptq import PARAMS_FILE, list_quantizable_layers, quantize_post_training
from edge_sdk.errors import RecipeError
from edge_sdk.manifest import InputSpec, Quantization
from tests.conftest import TINY_INPUT_SIZE


def test_int8_program_runs_on_cpu_with_onednn_int8_and_is_small(int8_dir, tiny_model_dir, tiny_manifest, pcb_data):
    from device.pipeline import Detector

    ratio = (int8_dir / PARAMS_FILE).stat().st_size / (tiny_model_dir / PARAMS_FILE).stat().st_size
    print("INT8 / FP32 params size ratio: {:.3f}".format(ratio))
    assert ratio <= 0.30
    manifest = int8_manifest(tiny_manifest, Quantization(method="ptq", algo="abs_max", calibration_images=8))
    image = cv2.imread(str(pcb_data[1].images[0].path))
    with Detector(ModelDirBundle(manifest, int8_dir), device="cpu", threads=1) as detector:
        assert detector.plan.use_mkldnn_int8
        found = detector.detect(image, score_threshold=0.0)
    assert len(found) > 0
    assert found.boxes[:, 2:].max() <= image.shape[1]


def test_skipped_layer_keeps_float_weights(tiny_model_dir, calibration_records, tmp_path):
    import paddle

    last = list_quantizable_layers(tiny_model_dir)[-1]
    assert last.name == "model.yolo_head.yolo_output.2"
    out = quantize_post_training(
        tiny_model_dir,
        calibration_records[:2],
        InputSpec(size=TINY_INPUT_SIZE),
        tmp_path / "q",
        algo="avg",
        skip_layers=[last.name],
        progress=False,
    )
    paddle.enable_static()
    try:
        program = paddle.static.Program.parse_from_string((out / "model.pdmodel").read_bytes())
    finally:
        paddle.disable_static()
    filters = {op.input("Filter")[0] for op in program.global_block().ops if op.type in ("conv2d", "depthwise_conv2d")}
    assert last.weight_var in filters
    assert "conv2d_0.w_0.quantized.dequantized" in filters


def test_bad_algo_and_unknown_layer_are_recipe_errors(tiny_model_dir, calibration_records, tmp_path):
    spec = InputSpec(size=TINY_INPUT_SIZE)
    with pytest.raises(RecipeError, match="int8.algo"):
        quantize_post_training(tiny_model_dir, calibration_records, spec, tmp_path / "a", algo="magic")
    with pytest.raises(RecipeError, match="no quantizable layer named model.nope"):
        quantize_post_training(tiny_model_dir, calibration_records, spec, tmp_path / "b", skip_layers=["model.nope"])
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
