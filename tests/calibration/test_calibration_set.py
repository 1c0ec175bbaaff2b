from __future__ import annotations

import numpy as np
import pytest

from calibration.calibration_set import calibration_sha256, quantile_edges, select_calibration_set
from edge_sdk.data.dataset import Dataset, ImageRecord
from edge_sdk.errors import DataError


def _skewed_dataset(folder) -> Dataset:
    """30 images: class 0 in 24, class 1 in 5, class 2 in 1; grey levels 10..250; box sizes 4..60 px."""
    import cv2

    records = []
    for i in range(30):
        path = folder / "{:02d}.png".format(i)
        cv2.imwrite(str(path), np.full((64, 64, 3), 10 + 8 * i, np.uint8))
        cls = 2 if i == 29 else (1 if i % 6 == 5 else 0)
        side = 4 + 2 * i
        records.append(
            ImageRecord(
                path=path,
                image_id=i + 1,
                width=64,
                height=64,
                boxes=np.array([[0, 0, side, side]], np.float32),
                class_ids=np.array([cls], np.int32),
                iscrowd=np.zeros(1, bool),
                areas=np.array([side * side], np.float32),
            )
        )
    return Dataset(classes=("common", "uncommon", "rare"), images=tuple(records), source=folder)


def test_rare_classes_are_served_and_classes_stay_proportional(tmp_path):
    dataset = _skewed_dataset(tmp_path)
    chosen = select_calibration_set(dataset, 10, seed=1)
    assert len(chosen) == 10
    assert chosen.class_images["rare"] == 1
    assert chosen.records[0].image_id == 30  # the rarest class is served first
    assert 1 <= chosen.class_images["uncommon"] <= 3
    assert chosen.class_images["common"] >= 6
    assert chosen.brightness_bins == (4, 4)
    assert chosen.size_bins == (4, 4)


def test_selection_is_deterministic_and_the_hash_identifies_the_set(tmp_path):
    dataset = _skewed_dataset(tmp_path)
    first = select_calibration_set(dataset, 8, seed=5)
    again = select_calibration_set(dataset, 8, seed=5)
    assert [r.image_id for r in first.records] == [r.image_id for r in again.records]
    assert first.sha256 == again.sha256 == calibration_sha256(list(reversed(first.records)))
    other = select_calibration_set(dataset, 8, seed=6)
    if {r.image_id for r in other.records} != {r.image_id for r in first.records}:
        assert other.sha256 != first.sha256


def test_synthetic_set_covers_every_class_and_bin(pcb_data):
    train = pcb_data[0]
    chosen = select_calibration_set(train, 12, seed=0)
    present = {train.classes[int(c)] for r in train.images for c in r.class_ids}
    assert all(chosen.class_images[name] >= 1 for name in present)
    assert chosen.brightness_bins[0] == chosen.brightness_bins[1] > 1
    assert chosen.size_bins[0] == chosen.size_bins[1] > 1
    assert len({r.image_id for r in chosen.records}) == 12


def test_small_dataset_and_bad_count(tmp_path):
    dataset = _skewed_dataset(tmp_path)
    assert len(select_calibration_set(dataset, 100)) == 30
    with pytest.raises(DataError):
        select_calibration_set(dataset, 0)
    with pytest.raises(DataError):
        select_calibration_set(Dataset(classes=("a",), images=()), 4)


def test_quantile_edges_split_evenly():
    edges = quantile_edges(np.arange(100, dtype=float), 4)
    assert np.allclose(edges, [24.75, 49.5, 74.25])
    assert len(quantile_edges(np.ones(10), 4)) == 1
