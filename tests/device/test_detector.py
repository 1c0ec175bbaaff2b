"""device.detector: the Detector on the tiny bundle, boxes in source pixels, thresholds, class filter."""

from __future__ import annotations

import numpy as np

from device.detector import Detector
from tests.device.test_preprocess import noise_image


def test_detector_reports_boxes_in_source_pixels(detector):
    height, width = 240, 400
    image = noise_image(height, width, seed=3)
    found = detector.detect(image, score_threshold=0.0, frame_id=7, timestamp=2.5)
    assert len(found) > 0 and found.frame_id == 7 and found.timestamp == 2.5
    assert found.boxes[:, [0, 2]].max() <= width and found.boxes[:, [1, 3]].max() <= height
    assert found.boxes.min() >= 0
    # The same network input, told its source was the network size, gives network-pixel boxes:
    # source-pixel boxes are those scaled by (width / 96, height / 96).
    inputs = detector.preprocess(image)
    net_h, net_w = detector.manifest.input.size
    inputs_native = dict(inputs, scale_factor=np.array([[1.0, 1.0]], np.float32))
    native = detector.postprocess(detector.infer(inputs_native), net_h, net_w, score_threshold=0.0)
    scale = np.array([width / net_w, height / net_h] * 2, np.float32)
    interior = np.all((native.boxes > 1) & (native.boxes < net_w - 2), axis=1)
    assert interior.any()
    scaled = native.boxes[interior] * scale
    for box in scaled:
        assert np.abs(found.boxes - box).max(axis=1).min() < 0.05 * max(scale)


def test_detector_thresholds_and_class_filter(detector, tiny_bundle):
    image = noise_image(96, 96, seed=4)
    everything = detector.detect(image, score_threshold=0.0)
    default = detector.detect(image)
    assert len(default) <= len(everything)
    assert np.all(default.scores >= detector.manifest.postprocess.score_threshold)
    wanted = int(everything.class_ids[0])
    with Detector(tiny_bundle, threads=1, class_ids=[wanted]) as only_one:
        filtered = only_one.detect(image, score_threshold=0.0)
    assert len(filtered) > 0 and set(filtered.class_ids.tolist()) == {wanted}
