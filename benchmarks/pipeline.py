"""Full pipeline against predictor alone, on the same bundle and a 640x480 synthetic video.

    .venv/bin/python benchmarks/pipeline.py [--bundle FILE] [--frames 400] [--threads 2] [--repeats 8]

Without --bundle a small YOLOv3-MobileNetV1 (width 0.25, 160x160, random weights) is exported
with compress.export. Rows:
- predictor only: `Detector.infer` on one preprocessed frame, back to back;
- pipeline, every frame: the video read as fast as the pipeline takes frames (capture and
  preprocessing overlapped with inference), i.e. the throughput the runtime adds overhead to;
  measured in short rounds interleaved with predictor-only rounds (the ratio is the median of
  the per-round ratios, so load from other processes hits both sides alike);
- pipeline, camera at 30 fps: the same video paced like a camera, newest frame only: end-to-end
  latency from capture and the frames dropped because inference was busy.
The ratio pipeline/predictor is the runtime's efficiency (target >= 0.95 on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import edge_sdk  # noqa: F401  (zlib before paddle)

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from device.detector import Detector, predictor_fps  # noqa: E402
from device.pipeline import Pipeline  # noqa: E402
from device.sources import open_source  # noqa: E402

CLASSES = ("missing_hole", "mouse_bite", "open_circuit", "short", "spur", "spurious_copper")


def write_video(path: Path, frames: int = 150, size=(640, 480), fps: float = 30.0) -> Path:
    """A board sliding past the camera, MJPG .avi."""
    from edge_sdk.data.synth import render_board

    width, height = size
    board = render_board(np.random.default_rng(0), (width * 2, height))[0]
    strip = np.concatenate([board, board], axis=1)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (width, height))
    for i in range(frames):
        start = (i * 6) % (width * 2)
        writer.write(np.ascontiguousarray(strip[:, start : start + width]))
    writer.release()
    return path


def export_small_bundle(out: Path) -> Path:
    import paddle

    from compress.export import export_bundle
    from compress.models import build_yolov3

    paddle.seed(0)
    model = build_yolov3("mobilenet_v1", len(CLASSES), width=0.25)
    model.eval()
    return export_bundle(model, CLASSES, (160, 160), out, "bench", "0.0.1")


def run_pipeline(detector: Detector, video: Path, frames: int, warmup: int, realtime: bool) -> dict:
    with open_source(str(video), loop=True, realtime=realtime, fps=30.0) as source:
        pipeline = Pipeline(source, detector)
        marks = {}

        def mark(p) -> None:
            if p.frames >= warmup and "start" not in marks:
                marks["start"] = time.perf_counter()
                marks["frames"] = p.frames
                marks["dropped"] = source.stats()["dropped"]

        stats = pipeline.run(max_frames=frames + warmup, on_frame=mark)
        elapsed = time.perf_counter() - marks["start"]
    counted = stats["frames"] - marks["frames"]
    return {
        "fps": counted / elapsed,
        "p50": stats["latency_ms"]["end_to_end"]["p50"],
        "p99": stats["latency_ms"]["end_to_end"]["p99"],
        "dropped": stats["dropped"] - marks["dropped"],
        "captured": stats["source"]["captured"],
        "stages": stats["latency_ms"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, help="bundle to measure (default: export a small one)")
    parser.add_argument("--frames", type=int, default=400, help="frames timed per side, split over the rounds")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=8, help="interleaved rounds of predictor and pipeline")
    parser.add_argument("--threads", type=int, default=None, help="CPU math threads (default: all cores)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        folder = Path(tmp)
        bundle = args.bundle or export_small_bundle(folder / "bench.edgebundle")
        video = write_video(folder / "board.avi")
        with Detector(bundle, threads=args.threads) as detector:
            print(
                "bundle: {}  predictor: {}  input {}x{}".format(
                    Path(bundle).name, detector.plan.describe(), *detector.manifest.input.size
                )
            )
            first = cv2.VideoCapture(str(video)).read()[1]
            # Short interleaved rounds, so that load from other processes hits both sides alike;
            # the ratio is the median of the per-round ratios.
            block = max(10, args.frames // args.repeats)
            predictor_fps(detector, first, args.warmup, 2)
            predictor_runs, every_runs = [], []
            for _ in range(args.repeats):
                predictor_runs.append(predictor_fps(detector, first, block, 2))
                every_runs.append(run_pipeline(detector, video, block, 3, realtime=False))
            pred_fps = float(np.median([r[0] for r in predictor_runs]))
            pred_ms = float(np.median([r[1] for r in predictor_runs]))
            every = dict(sorted(every_runs, key=lambda r: r["fps"])[len(every_runs) // 2])
            every["ratio"] = float(np.median([e["fps"] / p[0] for p, e in zip(predictor_runs, every_runs)]))
            camera = run_pipeline(detector, video, args.frames // 2, args.warmup, realtime=True)

    rows = [
        ("predictor only", pred_fps, 1.0, pred_ms, None, "-"),
        (
            "pipeline, every frame",
            every["fps"],
            every["ratio"],
            every["p50"],
            every["p99"],
            str(every["dropped"]),
        ),
        (
            "pipeline, camera 30 fps",
            camera["fps"],
            None,  # capped by the camera's 30 fps: latency and drops are what this row is for
            camera["p50"],
            camera["p99"],
            str(camera["dropped"]),
        ),
    ]
    print()
    print("{:<26}{:>9}{:>8}{:>11}{:>11}{:>9}".format("", "fps", "ratio", "p50 ms", "p99 ms", "dropped"))
    for name, fps, ratio, p50, p99, dropped in rows:
        print(
            "{:<26}{:>9.1f}{:>8}{:>11}{:>11}{:>9}".format(
                name,
                fps,
                "-" if ratio is None else "{:.3f}".format(ratio),
                "{:.1f}".format(p50),
                "-" if p99 is None else "{:.1f}".format(p99),
                dropped,
            )
        )
    print()
    print(
        "stage p50 ms (every frame): "
        + ", ".join(
            "{} {:.2f}".format(stage, values["p50"])
            for stage, values in every["stages"].items()
            if values["p50"] is not None
        )
    )
    print(
        "camera run: {} frames captured, {} dropped while inference was busy (newest frame wins)".format(
            camera["captured"], camera["dropped"]
        )
    )
    print("target: pipeline/predictor >= 0.95 -> {}".format("met" if rows[1][2] >= 0.95 else "NOT met"))


if __name__ == "__main__":
    main()
