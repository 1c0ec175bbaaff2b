"""The accuracy budget: INT8 may lose at most `budget_points` of mAP@.5 against FP32, or it is refused.

`quantize_within_budget` evaluates the FP32 program and each INT8 attempt with the robot's own code
(`device.detector.Detector` on the CPU, oneDNN int8 kernels for INT8) and `edge_sdk.metrics` on the
val set. When an attempt loses too much, the most sensitive layers are kept in float and PTQ runs
again, up to `max_retries` times; then `AccuracyBudgetExceeded` (a RecipeError) says the loss, the
budget and the layers that were kept in float.

Layer sensitivity (`layer_sensitivity`) is measured once, on the first INT8 program, without
recalibrating: for each layer, a copy of the quantized program gets that layer's float weight back
and reads its float input (its quantize/dequantize pair bypassed); the copy runs in Paddle's static
executor (simulated INT8) on `sensitivity_images` val images, scored by mAP@.5 against the FP32
program's own detections on them (score >= the manifest's score_threshold; the ground truth when
FP32 finds nothing). sensitivity = that mAP minus the all-INT8 program's. Cost: one PTQ plus one
small-subset forward per layer, instead of one PTQ per layer.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

import numpy as np

from calibration.ptq import (
    QuantLayer,
    _check_model_dir,
    fold_conv_batch_norm,
    list_quantizable_layers,
    quantize_post_training,
    replace_dir,
    resolve_layers,
    static_mode,
)
from device.evaluate import Evaluation, ModelFolder, evaluate_model
from edge_sdk.bundle import PARAMS_FILE, PROGRAM_FILE
from edge_sdk.data.dataset import Dataset, ImageRecord
from edge_sdk.data.images import read_bgr
from edge_sdk.detections import Detections
from edge_sdk.errors import RecipeError
from edge_sdk.manifest import Manifest, Quantization
from edge_sdk.progress import progress_bar


class AccuracyBudgetExceeded(RecipeError):
    """INT8 lost more mAP@.5 than the budget allows, even with the most sensitive layers in float."""

    def __init__(self, fp32_map50: float, int8_map50: float, budget_points: float, float_layers: Sequence[str]) -> None:
        self.fp32_map50 = fp32_map50
        self.int8_map50 = int8_map50
        self.budget_points = budget_points
        self.float_layers = tuple(float_layers)
        super().__init__(
            "INT8 loses {:.2f} points of mAP@.5 (FP32 {:.4f}, INT8 {:.4f}), over the budget of {:g}, with {} kept in "
            "float: calibrate on more or other images, try another int8.algo, raise int8.budget_map50 or set "
            "int8.fallback: qat".format(
                self.loss_points,
                fp32_map50,
                int8_map50,
                budget_points,
                "layers " + ", ".join(self.float_layers) if self.float_layers else "no layers",
            )
        )

    @property
    def loss_points(self) -> float:
        return (self.fp32_map50 - self.int8_map50) * 100.0


@dataclass(frozen=True)
class Attempt:
    """One PTQ attempt: the layers kept in float and the INT8 mAP@.5 it reached."""

    float_layers: Tuple[str, ...]
    map50: float


@dataclass(frozen=True)
class BudgetResult:
    """The accepted INT8 program and what the manifest records about it.

    model_dir: folder with the INT8 model.pdmodel + model.pdiparams. quantization: for
    manifest.quantization. fp32 / int8: evaluations on the val set. attempts: every PTQ attempt in
    order. sensitivity: (layer, sensitivity in mAP@.5) most sensitive first, empty if not measured.
    """

    model_dir: Path
    quantization: Quantization
    fp32: Evaluation
    int8: Evaluation
    attempts: Tuple[Attempt, ...]
    sensitivity: Tuple[Tuple[str, float], ...] = ()

    @property
    def loss_points(self) -> float:
        return ((self.fp32.map50 or 0.0) - (self.int8.map50 or 0.0)) * 100.0


def int8_manifest(manifest: Manifest, quantization: Quantization) -> Manifest:
    """`manifest` describing an INT8 program whose scales were obtained as `quantization` says."""
    return dataclasses.replace(manifest, precision="int8", quantization=quantization)


def model_bytes(model_dir: Union[str, Path]) -> int:
    """Size in bytes of model.pdmodel + model.pdiparams."""
    return sum((Path(model_dir) / name).stat().st_size for name in (PROGRAM_FILE, PARAMS_FILE))


def detections_as_dataset(
    records: Sequence[ImageRecord], detections: Sequence[Detections], classes: Sequence[str], min_score: float
) -> Dataset:
    """A Dataset whose ground truth is `detections` (score >= min_score) on `records`' images."""
    images = []
    for record, found in zip(records, detections):
        kept = found.filter(min_score=min_score)
        boxes = np.asarray(kept.boxes, np.float32).reshape(-1, 4)
        areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        images.append(
            ImageRecord(
                path=record.path,
                image_id=record.image_id,
                width=record.width,
                height=record.height,
                boxes=boxes,
                class_ids=np.asarray(kept.class_ids, np.int32),
                iscrowd=np.zeros(len(boxes), bool),
                areas=areas.astype(np.float32),
            )
        )
    return Dataset(classes=tuple(classes), images=tuple(images))


def _subset(dataset: Dataset, count: int) -> Dataset:
    """`count` images spread evenly over the dataset (all when it has fewer)."""
    if count >= len(dataset.images):
        return dataset
    picks = np.linspace(0, len(dataset.images) - 1, count).round().astype(int)
    return Dataset(classes=dataset.classes, images=tuple(dataset.images[i] for i in picks), source=dataset.source)


class _StaticRunner:
    """Runs an inference program in Paddle's static executor on preprocessed images (simulated INT8)."""

    def __init__(self, model_dir: Path, manifest: Manifest, records: Sequence[ImageRecord]) -> None:
        import paddle

        from device.preprocess import Preprocessor

        self.paddle = paddle
        self.scope = paddle.static.Scope()
        self.executor = paddle.static.Executor(paddle.CPUPlace())
        with paddle.static.scope_guard(self.scope):
            self.program, self.feeds, self.fetches = paddle.static.load_inference_model(
                str(model_dir / "model"), self.executor
            )
        preprocess = Preprocessor(manifest.input)
        self.inputs = []
        self.shapes = []
        for record in records:
            image = read_bgr(record.path)
            self.inputs.append(preprocess(image))
            self.shapes.append(image.shape[:2])
        self.num_classes = len(manifest.classes)

    def detect(self, program: Any) -> List[Detections]:
        from device.postprocess import boxes_to_detections

        out = []
        with self.paddle.static.scope_guard(self.scope):
            for inputs, (height, width) in zip(self.inputs, self.shapes):
                feed = {name: inputs[name] for name in self.feeds}
                boxes = self.executor.run(program, feed=feed, fetch_list=self.fetches[:1])[0]
                out.append(boxes_to_detections(np.asarray(boxes), height, width, 0.0, self.num_classes))
        return out


def _float_copy(program: Any, layer: QuantLayer, scope: Any, float_weight: np.ndarray) -> Tuple[Any, Any]:
    """A clone of the quantized `program` running `layer` in float, and an undo() for the scope."""
    import paddle

    clone = program.clone()
    block = clone.global_block()
    weight_slot = "Filter" if layer.op_type.startswith("conv") or layer.op_type == "depthwise_conv2d" else "Y"
    act_slot = "Input" if weight_slot == "Filter" else "X"
    dequantized = None
    for op in block.ops:
        if (
            op.type == layer.op_type
            and op.input(weight_slot)
            and op.input(weight_slot)[0].startswith(layer.weight_var + ".")
        ):
            dequantized = op.input(weight_slot)[0]
            op._rename_input(dequantized, layer.weight_var)
            act = op.input(act_slot)[0]
            if act.endswith(".quantized.dequantized"):
                op._rename_input(act, act[: -len(".quantized.dequantized")])
    for index in reversed(range(len(block.ops))):
        op = block.ops[index]
        if op.type == "dequantize_linear" and op.output("Y") and op.output("Y")[0] == dequantized:
            block._remove_op(index)
    tensor = scope.find_var(layer.weight_var).get_tensor()
    quantized_weight = np.array(tensor)
    tensor.set(float_weight, paddle.CPUPlace())

    def undo() -> None:
        tensor.set(quantized_weight, paddle.CPUPlace())

    return clone, undo


def _has_op(program: Any, op_type: str) -> bool:
    return any(op.type == op_type for block in program.blocks for op in block.ops)


def layer_sensitivity(
    float_dir: Union[str, Path],
    quant_dir: Union[str, Path],
    manifest: Manifest,
    dataset: Dataset,
    candidate_layers: Optional[Sequence[str]] = None,
    progress: bool = True,
) -> List[Tuple[str, float]]:
    """(layer name, gain in mAP@.5 when only that layer runs in float) for each candidate, largest first.

    See the module docstring for the method. dataset: the (small) image set to measure on.
    candidate_layers: names to try (default: every quantizable layer).
    """
    from edge_sdk.metrics import evaluate

    float_dir, quant_dir = Path(float_dir), Path(quant_dir)
    layers = (
        resolve_layers(float_dir, candidate_layers)
        if candidate_layers is not None
        else list_quantizable_layers(float_dir)
    )
    records = list(dataset.images)
    with static_mode():
        reference_runner = _StaticRunner(float_dir, manifest, records)
        reference = reference_runner.detect(reference_runner.program)
        truth = detections_as_dataset(records, reference, manifest.classes, manifest.postprocess.score_threshold)
        if not any(len(r.boxes) for r in truth.images):
            truth = dataset
        runner = _StaticRunner(quant_dir, manifest, records)
        if _has_op(reference_runner.program, "batch_norm") and not _has_op(runner.program, "batch_norm"):
            # the INT8 program was calibrated on BN-folded convs: its float counterparts are the folded weights
            with reference_runner.paddle.static.scope_guard(reference_runner.scope):
                fold_conv_batch_norm(reference_runner.program, reference_runner.scope)
        float_weights = {
            layer.weight_var: np.array(reference_runner.scope.find_var(layer.weight_var).get_tensor())
            for layer in layers
        }
        baseline = evaluate(truth, runner.detect(runner.program)).map50 or 0.0
        scores = []
        with progress_bar(
            "layer sensitivity ({} layers, {} images)".format(len(layers), len(records)), len(layers), progress
        ) as advance:
            for layer in layers:
                program, undo = _float_copy(runner.program, layer, runner.scope, float_weights[layer.weight_var])
                try:
                    gain = (evaluate(truth, runner.detect(program)).map50 or 0.0) - baseline
                finally:
                    undo()
                scores.append((layer.name, float(gain)))
                advance()
    order = sorted(range(len(scores)), key=lambda i: (-scores[i][1], i))
    return [scores[i] for i in order]


def quantize_within_budget(
    model_dir: Union[str, Path],
    manifest: Manifest,
    calibration_records: Sequence[ImageRecord],
    val_dataset: Dataset,
    out_dir: Union[str, Path],
    algo: str = "KL",
    budget_points: float = 1.0,
    max_retries: int = 3,
    layers_per_retry: int = 2,
    sensitivity_images: int = 16,
    candidate_layers: Optional[Sequence[str]] = None,
    batch_size: int = 8,
    threads: Optional[int] = None,
    fp32: Optional[Evaluation] = None,
    progress: bool = True,
    log: Optional[Callable[[str], None]] = None,
    fold_batch_norm: bool = True,
) -> BudgetResult:
    """PTQ of the FP32 program in model_dir into out_dir, within the accuracy budget (module docstring).

    manifest: the FP32 bundle's manifest (input spec, classes, postprocess). budget_points: the most
    mAP@.5 INT8 may lose, in points (1.0 = 0.01). fp32: a precomputed FP32 evaluation on val_dataset.
    candidate_layers: the layers sensitivity is measured on (default: all). log: one line per attempt.
    fold_batch_norm: fuse conv + batch_norm before PTQ (see calibration.ptq).
    Raises AccuracyBudgetExceeded when the last attempt is still over budget, RecipeError when the
    val set has no ground truth to measure mAP@.5 on.
    """
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    _check_model_dir(model_dir)
    say = log or (lambda _line: None)
    if fp32 is None:
        fp32 = evaluate_model(ModelFolder(manifest, model_dir), val_dataset, device="cpu", threads=threads)
    if fp32.map50 is None:
        raise RecipeError("the val set has no ground-truth boxes: the INT8 accuracy budget cannot be measured")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".{}.work-".format(out_dir.name), dir=str(out_dir.parent)))
    float_layers: List[str] = []
    attempts: List[Attempt] = []
    sensitivity: List[Tuple[str, float]] = []
    try:
        for attempt in range(max_retries + 1):
            attempt_dir = work / "attempt-{}".format(attempt)
            quantize_post_training(
                model_dir,
                calibration_records,
                manifest.input,
                attempt_dir,
                algo,
                float_layers,
                batch_size,
                progress=progress,
                fold_batch_norm=fold_batch_norm,
            )
            quantization = Quantization(
                method="ptq", algo=algo, calibration_images=len(calibration_records), float_layers=tuple(float_layers)
            )
            int8 = evaluate_model(
                ModelFolder(int8_manifest(manifest, quantization), attempt_dir),
                val_dataset,
                device="cpu",
                threads=threads,
            )
            attempts.append(Attempt(tuple(float_layers), int8.map50 or 0.0))
            loss = (fp32.map50 - (int8.map50 or 0.0)) * 100.0
            say(
                "INT8 attempt {}: mAP@.5 {:.4f} (FP32 {:.4f}, loss {:.2f} points, budget {:g}), {} layer(s) in float".format(
                    attempt + 1, int8.map50 or 0.0, fp32.map50, loss, budget_points, len(float_layers)
                )
            )
            if loss <= budget_points:
                replace_dir(attempt_dir, out_dir)
                return BudgetResult(out_dir, quantization, fp32, int8, tuple(attempts), tuple(sensitivity))
            if attempt == max_retries:
                break
            if not sensitivity:
                subset = _subset(val_dataset, sensitivity_images)
                sensitivity = layer_sensitivity(model_dir, attempt_dir, manifest, subset, candidate_layers, progress)
            remaining = [name for name, _ in sensitivity if name not in float_layers]
            if not remaining:
                break
            float_layers.extend(remaining[:layers_per_retry])
            shutil.rmtree(str(attempt_dir), ignore_errors=True)
        raise AccuracyBudgetExceeded(fp32.map50, attempts[-1].map50, budget_points, attempts[-1].float_layers)
    finally:
        shutil.rmtree(str(work), ignore_errors=True)
