"""The tiny model for the compress tests, and its bundle and program exported by compress itself
(overriding the checked-in export of tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.compress.tiny_export import build_tiny_model, export_tiny_bundle
from tests.conftest import TINY_INPUT_SIZE


@pytest.fixture(scope="session")
def tiny_model():
    """The tiny YOLOv3 (eval mode) behind `tiny_bundle`; do not modify it in a test."""
    return build_tiny_model()


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_model, tmp_path_factory) -> Path:
    """Folder holding model.pdmodel and model.pdiparams of the tiny model, exported at 96x96."""
    from compress.export import export_inference

    out_dir = tmp_path_factory.mktemp("tiny_model")
    export_inference(tiny_model, TINY_INPUT_SIZE, out_dir)
    return out_dir


@pytest.fixture(scope="session")
def tiny_bundle(tiny_model, tmp_path_factory) -> Path:
    """Path to an unsigned fp32 bundle "tiny-0.1.0" of the tiny model, as compress exports it today."""
    return export_tiny_bundle(tiny_model, tmp_path_factory.mktemp("tiny_bundle") / "tiny-0.1.0.edgebundle")
