"""device.postprocess: PaddleDetection's rows -> Detections, filtered and clipped."""

from __future__ import annotations

import numpy as np

from device.postprocess import boxes_to_detections


def test_boxes_to_detections_filters_and_clips():
    raw = np.array(
        [
            [-1, 0.9, 0, 0, 0, 0],  # PaddleDetection's "nothing found" filler row
            [0, 0.8, -5, 10, 50, 20],  # clipped on the left
            [1, 0.2, 10, 10, 20, 20],  # below the threshold
            [2, 0.7, 90, 90, 130, 140],  # clipped to 100 x 100
            [7, 0.9, 10, 10, 20, 20],  # class out of range
            [1, 0.95, 120, 120, 130, 130],  # nothing left inside the image
        ],
        np.float32,
    )
    det = boxes_to_detections(raw, 100, 100, 0.5, num_classes=3, frame_id=4, timestamp=1.5)
    np.testing.assert_array_equal(det.class_ids, [0, 2])
    np.testing.assert_allclose(det.boxes, [[0, 10, 50, 20], [90, 90, 100, 100]])
    assert det.frame_id == 4 and det.timestamp == 1.5
    only_two = boxes_to_detections(raw, 100, 100, 0.5, num_classes=3, class_ids=[2])
    np.testing.assert_array_equal(only_two.class_ids, [2])
    assert len(boxes_to_detections(np.zeros((0, 6), np.float32), 10, 10, 0.0, 3)) == 0
