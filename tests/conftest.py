"""Shared fixtures: a tiny exported YOLOv3 and its bundle; the `gpu` marker's skip rule.

`tiny_bundle` (session scope) is a Path to a bundle of build_yolov3("mobilenet_v1", 6, width=0.125)
with paddle.seed(0) weights (untrained, so its detections are arbitrary but deterministic, and there
are some above the default thresholds), exported at 96x96 with the PCB defect class names.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import edge_sdk  # noqa: F401  (imports zlib before anything imports paddle)

TINY_ARCH = "mobilenet_v1"
TINY_WIDTH = 0.125
TINY_INPUT_SIZE = (96, 96)
TINY_CLASSES = ("missing_hole", "mouse_bite", "open_circuit", "short", "spur", "spurious_copper")


def _gpu_available() -> bool:
    import paddle

    if not paddle.device.is_compiled_with_cuda():
        return False
    try:
        return paddle.device.cuda.device_count() > 0
    except Exception:
        return False


def pytest_collection_modifyitems(config, items):
    """Skip tests marked `gpu` without a CUDA build of Paddle and a visible GPU."""
    gpu_items = [item for item in items if item.get_closest_marker("gpu") is not None]
    if not gpu_items or _gpu_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (Paddle without CUDA or no GPU visible)")
    for item in gpu_items:
        item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_model():
    """The tiny YOLOv3 (eval mode) behind `tiny_bundle`; do not modify it in a test."""
    import paddle

    from compress.models import build_yolov3

    paddle.seed(0)
    model = build_yolov3(TINY_ARCH, len(TINY_CLASSES), width=TINY_WIDTH)
    model.eval()
    return model


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_model, tmp_path_factory) -> Path:
    """Folder holding model.pdmodel and model.pdiparams of the tiny model, exported at 96x96."""
    from compress.export import export_inference

    out_dir = tmp_path_factory.mktemp("tiny_model")
    export_inference(tiny_model, TINY_INPUT_SIZE, out_dir)
    return out_dir


@pytest.fixture(scope="session")
def tiny_bundle(tiny_model, tmp_path_factory) -> Path:
    """Path to an unsigned fp32 bundle "tiny-0.1.0" of the tiny model (96x96 input, 6 PCB classes)."""
    from compress.export import export_bundle

    out_dir = tmp_path_factory.mktemp("tiny_bundle")
    return export_bundle(tiny_model, TINY_CLASSES, TINY_INPUT_SIZE, out_dir / "tiny-0.1.0.edgebundle", "tiny", "0.1.0")
