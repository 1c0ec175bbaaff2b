"""Detections and mAP of a dygraph YOLOv3 on a dataset, decoded as the exported model decodes them."""

from __future__ import annotations

from typing import Any, Dict, List, Sequence

import numpy as np
import paddle
import paddle.nn as nn

from compress.export import InferenceModel
from edge_sdk.data.dataset import Dataset, ImageRecord
from edge_sdk.data.images import read_bgr
from edge_sdk.detections import Detections
from edge_sdk.manifest import Postprocess
from edge_sdk.metrics import EvalResult, evaluate


@paddle.no_grad()
def predict(
    net: nn.Layer, records: Sequence[ImageRecord], input_size: int, postprocess: Postprocess, batch_size: int = 8
) -> List[Detections]:
    """Detections (source pixels, every score >= conf_threshold) for each record, with the export's
    decoding + NMS (`compress.export.InferenceModel`) on the dygraph model in eval mode."""
    from compress.transforms import preprocess_bgr
    from device.postprocess import boxes_to_detections

    was_training = net.training
    wrapper = InferenceModel(net, postprocess)
    wrapper.eval()
    detections = []
    try:
        for start in range(0, len(records), batch_size):
            chunk = records[start : start + batch_size]
            images, shapes = [], []
            for r in chunk:
                image = read_bgr(r.path)
                shapes.append(image.shape[:2])
                images.append(preprocess_bgr(image, (input_size, input_size)))
            n = len(chunk)
            im_shape = np.full((n, 2), input_size, np.float32)
            scale = np.array([[input_size / h, input_size / w] for h, w in shapes], np.float32)
            boxes, counts = wrapper(
                paddle.to_tensor(np.stack(images)), paddle.to_tensor(im_shape), paddle.to_tensor(scale)
            )
            boxes, counts = boxes.numpy().reshape(-1, 6), counts.numpy().reshape(-1)
            offset = 0
            for (h, w), count in zip(shapes, counts):
                rows = boxes[offset : offset + int(count)]
                offset += int(count)
                detections.append(boxes_to_detections(rows, h, w, 0.0, net.num_classes))
    finally:
        if was_training:
            net.train()
    return detections


def evaluate_net(net: nn.Layer, dataset: Dataset, input_size: int, postprocess: Postprocess) -> EvalResult:
    """edge_sdk.metrics.EvalResult of `net` on `dataset`."""
    return evaluate(dataset, predict(net, list(dataset.images), input_size, postprocess))


def evaluate_weights(
    net: nn.Layer, weights: Dict[str, Any], val_set: Dataset, input_size: int, postprocess: Postprocess
) -> Dict[str, Any]:
    """{"map50", "map"} of `net` carrying `weights` (the EMA); `net` gets its own weights back."""
    own = {k: v.detach().clone() for k, v in net.state_dict().items()}
    net.set_state_dict(weights)
    try:
        result = evaluate_net(net, val_set, input_size, postprocess)
    finally:
        net.set_state_dict(own)
    return {"map50": result.map50, "map": result.map}
