"""device.pipeline: the overlapped Pipeline on the tiny bundle's Detector."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import cv2
import pytest

from device.pipeline import Pipeline, overlap_for
from device.sources import open_source
from tests.device.test_preprocess import noise_image


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


def test_overlap_only_where_a_core_is_free_or_the_source_is_live():
    from device.predictor import plan
    from tests.device.test_predictor_plan import CPU_ONLY, XAVIER, make_manifest

    def overlap(environment, live, **kwargs):
        return overlap_for(plan(make_manifest(), environment, **kwargs), live, environment.cpu_count)

    assert overlap(CPU_ONLY, live=False) is False  # oneDNN on every core: a thread beside it only slows it
    assert overlap(CPU_ONLY, live=True) is True  # a camera: its newest frame as soon as inference is free
    assert overlap(CPU_ONLY, live=False, threads=1) is True  # one core left for decoding and resizing
    assert overlap(XAVIER, live=False, precision="fp16") is True  # the GPU infers, the CPU prepares


def test_pipeline_in_turn_matches_the_overlapped_one_frame_for_frame(tiny_bundle, tmp_path):
    """A Detector on every core reading a file runs in turn, in one thread; same detections as overlapped."""
    import os

    from device.detector import Detector

    video = write_video(tmp_path / "clip.avi", 6)
    results = {}
    with Detector(tiny_bundle, threads=os.cpu_count() or 1, device="cpu") as detector:
        for overlap in (None, True):
            sink = CollectingSink()
            with open_source(str(video), realtime=False) as source:
                pipeline = Pipeline(source, detector, [sink], score_threshold=0.0, overlap=overlap)
                stats = pipeline.run()
            results[pipeline.overlap] = [
                (d.frame_id, d.boxes.tobytes(), d.class_ids.tolist()) for _, d, _ in sink.items
            ]
            assert stats["frames"] == 6 and stats["latency_ms"]["preprocess"]["p50"] > 0
    assert set(results) == {False, True}
    assert results[False] == results[True] and [item[0] for item in results[False]] == list(range(6))
