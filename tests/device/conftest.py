"""Fixtures shared by the device tests."""

from __future__ import annotations

import pytest

from device.detector import Detector


@pytest.fixture(scope="module")
def detector(tiny_bundle):
    with Detector(tiny_bundle, threads=1) as det:
        yield det
