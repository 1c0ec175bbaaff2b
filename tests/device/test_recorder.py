"""RecorderSink: annotated video files that rotate by size, stay readable, and are capped in number."""

from __future__ import annotations

import numpy as np
import pytest

from device.sinks.overlay import PALETTE, annotate
from device.sinks.recorder import RecorderSink
from edge_sdk.detections import Detections, Frame
from edge_sdk.errors import SinkError

cv2 = pytest.importorskip("cv2")

CLASSES = ["missing_hole", "mouse_bite", "open_circuit", "short", "spur", "spurious_copper"]


def _frames(count, size=(160, 120), seed=0):
    rng = np.random.default_rng(seed)
    width, height = size
    for frame_id in range(count):
        image = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)  # noise: big JPEGs
        dets = Detections(
            np.array([[20, 30, 120, 100]]), np.array([0.8]), np.array([3]), frame_id=frame_id, timestamp=frame_id / 15
        )
        yield Frame(image, frame_id, frame_id / 15), dets


def test_annotate_draws_boxes_and_labels_on_a_copy():
    image = np.zeros((120, 160, 3), np.uint8)
    dets = Detections(np.array([[20, 30, 120, 100]]), np.array([0.8]), np.array([3]))
    out = annotate(image, dets, CLASSES)
    assert image.max() == 0  # the input is untouched
    assert out.shape == image.shape and out.dtype == np.uint8
    assert tuple(out[65, 20]) == PALETTE[3]  # left edge of the box, in class 3's colour
    assert tuple(out[65, 70]) == (0, 0, 0)  # inside the box stays as it was
    label_area = out[10:30, 20:120]
    assert (label_area >= 200).all(axis=2).any()  # white label text on the filled tag
    assert annotate(image, Detections.empty(), CLASSES).max() == 0


def test_files_rotate_by_size_stay_readable_and_are_capped(tmp_path):
    target = tmp_path / "rec" / "run.avi"
    sink = RecorderSink(str(target), classes=CLASSES, max_bytes=120_000, keep=3, fps=15, max_queued_frames=128)
    for frame, dets in _frames(120):
        sink.write(frame, dets, {})
    sink.close()
    sink.close()
    assert sink.dropped_frames == 0 and sink.write_errors == 0 and sink.written_frames == 120

    files = sink.files()
    names = [p.name for p in files]
    assert len(files) == 3 and names[-1] == "run.avi", names  # the newest is the name asked for
    indices = [int(name[len("run-") : -len(".avi")]) for name in names[:-1]]
    assert indices == sorted(indices) and indices[0] > 1  # older files were rotated out
    assert sink.recorded_files() == files
    frames_in_files = 0
    for path in files:
        capture = cv2.VideoCapture(str(path))
        assert capture.isOpened(), path
        count = 0
        while True:
            ok, image = capture.read()
            if not ok:
                break
            assert image.shape == (120, 160, 3)
            count += 1
        capture.release()
        assert count >= 1, path
        frames_in_files += count
    assert frames_in_files < 120  # the oldest frames are gone with the deleted files
    for path in files[:-1]:
        assert path.stat().st_size >= 120_000  # a file is closed only once it passed max_bytes

    again = RecorderSink(str(target), classes=CLASSES, max_bytes=120_000, keep=3)  # a restart keeps run.avi
    for frame, dets in _frames(2, seed=1):
        again.write(frame, dets, {})
    again.close()
    names = [p.name for p in again.files()]
    assert names[-2:] == ["run-{:04d}.avi".format(indices[-1] + 1), "run.avi"], names
    assert again.recorded_files() == [target] and len(names) == 3


def test_the_file_asked_for_is_the_file_written(tmp_path):
    target = tmp_path / "rec.avi"
    sink = RecorderSink(str(target), classes=CLASSES)
    for frame, dets in _frames(3):
        sink.write(frame, dets, {})
    sink.close()
    assert sink.recorded_files() == [target] and sink.files() == [target]
    assert [p.name for p in tmp_path.iterdir()] == ["rec.avi"]


def test_the_report_names_the_files_and_the_frames_left_out(tmp_path):
    target = tmp_path / "rec.avi"
    sink = RecorderSink(str(target), classes=CLASSES, max_queued_frames=1)
    for frame, dets in _frames(40):
        sink.write(frame, dets, {})
    sink.close()
    assert sink.dropped_frames > 0  # 40 frames handed over at once behind a one-frame queue
    assert sink.report() == "recorded {}; {} frames not recorded: the encoder fell behind".format(
        target, sink.dropped_frames
    )


def test_a_recorded_frame_shows_the_annotation(tmp_path):
    sink = RecorderSink(str(tmp_path / "one.avi"), classes=CLASSES, max_queued_frames=4)
    image = np.full((120, 160, 3), 40, np.uint8)
    dets = Detections(np.array([[20, 30, 120, 100]]), np.array([0.8]), np.array([3]))
    sink.write(Frame(image, 0, 0.0), dets, {})
    sink.close()
    (path,) = sink.files()
    ok, decoded = cv2.VideoCapture(str(path)).read()
    assert ok
    edge = np.abs(decoded[50:80, 19:22].astype(int) - np.array(PALETTE[3])).mean(axis=(0, 2)).min()
    background = np.abs(np.array([40, 40, 40]) - np.array(PALETTE[3])).mean()
    assert edge < background / 2  # the box edge survived JPEG (4:2:0 chroma blurs a 1-pixel line)
    assert np.abs(decoded[60:70, 60:80].astype(int) - 40).mean() < 10


def test_bad_names_and_folders_are_sink_errors(tmp_path):
    with pytest.raises(SinkError, match=r"\.avi"):
        RecorderSink(str(tmp_path / "run.gif"))
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(SinkError, match="cannot be created"):
        RecorderSink(str(blocker / "run.avi"))
