"""Export: decoding against a numpy reference, the exported program against dygraph, bundles, the CLI."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import edge_sdk  # noqa: F401  (zlib before paddle)

paddle = pytest.importorskip("paddle")

from compress.export import InferenceModel, export_bundle, export_inference, tensorrt_hints  # noqa: E402
from compress.models import build_yolov3  # noqa: E402
from edge_sdk.errors import RecipeError  # noqa: E402
from edge_sdk.manifest import Postprocess, StageMetrics  # noqa: E402

NUM_CLASSES = 4
SIZE = 96
# Two images of different original sizes (height, width) resized (stretched) to 96x96.
ORIGINAL_SIZES = np.array([[150, 200], [96, 64]], dtype="float32")


def _set_objectness_bias(model, per_level_bias):
    """Objectness bias of every anchor of level i := per_level_bias[i][anchor]."""
    for conv, biases in zip(model.yolo_head.yolo_outputs, per_level_bias):
        bias = conv.bias.numpy().reshape(3, 5 + model.num_classes)
        bias[:, 4] = biases
        conv.bias.set_value(bias.reshape(-1))


@pytest.fixture(scope="module")
def biased_model():
    """A tiny model whose only confident boxes come from anchor 2 of the stride-32 level (3x3 cells)."""
    paddle.seed(5)
    model = build_yolov3("mobilenet_v1", NUM_CLASSES, width=0.125)
    model.eval()
    _set_objectness_bias(model, [[-12, -12, 4], [-12] * 3, [-12] * 3])
    return model


def _inputs(seed=0):
    image = np.random.RandomState(seed).rand(2, 3, SIZE, SIZE).astype("float32")
    im_shape = np.full((2, 2), SIZE, dtype="float32")
    scale_factor = (SIZE / ORIGINAL_SIZES).astype("float32")
    return image, im_shape, scale_factor


def _run_predictor(pdmodel, pdiparams, arrays):
    from paddle.inference import Config, create_predictor

    config = Config(str(pdmodel), str(pdiparams))
    config.disable_gpu()
    config.disable_glog_info()
    config.set_cpu_math_library_num_threads(1)
    predictor = create_predictor(config)
    assert predictor.get_input_names() == ["image", "im_shape", "scale_factor"]
    for name, array in zip(predictor.get_input_names(), arrays):
        predictor.get_input_handle(name).copy_from_cpu(array)
    predictor.run()
    return [predictor.get_output_handle(n).copy_to_cpu() for n in predictor.get_output_names()]


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _reference_decode(head_outs, original_hw, num_classes, conf_threshold):
    """YOLOv3 decoding in numpy, written from the paper's formulas and PaddleDetection's defaults."""
    levels = (
        (32, [(116, 90), (156, 198), (373, 326)]),
        (16, [(30, 61), (62, 45), (59, 119)]),
        (8, [(10, 13), (16, 30), (33, 23)]),
    )
    img_h, img_w = original_hw
    boxes, scores = [], []
    for head, (stride, anchors) in zip(head_outs, levels):
        _, grid_h, grid_w = head.shape
        head = head.reshape(3, 5 + num_classes, grid_h, grid_w)
        cols, rows = np.meshgrid(np.arange(grid_w), np.arange(grid_h))
        for a, (anchor_w, anchor_h) in enumerate(anchors):
            t = head[a]
            cx = (cols + _sigmoid(t[0])) * img_w / grid_w
            cy = (rows + _sigmoid(t[1])) * img_h / grid_h
            bw = np.exp(t[2]) * anchor_w * img_w / (stride * grid_w)
            bh = np.exp(t[3]) * anchor_h * img_h / (stride * grid_h)
            xyxy = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], axis=-1)
            xyxy[..., [0, 2]] = np.clip(xyxy[..., [0, 2]], 0, img_w - 1)
            xyxy[..., [1, 3]] = np.clip(xyxy[..., [1, 3]], 0, img_h - 1)
            objectness = _sigmoid(t[4])
            cls = objectness[None] * _sigmoid(t[5:])
            keep = objectness >= conf_threshold
            boxes.append((xyxy * keep[..., None]).reshape(-1, 4))
            scores.append((cls * keep[None]).reshape(num_classes, -1))
    return np.concatenate(boxes), np.concatenate(scores, axis=1)


def test_decode_matches_numpy_reference(biased_model):
    image, im_shape, scale_factor = _inputs()
    wrapper = InferenceModel(biased_model)
    with paddle.no_grad():
        heads = biased_model(paddle.to_tensor(image))
        boxes, scores = wrapper.decode(heads, paddle.to_tensor(im_shape), paddle.to_tensor(scale_factor))
    assert list(boxes.shape) == [2, 3 * (9 + 36 + 144), 4] and list(scores.shape) == [2, NUM_CLASSES, 567]
    for n in range(2):
        original = np.floor(im_shape[n] / scale_factor[n])  # PaddleDetection casts im_shape / scale_factor to int
        ref_boxes, ref_scores = _reference_decode([h.numpy()[n] for h in heads], original, NUM_CLASSES, 0.005)
        np.testing.assert_allclose(boxes.numpy()[n], ref_boxes, rtol=1e-4, atol=1e-2)
        np.testing.assert_allclose(scores.numpy()[n], ref_scores, rtol=1e-4, atol=1e-6)
        assert (ref_scores > 0.005).sum() >= 9  # the biased anchor gives real candidates


def test_exported_program_matches_dygraph(biased_model, tmp_path):
    biased_model.train()
    pdmodel, pdiparams = export_inference(biased_model, (SIZE, SIZE), tmp_path, Postprocess())
    assert biased_model.training  # state restored
    biased_model.eval()
    assert pdmodel == tmp_path / "model.pdmodel" and pdiparams.is_file()
    assert b"op_callstack" not in pdmodel.read_bytes() and b".py" not in pdmodel.read_bytes()
    arrays = _inputs()
    boxes, bbox_num = _run_predictor(pdmodel, pdiparams, arrays)
    with paddle.no_grad():
        ref_boxes, ref_num = InferenceModel(biased_model)(*[paddle.to_tensor(a) for a in arrays])
    ref_boxes, ref_num = ref_boxes.numpy(), ref_num.numpy()
    assert boxes.shape[1] == 6 and bbox_num.dtype == np.int32
    assert bbox_num.tolist() == ref_num.tolist() and bbox_num.sum() == boxes.shape[0]
    assert all(0 < k <= 9 * NUM_CLASSES for k in bbox_num)
    np.testing.assert_allclose(boxes, ref_boxes, rtol=1e-4, atol=1e-2)
    start = 0
    for n, k in enumerate(bbox_num):
        rows = boxes[start : start + k]
        start += k
        height, width = ORIGINAL_SIZES[n]
        assert set(rows[:, 0].astype(int)) <= set(range(NUM_CLASSES))
        assert np.all(rows[:, 1] >= 0.005) and np.all(rows[:, 1] <= 1)
        assert np.all(rows[:, 2] >= 0) and np.all(rows[:, 4] <= width - 1)
        assert np.all(rows[:, 3] >= 0) and np.all(rows[:, 5] <= height - 1)
        assert np.all(rows[:, 4] >= rows[:, 2]) and np.all(rows[:, 5] >= rows[:, 3])
    # original-pixel coordinates: the 200-px-wide image has boxes beyond the 96-px network input
    assert boxes[: bbox_num[0], 4].max() > SIZE


def test_exported_program_with_no_detection(tmp_path):
    paddle.seed(6)
    model = build_yolov3("mobilenet_v1", NUM_CLASSES, width=0.125)
    model.eval()
    _set_objectness_bias(model, [[-30] * 3] * 3)
    pdmodel, pdiparams = export_inference(model, (SIZE, SIZE), tmp_path)
    boxes, bbox_num = _run_predictor(pdmodel, pdiparams, _inputs())
    assert boxes.shape == (0, 6)
    assert bbox_num.tolist() == [0, 0]


def test_tiny_bundle_manifest_and_model(tiny_bundle, tiny_model):
    from edge_sdk.bundle import open_bundle

    with open_bundle(tiny_bundle) as bundle:
        manifest = bundle.manifest
        assert manifest.architecture == "yolov3_mobilenet_v1"
        assert len(manifest.classes) == 6 and manifest.precision == "fp32"
        spec = manifest.input
        assert spec.size == (96, 96) and spec.resize_mode == "stretch" and spec.interpolation == "cubic"
        assert spec.channel_order == "RGB" and spec.scale is True
        assert spec.mean == (0.485, 0.456, 0.406) and spec.std == (0.229, 0.224, 0.225)
        assert manifest.postprocess == Postprocess(conf_threshold=0.005, nms_iou=0.45, nms_top_k=100, keep_top_k=100)
        trt = manifest.tensorrt
        assert trt.min_subgraph_size == 3 and trt.workspace_bytes == 1 << 30
        assert trt.dynamic_shapes["image"].opt == (1, 3, 96, 96) and trt.dynamic_shapes["im_shape"].max == (1, 2)
        assert trt.dynamic_shapes["scale_factor"].min == (1, 2)
        assert {f.path for f in manifest.files} == {
            "model/model.pdmodel",
            "model/model.pdiparams",
            "model/model.layers.json",
        }
        names = json.loads(bundle.path_of("model/model.layers.json").read_text())
        assert any(name.startswith("yolo_head.") for name in names.values()), names
        assert not any("conv2d_" in name for name in names.values()), names
        arrays = [a[:1] for a in _inputs(seed=1)]
        boxes, bbox_num = _run_predictor(
            bundle.path_of("model/model.pdmodel"), bundle.path_of("model/model.pdiparams"), arrays
        )
    with paddle.no_grad():
        ref_boxes, ref_num = InferenceModel(tiny_model)(*[paddle.to_tensor(a) for a in arrays])
    assert bbox_num.tolist() == ref_num.numpy().tolist() and bbox_num[0] > 0
    np.testing.assert_allclose(boxes, ref_boxes.numpy(), rtol=1e-4, atol=1e-2)


def test_the_nms_candidate_cap_keeps_a_trained_models_boxes(tiny_model):
    """The export's 100 candidates per class (EXPORT_POSTPROCESS) against PaddleDetection's 1000: at a floor
    where the model has as many candidates as a trained one (the demo's: at most 35 per image), the boxes
    are the same."""
    from compress.export import EXPORT_POSTPROCESS
    from edge_sdk.manifest import Postprocess

    assert EXPORT_POSTPROCESS.nms_top_k == 100 and Postprocess().nms_top_k == 1000
    arrays = [paddle.to_tensor(a) for a in _inputs(seed=3)]
    with paddle.no_grad():
        _boxes, scores = InferenceModel(tiny_model, Postprocess(conf_threshold=0.0)).decode(
            tiny_model(arrays[0]), arrays[1], arrays[2]
        )
        per_image = np.sort(scores.numpy().reshape(scores.shape[0], -1), axis=1)[:, ::-1]
        assert (per_image > EXPORT_POSTPROCESS.conf_threshold).all()  # seeded: every candidate passes the floor
        trained_like = float(per_image[:, 35].max())  # at most 35 candidates in any image
        outputs = {}
        for top_k in (1000, EXPORT_POSTPROCESS.nms_top_k):
            post = dataclasses.replace(EXPORT_POSTPROCESS, conf_threshold=trained_like, nms_top_k=top_k)
            boxes, bbox_num = InferenceModel(tiny_model, post)(*arrays)
            outputs[top_k] = (boxes.numpy(), bbox_num.numpy())
    assert outputs[1000][1].tolist() == outputs[100][1].tolist() and outputs[100][1].sum() > 0
    np.testing.assert_array_equal(outputs[1000][0], outputs[100][0])


def test_checked_in_tiny_bundle_is_todays_export(tmp_path):
    """tests/data's tiny bundle (what the robot-side tests use) has today's manifest and member bytes.

    Exported in a fresh process, as `python -m tests.compress.tiny_export` does: Paddle's generated
    parameter names (in model.layers.json) count the layers every earlier test of this process built."""
    import dataclasses

    from edge_sdk.bundle import open_bundle
    from tests.conftest import TINY_BUNDLE

    tiny_bundle = tmp_path / "tiny-0.1.0.edgebundle"
    code = "import sys; from tests.compress.tiny_export import *; export_tiny_bundle(build_tiny_model(), sys.argv[1])"
    subprocess.run(
        [sys.executable, "-c", code, str(tiny_bundle)],
        check=True,
        cwd=str(Path(__file__).resolve().parents[2]),
        timeout=300,
    )

    def comparable(path):
        with open_bundle(path) as bundle:
            return dataclasses.replace(bundle.manifest, created_at="", sdk_version="", paddle_version="")

    assert comparable(TINY_BUNDLE) == comparable(tiny_bundle), "run: python -m tests.compress.tiny_export"


def test_export_bundle_options(tiny_model, tmp_path):
    from edge_sdk.bundle import open_bundle

    classes = ["a", "b", "c", "d", "e", "f"]
    post = Postprocess(conf_threshold=0.01, nms_iou=0.5, nms_top_k=500, keep_top_k=50, score_threshold=0.4)
    path = export_bundle(
        tiny_model,
        classes,
        (96, 128),
        tmp_path / "out" / "opts-2.0.edgebundle",
        "opts",
        "2.0",
        postprocess=post,
        metrics=[StageMetrics(stage="train", map50=0.5, flops=1.0)],
        extra_files={"calibration/golden/readme.txt": b"hello"},
        tensorrt=tensorrt_hints((96, 128), max_batch=4),
    )
    with open_bundle(path) as bundle:
        manifest = bundle.manifest
        assert manifest.name == "opts" and manifest.version == "2.0" and manifest.classes == tuple(classes)
        assert manifest.input.size == (96, 128) and manifest.postprocess == post
        assert manifest.stage("train").map50 == 0.5
        assert manifest.tensorrt.dynamic_shapes["image"].max == (4, 3, 96, 128)
        assert bundle.path_of("calibration/golden/readme.txt").read_bytes() == b"hello"
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["opts-2.0.edgebundle"]  # no export leftovers
    with pytest.raises(RecipeError, match="3 class names"):
        export_bundle(tiny_model, classes[:3], (96, 96), tmp_path / "bad.edgebundle", "bad", "1")


GLOG_LINE = re.compile(r"^[IWE]\d{4} \d\d:\d\d:\d\d", re.MULTILINE)


def _cli(*args, timeout=240):
    code = "import sys; from edge_cli import main; sys.argv = ['edge-sdk'] + sys.argv[1:]; main()"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    paddle.seed(7)
    model = build_yolov3("mobilenet_v3_large", 3, width=0.25)
    path = tmp_path_factory.mktemp("cli") / "tiny3.pdparams"
    paddle.save(model.state_dict(), str(path))
    return path


def test_cli_export_writes_a_bundle(tiny_checkpoint, tmp_path):
    from edge_sdk.bundle import open_bundle

    out = tmp_path / "pcb-1.0.edgebundle"
    result = _cli(
        "export", "--arch", "mobilenet_v3_large", "--weights", str(tiny_checkpoint), "--num-classes", "3",
        "--input-size", "96x128", "--width", "0.25", "--classes", "short,spur,open", "--out", str(out),
        "--name", "pcb", "--version", "1.0",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "wrote" in result.stdout
    assert "exporting at 96x128 and writing {}".format(out) in result.stderr.splitlines()  # said in a log too
    assert not GLOG_LINE.search(result.stderr), result.stderr  # Paddle's "New Executor is Running" hidden
    with open_bundle(out) as bundle:
        manifest = bundle.manifest
        assert manifest.classes == ("short", "spur", "open") and manifest.architecture == "yolov3_mobilenet_v3_large"
        assert manifest.input.size == (96, 128) and manifest.name == "pcb" and manifest.version == "1.0"
        export_stage = manifest.stage("export")
        assert export_stage.flops > 0 and export_stage.params > 0


@pytest.mark.parametrize(
    "change,message",
    [
        ({"--weights": "missing.pdparams"}, "weights file not found"),
        ({"--arch": "resnet50"}, "unknown architecture 'resnet50'"),
        ({"--width": "0.5"}, "has shape"),
        ({"--num-classes": "5"}, "has 3 classes, --num-classes is 5"),
        ({"--classes": "a,b"}, "--classes lists 2 names"),
        ({"--input-size": "100"}, "multiples of 32"),
        ({"--golden-images": "no-such-folder"}, "--golden-images: no-such-folder is not a folder"),
    ],
)
def test_cli_export_errors_are_one_line(tiny_checkpoint, tmp_path, change, message):
    options = {
        "--arch": "mobilenet_v3_large",
        "--weights": str(tiny_checkpoint),
        "--num-classes": "3",
        "--input-size": "96",
        "--width": "0.25",
        "--out": str(tmp_path / "x.edgebundle"),
    }
    options.update(change)
    if change.get("--weights") == "missing.pdparams":
        options["--weights"] = str(tmp_path / "missing.pdparams")
    args = ["export"] + [item for pair in options.items() for item in pair]
    result = _cli(*args)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and message in errors[0], result.stderr
    assert not (tmp_path / "x.edgebundle").exists()


def test_cli_export_says_what_an_edge_sdk_training_checkpoint_is(tiny_checkpoint, tmp_path):
    """compress's best.pdparams wraps the weights with the model's meta (anchors included, which export
    would not use): one line pointing at compress instead of "has no parameter ...", nothing written."""
    import paddle

    from compress.checkpoint import save_best
    from compress.models import DEFAULT_ANCHORS

    meta = {"arch": "mobilenet_v3_large", "width": 0.25, "anchors": DEFAULT_ANCHORS, "classes": ["a", "b", "c"]}
    best = save_best(tmp_path / "best.pdparams", paddle.load(str(tiny_checkpoint)), 3, 0.5, dict(meta, input_size=96))
    out = tmp_path / "x.edgebundle"
    result = _cli(
        "export", "--arch", "mobilenet_v3_large", "--weights", str(best), "--num-classes", "3",
        "--input-size", "96", "--width", "0.25", "--out", str(out),
    )  # fmt: skip
    assert result.returncode != 0 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [
        "error: weights file {} is an edge-sdk training checkpoint (yolov3_mobilenet_v3_large, width 0.25), "
        "not a PaddleDetection one: `edge-sdk compress` exports it (each stage's bundle is in its WORKDIR)".format(best)
    ]
    assert not out.exists()


def test_cli_export_ships_golden_images_the_robot_checks(tiny_checkpoint, tmp_path):
    from calibration.golden import self_check
    from device.golden import load_golden
    from edge_sdk.bundle import open_bundle
    from edge_sdk.data.synth import synthesize

    synthesize(tmp_path / "data", 6, seed=1, size=(128, 128), progress=False)
    out = tmp_path / "pcb-1.0.edgebundle"
    result = _cli(
        "export", "--arch", "mobilenet_v3_large", "--weights", str(tiny_checkpoint), "--num-classes", "3",
        "--input-size", "96", "--width", "0.25", "--out", str(out),
        "--golden-images", str(tmp_path / "data" / "images"), "--golden-count", "2", "--verbose",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "2 golden images" in result.stdout
    assert GLOG_LINE.search(result.stderr), result.stderr  # --verbose shows what Paddle prints
    with open_bundle(out) as bundle:
        assert len(load_golden(bundle).entries) == 2
        assert self_check(bundle) == []
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".edgebundle" or p.name.startswith(".")] == [out.name]
