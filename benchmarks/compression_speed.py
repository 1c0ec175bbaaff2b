"""Compression's speed at real model sizes: unpruned FP32, pruned FP32 and pruned INT8, side by side.

    .venv/bin/python benchmarks/compression_speed.py [--archs mobilenet_v1,darknet53] [--sizes 320,416]
        [--reference demo-out | --floor 0.3] [--workdir bench-compspeed] [--rounds 5] [--json]

Cases: YOLOv3-MobileNetV1 at 320 and 416 px and YOLOv3-DarkNet53 at 320 px (--archs / --sizes pick a
subset), width 1.0, 6 classes, seeded weights (speed does not depend on training). Each case as
- fp32: the seeded model, exported with compress.export.export_bundle;
- pruned: compress.pruning.prune_to_target(model, (S, S), 0.5, None, channel_multiple=8), exported alike;
- int8: the pruned program quantized by calibration.ptq.quantize_post_training (abs_max) on generated
  boards (edge_sdk.data.synth), written as an INT8 bundle.
Bundles are cached in WORKDIR/<arch>_<size>/ (delete the folder to rebuild).

Every model runs through the robot's predictor (device.detector.Detector, the CPU plan), in interleaved
rounds (each frame through every variant in turn), each run timed; the figures are medians over all
rounds (a first round warms up and is not counted):
- network: Detector.infer with the confidence floor at 1.0 (nothing reaches NMS: the network and
  yolo_box decoding only);
- predictor: Detector.infer on preprocessed inputs at the trained-like floor;
- end to end: Detector.detect on 640x480 BGR boards (preprocess + predict + postprocess) at the
  trained-like floor, and at the seeded floor (the bundles' own 0.005, where every one of a seeded
  model's anchors passes and NMS fills keep_top_k) with NMS sorting today's export's 100 candidates
  per class and PaddleDetection's 1000.
The trained-like floor is the confidence floor at which the seeded model feeds NMS as many candidates
(anchor x class pairs over the floor, after yolo_box) as the demo's trained model does on its val
images at its own floor (median per image): --reference is a finished demo workdir (its train stage),
or --floor sets the floor directly. Floor and NMS candidates are patched into copies of the bundles'
programs (yolo_box's conf_thresh, multiclass_nms3's score_threshold and nms_top_k); the weights are the
bundles'.

Speedups are FPS over the unpruned FP32 model's in the same run. --json ends with one JSON object:
speedup_pruned_fp32_<arch>_<size> and speedup_pruned_int8_<arch>_<size> (end to end, trained-like floor)
and every other printed ratio.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Sequence, Tuple

import edge_sdk  # noqa: F401  (zlib before paddle)

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

CASES = (("mobilenet_v1", 320), ("mobilenet_v1", 416), ("darknet53", 320))
VARIANTS = ("fp32", "pruned", "int8")
FRAME_SIZE = (640, 480)
FRAME_SEED = 14
CALIBRATION_SEED = 15
MODEL_SEED = 0
SEEDED_FLOOR = 0.005
NMS_TOP_K = 100  # compress.export.EXPORT_POSTPROCESS: NMS candidates per class in today's export
PPDET_NMS_TOP_K = 1000  # PaddleDetection's (and the export's before that cap)
FRAMES_PER_ROUND = 6
FRAMES_FOR_SCORES = 8
CALIBRATION_IMAGES = 8


def boards(count: int, seed: int, size: Tuple[int, int] = FRAME_SIZE) -> List[np.ndarray]:
    """`count` generated PCB boards, (H, W, 3) uint8 BGR, size = (width, height)."""
    from edge_sdk.data.synth import image_rng, render_board

    return [render_board(image_rng(seed, index), size)[0] for index in range(count)]


def sorted_scores(net, size: int, images_bgr: Sequence[np.ndarray]) -> np.ndarray:
    """[images, anchors x classes] float32: every candidate's score (objectness x class, yolo_box with no
    floor) for each image at input size `size`, highest first."""
    import paddle

    from compress.export import InferenceModel
    from device.preprocess import Preprocessor
    from edge_sdk.manifest import InputSpec, Postprocess

    preprocess = Preprocessor(
        InputSpec(size=(size, size), resize_mode="stretch", interpolation="cubic", channel_order="RGB", scale=True)
    )
    wrapper = InferenceModel(net, Postprocess(conf_threshold=0.0))
    rows = []
    with paddle.no_grad():
        for image in images_bgr:
            inputs = {k: paddle.to_tensor(v) for k, v in preprocess(image).items()}
            _boxes, scores = wrapper.decode(net(inputs["image"]), inputs["im_shape"], inputs["scale_factor"])
            rows.append(-np.sort(-scores.numpy().reshape(-1)))
    return np.stack(rows).astype(np.float32)


def reference_candidates(workdir: Path) -> Tuple[float, str]:
    """(median candidates per val image, description) of a finished demo's trained model: anchor x class
    pairs over its bundle's confidence floor after yolo_box, which is what its NMS sorts."""
    from compress.checkpoint import load_trained
    from compress.stage_cache import StageStore
    from edge_sdk.bundle import open_bundle
    from edge_sdk.data.images import read_bgr
    from edge_sdk.data.load import load_dataset
    from edge_sdk.errors import DataError

    record = StageStore(workdir).read("train")
    if record is None:
        raise DataError("{} has no finished train stage: pass a finished demo workdir or --floor".format(workdir))
    with open_bundle(record.path(workdir, "bundle")) as opened:
        manifest = opened.manifest
    val = load_dataset(Path(workdir) / "data" / "val.json")
    net = load_trained(record.path(workdir, "checkpoint"))
    floor = manifest.postprocess.conf_threshold
    scores = sorted_scores(net, int(manifest.input.size[0]), [read_bgr(r.path, "val image") for r in val.images])
    counts = (scores > floor).sum(axis=1)
    text = "{}'s trained model ({} at {} px, val mAP@.5 {:.3f}): {:.0f} candidates over {:g} per val image (median of {}; {}-{})".format(
        workdir,
        manifest.architecture,
        manifest.input.size[0],
        record.metrics.get("map50") or 0.0,
        float(np.median(counts)),
        floor,
        len(counts),
        int(counts.min()),
        int(counts.max()),
    )
    return float(np.median(counts)), text


def floor_for(scores: np.ndarray, candidates: float) -> float:
    """The floor at which a median image of `scores` (sorted_scores) keeps `candidates` candidates."""
    rank = int(min(max(round(candidates), 0), scores.shape[1] - 1))
    return float(np.median(scores[:, rank]))


def build_case(arch: str, size: int, folder: Path, log: Callable[[str], None]) -> Dict[str, object]:
    """Export the case's three bundles into `folder` (once; later runs read folder/case.json) and
    store each variant's sorted candidate scores on the frames. Returns case.json's content."""
    import cv2
    import paddle

    from calibration.budget import int8_manifest
    from calibration.ptq import LAYER_NAMES_FILE, quantize_post_training
    from compress.export import LAYER_NAMES_MEMBER, export_bundle
    from compress.models import build_yolov3
    from compress.pruning import prune_to_target
    from edge_sdk.bundle import MODEL_PARAMS, MODEL_PROGRAM, PARAMS_FILE, PROGRAM_FILE, open_bundle, write_bundle
    from edge_sdk.data.dataset import ImageRecord
    from edge_sdk.data.synth import CLASSES
    from edge_sdk.fileio import atomic_write_text
    from edge_sdk.manifest import Quantization

    done = folder / "case.json"
    if done.is_file():
        return json.loads(done.read_text())
    folder.mkdir(parents=True, exist_ok=True)
    paddle.seed(MODEL_SEED)
    net = build_yolov3(arch, len(CLASSES), 1.0)
    net.eval()
    started = time.perf_counter()
    log("{} {}: pruning to 0.5 of the FLOPs".format(arch, size))
    pruned, _ratios, flops_before, flops_after = prune_to_target(net, (size, size), 0.5, None, channel_multiple=8)
    log("  pruned to {:.3f} of the FLOPs ({:.0f} s)".format(flops_after / flops_before, time.perf_counter() - started))
    frames = boards(FRAMES_FOR_SCORES, FRAME_SEED)
    np.save(str(folder / "scores-fp32.npy"), sorted_scores(net, size, frames))
    np.save(str(folder / "scores-pruned.npy"), sorted_scores(pruned, size, frames))
    for variant, model in (("fp32", net), ("pruned", pruned)):
        started = time.perf_counter()
        export_bundle(
            model, CLASSES, (size, size), folder / (variant + ".edgebundle"), "{}-{}".format(arch, variant), "0.0.0"
        )
        log("  exported the {} bundle ({:.0f} s)".format(variant, time.perf_counter() - started))
    calibration_dir = folder / "calibration"
    calibration_dir.mkdir(exist_ok=True)
    records = []
    for index, image in enumerate(boards(CALIBRATION_IMAGES, CALIBRATION_SEED)):
        path = calibration_dir / "{:03d}.png".format(index)
        cv2.imwrite(str(path), image)
        records.append(ImageRecord(path=path, image_id=index + 1, width=image.shape[1], height=image.shape[0]))
    started = time.perf_counter()
    with open_bundle(folder / "pruned.edgebundle") as opened:
        manifest = opened.manifest
        model_dir = quantize_post_training(
            opened.path_of(MODEL_PROGRAM).parent, records, manifest.input, folder / "int8-model", algo="abs_max",
            batch_size=4, progress=False,
        )  # fmt: skip
    files = {MODEL_PROGRAM: model_dir / PROGRAM_FILE, MODEL_PARAMS: model_dir / PARAMS_FILE}
    if (model_dir / LAYER_NAMES_FILE).is_file():
        files[LAYER_NAMES_MEMBER] = model_dir / LAYER_NAMES_FILE
    quantization = Quantization(method="ptq", algo="abs_max", calibration_images=len(records))
    int8 = dataclasses.replace(
        int8_manifest(manifest, quantization), name="{}-int8".format(arch), files=(), created_at=""
    )
    write_bundle(folder / "int8.edgebundle", int8, files)
    log("  quantized and wrote the int8 bundle ({:.0f} s)".format(time.perf_counter() - started))
    case = {"arch": arch, "size": size, "flops_fp32": flops_before, "flops_pruned": flops_after}
    atomic_write_text(done, json.dumps(case, indent=1))
    return case


def with_floor(opened, floor: float, nms_top_k: int, out_dir: Path):
    """A device.evaluate.ModelFolder in `out_dir`: `opened` bundle's program with its confidence floor
    (yolo_box conf_thresh and NMS score_threshold) set to `floor` and NMS's candidates per class to
    `nms_top_k`, its weights linked, its manifest's postprocess set alike."""
    from paddle.framework import core

    from device.evaluate import ModelFolder
    from edge_sdk.bundle import MODEL_PARAMS, MODEL_PROGRAM, PARAMS_FILE, PROGRAM_FILE

    out_dir.mkdir(parents=True, exist_ok=True)
    desc = core.ProgramDesc(opened.path_of(MODEL_PROGRAM).read_bytes())
    patched = 0
    for block_index in range(desc.num_blocks()):
        block = desc.block(block_index)
        for op_index in range(block.op_size()):
            op = block.op(op_index)
            if op.type() == "yolo_box":
                op._set_float32_attr("conf_thresh", float(floor))
            elif op.type() == "multiclass_nms3":
                op._set_float32_attr("score_threshold", float(floor))
                op._set_int32_attr("nms_top_k", int(nms_top_k))
                patched += 1
    if not patched:
        raise SystemExit("error: {} has no multiclass_nms3 op".format(opened.path_of(MODEL_PROGRAM)))
    (out_dir / PROGRAM_FILE).write_bytes(desc.serialize_to_string())
    params = out_dir / PARAMS_FILE
    if params.is_symlink() or params.exists():
        params.unlink()
    params.symlink_to(opened.path_of(MODEL_PARAMS))
    manifest = opened.manifest
    postprocess = dataclasses.replace(manifest.postprocess, conf_threshold=float(floor), nms_top_k=int(nms_top_k))
    return ModelFolder(dataclasses.replace(manifest, postprocess=postprocess), out_dir)


def time_case(
    case: Dict[str, object], folder: Path, floor_of: Dict[str, float], rounds: int, log
) -> Dict[str, Dict[str, float]]:
    """Median ms per frame {variant: {network, predictor, e2e, e2e_seeded}} over `rounds` interleaved rounds."""
    from device.detector import Detector
    from edge_sdk.bundle import open_bundle

    frames = boards(FRAMES_PER_ROUND, FRAME_SEED)
    opened = {v: open_bundle(folder / (v + ".edgebundle")) for v in VARIANTS}
    try:
        detectors = {}
        for variant in VARIANTS:
            for label, floor, top_k in (
                ("network", 1.0, NMS_TOP_K),
                ("trained", floor_of[variant], NMS_TOP_K),
                ("seeded", SEEDED_FLOOR, NMS_TOP_K),
                ("seeded_ppdet", SEEDED_FLOOR, PPDET_NMS_TOP_K),
            ):
                model = with_floor(opened[variant], floor, top_k, folder / "run" / "{}-{}".format(variant, label))
                detectors[variant, label] = Detector(model, device="cpu")
        plans = {v: detectors[v, "trained"].plan.describe() for v in VARIANTS}
        for variant in VARIANTS:
            log("  {}: {}".format(variant, plans[variant]))
        prepared = [detectors["fp32", "trained"].preprocess(frame) for frame in frames]
        measures = {
            "network": lambda v, i: detectors[v, "network"].infer(prepared[i]),
            "predictor": lambda v, i: detectors[v, "trained"].infer(prepared[i]),
            "e2e": lambda v, i: detectors[v, "trained"].detect(frames[i]),
            "e2e_seeded": lambda v, i: detectors[v, "seeded"].detect(frames[i]),
            "e2e_seeded_ppdet": lambda v, i: detectors[v, "seeded_ppdet"].detect(frames[i]),
        }
        times: Dict[Tuple[str, str], List[float]] = {(v, m): [] for v in VARIANTS for m in measures}
        for round_index in range(rounds + 1):  # round 0 warms up and is not counted
            for measure, run in measures.items():
                for index in range(len(frames)):
                    for variant in VARIANTS:
                        started = time.perf_counter()
                        run(variant, index)
                        if round_index:
                            times[variant, measure].append((time.perf_counter() - started) * 1000.0)
            if round_index:
                log("  round {}/{} done".format(round_index, rounds))
        for detector in detectors.values():
            detector.close()
    finally:
        for bundle in opened.values():
            bundle.close()
    return {v: {m: statistics.median(times[v, m]) for m in measures} for v in VARIANTS}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", default="mobilenet_v1,darknet53", help="Comma-separated: mobilenet_v1, darknet53.")
    parser.add_argument(
        "--sizes", default="320,416", help="Comma-separated input sizes (cases: mobilenet_v1 320, 416; darknet53 320)."
    )
    parser.add_argument(
        "--reference",
        type=Path,
        default=Path("demo-out"),
        help="A finished demo workdir (its train stage sets the trained-like floor).",
    )
    parser.add_argument(
        "--floor", type=float, default=None, help="The trained-like confidence floor itself (instead of --reference)."
    )
    parser.add_argument(
        "--workdir", type=Path, default=Path("bench-compspeed"), help="Where the bundles are built and cached."
    )
    parser.add_argument(
        "--rounds", type=int, default=5, help="Interleaved rounds of {} frames each.".format(FRAMES_PER_ROUND)
    )
    parser.add_argument("--json", action="store_true", help="End with every ratio as one JSON object on one line.")
    args = parser.parse_args()  # fmt: skip

    from edge_sdk.errors import EdgeSdkError

    archs = [a.strip() for a in args.archs.split(",") if a.strip()]
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    cases = [(a, s) for a, s in CASES if a in archs and s in sizes]
    if not cases:
        print("error: no case matches --archs {} --sizes {} (cases: {})".format(
            args.archs, args.sizes, ", ".join("{} {}".format(a, s) for a, s in CASES)), file=sys.stderr)  # fmt: skip
        return 2
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    values: Dict[str, object] = {}
    try:
        if args.floor is None:
            reference, text = reference_candidates(args.reference)
            print("reference: " + text)
            values["reference_candidates"] = reference
        else:
            reference = None
            print("trained-like floor: {:g} (--floor)".format(args.floor))
        print("load average {:.2f} {:.2f} {:.2f}, {} CPUs".format(*os.getloadavg(), os.cpu_count()))
        for arch, size in cases:
            name = "{}_{}".format(arch, size)
            folder = args.workdir / name
            case = build_case(arch, size, folder, log)
            floor_of = {}
            for variant in ("fp32", "pruned"):
                scores = np.load(str(folder / "scores-{}.npy".format(variant)))
                floor_of[variant] = args.floor if reference is None else floor_for(scores, reference)
                seeded = float(np.median((scores > SEEDED_FLOOR).sum(axis=1)))
                values["candidates_seeded_{}_{}".format(variant, name)] = seeded
            floor_of["int8"] = floor_of["pruned"]
            log("{}: timing ({} rounds)".format(name, args.rounds))
            ms = time_case(case, folder, floor_of, args.rounds, log)
            flops = case["flops_pruned"] / case["flops_fp32"]
            print()
            print("YOLOv3-{} at {} px, width 1.0, 6 classes, seeded; pruned FLOPs {:.3f} of {:.2f} GFLOPs".format(
                arch, size, flops, case["flops_fp32"] / 1e9))  # fmt: skip
            print("trained-like floor: fp32 {:.4f}, pruned and int8 {:.4f}; seeded floor {:g} ({:.0f} candidates)".format(
                floor_of["fp32"], floor_of["pruned"], SEEDED_FLOOR, values["candidates_seeded_fp32_" + name]))  # fmt: skip
            for variant in ("fp32", "pruned"):
                if reference is not None and floor_of[variant] >= 1.0:
                    scores = np.load(str(folder / "scores-{}.npy".format(variant)))
                    print("note: {} candidates of the seeded {} model score 1.0 (saturated; median per frame), so no "
                          "floor leaves {:.0f}: at 1.0 its trained-like figures run without NMS candidates".format(
                              int(np.median((scores >= 1.0).sum(axis=1))), variant, reference))  # fmt: skip
            print("ms per frame (speedup over fp32); e2e: 640x480 frames; seeded: floor {:g}, nms_top_k {} / {}".format(
                SEEDED_FLOOR, NMS_TOP_K, PPDET_NMS_TOP_K))  # fmt: skip
            columns = (("network", "network"), ("predictor", "predictor"), ("e2e", "e2e"),
                       ("e2e_seeded", "e2e seeded"), ("e2e_seeded_ppdet", "seeded, 1000"))  # fmt: skip
            print(
                "{:<8}".format("model") + "".join("{:>19}".format(t) for _m, t in columns) + "{:>9}".format("e2e FPS")
            )
            base = ms["fp32"]
            for variant in VARIANTS:
                m = ms[variant]
                cells = ["{:>9.1f} ({:>4.2f}x)".format(m[k], base[k] / m[k]) for k, _t in columns]
                print(
                    "{:<8}".format(variant)
                    + "".join("{:>19}".format(c) for c in cells)
                    + "{:>9.2f}".format(1000.0 / m["e2e"])
                )
            for variant, label in (("pruned", "pruned_fp32"), ("int8", "pruned_int8")):
                for measure, suffix in (("e2e", ""), ("e2e_seeded", "_seeded"), ("e2e_seeded_ppdet", "_seeded_nms1000"),
                                        ("predictor", "_predictor"), ("network", "_network")):  # fmt: skip
                    values["speedup_{}_{}{}".format(label, name, suffix)] = base[measure] / ms[variant][measure]
            for variant in VARIANTS:
                m = ms[variant]
                values["nms_ms_seeded_{}_{}".format(variant, name)] = m["e2e_seeded"] - m["e2e"]
                values["nms1000_ms_seeded_{}_{}".format(variant, name)] = m["e2e_seeded_ppdet"] - m["e2e"]
            for variant in VARIANTS:
                values["e2e_fps_{}_{}".format(variant, name)] = 1000.0 / ms[variant]["e2e"]
            values["flops_ratio_" + name] = flops
            values["floor_" + name] = floor_of["fp32"]
            values["floor_pruned_" + name] = floor_of["pruned"]
        print()
        print("load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    except EdgeSdkError as exc:
        print("error: {}".format(exc), file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in values.items()}, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
