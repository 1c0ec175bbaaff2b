"""End to end: `edge-sdk compress` on a tiny recipe -> a verified bundle with measured metrics."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]

TINY = {
    "model": {"arch": "mobilenet_v1", "width": 0.125, "input_size": 96, "anchors": [[5, 5], [6, 6], [8, 8], [10, 10], [12, 12], [16, 16], [24, 24], [32, 32], [48, 48]]},
    "data": {"path": "synthetic", "images": 40, "seed": 1, "size": [128, 128]},
    "train": {
        "epochs": 3, "batch_size": 8, "optimizer": "adamw", "lr": 0.003, "warmup_steps": 2, "schedule": "cosine",
        "ema": True, "ema_decay": 0.9, "amp": True, "num_workers": 1, "eval_every": 2, "freeze_backbone_epochs": 1,
        "multi_scale": [64, 96], "augment": {"mixup_epochs": 1, "expand": True},
    },
    "output": {"name": "tiny-e2e", "version": "0.0.1"},
}  # fmt: skip


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_compress_cli_writes_a_measured_bundle(tmp_path: Path) -> None:
    recipe = tmp_path / "tiny.yml"
    recipe.write_text(yaml.safe_dump(TINY))
    out = tmp_path / "bundles" / "tiny.edgebundle"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "edge_cli",
            "compress",
            str(recipe),
            "--workdir",
            str(tmp_path / "work"),
            "--out",
            str(out),
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=280,
        cwd=str(tmp_path),
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert "mAP@.5" in result.stdout and str(out.name) in result.stdout.replace("\n", "")

    from edge_sdk.bundle import open_bundle

    with open_bundle(out) as bundle:
        manifest = bundle.manifest
        assert manifest.name == "tiny-e2e" and manifest.version == "0.0.1"
        assert manifest.classes == ("missing_hole", "mouse_bite", "open_circuit", "short", "spur", "spurious_copper")
        assert tuple(manifest.input.size) == (96, 96)
        assert manifest.postprocess.conf_threshold == 0.005 and manifest.postprocess.keep_top_k == 100
        stage = manifest.stage("train")
        assert stage is not None
        assert stage.map50 is not None and 0.0 <= stage.map50 <= 1.0 and stage.map is not None
        assert stage.flops > 0 and stage.params > 1000 and stage.latency_ms > 0
        assert stage.bytes == (tmp_path / "work" / "train" / "model.edgebundle").stat().st_size
        assert len(manifest.provenance.recipe_sha256) == 64 and len(manifest.provenance.dataset_sha256) == 64
    work = tmp_path / "work" / "train"
    assert (
        (work / "best.pdparams").is_file() and (work / "metrics.jsonl").is_file() and (work / "training.png").is_file()
    )
    assert len((work / "metrics.jsonl").read_text().splitlines()) == 3
    assert (tmp_path / "work" / "train" / "done.json").is_file() and (tmp_path / "work" / "report.md").is_file()


def test_demo_and_compress_have_help() -> None:
    for command in ("demo", "compress"):
        result = subprocess.run(
            [sys.executable, "-m", "edge_cli", command, "--help"], capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0 and "--workdir" in result.stdout


def test_a_bad_recipe_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    recipe = tmp_path / "bad.yml"
    recipe.write_text("train:\n  epochs: ten\n")
    result = subprocess.run(
        [sys.executable, "-m", "edge_cli", "compress", str(recipe), "--workdir", str(tmp_path / "w")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == "error: bad.yml: train.epochs: expected an integer >= 1, got 'ten'"
