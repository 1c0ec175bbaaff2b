"""Shared fixtures: a tiny exported YOLOv3 and its bundle; the `gpu` and `workstation` markers' skip rules.

`tiny_bundle` (session scope) is a Path to a bundle of build_yolov3("mobilenet_v1", 6, width=0.125)
with paddle.seed(0) weights (untrained, so its detections are arbitrary but deterministic, and there
are some above the default thresholds), exported at 96x96 with the PCB defect class names. It is
made from TINY_BUNDLE, checked in, so the robot-side tests need neither compress nor paddleslim
(tests/compress/tiny_export.py rewrites it; tests/compress overrides these fixtures with a fresh export).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import signal
from pathlib import Path

import pytest

# A suite started as a background job (`make test &`) inherits SIGINT ignored, and so would every
# process its tests start: the Ctrl-C tests need the default, as in a terminal or CI.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

import edge_sdk  # noqa: F401  (imports zlib before anything imports paddle)

TINY_ARCH = "mobilenet_v1"
TINY_WIDTH = 0.125
TINY_INPUT_SIZE = (96, 96)
TINY_CLASSES = ("missing_hole", "mouse_bite", "open_circuit", "short", "spur", "spurious_copper")
TINY_BUNDLE = Path(__file__).resolve().parent / "data" / "tiny-0.1.0.edgebundle"
OLD_FORMAT_TINY_BUNDLE = Path(__file__).resolve().parent / "data" / "tiny-0.1.0-xz-tar.edgebundle"
"""The tiny bundle as written before each file had its own codec (the whole tar in xz streams): it must keep opening."""
TINY_MODEL_MEMBERS = ("model/model.pdmodel", "model/model.pdiparams", "model/model.layers.json")


def _gpu_available() -> bool:
    import paddle

    if not paddle.device.is_compiled_with_cuda():
        return False
    try:
        return paddle.device.cuda.device_count() > 0
    except Exception:
        return False


def _skip_marked(items, marker: str, available, reason: str) -> None:
    marked = [item for item in items if item.get_closest_marker(marker) is not None]
    if marked and not available():
        for item in marked:
            item.add_marker(pytest.mark.skip(reason=reason))


def pytest_collection_modifyitems(config, items):
    """Skip tests marked `gpu` without a CUDA build of Paddle and a visible GPU, and tests marked
    `workstation` where paddleslim is not installed (the robot's install)."""
    _skip_marked(items, "gpu", _gpu_available, "needs a CUDA GPU (Paddle without CUDA or no GPU visible)")
    _skip_marked(
        items,
        "workstation",
        lambda: importlib.util.find_spec("paddleslim") is not None,
        "needs the workstation install (paddleslim); the robot's has none",
    )


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """Folder holding model.pdmodel, model.pdiparams and model.layers.json of the tiny model, exported at 96x96."""
    import shutil

    from edge_sdk.bundle import open_bundle

    out_dir = tmp_path_factory.mktemp("tiny_model")
    with open_bundle(TINY_BUNDLE) as bundle:
        for member in TINY_MODEL_MEMBERS:
            shutil.copyfile(str(bundle.path_of(member)), str(out_dir / Path(member).name))
    return out_dir


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory) -> Path:
    """Path to an unsigned fp32 bundle "tiny-0.1.0" of the tiny model (96x96 input, 6 PCB classes),
    written now by this SDK (created_at, sdk_version and paddle_version are today's)."""
    from edge_sdk.bundle import open_bundle, write_bundle

    out_path = tmp_path_factory.mktemp("tiny_bundle") / TINY_BUNDLE.name
    with open_bundle(TINY_BUNDLE) as bundle:
        manifest = dataclasses.replace(bundle.manifest, created_at="", sdk_version="", paddle_version="")
        return Path(write_bundle(out_path, manifest, {member: bundle.path_of(member) for member in TINY_MODEL_MEMBERS}))
