"""The tiny YOLOv3 of the tests, built and exported with compress (workstation only).

`python -m tests.compress.tiny_export` rewrites tests/data/tiny-0.1.0.edgebundle, the checked-in
export the robot-side tests use (they run without compress); test_export checks it is current.
"""

from __future__ import annotations

from pathlib import Path
from typing import Union

from tests.conftest import TINY_ARCH, TINY_BUNDLE, TINY_CLASSES, TINY_INPUT_SIZE, TINY_WIDTH


def build_tiny_model():
    """build_yolov3(TINY_ARCH, 6 classes, width=TINY_WIDTH) with paddle.seed(0) weights, in eval mode."""
    import paddle

    from compress.models import build_yolov3

    paddle.seed(0)
    model = build_yolov3(TINY_ARCH, len(TINY_CLASSES), width=TINY_WIDTH)
    model.eval()
    return model


def export_tiny_bundle(model, out_path: Union[str, Path]) -> Path:
    """The unsigned fp32 bundle "tiny-0.1.0" of `model` at TINY_INPUT_SIZE, written to `out_path`."""
    from compress.export import export_bundle

    return export_bundle(model, TINY_CLASSES, TINY_INPUT_SIZE, out_path, "tiny", "0.1.0")


if __name__ == "__main__":
    print(export_tiny_bundle(build_tiny_model(), TINY_BUNDLE))
