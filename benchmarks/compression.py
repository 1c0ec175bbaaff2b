"""Compression targets, measured side by side from one finished compress workdir.

    .venv/bin/python benchmarks/compression.py [--workdir WORKDIR] [--recipe recipes/demo.yml] [--seeds 3] [--json]

WORKDIR is a folder `edge-sdk compress` / `edge-sdk demo` has run all stages in (train, prune,
distill, int8); without it (or when its stages are missing) the recipe's pipeline runs there first
(default workdir: bench-compression/). Every number comes from the stages' done-records (bundles run
through device.detector.Detector on the val set), so a finished WORKDIR is read, not retrained, except
"distillation helps", measured only with --seeds N: the distill stage runs again in
WORKDIR/bench-distill/ from the same pruned model, for the same epochs, lr and data, without the
teacher (distill.weight 0) under N seeds, and with it under the seeds the distill stage did not use,
data parallel on 2 CPU processes like the demo; each run is exported and measured the same way (and
cached there: a second run reuses them). The target compares the means: one pair of runs is within the seed-to-seed spread. Bundle bytes
are the sizes of the files that are flashed (compressed, with the same golden images in the FP32 and
the INT8 bundle); the "uncompressed" lines compare the members as the manifest lists them.
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


def fine_tune(recipe_path: Path, workdir: Path, seed: int, teacher: bool, log, quiet: bool) -> dict:
    """Metrics of the distill stage re-run in WORKDIR/bench-distill/<with|without>-seed<seed>: the same
    pruned model fine-tuned for the same epochs, lr and data with train.seed = `seed` (the shuffle and
    the augmentation), with the recipe's distill section or with distill.weight 0 (plain fine-tuning),
    the way `edge-sdk demo` runs it (data parallel over 2 CPU processes when there are 2 cores)."""
    import json
    import os
    import shutil
    import subprocess

    import yaml

    folder = workdir / "bench-distill" / "{}-seed{}".format("with" if teacher else "without", seed)
    for stage in ("data", "train", "prune"):
        shutil.rmtree(str(folder / stage), ignore_errors=True)
        shutil.copytree(str(workdir / stage), str(folder / stage))
    document = yaml.safe_load(Path(recipe_path).read_text())
    document.setdefault("train", {})["seed"] = seed
    if not teacher:
        document.setdefault("distill", {}).update(weight=0.0, feature_weight=0.0)
    recipe = folder / "recipe.yml"
    recipe.write_text(yaml.safe_dump(document))
    command = [sys.executable, "-m", "edge_cli", "compress", str(recipe), "--workdir", str(folder)]
    command += ["--stages", "distill", "--no-progress"]
    if (os.cpu_count() or 1) > 1:
        command += ["--gpus", "cpu:2"]
    log(
        "fine-tuning the pruned model {} epochs {} distillation, seed {}".format(
            document.get("distill", {}).get("epochs"), "with" if teacher else "without", seed
        )
    )
    quiet_output = subprocess.DEVNULL if quiet else None
    subprocess.run(command, check=True, stdout=quiet_output, stderr=quiet_output)
    return json.loads((folder / "distill" / "done.json").read_text())["metrics"]


def _mean(values):
    return None if not values or None in values else sum(values) / len(values)


def _difference(a, b):
    return None if a is None or b is None else a - b


def row(label: str, value, target: str, passed) -> str:
    shown = "n/a" if value is None else "{:.3f}".format(value)
    verdict = "" if passed is None else ("PASS" if passed else "MISS")
    return "{:<52} {:>8}   {:<10} {}".format(label, shown, target, verdict)


def json_line(values: dict) -> str:
    """`values` as one JSON object on one line (floats rounded to 4 digits, keys sorted)."""
    import json

    return json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in values.items()}, sort_keys=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("bench-compression"))
    parser.add_argument("--recipe", type=Path, default=REPO / "recipes" / "demo.yml")
    parser.add_argument(
        "--seeds",
        type=int,
        default=0,
        help="Fine-tune the pruned model with and without the teacher under this many seeds (train.seed, "
        "+1, ...; the distill stage itself is the first run with the teacher; 2N-1 runs of about 3 "
        "minutes): one run is within the seed-to-seed spread of a few points of mAP@.5. 0: not measured.",
    )
    parser.add_argument("--json", action="store_true", help="End with every ratio as one JSON object on one line.")
    parser.add_argument("--quiet", action="store_true", help="Hide the stages' progress lines.")
    args = parser.parse_args()

    from compress.config import load_recipe
    from compress.pipeline import run
    from compress.stage_cache import StageStore

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
        print("error: {} lacks a stage; run all of train, prune, distill, int8".format(args.workdir), file=sys.stderr)
        return 1
    fp32 = store.read(int8.info.get("from", "distill"))

    seeds = [recipe.train.seed + k for k in range(args.seeds)]
    with_teacher = [distill.metrics["map50"]]
    with_teacher += [fine_tune(args.recipe, args.workdir, s, True, log, args.quiet)["map50"] for s in seeds[1:]]
    without_teacher = [fine_tune(args.recipe, args.workdir, s, False, log, args.quiet)["map50"] for s in seeds]
    if not seeds:
        with_teacher = without_teacher = []

    m = {r.stage: r.metrics for r in (train, prune, distill, int8)}
    flops = _ratio(m["prune"]["flops"], m["train"]["flops"])
    acc = _ratio(m["distill"]["map50"], m["train"]["map50"])
    size_ratio = _ratio(int8.metrics["bytes"], fp32.metrics["bytes"])
    int8_acc = _ratio(int8.metrics["map50"], fp32.metrics["map50"])
    lat_pruned = _ratio(m["distill"]["latency_ms"], m["train"]["latency_ms"])
    lat_int8 = _ratio(int8.metrics["latency_ms"], fp32.metrics["latency_ms"])
    int8_bundle, fp32_bundle = int8.path(args.workdir, "bundle"), fp32.path(args.workdir, "bundle")
    models = _ratio(member_bytes(int8_bundle, "model/"), member_bytes(fp32_bundle, "model/"))
    weights = _ratio(
        member_bytes(int8_bundle, "model/model.pdiparams"), member_bytes(fp32_bundle, "model/model.pdiparams")
    )
    gain = _difference(_mean(with_teacher), _mean(without_teacher))
    values = {
        "flops_ratio": flops,
        "pruned_map_kept": acc,
        "int8_bytes_ratio": size_ratio,
        "int8_over_train_bytes_ratio": _ratio(int8.metrics["bytes"], m["train"]["bytes"]),
        "int8_model_files_ratio": models,
        "int8_weights_ratio": weights,
        "golden_mb": member_bytes(int8_bundle, "calibration/") / 1e6,
        "int8_map_kept": int8_acc,
        "latency_pruned_ratio": lat_pruned,
        "latency_int8_ratio": lat_int8,
        "map50_train": m["train"]["map50"],
        "map50_without_distillation": _mean(without_teacher),
        "map50_with_distillation": _mean(with_teacher),
        "distillation_gain": gain,
    }
    print("workdir {}  (INT8 from the {} stage)".format(args.workdir, fp32.stage))
    print("{:<52} {:>8}   {:<10} {}".format("measure", "value", "target", ""))
    print(row("FLOPs pruned / unpruned", flops, "<= 0.50", None if flops is None else flops <= 0.5 + 1e-9))
    print(row("mAP@.5 pruned+distilled / unpruned", acc, ">= 0.95", None if acc is None else acc >= 0.95))
    print(row("bundle bytes INT8 / FP32", size_ratio, "<= 0.30", None if size_ratio is None else size_ratio <= 0.30))
    print(row("  INT8 / unpruned FP32 (train) bundle bytes", values["int8_over_train_bytes_ratio"], "(report)", None))
    print(row("  uncompressed model files only (pdmodel + pdiparams)", models, "(report)", None))
    print(row("  uncompressed weights only (pdiparams)", weights, "(report)", None))
    print(row("  golden images in each bundle (MB)", values["golden_mb"], "(report)", None))
    print(row("mAP@.5 INT8 / FP32", int8_acc, ">= 0.95", None if int8_acc is None else int8_acc >= 0.95))
    print(row("CPU latency pruned / unpruned", lat_pruned, "(report)", None))
    print(row("CPU latency INT8 / FP32", lat_int8, "(report)", None))
    print(row("mAP@.5 unpruned (train)", m["train"]["map50"], "", None))
    if seeds:
        seed_list = " ".join(str(x) for x in seeds)
        for label, seed_values in (("without", without_teacher), ("with", with_teacher)):
            print(row("mAP@.5 pruned, fine-tuned {} distillation (mean)".format(label), _mean(seed_values), "", None))
            shown = " ".join("n/a" if v is None else "{:.3f}".format(v) for v in seed_values)
            print("  seeds {}: {}".format(seed_list, shown))
        print(row("distillation helps (mean with - mean without)", gain, "> 0", None if gain is None else gain > 0))
        if gain is not None:
            better = sum(w > wo for w, wo in zip(with_teacher, without_teacher))
            print("  seeds where distillation scored higher: {} of {}".format(better, len(seeds)))
    else:
        print("distillation helps: not measured (--seeds 3 fine-tunes the pruned model 5 more times)")
    if args.json:
        print(json_line(values))
    return 0


if __name__ == "__main__":
    sys.exit(main())
