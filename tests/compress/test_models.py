"""YOLOv3 models: PaddleDetection layout at width 1.0, tiny forwards, checkpoint loading, cost counters."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

import edge_sdk  # noqa: F401  (zlib before paddle)

paddle = pytest.importorskip("paddle")

from compress.flops import count_params, model_flops  # noqa: E402
from compress.models import ARCHS, DEFAULT_ANCHORS, build_yolov3, load_pretrained  # noqa: E402
from edge_sdk.errors import DataError, RecipeError  # noqa: E402

# PaddleDetection YOLOv3 state-dict names and shapes at 80 classes (copied from shared/).
NAMES_DIR = Path(__file__).parent / "data"


def _names_json(arch: str) -> Path:
    path = NAMES_DIR / "yolov3_{}.names.json".format(arch)
    assert path.is_file(), "{} is missing".format(path)
    return path


@pytest.mark.parametrize("arch", ARCHS)
def test_layout_equals_paddledetection_at_width_1(arch):
    expected = json.loads(_names_json(arch).read_text())
    paddle.seed(0)
    model = build_yolov3(arch, 80, width=1.0)
    got = {key: list(value.shape) for key, value in model.state_dict().items()}
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    wrong = [
        "{}: {} != {}".format(k, got[k], expected[k]) for k in sorted(set(got) & set(expected)) if got[k] != expected[k]
    ]
    assert not (missing or extra or wrong), "missing {}\nextra {}\nwrong shape {}".format(
        missing[:20], extra[:20], wrong[:20]
    )


@pytest.mark.parametrize(
    "arch,width,size", [("darknet53", 0.125, 64), ("mobilenet_v1", 0.25, 96), ("mobilenet_v3_large", 0.25, 96)]
)
def test_tiny_forward_shapes_and_attributes(arch, width, size):
    paddle.seed(0)
    model = build_yolov3(arch, 6, width=width)
    model.eval()
    with paddle.no_grad():
        outs = model(paddle.rand([2, 3, size, size]))
    assert [list(o.shape) for o in outs] == [[2, 33, size // s, size // s] for s in (32, 16, 8)]
    assert all(np.isfinite(o.numpy()).all() for o in outs)
    assert model.arch == arch and model.width == width and model.num_classes == 6
    assert model.anchors == [list(a) for a in DEFAULT_ANCHORS]
    assert model.anchor_masks == [[6, 7, 8], [3, 4, 5], [0, 1, 2]]
    assert model.downsample_ratios == [32, 16, 8]
    assert model.mask_anchors[0] == [116, 90, 156, 198, 373, 326]
    for part in (model.backbone, model.neck, model.yolo_head):
        assert isinstance(part, paddle.nn.Layer)
    # the width multiplier shrinks the neck too (the 512/1024-channel yolo_blocks at width 1)
    assert model.neck.out_channels == [1024 * width, 512 * width, 256 * width]


def test_width_shrinks_the_model():
    small = count_params(build_yolov3("mobilenet_v1", 6, width=0.25))
    full = count_params(build_yolov3("mobilenet_v1", 6, width=1.0))
    assert 10 < full / small < 20  # roughly width**-2


def test_anchor_override_and_bad_arguments():
    anchors = [[a / 4.0, b / 4.0] for a, b in DEFAULT_ANCHORS]
    model = build_yolov3("mobilenet_v1", 2, width=0.125, anchors=anchors)
    assert model.mask_anchors[2] == [2.5, 3.25, 4.0, 7.5, 8.25, 5.75]
    with pytest.raises(RecipeError, match="unknown architecture 'resnet50'"):
        build_yolov3("resnet50", 6)
    with pytest.raises(RecipeError, match="anchors"):
        build_yolov3("mobilenet_v1", 6, anchors=anchors[:6])
    with pytest.raises(RecipeError, match="num_classes"):
        build_yolov3("mobilenet_v1", 0)


@pytest.fixture(scope="module")
def coco_checkpoint(tmp_path_factory):
    """(model, path): an 80-class tiny MobileNetV1 YOLOv3 and its saved state dict."""
    paddle.seed(1)
    model = build_yolov3("mobilenet_v1", 80, width=0.25)
    path = tmp_path_factory.mktemp("ckpt") / "coco80.pdparams"
    paddle.save(model.state_dict(), str(path))
    return model, path


def test_load_same_classes_copies_everything(coco_checkpoint):
    source, path = coco_checkpoint
    paddle.seed(2)
    model = build_yolov3("mobilenet_v1", 80, width=0.25)
    report = load_pretrained(model, str(path))
    assert report.reinitialised == [] and report.messages == [] and report.unexpected == []
    assert len(report.loaded) == len(model.state_dict())
    for key, value in source.state_dict().items():
        np.testing.assert_array_equal(model.state_dict()[key].numpy(), value.numpy(), err_msg=key)


def test_load_other_class_count_reinitialises_only_the_head(coco_checkpoint, caplog):
    source, path = coco_checkpoint
    paddle.seed(3)
    model = build_yolov3("mobilenet_v1", 6, width=0.25)
    head_keys = ["yolo_head.yolo_output.{}.{}".format(i, p) for i in range(3) for p in ("weight", "bias")]
    with caplog.at_level(logging.WARNING):
        report = load_pretrained(model, str(path))
    assert sorted(report.reinitialised) == sorted(head_keys)
    assert report.checkpoint_classes == 80
    assert any("re-initialised" in m and "80 classes" in m for m in report.messages)
    assert "re-initialised" in caplog.text
    state = model.state_dict()
    source_state = source.state_dict()
    for key in state:
        if key in head_keys:
            assert state[key].shape[0] == 33
        else:
            np.testing.assert_array_equal(state[key].numpy(), source_state[key].numpy(), err_msg=key)
    weight = state["yolo_head.yolo_output.0.weight"].numpy()
    assert weight.std() > 0 and np.all(state["yolo_head.yolo_output.0.bias"].numpy() == 0)


def test_load_errors_name_the_key(coco_checkpoint, tmp_path):
    _, path = coco_checkpoint
    with pytest.raises(DataError, match=r"backbone\.conv1\._conv\.weight has shape \[8, 3, 3, 3\].*\[16, 3, 3, 3\]"):
        load_pretrained(build_yolov3("mobilenet_v1", 80, width=0.5), str(path))
    with pytest.raises(DataError, match=r"no parameter backbone\.conv0\.conv\.weight"):
        load_pretrained(build_yolov3("darknet53", 80, width=0.25), str(path))
    state = paddle.load(str(path))
    del state["neck.yolo_transition.1.batch_norm._mean"]
    partial = tmp_path / "partial.pdparams"
    paddle.save(state, str(partial))
    model = build_yolov3("mobilenet_v1", 80, width=0.25)
    before = model.state_dict()["backbone.conv1._conv.weight"].numpy().copy()
    with pytest.raises(DataError, match=r"neck\.yolo_transition\.1\.batch_norm\._mean"):
        load_pretrained(model, str(partial))
    np.testing.assert_array_equal(model.state_dict()["backbone.conv1._conv.weight"].numpy(), before)  # all or nothing
    with pytest.raises(DataError, match="not found"):
        load_pretrained(model, str(tmp_path / "missing.pdparams"))
    garbage = tmp_path / "garbage.pdparams"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match="cannot read"):
        load_pretrained(model, str(garbage))


def test_flops_counts_twice_the_multiply_adds():
    layer = paddle.nn.Sequential(paddle.nn.Conv2D(3, 8, 3, padding=1), paddle.nn.Conv2D(8, 8, 3, padding=1, groups=8))
    assert model_flops(layer, (16, 20)) == 2 * (8 * 16 * 20 * 3 * 9 + 8 * 16 * 20 * 1 * 9)
    assert count_params(layer) == 8 * 3 * 9 + 8 + 8 * 9 + 8
    model = build_yolov3("mobilenet_v1", 6, width=0.25)
    model.train()
    small, large = model_flops(model, (96, 96)), model_flops(model, (192, 192))
    assert model.training  # state restored
    assert large == pytest.approx(4 * small, rel=1e-6)
