"""Channel pruning: structural groups, FLOPs targeting, export of the pruned model, checkpoints, sensitivity cache."""

from __future__ import annotations

import json

import numpy as np
import pytest

import edge_sdk  # noqa: F401  (zlib before paddle)

paddle = pytest.importorskip("paddle")
pytest.importorskip("paddleslim")

from compress.checkpoint import load_trained, save_pruned  # noqa: E402
from compress.flops import model_flops  # noqa: E402
from compress.models import build_yolov3  # noqa: E402
from compress.pruning import (  # noqa: E402
    PrunePlan,
    load_pruned,
    prunable_groups,
    prune_to_target,
    rounded_ratio,
)
from compress.sensitivity import cache_key, sensitivity  # noqa: E402
from edge_sdk.errors import RecipeError  # noqa: E402

SIZE = (96, 96)
NUM_CLASSES = 6


@pytest.fixture(scope="module")
def mobilenet():
    paddle.seed(1)
    model = build_yolov3("mobilenet_v1", NUM_CLASSES, width=0.25)
    model.eval()
    return model


@pytest.fixture(scope="module")
def mobilenet_groups(mobilenet):
    return prunable_groups(mobilenet, SIZE)


@pytest.fixture(scope="module")
def pruned(mobilenet, mobilenet_groups):
    """prune_to_target at 0.5 with a made-up sensitivity: one group very sensitive, the rest not."""
    sensitive = "neck.yolo_block.0.conv_module.conv1.conv"
    sens = {g.name: {0.1: 0.0, 0.3: 0.01, 0.5: 0.02, 0.7: 0.03} for g in mobilenet_groups}
    sens[sensitive] = {0.1: 0.5, 0.3: 0.6, 0.5: 0.7, 0.7: 0.8}
    model, ratios, before, after = prune_to_target(mobilenet, SIZE, 0.5, sens, channel_multiple=8)
    return model, ratios, before, after, sensitive


def _outputs(model, seed=0):
    image = paddle.to_tensor(np.random.default_rng(seed).random((1, 3) + SIZE, dtype=np.float32))
    with paddle.no_grad():
        return [o.numpy() for o in model(image)]


def _head_outputs_excluded(groups):
    for group in groups:
        assert not any(p.startswith("yolo_head.yolo_output.") for p in group.params), group
        assert not group.name.startswith("yolo_head")


def test_mobilenet_groups_are_structural_and_tie_depthwise_convs(mobilenet_groups):
    _head_outputs_excluded(mobilenet_groups)
    by_name = {g.name: g for g in mobilenet_groups}
    assert all("conv2d_" not in g.name and "conv2d_" not in "".join(g.params) for g in mobilenet_groups)
    group = by_name["backbone.conv2_1._pointwise_conv._conv"]
    # the depthwise conv after it loses the same channels; the next pointwise conv its inputs
    assert "backbone.conv2_2._depthwise_conv._conv.weight" in group.params
    assert group.consumers == ("backbone.conv2_2._pointwise_conv._conv.weight",)
    assert group.out_channels == 16
    route = by_name["neck.yolo_block.0.conv_module.route.conv"]
    assert set(route.consumers) == {"neck.yolo_block.0.tip.conv.weight", "neck.yolo_transition.0.conv.weight"}
    tip = by_name["neck.yolo_block.0.tip.conv"]
    assert tip.consumers == ("yolo_head.yolo_output.0.weight",)
    # convs feeding a concat are not prunable (no PaddleSlim rule for concat)
    assert "neck.yolo_transition.0.conv" not in by_name
    assert "backbone.conv3_2._pointwise_conv._conv" not in by_name


def test_darknet_groups_tie_residual_trunks():
    paddle.seed(0)
    model = build_yolov3("darknet53", 3, width=0.125)
    groups = prunable_groups(model, (64, 64))
    _head_outputs_excluded(groups)
    trunks = [g for g in groups if len(g.params) > 1]
    members = {p for g in trunks for p in g.params}
    # DarkNet's stage-1 trunk: the downsample before it and every block's last conv share channels
    assert {
        "backbone.stage.0.downsample.conv_bn_layer.conv.weight",
        "backbone.stage.1.basicblock0.conv2.conv.weight",
        "backbone.stage.1.stage.1.1.conv2.conv.weight",
    } <= members
    assert any(g.name.startswith("neck.yolo_block.2") for g in groups)


def test_rounded_ratio_keeps_channels():
    assert rounded_ratio(64, 0.5, 8) == 0.5
    assert rounded_ratio(64, 0.45, 8) == 0.5  # 35.2 remaining -> 32
    assert rounded_ratio(8, 0.7, 8) == 0.0  # never below one multiple
    assert rounded_ratio(10, 0.99, 1) == 0.9  # at least one channel


def test_prune_to_target_reaches_flops_and_follows_sensitivity(mobilenet, pruned):
    model, ratios, before, after, sensitive = pruned
    assert before == model_flops(mobilenet, SIZE)
    assert after == model_flops(model, SIZE)
    assert 0.45 <= after / before <= 0.5
    insensitive = [r for name, r in ratios.items() if name != sensitive]
    assert ratios.get(sensitive, 0.0) < np.median(insensitive)
    # the source model is untouched
    assert model_flops(mobilenet, SIZE) == before
    assert all(list(o.shape) == list(p.shape) for o, p in zip(_outputs(model), _outputs(mobilenet)))
    assert not [k for k in model.state_dict() if k.endswith("_backup")]


def test_pruned_model_exports_and_runs_in_paddle_inference(pruned, tmp_path):
    from paddle import inference

    from compress.export import export_inference

    model = pruned[0]
    pdmodel, pdiparams = export_inference(model, SIZE, tmp_path)
    config = inference.Config(str(pdmodel), str(pdiparams))
    config.disable_gpu()
    config.disable_glog_info()
    predictor = inference.create_predictor(config)
    inputs = {
        "image": np.random.default_rng(0).random((1, 3) + SIZE, dtype=np.float32),
        "im_shape": np.array([SIZE], np.float32),
        "scale_factor": np.array([[1.0, 1.0]], np.float32),
    }
    for name in predictor.get_input_names():
        predictor.get_input_handle(name).copy_from_cpu(inputs[name])
    predictor.run()
    boxes = predictor.get_output_handle(predictor.get_output_names()[0]).copy_to_cpu()
    assert boxes.ndim == 2 and boxes.shape[1] == 6


def test_pruned_checkpoint_round_trip(pruned, tmp_path):
    model = pruned[0]
    path = save_pruned(model, tmp_path / "pruned.pdparams", extra={"classes": ["a"] * NUM_CLASSES})
    plan = json.loads(json.dumps(model.prune_plan.to_dict()))  # the plan is plain JSON
    restored = load_trained(path)
    for a, b in zip(_outputs(model), _outputs(restored)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    again = load_pruned(PrunePlan.from_dict(plan), model.state_dict())
    assert model_flops(again, SIZE) == pruned[3]
    saved = paddle.load(str(path))
    assert saved["classes"] == ["a"] * NUM_CLASSES


def test_unreachable_target_is_a_recipe_error(mobilenet):
    with pytest.raises(RecipeError, match="out of reach"):
        prune_to_target(mobilenet, SIZE, 0.1, None, max_ratio=0.2)


def test_sensitivity_is_cached_and_restores_weights(mobilenet, mobilenet_groups, tmp_path):
    reference = _outputs(mobilenet, seed=3)
    image = paddle.to_tensor(np.random.default_rng(3).random((1, 3) + SIZE, dtype=np.float32))
    calls = []

    def agreement(model):
        """1 - mean |output - reference output| on a fixed image (a stand-in metric that pruning lowers)."""
        calls.append(1)
        with paddle.no_grad():
            outs = model(image)
        return 1.0 - float(np.mean([np.abs(o.numpy() - r).mean() for o, r in zip(outs, reference)]))

    cache = tmp_path / "sens.json"
    first = sensitivity(mobilenet, agreement, SIZE, ratios=(0.3, 0.6), cache_path=cache, val_key="subset-a")
    assert set(first) == {g.name for g in mobilenet_groups}
    assert len(calls) == 1 + 2 * len(mobilenet_groups)
    assert all(losses[0.6] > 0 for losses in first.values())
    assert cache.is_file() and cache.with_suffix(".png").is_file()
    for a, b in zip(_outputs(mobilenet, seed=3), reference):
        np.testing.assert_array_equal(a, b)

    calls.clear()
    second = sensitivity(mobilenet, agreement, SIZE, ratios=(0.3, 0.6), cache_path=cache, val_key="subset-a")
    assert calls == []
    assert second == first
    key = cache_key(mobilenet, "subset-a", (0.3, 0.6), SIZE)
    assert key in json.loads(cache.read_text())["entries"]
    assert key != cache_key(mobilenet, "subset-b", (0.3, 0.6), SIZE) != cache_key(mobilenet, "subset-a", (0.3,), SIZE)
