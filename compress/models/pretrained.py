"""Load PaddleDetection YOLOv3 checkpoints (.pdparams) into `YOLOv3` models."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Dict, List

import numpy as np

from edge_sdk.errors import DataError

HEAD_PREFIX = "yolo_head.yolo_output."
_log = logging.getLogger(__name__)


@dataclass
class LoadReport:
    """What `load_pretrained` did. messages: human-readable notes (also logged as warnings)."""

    loaded: List[str] = field(default_factory=list)
    reinitialised: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)
    checkpoint_classes: int = 0
    messages: List[str] = field(default_factory=list)


def _read_state(path: str) -> Dict[str, np.ndarray]:
    import paddle

    if not os.path.isfile(path):
        raise DataError("weights file not found: {}".format(path))
    try:
        state = paddle.load(path, return_numpy=True)
    except Exception as exc:  # paddle raises assorted types for a file that is not a checkpoint
        raise DataError("cannot read weights file {}: {}".format(path, exc)) from None
    if not isinstance(state, dict) or not state:
        raise DataError("weights file {} does not hold a state dict".format(path))
    if isinstance(state.get("model"), dict) and "arch" in state:  # compress.checkpoint's best.pdparams / last.pdckpt
        raise DataError(
            "weights file {} is an edge-sdk training checkpoint (yolov3_{}, width {:g}), not a PaddleDetection one: "
            "`edge-sdk compress` exports it (each stage's bundle is in its WORKDIR)".format(
                path, state["arch"], float(state.get("width", 1.0))
            )
        )
    return {str(k): np.asarray(v) for k, v in state.items()}


def load_pretrained(model, path: str) -> LoadReport:
    """Copy a PaddleDetection checkpoint into `model` (a `YOLOv3`), all or nothing.

    A different class count only changes the three output convs (yolo_head.yolo_output.{0,1,2}):
    those are re-initialised and a message says so. Any other missing key or shape mismatch raises
    DataError naming the key; nothing is copied then. Keys the model does not have are reported.
    """
    state = _read_state(str(path))
    own = model.state_dict()
    report = LoadReport()
    head_weight = state.get(HEAD_PREFIX + "0.weight")
    if head_weight is not None and head_weight.ndim == 4 and head_weight.shape[0] % 3 == 0:
        report.checkpoint_classes = head_weight.shape[0] // 3 - 5
    to_copy = {}
    for key, param in own.items():
        want = tuple(param.shape)
        if key not in state:
            raise DataError(
                "weights file {} has no parameter {} (is it a yolov3_{} checkpoint?)".format(path, key, model.arch)
            )
        got = tuple(state[key].shape)
        if got == want:
            to_copy[key] = state[key]
            continue
        is_head = key.startswith(HEAD_PREFIX)
        same_input = is_head and len(got) == len(want) and got[1:] == want[1:] and got[0] % 3 == 0
        if not same_input:
            raise DataError(
                "weights file {}: parameter {} has shape {}, the model expects {} (architecture or width differ)".format(
                    path, key, list(got), list(want)
                )
            )
        report.reinitialised.append(key)
    report.unexpected = sorted(set(state) - set(own))
    for key, value in to_copy.items():
        own[key].set_value(value.astype(np.asarray(own[key].numpy()).dtype, copy=False))
    report.loaded = sorted(to_copy)
    if report.reinitialised:
        model.yolo_head.reset_outputs()
        report.messages.append(
            "checkpoint has {} classes, the model {}: the output convs yolo_head.yolo_output.0-2 were re-initialised".format(
                report.checkpoint_classes, model.num_classes
            )
        )
    if report.unexpected:
        report.messages.append(
            "{} checkpoint entries are not used by the model: {}".format(
                len(report.unexpected), ", ".join(report.unexpected[:5])
            )
        )
    for message in report.messages:
        _log.warning(message)
    return report
