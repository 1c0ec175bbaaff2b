"""Numbers on the command line have bounds: out of range is one `error:` line and exit 2, before any work."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

CASES = [
    (["data", "synth", "--out", "{tmp}/out", "--images", "99999999999999999999999"], "'--images' / '-n'"),
    (["data", "synth", "--out", "{tmp}/out", "--images", "0"], "'--images' / '-n'"),
    (["data", "synth", "--out", "{tmp}/out", "--workers", "0"], "'--workers'"),
    (["data", "synth", "--out", "{tmp}/out", "--seed", "-1"], "'--seed'"),
    (["install", "{tmp}/out/x.edgebundle", "--root", "{tmp}/out", "--keep", "-1"], "'--keep'"),
    (["install", "{tmp}/out/x.edgebundle", "--root", "{tmp}/out", "--fps-frames", "0"], "'--fps-frames'"),
    (["run", "--source", "demo", "--jsonl", "{tmp}/out/x.jsonl", "--fps", "0"], "'--fps'"),
    (["run", "--source", "demo", "--jsonl", "{tmp}/out/x.jsonl", "--width", "-1"], "'--width'"),
    (["run", "--source", "demo", "--jsonl", "{tmp}/out/x.jsonl", "--height", "99999999"], "'--height'"),
    (["run", "--source", "demo", "--jsonl", "{tmp}/out/x.jsonl", "--dla", "2"], "'--dla'"),
    (["bench", "--bundle", "{tmp}/out/x.edgebundle", "--frames", "99999999999"], "'--frames'"),
    (["flash", "{tmp}/out/x.edgebundle", "--to", "robot", "--parallel", "0"], "'--parallel'"),
    (["service", "install", "--print", "--watchdog", "0"], "'--watchdog'"),
    (
        ["export", "--arch", "darknet53", "--weights", "{tmp}/w.pdparams", "--num-classes", "3"]
        + ["--input-size", "999999968", "--out", "{tmp}/out/x.edgebundle"],
        "--input-size must be S or HxW, multiples of 32 from 32 to 4096",
    ),
    (
        ["export", "--arch", "darknet53", "--weights", "{tmp}/w.pdparams", "--num-classes", "99999999"]
        + ["--input-size", "320", "--out", "{tmp}/out/x.edgebundle"],
        "'--num-classes'",
    ),
]


@pytest.mark.parametrize("args, named", CASES, ids=[" ".join(a[:2] + a[-2:]) for a, _ in CASES])
def test_out_of_range_is_one_line_and_writes_nothing(tmp_path: Path, args: list, named: str) -> None:
    (tmp_path / "w.pdparams").write_bytes(b"weights")
    argv = [a.format(tmp=tmp_path) for a in args]
    result = subprocess.run(
        [sys.executable, "-m", "edge_cli", *argv], capture_output=True, text=True, timeout=120, cwd=str(tmp_path)
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert named in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.pdparams"]  # nothing written


def test_help_shows_the_bounds() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "edge_cli", "data", "synth", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, COLUMNS="200"),
    )
    assert result.returncode == 0, result.stderr
    assert "1<=x<=100000" in result.stdout and "1<=x<=64" in result.stdout
