"""The compression stages, one table (STAGE_TABLE): train -> prune -> distill -> int8 -> export; the driver
that runs them is compress.pipeline.

Every stage writes its outputs under WORKDIR/<stage>/ and, last and atomically, WORKDIR/<stage>/done.json
(compress.stage_cache): the stage key, the sha256 of its outputs, its measured StageMetrics and a few facts
(ratios, FLOPs, quantization). The key is the sha256 of (the stage's recipe sections, the previous stage's output sha256,
the data sha256), so a re-run recomputes a stage only when one of those changed; a stage that is
recomputed changes its output hash, which invalidates every later stage.

Each stage is measured the way the robot runs it: its model exported as a bundle (WORKDIR/<stage>/
model.edgebundle) and run through device.detector.Detector (Paddle Inference on the CPU) on the val set:
mAP@.5, mAP, median latency; FLOPs and parameters from the dygraph model; bytes = the bundle file's size.
Every stage bundle is one that could be flashed: it carries export.golden_images golden images.

Stages:
- train: compress.train.train -> train/best.pdparams.
- prune: sensitivity scan + per-group ratios reaching prune.flops_reduction (compress.prune.prune_model),
  then prune.epochs of plain fine-tuning -> prune/pruned.pdparams.
- distill: the pruned model fine-tuned distill.epochs with the trained (unpruned) model as teacher
  -> distill/student.pdparams.
- int8: PTQ of the last FP32 stage's bundle on a calibration set chosen from the training set, within
  int8.budget_map50 (calibration.budget); with int8.fallback "qat", QAT when PTQ stays over budget. The
  INT8 bundle carries the FP32 bundle's golden images and detections and the calibration set's sha256,
  and must pass the robot's install check on them (calibration.golden.self_check) on this CPU.
- export: the last stage's bundle re-written with every stage's metrics (never cached: it is cheap).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Tuple

from compress.config import DistillSection, Recipe
from compress.stage_cache import StageRecord
from edge_sdk.bundle import MODEL_PARAMS, MODEL_PROGRAM, PARAMS_FILE, PROGRAM_FILE, Bundle, open_bundle, write_bundle
from edge_sdk.data.dataset import Dataset
from edge_sdk.errors import RecipeError
from edge_sdk.fileio import file_sha256
from edge_sdk.manifest import Postprocess, Provenance, Quantization, StageMetrics
from edge_sdk.schema import to_plain

if TYPE_CHECKING:
    import paddle.nn as nn

BUNDLE_FILE = "model.edgebundle"
CACHE_VERSION = 4
PARALLEL_DIR = ".parallel"
FINISHED_FILE = "finished"
MEASURED_LATENCY_IMAGES = 20

StageOutput = Tuple[Dict[str, str], StageMetrics, Dict[str, Any]]
"""What a stage's run function returns: files (role -> name in WORKDIR/<stage>/), its metrics, facts."""


def stage_key(stage: str, recipe: Recipe, previous_sha256: str, data_sha256: str) -> str:
    """sha256 over the stage's recipe sections, the previous stage's output sha256 and the data sha256."""
    document = {
        "version": CACHE_VERSION,
        "stage": stage,
        "sections": {name: to_plain(getattr(recipe, name)) for name in STAGE_TABLE[stage].sections},
        "previous": previous_sha256,
        "data": data_sha256,
    }
    return hashlib.sha256(json.dumps(document, sort_keys=True).encode("utf-8")).hexdigest()


@dataclass
class StageContext:
    """What every stage needs: the recipe, folders, the data and how to report."""

    recipe: Recipe
    workdir: Path
    data_dir: Path
    data_sha256: str
    train_set: Dataset
    val_set: Dataset
    progress: bool = True
    log: Callable[[str], None] = print
    resume: bool = False

    @property
    def input_size(self) -> int:
        return int(self.recipe.model.input_size)

    @property
    def postprocess(self) -> Postprocess:
        from compress.train import postprocess_of

        return postprocess_of(self.recipe)

    def provenance(self, **extra: str) -> Provenance:
        return Provenance(dataset_sha256=self.data_sha256, recipe_sha256=self.recipe.sha256, **extra)


def _export_and_measure(
    ctx: StageContext, net: nn.Layer, stage: str, provenance: Optional[Provenance] = None
) -> Tuple[StageMetrics, List[Dict[str, Any]]]:
    """Export `net` as WORKDIR/<stage>/model.edgebundle with export.golden_images golden images (its own
    detections, see device.golden) and measure it; returns (StageMetrics, per-class AP list)."""
    from calibration.golden import make_golden
    from compress.export import export_bundle, rewrite_bundle
    from compress.flops import count_params, model_flops

    size = ctx.input_size
    bundle = ctx.workdir / stage / BUNDLE_FILE
    draft = bundle.with_name("draft-" + BUNDLE_FILE)
    export_bundle(
        net,
        list(ctx.val_set.classes),
        (size, size),
        draft,
        ctx.recipe.output.name,
        ctx.recipe.output.version,
        ctx.postprocess,
        (),
        provenance or ctx.provenance(),
    )
    with open_bundle(draft) as opened:  # opened once: for its golden detections and to re-write it
        golden = make_golden(opened, ctx.val_set.images, ctx.recipe.export.golden_images)
        rewrite_bundle(opened, bundle, extra_files=golden)
    draft.unlink()
    return measure_stage(ctx, stage, bundle, float(model_flops(net, (size, size))), float(count_params(net)))


def golden_members(bundle: Bundle) -> Dict[str, bytes]:
    """The golden members (archive name -> bytes) of an opened Bundle: what an INT8 bundle copies from the
    FP32 bundle it was quantized from, so it ships the FP32 model's detections."""
    from device.golden import GOLDEN_DIR, GOLDEN_JSON

    return {
        entry.path: bundle.path_of(entry.path).read_bytes()
        for entry in bundle.manifest.files
        if entry.path == GOLDEN_JSON or entry.path.startswith(GOLDEN_DIR + "/")
    }


def measure_stage(
    ctx: StageContext, stage: str, bundle: Path, flops: Optional[float], params: Optional[float]
) -> Tuple[StageMetrics, List[Dict[str, Any]]]:
    """(StageMetrics, per-class AP list) of `bundle` run the way the robot runs it (device.evaluate.evaluate_model:
    Paddle Inference on the CPU) on the val set; latency_ms: median of the first MEASURED_LATENCY_IMAGES images."""
    from device.evaluate import evaluate_model

    ctx.log("measuring the {} bundle on {} val images".format(stage, len(ctx.val_set)))
    with open_bundle(bundle) as opened:
        evaluation = evaluate_model(opened, ctx.val_set, device="cpu", latency_images=MEASURED_LATENCY_IMAGES)
    metrics = StageMetrics(
        stage=stage,
        map50=evaluation.map50,
        map=evaluation.map,
        flops=flops,
        params=params,
        bytes=float(bundle.stat().st_size),
        latency_ms=evaluation.latency_ms,
    )
    return metrics, [c.to_dict() for c in evaluation.result.per_class]


def _finetune(
    ctx: StageContext,
    student: nn.Layer,
    epochs: int,
    teacher_checkpoint: Optional[Path] = None,
    distill: Optional[DistillSection] = None,
) -> List[Dict[str, Any]]:
    """Fine-tune `student` in place (with distillation from the checkpoint's model when given) with
    train.lr on a fresh cosine schedule; under a data-parallel launch the other ranks join through
    post_finetune_job. Returns the per-epoch history."""

    from compress.loop import distributed

    def report(epoch: int, record: Dict[str, float]) -> None:
        parts = ", ".join("{} {:.3f}".format(k, v) for k, v in record.items() if k not in ("epoch", "seconds"))
        ctx.log("  fine-tune epoch {}/{}: {} ({:.0f} s)".format(epoch + 1, epochs, parts, record["seconds"]))

    rank, world = distributed()
    if world > 1:
        post_finetune_job(ctx.workdir, student, teacher_checkpoint, epochs, distill)
        ctx.log("  fine-tuning data-parallel over {} processes".format(world))
    return _run_finetune(ctx, student, epochs, teacher_checkpoint, distill, rank, world, report)


def _run_finetune(
    ctx: StageContext,
    student: nn.Layer,
    epochs: int,
    teacher_checkpoint: Optional[Path],
    distill: Optional[DistillSection],
    rank: int,
    world: int,
    progress: Optional[Callable[[int, Dict[str, float]], None]] = None,
) -> List[Dict[str, Any]]:
    """compress.distill.finetune as every rank runs it (same seed, same arguments); the history."""
    import paddle

    from compress.checkpoint import load_trained
    from compress.distill import finetune

    teacher = load_trained(teacher_checkpoint) if teacher_checkpoint is not None else None
    paddle.seed(ctx.recipe.train.seed)
    result = finetune(
        student,
        ctx.train_set.images,
        ctx.input_size,
        ctx.recipe.train,
        epochs,
        teacher=teacher,
        distill=distill,
        progress=progress,
        rank=rank,
        world=world,
    )
    return result.history


def parallel_folder(workdir: Path) -> Path:
    """WORKDIR/.parallel/<launcher pid>: where rank 0 of a data-parallel launch hands each fine-tuning job
    to the other ranks (the processes of one paddle.distributed.launch share their parent)."""
    return Path(workdir) / PARALLEL_DIR / str(os.getppid())


def post_finetune_job(
    workdir: Path,
    student: nn.Layer,
    teacher_checkpoint: Optional[Path],
    epochs: int,
    distill: Optional[DistillSection],
) -> Path:
    """Rank 0: write the next job (the pruned student's weights, then job-<n>.json last) for follow_finetune_jobs."""
    from compress.checkpoint import save_pruned
    from edge_sdk.fileio import atomic_write_text

    folder = parallel_folder(workdir)
    folder.mkdir(parents=True, exist_ok=True)
    index = len(list(folder.glob("job-*.json"))) + 1
    weights = save_pruned(student, folder / "job-{}.pdparams".format(index))
    job = {
        "student": weights.name,
        "teacher": str(teacher_checkpoint) if teacher_checkpoint is not None else None,
        "epochs": int(epochs),
        "distill": to_plain(distill) if distill is not None else None,
    }
    return atomic_write_text(folder / "job-{}.json".format(index), json.dumps(job, sort_keys=True))


def post_finished(workdir: Path) -> None:
    """Rank 0: no more fine-tuning jobs (written when the stages end, also on failure)."""
    from edge_sdk.fileio import atomic_write_text

    folder = parallel_folder(workdir)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / FINISHED_FILE, "")


def follow_finetune_jobs(ctx: StageContext, poll_s: float = 0.5) -> int:
    """The other ranks: run rank 0's fine-tuning jobs in order, data parallel, until it posts FINISHED_FILE.
    Returns the number of jobs run."""
    from compress.checkpoint import load_trained
    from compress.loop import distributed

    rank, world = distributed()
    folder = parallel_folder(ctx.workdir)
    index = 1
    while True:
        job_file = folder / "job-{}.json".format(index)
        if job_file.exists():
            job = json.loads(job_file.read_text())
            teacher = Path(job["teacher"]) if job["teacher"] else None
            distill = DistillSection(**job["distill"]) if job["distill"] else None
            student = load_trained(folder / job["student"])
            _run_finetune(ctx, student, job["epochs"], teacher, distill, rank, world)
            index += 1
        elif (folder / FINISHED_FILE).exists():
            return index - 1
        else:
            time.sleep(poll_s)


def run_train_stage(ctx: StageContext, previous: Optional[StageRecord] = None) -> StageOutput:
    """-> (files, metrics, info). Trains (or resumes) into WORKDIR/train."""
    from compress.checkpoint import BEST_CHECKPOINT, load_trained
    from compress.train import train

    result = train(ctx.recipe, ctx.data_dir, ctx.workdir / "train", resume=ctx.resume, progress=ctx.progress)
    net = load_trained(result.best_checkpoint)
    metrics, per_class = _export_and_measure(ctx, net, "train")
    info = {"best_map50": result.best_map50, "per_class": per_class}
    return {"checkpoint": BEST_CHECKPOINT, "bundle": BUNDLE_FILE}, metrics, info


def run_prune_stage(ctx: StageContext, previous: StageRecord) -> StageOutput:
    from compress.checkpoint import load_trained, save_pruned
    from compress.prune import prune_model

    cfg = ctx.recipe.prune
    teacher = load_trained(previous.path(ctx.workdir, "checkpoint"))
    folder = ctx.workdir / "prune"
    ctx.log(
        "pruning: sensitivity of each group at ratios {} on {} val images".format(
            list(cfg.ratios), cfg.val_images or len(ctx.val_set)
        )
    )
    pruned, info = prune_model(teacher, ctx.val_set, ctx.input_size, cfg, folder, ctx.postprocess)
    ctx.log("pruned to {:.3f} of the FLOPs".format(info["flops_ratio"]))
    history = _finetune(ctx, pruned, cfg.epochs) if cfg.epochs > 0 else []
    save_pruned(pruned, folder / "pruned.pdparams", {"classes": list(ctx.val_set.classes)})
    metrics, per_class = _export_and_measure(ctx, pruned, "prune")
    info = {k: v for k, v in info.items() if k != "sensitivity"}
    info.update(finetune=history, per_class=per_class)
    return {"checkpoint": "pruned.pdparams", "bundle": BUNDLE_FILE}, metrics, info


def run_distill_stage(ctx: StageContext, previous: StageRecord, teacher_record: StageRecord) -> StageOutput:
    from compress.checkpoint import load_trained, save_pruned

    cfg = ctx.recipe.distill
    student = load_trained(previous.path(ctx.workdir, "checkpoint"))
    ctx.log(
        "distilling: {} epochs, weight {:g}, feature weight {:g}".format(cfg.epochs, cfg.weight, cfg.feature_weight)
    )
    history = _finetune(ctx, student, cfg.epochs, teacher_record.path(ctx.workdir, "checkpoint"), cfg)
    folder = ctx.workdir / "distill"
    save_pruned(student, folder / "student.pdparams", {"classes": list(ctx.val_set.classes)})
    teacher_sha = file_sha256(teacher_record.path(ctx.workdir, "checkpoint"))
    metrics, per_class = _export_and_measure(ctx, student, "distill", ctx.provenance(teacher_sha256=teacher_sha))
    info = {"finetune": history, "per_class": per_class}
    return {"checkpoint": "student.pdparams", "bundle": BUNDLE_FILE}, metrics, info


def run_int8_stage(ctx: StageContext, previous: StageRecord) -> StageOutput:
    from calibration.budget import AccuracyBudgetExceeded, int8_manifest, quantize_within_budget
    from calibration.calibration_set import select_calibration_set
    from calibration.golden import self_check
    from calibration.ptq import LAYER_NAMES_FILE
    from compress.checkpoint import load_trained
    from compress.export import LAYER_NAMES_MEMBER

    cfg = ctx.recipe.int8
    folder = ctx.workdir / "int8"
    fp32_bundle = previous.path(ctx.workdir, "bundle")
    calibration = select_calibration_set(
        ctx.train_set, cfg.calibration_images, cfg.seed, cfg.brightness_bins, cfg.size_bins
    )
    model_dir = folder / "model"
    info: Dict[str, Any] = {"from": previous.stage}
    with open_bundle(fp32_bundle) as bundle:
        manifest = bundle.manifest
        golden = golden_members(bundle)
        fp32_dir = bundle.path_of(MODEL_PROGRAM).parent
        ctx.log(
            "INT8: PTQ ({}, {} calibration images) of the {} bundle".format(cfg.algo, len(calibration), previous.stage)
        )
        try:
            result = quantize_within_budget(
                fp32_dir,
                manifest,
                calibration.records,
                ctx.val_set,
                model_dir,
                algo=cfg.algo,
                budget_points=cfg.budget_map50,
                max_retries=cfg.max_retries,
                layers_per_retry=cfg.layers_per_retry,
                sensitivity_images=cfg.sensitivity_images,
                batch_size=cfg.batch_size,
                progress=ctx.progress,
                log=ctx.log,
            )
            quantization = result.quantization
            info.update(fp32_map50=result.fp32.map50, ptq_map50=result.int8.map50, attempts=len(result.attempts))
        except AccuracyBudgetExceeded as exc:
            if cfg.fallback != "qat":
                raise
            from compress.qat import quantize_aware_train

            ctx.log("INT8: {}; falling back to QAT".format(exc))
            qat = ctx.recipe.qat
            quantize_aware_train(
                load_trained(previous.path(ctx.workdir, "checkpoint")),
                ctx.train_set,
                ctx.input_size,
                model_dir,
                qat,
                ctx.postprocess,
                progress=ctx.progress,
            )
            quantization = Quantization(method="qat", calibration_images=0)
            info.update(fp32_map50=exc.fp32_map50, ptq_map50=exc.int8_map50, qat=True)
    provenance = dataclasses.replace(manifest.provenance, calibration_sha256=calibration.sha256)
    int8 = dataclasses.replace(int8_manifest(manifest, quantization), provenance=provenance, files=(), created_at="")
    files: Dict[str, Any] = {
        MODEL_PROGRAM: model_dir / PROGRAM_FILE,
        MODEL_PARAMS: model_dir / PARAMS_FILE,
    }
    if (model_dir / LAYER_NAMES_FILE).is_file():
        files[LAYER_NAMES_MEMBER] = model_dir / LAYER_NAMES_FILE
    files.update(golden)
    write_bundle(folder / BUNDLE_FILE, int8, files)
    problems = self_check(folder / BUNDLE_FILE)
    if problems:
        raise RecipeError("the INT8 bundle would fail the robot's install check: {}".format(problems[0]))
    before = previous.metrics
    metrics, per_class = measure_stage(ctx, "int8", folder / BUNDLE_FILE, before.get("flops"), before.get("params"))
    if info.get("qat"):
        _check_qat_budget(info["fp32_map50"], info["ptq_map50"], metrics.map50, cfg.budget_map50)
    info.update(quantization=to_plain(quantization), calibration_sha256=calibration.sha256, per_class=per_class)
    return (
        {"bundle": BUNDLE_FILE, "pdmodel": MODEL_PROGRAM, "pdiparams": MODEL_PARAMS},
        metrics,
        info,
    )


def _check_qat_budget(fp32_map50: float, ptq_map50: float, qat_map50: Optional[float], budget_points: float) -> None:
    """RecipeError in one line when the QAT model still loses more than `budget_points` of mAP@.5."""
    loss = (fp32_map50 - (qat_map50 or 0.0)) * 100.0
    if loss > budget_points:
        raise RecipeError(
            "INT8 after QAT still loses {:.2f} points of mAP@.5 (FP32 {:.4f}, PTQ {:.4f}, QAT {:.4f}), over the "
            "budget of {:g}: train longer (qat.epochs), change qat.lr or raise int8.budget_map50".format(
                loss, fp32_map50, ptq_map50, qat_map50 or 0.0, budget_points
            )
        )


@dataclass(frozen=True)
class Stage:
    """One row of the stage table.

    name: as a recipe's `stages` names it (compress.config.STAGES). sections: the recipe sections its
    cache key covers (train's hyper-parameters also drive the fine-tuning). inputs: earlier stages whose
    records it reads besides the stage before it. run(ctx, record of the stage before it or None,
    *records of `inputs`) -> (files, StageMetrics, info); None for export, which the driver
    (compress.pipeline) does itself, never cached: it is cheap.
    """

    name: str
    sections: Tuple[str, ...]
    inputs: Tuple[str, ...] = ()
    run: Optional[Callable[..., Any]] = None

    @property
    def cached(self) -> bool:
        return self.run is not None


STAGE_TABLE: Dict[str, Stage] = {
    stage.name: stage
    for stage in (
        Stage("train", ("model", "data", "train", "export"), (), run_train_stage),
        Stage("prune", ("prune", "train", "export"), (), run_prune_stage),
        Stage("distill", ("distill", "train", "export"), ("train",), run_distill_stage),
        Stage("int8", ("int8", "qat", "export"), (), run_int8_stage),
        Stage("export", ()),
    )
}
"""Every stage, in the order of compress.config.STAGES."""
