"""device.predictor: the pure plan (device, precision, TensorRT settings, engine cache key) and apply_plan."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import pytest

from device.predictor import Environment, apply_plan, check_cache_writable, engine_cache_key, plan
from edge_sdk.errors import PredictorError
from edge_sdk.manifest import InputSpec, Manifest, Quantization, ShapeRange, TensorRTHints

XAVIER = Environment(
    paddle_version="2.6.2",
    with_cuda=True,
    tensorrt_version="8.5.2",
    cuda_version="11.4",
    cudnn_version="8.6.0",
    compute_capability="7.2",
    device_name="Xavier",
    cpu_count=8,
)
CPU_ONLY = Environment(paddle_version="2.6.2", cpu_count=2)
DESKTOP_GPU = dataclasses.replace(XAVIER, compute_capability="8.6", device_name="NVIDIA GeForce RTX 3090")


def make_manifest(precision: str = "fp32", shapes: bool = True) -> Manifest:
    dynamic = {}
    if shapes:
        dynamic = {
            "image": ShapeRange(min=(1, 3, 96, 96), opt=(1, 3, 96, 96), max=(2, 3, 96, 96)),
            "im_shape": ShapeRange(min=(1, 2), opt=(1, 2), max=(2, 2)),
            "scale_factor": ShapeRange(min=(1, 2), opt=(1, 2), max=(2, 2)),
        }
    return Manifest(
        name="tiny",
        version="0.1.0",
        architecture="yolov3_mobilenet_v1",
        classes=("a", "b"),
        input=InputSpec(size=(96, 96)),
        precision=precision,
        quantization=Quantization(method="ptq", algo="KL", calibration_images=16)
        if precision == "int8"
        else Quantization(),
        tensorrt=TensorRTHints(min_subgraph_size=5, workspace_bytes=1 << 28, dynamic_shapes=dynamic),
    )


# --- engine cache key: every field matters ------------------------------------------------------

BASE_KEY_ARGS = dict(
    bundle_sha256="a" * 64,
    precision="fp16",
    min_shapes={"image": [1, 3, 96, 96]},
    max_shapes={"image": [2, 3, 96, 96]},
    opt_shapes={"image": [1, 3, 96, 96]},
    environment=XAVIER,
)


@pytest.mark.parametrize(
    "change",
    [
        {"bundle_sha256": "b" * 64},
        {"precision": "int8"},
        {"min_shapes": {"image": [1, 3, 64, 64]}},
        {"max_shapes": {"image": [4, 3, 96, 96]}},
        {"opt_shapes": {"image": [2, 3, 96, 96]}},
        {"environment": dataclasses.replace(XAVIER, paddle_version="2.6.1")},
        {"environment": dataclasses.replace(XAVIER, tensorrt_version="8.6.1")},
        {"environment": dataclasses.replace(XAVIER, cuda_version="11.8")},
        {"environment": dataclasses.replace(XAVIER, cudnn_version="8.9.0")},
        {"environment": dataclasses.replace(XAVIER, compute_capability="8.7")},
        {"dla_core": 0},
        {"min_subgraph_size": 7},
    ],
    ids=lambda c: next(iter(c)) if "environment" not in c else "environment-" + str(c["environment"]),
)
def test_every_cache_key_field_changes_the_key(change):
    base = engine_cache_key(**BASE_KEY_ARGS)
    assert engine_cache_key(**dict(BASE_KEY_ARGS, **change)) != base


def test_cache_key_is_stable_and_names_the_folder(tmp_path):
    first = plan(make_manifest(), XAVIER, precision="fp16", cache_root=tmp_path, bundle_sha256="c" * 64)
    again = plan(make_manifest(), XAVIER, precision="fp16", cache_root=tmp_path, bundle_sha256="c" * 64)
    other_bundle = plan(make_manifest(), XAVIER, precision="fp16", cache_root=tmp_path, bundle_sha256="d" * 64)
    assert first.engine_cache_dir == again.engine_cache_dir
    assert first.engine_cache_dir.parent == tmp_path
    assert first.cache_key[:16] in first.engine_cache_dir.name
    assert other_bundle.engine_cache_dir != first.engine_cache_dir


def test_cache_key_without_bundle_hash_follows_the_model_files(tmp_path):
    from edge_sdk.manifest import FileEntry

    one = dataclasses.replace(make_manifest(), files=(FileEntry("model/model.pdiparams", 10, "1" * 64),))
    two = dataclasses.replace(make_manifest(), files=(FileEntry("model/model.pdiparams", 10, "2" * 64),))
    assert plan(one, XAVIER, cache_root=tmp_path).cache_key != plan(two, XAVIER, cache_root=tmp_path).cache_key


# --- TensorRT settings per precision ------------------------------------------------------------


@pytest.mark.parametrize(
    "bundle_precision,requested,mode",
    [("fp32", "fp32", "Float32"), ("fp32", "fp16", "Half"), ("int8", "int8", "Int8"), ("int8", None, "Int8")],
)
def test_tensorrt_settings_per_precision(tmp_path, bundle_precision, requested, mode):
    p = plan(make_manifest(bundle_precision), XAVIER, precision=requested, cache_root=tmp_path)
    assert p.device == "gpu" and p.use_tensorrt
    assert p.tensorrt_precision == mode
    assert p.use_calib_mode is False  # INT8 scales come from the quantized program
    assert p.use_static is True
    assert p.workspace_bytes == 1 << 28
    assert p.min_subgraph_size == 5
    assert not p.use_mkldnn


def test_dynamic_shapes_come_from_the_manifest(tmp_path):
    p = plan(make_manifest(), XAVIER, cache_root=tmp_path)
    assert p.min_shapes == {"image": [1, 3, 96, 96], "im_shape": [1, 2], "scale_factor": [1, 2]}
    assert p.max_shapes == {"image": [2, 3, 96, 96], "im_shape": [2, 2], "scale_factor": [2, 2]}
    assert p.opt_shapes == {"image": [1, 3, 96, 96], "im_shape": [1, 2], "scale_factor": [1, 2]}


def test_without_shape_hints_the_fixed_input_size_is_used(tmp_path):
    p = plan(make_manifest(shapes=False), XAVIER, cache_root=tmp_path)
    assert (
        p.min_shapes
        == p.max_shapes
        == p.opt_shapes
        == {"image": [1, 3, 96, 96], "im_shape": [1, 2], "scale_factor": [1, 2]}
    )


def test_dla_on_xavier(tmp_path):
    p = plan(make_manifest(), XAVIER, precision="fp16", dla_core=1, cache_root=tmp_path)
    assert p.dla_core == 1 and p.tensorrt_precision == "Half"
    assert any("DLA core 1" in n for n in p.notes)
    assert "DLA core 1" in p.describe()


@pytest.mark.parametrize(
    "environment,kwargs,message",
    [
        (DESKTOP_GPU, {"precision": "fp16", "dla_core": 0}, "has no DLA"),
        (XAVIER, {"precision": "fp32", "dla_core": 0}, "FP16 or INT8"),
        (XAVIER, {"precision": "fp16", "dla_core": 2}, "DLA core 2"),
        (CPU_ONLY, {"precision": "fp16", "dla_core": 0}, "CPU-only"),
        (XAVIER, {"device": "cpu", "dla_core": 0}, "--device cpu"),
        (CPU_ONLY, {"device": "gpu"}, "CPU-only build"),
        (dataclasses.replace(XAVIER, compute_capability=None), {"device": "gpu"}, "no CUDA GPU"),
        (CPU_ONLY, {"precision": "int8"}, "without INT8 scales"),
        (XAVIER, {"precision": "bf16"}, "precision 'bf16'"),
        (XAVIER, {"device": "tpu"}, "device 'tpu'"),
        (XAVIER, {"threads": 0}, "--threads"),
    ],
)
def test_impossible_requests_raise_one_clear_line(tmp_path, environment, kwargs, message):
    with pytest.raises(PredictorError, match=message) as info:
        plan(make_manifest(), environment, cache_root=tmp_path, **kwargs)
    assert "\n" not in str(info.value)


def test_int8_bundle_on_tensorrt_only_in_int8(tmp_path):
    with pytest.raises(PredictorError, match="--precision int8"):
        plan(make_manifest("int8"), XAVIER, precision="fp16", cache_root=tmp_path)


def test_gpu_without_tensorrt_runs_plain_cuda():
    no_trt = dataclasses.replace(XAVIER, tensorrt_version=None)
    p = plan(make_manifest(), no_trt, precision="fp16")
    assert p.device == "gpu" and not p.use_tensorrt and p.precision == "fp32"
    assert any("TensorRT is not available" in n for n in p.notes)
    with pytest.raises(PredictorError, match="needs TensorRT"):
        plan(make_manifest("int8"), no_trt)


# --- CPU fallback -------------------------------------------------------------------------------


def test_fp16_without_gpu_falls_back_to_fp32_on_cpu_with_a_note():
    p = plan(make_manifest(), CPU_ONLY, precision="fp16")
    assert p.device == "cpu" and p.precision == "fp32" and not p.use_tensorrt
    assert p.use_mkldnn and not p.use_mkldnn_int8
    assert "FP16 requested but no GPU: running FP32 on CPU" in p.notes
    assert p.cpu_threads == 2
    assert p.engine_cache_dir is None


def test_int8_bundle_on_cpu_uses_onednn_int8():
    p = plan(make_manifest("int8"), CPU_ONLY, threads=1)
    assert (p.device, p.precision, p.use_mkldnn, p.use_mkldnn_int8, p.cpu_threads) == ("cpu", "int8", True, True, 1)


def test_int8_bundle_in_fp32_on_cpu_says_it_is_slower():
    p = plan(make_manifest("int8"), CPU_ONLY, precision="fp32")
    assert p.precision == "fp32" and not p.use_mkldnn_int8
    assert any("computed in float" in n for n in p.notes)


def test_device_cpu_on_a_gpu_machine_is_honoured():
    p = plan(make_manifest(), XAVIER, device="cpu", threads=3)
    assert p.device == "cpu" and p.cpu_threads == 3 and not p.use_tensorrt


def test_auto_on_cuda_build_without_visible_gpu_runs_on_cpu():
    p = plan(make_manifest(), dataclasses.replace(XAVIER, compute_capability=None))
    assert p.device == "cpu"
    assert any("no GPU is visible" in n for n in p.notes)


# --- the thin parts -----------------------------------------------------------------------------


def test_cache_folder_must_be_writable(tmp_path):
    folder = tmp_path / "engines" / "x"
    assert check_cache_writable(folder) is False
    (folder / "engine.trt").write_bytes(b"x")
    assert check_cache_writable(folder) is True
    if os.geteuid() == 0:
        blocker = tmp_path / "file"
        blocker.write_text("not a folder")
        with pytest.raises(PredictorError, match=str(blocker)):
            check_cache_writable(blocker / "sub")
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(PredictorError, match=str(locked)):
            check_cache_writable(locked)


def test_probe_environment_reads_this_paddle():
    import paddle

    from device.predictor import probe_environment

    env = probe_environment()
    assert env.paddle_version == paddle.__version__
    assert env.with_cuda == paddle.is_compiled_with_cuda()
    assert env.cpu_count >= 1


def test_apply_plan_builds_a_cpu_predictor_from_the_bundle(tiny_bundle):
    from edge_sdk.bundle import open_bundle

    with open_bundle(tiny_bundle) as bundle:
        p = plan(bundle.manifest, CPU_ONLY, threads=1, bundle_sha256=bundle.sha256)
        messages = []
        predictor = apply_plan(
            p, (bundle.path_of("model/model.pdmodel"), bundle.path_of("model/model.pdiparams")), messages.append
        )
        assert sorted(predictor.get_input_names()) == ["im_shape", "image", "scale_factor"]
        h, w = bundle.manifest.input.size
        inputs = {
            "image": np.zeros((1, 3, h, w), np.float32),
            "im_shape": np.array([[h, w]], np.float32),
            "scale_factor": np.array([[1.0, 1.0]], np.float32),
        }
        for name in predictor.get_input_names():
            handle = predictor.get_input_handle(name)
            handle.reshape(list(inputs[name].shape))
            handle.copy_from_cpu(inputs[name])
        predictor.run()
        boxes = predictor.get_output_handle(predictor.get_output_names()[0]).copy_to_cpu()
        assert boxes.ndim == 2 and boxes.shape[1] == 6
        assert any("running FP32 on CPU" in m for m in messages)


def test_apply_plan_names_a_missing_model_file(tmp_path):
    program, params = tmp_path / "model.pdmodel", tmp_path / "model.pdiparams"
    program.write_bytes(b"")
    p = plan(make_manifest(), CPU_ONLY, threads=1)
    with pytest.raises(PredictorError, match="model.pdiparams"):
        apply_plan(p, (program, params), None)


@pytest.mark.gpu
def test_apply_plan_builds_a_tensorrt_predictor(tiny_bundle, tmp_path):
    from device.predictor import probe_environment
    from edge_sdk.bundle import open_bundle

    env = probe_environment()
    if env.tensorrt_version is None:
        pytest.skip("Paddle without TensorRT")
    with open_bundle(tiny_bundle) as bundle:
        p = plan(bundle.manifest, env, precision="fp16", cache_root=tmp_path, bundle_sha256=bundle.sha256)
        messages = []
        paths = (bundle.path_of("model/model.pdmodel"), bundle.path_of("model/model.pdiparams"))
        predictor = apply_plan(p, paths, messages.append)
        assert any("building the TensorRT engine" in m for m in messages)
        h, w = bundle.manifest.input.size
        feed = {
            "image": np.zeros((1, 3, h, w), np.float32),
            "im_shape": np.array([[h, w]], np.float32),
            "scale_factor": np.array([[1.0, 1.0]], np.float32),
        }
        for name in predictor.get_input_names():
            predictor.get_input_handle(name).copy_from_cpu(feed[name])
        predictor.run()
        assert any(Path(p.engine_cache_dir).iterdir())
