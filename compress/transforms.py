"""Training data: PaddleDetection's YOLOv3 augmentations and the data loader.

Per sample: decode -> mixup (first `mixup_epochs` epochs) -> photometric distortion -> random
expand -> IoU-constrained random crop -> random flip -> resize to the batch's size -> normalise as
the bundle's InputSpec (RGB, /255, ImageNet mean/std, CHW) -> ground truth padded to `max_boxes`.

Randomness comes only from `numpy.random.default_rng([seed, epoch, index])` per sample (and
`[seed, epoch]` per epoch for order and sizes), so a run is the same whatever the number of
worker processes.
"""

from __future__ import annotations

import math
from typing import Iterator, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import paddle

from compress.config import AugmentSection
from edge_sdk.data.dataset import ImageRecord
from edge_sdk.data.images import read_bgr

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)
_INTERPOLATIONS = (cv2.INTER_NEAREST, cv2.INTER_LINEAR, cv2.INTER_AREA, cv2.INTER_CUBIC, cv2.INTER_LANCZOS4)


def read_rgb(path: str) -> np.ndarray:
    """Decode an image file -> (H, W, 3) uint8 RGB."""
    return cv2.cvtColor(read_bgr(path), cv2.COLOR_BGR2RGB)


def normalize(image_rgb: np.ndarray, size_hw: Tuple[int, int], interpolation: int = cv2.INTER_CUBIC) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (3, h, w) float32 as the manifest's InputSpec: stretch resize, /255, mean/std."""
    height, width = size_hw
    resized = cv2.resize(image_rgb, (int(width), int(height)), interpolation=interpolation)
    out = (resized.astype(np.float32) / 255.0 - MEAN) / STD
    return np.ascontiguousarray(out.transpose(2, 0, 1))


def preprocess_bgr(image_bgr: np.ndarray, size_hw: Tuple[int, int]) -> np.ndarray:
    """Evaluation preprocessing of a BGR frame, the same as the exported bundle's: (3, h, w) float32."""
    return normalize(cv2.cvtColor(image_bgr, cv2.COLOR_BGR2RGB), size_hw, cv2.INTER_CUBIC)


def distort(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """PaddleDetection's RandomDistort: hue +-18 deg, saturation, contrast, brightness x[0.5, 1.5], each p=0.5."""
    out = image.astype(np.float32)
    if rng.random() < 0.5:
        out = out * rng.uniform(0.5, 1.5)
    if rng.random() < 0.5:
        mean = out.mean()
        out = (out - mean) * rng.uniform(0.5, 1.5) + mean
    out = np.clip(out, 0, 255).astype(np.uint8)
    do_hue, do_sat = rng.random() < 0.5, rng.random() < 0.5
    if do_hue or do_sat:
        hsv = cv2.cvtColor(out, cv2.COLOR_RGB2HSV).astype(np.float32)
        if do_hue:
            hsv[..., 0] = (hsv[..., 0] + rng.uniform(-9, 9)) % 180  # OpenCV hue is degrees / 2
        if do_sat:
            hsv[..., 1] = np.clip(hsv[..., 1] * rng.uniform(0.5, 1.5), 0, 255)
        out = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)
    return out


def expand(
    image: np.ndarray, boxes: np.ndarray, rng: np.random.Generator, max_ratio: float = 4.0
) -> Tuple[np.ndarray, np.ndarray]:
    """PaddleDetection's RandomExpand (p=0.5): place the image on a mean-filled canvas up to max_ratio larger."""
    if rng.random() < 0.5:
        return image, boxes
    height, width = image.shape[:2]
    ratio = rng.uniform(1.0, max_ratio)
    new_h, new_w = int(height * ratio), int(width * ratio)
    y, x = int(rng.integers(0, new_h - height + 1)), int(rng.integers(0, new_w - width + 1))
    canvas = np.empty((new_h, new_w, 3), np.uint8)
    canvas[:] = (MEAN * 255).astype(np.uint8)
    canvas[y : y + height, x : x + width] = image
    return canvas, boxes + np.array([x, y, x, y], np.float32)


def _iou_one_to_many(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    lt = np.maximum(box[:2], boxes[:, :2])
    rb = np.minimum(box[2:], boxes[:, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=1)
    area = np.prod(box[2:] - box[:2])
    areas = np.prod(boxes[:, 2:] - boxes[:, :2], axis=1)
    return inter / np.maximum(area + areas - inter, 1e-9)


def crop(
    image: np.ndarray,
    boxes: np.ndarray,
    keep_arrays: Sequence[np.ndarray],
    rng: np.random.Generator,
    attempts: int = 50,
) -> Tuple[np.ndarray, np.ndarray, List[np.ndarray]]:
    """PaddleDetection's RandomCrop: a crop whose IoU with some box reaches a random threshold
    (0, .1, .3, .5, .7, .9, or no crop), scale [0.3, 1], aspect [0.5, 2]; boxes whose centre falls
    outside are dropped (with the matching rows of `keep_arrays`), the rest clipped."""
    if len(boxes) == 0:
        return image, boxes, list(keep_arrays)
    height, width = image.shape[:2]
    thresholds = [0.0, 0.1, 0.3, 0.5, 0.7, 0.9, None]
    for index in rng.permutation(len(thresholds)):
        threshold = thresholds[index]
        if threshold is None:
            return image, boxes, list(keep_arrays)
        for _ in range(attempts):
            scale = rng.uniform(0.3, 1.0)
            aspect = rng.uniform(max(0.5, scale**2), min(2.0, scale**-2))
            crop_h, crop_w = int(height * scale / math.sqrt(aspect)), int(width * scale * math.sqrt(aspect))
            if crop_h < 8 or crop_w < 8 or crop_h > height or crop_w > width:
                continue
            y, x = int(rng.integers(0, height - crop_h + 1)), int(rng.integers(0, width - crop_w + 1))
            region = np.array([x, y, x + crop_w, y + crop_h], np.float32)
            if _iou_one_to_many(region, boxes).max() < threshold:
                continue
            centres = (boxes[:, :2] + boxes[:, 2:]) / 2
            inside = np.all((centres >= region[:2]) & (centres < region[2:]), axis=1)
            if not inside.any():
                continue
            kept = np.clip(boxes[inside] - np.tile(region[:2], 2), 0, [crop_w, crop_h, crop_w, crop_h]).astype(
                np.float32
            )
            return image[y : y + crop_h, x : x + crop_w], kept, [a[inside] for a in keep_arrays]
    return image, boxes, list(keep_arrays)


def flip(image: np.ndarray, boxes: np.ndarray, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """Horizontal flip with p=0.5."""
    if rng.random() < 0.5:
        return image, boxes
    width = image.shape[1]
    flipped = boxes.copy()
    flipped[:, 0], flipped[:, 2] = width - boxes[:, 2], width - boxes[:, 0]
    return np.ascontiguousarray(image[:, ::-1]), flipped


class DetectionDataset(paddle.io.Dataset):
    """Items are (index, size) pairs from `MultiScaleBatchSampler` (or plain indices, at `input_size`).

    Returns image (3, size, size) float32, gt_box (max_boxes, 4) float32 normalised centre x, centre
    y, w, h, gt_class (max_boxes,) int32, gt_score (max_boxes,) float32 (0 for padding rows).
    augment None: no augmentation (evaluation, tests). Images are decoded once and kept in memory
    when they take less than `cache_bytes`.
    """

    def __init__(
        self,
        records: Sequence[ImageRecord],
        input_size: int,
        augment: Optional[AugmentSection] = None,
        max_boxes: int = 50,
        seed: int = 0,
        cache_bytes: int = 512 << 20,
    ) -> None:
        self.records = list(records)
        self.input_size = int(input_size)
        self.augment = augment
        self.max_boxes = int(max_boxes)
        self.seed = int(seed)
        self.epoch = 0
        total = sum(r.width * r.height * 3 for r in self.records)
        self._cache = [read_rgb(str(r.path)) for r in self.records] if total <= cache_bytes else None

    def set_epoch(self, epoch: int) -> None:
        """Chooses the random stream and whether mixup applies; call before iterating a DataLoader."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.records)

    def _load(self, index: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        record = self.records[index]
        image = self._cache[index] if self._cache is not None else read_rgb(str(record.path))
        boxes = np.asarray(record.boxes, np.float32).reshape(-1, 4)
        classes = np.asarray(record.class_ids, np.int32).reshape(-1)
        crowd = (
            np.asarray(record.iscrowd, bool).reshape(-1)
            if len(record.iscrowd) == len(boxes)
            else np.zeros(len(boxes), bool)
        )
        keep = ~crowd & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        return image, boxes[keep], classes[keep], np.ones(int(keep.sum()), np.float32)

    def __getitem__(self, item):
        index, size = item if isinstance(item, (tuple, list)) else (item, self.input_size)
        index, size = int(index), int(size)
        rng = np.random.default_rng([self.seed, self.epoch, index])
        image, boxes, classes, scores = self._load(index)
        interpolation = cv2.INTER_CUBIC
        aug = self.augment
        if aug is not None:
            if self.epoch < aug.mixup_epochs and len(self.records) > 1:
                image, boxes, classes, scores = self._mixup(index, image, boxes, classes, scores, rng)
            if aug.distort:
                image = distort(image, rng)
            if aug.expand:
                image, boxes = expand(image, boxes, rng)
            if aug.crop:
                image, boxes, (classes, scores) = crop(image, boxes, (classes, scores), rng)
            if aug.flip:
                image, boxes = flip(image, boxes, rng)
            interpolation = _INTERPOLATIONS[int(rng.integers(len(_INTERPOLATIONS)))]
        height, width = image.shape[:2]
        tensor = normalize(image, (size, size), interpolation)
        gt_box = np.zeros((self.max_boxes, 4), np.float32)
        gt_class = np.zeros((self.max_boxes,), np.int32)
        gt_score = np.zeros((self.max_boxes,), np.float32)
        count = min(len(boxes), self.max_boxes)
        if count:
            b = boxes[:count] / np.array([width, height, width, height], np.float32)
            gt_box[:count] = np.stack(
                [(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2, b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], 1
            )
            gt_class[:count] = classes[:count]
            gt_score[:count] = scores[:count]
        return tensor, gt_box, gt_class, gt_score

    def _mixup(self, index, image, boxes, classes, scores, rng):
        """PaddleDetection's Mixup: blend with another image, factor ~ Beta(1.5, 1.5), boxes of both kept."""
        factor = float(np.clip(rng.beta(1.5, 1.5), 0.0, 1.0))
        other = int(rng.integers(len(self.records) - 1))
        other += int(other >= index)
        image2, boxes2, classes2, scores2 = self._load(other)
        height, width = max(image.shape[0], image2.shape[0]), max(image.shape[1], image2.shape[1])
        canvas = np.zeros((height, width, 3), np.float32)
        canvas[: image.shape[0], : image.shape[1]] += image.astype(np.float32) * factor
        canvas[: image2.shape[0], : image2.shape[1]] += image2.astype(np.float32) * (1.0 - factor)
        return (
            canvas.astype(np.uint8),
            np.concatenate([boxes, boxes2]),
            np.concatenate([classes, classes2]),
            np.concatenate([scores * factor, scores2 * (1.0 - factor)]).astype(np.float32),
        )


class MultiScaleBatchSampler:
    """Yields batches of (index, size): one size per batch, drawn from `sizes` (multi-scale training).

    world_size > 1: indices come from paddle's DistributedBatchSampler (each rank its share); else
    a permutation seeded by (seed, epoch). Call `set_epoch` before each epoch.
    """

    def __init__(
        self,
        dataset: DetectionDataset,
        batch_size: int,
        sizes: Sequence[int],
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = True,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.sizes = [int(s) for s in sizes]
        self.seed = int(seed)
        self.shuffle = shuffle
        self.drop_last = drop_last and len(dataset) >= batch_size * world_size
        self.epoch = 0
        self.distributed = None
        if world_size > 1:
            self.distributed = paddle.io.DistributedBatchSampler(
                dataset, self.batch_size, num_replicas=world_size, rank=rank, shuffle=shuffle, drop_last=self.drop_last
            )

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        if self.distributed is not None:
            self.distributed.set_epoch(self.seed * 100003 + self.epoch)

    def _index_batches(self) -> Iterator[List[int]]:
        if self.distributed is not None:
            yield from self.distributed
            return
        n = len(self.dataset)
        order = np.random.default_rng([self.seed, self.epoch]).permutation(n) if self.shuffle else np.arange(n)
        stop = n - n % self.batch_size if self.drop_last else n
        for start in range(0, stop, self.batch_size):
            yield [int(i) for i in order[start : start + self.batch_size]]

    def __iter__(self) -> Iterator[List[Tuple[int, int]]]:
        rng = np.random.default_rng([self.seed, self.epoch, 7919])
        for batch in self._index_batches():
            size = self.sizes[int(rng.integers(len(self.sizes)))]
            yield [(int(i), size) for i in batch]

    def __len__(self) -> int:
        if self.distributed is not None:
            return len(self.distributed)
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else (n + self.batch_size - 1) // self.batch_size


def _worker_init(worker_id: int) -> None:
    cv2.setNumThreads(1)


def make_loader(
    dataset: DetectionDataset,
    batch_sampler: MultiScaleBatchSampler,
    num_workers: int,
) -> paddle.io.DataLoader:
    """A paddle DataLoader over `dataset` driven by `batch_sampler` with `num_workers` processes (0 = in process)."""
    return paddle.io.DataLoader(
        dataset,
        batch_sampler=batch_sampler,
        num_workers=int(num_workers),
        worker_init_fn=_worker_init if num_workers > 0 else None,
        use_shared_memory=num_workers > 0,
        return_list=True,
    )
