"""The compress driver: data, then the recipe's stages (compress.stages: train -> prune -> distill -> int8,
each cached in WORKDIR/<stage>/ and measured through device.detector.Detector, the code that ships), then
export: the last stage's bundle re-written with every stage's metrics, and WORKDIR/report.md + stages.png.

Workdir layout: data/ (synthetic data, when the recipe asks for it), train/ (checkpoints, metrics.jsonl,
training.png), prune/ (sensitivity.json/png, pruned.pdparams), distill/ (student.pdparams), int8/ (model/),
each with its model.edgebundle and done.json, and the final bundle unless `out` says otherwise.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from compress.config import Recipe


@dataclass
class CompressResult:
    """bundle: the written bundle; metrics: the manifest's StageMetrics; history: training epochs."""

    bundle: Path
    metrics: List[Any] = field(default_factory=list)
    history: List[Dict[str, Any]] = field(default_factory=list)
    per_class: List[Dict[str, Any]] = field(default_factory=list)
    report: Optional[Path] = None


def run(
    recipe: Recipe,
    workdir: Path,
    out: Optional[Path] = None,
    data_dir: Optional[Path] = None,
    resume: bool = False,
    progress: bool = True,
    log: Any = print,
    stages: Optional[List[str]] = None,
) -> Optional[CompressResult]:
    """Run the recipe's stages (or the subset `stages`), each cached in WORKDIR/<stage>/ (compress.stages);
    the export stage writes the final bundle with every stage's metrics and WORKDIR/report.md.

    Returns None on data-parallel ranks other than 0: they train, then join rank 0's fine-tuning
    (compress.stages.follow_finetune_jobs).
    """
    import paddle

    from compress.compression_report import write_report
    from compress.data import wait_for_data
    from compress.export import rewrite_bundle
    from compress.stages import (
        PARALLEL_DIR,
        StageStore,
        follow_finetune_jobs,
        make_context,
        post_finished,
        run_stages,
        stage_key,
        validate_stages,
    )
    from compress.train import train

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    chosen = validate_stages(stages) if stages is not None else list(recipe.stages)
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
    report = write_report(workdir, metrics, bundle, notes)
    log("report: {}".format(report))
    return CompressResult(bundle=bundle, metrics=metrics, history=history, per_class=per_class, report=report)


def _read_history(path: Path) -> List[Dict[str, Any]]:
    try:
        return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    except (OSError, ValueError):
        return []


def summary_rows(result: CompressResult) -> List[List[str]]:
    """[stage, mAP@.5, mAP, GFLOPs, params (M), bundle MB, CPU ms] rows of the bundle's metrics, as text."""
    from compress.compression_report import metrics_rows

    return metrics_rows(result.metrics)
