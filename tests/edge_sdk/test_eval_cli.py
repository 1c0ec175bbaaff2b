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
