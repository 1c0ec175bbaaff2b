#!/usr/bin/env python3
"""Reference decoder for the edge-sdk serial protocol v1 (docs/serial-protocol.md). Standard library only.

Copy this file to the robot controller's side. Usage:

    stty -F /dev/ttyUSB0 115200 raw -echo && python3 serial_decoder.py /dev/ttyUSB0
    python3 serial_decoder.py capture.bin        # a file of captured bytes
    some-command | python3 serial_decoder.py -   # stdin

In code: `decoder = Decoder(); for message in decoder.feed(chunk): ...` where each message is a dict
with "type" ("DETECTIONS", "HEARTBEAT", "STATUS"), "seq", "timestamp_us", "frame_id" and the type's
fields. `decoder.errors` counts rejected frames by reason.
"""

import struct
import sys

VERSION = 1
HEADER = struct.Struct("<BBHQIH")  # version, type, seq, timestamp_us, frame_id, payload_length
STATES = {0: "ok", 1: "reconnecting", 2: "stale", 3: "ended", 4: "starting"}
MAX_FRAME_BYTES = 4096


def crc16_ccitt_false(data, crc=0xFFFF):
    """CRC-16/CCITT-FALSE: poly 0x1021, init 0xFFFF, MSB first, no final xor. "123456789" -> 0x29B1."""
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
            crc &= 0xFFFF
    return crc


def cobs_decode(frame):
    """COBS-decode one frame (without its 0x00 delimiter); None if malformed."""
    out = bytearray()
    i = 0
    while i < len(frame):
        code = frame[i]
        if code == 0 or i + code > len(frame):
            return None
        out += frame[i + 1 : i + code]
        i += code
        if code < 0xFF and i < len(frame):
            out.append(0)
    return bytes(out)


def parse(body):
    """Parse header + payload + crc into a dict; returns (message, None) or (None, error_reason)."""
    if len(body) < HEADER.size + 2:
        return None, "bad_length"
    if crc16_ccitt_false(body[:-2]) != struct.unpack_from("<H", body, len(body) - 2)[0]:
        return None, "bad_crc"
    version, kind, seq, timestamp_us, frame_id, length = HEADER.unpack_from(body, 0)
    if version != VERSION:
        return None, "bad_version"
    payload = body[HEADER.size : -2]
    if len(payload) != length:
        return None, "bad_length"
    message = {"seq": seq, "timestamp_us": timestamp_us, "frame_id": None if frame_id == 0xFFFFFFFF else frame_id}
    if kind == 0x01 and length >= 8:
        width, height, total, count = struct.unpack_from("<HHHH", payload, 0)
        if length != 8 + 12 * count:
            return None, "bad_length"
        detections = []
        for i in range(count):
            class_id, score, x1, y1, x2, y2 = struct.unpack_from("<HHHHHH", payload, 8 + 12 * i)
            detections.append({"class_id": class_id, "score": score / 65535.0, "box": (x1, y1, x2, y2)})
        message.update(type="DETECTIONS", width=width, height=height, total=total, detections=detections)
    elif kind == 0x02 and length == 20:
        state, _flags, uptime_s, frames, dropped, fps, p50, p99 = struct.unpack("<BBIIIHHH", payload)
        message.update(
            type="HEARTBEAT",
            state=STATES.get(state, "unknown"),
            uptime_s=uptime_s,
            frames=frames,
            dropped_frames=dropped,
            fps=fps / 100.0,
            latency_ms_p50=p50 / 10.0,
            latency_ms_p99=p99 / 10.0,
        )
    elif kind == 0x03 and length >= 2 and length == 2 + payload[1]:
        reason = payload[2:].decode("utf-8", "replace")
        message.update(type="STATUS", state=STATES.get(payload[0], "unknown"), reason=reason)
    elif kind in (0x01, 0x02, 0x03):
        return None, "bad_length"
    else:
        return None, "unknown_type"
    return message, None


class Decoder:
    """Feed bytes as they arrive; get complete, checked messages. Resynchronises at every 0x00."""

    def __init__(self):
        self.buffer = bytearray()
        self.discarding = False
        self.errors = {}

    def feed(self, data):
        messages = []
        for byte in data:
            if byte != 0:
                if not self.discarding:
                    self.buffer.append(byte)
                    if len(self.buffer) > MAX_FRAME_BYTES:
                        self._reject("oversize")
                        self.buffer.clear()
                        self.discarding = True
                continue
            frame, discarding = bytes(self.buffer), self.discarding
            self.buffer.clear()
            self.discarding = False
            if discarding or not frame:
                continue
            body = cobs_decode(frame)
            if body is None:
                self._reject("bad_cobs")
                continue
            message, error = parse(body)
            if error:
                self._reject(error)
            else:
                messages.append(message)
        return messages

    def _reject(self, reason):
        self.errors[reason] = self.errors.get(reason, 0) + 1


def main(argv):
    path = argv[1] if len(argv) > 1 else "-"
    stream = sys.stdin.buffer if path == "-" else open(path, "rb", buffering=0)
    decoder = Decoder()
    while True:
        chunk = stream.read(4096)
        if not chunk:
            break
        for message in decoder.feed(chunk):
            print(message, flush=True)
    if decoder.errors:
        print("rejected frames:", decoder.errors, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
