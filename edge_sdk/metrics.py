"""COCO bounding-box evaluation (mAP), with the same definitions and numbers as pycocotools' COCOeval.

What is reproduced from COCOeval (iouType "bbox"), so results agree with it to float precision:
IoU thresholds .50:.05:.95; 101 recall points with precision made monotone (non-increasing in recall);
area ranges all / small / medium / large chosen by the ground truth's `area` (limits 32^2 and 96^2,
both ends inclusive) and by w*h for unmatched detections; at most 100 detections per image and class
(maxDets 1 / 10 / 100, summaries at 100); crowd boxes are matched by intersection over the detection's
area, never used up, and ignored, as are detections matched to an ignored box; greedy matching per
image and class in stable descending-score order, a regular box preferred to an ignored one, the
highest IoU winning (the later box on an exact tie); classes without ground truth are left out of
the means.

Undefined values (a class without ground truth, a dataset without any) are `None` in Python and
`null` in `EvalResult.to_dict()`, never NaN; the raw tables use COCOeval's -1.

Differences from pycocotools, none of which changes a well-formed evaluation: an empty result list
gives zeros (pycocotools raises), results with an unknown image or category id are refused (they are
not silently dropped), and annotation ids play no part (COCOeval treats a box with id 0 as unmatched).
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from edge_sdk.data.dataset import MAX_IMAGE_SIDE, Dataset, check_box, image_size_problem
from edge_sdk.detections import Detections
from edge_sdk.errors import DataError

# Built exactly as COCOeval's Params builds them: the thresholds compare bit for bit.
IOU_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
RECALL_THRESHOLDS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)
AREA_RANGES = ((0.0, 1e5**2), (0.0, 32.0**2), (32.0**2, 96.0**2), (96.0**2, 1e5**2))
AREA_NAMES = ("all", "small", "medium", "large")
MAX_DETECTIONS = (1, 10, 100)

_IOU_50 = 0
_IOU_75 = 5
_AREA_ALL = 0
_AT_100 = 2
# Largest padded work arrays (elements) built while matching one group of image/class pairs.
_CHUNK_ELEMENTS = 1 << 21


@dataclass(frozen=True)
class ClassResult:
    """One class. ap: AP@[.5:.95]; ap50: AP@.5; recall: AR@100 averaged over IoU .5:.95; num_gt: non-crowd boxes.

    ap, ap50 and recall are in [0, 1], or None for a class without (non-crowd) ground truth.
    """

    name: str
    ap: Optional[float]
    ap50: Optional[float]
    recall: Optional[float]
    num_gt: int

    def to_dict(self) -> Dict[str, Any]:
        return {"name": self.name, "ap": self.ap, "ap50": self.ap50, "recall": self.recall, "num_gt": self.num_gt}


@dataclass(frozen=True)
class EvalResult:
    """COCO metrics at maxDets 100, each in [0, 1] or None when undefined (no ground truth in that range).

    map: AP@[.5:.95]; map50 / map75: AP at IoU .5 / .75; map_small / map_medium / map_large: AP@[.5:.95]
    for ground truth of area < 32^2, 32^2..96^2, > 96^2; ar100: AR@100 over IoU .5:.95.
    precision_table: (T=10, R=101, K classes, A=4 areas, M=3 maxDets), recall_table: (T, K, A, M);
    the same arrays as COCOeval's eval["precision"] / eval["recall"], -1 where undefined.
    """

    map: Optional[float]
    map50: Optional[float]
    map75: Optional[float]
    map_small: Optional[float]
    map_medium: Optional[float]
    map_large: Optional[float]
    ar100: Optional[float]
    per_class: Tuple[ClassResult, ...]
    num_images: int
    num_detections: int
    precision_table: np.ndarray = field(repr=False, compare=False)
    recall_table: np.ndarray = field(repr=False, compare=False)

    def to_dict(self) -> Dict[str, Any]:
        """JSON-ready: keys mAP, mAP50, mAP75, mAP_small, mAP_medium, mAP_large, AR100, per_class, ... (null, not NaN)."""
        return {
            "mAP": self.map,
            "mAP50": self.map50,
            "mAP75": self.map75,
            "mAP_small": self.map_small,
            "mAP_medium": self.map_medium,
            "mAP_large": self.map_large,
            "AR100": self.ar100,
            "num_images": self.num_images,
            "num_detections": self.num_detections,
            "per_class": [c.to_dict() for c in self.per_class],
        }


@dataclass(frozen=True)
class _Boxes:
    """Boxes of every image, flattened. image: (N,) position of the image in evaluation order;
    class_ids: (N,) 0-based; boxes: (N, 4) float64 x, y, w, h; areas: (N,) float64; crowd: (N,) bool;
    scores: (N,) float64 (detections only)."""

    image: np.ndarray
    class_ids: np.ndarray
    boxes: np.ndarray
    areas: np.ndarray
    crowd: np.ndarray
    scores: np.ndarray


def evaluate(dataset: Dataset, predictions: Sequence[Detections]) -> EvalResult:
    """COCO bbox metrics of `predictions[i]` against `dataset.images[i]` (class ids: the dataset's 0-based ids)."""
    if len(predictions) != len(dataset.images):
        raise ValueError("evaluate: {} predictions for {} images".format(len(predictions), len(dataset.images)))
    num_classes = len(dataset.classes)
    order = np.argsort(np.array([rec.image_id for rec in dataset.images], np.int64), kind="stable")
    gt_parts: List[Tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
    dt_parts: List[Tuple[int, np.ndarray, np.ndarray, np.ndarray]] = []
    for position, index in enumerate(order.tolist()):
        rec = dataset.images[index]
        det = predictions[index]
        boxes = np.asarray(rec.boxes, np.float64).reshape(-1, 4)
        class_ids = np.asarray(rec.class_ids, np.int64).reshape(-1)
        crowd = np.asarray(rec.iscrowd, bool).reshape(-1)
        areas = np.asarray(rec.areas, np.float64).reshape(-1)
        if crowd.shape[0] != boxes.shape[0]:
            crowd = np.zeros(boxes.shape[0], bool)
        if areas.shape[0] != boxes.shape[0]:
            areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        if class_ids.size and (class_ids.min() < 0 or class_ids.max() >= num_classes):
            raise DataError("image {}: class id out of range 0..{}".format(rec.image_id, num_classes - 1))
        if len(det) and int(det.class_ids.max()) >= num_classes:
            raise DataError(
                "predictions for image {}: class id {} but the dataset has {} classes".format(
                    rec.image_id, int(det.class_ids.max()), num_classes
                )
            )
        gt_parts.append((position, _xyxy_to_xywh(boxes), class_ids, crowd, areas))
        dt_parts.append((position, _xyxy_to_xywh(np.asarray(det.boxes, np.float64)), det.class_ids, det.scores))
    gt = _Boxes(
        image=_concat([np.full(len(p[2]), p[0], np.int64) for p in gt_parts], np.int64),
        class_ids=_concat([p[2] for p in gt_parts], np.int64),
        boxes=_concat([p[1] for p in gt_parts], np.float64).reshape(-1, 4),
        areas=_concat([p[4] for p in gt_parts], np.float64),
        crowd=_concat([p[3] for p in gt_parts], bool),
        scores=np.zeros(0, np.float64),
    )
    boxes = _concat([p[1] for p in dt_parts], np.float64).reshape(-1, 4)
    dt = _Boxes(
        image=_concat([np.full(len(p[2]), p[0], np.int64) for p in dt_parts], np.int64),
        class_ids=_concat([p[2] for p in dt_parts], np.int64),
        boxes=boxes,
        areas=boxes[:, 2] * boxes[:, 3],
        crowd=np.zeros(boxes.shape[0], bool),
        scores=_concat([p[3] for p in dt_parts], np.float64),
    )
    return _evaluate_boxes(gt, dt, len(order), tuple(dataset.classes))


def evaluate_coco(gt: Union[Dict[str, Any], str, Path], results: Union[List[Any], str, Path]) -> EvalResult:
    """COCO bbox metrics of a COCO results list (dicts with image_id, category_id, bbox [x, y, w, h], score).

    gt: a COCO ground-truth dict or the path of its JSON file; results: a list or the path of its JSON file.
    Classes are the GT categories in category-id order (as `edge_sdk.data.load_coco` numbers them).
    Image files need not exist. Raises DataError (one line) for unreadable or malformed input.
    """
    gt_doc = _load_json(gt, "ground truth")
    results_doc = _load_json(results, "results")
    classes, image_position, category_index, gt_boxes = _parse_coco_gt(gt_doc)
    dt_boxes = _parse_coco_results(results_doc, image_position, category_index)
    return _evaluate_boxes(gt_boxes, dt_boxes, len(image_position), classes)


def _evaluate_boxes(gt: _Boxes, dt: _Boxes, num_images: int, classes: Tuple[str, ...]) -> EvalResult:
    num_classes = len(classes)
    num_t, num_r, num_a, num_m = len(IOU_THRESHOLDS), len(RECALL_THRESHOLDS), len(AREA_RANGES), len(MAX_DETECTIONS)

    # Image/class pairs: ground truth in file order, detections by descending score (stable), 100 at most.
    gt_key = gt.image * num_classes + gt.class_ids
    dt_key = dt.image * num_classes + dt.class_ids
    gt_order = np.argsort(gt_key, kind="stable")
    dt_order = np.lexsort((-dt.scores, dt_key))
    gt_key, dt_key = gt_key[gt_order], dt_key[dt_order]
    dt_rank = np.arange(dt_key.size) - np.searchsorted(dt_key, dt_key, side="left")
    kept = dt_rank < MAX_DETECTIONS[-1]
    dt_order, dt_key, dt_rank = dt_order[kept], dt_key[kept], dt_rank[kept]

    gt_ignored = _outside_areas(gt.areas[gt_order]) | gt.crowd[gt_order][None, :]  # (A, G)
    dt_outside = _outside_areas(dt.areas[dt_order])  # (A, D)
    matched, hit_ignored = _match(gt, dt, gt_order, gt_key, dt_order, dt_key, gt_ignored)
    dt_ignored = hit_ignored | (~matched & dt_outside[:, None, :])  # (A, T, D)

    gt_class = gt.class_ids[gt_order]
    num_regular_gt = np.stack(
        [np.bincount(gt_class[~gt_ignored[a]], minlength=num_classes) for a in range(num_a)], axis=1
    )  # (K, A)

    # Accumulate per class: all images' detections by descending score, ties in image then rank order.
    dt_class = dt.class_ids[dt_order]
    dt_scores = dt.scores[dt_order]
    acc_order = np.lexsort((dt_rank, dt.image[dt_order], -dt_scores, dt_class))
    class_starts = np.searchsorted(dt_class[acc_order], np.arange(num_classes + 1), side="left")
    true_pos = matched & ~dt_ignored
    false_pos = ~matched & ~dt_ignored
    precision = -np.ones((num_t, num_r, num_classes, num_a, num_m))
    recall = -np.ones((num_t, num_classes, num_a, num_m))
    for k in range(num_classes):
        members = acc_order[class_starts[k] : class_starts[k + 1]]
        for m, max_det in enumerate(MAX_DETECTIONS):
            kept = members[dt_rank[members] < max_det]
            tp_sum = np.cumsum(true_pos[:, :, kept], axis=2, dtype=np.float64)  # (A, T, n)
            fp_sum = np.cumsum(false_pos[:, :, kept], axis=2, dtype=np.float64)
            for a in range(num_a):
                npig = num_regular_gt[k, a]
                if npig == 0:
                    continue
                precision[:, :, k, a, m], recall[:, k, a, m] = _interpolate(tp_sum[a], fp_sum[a], npig)

    def mean_of(values: np.ndarray) -> Optional[float]:
        valid = values[values > -1]
        return float(np.mean(valid)) if valid.size else None

    at_100 = precision[..., _AT_100]  # (T, R, K, A)
    per_class = tuple(
        ClassResult(
            name=classes[k],
            ap=mean_of(at_100[:, :, k, _AREA_ALL]),
            ap50=mean_of(at_100[_IOU_50, :, k, _AREA_ALL]),
            recall=mean_of(recall[:, k, _AREA_ALL, _AT_100]),
            num_gt=int(num_regular_gt[k, _AREA_ALL]),
        )
        for k in range(num_classes)
    )
    return EvalResult(
        map=mean_of(at_100[..., _AREA_ALL]),
        map50=mean_of(at_100[_IOU_50, ..., _AREA_ALL]),
        map75=mean_of(at_100[_IOU_75, ..., _AREA_ALL]),
        map_small=mean_of(at_100[..., 1]),
        map_medium=mean_of(at_100[..., 2]),
        map_large=mean_of(at_100[..., 3]),
        ar100=mean_of(recall[:, :, _AREA_ALL, _AT_100]),
        per_class=per_class,
        num_images=num_images,
        num_detections=int(dt.scores.size),
        precision_table=precision,
        recall_table=recall,
    )


def _interpolate(tp_sum: np.ndarray, fp_sum: np.ndarray, npig: int) -> Tuple[np.ndarray, np.ndarray]:
    """(T, n) cumulative true / false positives in score order -> (T, R) interpolated precision, (T,) recall."""
    num_t, n = tp_sum.shape
    recall_curve = tp_sum / npig
    precision_curve = tp_sum / (fp_sum + tp_sum + np.spacing(1))
    precision_curve = np.maximum.accumulate(precision_curve[:, ::-1], axis=1)[:, ::-1]
    sampled = np.zeros((num_t, len(RECALL_THRESHOLDS)))
    if n == 0:
        return sampled, np.zeros(num_t)
    for t in range(num_t):
        index = np.searchsorted(recall_curve[t], RECALL_THRESHOLDS, side="left")
        reached = index < n
        sampled[t, reached] = precision_curve[t, index[reached]]
    return sampled, recall_curve[:, -1]


def _match(
    gt: _Boxes,
    dt: _Boxes,
    gt_order: np.ndarray,
    gt_key: np.ndarray,
    dt_order: np.ndarray,
    dt_key: np.ndarray,
    gt_ignored: np.ndarray,
) -> Tuple[np.ndarray, np.ndarray]:
    """Greedy COCO matching of every image/class pair -> matched, matched_to_ignored: (A, T, D) bool.

    D indexes detections in `dt_order`. Pairs are padded to powers of two and matched together, one
    detection rank at a time, for every area range and IoU threshold at once.
    """
    num_a, num_t = gt_ignored.shape[0], len(IOU_THRESHOLDS)
    matched = np.zeros((num_a, num_t, dt_key.size), bool)
    hit_ignored = np.zeros_like(matched)
    pairs, dt_start, dt_count = np.unique(dt_key, return_index=True, return_counts=True)
    gt_start = np.searchsorted(gt_key, pairs, side="left")
    gt_count = np.searchsorted(gt_key, pairs, side="right") - gt_start
    active = gt_count > 0
    pairs, dt_start, dt_count, gt_start, gt_count = (
        pairs[active],
        dt_start[active],
        dt_count[active],
        gt_start[active],
        gt_count[active],
    )
    if pairs.size == 0:
        return matched, hit_ignored
    dt_pad = _next_power_of_two(dt_count)
    gt_pad = _next_power_of_two(gt_count)
    thresholds = np.minimum(IOU_THRESHOLDS, 1 - 1e-10)[None, None, :, None]
    for d_pad, g_pad in sorted(set(zip(dt_pad.tolist(), gt_pad.tolist()))):
        group = np.nonzero((dt_pad == d_pad) & (gt_pad == g_pad))[0]
        per_chunk = max(1, min(_CHUNK_ELEMENTS // (d_pad * g_pad), _CHUNK_ELEMENTS // (num_a * num_t * g_pad)))
        for begin in range(0, group.size, per_chunk):
            chunk = group[begin : begin + per_chunk]
            d_index, d_valid = _padded_index(dt_start[chunk], dt_count[chunk], d_pad)  # (P, Dp)
            g_index, g_valid = _padded_index(gt_start[chunk], gt_count[chunk], g_pad)  # (P, Gp)
            g_source = gt_order[g_index]
            crowd = gt.crowd[g_source] & g_valid
            ious = _box_iou(dt.boxes[dt_order[d_index]], gt.boxes[g_source], crowd)  # (P, Dp, Gp)
            ious[~(d_valid[:, :, None] & g_valid[:, None, :])] = -1.0
            ignored = gt_ignored[:, g_index][:, :, None, :]  # (A, P, 1, Gp)
            reusable = crowd[None, :, None, :]
            used = np.zeros((num_a, chunk.size, num_t, g_pad), bool)
            chunk_matched = np.zeros((num_a, chunk.size, num_t, d_pad), bool)
            chunk_hit_ignored = np.zeros_like(chunk_matched)
            g_range = np.arange(g_pad)
            for rank in range(d_pad):
                iou = ious[None, :, rank, None, :]  # (1, P, 1, Gp)
                candidate = (iou >= thresholds) & ~(used & ~reusable)  # (A, P, T, Gp)
                best_regular, has_regular = _last_argmax(np.where(candidate & ~ignored, iou, -1.0))
                best_ignored, has_ignored = _last_argmax(np.where(candidate & ignored, iou, -1.0))
                hit = has_regular | has_ignored
                choice = np.where(has_regular, best_regular, best_ignored)
                chunk_matched[..., rank] = hit
                chunk_hit_ignored[..., rank] = hit & ~has_regular
                used |= (g_range == choice[..., None]) & hit[..., None]
            target = d_index[d_valid]
            matched[:, :, target] = chunk_matched.transpose(0, 2, 1, 3)[:, :, d_valid]
            hit_ignored[:, :, target] = chunk_hit_ignored.transpose(0, 2, 1, 3)[:, :, d_valid]
    return matched, hit_ignored


def _last_argmax(scores: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Index of the last maximum along the last axis, and whether that maximum is a real candidate (>= 0)."""
    last = scores.shape[-1] - 1 - np.argmax(scores[..., ::-1], axis=-1)
    return last, np.max(scores, axis=-1) >= 0


def _box_iou(dt_boxes: np.ndarray, gt_boxes: np.ndarray, gt_crowd: np.ndarray) -> np.ndarray:
    """(P, D, 4) and (P, G, 4) xywh, (P, G) crowd -> (P, D, G) IoU, as pycocotools' bbIou computes it.

    For a crowd box the union is the detection's own area.
    """
    dx, dy, dw, dh = (dt_boxes[:, :, None, i] for i in range(4))
    gx, gy, gw, gh = (gt_boxes[:, None, :, i] for i in range(4))
    w = np.minimum(dw + dx, gw + gx) - np.maximum(dx, gx)
    h = np.minimum(dh + dy, gh + gy) - np.maximum(dy, gy)
    inter = w * h
    dt_area = dw * dh
    union = np.where(gt_crowd[:, None, :], dt_area, dt_area + gw * gh - inter)
    overlap = (w > 0) & (h > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(overlap, inter / np.where(overlap, union, 1.0), 0.0)


def _outside_areas(areas: np.ndarray) -> np.ndarray:
    """(N,) areas -> (A, N) bool: outside each area range (whose ends are inclusive)."""
    low = np.array([r[0] for r in AREA_RANGES])[:, None]
    high = np.array([r[1] for r in AREA_RANGES])[:, None]
    return (areas[None, :] < low) | (areas[None, :] > high)


def _padded_index(start: np.ndarray, count: np.ndarray, pad: int) -> Tuple[np.ndarray, np.ndarray]:
    """Runs [start, start + count) -> (P, pad) indices (0 where padded) and (P, pad) validity."""
    offsets = np.arange(pad)[None, :]
    valid = offsets < count[:, None]
    return np.where(valid, start[:, None] + offsets, 0), valid


def _next_power_of_two(values: np.ndarray) -> np.ndarray:
    return np.left_shift(1, np.ceil(np.log2(np.maximum(values, 1))).astype(np.int64))


def _xyxy_to_xywh(boxes: np.ndarray) -> np.ndarray:
    boxes = boxes.reshape(-1, 4)
    return np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)


def _concat(parts: List[np.ndarray], dtype: Any) -> np.ndarray:
    return np.concatenate([np.asarray(p, dtype) for p in parts]) if parts else np.zeros(0, dtype)


# ---- COCO JSON --------------------------------------------------------------------------------


def _load_json(source: Any, what: str) -> Any:
    if not isinstance(source, (str, Path)):
        return source
    path = Path(source)
    try:
        with open(path, "rb") as f:
            return json.loads(f.read().decode("utf-8"))
    except OSError as exc:
        raise DataError("cannot read {} file {}: {}".format(what, path, exc.strerror or exc)) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise DataError("{} file {} is not valid JSON: {}".format(what, path, exc)) from None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _finite_extents(xy: np.ndarray, wh: np.ndarray) -> bool:
    """Whether boxes (..., 2) corners xy and sizes wh, their far corners and their areas are all finite."""
    with np.errstate(over="ignore", invalid="ignore"):
        far, area = xy + wh, wh[..., 0] * wh[..., 1]
    return bool(np.isfinite(xy).all() and np.isfinite(wh).all() and np.isfinite(far).all() and np.isfinite(area).all())


def _is_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _parse_coco_gt(doc: Any) -> Tuple[Tuple[str, ...], Dict[int, int], Dict[int, int], _Boxes]:
    """COCO ground truth -> (classes, image id -> position, category id -> class id, boxes).

    Images are evaluated in image-id order and categories numbered in category-id order, as COCOeval does.
    """
    if not isinstance(doc, dict):
        raise DataError("ground truth must be a COCO JSON object with images, annotations and categories")
    images, annotations, categories = doc.get("images"), doc.get("annotations", []), doc.get("categories")
    for name, value in (("images", images), ("annotations", annotations), ("categories", categories)):
        if not isinstance(value, list):
            raise DataError("ground truth: '{}' must be a list".format(name))
    image_ids = [img.get("id") if isinstance(img, dict) else None for img in images]
    for i, image_id in enumerate(image_ids):
        if not _is_id(image_id):
            raise DataError("ground truth: images[{}] has no integer 'id'".format(i))
    if len(set(image_ids)) != len(image_ids):
        raise DataError("ground truth: duplicate image ids")
    image_position = {image_id: i for i, image_id in enumerate(sorted(image_ids))}
    image_size = {}  # image id -> (width, height); an image without a size may be up to MAX_IMAGE_SIDE
    for image in images:
        width, height = image.get("width"), image.get("height")
        known = image_size_problem(width, height) is None
        image_size[image["id"]] = (width, height) if known else (MAX_IMAGE_SIDE, MAX_IMAGE_SIDE)
    named: List[Tuple[int, str]] = []
    for i, cat in enumerate(categories):
        if not isinstance(cat, dict) or not _is_id(cat.get("id")):
            raise DataError("ground truth: categories[{}] has no integer 'id'".format(i))
        named.append((cat["id"], str(cat.get("name", cat["id"]))))
    named.sort()
    if len({cat_id for cat_id, _ in named}) != len(named):
        raise DataError("ground truth: duplicate category ids")
    category_index = {cat_id: k for k, (cat_id, _) in enumerate(named)}

    image, class_ids, boxes, areas, crowd = [], [], [], [], []
    for i, ann in enumerate(annotations):
        where = "ground truth: annotations[{}]".format(i)
        if not isinstance(ann, dict):
            raise DataError("{} is not an object".format(where))
        if "id" in ann:
            where += " (id {!r})".format(ann["id"])
        if ann.get("image_id") not in image_position or not _is_id(ann.get("image_id")):
            raise DataError("{}: unknown image_id {!r}".format(where, ann.get("image_id")))
        if ann.get("category_id") not in category_index or not _is_id(ann.get("category_id")):
            raise DataError("{}: unknown category_id {!r}".format(where, ann.get("category_id")))
        bbox = ann.get("bbox")
        if not isinstance(bbox, list) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
            raise DataError("{}: bbox must be 4 numbers [x, y, w, h], got {!r}".format(where, bbox))
        x, y, w, h = (float(v) for v in bbox)
        check_box((x, y, x + w, y + h), *image_size[ann["image_id"]], "{}: bbox {!r}".format(where, bbox))
        area = ann.get("area", bbox[2] * bbox[3])
        if not _is_number(area) or area < 0:
            raise DataError("{}: area must be a non-negative number, got {!r}".format(where, area))
        image.append(image_position[ann["image_id"]])
        class_ids.append(category_index[ann["category_id"]])
        boxes.append(bbox)
        areas.append(area)
        crowd.append(bool(ann.get("iscrowd", 0)))
    gt = _Boxes(
        image=np.array(image, np.int64),
        class_ids=np.array(class_ids, np.int64),
        boxes=np.array(boxes, np.float64).reshape(-1, 4),
        areas=np.array(areas, np.float64),
        crowd=np.array(crowd, bool),
        scores=np.zeros(0, np.float64),
    )
    return tuple(name for _, name in named), image_position, category_index, gt


def _parse_coco_results(doc: Any, image_position: Dict[int, int], category_index: Dict[int, int]) -> _Boxes:
    """COCO results list -> detection boxes; the first bad entry raises DataError naming it."""
    if not isinstance(doc, list):
        raise DataError("results must be a JSON list of {image_id, category_id, bbox, score} objects")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # numpy < 1.24 warns on ragged lists, which are refused below
            image = np.array([image_position.get(r["image_id"], -1) for r in doc], np.int64)
            class_ids = np.array([category_index.get(r["category_id"], -1) for r in doc], np.int64)
            boxes = np.array([r["bbox"] for r in doc] or np.zeros((0, 4)))
            scores = np.array([r["score"] for r in doc] or np.zeros(0))
    except (TypeError, KeyError, ValueError):
        raise DataError(_first_bad_result(doc, image_position, category_index)) from None
    well_formed = (
        bool((image >= 0).all() and (class_ids >= 0).all())
        and boxes.dtype.kind in "iuf"
        and boxes.shape == (len(doc), 4)
        and scores.dtype.kind in "iuf"
        and scores.shape == (len(doc),)
    )
    if well_formed:
        boxes = boxes.astype(np.float64).reshape(-1, 4)
        scores = scores.astype(np.float64)
        well_formed = bool(
            np.isfinite(scores).all() and (boxes[:, 2:] >= 0).all() and _finite_extents(boxes[:, 0:2], boxes[:, 2:4])
        )
    if not well_formed:
        raise DataError(_first_bad_result(doc, image_position, category_index))
    return _Boxes(
        image=image,
        class_ids=class_ids,
        boxes=boxes,
        areas=boxes[:, 2] * boxes[:, 3],
        crowd=np.zeros(len(doc), bool),
        scores=scores,
    )


def _first_bad_result(doc: List[Any], image_position: Dict[int, int], category_index: Dict[int, int]) -> str:
    for i, r in enumerate(doc):
        where = "results[{}]".format(i)
        if not isinstance(r, dict):
            return "{} is not an object".format(where)
        for key in ("image_id", "category_id", "bbox", "score"):
            if key not in r:
                return "{} has no '{}'".format(where, key)
        if not _is_id(r["image_id"]) or r["image_id"] not in image_position:
            return "{}: unknown image_id {!r} (not in the ground truth images)".format(where, r["image_id"])
        if not _is_id(r["category_id"]) or r["category_id"] not in category_index:
            return "{}: unknown category_id {!r} (not in the ground truth categories)".format(where, r["category_id"])
        bbox = r["bbox"]
        if not isinstance(bbox, list) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
            return "{}: bbox must be 4 numbers [x, y, w, h], got {!r}".format(where, bbox)
        if bbox[2] < 0 or bbox[3] < 0:
            return "{}: bbox width and height must be >= 0, got {!r}".format(where, bbox)
        if not _finite_extents(np.array(bbox[:2], np.float64), np.array(bbox[2:], np.float64)):
            return "{}: bbox {!r} overflows (x + w, y + h and w * h must be finite)".format(where, bbox)
        if not _is_number(r["score"]):
            return "{}: score must be a number, got {!r}".format(where, r["score"])
    return "results are malformed"
