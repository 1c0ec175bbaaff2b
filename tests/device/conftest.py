"""Fixtures shared by the device tests."""

from __future__ import annotations

import socket
import threading
from types import SimpleNamespace

import pytest

from device.detector import Detector


@pytest.fixture(scope="module")
def detector(tiny_bundle):
    with Detector(tiny_bundle, threads=1) as det:
        yield det


@pytest.fixture
def silent_stream():
    """A TCP server on loopback that accepts every connection and never sends a byte.

    Yields a namespace with `uri` (rtsp://127.0.0.1:PORT/camera) and `accepted` (the
    connections taken so far, so a test can check the server was reached)."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    accepted = []

    def accept_and_stay_silent():
        while True:
            try:
                accepted.append(server.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept_and_stay_silent, daemon=True).start()
    yield SimpleNamespace(uri="rtsp://127.0.0.1:{}/camera".format(server.getsockname()[1]), accepted=accepted)
    server.close()
    for connection in accepted:
        connection.close()
