"""The compression stages end to end on a tiny recipe: train -> prune -> distill -> int8 -> export,
the per-stage cache, `--stages` subsets and the new recipe sections' validation."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from compress.config import recipe_from_dict
from edge_sdk.errors import RecipeError

STAGES = ["train", "prune", "distill", "int8", "export"]
TINY = {
    "model": {"arch": "mobilenet_v1", "width": 0.125, "input_size": 64},
    "data": {"path": "synthetic", "images": 40, "seed": 1, "size": [96, 96]},
    "train": {"epochs": 1, "batch_size": 8, "optimizer": "adamw", "lr": 0.003, "warmup_steps": 2, "schedule": "cosine",
              "ema": False, "amp": False, "num_workers": 0},
    "prune": {"flops_reduction": 0.5, "ratios": [0.3, 0.6], "val_images": 8, "epochs": 1},
    "distill": {"epochs": 1},
    # One epoch of training leaves the model near mAP 0, where INT8 against FP32 is noise: the
    # budget is set wide open so the test checks the plumbing, not the accuracy (benchmarks/ does).
    "int8": {"calibration_images": 8, "algo": "abs_max", "budget_map50": 100.0, "max_retries": 0},
    "export": {"golden_images": 2},
    "output": {"name": "tiny-stages", "version": "0.0.1"},
    "stages": STAGES,
}  # fmt: skip


def _recipe(changes=None, sha256="0" * 64):
    data = copy.deepcopy(TINY)
    for section, values in (changes or {}).items():
        data.setdefault(section, {}).update(values)
    return recipe_from_dict(data, sha256=sha256)


def _done_mtimes(workdir: Path):
    return {s: (workdir / s / "done.json").stat().st_mtime_ns for s in STAGES[:-1]}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    from compress.pipeline import run

    workdir = tmp_path_factory.mktemp("stages")
    result = run(_recipe(), workdir, progress=False, log=lambda _m: None)
    return workdir, result


@pytest.mark.slow
@pytest.mark.timeout(480)
def test_full_pipeline_writes_a_verified_int8_bundle_with_every_stage(finished) -> None:
    from edge_sdk.bundle import open_bundle

    workdir, result = finished
    with open_bundle(result.bundle) as bundle:
        manifest = bundle.manifest
        assert manifest.precision == "int8"
        assert manifest.quantization.method == "ptq" and manifest.quantization.algo == "abs_max"
        assert [m.stage for m in manifest.metrics] == ["train", "prune", "distill", "int8"]
        assert all(m.bytes and m.latency_ms and m.flops and m.map50 is not None for m in manifest.metrics)
        assert len(manifest.provenance.calibration_sha256) == 64 and manifest.provenance.teacher_sha256
        assert manifest.file("calibration/golden.json") is not None
    train, prune, distill, int8 = manifest.metrics
    assert prune.flops <= 0.55 * train.flops and distill.flops == prune.flops
    assert int8.bytes < distill.bytes
    assert int8.bytes == (workdir / "int8" / "model.edgebundle").stat().st_size
    report = (workdir / "report.md").read_text()
    assert all("| {} |".format(s) in report for s in ("train", "prune", "distill", "int8"))
    assert (workdir / "stages.png").stat().st_size > 1000


@pytest.mark.slow
def test_every_stage_bundle_ships_golden_images_and_int8_carries_the_fp32_ones(finished) -> None:
    from compress.stages import golden_members
    from edge_sdk.bundle import open_bundle

    workdir, _ = finished
    golden = {}
    for stage in ("train", "prune", "distill", "int8"):
        with open_bundle(workdir / stage / "model.edgebundle") as bundle:
            golden[stage] = golden_members(bundle)
    assert all(len(members) == 3 for members in golden.values()), {s: sorted(m) for s, m in golden.items()}
    assert golden["int8"] == golden["distill"]


@pytest.mark.slow
def test_the_closing_summary_times_the_final_bundle_beside_the_unpruned_one(finished) -> None:
    workdir, result = finished
    final = [line for line in result.speed if line.startswith("final bundle (int8): ")]
    assert len(final) == 1 and final[0].endswith("x the unpruned FP32 (train)")
    assert any(line.startswith("unpruned FP32 (train): ") and "FPS" in line for line in result.speed)
    assert final[0] in (workdir / "report.md").read_text()


@pytest.mark.slow
def test_compression_benchmark_reads_a_finished_workdir_and_ends_with_one_json_line(finished) -> None:
    import json
    import subprocess
    import sys

    workdir, _result = finished
    before = _done_mtimes(workdir)
    repo = Path(__file__).resolve().parents[2]
    command = [sys.executable, str(repo / "benchmarks" / "compression.py"), "--workdir", str(workdir), "--json"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    values = json.loads(done.stdout.strip().splitlines()[-1])
    assert {"flops_ratio", "pruned_map_kept", "int8_bytes_ratio", "int8_map_kept"} <= set(values)
    assert values["flops_ratio"] <= 0.5 + 1e-9
    assert _done_mtimes(workdir) == before
    assert not (workdir / "bench-distill").exists()


@pytest.mark.slow
def test_a_second_run_reuses_every_stage_and_a_changed_section_reruns_only_its_stage(finished) -> None:
    from compress.pipeline import run
    from edge_sdk.bundle import verify_bundle

    workdir, first = finished
    before = _done_mtimes(workdir)
    lines = []
    again = run(_recipe(sha256="1" * 64), workdir, progress=False, log=lines.append)
    assert _done_mtimes(workdir) == before
    assert verify_bundle(again.bundle).provenance.recipe_sha256 == "1" * 64
    assert sum("unchanged, reusing" in line for line in lines) == 4
    assert [m.to_dict() if hasattr(m, "to_dict") else m for m in again.metrics] == [
        m.to_dict() if hasattr(m, "to_dict") else m for m in first.metrics
    ]

    run(_recipe({"int8": {"calibration_images": 6}}), workdir, progress=False, log=lambda _m: None)
    after = _done_mtimes(workdir)
    assert {s: after[s] == before[s] for s in after} == {"train": True, "prune": True, "distill": True, "int8": False}


@pytest.mark.slow
@pytest.mark.timeout(480)
def test_ptq_over_budget_falls_back_to_qat_and_a_qat_miss_is_one_line(finished, tmp_path) -> None:
    """Scored against the FP32 model's own detections (a 1-epoch model has no real mAP), a zero budget
    makes PTQ miss; fallback qat then fine-tunes, exports and measures a QAT bundle, which misses too."""
    import dataclasses
    import shutil

    import cv2

    from calibration.budget import detections_as_dataset
    from compress.pipeline import make_context, run_stages
    from device.detector import Detector
    from edge_sdk.bundle import open_bundle

    source, _ = finished
    workdir = tmp_path / "work"
    shutil.copytree(str(source), str(workdir))
    recipe = _recipe({"int8": {"budget_map50": 0.0, "max_retries": 0, "fallback": "qat"}, "qat": {"epochs": 1}})
    ctx = make_context(recipe, workdir, progress=False, log=lambda _m: None)
    with Detector(workdir / "distill" / "model.edgebundle", device="cpu") as detector:
        found = [detector.detect(cv2.imread(str(r.path)), score_threshold=0.0) for r in ctx.val_set.images]
    own = detections_as_dataset(ctx.val_set.images, found, ctx.val_set.classes, min_score=0.0)
    ctx = dataclasses.replace(ctx, val_set=own)
    with pytest.raises(
        RecipeError, match=r"^INT8 after QAT still loses [0-9.]+ points of mAP@\.5 \(FP32 [01]\.[0-9]+, PTQ"
    ):
        run_stages(ctx, recipe.stages, ["int8"])
    with open_bundle(workdir / "int8" / "model.edgebundle") as bundle:
        assert bundle.manifest.quantization.method == "qat"
    assert not (workdir / "int8" / "done.json").exists()  # the failed stage left no record to reuse


@pytest.mark.slow
def test_stages_subset_reads_earlier_stages_from_disk_and_names_a_missing_one(finished, tmp_path) -> None:
    from compress.pipeline import run

    workdir, _ = finished
    lines = []
    result = run(_recipe({"train": {"lr": 0.002}}), workdir, progress=False, log=lines.append, stages=["int8"])
    assert [m.stage for m in result.metrics] == ["train", "prune", "distill", "int8"]
    assert (
        "note: using the train stage's output although its recipe sections, data or input changed since it ran "
        "(it is not in --stages)"
    ) in lines
    with pytest.raises(RecipeError, match=r"stage prune needs the output of stage train.*--stages train"):
        run(_recipe(), tmp_path / "empty", progress=False, log=lambda _m: None, stages=["prune", "distill"])
    with pytest.raises(RecipeError, match="unknown stage 'prnue'.*did you mean 'prune'"):
        run(_recipe(), tmp_path / "empty", progress=False, log=lambda _m: None, stages=["prnue"])


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"prune": {"flops_reduction": 1.5}}, "prune.flops_reduction"),
        ({"prune": {"ratios": [0.6, 0.3]}}, "prune.ratios"),
        ({"prune": {"ratoi": [0.3]}}, "prune.ratoi"),
        ({"distill": {"epochs": 0}}, "distill.epochs"),
        ({"int8": {"algo": "kl"}}, "int8.algo"),
        ({"int8": {"fallback": "retry"}}, "int8.fallback"),
        ({"qat": {"lr": -1}}, "qat.lr"),
    ],
)
def test_recipe_validation_names_the_field(changes, field) -> None:
    with pytest.raises(RecipeError, match=r"^{}: ".format(field.replace(".", r"\."))):
        _recipe(changes)


def test_distill_without_prune_is_refused() -> None:
    data = copy.deepcopy(TINY)
    data["stages"] = ["train", "distill", "export"]
    with pytest.raises(RecipeError, match="distill.*needs prune"):
        recipe_from_dict(data)


def test_the_stage_table_has_every_recipe_stage_in_order_and_names_real_sections() -> None:
    import dataclasses

    from compress.config import STAGES as RECIPE_STAGES
    from compress.config import Recipe
    from compress.stages import STAGE_TABLE

    assert tuple(STAGE_TABLE) == RECIPE_STAGES
    fields = {f.name for f in dataclasses.fields(Recipe)}
    for index, stage in enumerate(STAGE_TABLE.values()):
        assert set(stage.sections) <= fields
        assert set(stage.inputs) <= set(RECIPE_STAGES[:index])
    assert [s.name for s in STAGE_TABLE.values() if not s.cached] == ["export"]


def test_recipe_and_stages_option_are_checked_alike() -> None:
    from compress.config import check_stages

    message = "stages: expected each stage at most once, in the order train, prune, distill, int8, export, got "
    data = copy.deepcopy(TINY)
    data["stages"] = ["train", "export", "prune"]
    with pytest.raises(RecipeError, match="^" + message + "train, export, prune$"):
        recipe_from_dict(data)
    with pytest.raises(RecipeError, match="^" + message + "train, train$"):
        check_stages(["train", "train"])
    assert check_stages(("train", "int8")) == ["train", "int8"]


def test_cli_stages_error_is_one_line(tmp_path) -> None:
    import subprocess
    import sys

    import yaml

    recipe = tmp_path / "tiny.yml"
    recipe.write_text(yaml.safe_dump(TINY))
    command = [sys.executable, "-m", "edge_cli", "compress", str(recipe), "--workdir", str(tmp_path / "w")]
    result = subprocess.run(command + ["--stages", "distill,int8"], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "error: stage distill needs the output of stage train, and {} has none: run --stages train first".format(
            tmp_path / "w" / "train"
        )
    )
