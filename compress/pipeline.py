"""The compress stages driver: data -> train -> export, then the exported bundle measured and re-written
with its metrics (mAP from the bundle run by device.pipeline.Detector, the code that ships).

Workdir layout: data/ (synthetic data, when the recipe asks for it), train/ (checkpoints,
metrics.jsonl, training.png), export/ (the unmeasured bundle), and the final bundle unless `out`
says otherwise.
"""

from __future__ import annotations

import hashlib
import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from compress.recipe import Recipe
from edge_sdk.errors import DataError

DATA_STAMP = "synthetic.json"


@dataclass
class CompressResult:
    """bundle: the written bundle; metrics: the manifest's StageMetrics; history: training epochs."""

    bundle: Path
    metrics: List[Any] = field(default_factory=list)
    history: List[Dict[str, Any]] = field(default_factory=list)
    per_class: List[Dict[str, Any]] = field(default_factory=list)


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
    """Run a bundle through device.pipeline.Detector (Paddle Inference) on every val image.

    Returns map50, map (COCO, every score kept), latency_ms (median per image of the first
    `latency_images` images after one warm-up, preprocessing + inference + postprocessing, CPU),
    bytes (model files in the bundle) and per_class.
    """
    import cv2

    from device.pipeline import Detector
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
) -> Optional[CompressResult]:
    """Run the recipe's stages; returns None on data-parallel ranks other than 0 (they only train)."""
    import paddle

    from compress.export import count_params, export_bundle, model_flops
    from compress.train import _postprocess_of, load_datasets, load_trained, train
    from edge_sdk.manifest import Provenance, StageMetrics

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    rank = paddle.distributed.get_rank()
    if rank == 0:
        data = prepare_data(recipe, workdir, data_dir, progress)
    else:
        data = _wait_for_data(recipe, workdir, data_dir)
    result = train(recipe, data, workdir / "train", resume=resume, progress=progress)
    if rank != 0:
        return None
    if "export" not in recipe.stages:
        return CompressResult(bundle=result.best_checkpoint, history=result.history)

    _, val_set = load_datasets(recipe, data)
    net = load_trained(result.best_checkpoint)
    size = recipe.model.input_size
    classes = list(val_set.classes)
    name, version = recipe.output.name, recipe.output.version
    out = Path(out) if out is not None else workdir / "{}-{}.edgebundle".format(name, version)
    provenance = Provenance(
        dataset_sha256=_sha256_files([data / recipe.data.train, data / recipe.data.val]), recipe_sha256=recipe.sha256
    )
    postprocess = _postprocess_of(recipe)
    log("exporting and measuring the bundle on {} val images".format(len(val_set)))
    draft = export_bundle(
        net, classes, (size, size), workdir / "export" / out.name, name, version, postprocess, (), provenance
    )
    measured = measure_bundle(draft, val_set)
    stage = StageMetrics(
        stage="train",
        map50=measured["map50"],
        map=measured["map"],
        flops=float(model_flops(net, (size, size))),
        params=float(count_params(net)),
        bytes=float(measured["bytes"]),
        latency_ms=measured["latency_ms"],
    )
    bundle = with_metrics(draft, out, (stage,))
    draft.unlink()
    return CompressResult(bundle=bundle, metrics=[stage], history=result.history, per_class=measured["per_class"])


def with_metrics(draft: Path, out: Path, metrics: Any) -> Path:
    """Re-write bundle `draft` as `out` with `metrics` in its manifest and the very same member files
    (the model that was measured is byte for byte the one shipped)."""
    import dataclasses

    from edge_sdk.bundle import open_bundle, write_bundle

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open_bundle(draft) as bundle:
        manifest = dataclasses.replace(bundle.manifest, metrics=tuple(metrics), files=(), created_at="")
        files = {entry.path: bundle.path_of(entry.path) for entry in bundle.manifest.files}
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
    """[stage, mAP@.5, mAP, GFLOPs, params (M), MB, CPU ms] rows of the bundle's metrics, as text."""

    def fmt(value: Optional[float], scale: float = 1.0, digits: int = 3) -> str:
        return "-" if value is None else "{:.{}f}".format(value / scale, digits)

    return [
        [
            m.stage,
            fmt(m.map50),
            fmt(m.map),
            fmt(m.flops, 1e9, 2),
            fmt(m.params, 1e6, 2),
            fmt(m.bytes, 1e6, 2),
            fmt(m.latency_ms, 1.0, 1),
        ]
        for m in result.metrics
    ]
