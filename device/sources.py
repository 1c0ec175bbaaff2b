"""Frame sources: one URI picks the backend; callers only see "the newest frame, or nothing".

URIs: ``0`` / ``"0"`` (camera index), ``/dev/video0`` (V4L2), ``csi://0`` (Jetson CSI camera through
GStreamer), ``rtsp://...`` (network stream), a video file, a folder of images, ``demo`` (a synthetic
PCB on a conveyor).

`parse_source` reads a URI once into a `SourceSpec`; the spec says whether the source is live.
One reader thread per source fills a one-frame slot, in one of two modes:
- live (cameras, CSI, RTSP/HTTP streams, and files or folders opened with ``realtime=True``): the
  device sets the pace and the slot keeps only the newest frame, so a slow consumer never builds a
  backlog; every frame captured but never consumed is counted in ``dropped``.
- pulled (files, folders and the demo by default): the next frame is decoded only when the consumer
  asks for it, so every frame is delivered and ``dropped`` stays 0.
Frames of a file or folder carry their position in it as ``frame_id`` (a folder's image also its
file name as ``source_name``). A live source that fails is reopened with capped exponential
back-off; a stream that stops delivering frames shows as ``stale`` in `Source.stats`. Files and
folders either loop or end (``ended``).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Optional, Tuple, Union

import numpy as np

from edge_sdk.detections import Frame
from edge_sdk.errors import SourceError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_SUFFIXES = (".avi", ".mp4", ".mkv", ".mov", ".m4v", ".webm", ".mpg", ".mpeg", ".h264", ".h265")
APPSINK = "appsink drop=1 max-buffers=1"
STREAM_OPEN_TIMEOUT_S = 10.0  # a network stream that does not answer within this is an error


def csi_pipeline(sensor_id: int = 0, width: int = 1280, height: int = 720, fps: int = 30, flip: int = 0) -> str:
    """GStreamer pipeline for a Jetson CSI camera (nvarguscamerasrc), ending in a BGR appsink."""
    return (
        "nvarguscamerasrc sensor-id={sid} ! "
        "video/x-raw(memory:NVMM), width=(int){w}, height=(int){h}, framerate=(fraction){fps}/1, format=(string)NV12 ! "
        "nvvidconv flip-method={flip} ! video/x-raw, width=(int){w}, height=(int){h}, format=(string)BGRx ! "
        "videoconvert ! video/x-raw, format=(string)BGR ! {sink}"
    ).format(sid=int(sensor_id), w=int(width), h=int(height), fps=int(fps), flip=int(flip), sink=APPSINK)


def rtsp_pipeline(
    uri: str, latency_ms: int = 200, hardware_decoder: bool = True, tcp_timeout_s: float = STREAM_OPEN_TIMEOUT_S
) -> str:
    """GStreamer pipeline for an RTSP stream ending in a BGR appsink.

    hardware_decoder: Jetson's nvv4l2decoder (H.264/H.265 via parsebin) instead of decodebin.
    tcp_timeout_s: how long rtspsrc waits for the server to answer.
    """
    if hardware_decoder:
        decode = (
            "rtpjitterbuffer ! parsebin ! nvv4l2decoder ! nvvidconv ! video/x-raw, format=(string)BGRx ! videoconvert"
        )
    else:
        decode = "decodebin ! videoconvert"
    return "rtspsrc location={} latency={} tcp-timeout={} ! {} ! video/x-raw, format=(string)BGR ! {}".format(
        uri, int(latency_ms), int(tcp_timeout_s * 1e6), decode, APPSINK
    )


def backoff_schedule(first: float = 0.5, cap: float = 8.0) -> Iterator[float]:
    """Seconds to wait before each reconnection attempt: first, 2*first, 4*first, ... capped at cap."""
    delay = first
    while True:
        yield delay
        delay = min(delay * 2.0, cap)


def opencv_has_gstreamer() -> bool:
    import cv2

    for line in cv2.getBuildInformation().splitlines():
        if line.strip().startswith("GStreamer:"):
            return "YES" in line
    return False


class _Capture:
    """One opened backend. read() -> (status, image); status is "ok", "end" (clean end), "error", or
    "skip" (an unreadable item a folder steps over). After a read, `position` is the index of the item
    just read in the file or folder (None for live devices) and `name` its file name (or None)."""

    position: Optional[int] = None
    name: Optional[str] = None

    def read(self) -> Tuple[str, Optional[np.ndarray]]:
        raise NotImplementedError

    def release(self) -> None:
        pass

    @property
    def fps(self) -> float:
        return 0.0


class _OpenCvCapture(_Capture):
    def __init__(self, capture: Any, is_file: bool) -> None:
        self.capture = capture
        self.is_file = is_file
        self._frames_read = 0

    def read(self) -> Tuple[str, Optional[np.ndarray]]:
        ok, image = self.capture.read()
        if ok and image is not None:
            if self.is_file:
                self.position = self._frames_read
                self._frames_read += 1
            if image.ndim == 2:
                import cv2

                image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
            return "ok", image
        return ("end" if self.is_file else "error"), None

    def release(self) -> None:
        self.capture.release()

    @property
    def fps(self) -> float:
        import cv2

        value = float(self.capture.get(cv2.CAP_PROP_FPS) or 0.0)
        return value if 0.0 < value < 1000.0 else 0.0


class _FolderCapture(_Capture):
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.files:
            raise SourceError("folder {} holds no images ({})".format(folder, ", ".join(IMAGE_SUFFIXES)))
        self.index = 0

    def read(self) -> Tuple[str, Optional[np.ndarray]]:
        import cv2

        if self.index >= len(self.files):
            return "end", None
        path = self.files[self.index]
        self.position, self.name = self.index, path.name
        self.index += 1
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            return ("error" if not path.exists() else "skip"), None
        return "ok", image


class _DemoCapture(_Capture):
    """A synthetic PCB board sliding past the camera (edge_sdk.data.render_board)."""

    def __init__(self, width: int, height: int, seed: int = 0) -> None:
        try:
            from edge_sdk.data import render_board
        except ImportError:
            from edge_sdk.data.synth import render_board

        rng = np.random.default_rng(seed)
        board = render_board(rng, (width * 2, height))[0]
        self.strip = np.ascontiguousarray(np.concatenate([board, board], axis=1))
        self.width = width
        self.offset = 0

    def read(self) -> Tuple[str, Optional[np.ndarray]]:
        span = self.strip.shape[1] // 2
        start = self.offset % span
        self.offset += 4
        return "ok", np.ascontiguousarray(self.strip[:, start : start + self.width])

    @property
    def fps(self) -> float:
        return 30.0


def _open_opencv(target: Union[int, str], api: Optional[int], is_file: bool, settings: Dict[str, Any]) -> _Capture:
    """settings: width, height, fps, fourcc (camera mode), open_timeout (s, network streams)."""
    import cv2

    open_timeout = settings.get("open_timeout")
    started = time.monotonic()
    if open_timeout:
        milliseconds = int(open_timeout * 1000)
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, milliseconds, cv2.CAP_PROP_READ_TIMEOUT_MSEC, milliseconds]
        capture = cv2.VideoCapture(target, api if api is not None else cv2.CAP_ANY, params)
    else:
        capture = cv2.VideoCapture(target, api) if api is not None else cv2.VideoCapture(target)
    if not capture.isOpened():
        capture.release()
        if open_timeout and time.monotonic() - started >= 0.9 * open_timeout:
            raise SourceError("no answer: timed out after {:g} s".format(open_timeout))
        raise SourceError("could not open {}".format(target))
    fourcc = settings.get("fourcc")
    if fourcc:
        capture.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*fourcc[:4].ljust(4)))
    if settings.get("width"):
        capture.set(cv2.CAP_PROP_FRAME_WIDTH, settings["width"])
    if settings.get("height"):
        capture.set(cv2.CAP_PROP_FRAME_HEIGHT, settings["height"])
    if settings.get("fps") and not is_file:
        capture.set(cv2.CAP_PROP_FPS, settings["fps"])
    if not is_file:
        capture.set(cv2.CAP_PROP_BUFFERSIZE, 1)
    return _OpenCvCapture(capture, is_file)


class Source:
    """A frame source read by a background thread into a latest-frame slot.

    opener: returns a freshly opened `_Capture` or raises SourceError.
    live: a camera or stream (errors and ends trigger reconnection, frames paced by the device);
    otherwise a file/folder (ends, or loops when `loop`).
    realtime: for files, pace frames at `fps` like a camera (newest frame only, dropping what the
    consumer misses); when False the source is pulled: each frame is decoded when the consumer asks
    for it, and every frame is delivered.
    backoff: (first, cap) seconds between reconnection attempts, doubling.
    stale_after: seconds without a new frame before the state becomes "stale".
    """

    def __init__(
        self,
        opener: Callable[[], _Capture],
        source_id: str,
        live: bool,
        loop: bool = False,
        realtime: bool = True,
        fps: Optional[float] = None,
        backoff: Tuple[float, float] = (0.5, 8.0),
        stale_after: float = 2.0,
    ) -> None:
        self.source_id = source_id
        self.live = live
        self.loop = loop
        self.realtime = realtime
        self.pulled = not live and not realtime
        self.backoff = backoff
        self.stale_after = stale_after
        self._opener = opener
        self._lock = threading.Condition()
        self._slot: Optional[Frame] = None
        self._slot_consumed = True
        self._waiting = 0
        self._next_id = 0
        self._id_base = 0  # frame_id of position 0 in the current pass over a file or folder
        self._captured = 0
        self._dropped = 0
        self._reconnects = 0
        self._state = "starting"
        self._last_error = ""
        self._last_capture = time.monotonic()
        self._capture_times: deque = deque(maxlen=64)
        self._closing = threading.Event()
        self._capture = opener()  # the first open is synchronous: a missing camera fails here
        self._fps = float(fps or self._capture.fps or 30.0)
        self._state = "ok"
        self._thread = threading.Thread(target=self._run, name="source-reader", daemon=True)
        self._thread.start()

    # consumer side

    def read(self, timeout: Optional[float] = None) -> Optional[Frame]:
        """The newest frame not yet returned, waiting up to `timeout` s; None on timeout, end or close."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            self._waiting += 1
            self._lock.notify_all()
            try:
                while self._slot_consumed:
                    if self._state in ("ended", "closed"):
                        return None
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        return None
                    self._lock.wait(remaining)
            finally:
                self._waiting -= 1
            self._slot_consumed = True
            self._lock.notify_all()
            return self._slot

    @property
    def ended(self) -> bool:
        """True once a non-looping file or folder has delivered its last frame (or after close)."""
        with self._lock:
            return self._state in ("ended", "closed") and self._slot_consumed

    def stats(self) -> Dict[str, Any]:
        """captured, dropped, reconnects, fps (capture rate), last_frame_age_s, last_error, and state:
        "ok", "stale" (no new frame for stale_after s), "reconnecting", "ended" or "closed"."""
        with self._lock:
            now = time.monotonic()
            age = now - self._last_capture
            state = self._state
            if state == "ok" and age > self.stale_after:
                state = "stale"
            times = list(self._capture_times)
            fps = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0] else 0.0
            return {
                "source": self.source_id,
                "captured": self._captured,
                "dropped": self._dropped,
                "reconnects": self._reconnects,
                "fps": fps,
                "last_frame_age_s": age,
                "state": state,
                "last_error": self._last_error,
            }

    def close(self) -> None:
        """Stop the reader thread and release the device."""
        self._closing.set()
        with self._lock:
            if self._state != "ended":
                self._state = "closed"
            self._lock.notify_all()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=5.0)
        with self._lock:
            self._state = "closed"
        self._release()

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # reader side

    def _release(self) -> None:
        capture, self._capture = self._capture, None
        if capture is not None:
            try:
                capture.release()
            except Exception:  # a vanished device may fail to release; nothing more to do
                pass

    def _publish(self, image: np.ndarray, position: Optional[int], name: Optional[str]) -> None:
        """Put a frame in the slot; position: its index in the file or folder (None: live, count on)."""
        now = time.monotonic()
        with self._lock:
            if not self._slot_consumed:
                self._dropped += 1
            frame_id = self._next_id if position is None else self._id_base + position
            self._slot = Frame(
                image=image, frame_id=frame_id, timestamp=now, source_id=self.source_id, source_name=name or ""
            )
            self._slot_consumed = False
            self._next_id = frame_id + 1
            self._captured += 1
            self._last_capture = now
            self._capture_times.append(now)
            if self._state != "closed":
                self._state = "ok"
            self._lock.notify_all()

    def _wait_for_demand(self) -> None:
        """Pulled sources: decode the next frame only once the last one was taken and a reader waits."""
        with self._lock:
            while (not self._slot_consumed or self._waiting == 0) and not self._closing.is_set():
                self._lock.wait(0.1)

    def _set_state(self, state: str, error: str = "") -> None:
        with self._lock:
            if self._state != "closed":
                self._state = state
            if error:
                self._last_error = error
            self._lock.notify_all()

    def _reconnect(self, reason: str) -> bool:
        """Reopen with capped exponential back-off until it works or the source is closed."""
        self._release()
        delays = backoff_schedule(*self.backoff)
        while not self._closing.is_set():
            delay = next(delays)
            with self._lock:
                self._reconnects += 1
            self._set_state("reconnecting", reason)
            if self._closing.wait(delay):
                return False
            try:
                self._capture = self._opener()
                with self._lock:
                    self._id_base = self._next_id  # a reopened file or folder starts over: ids go on
                self._set_state("ok")
                return True
            except SourceError as exc:
                reason = str(exc)
            except Exception as exc:  # a backend failing in an unexpected way is retried all the same
                reason = "{}: {}".format(type(exc).__name__, exc)
        return False

    def _run(self) -> None:
        period = 1.0 / self._fps if self._fps > 0 else 0.0
        next_due = time.monotonic()
        frames_since_open = 0
        while not self._closing.is_set():
            if self.pulled:
                self._wait_for_demand()
                if self._closing.is_set():
                    break
            capture = self._capture
            try:
                status, image = capture.read() if capture is not None else ("error", None)
            except Exception as exc:  # a backend raising mid-stream is a lost device
                status, image = "error", None
                self._last_error = "{}: {}".format(type(exc).__name__, exc)
            if status == "ok":
                frames_since_open += 1
                self._publish(image, capture.position, capture.name)  # type: ignore[arg-type,union-attr]
                if self.realtime and not self.live and period:
                    next_due = max(next_due + period, time.monotonic() - period)
                    self._closing.wait(max(0.0, next_due - time.monotonic()))
                continue
            if status == "skip":
                continue
            if status == "end" and not self.live and not self.loop:
                self._set_state("ended")
                break
            reason = "end of stream" if status == "end" else (self._last_error or "read failed")
            if status == "end" and not self.live and frames_since_open == 0:
                reason = "no readable frame in {}".format(self.source_id)
            elif status == "end" and not self.live:
                # loop: reopen the file (a file that vanished meanwhile is retried with back-off)
                frames_since_open = 0
                self._release()
                with self._lock:
                    self._id_base = self._next_id
                try:
                    self._capture = self._opener()
                    continue
                except SourceError as exc:
                    reason = str(exc)
            if not self._reconnect(reason):
                break
            frames_since_open = 0
            next_due = time.monotonic()
        self._release()


LIVE_KINDS = ("camera", "v4l2", "csi", "stream")


@dataclass(frozen=True)
class SourceSpec:
    """A source URI parsed once.

    kind: "camera" (target: int index), "v4l2" (device path), "csi" (int sensor id), "stream" (URL),
    "file" (Path of a video), "folder" (Path of images) or "demo" (target None).
    live: the device sets the pace (cameras, CSI, streams): read newest-frame-only. Files, folders
    and the demo are pulled, every frame delivered, unless opened with realtime=True.
    """

    uri: str
    kind: str
    target: Any = None

    @property
    def live(self) -> bool:
        return self.kind in LIVE_KINDS


def parse_source(uri: Union[int, str, SourceSpec]) -> SourceSpec:
    """The `SourceSpec` of a URI (a spec is returned as is); SourceError with one line when the URI
    is none of the forms this module knows, or names a video file that does not exist."""
    if isinstance(uri, SourceSpec):
        return uri
    if isinstance(uri, int):
        return SourceSpec(str(uri), "camera", uri)
    text = str(uri).strip()
    if text.isdigit():
        return SourceSpec(text, "camera", int(text))
    if text == "demo":
        return SourceSpec(text, "demo")
    if text.startswith("/dev/video"):
        return SourceSpec(text, "v4l2", text)
    if text.startswith("csi://"):
        sensor = text[len("csi://") :]
        if not sensor.isdigit():
            raise SourceError("csi:// needs a sensor id, like csi://0, got {}".format(text))
        return SourceSpec(text, "csi", int(sensor))
    if text.startswith(("rtsp://", "rtsps://", "http://", "https://")):
        return SourceSpec(text, "stream", text)
    path = Path(text).expanduser()
    if path.is_dir():
        return SourceSpec(text, "folder", path)
    if path.is_file():
        return SourceSpec(text, "file", path)
    if path.suffix.lower() in VIDEO_SUFFIXES + IMAGE_SUFFIXES:
        raise SourceError("video file {} does not exist".format(path))
    raise SourceError(
        "source {!r} is not a camera index, /dev/videoN, csi://N, rtsp://..., a video file, "
        "an image folder or 'demo'".format(text)
    )


def check_source(uri: Union[int, str, SourceSpec]) -> SourceSpec:
    """Cheap checks before anything heavy is built: the URI's form, that a file, folder or V4L2
    device exists. Returns the parsed `SourceSpec`; raises SourceError with one line otherwise."""
    spec = parse_source(uri)
    if spec.kind in ("camera", "v4l2"):
        device_path = spec.target if spec.kind == "v4l2" else "/dev/video{}".format(spec.target)
        if sys.platform.startswith("linux") and not os.path.exists(device_path):
            raise SourceError(
                "camera {} does not exist: no {} (is it plugged in? see `v4l2-ctl --list-devices`)".format(
                    spec.target, device_path
                )
            )
    return spec


def open_source(
    uri: Union[int, str, SourceSpec],
    width: Optional[int] = None,
    height: Optional[int] = None,
    fps: Optional[float] = None,
    fourcc: Optional[str] = None,
    loop: bool = False,
    realtime: bool = False,
    backoff: Tuple[float, float] = (0.5, 8.0),
    stale_after: float = 2.0,
    flip: int = 0,
    open_timeout: float = STREAM_OPEN_TIMEOUT_S,
) -> Source:
    """Open the source named by `uri` (a URI or a `SourceSpec`) and start its reader thread.

    width/height/fps/fourcc: requested camera mode (V4L2/CSI; fourcc like "MJPG"); with realtime, fps
    also paces files. loop: restart files/folders at their end. realtime: pace files, folders and the
    demo like a camera, newest frame only (default False: every frame, as fast as the consumer takes
    them). open_timeout: seconds a network stream may take to open (and to deliver a frame) before
    SourceError "timed out after N s". Raises SourceError when it cannot open.
    """
    spec = check_source(uri)
    kind, target = spec.kind, spec.target
    settings = {"width": width, "height": height, "fps": fps, "fourcc": fourcc}
    common = {"backoff": backoff, "stale_after": stale_after}

    def must_open(open_once: Callable[[], _Capture], description: str) -> Callable[[], _Capture]:
        def opener() -> _Capture:
            try:
                return open_once()
            except SourceError as exc:
                raise SourceError("{}: {}".format(description, exc)) from None

        return opener

    if kind in ("camera", "v4l2"):
        import cv2

        api = cv2.CAP_V4L2 if os.name == "posix" and hasattr(cv2, "CAP_V4L2") else None
        if kind == "v4l2" and settings["fourcc"] is None and (width or height):
            settings["fourcc"] = "MJPG"
        name = "camera {}".format(target)
        opener = must_open(lambda: _open_opencv(target, api, False, settings), name)
        try:
            return Source(opener, str(target), live=True, fps=fps, **common)
        except SourceError:
            raise SourceError("camera {} could not be opened (no such device, or busy)".format(target)) from None
    if kind == "csi":
        import cv2

        if not opencv_has_gstreamer():
            raise SourceError("csi://{} needs OpenCV built with GStreamer (JetPack's system OpenCV)".format(target))
        pipeline = csi_pipeline(target, width or 1280, height or 720, int(fps or 30), flip)
        opener = must_open(lambda: _open_opencv(pipeline, cv2.CAP_GSTREAMER, False, {}), "CSI camera {}".format(target))
        return Source(opener, "csi://{}".format(target), live=True, fps=fps, **common)
    if kind == "stream":
        import cv2

        timeouts = {"open_timeout": open_timeout}
        if target.startswith("rtsp") and opencv_has_gstreamer():
            pipeline = rtsp_pipeline(target, tcp_timeout_s=open_timeout)
            opener = must_open(lambda: _open_opencv(pipeline, cv2.CAP_GSTREAMER, False, timeouts), target)
        else:
            opener = must_open(lambda: _open_opencv(target, cv2.CAP_FFMPEG, False, timeouts), target)
        return Source(opener, target, live=True, fps=fps, **common)
    if kind == "file":
        path = target

        def open_file() -> _Capture:
            if not path.is_file():
                raise SourceError("video file {} is missing".format(path))
            return _open_opencv(str(path), None, True, {})

        return Source(
            must_open(open_file, str(path)), str(path), live=False, loop=loop, realtime=realtime, fps=fps, **common
        )
    if kind == "folder":
        folder = target

        def open_folder() -> _Capture:
            if not folder.is_dir():
                raise SourceError("image folder {} is missing".format(folder))
            return _FolderCapture(folder)

        return Source(open_folder, str(folder), live=False, loop=loop, realtime=realtime, fps=fps or 30.0, **common)
    # The demo never ends; like a file it is paced at `fps` when realtime, else made on demand.
    return Source(
        lambda: _DemoCapture(width or 640, height or 480),
        "demo",
        live=False,
        realtime=realtime,
        fps=fps or 30.0,
        **common,
    )
