"""Compression targets, measured side by side from one finished compress workdir.

    .venv/bin/python benchmarks/compression.py [--workdir WORKDIR] [--recipe recipes/demo.yml]

WORKDIR is a folder `edge-sdk compress` / `edge-sdk demo` has run all stages in (train, prune,
distill, int8); without it (or when its stages are missing) the recipe's pipeline runs there first
(default workdir: bench-compression/). Every number comes from the stages' done-records (bundles run
through device.pipeline.Detector on the val set) except "distillation helps": the pruned model is
fine-tuned again for distill.epochs WITHOUT the teacher (same lr, seed and data), exported and
measured the same way, next to the distilled model's mAP@.5. Bundle bytes are the sizes of the files
that are flashed (compressed, with the same golden images in the FP32 and the INT8 bundle); the
"uncompressed" lines compare the members as the manifest lists them.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import edge_sdk  # noqa: F401  (zlib before paddle)

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def _ratio(a, b):
    return None if a is None or not b else a / b


def member_bytes(bundle: Path, prefix: str) -> int:
    """Sum of the sizes the bundle's manifest lists for members whose name starts with `prefix`."""
    from edge_sdk.bundle import open_bundle

    with open_bundle(bundle) as opened:
        return sum(entry.size for entry in opened.manifest.files if entry.path.startswith(prefix))


def row(label: str, value, target: str, passed) -> str:
    shown = "n/a" if value is None else "{:.3f}".format(value)
    verdict = "" if passed is None else ("PASS" if passed else "MISS")
    return "{:<52} {:>8}   {:<10} {}".format(label, shown, target, verdict)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("bench-compression"))
    parser.add_argument("--recipe", type=Path, default=REPO / "recipes" / "demo.yml")
    parser.add_argument("--quiet", action="store_true", help="Hide the stages' progress lines.")
    args = parser.parse_args()

    from compress.pipeline import run
    from compress.recipe import load_recipe
    from compress.stages import StageStore, _finetune, make_context, measure_stage, section_of
    from compress.train import load_trained

    recipe = load_recipe(args.recipe)
    log = (lambda _m: None) if args.quiet else (lambda m: print(m, file=sys.stderr, flush=True))
    store = StageStore(args.workdir)
    if any(store.read(s) is None for s in ("train", "prune", "distill", "int8")):
        started = time.time()
        print("running {} in {} (missing stages)".format(args.recipe, args.workdir), file=sys.stderr)
        run(recipe, args.workdir, progress=False, log=log)
        print("pipeline took {:.0f} s".format(time.time() - started), file=sys.stderr)
    train, prune, distill, int8 = (store.read(s) for s in ("train", "prune", "distill", "int8"))
    if None in (train, prune, distill, int8):
        print("error: {} lacks a stage; run all of train, prune, distill, int8".format(args.workdir))
        return 1
    fp32 = store.read(int8.info.get("from", "distill"))

    ctx = make_context(recipe, args.workdir, progress=False, log=log)
    folder = args.workdir / "bench-nodistill"
    folder.mkdir(parents=True, exist_ok=True)
    student = load_trained(prune.path(args.workdir, "checkpoint"))
    epochs = section_of(recipe, "distill").epochs
    log("fine-tuning the pruned model {} epochs without distillation".format(epochs))
    _finetune(ctx, student, epochs)
    from compress.export import export_bundle

    size = ctx.input_size
    bundle = folder / "model.edgebundle"
    export_bundle(student, list(ctx.val_set.classes), (size, size), bundle, "nodistill", "0.0.0", ctx.postprocess)
    nodistill, _ = measure_stage(ctx, "nodistill", bundle, None, None)

    m = {r.stage: r.metrics for r in (train, prune, distill, int8)}
    flops = _ratio(m["prune"]["flops"], m["train"]["flops"])
    acc = _ratio(m["distill"]["map50"], m["train"]["map50"])
    size_ratio = _ratio(int8.metrics["bytes"], fp32.metrics["bytes"])
    int8_acc = _ratio(int8.metrics["map50"], fp32.metrics["map50"])
    lat_pruned = _ratio(m["distill"]["latency_ms"], m["train"]["latency_ms"])
    lat_int8 = _ratio(int8.metrics["latency_ms"], fp32.metrics["latency_ms"])
    print("workdir {}  (INT8 from the {} stage)".format(args.workdir, fp32.stage))
    print("{:<52} {:>8}   {:<10} {}".format("measure", "value", "target", ""))
    print(row("FLOPs pruned / unpruned", flops, "<= 0.50", None if flops is None else flops <= 0.5 + 1e-9))
    print(row("mAP@.5 pruned+distilled / unpruned", acc, ">= 0.95", None if acc is None else acc >= 0.95))
    print(row("bundle bytes INT8 / FP32", size_ratio, "<= 0.30", None if size_ratio is None else size_ratio <= 0.30))
    print(
        row(
            "  INT8 / unpruned FP32 (train) bundle bytes",
            _ratio(int8.metrics["bytes"], m["train"]["bytes"]),
            "(report)",
            None,
        )
    )
    int8_bundle, fp32_bundle = int8.path(args.workdir, "bundle"), fp32.path(args.workdir, "bundle")
    models = _ratio(member_bytes(int8_bundle, "model/"), member_bytes(fp32_bundle, "model/"))
    weights = _ratio(
        member_bytes(int8_bundle, "model/model.pdiparams"), member_bytes(fp32_bundle, "model/model.pdiparams")
    )
    print(row("  uncompressed model files only (pdmodel + pdiparams)", models, "(report)", None))
    print(row("  uncompressed weights only (pdiparams)", weights, "(report)", None))
    print(row("  golden images in each bundle (MB)", member_bytes(int8_bundle, "calibration/") / 1e6, "(report)", None))
    print(row("mAP@.5 INT8 / FP32", int8_acc, ">= 0.95", None if int8_acc is None else int8_acc >= 0.95))
    print(row("CPU latency pruned / unpruned", lat_pruned, "(report)", None))
    print(row("CPU latency INT8 / FP32", lat_int8, "(report)", None))
    print(row("mAP@.5 unpruned (train)", m["train"]["map50"], "", None))
    print(row("mAP@.5 pruned, fine-tuned without distillation", nodistill.map50, "", None))
    print(row("mAP@.5 pruned, fine-tuned with distillation", m["distill"]["map50"], "", None))
    helps = None
    if nodistill.map50 is not None and m["distill"]["map50"] is not None:
        helps = m["distill"]["map50"] > nodistill.map50
    print(
        row(
            "distillation helps (with - without)",
            None if helps is None else m["distill"]["map50"] - nodistill.map50,
            "> 0",
            helps,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
