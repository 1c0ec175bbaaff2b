"""Augmentations and the data loader: valid boxes, determinism, multi-scale, workers."""

from __future__ import annotations

import numpy as np
import pytest

import edge_sdk  # noqa: F401
from compress.config import AugmentSection
from compress.transforms import DetectionDataset, MultiScaleBatchSampler, crop, expand, flip, make_loader


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    from edge_sdk.data import load_coco, synthesize

    out = tmp_path_factory.mktemp("aug-data")
    train_json, _ = synthesize(out, 12, 7, size=(128, 96), progress=False)
    return list(load_coco(train_json).images)


def test_geometric_transforms_keep_boxes_inside() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)
    boxes = np.array([[10, 10, 30, 25], [50, 30, 79, 59]], np.float32)
    classes = np.array([1, 2], np.int32)
    for seed in range(30):
        r = np.random.default_rng(seed)
        big, moved = expand(image, boxes, r)
        assert big.shape[0] >= 60 and big.shape[1] >= 80
        np.testing.assert_array_equal(big[int(moved[0, 1]) : int(moved[0, 1]) + 5, int(moved[0, 0])], image[10:15, 10])
        cut, kept, (kept_classes,) = crop(big, moved, (classes,), r)
        assert len(kept) == len(kept_classes) >= 1
        h, w = cut.shape[:2]
        assert np.all(kept >= 0) and np.all(kept[:, [0, 2]] <= w) and np.all(kept[:, [1, 3]] <= h)
        flipped, fboxes = flip(cut, kept, r)
        assert np.all(fboxes[:, 2] >= fboxes[:, 0]) and np.all(fboxes[:, [0, 2]] <= w)


def test_flip_mirrors_boxes() -> None:
    image = np.zeros((10, 20, 3), np.uint8)
    image[:, :5] = 255
    for seed in range(10):
        out, b = flip(image, np.array([[0, 0, 5, 10]], np.float32), np.random.default_rng(seed))
        if out[0, 19, 0] == 255:
            np.testing.assert_array_equal(b, [[15, 0, 20, 10]])
            return
    pytest.fail("never flipped in 10 draws")


def test_items_are_deterministic_and_padded(records) -> None:
    aug = AugmentSection(mixup_epochs=1)
    a = DetectionDataset(records, 64, aug, max_boxes=8, seed=1)
    b = DetectionDataset(records, 64, aug, max_boxes=8, seed=1)
    for epoch in (0, 1):
        a.set_epoch(epoch)
        b.set_epoch(epoch)
        for index in range(4):
            first, second = a[(index, 96)], b[(index, 96)]
            for x, y in zip(first, second):
                np.testing.assert_array_equal(x, y)
    image, gt_box, gt_class, gt_score = a[(0, 96)]
    assert image.shape == (3, 96, 96) and image.dtype == np.float32
    assert gt_box.shape == (8, 4) and gt_class.shape == (8,) and gt_score.shape == (8,)
    valid = gt_score > 0
    assert valid.any() and np.all(gt_box[~valid] == 0)
    assert np.all((gt_box[valid, :2] >= 0) & (gt_box[valid, :2] <= 1)) and np.all(gt_box[valid, 2:] > 0)
    a.set_epoch(0)
    mixed = a[(0, 64)][3]
    assert np.any((mixed > 0) & (mixed < 1))  # mixup weights during the first epoch
    a.set_epoch(1)
    assert set(np.unique(a[(0, 64)][3])) <= {0.0, 1.0}


def test_without_augmentation_the_image_is_the_bundle_preprocessing(records) -> None:
    import cv2

    from compress.transforms import preprocess_bgr

    dataset = DetectionDataset(records, 64, None)
    image = dataset[0][0]
    np.testing.assert_allclose(image, preprocess_bgr(cv2.imread(str(records[0].path)), (64, 64)), atol=1e-6)
    rec = records[0]
    b = rec.boxes[0]
    np.testing.assert_allclose(
        dataset[0][1][0],
        [
            (b[0] + b[2]) / 2 / rec.width,
            (b[1] + b[3]) / 2 / rec.height,
            (b[2] - b[0]) / rec.width,
            (b[3] - b[1]) / rec.height,
        ],
        rtol=1e-5,
    )


def test_loader_with_workers_matches_in_process_and_uses_one_size_per_batch(records) -> None:
    dataset = DetectionDataset(records, 64, AugmentSection(), max_boxes=8, seed=2)
    sampler = MultiScaleBatchSampler(dataset, 4, [64, 96, 128], seed=2)
    runs = []
    for workers in (0, 2):
        dataset.set_epoch(3)
        sampler.set_epoch(3)
        runs.append([[np.asarray(t) for t in batch] for batch in make_loader(dataset, sampler, workers)])
    assert len(runs[0]) == len(sampler) == len(records) // 4
    for batch_a, batch_b in zip(*runs):
        for x, y in zip(batch_a, batch_b):
            np.testing.assert_array_equal(x, y)
    sizes = {batch[0].shape[2] for batch in runs[0]}
    assert sizes <= {64, 96, 128} and all(batch[0].shape[2] == batch[0].shape[3] for batch in runs[0])
    sampler.set_epoch(4)
    assert [b for b in sampler] != [b for b in MultiScaleBatchSampler(dataset, 4, [64, 96, 128], seed=2)]
