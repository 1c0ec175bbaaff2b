"""`compress` is quiet by default: Paddle's and PaddleSlim's routine output shows only with --verbose."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

RECIPE = """\
model: {arch: mobilenet_v1, width: 0.125, input_size: 64}
data: {path: synthetic, images: 24, seed: 1, size: [96, 96]}
train: {epochs: 1, batch_size: 8, optimizer: adamw, lr: 0.003, warmup_steps: 2, schedule: cosine,
        ema: false, amp: false, num_workers: 0}
int8: {calibration_images: 4, algo: abs_max, budget_map50: 100.0, max_retries: 0}
export: {golden_images: 1}
output: {name: quiet, version: 0.0.1}
stages: [train, int8, export]
"""
NOISE = {
    "glog": re.compile(r"^[IWE]\d{4} \d\d:\d\d:\d\d"),
    "library warning": re.compile(r"UserWarning"),
    "library log": re.compile(r"-(INFO|WARNING): "),
    "INT8 pass counts": re.compile(r"---\s+quantized \d+"),
}


def _compress(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    tmp_path.mkdir()
    (tmp_path / "quiet.yml").write_text(RECIPE)
    command = [sys.executable, "-m", "edge_cli", "compress", "quiet.yml", "--workdir", "work", "--no-progress", *args]
    result = subprocess.run(command, capture_output=True, text=True, cwd=str(tmp_path), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _noise(text: str):
    return {name for name, pattern in NOISE.items() if any(pattern.search(line) for line in text.splitlines())}


@pytest.mark.slow
@pytest.mark.timeout(700)
def test_routine_library_output_is_hidden_unless_verbose(tmp_path: Path) -> None:
    quiet = _compress(tmp_path / "quiet")
    assert _noise(quiet.stderr + quiet.stdout) == set(), quiet.stderr
    assert (quiet.stderr + quiet.stdout).count("report: ") == 1
    assert "epoch 1/1" in quiet.stderr and "measuring the int8 bundle" in quiet.stderr

    verbose = _compress(tmp_path / "verbose", "--verbose")
    assert _noise(verbose.stderr) == set(NOISE)
