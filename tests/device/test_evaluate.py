"""device.evaluate: a bundle file or a model folder run over a dataset through the robot's Detector."""

from __future__ import annotations

from dataclasses import replace

import cv2
import numpy as np
import pytest

from device.detector import Detector
from device.evaluate import ModelFolder, evaluate_model
from edge_sdk.bundle import open_bundle
from edge_sdk.data import Dataset, load_dataset, synthesize
from edge_sdk.errors import DataError
from edge_sdk.metrics import evaluate


@pytest.fixture(scope="module")
def val_set(tmp_path_factory) -> Dataset:
    _, val_json = synthesize(tmp_path_factory.mktemp("eval-data"), 6, seed=5, size=(128, 128), progress=False)
    return load_dataset(val_json)


def test_bundle_and_model_folder_give_the_detectors_detections_and_their_map(tiny_bundle, val_set):
    evaluation = evaluate_model(tiny_bundle, val_set, device="cpu", threads=1)
    with Detector(tiny_bundle, device="cpu", threads=1) as detector:
        expected = [detector.detect(cv2.imread(str(r.path)), score_threshold=0.0) for r in val_set.images]
    assert len(evaluation.detections) == len(val_set.images) and sum(map(len, expected)) > 0
    for found, wanted in zip(evaluation.detections, expected):
        np.testing.assert_array_equal(found.class_ids, wanted.class_ids)
        np.testing.assert_allclose(found.boxes, wanted.boxes, atol=1e-4)
    assert evaluation.map50 == evaluate(val_set, expected).map50
    assert evaluation.map == evaluation.result.map and evaluation.latency_ms > 0
    with open_bundle(tiny_bundle) as bundle:
        folder = ModelFolder(bundle.manifest, bundle.path_of("model/model.pdmodel").parent)
        assert evaluate_model(folder, val_set, device="cpu", threads=1).map50 == evaluation.map50


def test_an_unreadable_image_is_a_data_error(tiny_bundle, val_set, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    dataset = Dataset(val_set.classes, (replace(val_set.images[0], path=broken),))
    with pytest.raises(DataError, match="cannot decode image .*broken.png"):
        evaluate_model(tiny_bundle, dataset, device="cpu", threads=1)
