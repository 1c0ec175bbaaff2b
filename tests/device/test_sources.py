"""device.sources with real files standing in for cameras (realtime=True): newest-frame slot, drops,
loop, end, reconnection with back-off, stale streams; files and folders pulled frame by frame by
default; a stream that never answers; and the pure GStreamer pipeline builders."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from device.sources import backoff_schedule, csi_pipeline, open_source, parse_source, rtsp_pipeline
from edge_sdk.errors import SourceError

WIDTH, HEIGHT = 64, 48


def frame_image(index: int) -> np.ndarray:
    """A frame whose mean grey level encodes its index (survives MJPG compression)."""
    return np.full((HEIGHT, WIDTH, 3), 10 + 12 * index, np.uint8)


def index_of(image: np.ndarray) -> int:
    return int(round((float(image.mean()) - 10) / 12))


def write_video(path: Path, frames: int, fps: float = 30.0) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (WIDTH, HEIGHT))
    assert writer.isOpened()
    for i in range(frames):
        writer.write(frame_image(i))
    writer.release()
    return path


def write_folder(folder: Path, frames: int) -> Path:
    folder.mkdir()
    for i in range(frames):
        cv2.imwrite(str(folder / "{:03d}.png".format(i)), frame_image(i))
    return folder


def drain(source, timeout: float = 5.0, limit: int = 1000):
    frames = []
    while len(frames) < limit:
        frame = source.read(timeout)
        if frame is None:
            break
        frames.append(frame)
    return frames


def wait_for(condition, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


def test_video_file_as_camera_keeps_only_the_newest_frame(tmp_path):
    video = write_video(tmp_path / "cam.avi", 20)
    with open_source(str(video), fps=100, realtime=True) as source:
        seen = []
        while True:
            frame = source.read(2.0)
            if frame is None:
                break
            seen.append(frame)
            time.sleep(0.05)  # a consumer slower than the camera
        stats = source.stats()
    assert source.ended
    ids = [f.frame_id for f in seen]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert stats["captured"] == 20
    assert stats["dropped"] > 0
    assert stats["dropped"] + len(seen) == stats["captured"]
    assert seen[-1].frame_id == 19  # the last frame is never lost
    assert all(index_of(f.image) == f.frame_id for f in seen)
    assert seen[0].image.shape == (HEIGHT, WIDTH, 3) and seen[0].source_id == str(video)
    assert stats["state"] == "ended" and source.stats()["state"] == "closed"


def test_unpaced_file_delivers_every_frame_then_ends(tmp_path):
    video = write_video(tmp_path / "clip.avi", 12)
    with open_source(str(video), realtime=False) as source:
        frames = drain(source)
        assert [index_of(f.image) for f in frames] == list(range(12))
        assert source.read(0.2) is None and source.ended
        stats = source.stats()
        assert stats["state"] == "ended" and stats["dropped"] == 0 and stats["captured"] == 12


def test_files_and_folders_deliver_every_frame_to_a_slow_consumer_by_default(tmp_path):
    video = write_video(tmp_path / "inspection.avi", 20, fps=200.0)
    folder = write_folder(tmp_path / "boards", 20)
    for uri in (video, folder):
        with open_source(str(uri)) as source:
            frames = []
            while True:
                frame = source.read(5.0)
                if frame is None:
                    break
                frames.append(frame)
                time.sleep(0.02)  # a consumer slower than the file's own frame rate
            stats = source.stats()
        assert [f.frame_id for f in frames] == list(range(20)), uri
        assert [index_of(f.image) for f in frames] == list(range(20))
        assert stats["dropped"] == 0 and stats["captured"] == 20


def test_folder_frames_carry_their_position_and_file_name(tmp_path):
    folder = write_folder(tmp_path / "boards", 5)
    (folder / "002.png").write_bytes(b"a damaged image")
    with open_source(str(folder)) as source:
        frames = drain(source)
    assert [(f.frame_id, f.source_name) for f in frames] == [
        (0, "000.png"),
        (1, "001.png"),
        (3, "003.png"),
        (4, "004.png"),
    ]
    assert [index_of(f.image) for f in frames] == [0, 1, 3, 4]


def test_the_uri_is_parsed_once_into_a_spec(tmp_path):
    folder = write_folder(tmp_path / "boards", 2)
    spec = parse_source(str(folder))
    assert (spec.kind, spec.target, spec.live) == ("folder", folder, False)
    assert parse_source("rtsp://cam/stream").live and parse_source(3).kind == "camera"
    folder.rename(tmp_path / "moved")  # the spec is used as parsed, not parsed again
    with pytest.raises(SourceError, match="image folder .* is missing"):
        open_source(spec)


def test_a_stream_that_never_answers_times_out_with_a_clear_message(silent_stream):
    with pytest.raises(SourceError) as info:
        open_source(silent_stream.uri, open_timeout=1.0)
    assert str(info.value) == "{}: no answer: timed out after 1 s".format(silent_stream.uri)
    assert silent_stream.accepted  # the server was reached: it accepted and never answered


def test_loop_restarts_the_file(tmp_path):
    video = write_video(tmp_path / "loop.avi", 5)
    with open_source(str(video), loop=True, realtime=False) as source:
        frames = drain(source, limit=13)
        assert [index_of(f.image) for f in frames] == [i % 5 for i in range(13)]
        assert [f.frame_id for f in frames] == list(range(13))
        assert not source.ended


def test_folder_source_plays_images_in_name_order(tmp_path):
    folder = write_folder(tmp_path / "images", 4)
    (folder / "notes.txt").write_text("not an image")
    with open_source(str(folder), realtime=False) as source:
        assert [index_of(f.image) for f in drain(source)] == [0, 1, 2, 3]
        assert source.ended


def test_empty_folder_is_a_source_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="no images"):
        open_source(str(tmp_path / "empty"))


@pytest.mark.parametrize("uri", ["/dev/video97", 97, "97"])
def test_camera_that_does_not_exist(uri):
    with pytest.raises(SourceError, match="camera") as info:
        open_source(uri)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "uri,message",
    [("missing.mp4", "does not exist"), ("no-such-thing", "not a camera index"), ("csi://x", "sensor id")],
)
def test_bad_uris(tmp_path, uri, message):
    with pytest.raises(SourceError, match=message):
        open_source(str(tmp_path / uri) if uri.endswith(".mp4") else uri)


def test_backoff_doubles_up_to_the_cap():
    assert list(itertools.islice(backoff_schedule(0.5, 8.0), 7)) == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]


def test_lost_folder_is_reconnected_with_backoff(tmp_path):
    folder = write_folder(tmp_path / "cam", 3)
    away = tmp_path / "unplugged"
    with open_source(str(folder), loop=True, fps=50, realtime=True, backoff=(0.02, 0.1)) as source:
        assert source.read(5.0) is not None
        folder.rename(away)
        assert wait_for(lambda: source.stats()["reconnects"] >= 3)
        stats = source.stats()
        assert stats["state"] == "reconnecting" and "missing" in stats["last_error"]
        captured = stats["captured"]
        drain_until = time.monotonic() + 0.3
        while time.monotonic() < drain_until:
            source.read(0.05)
        away.rename(folder)
        assert wait_for(lambda: source.stats()["captured"] > captured + 2)
        assert source.read(5.0) is not None
        assert source.stats()["state"] in ("ok", "stale")


def test_looping_video_that_vanishes_comes_back(tmp_path):
    video = write_video(tmp_path / "cam.avi", 3)
    moved = tmp_path / "moved.avi"
    with open_source(str(video), loop=True, fps=60, realtime=True, backoff=(0.02, 0.05)) as source:
        assert source.read(5.0) is not None
        video.rename(moved)
        assert wait_for(lambda: source.stats()["state"] == "reconnecting")
        reconnects = source.stats()["reconnects"]
        moved.rename(video)
        assert wait_for(lambda: source.stats()["state"] == "ok" and source.read(0.1) is not None)
        assert source.stats()["reconnects"] >= reconnects >= 1


def test_frozen_stream_shows_as_stale(tmp_path):
    video = write_video(tmp_path / "slow.avi", 3)
    with open_source(str(video), fps=0.5, realtime=True, stale_after=0.2) as source:  # one frame every 2 s
        assert source.read(5.0) is not None
        assert wait_for(lambda: source.stats()["state"] == "stale", timeout=1.5)
        assert source.stats()["last_frame_age_s"] > 0.2
        assert source.read(0.05) is None  # nothing new: the consumer is not handed the old frame


def test_demo_source_draws_pcb_frames():
    with open_source("demo", width=160, height=120, fps=200) as source:
        first, second = source.read(5.0), source.read(5.0)
    assert first.image.shape == (120, 160, 3) and first.image.dtype == np.uint8
    assert second.frame_id > first.frame_id
    assert not np.array_equal(first.image, second.image)  # the board moves


def test_csi_pipeline_string():
    text = csi_pipeline(1, 1920, 1080, 30, flip=2)
    assert text.startswith("nvarguscamerasrc sensor-id=1 ! ")
    assert "width=(int)1920, height=(int)1080, framerate=(fraction)30/1" in text
    assert "nvvidconv flip-method=2" in text
    assert text.index("BGRx") < text.index("videoconvert") < text.index("format=(string)BGR !")
    assert text.endswith("appsink drop=1 max-buffers=1")


def test_rtsp_pipeline_string():
    hw = rtsp_pipeline("rtsp://10.0.0.2:8554/cam", latency_ms=100)
    assert hw.startswith("rtspsrc location=rtsp://10.0.0.2:8554/cam latency=100 tcp-timeout=10000000 ! ")
    assert "nvv4l2decoder" in hw and hw.endswith("appsink drop=1 max-buffers=1")
    sw = rtsp_pipeline("rtsp://cam/stream", hardware_decoder=False)
    assert "decodebin" in sw and "nvv4l2decoder" not in sw


def test_looping_folder_of_unreadable_images_backs_off_instead_of_spinning(tmp_path):
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "0.png").write_bytes(b"not a png")
    with open_source(str(folder), loop=True, realtime=True, backoff=(0.02, 0.05)) as source:
        assert wait_for(lambda: source.stats()["reconnects"] >= 2)
        stats = source.stats()
        assert stats["state"] == "reconnecting" and "no readable frame" in stats["last_error"]
        assert source.read(0.1) is None
