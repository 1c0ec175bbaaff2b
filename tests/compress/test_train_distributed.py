"""Data-parallel training: the relaunch command (pure), and two CPU processes (gloo) in lock-step.

Run as a script by paddle.distributed.launch, this file is the worker of the two-process test.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_launch_command_for_gpus() -> None:
    from edge_cli.workstation import launch_command

    argv = ["compress", "recipes/demo.yml", "--gpus", "0,1,2,3", "--data", "d", "--resume"]
    command = launch_command("0,1,2,3", argv, python="/usr/bin/python3", log_dir="w/logs")
    entry = str(REPO / "edge_cli" / "worker.py")
    assert command == [
        "/usr/bin/python3", "-m", "paddle.distributed.launch", "--devices", "0,1,2,3", "--log_dir", "w/logs",
        entry, "compress", "recipes/demo.yml", "--data", "d", "--resume",
    ]  # fmt: skip
    assert "--gpus" not in launch_command("0, 1", ["compress", "r.yml", "--gpus=0,1"])
    assert launch_command("0, 1", ["compress", "r.yml"])[3:5] == ["--devices", "0,1"]


def test_launch_command_for_cpu_processes_omits_devices() -> None:
    from edge_cli.workstation import launch_command

    command = launch_command("cpu:2", ["compress", "r.yml", "--gpus", "cpu:2"])
    assert "--devices" not in command
    assert command[3:5] == ["--nproc_per_node", "2"]
    for bad in ("", "a,b", "cpu:0", "cpu:x"):
        with pytest.raises(ValueError):
            launch_command(bad, [])


def test_gpus_option_rejects_bad_ids(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "edge_cli", "compress", str(REPO / "recipes" / "demo.yml"), "--gpus", "zero"],
        capture_output=True,
        text=True,
        cwd=str(tmp_path),
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: --gpus expects device ids")


def _compress(tmp_path: Path, *args: str, env=None) -> subprocess.CompletedProcess:
    (tmp_path / "tiny.yml").write_text("model: {arch: mobilenet_v1, width: 0.125, input_size: 64}\n")
    command = [sys.executable, "-m", "edge_cli", "compress", "tiny.yml", "--workdir", "work", "--no-progress", *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=str(tmp_path), timeout=300, env=env)


def _paddle_has_cuda() -> bool:
    import paddle

    return paddle.device.is_compiled_with_cuda()


@pytest.mark.skipif(_paddle_has_cuda(), reason="checks the refusal on a Paddle build without CUDA")
def test_gpu_ids_without_cuda_are_refused_before_launching(tmp_path: Path) -> None:
    result = _compress(tmp_path, "--gpus", "0,1,2,3")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "error: --gpus 0,1,2,3: this Paddle build has no CUDA (install paddlepaddle-gpu), or use --gpus cpu:N for N CPU processes"
    ]
    assert not (tmp_path / "work").exists()


def test_a_missing_data_folder_is_refused_before_launching(tmp_path: Path) -> None:
    result = _compress(tmp_path, "--gpus", "cpu:2", "--data", "nowhere")
    assert result.returncode == 2
    assert result.stderr.splitlines() == ["error: --data: no such folder nowhere"]
    assert result.stdout == "" and not (tmp_path / "work").exists()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_failing_worker_shows_its_error_once_and_never_the_environment(tmp_path: Path) -> None:
    """Paddle's launcher prints its environment when a worker fails and writes it to its log folder."""
    secret = "s3cret-value-only-in-this-test-8d1f"
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.json").write_text("not json")
    (tmp_path / "data" / "val.json").write_text("{}")
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    env["EDGE_SDK_TEST_TOKEN"] = env["MY_API_TOKEN"] = secret
    result = _compress(tmp_path, "--gpus", "cpu:2", "--data", "data", env=env)
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: data/train.json: not valid JSON: Expecting value (line 1, column 1)"]
    assert "LAUNCH" not in result.stdout + result.stderr and "Traceback" not in result.stdout + result.stderr
    assert secret not in result.stdout + result.stderr
    kept = sorted(p.relative_to(tmp_path / "work") for p in (tmp_path / "work").rglob("*") if p.is_file())
    assert kept == [Path("launch-logs/workerlog.0"), Path("launch-logs/workerlog.1")]
    for path in (tmp_path / "work").rglob("*"):
        assert path.is_dir() or secret.encode() not in path.read_bytes(), path


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_sigterm_stops_every_process_with_a_checkpoint(tmp_path: Path) -> None:
    """SIGTERM to `compress --gpus cpu:2` reaches the workers through the launcher: both ranks stop at the
    same batch, rank 0 saves a checkpoint, the command says so in one line and exits 130, no process is left."""
    import signal
    import time

    import paddle

    from tests.compress.test_train import _alive, _descendants

    (tmp_path / "long.yml").write_text(
        "model: {arch: mobilenet_v1, width: 0.125, input_size: 64}\n"
        "data: {path: synthetic, images: 24, seed: 3, size: [96, 96]}\n"
        "train: {epochs: 200, batch_size: 4, optimizer: momentum, lr: 0.01, warmup_steps: 0, schedule: piecewise,\n"
        "        milestones: [], amp: false, num_workers: 0, eval_every: 100}\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    env["PYTHONUNBUFFERED"] = "1"
    command = [sys.executable, "-m", "edge_cli", "compress", "long.yml", "--gpus", "cpu:2", "--workdir", "work",
               "--no-progress"]  # fmt: skip
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=str(tmp_path)
    )
    try:
        lines = []
        deadline = time.time() + 240
        while time.time() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("epoch 2/"):
                break
        assert any(line.startswith("epoch 2/") for line in lines), "".join(lines) + proc.stderr.read()
        helpers = _descendants(proc.pid)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
    logs = "".join(p.read_text() for p in sorted((tmp_path / "work" / "launch-logs").glob("workerlog.*")))
    assert proc.returncode == 130, err + logs
    assert err.splitlines() == [
        "running 2 data-parallel processes (their logs: work/launch-logs)",
        "interrupted: checkpoint saved to work/train/last.pdckpt (continue with --resume)",
    ], logs
    assert "Traceback" not in out + logs and "LAUNCH" not in out, logs
    assert paddle.load(str(tmp_path / "work" / "train" / "last.pdckpt"))["epoch"] >= 2
    deadline = time.time() + 30
    while [pid for pid in helpers if _alive(pid)] and time.time() < deadline:
        time.sleep(0.5)
    assert [pid for pid in helpers if _alive(pid)] == []


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_two_cpu_processes_end_with_identical_weights(tmp_path: Path) -> None:
    """One optimizer step on each of 2 CPU ranks (gloo all-reduce): parameters equal, data different.

    BatchNorm running statistics are per rank (plain BatchNorm, as PaddleDetection without
    sync_bn): rank 0's are the ones checkpointed. So only parameters are compared.
    """
    import numpy as np

    import edge_sdk  # noqa: F401
    from edge_sdk.data.synth import synthesize

    synthesize(tmp_path / "data", 10, 5, size=(96, 96), progress=False)  # 8 train images: 4 per rank
    command = [
        sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2", "--log_dir", str(tmp_path / "logs"),
        __file__, str(tmp_path / "data"), str(tmp_path / "out"),
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    env["PYTHONPATH"] = str(REPO)
    result = subprocess.run(command, capture_output=True, text=True, timeout=220, env=env, cwd=str(tmp_path))
    logs = "".join(p.read_text(errors="replace") for p in sorted((tmp_path / "logs").glob("*")) if p.is_file())
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:] + logs[-3000:]
    ranks = [np.load(str(tmp_path / "out" / "rank{}.npz".format(r))) for r in (0, 1)]
    assert set(ranks[0].files) == set(ranks[1].files)
    weights = [k for k in ranks[0].files if k.startswith("w:")]
    assert len(weights) > 50
    changed = 0
    for key in weights:
        np.testing.assert_allclose(ranks[0][key], ranks[1][key], rtol=1e-6, atol=1e-7, err_msg=key)
        changed += not np.allclose(ranks[0][key], ranks[0]["init:" + key[2:]])
    assert changed > 10
    assert float(ranks[0]["loss"]) != float(ranks[1]["loss"])  # each rank trained on its own images


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_prune_and_distill_fine_tune_data_parallel_on_two_cpu_processes(tmp_path: Path) -> None:
    """`compress --gpus cpu:2`: rank 1 trains, then joins both fine-tunings rank 0 hands it (a rank
    that did not join would leave DataParallel waiting: the run would time out instead of finishing)."""
    import json

    import yaml

    recipe = {
        "model": {"arch": "mobilenet_v1", "width": 0.125, "input_size": 64},
        "data": {"path": "synthetic", "images": 40, "seed": 1, "size": [96, 96]},
        "train": {"epochs": 1, "batch_size": 4, "optimizer": "adamw", "lr": 0.003, "warmup_steps": 2,
                  "schedule": "cosine", "ema": True, "ema_decay": 0.9, "amp": False, "num_workers": 0},
        "prune": {"flops_reduction": 0.5, "ratios": [0.3, 0.6], "val_images": 4, "epochs": 1},
        "distill": {"epochs": 1, "feature_weight": 0.5},
        "export": {"golden_images": 1},
        "output": {"name": "tiny-dp", "version": "0.0.1"},
        "stages": ["train", "prune", "distill", "export"],
    }  # fmt: skip
    (tmp_path / "tiny.yml").write_text(yaml.safe_dump(recipe))
    workdir = tmp_path / "work"
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    command = [sys.executable, "-m", "edge_cli", "compress", "tiny.yml", "--gpus", "cpu:2", "--workdir", "work",
               "--no-progress"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=380, env=env, cwd=str(tmp_path))
    logs = "".join(p.read_text(errors="replace") for p in sorted((workdir / "launch-logs").glob("*")) if p.is_file())
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:] + logs[-3000:]
    assert "Traceback" not in logs
    (jobs,) = list((workdir / ".parallel").iterdir())
    assert sorted(p.name for p in jobs.iterdir() if p.suffix == ".json") == ["job-1.json", "job-2.json"]
    assert (jobs / "finished").exists()
    assert json.loads((jobs / "job-2.json").read_text())["teacher"].endswith("best.pdparams")
    assert "fine-tuning data-parallel over 2 processes" in logs
    done = json.loads((workdir / "distill" / "done.json").read_text())
    assert done["info"]["finetune"][0]["distill_feat"] > 0
    assert len(done["info"]["finetune"]) == 1 and (workdir / "tiny-dp-0.0.1.edgebundle").is_file()


def _worker(data_dir: str, out_dir: str) -> None:
    import numpy as np
    import paddle

    import edge_sdk  # noqa: F401
    from compress.config import recipe_from_dict
    from compress.train import train

    recipe = recipe_from_dict(
        {
            "model": {"arch": "mobilenet_v1", "width": 0.125, "input_size": 64},
            "data": {"path": "synthetic"},
            "train": {
                "epochs": 1, "batch_size": 4, "optimizer": "momentum", "lr": 0.05, "warmup_steps": 0,
                "schedule": "piecewise", "milestones": [], "ema": False, "amp": False, "num_workers": 0,
                "augment": {"distort": False, "expand": False, "crop": False, "flip": False},
            },
        }
    )  # fmt: skip
    rank = paddle.distributed.get_rank()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    arrays = {}

    def on_epoch_end(epoch, net) -> None:
        arrays.update({"w:" + k: v.numpy() for k, v in net.named_parameters() if not v.stop_gradient})

    from compress.models import build_yolov3
    from compress.train import set_objectness_prior

    paddle.seed(recipe.train.seed)
    initial = build_yolov3("mobilenet_v1", 6, 0.125)
    set_objectness_prior(initial)
    arrays.update({"init:" + k: v.numpy() for k, v in initial.state_dict().items()})
    result = train(recipe, Path(data_dir), out / "train{}".format(rank), progress=False, on_epoch_end=on_epoch_end)
    arrays["loss"] = np.array(result.history[-1]["loss"])
    np.savez(str(out / "rank{}.npz".format(rank)), **arrays)


if __name__ == "__main__":
    _worker(sys.argv[1], sys.argv[2])
