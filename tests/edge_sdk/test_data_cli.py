"""`edge-sdk data synth|stats` as a user runs them: a subprocess, exit codes, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "edge_cli", "data", *args], capture_output=True, text=True, timeout=180
    )


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "pcb"
    result = _run("synth", "--out", str(out), "--images", "10", "--seed", "3", "--size", "192x160")
    assert result.returncode == 0, result.stderr
    assert "wrote 10 images (192x160)" in result.stdout
    return out


def test_synth_writes_coco(synth_dir: Path) -> None:
    train = json.loads((synth_dir / "train.json").read_text())
    val = json.loads((synth_dir / "val.json").read_text())
    assert len(train["images"]) == 8 and len(val["images"]) == 2
    assert {(i["width"], i["height"]) for i in train["images"]} == {(192, 160)}
    assert len(list((synth_dir / "images").glob("*.png"))) == 10


def test_stats_table_and_default_plot(synth_dir: Path) -> None:
    result = _run("stats", str(synth_dir / "train.json"))
    assert result.returncode == 0, result.stderr
    assert "spurious_copper" in result.stdout and "8 images" in result.stdout
    assert (synth_dir / "train_box_sizes.png").read_bytes()[:4] == b"\x89PNG"


def test_stats_json_and_plot_path(synth_dir: Path, tmp_path: Path) -> None:
    plot = tmp_path / "hist.png"
    result = _run("stats", str(synth_dir / "val.json"), "--json", "--plot", str(plot))
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["images"] == 2 and summary["plot"] == str(plot)
    assert plot.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("size", ["12", "256by256", "10x10"])
def test_bad_size_is_one_line_error(tmp_path: Path, size: str) -> None:
    result = _run("synth", "--out", str(tmp_path / "x"), "--images", "2", "--size", size)
    assert result.returncode != 0
    assert result.stderr.startswith("error: --size") and result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr + result.stdout
    assert not (tmp_path / "x").exists()


def test_stats_on_a_folder_of_coco_files_says_which_to_pass(synth_dir: Path) -> None:
    result = _run("stats", str(synth_dir))
    assert result.returncode != 0
    assert "pass one of them" in result.stderr and "train.json" in result.stderr
    assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1


def _one_error_line(result: subprocess.CompletedProcess, *phrases: str) -> None:
    assert result.returncode != 0
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert "Errno" not in result.stderr and all(p in result.stderr for p in phrases), result.stderr


def test_stats_plot_into_a_folder_is_one_clear_line(synth_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "adir"
    folder.mkdir()
    _one_error_line(_run("stats", str(synth_dir / "val.json"), "--plot", str(folder)), "is a folder", "box_sizes.png")
    _one_error_line(
        _run("stats", str(synth_dir / "val.json"), "--plot", str(tmp_path / "no" / "h.png")), "does not exist"
    )
    assert [p.name for p in tmp_path.iterdir()] == ["adir"] and not any(folder.iterdir())


# Runs the CLI with matplotlib unimportable, as on a robot (core + runtime install).
WITHOUT_MATPLOTLIB = (
    "import sys; sys.modules['matplotlib'] = None; sys.argv[0] = 'edge-sdk'; import edge_cli; edge_cli.main()"
)


def test_stats_without_matplotlib_prints_the_table(synth_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "val.json"
    data.write_text((synth_dir / "val.json").read_text())
    (tmp_path / "images").symlink_to(synth_dir / "images")
    run = [sys.executable, "-c", WITHOUT_MATPLOTLIB, "data", "stats"]
    wide = dict(os.environ, COLUMNS="200")  # rich wraps the table's header line at the terminal width
    result = subprocess.run([*run, str(data)], capture_output=True, text=True, timeout=180, env=wide)
    assert result.returncode == 0, result.stderr
    assert "2 images" in result.stdout and "spurious_copper" in result.stdout
    assert result.stderr == "note: no box-size histogram: matplotlib is not installed (--no-plot hides this note)\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images", "val.json"]

    quiet = subprocess.run([*run, str(data), "--no-plot"], capture_output=True, text=True, timeout=180)
    assert quiet.returncode == 0 and quiet.stderr == ""

    explicit = subprocess.run([*run, str(data), "--plot", str(tmp_path / "h.png")], capture_output=True, text=True)
    _one_error_line(explicit, "--plot needs matplotlib", "--no-plot")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images", "val.json"]
