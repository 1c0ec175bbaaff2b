"""Distillation: the objectness-weighted output loss, feature adapters, gradients, and the fine-tune loop."""

from __future__ import annotations

import numpy as np
import pytest

import edge_sdk  # noqa: F401  (zlib before paddle)

paddle = pytest.importorskip("paddle")

from compress.config import DistillSection  # noqa: E402
from compress.distill import DistillationLoss, Distiller, finetune  # noqa: E402
from compress.models import build_yolov3  # noqa: E402

NUM_CLASSES = 3
SIZE = 64


def _maps(seed, scale=2.0):
    """Three random raw head maps [2, 3*(5+K), s, s] for s = 2, 4, 8."""
    rng = np.random.default_rng(seed)
    return [
        paddle.to_tensor(scale * rng.standard_normal((2, 3 * (5 + NUM_CLASSES), s, s)).astype("float32"))
        for s in (2, 4, 8)
    ]


def _models():
    paddle.seed(0)
    teacher = build_yolov3("mobilenet_v1", NUM_CLASSES, width=0.25)
    paddle.seed(1)
    student = build_yolov3("mobilenet_v1", NUM_CLASSES, width=0.125)  # narrower neck: adapters needed
    return teacher, student


def test_loss_is_zero_for_a_perfect_student_and_positive_otherwise():
    loss = DistillationLoss(weight=1.0)
    teacher = _maps(0)
    same = loss([t.clone() for t in teacher], teacher)
    for key in ("distill_xy", "distill_wh", "distill_cls", "distill_obj", "distill"):
        assert abs(float(same[key])) < 1e-4, key
    different = loss(_maps(1), teacher)
    for key in ("distill_xy", "distill_wh", "distill_cls", "distill_obj"):
        assert float(different[key]) > 0.01, key
    assert float(different["distill"]) == pytest.approx(
        sum(float(different[k]) for k in ("distill_xy", "distill_wh", "distill_cls", "distill_obj")), rel=1e-5
    )


@pytest.mark.parametrize("teacher_objectness", [-30.0, 30.0])
def test_teacher_objectness_weights_every_term(teacher_objectness):
    """Where the teacher sees no object (background), the student is not distilled at all."""
    loss = DistillationLoss()
    teacher, student = _maps(0), _maps(1)
    for t in teacher:
        view = t.reshape([2, 3, 5 + NUM_CLASSES, t.shape[2], t.shape[3]])
        view[:, :, 4] = teacher_objectness
        t.set_value(view.reshape(t.shape))
    parts = loss(student, teacher)
    for key in ("distill_xy", "distill_wh", "distill_cls", "distill_obj"):
        if teacher_objectness < 0:
            assert float(parts[key]) < 1e-6, key
        else:
            assert float(parts[key]) > 0.1, key


def test_gradients_reach_the_student_and_adapters_only():
    teacher, student = _models()
    distiller = Distiller(teacher, student, weight=1.0, feature_weight=1.0)
    try:
        assert len(distiller.parameters()) > 0  # 1x1 adapters: the student's neck is narrower
        images = paddle.rand([2, 3, SIZE, SIZE])
        student.train()
        loss = distiller.extra_loss(images, student(images))
        assert float(loss) > 0 and distiller.last["distill_feat"] > 0
        loss.backward()
        assert all(p.grad is None for p in teacher.parameters())
        assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in student.parameters())
        assert all(p.grad is not None for p in distiller.parameters())
        assert not teacher.training
    finally:
        distiller.close()


def test_a_few_distillation_steps_reduce_the_distillation_loss():
    teacher, student = _models()
    distiller = Distiller(teacher, student, weight=1.0, feature_weight=0.5)
    optimizer = paddle.optimizer.Adam(learning_rate=2e-3, parameters=student.parameters() + distiller.parameters())
    images = paddle.rand([2, 3, SIZE, SIZE])
    student.train()
    losses = []
    try:
        for _ in range(12):
            loss = distiller.extra_loss(images, student(images))
            losses.append(float(loss))
            loss.backward()
            optimizer.step()
            optimizer.clear_grad()
    finally:
        distiller.close()
    assert losses[-1] < 0.7 * losses[0], losses


def test_finetune_with_a_teacher_runs_and_reports_both_losses(tmp_path):
    from compress.config import TrainSection
    from edge_sdk.data.coco import load_coco
    from edge_sdk.data.synth import synthesize

    train_json, val_json = synthesize(tmp_path / "data", 10, seed=3, size=(96, 96), val_fraction=0.2, progress=False)
    train_set, val_set = load_coco(train_json), load_coco(val_json)
    paddle.seed(0)
    teacher = build_yolov3("mobilenet_v1", len(train_set.classes), width=0.25)
    paddle.seed(1)
    student = build_yolov3("mobilenet_v1", len(train_set.classes), width=0.125)
    cfg = TrainSection(batch_size=4, lr=1e-3, optimizer="adamw", warmup_steps=0, ema=False, amp=False, num_workers=0)
    result = finetune(
        student,
        train_set.images,
        SIZE,
        cfg,
        epochs=1,
        teacher=teacher,
        distill=DistillSection(1.0, 0.5, 1),
        val_set=val_set,
    )
    record = result.history[-1]
    assert record["epoch"] == 1 and record["loss"] > 0 and record["distill"] > 0 and record["distill_feat"] > 0
    assert "map50" in record
    assert not student.training
    assert all(p.grad is None for p in teacher.parameters())


def _finetune_setup(tmp_path, images=8):
    from edge_sdk.data.coco import load_coco
    from edge_sdk.data.synth import synthesize

    train_json, _ = synthesize(tmp_path / "data", images + 2, seed=4, size=(96, 96), val_fraction=0.2, progress=False)
    train_set = load_coco(train_json)
    paddle.seed(0)
    teacher = build_yolov3("mobilenet_v1", len(train_set.classes), width=0.25)
    return train_set, teacher


def _student(num_classes):
    paddle.seed(1)
    return build_yolov3("mobilenet_v1", num_classes, width=0.125)


def test_finetune_steps_with_the_distillation_loss_and_accumulates(tmp_path):
    from compress.config import TrainSection

    train_set, teacher = _finetune_setup(tmp_path)
    classes = len(train_set.classes)
    states, histories = {}, {}
    runs = {
        "plain": dict(accumulate_steps=1, teacher=None),
        "distill": dict(accumulate_steps=1, teacher=teacher),
        "distill_accumulated": dict(accumulate_steps=2, teacher=teacher),
    }
    for name, run in runs.items():
        cfg = TrainSection(
            batch_size=4,
            accumulate_steps=run["accumulate_steps"],
            lr=1e-3,
            optimizer="adamw",
            warmup_steps=0,
            ema=False,
            amp=False,
            num_workers=0,
        )
        student = _student(classes)
        paddle.seed(7)
        result = finetune(
            student, train_set.images, SIZE, cfg, 1, teacher=run["teacher"], distill=DistillSection(1.0, 0.0, 1)
        )
        states[name] = {k: v.numpy().copy() for k, v in student.state_dict().items()}
        histories[name] = result.history[-1]

    def differing(a, b):
        return sum(not np.allclose(states[a][k], states[b][k], rtol=1e-6, atol=1e-7) for k in states[a])

    assert differing("plain", "distill") > 10  # the distillation loss reached the gradients
    assert differing("distill", "distill_accumulated") > 10  # one step of 8 images instead of two of 4
    assert "distill" not in histories["plain"]
    for name in ("distill", "distill_accumulated"):
        record = histories[name]
        assert record["distill"] > 0 and {"distill_xy", "distill_wh", "distill_cls", "distill_obj"} <= set(record)


def test_finetune_stops_on_a_non_finite_loss(tmp_path):
    from compress.config import TrainSection
    from edge_sdk.errors import DataError

    train_set, teacher = _finetune_setup(tmp_path, images=4)
    for param in teacher.parameters():
        param.set_value(paddle.full(param.shape, float("nan"), param.dtype))
    cfg = TrainSection(batch_size=4, lr=1e-3, warmup_steps=0, ema=False, amp=False, num_workers=0)
    with pytest.raises(DataError, match="fine-tuning loss became nan at epoch 1"):
        finetune(
            _student(len(train_set.classes)), train_set.images, SIZE, cfg, 1, teacher=teacher, distill=DistillSection()
        )


def test_ctrl_c_stops_finetuning_even_where_an_exception_would_be_swallowed(tmp_path):
    """A SIGINT landing in code that swallows exceptions (a data loader's __del__ between epochs)
    must still stop fine-tuning, at the next batch: here it lands in a try/except around os.kill."""
    import os
    import signal

    from compress.config import TrainSection

    train_set, teacher = _finetune_setup(tmp_path, images=4)
    cfg = TrainSection(batch_size=4, lr=1e-3, warmup_steps=0, ema=False, amp=False, num_workers=0)
    finished = []

    def progress(epoch, record):
        finished.append(epoch + 1)
        if epoch == 0:
            try:
                os.kill(os.getpid(), signal.SIGINT)
            except KeyboardInterrupt:
                pass

    with pytest.raises(KeyboardInterrupt):
        finetune(
            _student(len(train_set.classes)),
            train_set.images,
            SIZE,
            cfg,
            4,
            teacher=teacher,
            distill=DistillSection(),
            progress=progress,
        )
    assert finished == [1]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
