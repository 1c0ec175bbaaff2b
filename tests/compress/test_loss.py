"""YOLOv3 loss: target assignment by hand-computed cases, and overfitting one tiny batch."""

from __future__ import annotations

import math

import numpy as np
import paddle
import pytest

import edge_sdk  # noqa: F401
from compress.loss import YOLOv3Loss

ANCHORS = [[4, 5], [8, 10], [12, 8], [16, 20], [24, 18], [20, 32], [40, 30], [50, 50], [60, 60]]
MASKS = [[6, 7, 8], [3, 4, 5], [0, 1, 2]]


def _loss(num_classes: int = 3) -> YOLOv3Loss:
    return YOLOv3Loss(num_classes, ANCHORS, MASKS, (32, 16, 8), ignore_thresh=0.7)


def test_a_box_is_assigned_to_its_best_anchor_and_cell() -> None:
    # 64x64 input; a 16x20 px box centred at (36, 20): anchor 3 exactly (level stride 16, slot 0).
    box = np.array([[[36 / 64, 20 / 64, 16 / 64, 20 / 64], [0, 0, 0, 0]]], np.float32)
    targets = _loss().build_targets(
        paddle.to_tensor(box), paddle.to_tensor([[2, 0]]), paddle.to_tensor([[1.0, 0.0]]), (64, 64)
    )
    assert [t.shape for t in targets] == [[1, 3, 2, 2, 9], [1, 3, 4, 4, 9], [1, 3, 8, 8, 9]]
    assert float(targets[0][..., 5].sum()) == 0 and float(targets[2][..., 5].sum()) == 0
    level = targets[1].numpy()
    assert np.count_nonzero(level[..., 5]) == 1
    cell = level[0, 0, 1, 2]  # anchor slot 0, row 20/16 -> 1, column 36/16 -> 2
    np.testing.assert_allclose(cell[:4], [36 / 16 - 2, 20 / 16 - 1, math.log(16 / 16), math.log(20 / 20)], atol=1e-6)
    np.testing.assert_allclose(cell[4], 2 - (16 / 64) * (20 / 64), atol=1e-6)
    assert cell[5] == 1.0 and list(cell[6:]) == [0, 0, 1]


def test_padding_and_mixup_scores() -> None:
    boxes = np.array([[[0.5, 0.5, 50 / 64, 50 / 64], [0.2, 0.2, 4 / 64, 5 / 64], [0.0, 0.0, 0.0, 0.0]]], np.float32)
    scores = np.array([[0.3, 0.7, 0.0]], np.float32)
    targets = _loss().build_targets(
        paddle.to_tensor(boxes), paddle.to_tensor([[0, 1, 0]]), paddle.to_tensor(scores), (64, 64)
    )
    big = targets[0].numpy()  # anchor 7 (50x50) on the stride-32 level, slot 1
    np.testing.assert_allclose(big[0, 1, 1, 1, 5], 0.3)
    small = targets[2].numpy()  # anchor 0 (4x5) on the stride-8 level, slot 0, cell (1, 1)
    np.testing.assert_allclose(small[0, 0, 1, 1, 5], 0.7)
    assert sum(np.count_nonzero(t.numpy()[..., 5]) for t in targets) == 2


def _xy_floor(loss_fn: YOLOv3Loss, gt, cls, score, hw) -> float:
    """The smallest possible x/y BCE: the entropy of the offset targets (sigmoid can match them exactly)."""
    total = 0.0
    for t in loss_fn.build_targets(gt, cls, score, hw):
        t = t.numpy()
        w = t[..., 4] * t[..., 5]
        for k in (0, 1):
            p = np.clip(t[..., k], 1e-7, 1 - 1e-7)
            total += float((w * -(p * np.log(p) + (1 - p) * np.log(1 - p))).sum()) / t.shape[0]
    return total


@pytest.mark.slow
def test_loss_falls_to_near_its_floor_on_one_batch() -> None:
    from compress.models import build_yolov3

    paddle.seed(0)
    model = build_yolov3("mobilenet_v1", 3, 0.125, anchors=ANCHORS)
    loss_fn = _loss()
    images = paddle.randn([2, 3, 64, 64])
    gt = paddle.to_tensor(
        np.array(
            [
                [[0.3, 0.3, 0.2, 0.25], [0.7, 0.6, 0.5, 0.4], [0, 0, 0, 0]],
                [[0.5, 0.5, 0.1, 0.1], [0, 0, 0, 0], [0, 0, 0, 0]],
            ],
            np.float32,
        )
    )
    cls = paddle.to_tensor([[0, 2, 0], [1, 0, 0]])
    score = paddle.to_tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    optimizer = paddle.optimizer.Adam(0.003, parameters=model.parameters())
    first = None
    for _ in range(150):
        losses = loss_fn(model(images), gt, cls, score, (64, 64))
        losses["loss"].backward()
        optimizer.step()
        optimizer.clear_grad()
        first = first or {k: float(v) for k, v in losses.items()}
    last = {k: float(v) for k, v in loss_fn(model(images), gt, cls, score, (64, 64)).items()}
    floor = _xy_floor(loss_fn, gt, cls, score, (64, 64))
    assert first["loss"] > 100
    assert last["loss_xy"] - floor < 0.1
    assert last["loss_obj"] < 0.02 * first["loss_obj"]
    assert last["loss_cls"] < 0.02 * first["loss_cls"]
    assert last["loss_wh"] < 0.5 * first["loss_wh"]
    assert last["loss"] - floor < 0.02 * first["loss"]


def test_iou_thresh_adds_positives_on_similar_anchors() -> None:
    box = paddle.to_tensor(np.array([[[36 / 64, 20 / 64, 16 / 64, 20 / 64]]], np.float32))
    loss_fn = YOLOv3Loss(3, ANCHORS, MASKS, (32, 16, 8), iou_thresh=0.5)
    targets = loss_fn.build_targets(box, paddle.to_tensor([[1]]), paddle.to_tensor([[1.0]]), (64, 64))
    level = targets[1].numpy()  # 16x20 vs 24x18: shape IoU 0.62 > 0.5; vs 20x32: 0.5, not above
    assert np.count_nonzero(level[..., 5]) == 2 and level[0, 0, 1, 2, 5] == 1 and level[0, 1, 1, 2, 5] == 1
    np.testing.assert_allclose(level[0, 1, 1, 2, 2:4], [math.log(16 / 24), math.log(20 / 18)], atol=1e-6)
    assert sum(np.count_nonzero(t.numpy()[..., 5]) for t in targets) == 2
