"""Quantization-aware training (QAT) with PaddleSlim: the fallback when PTQ misses the accuracy budget.

`quantize_aware_train` inserts fake-quant layers into a copy of a trained dygraph YOLOv3
(`paddleslim.QAT`: per-channel weight scales, moving-average activation scales, onnx_format so
the exported program carries quantize/dequantize ops with their scales and int8-stored weights,
like PTQ's), fine-tunes it for a few epochs with the project's training loop (`compress.loop.run_epochs`,
`compress.loss.YOLOv3Loss`, `compress.transforms`) and exports the quantized inference program
with the same decoding and NMS as `compress.export.export_inference`.
"""

from __future__ import annotations

import copy
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Union

import paddle
import paddle.nn as nn

from calibration.ptq import replace_dir, strip_op_callstacks
from compress.config import QATSection
from compress.export import InferenceModel
from compress.loop import Trainer, run_epochs, training_data
from compress.loss import YOLOv3Loss
from edge_sdk.data.dataset import Dataset
from edge_sdk.errors import DataError
from edge_sdk.manifest import Postprocess
from edge_sdk.progress import progress_bar


@dataclass
class QATResult:
    """model_dir: the exported INT8 program (model.pdmodel + model.pdiparams); history: loss per epoch."""

    model_dir: Path
    history: List[Dict[str, float]]


def qat_config(section: QATSection) -> Dict[str, Any]:
    """PaddleSlim QAT config for `section` (8-bit weights and activations, onnx_format)."""
    return {
        "weight_quantize_type": section.weight_quantize_type,
        "activation_quantize_type": section.activation_quantize_type,
        "weight_bits": 8,
        "activation_bits": 8,
        "quantizable_layer_type": ["Conv2D", "Linear"],
        "onnx_format": True,
    }


def quantize_aware_train(
    net: nn.Layer,
    train_set: Dataset,
    input_size: int,
    out_dir: Union[str, Path],
    section: QATSection = QATSection(),
    postprocess: Optional[Postprocess] = None,
    progress: bool = True,
    on_epoch_end: Optional[Callable[[int, Dict[str, float]], None]] = None,
) -> QATResult:
    """Fine-tune a fake-quantized copy of `net` (a trained compress.models.YOLOv3, left untouched) on
    `train_set` at input_size x input_size and export it to out_dir (written atomically).

    Returns the folder and the mean losses of each epoch. Raises DataError when the training set has
    no full batch.
    """
    from paddleslim import QAT

    out_dir = Path(out_dir)
    paddle.seed(section.seed)
    model = copy.deepcopy(net)
    quanter = QAT(config=qat_config(section))
    quanter.quantize(model)
    loss_fn = YOLOv3Loss(model.num_classes, model.anchors, model.anchor_masks, model.downsample_ratios)
    optimizer = paddle.optimizer.Momentum(
        learning_rate=section.lr,
        momentum=section.momentum,
        parameters=model.parameters(),
        weight_decay=paddle.regularizer.L2Decay(section.weight_decay) if section.weight_decay else None,
    )
    trainer = Trainer(model, loss_fn, optimizer)
    data = training_data(
        train_set.images, input_size, section.batch_size, [input_size], None, section.max_boxes, section.seed
    )
    if data.micro_batches == 0:
        raise DataError("QAT: the training set has no full batch of {} images".format(section.batch_size))

    def lr_of_step(step: int) -> float:
        warm = min(1.0, (step + 1) / section.warmup_steps) if section.warmup_steps else 1.0
        return section.lr * warm

    def loss_error(losses: Dict[str, float], epoch: int, iteration: int) -> str:
        return "QAT: the loss became {} at epoch {}: lower qat.lr".format(losses["loss"], epoch)

    history: List[Dict[str, float]] = []

    def after_epoch(epoch: int, losses: Dict[str, float], seconds: float) -> None:
        history.append(losses)
        if on_epoch_end is not None:
            on_epoch_end(epoch, losses)

    with progress_bar("QAT fine-tuning", section.epochs * data.micro_batches, progress) as advance:
        run_epochs(
            trainer,
            data,
            range(section.epochs),
            lr_of_step,
            loss_error,
            after_batch=lambda losses, lr: advance(),
            after_epoch=after_epoch,
        )

    model.eval()
    wrapper = InferenceModel(model, postprocess)
    wrapper.eval()
    specs = [
        paddle.static.InputSpec([None, 3, input_size, input_size], "float32", "image"),
        paddle.static.InputSpec([None, 2], "float32", "im_shape"),
        paddle.static.InputSpec([None, 2], "float32", "scale_factor"),
    ]
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=".{}.tmp-".format(out_dir.name), dir=str(out_dir.parent)))
    try:
        static_model = paddle.jit.to_static(wrapper, input_spec=specs, full_graph=True)
        quanter.save_quantized_model(static_model, str(tmp_dir / "model"), input_spec=specs)
        strip_op_callstacks(tmp_dir)
        tmp_dir.chmod(0o755)
        return QATResult(replace_dir(tmp_dir, out_dir), history)
    except BaseException:
        shutil.rmtree(str(tmp_dir), ignore_errors=True)
        raise
