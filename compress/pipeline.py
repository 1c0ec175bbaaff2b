"""The compress driver: data, then the recipe's stages (compress.stages: train -> prune -> distill -> int8,
each cached in WORKDIR/<stage>/ and measured through device.detector.Detector, the code that ships), then
export: the last stage's bundle re-written with every stage's metrics, and WORKDIR/report.md + stages.png.

Workdir layout: data/ (synthetic data, when the recipe asks for it), train/ (checkpoints, metrics.jsonl,
training.png), prune/ (sensitivity.json/png, pruned.pdparams), distill/ (student.pdparams), int8/ (model/),
each with its model.edgebundle and done.json, and the final bundle unless `out` says otherwise.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from compress.config import Recipe
from edge_sdk.errors import DataError

DATA_STAMP = "synthetic.json"


@dataclass
class CompressResult:
    """bundle: the written bundle; metrics: the manifest's StageMetrics; history: training epochs."""

    bundle: Path
    metrics: List[Any] = field(default_factory=list)
    history: List[Dict[str, Any]] = field(default_factory=list)
    per_class: List[Dict[str, Any]] = field(default_factory=list)
    report: Optional[Path] = None


def prepare_data(recipe: Recipe, workdir: Path, data_dir: Optional[Path] = None, progress: bool = True) -> Path:
    """The folder holding the recipe's train/val COCO files: `data_dir` if given, the synthetic data
    (made once per (images, seed, size) in workdir/data), or data.path (relative to the recipe file)."""
    if data_dir is not None:
        path = Path(data_dir)
        if not path.is_dir():
            raise DataError("--data: no such folder {}".format(path))
        return path
    if recipe.data.path != "synthetic":
        path = Path(recipe.data.path).expanduser()
        if not path.is_absolute() and recipe.source:
            path = Path(recipe.source).parent / path
        if not path.is_dir():
            raise DataError("data.path: no such folder {}".format(path))
        return path
    from edge_sdk.data.synth import GENERATOR_VERSION, synthesize

    out = Path(workdir) / "data"
    wanted = {
        "images": recipe.data.images,
        "seed": recipe.data.seed,
        "size": list(recipe.data.size),
        "generator": GENERATOR_VERSION,
    }
    stamp = out / DATA_STAMP
    train_json, val_json = out / recipe.data.train, out / recipe.data.val
    try:
        current = json.loads(stamp.read_text()) if stamp.is_file() else None
    except ValueError:
        current = None
    if current != wanted or not train_json.is_file() or not val_json.is_file():
        made_train, made_val = synthesize(
            out, recipe.data.images, recipe.data.seed, tuple(recipe.data.size), progress=progress
        )
        if (made_train.name, made_val.name) != (recipe.data.train, recipe.data.val):
            raise DataError(
                "synthetic data is written as {} / {}: set data.train / data.val to those".format(
                    made_train.name, made_val.name
                )
            )
        stamp.write_text(json.dumps(wanted))
    return out


def _sha256_files(paths: List[Path]) -> str:
    digest = hashlib.sha256()
    for p in paths:
        digest.update(Path(p).read_bytes())
    return digest.hexdigest()


def measure_bundle(
    bundle_path: Path, val_set: Any, threads: Optional[int] = None, latency_images: int = 20
) -> Dict[str, Any]:
    """Run a bundle through device.detector.Detector (Paddle Inference) on every val image.

    Returns map50, map (COCO, every score kept), latency_ms (median per image of the first
    `latency_images` images after one warm-up, preprocessing + inference + postprocessing, CPU),
    bytes (model files in the bundle) and per_class.
    """
    import cv2

    from device.detector import Detector
    from edge_sdk.bundle import open_bundle
    from edge_sdk.metrics import evaluate

    with open_bundle(bundle_path) as bundle:
        model_bytes = sum(e.size for e in bundle.manifest.files if e.path.startswith("model/"))
        detector = Detector(bundle, device="cpu", threads=threads)
        try:
            predictions, times = [], []
            for i, record in enumerate(val_set.images):
                image = cv2.imread(str(record.path), cv2.IMREAD_COLOR)
                if image is None:
                    raise DataError("cannot decode image {}".format(record.path))
                if i == 0:
                    detector.detect(image, score_threshold=0.0)
                started = time.perf_counter()
                predictions.append(detector.detect(image, score_threshold=0.0))
                if i < latency_images:
                    times.append((time.perf_counter() - started) * 1000.0)
        finally:
            detector.close()
    result = evaluate(val_set, predictions)
    return {
        "map50": result.map50,
        "map": result.map,
        "latency_ms": statistics.median(times) if times else None,
        "bytes": model_bytes,
        "per_class": [c.to_dict() for c in result.per_class],
    }


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
        data = _wait_for_data(recipe, workdir, data_dir)
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


def rewrite_bundle(
    draft: Any,
    out: Path,
    metrics: Any = None,
    extra_files: Optional[Dict[str, Any]] = None,
    recipe_sha256: Optional[str] = None,
) -> Path:
    """Re-write bundle `draft` (a path, or a Bundle already opened) as `out` with the very same member
    files (the model that was measured is byte for byte the one shipped), plus `extra_files` (archive
    name -> bytes or path); `metrics` and `recipe_sha256` (provenance) replace the manifest's when given."""
    import dataclasses

    from edge_sdk.bundle import opened_bundle, write_bundle

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with opened_bundle(draft) as bundle:
        manifest = dataclasses.replace(bundle.manifest, files=(), created_at="")
        if metrics is not None:
            manifest = dataclasses.replace(manifest, metrics=tuple(metrics))
        if recipe_sha256 is not None:
            manifest = dataclasses.replace(
                manifest, provenance=dataclasses.replace(manifest.provenance, recipe_sha256=recipe_sha256)
            )
        files = {entry.path: bundle.path_of(entry.path) for entry in bundle.manifest.files}
        files.update(extra_files or {})
        return Path(write_bundle(out, manifest, files))


def _wait_for_data(recipe: Recipe, workdir: Path, data_dir: Optional[Path], timeout_s: float = 3600.0) -> Path:
    """Ranks > 0 wait for rank 0 to prepare the data (synthetic data is written once)."""
    if data_dir is not None or recipe.data.path != "synthetic":
        return prepare_data(recipe, workdir, data_dir, progress=False)
    stamp = Path(workdir) / "data" / DATA_STAMP
    deadline = time.time() + timeout_s
    while not stamp.is_file():
        if time.time() > deadline:
            raise DataError("timed out waiting for rank 0 to write {}".format(stamp))
        time.sleep(1.0)
    return stamp.parent


def summary_rows(result: CompressResult) -> List[List[str]]:
    """[stage, mAP@.5, mAP, GFLOPs, params (M), bundle MB, CPU ms] rows of the bundle's metrics, as text."""
    from compress.compression_report import metrics_rows

    return metrics_rows(result.metrics)
