"""Export a YOLOv3 to a Paddle Inference program with PaddleDetection's interface, and to a bundle.

The exported program has inputs `image` [N,3,H,W] float32 (preprocessed as the manifest's input spec
says), `im_shape` [N,2] (network input h, w) and `scale_factor` [N,2] (input h / original h,
input w / original w), and outputs, in this order:
- boxes [M, 6] float32: class id, score, x1, y1, x2, y2 in original-image pixels, grouped by image;
  with no detection at all M is 0;
- bbox_num [N] int32: how many rows of `boxes` belong to each image.
This is PaddleDetection's YOLOv3 export: `yolo_box` decoding per level then `multiclass_nms3`.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

import paddle
import paddle.nn as nn

from calibration.ptq import LAYER_NAMES_FILE, strip_op_callstacks, write_layer_names
from compress.flops import count_params, model_flops
from edge_sdk.bundle import MODEL_PARAMS, MODEL_PROGRAM, PARAMS_FILE, PROGRAM_FILE, Bundle, opened_bundle, write_bundle
from edge_sdk.manifest import (
    InputSpec,
    Manifest,
    Postprocess,
    Provenance,
    ShapeRange,
    StageMetrics,
    TensorRTHints,
)

__all__ = [
    "EXPORT_POSTPROCESS",
    "InferenceModel",
    "count_params",
    "export_bundle",
    "export_inference",
    "model_flops",
    "rewrite_bundle",
    "tensorrt_hints",
]

EXPORT_POSTPROCESS = Postprocess(nms_top_k=100)
"""What an export bakes in when given no Postprocess: PaddleDetection's values, except that NMS sorts at most
100 candidates per class (keep_top_k's number) rather than 1000. A trained model has far fewer over the
0.005 floor (the demo's: 2-35 per image, all classes), so its boxes are the same; a seeded or barely
trained one, whose every anchor passes the floor, no longer spends its time in NMS (MobileNetV1 at 320 px,
6 classes: 37,800 candidates)."""

LAYER_NAMES_MEMBER = "model/model.layers.json"
"""Weight variable -> structured layer name (calibration.ptq.layer_names): how INT8 reports name layers."""


@paddle.jit.not_to_static
def multiclass_nms(
    bboxes,
    scores,
    score_threshold,
    nms_top_k,
    keep_top_k,
    nms_threshold,
    normalized=True,
    nms_eta=1.0,
    background_label=-1,
):
    """PaddleDetection's multiclass NMS: the `multiclass_nms3` op in dygraph and in a static program.

    bboxes [N, M, 4] xyxy, scores [N, K, M] -> (out [R, 6] class, score, x1, y1, x2, y2; nms_rois_num [N]).
    """
    if paddle.in_dynamic_mode():
        out, _, rois_num = paddle._C_ops.multiclass_nms3(
            bboxes,
            scores,
            None,
            score_threshold,
            nms_top_k,
            keep_top_k,
            nms_threshold,
            normalized,
            nms_eta,
            background_label,
        )
        return out, rois_num
    from paddle.base.layer_helper import LayerHelper

    helper = LayerHelper("multiclass_nms3")
    out = helper.create_variable_for_type_inference(dtype=bboxes.dtype)
    index = helper.create_variable_for_type_inference(dtype="int32")
    rois_num = helper.create_variable_for_type_inference(dtype="int32")
    helper.append_op(
        type="multiclass_nms3",
        inputs={"BBoxes": bboxes, "Scores": scores},
        attrs={
            "background_label": background_label,
            "score_threshold": score_threshold,
            "nms_top_k": nms_top_k,
            "nms_threshold": nms_threshold,
            "keep_top_k": keep_top_k,
            "nms_eta": nms_eta,
            "normalized": normalized,
        },
        outputs={"Out": out, "Index": index, "NmsRoisNum": rois_num},
    )
    out.stop_gradient = True
    index.stop_gradient = True
    rois_num.stop_gradient = True
    return out, rois_num


class InferenceModel(nn.Layer):
    """A YOLOv3 plus PaddleDetection's YOLOBox decoding and MultiClassNMS.

    forward(image [N,3,H,W], im_shape [N,2], scale_factor [N,2]) -> (boxes [M,6], bbox_num [N]);
    see the module docstring. Works in dygraph (for evaluation) and under `paddle.jit.to_static`.
    `conf_threshold` is both yolo_box's conf_thresh and the NMS score threshold.
    """

    def __init__(self, model: nn.Layer, postprocess: Optional[Postprocess] = None) -> None:
        super().__init__()
        self.model = model
        self.postprocess = postprocess or EXPORT_POSTPROCESS

    def decode(self, head_outs, im_shape, scale_factor):
        """Raw head maps -> (bboxes [N, M, 4] in original pixels, scores [N, K, M]), as PaddleDetection's YOLOBox."""
        origin_shape = paddle.cast(im_shape / scale_factor, "int32")
        boxes_list = []
        scores_list = []
        for head_out, anchors, ratio in zip(head_outs, self.model.mask_anchors, self.model.downsample_ratios):
            boxes, scores = paddle.vision.ops.yolo_box(
                head_out,
                origin_shape,
                anchors,
                self.model.num_classes,
                self.postprocess.conf_threshold,
                ratio,
                clip_bbox=True,
                scale_x_y=1.0,
            )
            boxes_list.append(boxes)
            scores_list.append(paddle.transpose(scores, perm=[0, 2, 1]))
        return paddle.concat(boxes_list, axis=1), paddle.concat(scores_list, axis=2)

    def forward(self, image, im_shape, scale_factor):
        bboxes, scores = self.decode(self.model(image), im_shape, scale_factor)
        post = self.postprocess
        return multiclass_nms(
            bboxes,
            scores,
            score_threshold=post.conf_threshold,
            nms_top_k=post.nms_top_k,
            keep_top_k=post.keep_top_k,
            nms_threshold=post.nms_iou,
            normalized=True,
            nms_eta=1.0,
            background_label=-1,
        )


def export_inference(
    model: nn.Layer,
    input_size: Tuple[int, int],
    out_dir: Union[str, Path],
    postprocess: Optional[Postprocess] = None,
) -> Tuple[Path, Path]:
    """Save `model` with decoding and NMS as out_dir/model.pdmodel + out_dir/model.pdiparams, and the
    structured names of its weights as out_dir/model.layers.json. The program carries no Python call
    stacks (`calibration.ptq.strip_op_callstacks`).

    input_size: (height, width) of the `image` input; the batch dimension stays dynamic. The
    model's train/eval state is restored afterwards; the model itself is not modified.
    """
    height, width = int(input_size[0]), int(input_size[1])
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    wrapper = InferenceModel(model, postprocess)
    wrapper.eval()
    specs = [
        paddle.static.InputSpec([None, 3, height, width], "float32", "image"),
        paddle.static.InputSpec([None, 2], "float32", "im_shape"),
        paddle.static.InputSpec([None, 2], "float32", "scale_factor"),
    ]
    try:
        static_model = paddle.jit.to_static(wrapper, input_spec=specs, full_graph=True)
        paddle.jit.save(static_model, str(out_dir / "model"))
        strip_op_callstacks(out_dir)
        write_layer_names(out_dir)
    finally:
        if was_training:
            model.train()
    return out_dir / PROGRAM_FILE, out_dir / PARAMS_FILE


def tensorrt_hints(
    input_size: Tuple[int, int],
    max_batch: int = 1,
    min_subgraph_size: int = 3,
    workspace_bytes: int = 1 << 30,
) -> TensorRTHints:
    """TensorRT hints with dynamic shapes for image / im_shape / scale_factor, batch 1 to max_batch
    (opt 1) at the fixed input size (height, width)."""
    height, width = int(input_size[0]), int(input_size[1])

    def batch_range(*dims: int) -> ShapeRange:
        return ShapeRange(min=(1,) + dims, opt=(1,) + dims, max=(max_batch,) + dims)

    return TensorRTHints(
        min_subgraph_size=min_subgraph_size,
        workspace_bytes=workspace_bytes,
        dynamic_shapes={
            "image": batch_range(3, height, width),
            "im_shape": batch_range(2),
            "scale_factor": batch_range(2),
        },
    )


def export_bundle(
    model: nn.Layer,
    classes: Sequence[str],
    input_size: Tuple[int, int],
    out_path: Union[str, Path],
    name: str,
    version: str,
    postprocess: Optional[Postprocess] = None,
    metrics: Sequence[StageMetrics] = (),
    provenance: Optional[Provenance] = None,
    extra_files: Optional[Mapping[str, Union[str, Path, bytes]]] = None,
    tensorrt: Optional[TensorRTHints] = None,
    signing_key=None,
) -> Path:
    """Export `model` (a compress.models.YOLOv3) and write an fp32 bundle at `out_path`.

    classes: one name per model class. input_size: (height, width). The manifest's input spec is
    PaddleDetection's YOLOv3 preprocessing (stretch resize, cubic, RGB, /255, ImageNet mean/std).
    extra_files: more bundle members (archive name -> file path or bytes). tensorrt: defaults to
    `tensorrt_hints(input_size)`. Returns the bundle path.
    """
    from edge_sdk.errors import RecipeError

    classes = tuple(classes)
    if len(classes) != model.num_classes:
        raise RecipeError("{} class names given for a model with {} classes".format(len(classes), model.num_classes))
    height, width = int(input_size[0]), int(input_size[1])
    postprocess = postprocess or EXPORT_POSTPROCESS
    manifest = Manifest(
        name=name,
        version=version,
        architecture="yolov3_{}".format(model.arch),
        classes=classes,
        input=InputSpec(
            size=(height, width), resize_mode="stretch", interpolation="cubic", channel_order="RGB", scale=True
        ),
        precision="fp32",
        postprocess=postprocess,
        tensorrt=tensorrt or tensorrt_hints((height, width)),
        metrics=tuple(metrics),
        provenance=provenance or Provenance(),
    )
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".export-", dir=str(out_path.parent)) as tmp:
        pdmodel, pdiparams = export_inference(model, (height, width), Path(tmp), postprocess)
        files = {MODEL_PROGRAM: pdmodel, MODEL_PARAMS: pdiparams, LAYER_NAMES_MEMBER: Path(tmp) / LAYER_NAMES_FILE}
        for arcname, source in (extra_files or {}).items():
            files[arcname] = source if isinstance(source, bytes) else Path(os.fspath(source))
        return Path(write_bundle(out_path, manifest, files, signing_key=signing_key))


def rewrite_bundle(
    draft: Union[str, Path, Bundle],
    out: Path,
    metrics: Optional[Sequence[StageMetrics]] = None,
    extra_files: Optional[Dict[str, Any]] = None,
    recipe_sha256: Optional[str] = None,
) -> Path:
    """Re-write bundle `draft` (a path, or a Bundle already opened) as `out` with the very same member
    files (the model that was measured is byte for byte the one shipped), plus `extra_files` (archive
    name -> bytes or path); `metrics` and `recipe_sha256` (provenance) replace the manifest's when given."""
    import dataclasses

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with opened_bundle(draft) as bundle:
        manifest = dataclasses.replace(bundle.manifest, files=(), created_at="")
        if metrics is not None:
            manifest = dataclasses.replace(manifest, metrics=tuple(metrics))
        if recipe_sha256 is not None:
            manifest = dataclasses.replace(
                manifest, provenance=dataclasses.replace(manifest.provenance, recipe_sha256=recipe_sha256)
            )
        files = {entry.path: bundle.path_of(entry.path) for entry in bundle.manifest.files}
        files.update(extra_files or {})
        return Path(write_bundle(out, manifest, files))
