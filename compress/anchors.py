"""Anchor sizes for a recipe: the model's defaults, the recipe's pairs, or k-means of the training boxes."""

from __future__ import annotations

from typing import List, Optional, Sequence

import numpy as np

from compress.config import Recipe
from edge_sdk.data.dataset import ImageRecord
from edge_sdk.errors import DataError


def kmeans_anchors(
    wh: np.ndarray, count: int = 9, seed: int = 0, iterations: int = 100, restarts: int = 5
) -> List[List[float]]:
    """k-means of box sizes (N, 2) in pixels with 1 - IoU as distance -> `count` [w, h], smallest area first.

    k-means++ seeding, `restarts` runs, the one with the best mean IoU kept. Whole pixels: paddle's yolo_box op (the exported decoder) takes integer anchors.
    """
    wh = np.asarray(wh, np.float64).reshape(-1, 2)
    wh = wh[(wh[:, 0] > 0) & (wh[:, 1] > 0)]
    if len(wh) < count:
        raise DataError(
            "model.anchors 'auto' needs at least {} boxes in the training set, got {}".format(count, len(wh))
        )
    rng = np.random.default_rng(seed)

    def iou(boxes: np.ndarray, anchors: np.ndarray) -> np.ndarray:
        inter = np.minimum(boxes[:, None, 0], anchors[None, :, 0]) * np.minimum(boxes[:, None, 1], anchors[None, :, 1])
        return inter / (boxes[:, None, 0] * boxes[:, None, 1] + anchors[None, :, 0] * anchors[None, :, 1] - inter)

    best, best_fit = None, -1.0
    for _ in range(restarts):
        # k-means++ seeding with 1 - IoU as distance, then Lloyd iterations with medians.
        centres = wh[[int(rng.integers(len(wh)))]]
        while len(centres) < count:
            distance = 1.0 - iou(wh, centres).max(1)
            weights = distance**2
            pick = (
                int(rng.choice(len(wh), p=weights / weights.sum())) if weights.sum() > 0 else int(rng.integers(len(wh)))
            )
            centres = np.concatenate([centres, wh[[pick]]])
        for _ in range(iterations):
            nearest = np.argmax(iou(wh, centres), axis=1)
            updated = np.array(
                [np.median(wh[nearest == k], axis=0) if np.any(nearest == k) else centres[k] for k in range(count)]
            )
            if np.allclose(updated, centres):
                break
            centres = updated
        fit = float(iou(wh, centres).max(1).mean())
        if fit > best_fit:
            best, best_fit = centres, fit
    centres = best
    centres = centres[np.argsort(centres[:, 0] * centres[:, 1])]
    return [[max(1, int(round(w))), max(1, int(round(h)))] for w, h in centres]


def resolve_anchors(recipe: Recipe, records: Sequence[ImageRecord]) -> Optional[List[List[float]]]:
    """The recipe's anchors in input pixels: None (model default), given pairs, or k-means ("auto")."""
    anchors = recipe.model.anchors
    if anchors is None:
        return None
    if isinstance(anchors, list):
        return [[max(1, int(round(w))), max(1, int(round(h)))] for w, h in anchors]
    size = recipe.model.input_size
    sizes = []
    for r in records:
        b = np.asarray(r.boxes, np.float32).reshape(-1, 4)
        if len(b):
            sizes.append(np.stack([(b[:, 2] - b[:, 0]) * size / r.width, (b[:, 3] - b[:, 1]) * size / r.height], 1))
    return kmeans_anchors(np.concatenate(sizes) if sizes else np.zeros((0, 2)), seed=recipe.train.seed)
