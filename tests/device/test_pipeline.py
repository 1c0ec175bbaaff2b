"""device.pipeline: manifest preprocessing, the Detector on the tiny bundle, and the overlapped Pipeline."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from device.pipeline import Detector, LatencyRing, Pipeline, Preprocessor, boxes_to_detections
from device.sources import open_source
from edge_sdk.manifest import InputSpec

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def noise_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_stretch_preprocessing_matches_paddledetection_by_hand():
    image = noise_image(48, 80)
    out = Preprocessor(InputSpec(size=(32, 64)))(image)
    # PaddleDetection: Decode (BGR -> RGB), Resize(keep_ratio=False, interp=2) with fx/fy,
    # NormalizeImage(is_scale=True, ImageNet mean/std), Permute, batch of one.
    rgb = image[:, :, ::-1]
    resized = cv2.resize(rgb, None, None, fx=64 / 80, fy=32 / 48, interpolation=cv2.INTER_CUBIC)
    expected = (
        (resized.astype(np.float32) / 255.0 - np.array(MEAN, np.float32)) / np.array(STD, np.float32)
    ).transpose(2, 0, 1)
    assert out["image"].shape == (1, 3, 32, 64) and out["image"].dtype == np.float32
    np.testing.assert_allclose(out["image"][0], expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(out["im_shape"], np.array([[32, 64]], np.float32))
    np.testing.assert_allclose(out["scale_factor"], np.array([[32 / 48, 64 / 80]], np.float32))


def test_bgr_unscaled_nearest_preprocessing():
    image = noise_image(20, 20, seed=1)
    spec = InputSpec(
        size=(10, 10),
        interpolation="nearest",
        mean=(1.0, 2.0, 3.0),
        std=(2.0, 2.0, 2.0),
        channel_order="BGR",
        scale=False,
    )
    out = Preprocessor(spec)(image)
    resized = cv2.resize(image, (10, 10), interpolation=cv2.INTER_NEAREST).astype(np.float32)
    expected = ((resized - np.array([1.0, 2.0, 3.0], np.float32)) / 2.0).transpose(2, 0, 1)
    np.testing.assert_allclose(out["image"][0], expected, rtol=1e-6)


def test_keep_ratio_pads_and_uses_one_scale():
    image = noise_image(50, 100, seed=2)
    out = Preprocessor(InputSpec(size=(64, 64), resize_mode="keep_ratio"))(image)
    assert out["image"].shape == (1, 3, 64, 64)
    np.testing.assert_allclose(out["scale_factor"], [[0.64, 0.64]])
    np.testing.assert_array_equal(out["im_shape"], [[64, 64]])
    assert np.all(out["image"][0, :, 32:, :] == 0)  # 50 * 0.64 = 32 rows of image, then padding
    assert np.any(out["image"][0, :, :32, :] != 0)


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


def test_latency_ring_percentiles():
    ring = LatencyRing(size=100)
    assert ring.summary() == {"p50": None, "p99": None}
    for value in range(1, 201):
        ring.add(value)
    assert ring.percentile(50) == pytest.approx(150.5)
    assert ring.percentile(99) == pytest.approx(199.01)


@pytest.fixture(scope="module")
def detector(tiny_bundle):
    with Detector(tiny_bundle, threads=1) as det:
        yield det


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


class CollectingSink:
    """A real sink that keeps what it is given."""

    def __init__(self) -> None:
        self.items = []
        self.states = []
        self.closed = False

    def write(self, frame, detections, stats):
        self.items.append((frame, detections, stats))

    def status(self, state, message):
        self.states.append((state, message))

    def close(self):
        self.closed = True


def write_video(path: Path, frames: int, size=(160, 120)) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30, size)
    for i in range(frames):
        writer.write(noise_image(size[1], size[0], seed=i))
    writer.release()
    return path


def test_pipeline_runs_a_video_to_its_end(detector, tmp_path):
    video = write_video(tmp_path / "clip.avi", 8)
    sink = CollectingSink()
    with open_source(str(video), realtime=False) as source:
        stats = Pipeline(source, detector, [sink], score_threshold=0.0).run()
    assert stats["frames"] == 8 and stats["dropped"] == 0
    assert [d.frame_id for _, d, _ in sink.items] == list(range(8))
    assert all(f.frame_id == d.frame_id and f.timestamp == d.timestamp for f, d, _ in sink.items)
    for stage in ("preprocess", "inference", "postprocess", "sinks", "end_to_end"):
        assert stats["latency_ms"][stage]["p50"] > 0
        assert stats["latency_ms"][stage]["p99"] >= stats["latency_ms"][stage]["p50"]
    last_stats = sink.items[-1][2]
    assert last_stats["frames"] == 7 and last_stats["source_state"] in ("ok", "ended")
    assert {"fps", "dropped_frames", "latency_ms_p50", "latency_ms_p99"} <= set(last_stats)
    assert ("ended", "") in sink.states


def test_pipeline_max_frames_and_stop_from_another_thread(detector, tmp_path):
    video = write_video(tmp_path / "loop.avi", 4)
    with open_source(str(video), loop=True, realtime=False) as source:
        assert Pipeline(source, detector).run(max_frames=3)["frames"] == 3
        pipeline = Pipeline(source, detector)
        timer = threading.Timer(0.5, pipeline.stop)
        timer.start()
        stats = pipeline.run()
        timer.join()
    assert stats["frames"] >= 1 and pipeline.stopping


def test_pipeline_hands_a_worker_error_to_the_caller(detector):
    class BrokenSource:
        ended = False

        def read(self, timeout=None):
            raise RuntimeError("camera driver crashed")

    with pytest.raises(RuntimeError, match="camera driver crashed"):
        Pipeline(BrokenSource(), detector).run(max_frames=1)


def test_pipeline_hands_telemetry_to_the_sinks(detector, tmp_path):
    """Temperatures and GPU load read from a (real, scripted) tegrastats reach every sink's stats."""
    from device.telemetry import Telemetry
    from tests.device.test_telemetry import XAVIER_JP5, fake_tegrastats

    telemetry = Telemetry(interval_ms=50, command=str(fake_tegrastats(tmp_path, [XAVIER_JP5]))).start()
    try:
        deadline = time.monotonic() + 10
        while telemetry.latest().gpu_load is None and time.monotonic() < deadline:
            time.sleep(0.05)
        sink = CollectingSink()
        with open_source(str(write_video(tmp_path / "clip.avi", 3)), realtime=False) as source:
            stats = Pipeline(source, detector, [sink], telemetry=telemetry).run()
    finally:
        telemetry.stop()
    assert stats["gpu_load"] == 47 and stats["temperatures"]["GPU"] == 34.531
    assert all(s["gpu_load"] == 47 and s["temperatures"]["tj"] == 37.156 for _, _, s in sink.items)
