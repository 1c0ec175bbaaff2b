from __future__ import annotations

import cv2
import pytest

from calibration.budget import int8_manifest
from calibration.ptq import (
    LAYER_NAMES_FILE,
    PARAMS_FILE,
    PARAMS_INFO_FILE,
    PROGRAM_FILE,
    layer_names,
    list_quantizable_layers,
    quantize_post_training,
    resolve_layers,
    strip_op_callstacks,
    write_layer_names,
)
from device.evaluate import ModelFolder
from edge_sdk.errors import RecipeError
from edge_sdk.manifest import InputSpec, Quantization
from tests.conftest import TINY_INPUT_SIZE


@pytest.mark.workstation  # PaddleSlim's PTQ
def test_int8_program_runs_on_cpu_with_onednn_int8_and_is_small(int8_dir, tiny_model_dir, tiny_manifest, pcb_data):
    from device.detector import Detector

    ratio = (int8_dir / PARAMS_FILE).stat().st_size / (tiny_model_dir / PARAMS_FILE).stat().st_size
    print("INT8 / FP32 params size ratio: {:.3f}".format(ratio))
    assert ratio <= 0.30
    manifest = int8_manifest(tiny_manifest, Quantization(method="ptq", algo="abs_max", calibration_images=8))
    image = cv2.imread(str(pcb_data[1].images[0].path))
    with Detector(ModelFolder(manifest, int8_dir), device="cpu", threads=1) as detector:
        assert detector.plan.use_mkldnn_int8
        found = detector.detect(image, score_threshold=0.0)
    assert len(found) > 0
    assert found.boxes[:, 2:].max() <= image.shape[1]
    assert b"op_callstack" not in (int8_dir / PROGRAM_FILE).read_bytes()


def test_strip_op_callstacks_removes_the_paths_and_keeps_the_program(tmp_path):
    import numpy as np
    import paddle

    layer = paddle.nn.Linear(4, 2)
    layer.eval()
    paddle.jit.save(
        paddle.jit.to_static(layer, input_spec=[paddle.static.InputSpec([None, 4], "float32", "x")]),
        str(tmp_path / "model"),
    )
    program = tmp_path / PROGRAM_FILE
    assert b".py" in program.read_bytes()  # paddle.jit.save records where each op was built

    def run():
        config = paddle.inference.Config(str(program), str(tmp_path / PARAMS_FILE))
        config.disable_glog_info()
        predictor = paddle.inference.create_predictor(config)
        predictor.get_input_handle("x").copy_from_cpu(np.arange(8, dtype="float32").reshape(2, 4))
        predictor.run()
        return predictor.get_output_handle(predictor.get_output_names()[0]).copy_to_cpu()

    before = run()
    assert strip_op_callstacks(tmp_path) > 0
    assert b".py" not in program.read_bytes() and b"op_callstack" not in program.read_bytes()
    np.testing.assert_array_equal(run(), before)
    assert strip_op_callstacks(tmp_path) == 0


@pytest.mark.workstation  # PaddleSlim's PTQ
def test_skipped_layer_keeps_float_weights(tiny_model_dir, calibration_records, tmp_path):
    import paddle

    last = list_quantizable_layers(tiny_model_dir)[-1]
    assert last.name == "yolo_head.yolo_output.2"
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


def _program_ops(model_dir):
    import paddle

    paddle.enable_static()
    try:
        program = paddle.static.Program.parse_from_string((model_dir / "model.pdmodel").read_bytes())
    finally:
        paddle.disable_static()
    return list(program.global_block().ops)


@pytest.mark.workstation  # PaddleSlim's PTQ
def test_bn_folded_int8_keeps_scales_and_structural_names(int8_dir, tiny_model_dir):
    ops = _program_ops(int8_dir)
    types = [op.type for op in ops]
    assert "batch_norm" in [op.type for op in _program_ops(tiny_model_dir)]
    assert "batch_norm" not in types
    float_layers = list_quantizable_layers(tiny_model_dir)
    assert types.count("conv2d") + types.count("depthwise_conv2d") == len(float_layers)
    # every weight is stored int8 with its scale, read back by a dequantize_linear (what Paddle-TRT consumes)
    dequantized = {op.input("X")[0] for op in ops if op.type == "dequantize_linear" and op.input("Scale")}
    assert {layer.weight_var for layer in float_layers} <= dequantized
    assert types.count("quantize_linear") >= len(float_layers)
    assert (int8_dir / LAYER_NAMES_FILE).is_file()
    assert layer_names(int8_dir) == layer_names(tiny_model_dir)
    assert float_layers[0].name == "backbone.conv1._conv"


def test_layer_names_survive_without_the_paddle_info_file(tiny_model_dir, tmp_path):
    import shutil

    for name in ("model.pdmodel", PARAMS_FILE):
        shutil.copy(tiny_model_dir / name, tmp_path / name)
    generated = list_quantizable_layers(tmp_path)
    assert generated[0].name == generated[0].weight_var
    write_layer_names(tiny_model_dir, tmp_path / LAYER_NAMES_FILE)
    assert not (tmp_path / PARAMS_INFO_FILE).exists()
    assert layer_names(tmp_path) == layer_names(tiny_model_dir)
    layers = list_quantizable_layers(tmp_path)
    assert layers[-1].name == "yolo_head.yolo_output.2"
    assert not any(layer.name.startswith("conv2d_") for layer in layers)
    assert resolve_layers(tmp_path, ["model.yolo_head.yolo_output.2"]) == [layers[-1]]
