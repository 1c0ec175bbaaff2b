"""device.ppdet: a PaddleDetection export folder (program + infer_cfg.yml) becomes a bundle the Detector runs."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from device.ppdet import import_ppdet, parse_infer_cfg
from edge_sdk.errors import BundleError

CLASSES = ("missing_hole", "mouse_bite", "open_circuit", "short", "spur", "spurious_copper")

# The layout PaddleDetection's tools/export_model.py writes for a YOLOv3 (values for a 96x96 model).
INFER_CFG = """\
mode: paddle
draw_threshold: 0.5
metric: COCO
use_dynamic_shape: false
arch: YOLO
min_subgraph_size: 3
Preprocess:
- interp: 2
  keep_ratio: false
  target_size:
  - 96
  - 96
  type: Resize
- is_scale: true
  mean:
  - 0.485
  - 0.456
  - 0.406
  std:
  - 0.229
  - 0.224
  - 0.225
  type: NormalizeImage
- type: Permute
label_list:
- missing_hole
- mouse_bite
- open_circuit
- short
- spur
- spurious_copper
"""


@pytest.fixture()
def ppdet_export(tiny_model_dir, tmp_path) -> Path:
    folder = tmp_path / "yolov3_pcb"
    folder.mkdir()
    for name in ("model.pdmodel", "model.pdiparams"):
        shutil.copy(str(Path(tiny_model_dir) / name), str(folder / name))
    (folder / "infer_cfg.yml").write_text(INFER_CFG)
    return folder


def test_parse_infer_cfg(tmp_path):
    cfg_file = tmp_path / "infer_cfg.yml"
    cfg_file.write_text(INFER_CFG)
    cfg = parse_infer_cfg(cfg_file)
    assert cfg.architecture == "YOLO" and cfg.classes == CLASSES and cfg.min_subgraph_size == 3
    spec = cfg.input
    assert spec.size == (96, 96) and spec.resize_mode == "stretch" and spec.interpolation == "cubic"
    assert spec.mean == (0.485, 0.456, 0.406) and spec.std == (0.229, 0.224, 0.225)
    assert spec.scale is True and spec.channel_order == "RGB"
    assert cfg.draw_threshold == 0.5


@pytest.mark.parametrize(
    "old,new,message",
    [
        ("- type: Permute", "- type: PadStride\n  stride: 32", "PadStride"),
        ("interp: 2", "interp: 4", "interp 4"),
        ("arch: YOLO\n", "", "arch is missing"),
        ("  - 96\n  - 96\n", "  - 96\n", "target_size"),
        ("mode: paddle", "mode: [paddle", "not valid YAML"),
    ],
)
def test_bad_infer_cfg_names_the_problem(tmp_path, old, new, message):
    cfg_file = tmp_path / "infer_cfg.yml"
    cfg_file.write_text(INFER_CFG.replace(old, new, 1))
    with pytest.raises(BundleError, match=message) as info:
        parse_infer_cfg(cfg_file)
    assert str(cfg_file) in str(info.value) and "\n" not in str(info.value)


def test_imported_export_runs_like_the_native_bundle(ppdet_export, tiny_bundle, tmp_path):
    from device.detector import Detector
    from edge_sdk.bundle import open_bundle

    out = import_ppdet(ppdet_export, tmp_path / "pcb.edgebundle", version="1.2.0")
    with open_bundle(out) as bundle:
        manifest = bundle.manifest
        assert (manifest.name, manifest.version, manifest.precision) == ("yolov3_pcb", "1.2.0", "fp32")
        assert manifest.classes == CLASSES and manifest.architecture == "ppdet_yolo"
        assert manifest.postprocess.score_threshold == 0.5
        assert manifest.tensorrt.dynamic_shapes["image"].opt == (1, 3, 96, 96)
        assert manifest.file("model/model.pdmodel") is not None
    image = np.random.default_rng(5).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    with Detector(out, threads=1) as imported, Detector(tiny_bundle, threads=1) as native:
        got = imported.detect(image, score_threshold=0.0)
        want = native.detect(image, score_threshold=0.0)
    assert len(got) > 0
    np.testing.assert_allclose(got.boxes, want.boxes, rtol=1e-4, atol=1e-3)
    np.testing.assert_array_equal(got.class_ids, want.class_ids)


def test_import_ppdet_command(ppdet_export, tmp_path):
    from typer.testing import CliRunner

    from edge_cli import app

    out = tmp_path / "cli.edgebundle"
    result = CliRunner().invoke(app, ["bundle", "import-ppdet", str(ppdet_export), "--out", str(out), "--name", "pcb"])
    assert result.exit_code == 0, result.output
    assert out.is_file() and str(out) in result.output


def test_import_does_not_import_paddle(ppdet_export, tmp_path):
    """Importing Paddle took 4-6 s of `bundle import-ppdet`: the program's op types are read with its protobuf
    module alone, and Paddle imported afterwards in the same process shares that module."""
    script = (
        "import sys\n"
        "from device.ppdet import import_ppdet, program_op_types\n"
        "import_ppdet(sys.argv[1], sys.argv[2])\n"
        "assert 'paddle' not in sys.modules, 'paddle was imported'\n"
        "ops = program_op_types(sys.argv[1] + '/model.pdmodel')\n"
        "import paddle.inference\n"
        "from paddle.base.proto import framework_pb2\n"
        "assert framework_pb2 is sys.modules['paddle.base.proto.framework_pb2']\n"
        "assert 'multiclass_nms3' in ops and 'conv2d' in ops, ops\n"
    )
    out = tmp_path / "quick.edgebundle"
    result = subprocess.run(
        [sys.executable, "-c", script, str(ppdet_export), str(out)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert out.is_file()


def test_incomplete_export_folder(ppdet_export, tmp_path):
    (ppdet_export / "infer_cfg.yml").unlink()
    with pytest.raises(BundleError, match="lacks infer_cfg.yml"):
        import_ppdet(ppdet_export, tmp_path / "x.edgebundle")
