"""The compress driver: data, then the recipe's stages (compress.stages.STAGE_TABLE: train -> prune -> distill -> int8,
each cached in WORKDIR/<stage>/ and measured through device.detector.Detector, the code that ships), then
export: the last stage's bundle re-written with every stage's metrics, and WORKDIR/report.md + stages.png.

Workdir layout: data/ (synthetic data, when the recipe asks for it), train/ (checkpoints, metrics.jsonl,
training.png), prune/ (sensitivity.json/png, pruned.pdparams), distill/ (student.pdparams), int8/ (model/),
each with its model.edgebundle and done.json, and the final bundle unless `out` says otherwise.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from compress.config import Recipe, check_stages
from compress.data import data_sha256, prepare_data, wait_for_data
from compress.stage_cache import DONE_FILE, StageRecord, StageStore
from compress.stages import PARALLEL_DIR, STAGE_TABLE, StageContext, follow_finetune_jobs, post_finished, stage_key
from edge_sdk.errors import RecipeError
from edge_sdk.manifest import StageMetrics


@dataclass
class CompressResult:
    """bundle: the written bundle; metrics: the manifest's StageMetrics; history: training epochs."""

    bundle: Path
    metrics: List[StageMetrics] = field(default_factory=list)
    history: List[Dict[str, Any]] = field(default_factory=list)
    per_class: List[Dict[str, Any]] = field(default_factory=list)
    report: Optional[Path] = None
    speed: List[str] = field(default_factory=list)


def run(
    recipe: Recipe,
    workdir: Path,
    out: Optional[Path] = None,
    data_dir: Optional[Path] = None,
    resume: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
    stages: Optional[List[str]] = None,
) -> Optional[CompressResult]:
    """Run the recipe's stages (or the subset `stages`), each cached in WORKDIR/<stage>/ (compress.stages);
    the export stage writes the final bundle with every stage's metrics and WORKDIR/report.md.

    Returns None on data-parallel ranks other than 0: they train, then join rank 0's fine-tuning
    (compress.stages.follow_finetune_jobs).
    """
    import paddle

    from compress.compression_report import write_report
    from compress.export import rewrite_bundle
    from compress.train import train

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    chosen = check_stages(stages) if stages is not None else list(recipe.stages)
    rank = paddle.distributed.get_rank()
    if rank != 0:
        data = wait_for_data(recipe, workdir, data_dir)
        ctx = make_context(recipe, workdir, data, progress=False, log=log, resume=resume, prepared=True)
        done = StageStore(workdir).read("train")
        if "train" in chosen and (done is None or done.key != stage_key("train", recipe, "", ctx.data_sha256)):
            train(recipe, data, workdir / "train", resume=resume, progress=False)
        follow_finetune_jobs(ctx)
        return None
    ctx = make_context(recipe, workdir, data_dir, progress=progress, log=log, resume=resume)
    if paddle.distributed.get_world_size() > 1:
        shutil.rmtree(str(workdir / PARALLEL_DIR), ignore_errors=True)  # earlier launches' jobs
    try:
        result = run_stages(ctx, recipe.stages, chosen)
    finally:
        if paddle.distributed.get_world_size() > 1:
            post_finished(workdir)
    metrics = [record.stage_metrics() for record in result.records]
    last = result.records[-1]
    per_class = list(last.info.get("per_class") or [])
    history = _read_history(workdir / "train" / "metrics.jsonl")
    if "export" not in chosen:
        return CompressResult(
            bundle=last.path(workdir, "bundle"), metrics=metrics, history=history, per_class=per_class
        )
    name, version = recipe.output.name, recipe.output.version
    out = Path(out) if out is not None else workdir / "{}-{}.edgebundle".format(name, version)
    log(
        "writing {} (from the {} stage) with the metrics of {}".format(
            out, last.stage, ", ".join(m.stage for m in metrics)
        )
    )
    bundle = rewrite_bundle(last.path(workdir, "bundle"), out, metrics, recipe_sha256=recipe.sha256)
    notes = []
    prune = next((r for r in result.records if r.stage == "prune"), None)
    if prune is not None:
        notes.append("pruned FLOPs: {:.3f} of the trained model's".format(prune.info.get("flops_ratio", float("nan"))))
    int8 = next((r for r in result.records if r.stage == "int8"), None)
    if int8 is not None:
        quantization = int8.info.get("quantization", {})
        notes.append(
            "INT8 from the {} stage: {} ({}), {} calibration images, {} layer(s) kept in float".format(
                int8.info.get("from"),
                quantization.get("method"),
                quantization.get("algo") or "-",
                quantization.get("calibration_images"),
                len(quantization.get("float_layers") or ()),
            )
        )
    notes.append("stages computed in this run: {}".format(", ".join(result.ran) or "none (all reused)"))
    speed = _speed_against_unpruned(ctx, result.records, bundle, log)
    report = write_report(workdir, metrics, bundle, notes, speed)
    log("report: {}".format(report))
    return CompressResult(
        bundle=bundle, metrics=metrics, history=history, per_class=per_class, report=report, speed=speed
    )


SPEED_ROUNDS = 3


def _speed_against_unpruned(
    ctx: StageContext, records: Sequence[StageRecord], bundle: Path, log: Callable[[str], None]
) -> List[str]:
    """`speed_lines` of the final bundle against the train stage's (unpruned FP32) bundle, timed side by
    side on the first MEASURED_LATENCY_IMAGES val images; [] without a train stage or when the final
    bundle is the train stage's model."""
    from compress.compression_report import side_by_side_ms, speed_lines
    from compress.stages import MEASURED_LATENCY_IMAGES
    from edge_sdk.data.images import read_bgr

    train = next((r for r in records if r.stage == "train"), None)
    if train is None or records[-1].stage == "train":
        return []
    images = [read_bgr(r.path, "val image") for r in ctx.val_set.images[:MEASURED_LATENCY_IMAGES]]
    if not images:
        return []
    log("timing the final bundle against the unpruned FP32 one, side by side")
    final = "final bundle ({})".format(records[-1].stage)
    base = "unpruned FP32 (train)"
    speed_ms = side_by_side_ms({base: train.path(ctx.workdir, "bundle"), final: bundle}, images, SPEED_ROUNDS)
    return speed_lines(speed_ms, base, len(images), SPEED_ROUNDS)


@dataclass
class StagesResult:
    """records: every stage record of the pipeline that exists, in order; ran: the stages computed now."""

    records: List[StageRecord]
    ran: List[str]


def run_stages(ctx: StageContext, pipeline: Sequence[str], selected: Optional[Sequence[str]] = None) -> StagesResult:
    """Run the cached stages of `pipeline` (the recipe's stages) that are in `selected` (default: all).

    A selected stage whose key matches its done-record is reused. A stage that is not selected is read
    from disk when a later selected stage needs it; missing, it raises RecipeError in one line.
    """
    pipeline = check_stages(pipeline)
    chosen = check_stages(selected) if selected is not None else list(pipeline)
    for stage in chosen:
        if stage not in pipeline:
            raise RecipeError("--stages: {} is not one of the recipe's stages ({})".format(stage, ", ".join(pipeline)))
    store = StageStore(ctx.workdir)
    records: Dict[str, StageRecord] = {}
    ran: List[str] = []
    cached = [s for s in pipeline if STAGE_TABLE[s].cached]
    last_needed = max((cached.index(s) for s in chosen if s in cached), default=-1)
    if "export" in chosen:
        last_needed = len(cached) - 1
    for index, stage in enumerate(cached[: last_needed + 1]):
        previous = records.get(cached[index - 1]) if index > 0 else None
        key = stage_key(stage, ctx.recipe, previous.output_sha256 if previous else "", ctx.data_sha256)
        existing = store.read(stage)
        if stage not in chosen:
            if existing is None:
                raise RecipeError(
                    "stage {} needs the output of stage {}, and {} has none: run --stages {} first".format(
                        _next_chosen(cached, chosen, index), stage, ctx.workdir / stage, stage
                    )
                )
            if existing.key != key:
                ctx.log(
                    "note: using the {} stage's output although its recipe sections, data or input changed "
                    "since it ran (it is not in --stages)".format(stage)
                )
            records[stage] = existing
            continue
        if existing is not None and existing.key == key:
            ctx.log("{}: unchanged, reusing {}".format(stage, ctx.workdir / stage / DONE_FILE))
            records[stage] = existing
            continue
        ctx.log("{}: running".format(stage))
        started = time.time()
        store.folder(stage)
        store.invalidate(stage)
        inputs = [records[name] for name in STAGE_TABLE[stage].inputs]
        files, metrics, info = STAGE_TABLE[stage].run(ctx, previous, *inputs)
        records[stage] = store.write(stage, key, files, metrics, info, time.time() - started)
        ran.append(stage)
    return StagesResult([records[s] for s in cached if s in records], ran)


def _next_chosen(cached: Sequence[str], chosen: Sequence[str], index: int) -> str:
    for stage in cached[index + 1 :]:
        if stage in chosen:
            return stage
    return "export"


def make_context(
    recipe: Recipe,
    workdir: Path,
    data_dir: Optional[Path] = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    resume: bool = False,
    prepared: bool = False,
) -> StageContext:
    """The StageContext of `recipe` in `workdir`. data_dir: as compress.data.prepare_data takes it, or,
    with prepared=True, the folder prepare_data returned."""
    from compress.train import load_datasets

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    data = Path(data_dir) if prepared else prepare_data(recipe, workdir, data_dir, progress)
    train_set, val_set = load_datasets(recipe, data)
    return StageContext(recipe, workdir, data, data_sha256(recipe, data), train_set, val_set, progress, log, resume)


def _read_history(path: Path) -> List[Dict[str, Any]]:
    try:
        return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    except (OSError, ValueError):
        return []


def summary_rows(result: CompressResult) -> List[List[str]]:
    """[stage, mAP@.5, mAP, GFLOPs, params (M), bundle MB, CPU ms] rows of the bundle's metrics, as text."""
    from compress.compression_report import metrics_rows

    return metrics_rows(result.metrics)
