"""The runtime's pipeline against its predictor alone and against a PaddleDetection-style loop.

    .venv/bin/python benchmarks/pipeline.py            # fast and slow model, both videos (~10 min)
    .venv/bin/python benchmarks/pipeline.py --quick    # fast model only, fewer frames (~2 min)
    .venv/bin/python benchmarks/pipeline.py --json     # ... and one JSON object as the last line

Two YOLOv3-MobileNetV1 bundles with seeded weights (speed does not depend on training), exported
with compress.export unless given: fast (width 0.5 at 320 px, inference ~37 ms on 2 idle cores)
and slow (width 1.0 at 320 px, ~115 ms). Two MJPG videos of a board sliding past, 640x480 and 1280x720.
For each model and video, in interleaved rounds (so load from other processes hits every side
alike; each figure is the median over rounds, each ratio the median of the per-round ratios):
- predictor: `Detector.infer` alone on frames of the video preprocessed beforehand (the ceiling);
- pipeline: what `edge-sdk run VIDEO` does without sinks: `device.pipeline.Pipeline` on the file
  source, every frame, unpaced; latency is capture to detections;
- pipeline+rec: the same with `run --record` (annotated video written on the recorder's thread);
- sequential: a loop written the way PaddleDetection's deploy/python/infer.py works on a video:
  cv2.VideoCapture.read, BGR -> RGB, cubic resize, NormalizeImage and Permute in numpy, predict
  (the same predictor), boxes above 0.5 drawn, cv2.VideoWriter.write, all in one thread;
- infer.py defaults: the same loop with the predictor configured as infer.py's defaults
  (--cpu_threads 1, no oneDNN): what a PaddleDetection user gets without tuning.
Ratios: pipeline / predictor (the share of the predictor's speed the runtime keeps; targets
>= 0.95 fast, >= 0.97 slow), pipeline+rec / sequential (both write the annotated video with the
same predictor: only the loop differs; target >= 1.4 fast) and pipeline+rec / infer.py defaults.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import edge_sdk  # noqa: F401  (zlib before paddle)

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from device.detector import Detector  # noqa: E402
from device.pipeline import Pipeline  # noqa: E402
from device.sinks.recorder import RecorderSink  # noqa: E402
from device.sources import open_source  # noqa: E402

CLASSES = ("missing_hole", "mouse_bite", "open_circuit", "short", "spur", "spurious_copper")
MODELS = {"fast": (0.5, 320), "slow": (1.0, 320)}
VIDEOS = {"640": (640, 480), "1280": (1280, 720)}
DRAW_THRESHOLD = 0.5
SIDES = ("predictor", "pipeline", "pipeline+rec", "sequential", "infer.py defaults")


def write_video(path: Path, frames: int = 60, size=(640, 480), fps: float = 30.0) -> Path:
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


def export_model(out: Path, width: float, size: int) -> Path:
    import paddle

    from compress.export import export_bundle
    from compress.models import build_yolov3

    paddle.seed(0)
    model = build_yolov3("mobilenet_v1", len(CLASSES), width=width)
    model.eval()
    return export_bundle(model, CLASSES, (size, size), out, out.stem, "0.0.1")


def summary(durations_s: List[float]) -> Dict[str, float]:
    """fps from the total, p50 / p99 of the per-frame durations in ms."""
    ms = np.asarray(durations_s) * 1000.0
    return {
        "fps": len(ms) / (ms.sum() / 1000.0),
        "p50": float(np.percentile(ms, 50)),
        "p99": float(np.percentile(ms, 99)),
    }


def time_predictor(detector: Detector, prepared: List[dict], frames: int) -> Dict[str, float]:
    durations = []
    for index in range(frames):
        started = time.perf_counter()
        detector.infer(prepared[index % len(prepared)])
        durations.append(time.perf_counter() - started)
    return summary(durations)


def time_pipeline(detector: Detector, video: Path, frames: int, record: Path = None) -> Dict[str, float]:
    """`edge-sdk run VIDEO [--record FILE]`: the file pulled frame by frame, every frame, unpaced."""
    sinks = [RecorderSink(str(record), CLASSES, lossless=True)] if record else []
    warmup = 2
    marks: Dict[str, float] = {}
    try:
        with open_source(str(video), loop=True) as source:
            pipeline = Pipeline(source, detector, sinks)

            def mark(p: Pipeline) -> None:
                if p.frames == warmup and "start" not in marks:
                    marks["start"] = time.perf_counter()

            stats = pipeline.run(max_frames=frames + warmup, on_frame=mark)
            elapsed = time.perf_counter() - marks["start"]
    finally:
        for sink in sinks:
            sink.close()
    e2e = list(pipeline.latency["end_to_end"].samples)[-frames:]
    return {
        "fps": (stats["frames"] - warmup) / elapsed,
        "p50": float(np.percentile(e2e, 50)),
        "p99": float(np.percentile(e2e, 99)),
        "overlap": pipeline.overlap,
    }


def paddledetection_inputs(image_bgr: np.ndarray, size: int, mean: np.ndarray, std: np.ndarray) -> dict:
    """deploy/python/preprocess.py: decode_image (BGR -> RGB), Resize (interp 2, keep_ratio false),
    NormalizeImage (is_scale, mean_std), Permute; infer.py's create_inputs."""
    image = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2RGB)
    scale_y, scale_x = size / float(image.shape[0]), size / float(image.shape[1])
    image = cv2.resize(image, None, None, fx=scale_x, fy=scale_y, interpolation=2)
    im_shape = np.array(image.shape[:2]).astype("float32")
    image = image.astype(np.float32, copy=False)
    image *= 1.0 / 255.0
    image -= mean
    image /= std
    image = image.transpose((2, 0, 1)).copy()
    return {
        "image": np.stack([image], axis=0),
        "im_shape": np.stack([im_shape], axis=0),
        "scale_factor": np.stack([np.array([scale_y, scale_x]).astype("float32")], axis=0),
    }


def infer_py_default_predictor(detector: Detector) -> Callable[[dict], np.ndarray]:
    """The bundle's program in a predictor configured as deploy/python/infer.py's defaults
    (--device CPU, --cpu_threads 1, --enable_mkldnn False): inputs in, boxes [M, 6] out."""
    from paddle import inference

    from edge_sdk.bundle import MODEL_PARAMS, MODEL_PROGRAM

    config = inference.Config(str(detector.bundle.path_of(MODEL_PROGRAM)), str(detector.bundle.path_of(MODEL_PARAMS)))
    config.disable_gpu()
    config.set_cpu_math_library_num_threads(1)
    config.disable_glog_info()
    config.enable_memory_optim()
    config.switch_use_feed_fetch_ops(False)
    predictor = inference.create_predictor(config)

    def infer(inputs: dict) -> np.ndarray:
        for name in predictor.get_input_names():
            handle = predictor.get_input_handle(name)
            handle.reshape(inputs[name].shape)
            handle.copy_from_cpu(inputs[name])
        predictor.run()
        return predictor.get_output_handle(predictor.get_output_names()[0]).copy_to_cpu()

    return infer


def time_sequential(
    detector: Detector, video: Path, frames: int, record: Path, infer: Optional[Callable[[dict], np.ndarray]] = None
) -> Dict[str, float]:
    """A PaddleDetection-style deploy loop: read, preprocess, predict, draw, write, in one thread.
    infer: the predictor (default: the detector's own, so only the loop differs)."""
    infer = infer or detector.infer
    spec = detector.manifest.input
    mean = np.array(spec.mean)[np.newaxis, np.newaxis, :]
    std = np.array(spec.std)[np.newaxis, np.newaxis, :]
    capture = cv2.VideoCapture(str(video))
    writer = None
    durations = []
    for index in range(frames + 2):
        started = time.perf_counter()
        ok, frame = capture.read()
        if not ok:
            capture.release()
            capture = cv2.VideoCapture(str(video))
            ok, frame = capture.read()
        if writer is None:
            height, width = frame.shape[:2]
            writer = cv2.VideoWriter(str(record), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, (width, height))
        boxes = infer(paddledetection_inputs(frame, spec.size[0], mean, std))
        for class_id, score, x1, y1, x2, y2 in boxes[boxes[:, 1] > DRAW_THRESHOLD]:
            cv2.rectangle(frame, (int(x1), int(y1)), (int(x2), int(y2)), (0, 255, 0), 2)
            label = "{} {:.2f}".format(CLASSES[int(class_id) % len(CLASSES)], score)
            cv2.putText(frame, label, (int(x1), int(y1) - 2), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 255, 0), 1)
        writer.write(frame)
        if index >= 2:
            durations.append(time.perf_counter() - started)
    capture.release()
    writer.release()
    return summary(durations)


def measure(
    detector: Detector, video: Path, frames: int, rounds: int, folder: Path, infer_py: Callable[[dict], np.ndarray]
) -> Dict[str, dict]:
    """{side: {fps, p50, p99}} medians over interleaved rounds, plus per-round ratios."""
    capture = cv2.VideoCapture(str(video))
    prepared = [detector.preprocess(capture.read()[1]) for _ in range(8)]
    capture.release()
    time_predictor(detector, prepared, 3)  # warm-up
    sides = SIDES
    runs: Dict[str, List[dict]] = {side: [] for side in sides}
    for _ in range(rounds):
        runs["predictor"].append(time_predictor(detector, prepared, frames))
        runs["pipeline"].append(time_pipeline(detector, video, frames))
        runs["pipeline+rec"].append(time_pipeline(detector, video, frames, folder / "run.avi"))
        runs["sequential"].append(time_sequential(detector, video, frames, folder / "sequential.avi"))
        runs["infer.py defaults"].append(time_sequential(detector, video, frames, folder / "defaults.avi", infer_py))
    result = {
        side: {key: float(np.median([r[key] for r in runs[side]])) for key in ("fps", "p50", "p99")} for side in sides
    }
    result["ratios"] = {
        "pipeline_over_predictor": float(
            np.median([b["fps"] / a["fps"] for a, b in zip(runs["predictor"], runs["pipeline"])])
        ),
        "pipeline_over_sequential": float(
            np.median([b["fps"] / a["fps"] for a, b in zip(runs["sequential"], runs["pipeline+rec"])])
        ),
        "pipeline_over_infer_py_defaults": float(
            np.median([b["fps"] / a["fps"] for a, b in zip(runs["infer.py defaults"], runs["pipeline+rec"])])
        ),
    }
    result["overlap"] = runs["pipeline"][0]["overlap"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fast model only, 12 frames x 6 rounds")
    parser.add_argument("--frames", type=int, help="frames per side and round (default 12 fast, 4 slow)")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 15 fast, 7 slow)")
    parser.add_argument("--threads", type=int, default=None, help="CPU math threads (default: all cores)")
    parser.add_argument("--fast-bundle", type=Path, help="fast model bundle (default: export one)")
    parser.add_argument("--slow-bundle", type=Path, help="slow model bundle (default: export one)")
    parser.add_argument("--json", action="store_true", help="print one JSON object with every ratio last")
    args = parser.parse_args()

    print("load average: {:.2f} {:.2f} {:.2f}, {} cores".format(*os.getloadavg(), os.cpu_count()))
    report: Dict[str, float] = {}
    models = ("fast",) if args.quick else ("fast", "slow")
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        folder = Path(tmp)
        videos = {name: write_video(folder / "board{}.avi".format(name), size=size) for name, size in VIDEOS.items()}
        for model in models:
            width, size = MODELS[model]
            bundle = getattr(args, model + "_bundle") or export_model(folder / (model + ".edgebundle"), width, size)
            # Short rounds, many of them: a burst of load from other processes then spoils few rounds,
            # and the median of the per-round ratios passes over them.
            frames = args.frames or (12 if model == "fast" else 4)
            rounds = args.rounds or (6 if args.quick else (15 if model == "fast" else 7))
            with Detector(bundle, threads=args.threads) as detector:
                infer_py = infer_py_default_predictor(detector)
                print()
                print(
                    "{} model: {} ({}x{} input), predictor {}; {} frames x {} rounds per side".format(
                        model,
                        Path(bundle).name,
                        *detector.manifest.input.size,
                        detector.plan.describe(),
                        frames,
                        rounds,
                    )
                )
                print("{:<8}{:<18}{:>8}{:>10}{:>10}".format("video", "", "fps", "p50 ms", "p99 ms"))
                for video_name, video in videos.items():
                    result = measure(detector, video, frames, rounds, folder, infer_py)
                    for side in SIDES:
                        row = result[side]
                        print(
                            "{:<8}{:<18}{:>8.1f}{:>10.1f}{:>10.1f}".format(
                                video_name, side, row["fps"], row["p50"], row["p99"]
                            )
                        )
                    ratios = result["ratios"]
                    print(
                        "{:<8}pipeline/predictor {:.3f}   pipeline+rec/sequential {:.3f}   "
                        "pipeline+rec/infer.py defaults {:.3f}   ({})".format(
                            video_name,
                            ratios["pipeline_over_predictor"],
                            ratios["pipeline_over_sequential"],
                            ratios["pipeline_over_infer_py_defaults"],
                            "overlapped" if result["overlap"] else "in turn, one thread",
                        )
                    )
                    for name, value in ratios.items():
                        report["{}_{}_{}".format(model, name, video_name)] = round(value, 4)
    print()
    print("load average at the end: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    targets = [("fast_pipeline_over_predictor_640", 0.95), ("fast_pipeline_over_predictor_1280", 0.95)]
    targets += [("fast_pipeline_over_sequential_640", 1.4), ("slow_pipeline_over_predictor_640", 0.97)]
    for key, target in targets:
        if key in report:
            print(
                "{:<36} {:.3f}  target >= {}: {}".format(
                    key, report[key], target, "met" if report[key] >= target else "NOT met"
                )
            )
    if args.json:
        print(json.dumps(report, sort_keys=True))


if __name__ == "__main__":
    main()
