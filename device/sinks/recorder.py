"""Annotated video recording with size-based rotation.

`RecorderSink("rec/run.avi", classes, max_bytes=..., keep=N)` writes rec/run.avi. Once it passes
max_bytes it is renamed to the next numbered sibling (rec/run-0001.avi, run-0002.avi, ...; a higher
number is newer) and a fresh rec/run.avi is started, keeping the newest N files in all. A run.avi
left by an earlier run is renamed the same way before the first frame, so nothing earlier is
overwritten. ".avi" uses Motion-JPEG, ".mp4" uses MPEG-4 part 2 ("mp4v"). Frames are annotated and
encoded on a background thread behind a small bounded queue; frames that do not fit are dropped
and counted, never waited for. `recorded_files()` names the files this sink wrote.
"""

from __future__ import annotations

import logging
import os
import queue
import re
import threading
from pathlib import Path
from typing import List, Optional, Sequence

from edge_sdk.errors import SinkError

from .handover import hand_over
from .overlay import annotate

log = logging.getLogger(__name__)

CODECS = {".avi": "MJPG", ".mp4": "mp4v"}
_STOP = object()


class RecorderSink:
    """Writes annotated frames to rotating video files next to `path` (its stem and suffix name them).

    max_bytes: a file is closed, renamed to its numbered sibling and a fresh `path` started once its
    size on disk reaches this (OpenCV's writer buffers a few hundred kB, so a file ends up to that
    much past max_bytes).
    keep: how many files to keep, `path` included (the oldest beyond that are deleted).
    fps: the files' nominal rate.
    """

    def __init__(
        self,
        path: str,
        classes: Sequence[str] = (),
        max_bytes: int = 256 * 1024 * 1024,
        keep: int = 10,
        fps: float = 15.0,
        max_queued_frames: int = 8,
        lossless: bool = False,
    ) -> None:
        import cv2

        target = Path(path)
        suffix = target.suffix.lower()
        if suffix not in CODECS:
            raise SinkError("recording {}: use a .avi (Motion-JPEG) or .mp4 (mp4v) file name".format(path))
        if keep < 1 or max_bytes < 1:
            raise SinkError("recording {}: keep and max_bytes must be at least 1".format(path))
        self.path = target
        self.folder = target.parent
        self.stem = target.stem
        self.suffix = suffix
        self.classes = tuple(classes)
        self.max_bytes = int(max_bytes)
        self.keep = int(keep)
        self.fps = float(fps)
        self.fourcc = cv2.VideoWriter_fourcc(*CODECS[suffix])
        self.lossless = lossless
        self.dropped_frames = 0
        self.written_frames = 0
        self.write_errors = 0
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise SinkError("recording folder {} cannot be created: {}".format(self.folder, error.strerror)) from None
        if not os.access(str(self.folder), os.W_OK):
            raise SinkError("recording folder {} is not writable".format(self.folder))
        self._check_codec()
        self._pattern = re.compile(r"^{}-(\d+){}$".format(re.escape(self.stem), re.escape(suffix)))
        numbered = self._numbered()
        self._index = self._index_of(numbered[-1]) if numbered else 0
        self._written: List[Path] = []
        self._writer = None
        self._writer_size = None
        self.current_path: Optional[Path] = None
        self._queue: queue.Queue = queue.Queue(maxsize=max_queued_frames)
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="recorder-sink", daemon=True)
        self._thread.start()

    def files(self) -> List[Path]:
        """Recording files of this name in the folder, oldest first (`path` itself, when it exists, last)."""
        return self._numbered() + ([self.path] if self.path.exists() else [])

    def recorded_files(self) -> List[Path]:
        """The files this sink wrote that are still there, oldest first (final names, after rotation)."""
        return [p for p in self._written if p.exists()]

    def report(self) -> str:
        """One line for the end of the run: the files written, and the frames the encoder fell behind on."""
        parts = []
        recorded = self.recorded_files()
        if recorded:
            parts.append("recorded {}".format(", ".join(str(path) for path in recorded)))
        if self.dropped_frames:
            parts.append("{} frames not recorded: the encoder fell behind".format(self.dropped_frames))
        return "; ".join(parts)

    def _numbered(self) -> List[Path]:
        found = [p for p in self.folder.iterdir() if self._pattern.match(p.name)]
        return sorted(found, key=self._index_of)

    def write(self, frame, detections, stats: dict) -> None:
        if self._closed:
            return
        if not hand_over(self._queue, (frame.image, detections), self._thread, wait=self.lossless):
            self.dropped_frames += 1

    def status(self, state: str, message: str) -> None:
        log.info("recorder: vision %s (%s)", state, message)

    def close(self, timeout: float = 10.0) -> None:
        """Encode what is queued (up to `timeout` seconds), then finish the current file."""
        if self._closed:
            return
        self._closed = True
        try:
            self._queue.put(_STOP, timeout=timeout)
        except queue.Full:
            pass
        self._thread.join(timeout=timeout)
        self._release()

    def _index_of(self, path: Path) -> int:
        match = self._pattern.match(path.name)
        return int(match.group(1)) if match else -1

    def _check_codec(self) -> None:
        import cv2

        probe = self.folder / ".{}-probe{}".format(self.stem, self.suffix)
        writer = cv2.VideoWriter(str(probe), self.fourcc, self.fps, (64, 64))
        opened = writer.isOpened()
        writer.release()
        try:
            probe.unlink()
        except OSError:
            pass
        if not opened:
            raise SinkError(
                "recording: OpenCV cannot write {} files here (codec {})".format(self.suffix, CODECS[self.suffix])
            )

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            image, detections = item
            try:
                self._write_frame(annotate(image, detections, self.classes))
            except Exception as error:  # a full disk must not kill the thread: count it and go on
                self.write_errors += 1
                log.warning("recorder: %s", error)
                self._release()

    def _write_frame(self, image) -> None:
        size = (int(image.shape[1]), int(image.shape[0]))
        if self._writer is not None and size != self._writer_size:
            self._release()
        if self._writer is None:
            self._open_next(size)
        self._writer.write(image)
        self.written_frames += 1
        if os.path.getsize(str(self.current_path)) >= self.max_bytes:
            self._release()

    def _open_next(self, size) -> None:
        import cv2

        if self.path.exists():  # the last file (this run's or an earlier run's) moves to a numbered sibling
            self._index += 1
            rotated = self.folder / "{}-{:04d}{}".format(self.stem, self._index, self.suffix)
            os.replace(str(self.path), str(rotated))
            self._written = [rotated if p == self.path else p for p in self._written]
        writer = cv2.VideoWriter(str(self.path), self.fourcc, self.fps, size)
        if not writer.isOpened():
            raise OSError("cannot open {} for writing".format(self.path))
        self._writer, self._writer_size, self.current_path = writer, size, self.path
        self._written.append(self.path)
        for old in self.files()[: -self.keep]:
            try:
                old.unlink()
            except OSError as error:
                log.warning("recorder: cannot delete %s: %s", old, error.strerror)

    def _release(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.release()
