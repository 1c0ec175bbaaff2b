"""Choosing the images INT8 scales are computed on.

Scales computed on unrepresentative images clip the activations of the images that were left out,
so the set is chosen, not taken: `select_calibration_set` picks `count` images of a `Dataset` that

- represent every class in proportion to how many images contain it, with at least one image per
  class, rare classes served first (their few images are taken before common classes fill the set);
- cover the range of brightness (mean luminance, quantile bins over the dataset) and of box size
  (sqrt(box area / image area), quantile bins over every box of the dataset);
- are the same for the same dataset, count and seed.

The set's identity is `CalibrationSet.sha256`: sha256 over the sorted sha256 of its image files
(what `Manifest.provenance.calibration_sha256` records).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np

from edge_sdk.data.dataset import Dataset, ImageRecord
from edge_sdk.errors import DataError
from edge_sdk.fileio import file_sha256


@dataclass(frozen=True)
class CalibrationSet:
    """records: the chosen images, in the order they were chosen. sha256: hex digest identifying the set.

    class_images: images containing each class (class name -> count) in the set.
    brightness_bins / size_bins: (covered, available) bins, where available counts the bins that
    hold at least one image (or box) of the dataset.
    """

    records: Tuple[ImageRecord, ...]
    sha256: str
    class_images: Dict[str, int] = field(default_factory=dict)
    brightness_bins: Tuple[int, int] = (0, 0)
    size_bins: Tuple[int, int] = (0, 0)

    def __len__(self) -> int:
        return len(self.records)


def calibration_sha256(records: Sequence[ImageRecord]) -> str:
    """sha256 over the sorted hex sha256 of each image file (one per line): independent of order and paths."""
    hashes = sorted(file_sha256(Path(r.path)) for r in records)
    return hashlib.sha256("".join(h + "\n" for h in hashes).encode("ascii")).hexdigest()


def mean_luminance(path: Path) -> float:
    """Mean grey level (0..255) of an image file, read at half resolution (plenty for a mean)."""
    import cv2

    image = cv2.imread(str(path), cv2.IMREAD_REDUCED_GRAYSCALE_2)
    if image is None:
        raise DataError("cannot decode image {}".format(path))
    return float(image.mean())


def relative_box_sizes(record: ImageRecord) -> np.ndarray:
    """(N,) sqrt(box area / image area) of the record's non-crowd boxes, in [0, 1]."""
    boxes = np.asarray(record.boxes, np.float64).reshape(-1, 4)
    if len(boxes) == 0:
        return np.zeros((0,), np.float64)
    keep = (
        ~np.asarray(record.iscrowd, bool).reshape(-1)
        if len(record.iscrowd) == len(boxes)
        else np.ones(len(boxes), bool)
    )
    widths = np.clip(boxes[keep, 2] - boxes[keep, 0], 0.0, None)
    heights = np.clip(boxes[keep, 3] - boxes[keep, 1], 0.0, None)
    return np.sqrt(widths * heights / float(max(1, record.width * record.height)))


def quantile_edges(values: np.ndarray, bins: int) -> np.ndarray:
    """Inner bin edges (at most bins - 1, strictly increasing) splitting `values` into equally filled bins."""
    if len(values) == 0 or bins <= 1:
        return np.zeros((0,), np.float64)
    inner = np.quantile(np.asarray(values, np.float64), np.linspace(0.0, 1.0, bins + 1)[1:-1])
    return np.unique(inner)


def _bin_of(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    return np.searchsorted(edges, values, side="right")


def select_calibration_set(
    dataset: Dataset,
    count: int,
    seed: int = 0,
    brightness_bins: int = 4,
    size_bins: int = 4,
) -> CalibrationSet:
    """Choose `count` images of `dataset` (all of them when it has fewer); see the module docstring.

    Greedy, one image at a time: while some class has fewer images than its quota
    (max(1, count * images_with_class / sum over classes)), the rarest such class chooses among its
    unchosen images; otherwise every unchosen image is a candidate. Among candidates the image that
    covers the most brightness / size bins not yet covered wins, then the one that least overfills
    classes already at quota, then the one whose brightness bin and size bins hold the fewest chosen
    images, then a seeded random order. Raises DataError for an empty dataset or count < 1.
    """
    images = list(dataset.images)
    if count < 1:
        raise DataError("the calibration set needs at least 1 image, got count={}".format(count))
    if not images:
        raise DataError("dataset {} has no images to calibrate on".format(dataset.source))
    num_classes = len(dataset.classes)
    luminance = np.array([mean_luminance(Path(r.path)) for r in images], np.float64)
    sizes = [relative_box_sizes(r) for r in images]
    image_classes = [
        sorted(set(int(c) for c in np.asarray(r.class_ids).reshape(-1) if 0 <= int(c) < num_classes)) for r in images
    ]

    brightness_edges = quantile_edges(luminance, brightness_bins)
    all_sizes = np.concatenate(sizes) if any(len(s) for s in sizes) else np.zeros((0,), np.float64)
    size_edges = quantile_edges(all_sizes, size_bins)
    image_brightness_bin = _bin_of(luminance, brightness_edges)
    image_size_bins = [sorted(set(_bin_of(s, size_edges).tolist())) for s in sizes]

    class_frequency = np.zeros(num_classes, np.int64)
    for classes in image_classes:
        class_frequency[classes] += 1
    target = min(count, len(images))
    total = float(class_frequency.sum())
    quota = np.where(class_frequency > 0, np.maximum(1.0, target * class_frequency / max(total, 1.0)), 0.0)
    rare_first = [int(c) for c in np.argsort(class_frequency, kind="stable") if class_frequency[c] > 0]

    random_rank = np.empty(len(images), np.int64)
    random_rank[np.random.default_rng(seed).permutation(len(images))] = np.arange(len(images))
    chosen: List[int] = []
    unchosen = set(range(len(images)))
    class_count = np.zeros(num_classes, np.int64)
    brightness_fill: Dict[int, int] = {}
    size_fill: Dict[int, int] = {}
    exhausted: set = set()

    def preference(i: int) -> Tuple[float, ...]:
        new_bins = int(image_brightness_bin[i] not in brightness_fill) + sum(
            1 for b in image_size_bins[i] if b not in size_fill
        )
        overfill = sum(1 for c in image_classes[i] if class_count[c] >= quota[c])
        crowding = brightness_fill.get(int(image_brightness_bin[i]), 0) + sum(
            size_fill.get(b, 0) for b in image_size_bins[i]
        )
        return (-new_bins, overfill, crowding, int(random_rank[i]))

    while len(chosen) < target:
        needy = next((c for c in rare_first if class_count[c] < quota[c] and c not in exhausted), None)
        if needy is not None:
            candidates = [i for i in unchosen if needy in image_classes[i]]
            if not candidates:
                exhausted.add(needy)
                continue
        else:
            candidates = list(unchosen)
        best = min(candidates, key=preference)
        chosen.append(best)
        unchosen.discard(best)
        class_count[image_classes[best]] += 1
        bright = int(image_brightness_bin[best])
        brightness_fill[bright] = brightness_fill.get(bright, 0) + 1
        for b in image_size_bins[best]:
            size_fill[b] = size_fill.get(b, 0) + 1

    records = tuple(images[i] for i in chosen)
    available_sizes = set(b for bins in image_size_bins for b in bins)
    return CalibrationSet(
        records=records,
        sha256=calibration_sha256(records),
        class_images={dataset.classes[c]: int(class_count[c]) for c in range(num_classes)},
        brightness_bins=(len(brightness_fill), len(set(image_brightness_bin.tolist()))),
        size_bins=(len(size_fill), len(available_sizes)),
    )
