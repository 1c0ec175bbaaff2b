"""The serial wire protocol, version 1: COBS-framed, CRC-checked binary messages (see docs/serial-protocol.md).

On the wire every message is ``COBS(header + payload + crc) + b"\\x00"``. All integers are
little-endian. The header is 18 bytes: version u8, type u8, sequence u16, capture timestamp u64
(microseconds on the robot's monotonic clock), frame id u32 (0xFFFFFFFF: no frame), payload length
u16. The CRC is CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF, no reflection, no final xor) over
header and payload, appended as u16.

`encode_message` turns a message object into wire bytes; `Decoder.feed` turns any chunking of a
byte stream back into messages, rejecting (and counting) corrupted frames and resynchronising at the
next 0x00. `format_text` renders a message as one human-readable line (``--serial-mode text``).
"""

from __future__ import annotations

import binascii
import struct
from dataclasses import dataclass, field
from typing import Dict, List, Sequence, Tuple, Union

import numpy as np

PROTOCOL_VERSION = 1

MSG_DETECTIONS = 0x01
MSG_HEARTBEAT = 0x02
MSG_STATUS = 0x03
MESSAGE_NAMES = {MSG_DETECTIONS: "DETECTIONS", MSG_HEARTBEAT: "HEARTBEAT", MSG_STATUS: "STATUS"}

# Vision states carried by HEARTBEAT and STATUS (the pipeline's `source_state` strings).
STATE_CODES = {"ok": 0, "reconnecting": 1, "stale": 2, "ended": 3, "starting": 4}
STATE_NAMES = {code: name for name, code in STATE_CODES.items()}
STATE_UNKNOWN = 255

NO_FRAME = 0xFFFFFFFF
HEADER = struct.Struct("<BBHQIH")  # version, type, seq, timestamp_us, frame_id, payload_length
CRC = struct.Struct("<H")
DETECTIONS_HEAD = struct.Struct("<HHHH")  # image width, image height, detections in frame, records sent
DETECTION_RECORD = struct.Struct("<HHHHHH")  # class id, score (0..65535 = 0..1), x1, y1, x2, y2 (pixels)
HEARTBEAT_BODY = struct.Struct("<BBIIIHHH")  # state, flags, uptime_s, frames, dropped, fps*100, p50*10, p99*10
STATUS_HEAD = struct.Struct("<BB")  # state, reason length (bytes of UTF-8 that follow)

MAX_DETECTIONS = 255  # records per DETECTIONS message; the highest scores are kept
MAX_REASON_BYTES = 64
MAX_FRAME_BYTES = 4096  # longest COBS frame a decoder accepts (a full DETECTIONS message is 3,090 bytes)
SCORE_SCALE = 65535

# CRC-16/CCITT-FALSE is binascii.crc_hqx with init 0xFFFF (poly 0x1021, MSB first, no final xor).
CRC_INIT = 0xFFFF


def crc16(data: bytes) -> int:
    """CRC-16/CCITT-FALSE of `data` (check value: crc16(b"123456789") == 0x29B1)."""
    return binascii.crc_hqx(data, CRC_INIT)


def cobs_encode(data: bytes) -> bytes:
    """Consistent Overhead Byte Stuffing: the result contains no 0x00 byte (delimiter not included)."""
    out = bytearray()
    block = bytearray()
    for byte in data:
        if byte == 0:
            out.append(len(block) + 1)
            out += block
            block.clear()
        else:
            block.append(byte)
            if len(block) == 254:
                out.append(255)
                out += block
                block.clear()
    out.append(len(block) + 1)
    out += block
    return bytes(out)


def cobs_decode(data: bytes) -> bytes:
    """Inverse of `cobs_encode`; raises ValueError on a zero byte or a code that runs past the end."""
    out = bytearray()
    index = 0
    length = len(data)
    while index < length:
        code = data[index]
        if code == 0:
            raise ValueError("COBS: zero byte inside a frame")
        end = index + code
        if end > length:
            raise ValueError("COBS: block runs past the end of the frame")
        block = data[index + 1 : end]
        if 0 in block:
            raise ValueError("COBS: zero byte inside a frame")
        out += block
        index = end
        if code != 255 and index < length:
            out.append(0)
    return bytes(out)


@dataclass(frozen=True)
class DetectionRecord:
    """One box on the wire: integer pixels and a score quantised to 1/65535."""

    class_id: int
    score_u16: int
    x1: int
    y1: int
    x2: int
    y2: int

    @property
    def score(self) -> float:
        return self.score_u16 / SCORE_SCALE

    @property
    def box(self) -> Tuple[int, int, int, int]:
        return (self.x1, self.y1, self.x2, self.y2)


@dataclass(frozen=True)
class DetectionsMessage:
    """Boxes found in one frame. `total` counts all detections; `records` holds at most MAX_DETECTIONS."""

    seq: int
    timestamp_us: int
    frame_id: int
    width: int
    height: int
    total: int
    records: Tuple[DetectionRecord, ...] = ()
    msg_type: int = field(default=MSG_DETECTIONS, init=False)


@dataclass(frozen=True)
class HeartbeatMessage:
    """Sent at a fixed period, frames or not. fps/latencies are quantised (0.01 fps, 0.1 ms)."""

    seq: int
    timestamp_us: int
    frame_id: int
    state: int
    uptime_s: int
    frames: int
    dropped_frames: int
    fps_x100: int
    latency_p50_x10: int
    latency_p99_x10: int
    msg_type: int = field(default=MSG_HEARTBEAT, init=False)

    @property
    def fps(self) -> float:
        return self.fps_x100 / 100.0

    @property
    def state_name(self) -> str:
        return STATE_NAMES.get(self.state, "unknown")


@dataclass(frozen=True)
class StatusMessage:
    """A change of the vision state (camera lost, stream stale, recovered), with a short reason."""

    seq: int
    timestamp_us: int
    frame_id: int
    state: int
    reason: str
    msg_type: int = field(default=MSG_STATUS, init=False)

    @property
    def state_name(self) -> str:
        return STATE_NAMES.get(self.state, "unknown")


Message = Union[DetectionsMessage, HeartbeatMessage, StatusMessage]


def _u16(value: float) -> int:
    return int(min(max(round(float(value)), 0), 0xFFFF))


def _u32(value: float) -> int:
    return int(value) & 0xFFFFFFFF


def state_code(state: str) -> int:
    """Wire code of a pipeline state string ("ok", "reconnecting", "stale", "ended", "starting")."""
    return STATE_CODES.get(str(state).lower(), STATE_UNKNOWN)


def detections_message(
    seq: int, detections, width: int, height: int, max_detections: int = MAX_DETECTIONS
) -> DetectionsMessage:
    """Quantise a `Detections` (boxes (N,4) float32 pixels, scores (N,), class_ids (N,)) for the wire.

    When N > max_detections the highest-scoring max_detections are kept (`total` still says N).
    """
    count = len(detections)
    order = np.arange(count)
    if count > max_detections:
        order = np.argsort(-detections.scores, kind="stable")[:max_detections]
    boxes = np.clip(np.rint(detections.boxes[order]), 0, 0xFFFF).astype(np.int64)
    scores = np.clip(np.rint(detections.scores[order] * SCORE_SCALE), 0, SCORE_SCALE).astype(np.int64)
    class_ids = np.clip(detections.class_ids[order], 0, 0xFFFF).astype(np.int64)
    records = tuple(
        DetectionRecord(int(c), int(s), int(b[0]), int(b[1]), int(b[2]), int(b[3]))
        for c, s, b in zip(class_ids.tolist(), scores.tolist(), boxes.tolist())
    )
    return DetectionsMessage(
        seq=seq & 0xFFFF,
        timestamp_us=_timestamp_us(detections.timestamp),
        frame_id=_u32(detections.frame_id),
        width=_u16(width),
        height=_u16(height),
        total=min(count, 0xFFFF),
        records=records,
    )


def heartbeat_message(seq: int, timestamp: float, uptime_s: float, stats: dict, frame_id: int = -1) -> HeartbeatMessage:
    """Heartbeat from the pipeline's stats dict (keys used: source_state, frames, dropped_frames, fps, latency_ms_p50/p99)."""
    return HeartbeatMessage(
        seq=seq & 0xFFFF,
        timestamp_us=_timestamp_us(timestamp),
        frame_id=_u32(frame_id),
        state=state_code(stats.get("source_state", "starting")),
        uptime_s=_u32(uptime_s),
        frames=_u32(stats.get("frames") or 0),
        dropped_frames=_u32(stats.get("dropped_frames") or 0),
        fps_x100=_u16(_finite(stats.get("fps")) * 100.0),
        latency_p50_x10=_u16(_finite(stats.get("latency_ms_p50")) * 10.0),
        latency_p99_x10=_u16(_finite(stats.get("latency_ms_p99")) * 10.0),
    )


def status_message(seq: int, timestamp: float, state: str, reason: str, frame_id: int = -1) -> StatusMessage:
    """STATUS message; the reason is cut to MAX_REASON_BYTES of UTF-8 (on a character boundary)."""
    raw = str(reason).encode("utf-8")[:MAX_REASON_BYTES]
    return StatusMessage(
        seq=seq & 0xFFFF,
        timestamp_us=_timestamp_us(timestamp),
        frame_id=_u32(frame_id),
        state=state_code(state),
        reason=raw.decode("utf-8", errors="ignore"),
    )


def _finite(value) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return 0.0
    return number if np.isfinite(number) else 0.0


def _timestamp_us(seconds: float) -> int:
    return int(max(round(float(seconds) * 1e6), 0)) & 0xFFFFFFFFFFFFFFFF


def _payload(message: Message) -> bytes:
    if isinstance(message, DetectionsMessage):
        parts = [DETECTIONS_HEAD.pack(message.width, message.height, message.total, len(message.records))]
        parts.extend(DETECTION_RECORD.pack(r.class_id, r.score_u16, r.x1, r.y1, r.x2, r.y2) for r in message.records)
        return b"".join(parts)
    if isinstance(message, HeartbeatMessage):
        return HEARTBEAT_BODY.pack(
            message.state,
            0,
            message.uptime_s,
            message.frames,
            message.dropped_frames,
            message.fps_x100,
            message.latency_p50_x10,
            message.latency_p99_x10,
        )
    if isinstance(message, StatusMessage):
        reason = message.reason.encode("utf-8")[:MAX_REASON_BYTES]
        return STATUS_HEAD.pack(message.state, len(reason)) + reason
    raise TypeError("not a protocol message: {!r}".format(message))


def pack_message(message: Message, version: int = PROTOCOL_VERSION) -> bytes:
    """Header + payload + CRC, before COBS framing."""
    payload = _payload(message)
    header = HEADER.pack(
        version, message.msg_type, message.seq & 0xFFFF, message.timestamp_us, message.frame_id, len(payload)
    )
    body = header + payload
    return body + CRC.pack(crc16(body))


def encode_message(message: Message) -> bytes:
    """Wire bytes of one message: COBS(header + payload + crc) followed by the 0x00 delimiter."""
    return cobs_encode(pack_message(message)) + b"\x00"


class ProtocolError(ValueError):
    """A frame that is not a valid message; `kind` names the counter it goes to."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def unpack_message(body: bytes) -> Message:
    """Parse a COBS-decoded frame (header + payload + crc); raises ProtocolError."""
    if len(body) < HEADER.size + CRC.size:
        raise ProtocolError("bad_length", "frame of {} bytes is shorter than header + crc".format(len(body)))
    (crc,) = CRC.unpack_from(body, len(body) - CRC.size)
    if crc16(body[: -CRC.size]) != crc:
        raise ProtocolError("bad_crc", "crc mismatch")
    version, msg_type, seq, timestamp_us, frame_id, length = HEADER.unpack_from(body, 0)
    if version != PROTOCOL_VERSION:
        raise ProtocolError("bad_version", "protocol version {} (expected {})".format(version, PROTOCOL_VERSION))
    payload = body[HEADER.size : -CRC.size]
    if len(payload) != length:
        raise ProtocolError("bad_length", "payload length {} but header says {}".format(len(payload), length))
    common = (seq, timestamp_us, frame_id)
    if msg_type == MSG_DETECTIONS:
        if length < DETECTIONS_HEAD.size:
            raise ProtocolError("bad_length", "DETECTIONS payload too short")
        width, height, total, count = DETECTIONS_HEAD.unpack_from(payload, 0)
        if length != DETECTIONS_HEAD.size + count * DETECTION_RECORD.size or count > total:
            raise ProtocolError("bad_length", "DETECTIONS payload does not hold {} records".format(count))
        records = tuple(
            DetectionRecord(*DETECTION_RECORD.unpack_from(payload, DETECTIONS_HEAD.size + i * DETECTION_RECORD.size))
            for i in range(count)
        )
        return DetectionsMessage(*common, width=width, height=height, total=total, records=records)
    if msg_type == MSG_HEARTBEAT:
        if length != HEARTBEAT_BODY.size:
            raise ProtocolError("bad_length", "HEARTBEAT payload of {} bytes".format(length))
        state, _flags, uptime_s, frames, dropped, fps_x100, p50, p99 = HEARTBEAT_BODY.unpack(payload)
        return HeartbeatMessage(*common, state, uptime_s, frames, dropped, fps_x100, p50, p99)
    if msg_type == MSG_STATUS:
        if length < STATUS_HEAD.size:
            raise ProtocolError("bad_length", "STATUS payload too short")
        state, reason_length = STATUS_HEAD.unpack_from(payload, 0)
        if length != STATUS_HEAD.size + reason_length:
            raise ProtocolError("bad_length", "STATUS reason length {} does not match".format(reason_length))
        reason = payload[STATUS_HEAD.size :].decode("utf-8", errors="replace")
        return StatusMessage(*common, state=state, reason=reason)
    raise ProtocolError("unknown_type", "unknown message type 0x{:02x}".format(msg_type))


class Decoder:
    """Streaming decoder: feed bytes in any chunking, get whole messages back.

    Frames end at 0x00. A frame that fails COBS, CRC, length, version or type checks is dropped and
    counted in `errors` (by kind); decoding resumes at the next delimiter. Bytes piling up beyond
    MAX_FRAME_BYTES without a delimiter are discarded (counted as "oversize").
    """

    ERROR_KINDS = ("bad_cobs", "bad_crc", "bad_length", "bad_version", "unknown_type", "oversize")

    def __init__(self, max_frame_bytes: int = MAX_FRAME_BYTES) -> None:
        self.max_frame_bytes = max_frame_bytes
        self.errors: Dict[str, int] = {kind: 0 for kind in self.ERROR_KINDS}
        self.decoded = 0
        self._buffer = bytearray()
        self._discarding = False

    @property
    def rejected(self) -> int:
        """Frames rejected so far, all kinds together."""
        return sum(self.errors.values())

    def feed(self, data: bytes) -> List[Message]:
        messages: List[Message] = []
        start = 0
        while True:
            end = data.find(b"\x00", start)
            if end < 0:
                self._append(data[start:])
                return messages
            self._append(data[start:end])
            frame = bytes(self._buffer)
            discarding = self._discarding
            self._buffer.clear()
            self._discarding = False
            start = end + 1
            if discarding or not frame:
                continue
            message = self._decode_frame(frame)
            if message is not None:
                messages.append(message)

    def _append(self, chunk: bytes) -> None:
        if self._discarding or not chunk:
            return
        self._buffer += chunk
        if len(self._buffer) > self.max_frame_bytes:
            self.errors["oversize"] += 1
            self._buffer.clear()
            self._discarding = True

    def _decode_frame(self, frame: bytes):
        try:
            body = cobs_decode(frame)
        except ValueError:
            self.errors["bad_cobs"] += 1
            return None
        try:
            message = unpack_message(body)
        except ProtocolError as error:
            self.errors[error.kind] += 1
            return None
        self.decoded += 1
        return message


def format_text(message: Message, classes: Sequence[str] = ()) -> str:
    """One line per message for ``--serial-mode text`` (no trailing newline).

    DET seq=12 t=123.456789 frame=40 640x480 n=2 | 0 short 0.910 10,20,30,40 | 3 spur 0.502 5,6,7,8
    HB seq=13 t=124.000000 state=ok up=61 frames=900 dropped=3 fps=14.98 p50=41.2ms p99=60.3ms
    STATUS seq=14 t=124.100000 state=reconnecting reason="camera lost"
    """
    head = "seq={} t={:.6f}".format(message.seq, message.timestamp_us / 1e6)
    frame = "" if message.frame_id == NO_FRAME else " frame={}".format(message.frame_id)
    if isinstance(message, DetectionsMessage):
        parts = ["DET {}{} {}x{} n={}".format(head, frame, message.width, message.height, message.total)]
        for r in message.records:
            name = classes[r.class_id] if r.class_id < len(classes) else "class{}".format(r.class_id)
            parts.append("{} {} {:.3f} {},{},{},{}".format(r.class_id, name, r.score, r.x1, r.y1, r.x2, r.y2))
        return " | ".join(parts)
    if isinstance(message, HeartbeatMessage):
        return "HB {}{} state={} up={} frames={} dropped={} fps={:.2f} p50={:.1f}ms p99={:.1f}ms".format(
            head,
            frame,
            message.state_name,
            message.uptime_s,
            message.frames,
            message.dropped_frames,
            message.fps,
            message.latency_p50_x10 / 10.0,
            message.latency_p99_x10 / 10.0,
        )
    if isinstance(message, StatusMessage):
        reason = message.reason.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ")
        return 'STATUS {}{} state={} reason="{}"'.format(head, frame, message.state_name, reason)
    raise TypeError("not a protocol message: {!r}".format(message))
