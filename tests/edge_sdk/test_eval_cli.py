"""`edge-sdk eval`: JSON output agrees with pycocotools; bad input gives one line on stderr and a non-zero exit."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import List

import numpy as np
import pytest

from tests.edge_sdk.test_metrics import coco_per_class_ap, random_coco, run_cocoeval

pytest.importorskip("pycocotools")


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "edge_cli", "eval", *args], capture_output=True, text=True, timeout=120
    )


@pytest.fixture(scope="module")
def coco_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("eval")
    gt, results = random_coco(21, num_images=25)
    (folder / "gt.json").write_text(json.dumps(gt))
    (folder / "dt.json").write_text(json.dumps(results))
    return folder


def test_json_output_agrees_with_pycocotools(coco_files: Path) -> None:
    proc = run_cli("--gt", str(coco_files / "gt.json"), "--dt", str(coco_files / "dt.json"), "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    evaluator = run_cocoeval(
        json.loads((coco_files / "gt.json").read_text()), json.loads((coco_files / "dt.json").read_text())
    )
    np.testing.assert_allclose([out["mAP"], out["mAP50"], out["mAP75"]], evaluator.stats[:3], atol=1e-4)
    np.testing.assert_allclose([out["mAP_small"], out["mAP_medium"], out["mAP_large"]], evaluator.stats[3:6], atol=1e-4)
    per_class_ap = [-1.0 if c["ap"] is None else c["ap"] for c in out["per_class"]]
    np.testing.assert_allclose(per_class_ap, coco_per_class_ap(evaluator), atol=1e-4)
    assert [c["name"] for c in out["per_class"]] == ["class_1", "class_3", "class_7", "class_8", "class_12"]


def test_table_output_lists_classes_and_summary(coco_files: Path) -> None:
    proc = run_cli("--gt", str(coco_files / "gt.json"), "--dt", str(coco_files / "dt.json"))
    assert proc.returncode == 0, proc.stderr
    mAP = json.loads(
        run_cli("--gt", str(coco_files / "gt.json"), "--dt", str(coco_files / "dt.json"), "--json").stdout
    )["mAP"]
    for text in ("class_1", "class_12", "mAP50", "mAP75", "AR@100", "{:.3f}".format(mAP)):
        assert text in proc.stdout


def bad_inputs(folder: Path) -> List[List[str]]:
    gt, results = random_coco(22, num_images=5)
    (folder / "gt.json").write_text(json.dumps(gt))
    (folder / "malformed.json").write_text('[{"image_id": 1, "category_id"')
    (folder / "unknown_image.json").write_text(json.dumps(results + [dict(results[0], image_id=10**9)]))
    (folder / "unknown_category.json").write_text(json.dumps(results + [dict(results[0], category_id=4)]))
    (folder / "short_bbox.json").write_text(json.dumps(results + [dict(results[0], bbox=[1, 2, 3])]))
    gt_path = str(folder / "gt.json")
    return [
        ["--gt", gt_path, "--dt", str(folder / "missing.json")],
        ["--gt", str(folder / "missing.json"), "--dt", str(folder / "unknown_image.json")],
        ["--gt", gt_path, "--dt", str(folder / "malformed.json")],
        ["--gt", gt_path, "--dt", str(folder / "unknown_image.json"), "--json"],
        ["--gt", gt_path, "--dt", str(folder / "unknown_category.json")],
        ["--gt", gt_path, "--dt", str(folder / "short_bbox.json")],
    ]


@pytest.mark.parametrize(
    "case, expected",
    [
        (0, "cannot read results file"),
        (1, "cannot read ground truth file"),
        (2, "not valid JSON"),
        (3, "unknown image_id"),
        (4, "unknown category_id"),
        (5, "bbox must be 4 numbers"),
    ],
)
def test_bad_input_is_one_line_error(tmp_path: Path, case: int, expected: str) -> None:
    proc = run_cli(*bad_inputs(tmp_path)[case])
    assert proc.returncode != 0
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and expected in lines[0]
    assert "Traceback" not in proc.stderr


@pytest.fixture(scope="module")
def pcb_val(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 5-image synthetic PCB set (COCO, images/ beside val.json); val.json lists 2 of them."""
    from edge_sdk.data.synth import synthesize

    out = tmp_path_factory.mktemp("pcb")
    synthesize(out, 5, seed=0, size=(128, 128), val_fraction=0.4, progress=False, workers=1)
    return out / "val.json"


def test_eval_bundle_scores_a_bundle_on_a_coco_set_like_a_run_does(tiny_bundle: Path, pcb_val: Path, tmp_path):
    proc = run_cli("--bundle", str(tiny_bundle), "--data", str(pcb_val), "--threads", "1", "--json")
    assert proc.returncode == 0, proc.stderr
    direct = json.loads(proc.stdout)
    assert direct["num_images"] == 2 and direct["latency_ms"] > 0
    results = tmp_path / "results.json"
    run = subprocess.run(
        [sys.executable, "-m", "edge_cli", "run", "--source", str(pcb_val.parent / "images")]
        + ["--bundle", str(tiny_bundle), "--coco-gt", str(pcb_val), "--coco-results", str(results)]
        + ["--score-threshold", "0", "--threads", "1"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    via_run = json.loads(run_cli("--gt", str(pcb_val), "--dt", str(results), "--json").stdout)
    assert via_run["num_detections"] == direct["num_detections"]
    assert via_run["mAP50"] == pytest.approx(direct["mAP50"], abs=1e-3)


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--bundle", "m.edgebundle"], "give --bundle and --data together"),
        (["--data", "val.json"], "give --bundle and --data together"),
        (["--gt", "val.json"], "give --gt and --dt together"),
        ([], "give --gt and --dt together"),
    ],
)
def test_eval_needs_one_pair_of_inputs(args: List[str], expected: str) -> None:
    proc = run_cli(*args)
    assert proc.returncode == 2 and expected in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and proc.stderr.startswith("error: ")
