"""Training loop: gradient accumulation, freeze/unfreeze, resume, Ctrl-C, schedule, anchors."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import List

import numpy as np
import paddle
import pytest
import yaml

import edge_sdk  # noqa: F401
from compress.anchors import kmeans_anchors, resolve_anchors
from compress.checkpoint import LAST_CHECKPOINT
from compress.config import recipe_from_dict
from compress.loop import Trainer
from compress.loss import YOLOv3Loss
from compress.optim import lr_at
from compress.train import METRICS_FILE, PLOT_FILE, build_model, train

REPO = Path(__file__).resolve().parents[2]


def tiny_recipe(**train_overrides):
    train_cfg = {
        "epochs": 2,
        "batch_size": 4,
        "optimizer": "momentum",
        "lr": 0.01,
        "warmup_steps": 0,
        "schedule": "piecewise",
        "milestones": [],
        "ema": True,
        "ema_decay": 0.9,
        "amp": True,
        "num_workers": 0,
        "eval_every": 1,
        "augment": {"distort": True, "expand": False, "crop": True, "flip": True, "mixup_epochs": 1},
    }
    train_cfg.update(train_overrides)
    return recipe_from_dict(
        {
            "model": {"arch": "mobilenet_v1", "width": 0.125, "input_size": 96, "anchors": "auto"},
            "data": {"path": "synthetic", "images": 24, "seed": 3, "size": [128, 128]},
            "train": train_cfg,
            "output": {"name": "tiny", "version": "0.0.1"},
        }
    )


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    from edge_sdk.data.synth import synthesize

    out = tmp_path_factory.mktemp("tiny-data")
    synthesize(out, 24, 3, size=(128, 128), progress=False)
    return out


def _state(layer) -> dict:
    return {k: v.numpy().copy() for k, v in layer.state_dict().items()}


def test_lr_schedule() -> None:
    cfg = tiny_recipe(lr=0.1, warmup_steps=10, schedule="piecewise", milestones=[1], gamma=0.1, epochs=2).train
    assert lr_at(0, 20, cfg) == 0.0
    assert lr_at(5, 20, cfg) == pytest.approx(0.05)
    assert lr_at(15, 20, cfg) == pytest.approx(0.1)
    assert lr_at(25, 20, cfg) == pytest.approx(0.01)
    cosine = tiny_recipe(lr=0.1, warmup_steps=0, schedule="cosine", epochs=2).train
    assert lr_at(0, 20, cosine) == pytest.approx(0.1)
    assert lr_at(20, 20, cosine) == pytest.approx(0.05)
    assert lr_at(40, 20, cosine) == pytest.approx(0.0, abs=1e-12)


def test_kmeans_anchors_find_the_box_sizes() -> None:
    rng = np.random.default_rng(0)
    centres = np.array(
        [[8, 8], [12, 20], [20, 12], [30, 30], [40, 60], [60, 40], [80, 80], [100, 160], [160, 100]], float
    )
    wh = np.concatenate([c * rng.uniform(0.97, 1.03, (50, 2)) for c in centres])
    anchors = np.array(kmeans_anchors(wh, seed=1), float)
    assert anchors.dtype == float and all(float(v).is_integer() for v in anchors.ravel())
    areas = anchors.prod(1)
    assert list(areas) == sorted(areas)
    for c in centres:
        assert np.min(np.abs(anchors - c).max(1) / c.max()) < 0.1


def _tiny_batch(seed: int, n: int):
    rng = np.random.default_rng(seed)
    images = paddle.to_tensor(rng.normal(size=(n, 3, 64, 64)).astype(np.float32))
    boxes = np.zeros((n, 4, 4), np.float32)
    boxes[:, :2, :2] = rng.uniform(0.2, 0.8, (n, 2, 2))
    boxes[:, :2, 2:] = rng.uniform(0.05, 0.5, (n, 2, 2))
    classes = rng.integers(0, 3, (n, 4)).astype(np.int32)
    scores = np.zeros((n, 4), np.float32)
    scores[:, :2] = 1
    return images, paddle.to_tensor(boxes), paddle.to_tensor(classes), paddle.to_tensor(scores)


def _build(seed: int = 0):
    from compress.models import build_yolov3

    paddle.seed(seed)
    return build_yolov3(
        "mobilenet_v1",
        3,
        0.125,
        anchors=[[4, 5], [8, 10], [12, 8], [16, 20], [24, 18], [20, 32], [40, 30], [50, 50], [60, 60]],
    )


def test_gradient_accumulation_equals_one_big_batch() -> None:
    """k=2 micro-batches of 2 give the same update as one batch of 4.

    BatchNorm runs in eval mode (running statistics) in both models: in training mode each
    micro-batch would be normalised with its own batch statistics, so the two are only equal with
    batch-independent normalisation.
    """
    micro = [_tiny_batch(1, 2), _tiny_batch(2, 2)]
    big = tuple(paddle.concat([a, b]) for a, b in zip(*micro))
    results = []
    for k, batches in ((2, micro), (1, [big])):
        net = _build()
        net.eval()
        before = _state(net)
        loss_fn = YOLOv3Loss(3, net.anchors, net.anchor_masks)
        optimizer = paddle.optimizer.Momentum(
            0.01, momentum=0.9, parameters=net.parameters(), weight_decay=paddle.regularizer.L2Decay(5e-4)
        )
        Trainer(net, loss_fn, optimizer, accumulate_steps=k).fit(batches)
        results.append(_state(net))
    changed = 0
    for key in results[0]:
        np.testing.assert_allclose(results[0][key], results[1][key], rtol=1e-5, atol=1e-5, err_msg=key)
        changed += not np.array_equal(results[0][key], before[key])
    assert changed > 10  # the update really happened


def test_accumulation_steps_count_micro_batches() -> None:
    net = _build()
    net.eval()
    loss_fn = YOLOv3Loss(3, net.anchors, net.anchor_masks)
    optimizer = paddle.optimizer.Momentum(0.01, parameters=net.parameters())
    steps = []
    trainer = Trainer(net, loss_fn, optimizer, accumulate_steps=2)
    original = trainer.step

    def counting_step() -> None:
        steps.append(trainer.pending)
        original()

    trainer.step = counting_step
    trainer.fit([_tiny_batch(i, 1) for i in range(5)])
    assert steps == [2, 2, 1]


@pytest.mark.slow
def test_freeze_then_unfreeze_and_outputs(tiny_data: Path, tmp_path: Path) -> None:
    recipe = tiny_recipe(freeze_backbone_epochs=1, epochs=2)
    from compress.train import load_datasets

    train_set, _ = load_datasets(recipe, tiny_data)
    initial = build_model(recipe, 6, resolve_anchors(recipe, train_set.images))
    backbone0, neck0 = _state(initial.backbone), _state(initial.neck)
    seen = {}

    def on_epoch_end(epoch, net) -> None:
        trainable = [
            p.stop_gradient for n, p in net.backbone.named_parameters() if not n.endswith(("_mean", "_variance"))
        ]
        seen[epoch] = (_state(net.backbone), _state(net.neck), trainable)

    result = train(recipe, tiny_data, tmp_path, progress=False, on_epoch_end=on_epoch_end)
    backbone1, neck1, frozen_flags = seen[0]
    for key in backbone0:  # weights and BatchNorm statistics untouched while frozen
        np.testing.assert_array_equal(backbone0[key], backbone1[key], err_msg=key)
    assert all(frozen_flags)
    assert any(not np.array_equal(neck0[k], neck1[k]) for k in neck0)
    backbone2, _, flags2 = seen[1]
    assert not any(flags2)
    assert any(not np.allclose(backbone1[k], backbone2[k]) for k in backbone1 if "weight" in k)

    assert result.best_checkpoint.is_file() and (tmp_path / LAST_CHECKPOINT).is_file()
    lines = (tmp_path / METRICS_FILE).read_text().splitlines()
    assert len(lines) == 2 and [r["epoch"] for r in result.history] == [1, 2]
    assert {"loss", "loss_obj", "map50", "map", "lr"} <= set(result.history[0])
    assert result.history[0]["frozen_backbone"] and not result.history[1]["frozen_backbone"]
    assert (tmp_path / PLOT_FILE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tiny_data: Path, tmp_path: Path) -> None:
    recipe = tiny_recipe(epochs=2)
    straight = train(recipe, tiny_data, tmp_path / "straight", progress=False)
    first_half = recipe.__class__(
        **{**recipe.__dict__, "train": recipe.train.__class__(**{**recipe.train.__dict__, "epochs": 1})}
    )
    train(first_half, tiny_data, tmp_path / "resumed", progress=False)
    resumed = train(recipe, tiny_data, tmp_path / "resumed", resume=True, progress=False)
    assert [r["epoch"] for r in resumed.history] == [1, 2]
    a = paddle.load(str(tmp_path / "straight" / LAST_CHECKPOINT))
    b = paddle.load(str(tmp_path / "resumed" / LAST_CHECKPOINT))
    assert a["epoch"] == b["epoch"] == 2 and a["step"] == b["step"]
    for key in a["model"]:
        np.testing.assert_allclose(
            np.asarray(a["model"][key]), np.asarray(b["model"][key]), rtol=1e-4, atol=1e-5, err_msg=key
        )
    for key in a["ema"]["state"]:
        np.testing.assert_allclose(
            np.asarray(a["ema"]["state"][key]), np.asarray(b["ema"]["state"][key]), rtol=1e-4, atol=1e-5, err_msg=key
        )
    assert straight.history[1]["loss"] == pytest.approx(resumed.history[1]["loss"], rel=1e-4)


def _descendants(pid: int) -> List[int]:
    """Process ids of pid's children, grandchildren, ... (from /proc)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        children = parents.get(todo.pop(), [])
        found += children
        todo += children
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path("/proc/{}/stat".format(pid)).read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.slow
@pytest.mark.parametrize(
    "signum, num_workers",
    [(signal.SIGINT, 0), (signal.SIGINT, 1), (signal.SIGTERM, 1)],
    ids=["int", "int-w1", "term-w1"],
)
def test_ctrl_c_or_sigterm_saves_a_checkpoint_and_exits_130(
    tiny_data: Path, tmp_path: Path, signum: int, num_workers: int
) -> None:
    """SIGTERM (systemd, kill) behaves as Ctrl-C: one line, a checkpoint, no Paddle FatalError dump, and
    no DataLoader worker outlives the command."""
    recipe = tiny_recipe(epochs=200, eval_every=100).to_dict()
    recipe["train"]["num_workers"] = num_workers
    recipe_path = tmp_path / "long.yml"
    recipe_path.write_text(yaml.safe_dump(recipe))
    workdir = tmp_path / "work"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edge_cli",
            "compress",
            str(recipe_path),
            "--data",
            str(tiny_data),
            "--workdir",
            str(workdir),
            "--no-progress",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=str(tmp_path),
        text=True,
    )
    try:
        lines = []
        deadline = time.time() + 120
        while time.time() < deadline:  # wait until a couple of epochs have run
            line = proc.stderr.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("epoch 2/"):
                break
        assert any(line.startswith("epoch 2/") for line in lines), "".join(lines)
        time.sleep(0.5)
        helpers = _descendants(proc.pid)
        assert len(helpers) >= num_workers
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    err = "".join(lines) + err
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "Traceback" not in out
    assert "FatalError" not in err and "Error Message Summary" not in err
    assert len([line for line in err.splitlines() if "interrupted" in line]) == 1
    deadline = time.time() + 30  # a helper that was told to stop may take a moment to go
    while [pid for pid in helpers if _alive(pid)] and time.time() < deadline:
        time.sleep(0.5)
    assert [pid for pid in helpers if _alive(pid)] == []
    assert "interrupted: checkpoint saved to" in err
    saved = paddle.load(str(workdir / "train" / LAST_CHECKPOINT))
    assert saved["epoch"] >= 2 and len(saved["history"]) == saved["epoch"]
    assert not [p for p in (workdir / "train").iterdir() if ".tmp" in p.name]


class _OutputEnergy:
    """An extra loss: weight x the batch mean of each image's summed squared head outputs; parts in `last`."""

    def __init__(self, weight: float) -> None:
        self.weight = weight
        self.last = {}

    def __call__(self, images, outputs):
        value = self.weight * sum((o.astype("float32") ** 2).sum([1, 2, 3]).mean() for o in outputs)
        self.last = {"energy": float(value)}
        return value


def test_extra_loss_is_added_and_accumulates_like_one_big_batch() -> None:
    micro = [_tiny_batch(1, 2), _tiny_batch(2, 2)]
    big = tuple(paddle.concat([a, b]) for a, b in zip(*micro))
    results, returned = [], []
    for k, batches, extra in ((2, micro, _OutputEnergy(1e-3)), (1, [big], _OutputEnergy(1e-3)), (1, [big], None)):
        net = _build()
        net.eval()  # BatchNorm on running statistics: see test_gradient_accumulation_equals_one_big_batch
        loss_fn = YOLOv3Loss(3, net.anchors, net.anchor_masks)
        optimizer = paddle.optimizer.Momentum(0.01, momentum=0.9, parameters=net.parameters())
        returned.append(Trainer(net, loss_fn, optimizer, accumulate_steps=k, extra_loss=extra).fit(batches))
        results.append(_state(net))
    for key in results[0]:
        np.testing.assert_allclose(results[0][key], results[1][key], rtol=1e-5, atol=1e-5, err_msg=key)
    assert sum(not np.allclose(results[1][k], results[2][k]) for k in results[1]) > 10  # the extra loss mattered
    assert all(r["energy"] > 0 and "loss" in r for r in returned[0] + returned[1])
    assert all("energy" not in r for r in returned[2])


def test_load_trained_rebuilds_a_pruned_checkpoint(tmp_path: Path) -> None:
    from compress.checkpoint import load_trained, save_pruned
    from compress.pruning import prune_to_target

    net = _build()
    net.eval()
    pruned, _, before, after = prune_to_target(net, (64, 64), 0.5, None)
    path = save_pruned(pruned, tmp_path / "pruned.pdparams", {"classes": ["a", "b", "c"]})
    restored = load_trained(path)
    assert restored.prune_plan == pruned.prune_plan and not restored.training
    image = paddle.to_tensor(np.random.default_rng(0).random((1, 3, 64, 64), dtype=np.float32))
    with paddle.no_grad():
        for a, b in zip(pruned(image), restored(image)):
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-5)
    assert after < 0.6 * before
