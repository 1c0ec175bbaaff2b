"""Serial protocol v1: round trips, streaming in random chunks, corruption, resync, and the reference decoder."""

from __future__ import annotations

import importlib.util
import random
import re
from pathlib import Path

import numpy as np
import pytest

from device.sinks import protocol
from device.sinks.protocol import (
    Decoder,
    DetectionsMessage,
    HeartbeatMessage,
    StatusMessage,
    cobs_decode,
    cobs_encode,
    crc16,
    encode_message,
    format_text,
)
from edge_sdk.detections import Detections

REFERENCE_DECODER = Path(__file__).resolve().parents[2] / "docs" / "serial_decoder.py"


def _detections(n, rng, frame_id=7, timestamp=12.5):
    x1y1 = rng.uniform(0, 600, size=(n, 2))
    wh = rng.uniform(1, 100, size=(n, 2))
    return Detections(
        np.concatenate([x1y1, x1y1 + wh], axis=1),
        rng.uniform(0, 1, size=n),
        rng.integers(0, 6, size=n),
        frame_id=frame_id,
        timestamp=timestamp,
    )


def _random_messages(count, seed=0):
    rng = np.random.default_rng(seed)
    messages = []
    for seq in range(count):
        kind = seq % 5
        if kind == 3:
            stats = {"source_state": "ok", "frames": seq * 3, "dropped_frames": seq, "fps": 14.97}
            messages.append(protocol.heartbeat_message(seq, 100.0 + seq, seq, stats, frame_id=seq))
        elif kind == 4:
            messages.append(protocol.status_message(seq, 100.0 + seq, "stale", "no frame for {} s".format(seq)))
        else:
            dets = _detections(int(rng.integers(0, 9)), rng, frame_id=seq, timestamp=100.0 + seq)
            messages.append(protocol.detections_message(seq, dets, 640, 480))
    return messages


def _load_reference_decoder():
    spec = importlib.util.spec_from_file_location("serial_decoder_reference", str(REFERENCE_DECODER))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_crc16_ccitt_false_check_value():
    assert crc16(b"123456789") == 0x29B1
    assert _load_reference_decoder().crc16_ccitt_false(b"123456789") == 0x29B1


@pytest.mark.parametrize(
    "raw, encoded",
    [
        (b"\x00", b"\x01\x01"),
        (b"\x00\x00", b"\x01\x01\x01"),
        (b"\x11\x22\x00\x33", b"\x03\x11\x22\x02\x33"),
        (b"\x11\x22\x33\x44", b"\x05\x11\x22\x33\x44"),
        (b"\x11\x00\x00\x00", b"\x02\x11\x01\x01\x01"),
        (bytes(range(1, 255)), b"\xff" + bytes(range(1, 255)) + b"\x01"),
        (bytes(range(0, 255)), b"\x01\xff" + bytes(range(1, 255)) + b"\x01"),
    ],
)
def test_cobs_matches_published_examples(raw, encoded):
    assert cobs_encode(raw) == encoded
    assert cobs_decode(encoded) == raw


def test_cobs_round_trips_random_data_without_zeros():
    rng = random.Random(1)
    for length in list(range(0, 600, 7)) + [253, 254, 255, 508, 509]:
        data = bytes(rng.choice([0, 0, 1, 255, rng.randrange(256)]) for _ in range(length))
        encoded = cobs_encode(data)
        assert 0 not in encoded
        assert cobs_decode(encoded) == data


def test_every_message_type_round_trips():
    rng = np.random.default_rng(3)
    dets = Detections(
        np.array([[10.4, 20.6, 30.0, 40.0], [0.0, 0.0, 639.0, 479.0]]),
        np.array([0.91, 1.0]),
        np.array([3, 0]),
        frame_id=41,
        timestamp=123.456789,
    )
    det_msg = protocol.detections_message(12, dets, 640, 480)
    stats = {"source_state": "reconnecting", "frames": 900, "dropped_frames": 3, "fps": 14.98, "latency_ms_p50": 41.25}
    heartbeat = protocol.heartbeat_message(13, 124.0, 61.7, stats, frame_id=41)
    status = protocol.status_message(14, 124.1, "stale", "no frame for 2.0 s (camera csi://0)", frame_id=41)
    empty = protocol.detections_message(15, Detections.empty(frame_id=42, timestamp=125.0), 640, 480)
    many = protocol.detections_message(16, _detections(300, rng), 640, 480)

    decoder = Decoder()
    decoded = decoder.feed(b"".join(encode_message(m) for m in (det_msg, heartbeat, status, empty, many)))
    assert decoded == [det_msg, heartbeat, status, empty, many]
    assert decoder.rejected == 0

    got = decoded[0]
    assert isinstance(got, DetectionsMessage)
    assert (got.seq, got.timestamp_us, got.frame_id, got.width, got.height, got.total) == (
        12,
        123456789,
        41,
        640,
        480,
        2,
    )
    assert [r.box for r in got.records] == [(10, 21, 30, 40), (0, 0, 639, 479)]
    assert [r.class_id for r in got.records] == [3, 0]
    assert abs(got.records[0].score - 0.91) < 1 / 65535 and got.records[1].score_u16 == 65535
    assert isinstance(decoded[1], HeartbeatMessage)
    assert decoded[1].state_name == "reconnecting" and decoded[1].uptime_s == 61 and decoded[1].fps == 14.98
    assert decoded[1].latency_p50_x10 == 412 or decoded[1].latency_p50_x10 == 413
    assert isinstance(decoded[2], StatusMessage) and decoded[2].reason == "no frame for 2.0 s (camera csi://0)"
    assert decoded[3].total == 0 and decoded[3].records == ()
    # More boxes than fit: the highest scores are kept, the total still says how many there were.
    assert decoded[4].total == 300 and len(decoded[4].records) == protocol.MAX_DETECTIONS
    kept = sorted(r.score_u16 for r in decoded[4].records)
    assert kept[0] >= sorted(np.rint(_detections(300, np.random.default_rng(3)).scores * 65535))[300 - 255] - 1


def test_status_reason_is_cut_on_a_character_boundary():
    message = protocol.status_message(1, 1.0, "reconnecting", "caméra perdue " * 10)
    assert len(message.reason.encode("utf-8")) <= protocol.MAX_REASON_BYTES
    assert Decoder().feed(encode_message(message)) == [message]


def test_random_chunking_of_a_long_stream_decodes_everything():
    messages = _random_messages(600)
    stream = b"".join(encode_message(m) for m in messages)
    rng = random.Random(7)
    decoder = Decoder()
    decoded = []
    position = 0
    while position < len(stream):
        size = rng.choice([1, 2, 3, rng.randrange(1, 64), rng.randrange(1, 700)])
        decoded += decoder.feed(stream[position : position + size])
        position += size
    assert decoded == messages
    assert decoder.rejected == 0


def test_bit_flips_reject_only_the_damaged_frames():
    messages = _random_messages(400, seed=2)
    frames = [bytearray(encode_message(m)) for m in messages]
    rng = random.Random(11)
    damaged = set(rng.sample(range(len(frames)), 60))
    for index in damaged:
        frame = frames[index]
        position = rng.randrange(len(frame) - 1)  # not the delimiter
        bit = rng.randrange(8)
        frame[position] ^= 1 << bit  # a flip to 0x00 splits the frame: both halves must be rejected
    decoder = Decoder()
    decoded = decoder.feed(b"".join(bytes(f) for f in frames))
    expected = [m for i, m in enumerate(messages) if i not in damaged]
    assert decoded == expected
    assert decoder.rejected >= len(damaged)
    assert decoder.errors["bad_crc"] + decoder.errors["bad_cobs"] + decoder.errors["bad_length"] >= len(damaged) // 2


def test_garbage_between_frames_resynchronises_at_the_next_delimiter():
    messages = _random_messages(50, seed=4)
    rng = random.Random(5)
    stream = bytearray()
    for message in messages:
        garbage = bytes(rng.randrange(1, 256) for _ in range(rng.randrange(0, 40)))
        stream += garbage + b"\x00" + encode_message(message)
    stream += bytes(rng.randrange(1, 256) for _ in range(5000)) + b"\x00"  # longer than any frame
    stream += encode_message(messages[0])
    decoder = Decoder()
    decoded = decoder.feed(bytes(stream))
    assert decoded == messages + [messages[0]]
    assert decoder.errors["oversize"] == 1
    # Garbage glued to the front of a frame (no delimiter in between) costs that frame, not the next.
    glued = b"\x13\x37" + encode_message(messages[1]) + encode_message(messages[2])
    assert Decoder().feed(glued) == [messages[2]]


def test_unknown_version_and_type_are_rejected_and_counted():
    message = protocol.status_message(1, 1.0, "ok", "recovered")
    other_version = cobs_encode(protocol.pack_message(message, version=2)) + b"\x00"
    body = bytearray(protocol.pack_message(message))
    body[1] = 0x7F
    body[-2:] = crc16(bytes(body[:-2])).to_bytes(2, "little")
    unknown_type = cobs_encode(bytes(body)) + b"\x00"
    decoder = Decoder()
    assert decoder.feed(other_version + unknown_type + encode_message(message)) == [message]
    assert decoder.errors["bad_version"] == 1 and decoder.errors["unknown_type"] == 1


def test_sequence_number_wraps_at_16_bits():
    dets = Detections.empty(frame_id=1, timestamp=1.0)
    sequence = [protocol.detections_message(seq, dets, 64, 48) for seq in (65534, 65535, 65536, 65537)]
    decoded = Decoder().feed(b"".join(encode_message(m) for m in sequence))
    assert [m.seq for m in decoded] == [65534, 65535, 0, 1]


def test_reference_decoder_decodes_the_same_stream():
    reference = _load_reference_decoder()
    messages = _random_messages(200, seed=9)
    frames = [bytearray(encode_message(m)) for m in messages]
    for index in (5, 50, 120):
        frames[index][3] ^= 0x10
    stream = b"\x00\x55\x66" + b"".join(bytes(f) for f in frames)
    ours = Decoder()
    decoded = ours.feed(stream)
    theirs = reference.Decoder()
    decoded_ref = []
    for start in range(0, len(stream), 97):
        decoded_ref += theirs.feed(stream[start : start + 97])
    # Lost: the three damaged frames, and the first one (garbage glued to its front, no delimiter between).
    assert decoded == [m for i, m in enumerate(messages) if i not in (0, 5, 50, 120)]
    assert len(decoded_ref) == len(decoded) == 196
    assert sum(theirs.errors.values()) == ours.rejected == 4
    for mine, ref in zip(decoded, decoded_ref):
        assert ref["seq"] == mine.seq and ref["timestamp_us"] == mine.timestamp_us
        if isinstance(mine, DetectionsMessage):
            assert ref["type"] == "DETECTIONS" and ref["total"] == mine.total
            assert [d["box"] for d in ref["detections"]] == [r.box for r in mine.records]
            assert [d["class_id"] for d in ref["detections"]] == [r.class_id for r in mine.records]
        elif isinstance(mine, HeartbeatMessage):
            assert ref["type"] == "HEARTBEAT" and ref["fps"] == mine.fps and ref["state"] == mine.state_name
        else:
            assert ref["type"] == "STATUS" and ref["reason"] == mine.reason and ref["state"] == mine.state_name


def test_text_mode_lines():
    dets = Detections(np.array([[10, 20, 30, 40]]), np.array([0.91]), np.array([3]), frame_id=5, timestamp=123.456)
    line = format_text(protocol.detections_message(12, dets, 640, 480), ["a", "b", "c", "short"])
    assert line == "DET seq=12 t=123.456000 frame=5 640x480 n=1 | 3 short 0.910 10,20,30,40"
    heartbeat = protocol.heartbeat_message(13, 2.0, 61, {"source_state": "ok", "fps": 15})
    assert format_text(heartbeat).startswith("HB seq=13 t=2.000000 state=ok up=61")
    status = protocol.status_message(14, 3.0, "reconnecting", 'camera "0" lost')
    assert format_text(status) == 'STATUS seq=14 t=3.000000 state=reconnecting reason="camera \\"0\\" lost"'


def test_the_documented_examples_are_what_the_encoder_sends():
    text = (Path(__file__).resolve().parents[2] / "docs" / "serial-protocol.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```\nraw (.*?)\nwire (.*?)\ntext (.*?)\n```", text, flags=re.S)
    assert len(blocks) == 4
    classes = ["missing_hole", "mouse_bite", "open_circuit", "short"]
    for raw_hex, wire_hex, line in blocks:
        raw = bytes.fromhex(raw_hex.replace("\n", " "))
        wire = bytes.fromhex(wire_hex.replace("\n", " "))
        (message,) = Decoder().feed(wire)
        assert protocol.pack_message(message) == raw
        assert encode_message(message) == wire
        assert format_text(message, classes) == line
