"""How long writing, signing and opening a full-size bundle takes, against hashing its files.

    .venv/bin/python benchmarks/bundle_codec.py            # 3 interleaved rounds (~1-2 min)
    .venv/bin/python benchmarks/bundle_codec.py --json     # ... and one JSON object as the last line

A YOLOv3-MobileNetV1 (width 1.0, 6 classes, seeded weights: ~97 MB of float32) is exported with
compress.export into a PaddleDetection-style folder (model.pdmodel, model.pdiparams, infer_cfg.yml)
under --workdir (kept and reused). Then, in interleaved rounds (so load from other processes hits
every side alike; each figure is the median over rounds, each ratio the median of per-round ratios):
- floor: `sha256sum model.pdmodel model.pdiparams` (page cache warm: every file was read just before);
- import: `edge-sdk bundle import-ppdet FOLDER --out B` (hash, write, verify what was written);
- sign: `edge-sdk bundle sign B --key K --out S` (verify B, write S in full, verify S);
- verify: `edge-sdk bundle verify S --trusted-key K.pub` (a full open that writes nothing);
- startup: `edge-sdk bundle --help` (the CLI's own start-up, part of each command above);
- api sign / api verify / api open: sign_bundle, verify_bundle and open_bundle (extracts to a
  staging folder) in this process, without the CLI's start-up.
Targets (issue 14): sign <= 6x the floor, verify <= 4x (before per-file codecs: 128x and 27x).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, List

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

CLASSES = ("missing_hole", "mouse_bite", "open_circuit", "short", "spur", "spurious_copper")
INFER_CFG = """mode: paddle
draw_threshold: 0.5
metric: COCO
use_dynamic_shape: false
arch: YOLO
min_subgraph_size: 3
Preprocess:
- interp: 2
  keep_ratio: false
  target_size: [{size}, {size}]
  type: Resize
- is_scale: true
  mean: [0.485, 0.456, 0.406]
  std: [0.229, 0.224, 0.225]
  type: NormalizeImage
- type: Permute
label_list: [{labels}]
"""
TARGETS = {"sign": 6.0, "verify": 4.0}


def export_folder(folder: Path, size: int) -> Path:
    """A PaddleDetection-style export of a seeded YOLOv3-MobileNetV1 (width 1.0) at size x size, made once."""
    if (folder / "infer_cfg.yml").is_file():
        return folder
    import paddle

    from compress.export import export_inference
    from compress.models import build_yolov3

    paddle.seed(0)
    model = build_yolov3("mobilenet_v1", len(CLASSES), width=1.0)
    model.eval()
    export_inference(model, (size, size), folder)
    (folder / "infer_cfg.yml").write_text(INFER_CFG.format(size=size, labels=", ".join(CLASSES)))
    return folder


def cli() -> List[str]:
    exe = Path(sys.executable).parent / "edge-sdk"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "edge_cli"]


def run(command: List[str]) -> float:
    """Seconds `command` took; stops the benchmark with its stderr when it fails."""
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    took = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit("error: {} failed: {}".format(" ".join(command), result.stderr.strip()))
    return took


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "edge-sdk-bundle-codec")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size", type=int, default=320, help="Network input size (the export's, in pixels).")
    parser.add_argument("--json", action="store_true", help="Print one JSON object with every figure as the last line.")
    args = parser.parse_args()

    from edge_sdk.bundle import open_bundle, sign_bundle, verify_bundle
    from edge_sdk.signing import generate_keypair

    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    print("exporting YOLOv3-MobileNetV1 width 1.0 (seeded) into {} (once)".format(work / "export"), file=sys.stderr)
    folder = export_folder(work / "export", args.size)
    weights = [str(folder / "model.pdmodel"), str(folder / "model.pdiparams")]
    key, public = work / "bench.key", work / "bench.pub"
    if not key.exists():
        generate_keypair(key, public)
    bundle, signed, api_signed = work / "bench.edgebundle", work / "signed.edgebundle", work / "api-signed.edgebundle"
    staging = work / "staging"
    staging.mkdir(exist_ok=True)
    command = cli()
    for path in weights:  # page cache warm for the floor, as for every other side
        Path(path).read_bytes()

    sides = {
        "floor": lambda: run(["sha256sum"] + weights),
        "import": lambda: run(command + ["bundle", "import-ppdet", str(folder), "--out", str(bundle)]),
        "sign": lambda: run(command + ["bundle", "sign", str(bundle), "--key", str(key), "--out", str(signed)]),
        "verify": lambda: run(command + ["bundle", "verify", str(signed), "--trusted-key", str(public)]),
        "startup": lambda: run(command + ["bundle", "--help"]),
        "api sign": lambda: timed(lambda: sign_bundle(bundle, key, out=api_signed)),
        "api verify": lambda: timed(lambda: verify_bundle(signed, trusted_keys=public)),
        "api open": lambda: timed(lambda: open_bundle(signed, staging_dir=staging, trusted_keys=public).close()),
    }
    seconds = {name: [] for name in sides}  # type: Dict[str, List[float]]
    for round_index in range(args.rounds):
        for name, side in sides.items():
            seconds[name].append(side())
        print(
            "round {}/{}: {}".format(
                round_index + 1, args.rounds, ", ".join("{} {:.2f} s".format(n, s[-1]) for n, s in seconds.items())
            ),
            file=sys.stderr,
        )

    def ratio(name: str) -> float:
        return statistics.median(a / b for a, b in zip(seconds[name], seconds["floor"]))

    weight_mb = sum(os.path.getsize(p) for p in weights) / 1e6
    bundle_mb = signed.stat().st_size / 1e6
    load = os.getloadavg()
    print(
        "bundle {:.1f} MB from {:.1f} MB of model files; {} rounds; load average {:.2f} {:.2f} {:.2f}".format(
            bundle_mb, weight_mb, args.rounds, *load
        )
    )
    print("{:<12} {:>9} {:>10}   {}".format("side", "median s", "/ floor", "target"))
    for name in sides:
        target = TARGETS.get(name)
        verdict = "" if target is None else "<= {:.0f}x {}".format(target, "ok" if ratio(name) <= target else "MISSED")
        print("{:<12} {:>9.3f} {:>9.2f}x   {}".format(name, statistics.median(seconds[name]), ratio(name), verdict))
    if args.json:
        figures = {"bundle_mb": round(bundle_mb, 2), "weight_mb": round(weight_mb, 2), "rounds": args.rounds}
        figures["load_average_1min"] = round(load[0], 2)
        for name in sides:
            key_name = name.replace(" ", "_")
            figures["{}_s".format(key_name)] = round(statistics.median(seconds[name]), 4)
            if name != "floor":
                figures["{}_over_floor".format(key_name)] = round(ratio(name), 3)
        print(json.dumps(figures, sort_keys=True))
    shutil.rmtree(str(staging), ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
