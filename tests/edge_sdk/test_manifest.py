"""Manifest validation: every refusal is one ManifestError naming the field as `manifest field PATH`."""

from __future__ import annotations

import copy
import re
from typing import Any, Dict

import pytest

from edge_sdk.errors import ManifestError
from edge_sdk.manifest import FileEntry, InputSpec, Manifest, ShapeRange, StageMetrics, TensorRTHints

DELETE = object()


def full_manifest() -> Dict[str, Any]:
    """A valid manifest document with every optional part filled in."""
    return Manifest(
        name="pcb-defects",
        version="1.2.0",
        architecture="yolov3_mobilenet_v1",
        classes=("missing_hole", "short"),
        input=InputSpec(size=(96, 96)),
        tensorrt=TensorRTHints(dynamic_shapes={"image": ShapeRange((1, 3, 64, 64), (1, 3, 96, 96), (1, 3, 128, 128))}),
        metrics=(StageMetrics("train", map50=0.5),),
        files=(FileEntry("model/model.pdmodel", 3, "a" * 64),),
    ).to_dict()


def changed(path: str, value: Any) -> Dict[str, Any]:
    """full_manifest() with the value at `path` ("input/size/1") replaced, or removed for DELETE."""
    doc = copy.deepcopy(full_manifest())
    *parents, last = path.split("/")
    node: Any = doc
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    key = int(last) if isinstance(node, list) else last
    if value is DELETE:
        del node[key]
    else:
        node[key] = value
    return doc


def test_round_trip_is_exact():
    doc = full_manifest()
    assert Manifest.from_dict(doc).to_dict() == doc
    assert Manifest.from_dict(doc) == Manifest.from_dict(copy.deepcopy(doc))


@pytest.mark.parametrize(
    "path, value, message",
    [
        ("input/size/1", -3, r"manifest field input\.size\[1\]: expected an integer between 1 and 4096, got -3"),
        ("input/size/1", "x", r"manifest field input\.size\[1\]: expected an integer between 1 and 4096, got 'x'"),
        ("input/size", [10**9, 10**9], r"manifest field input\.size\[0\]: expected an integer between 1 and 4096"),
        ("input/size/1", 4097, r"manifest field input\.size\[1\]: expected an integer between 1 and 4096, got 4097"),
        ("input/size", [1], r"manifest field input\.size: expected a list of 2 items, got \[1\]"),
        ("input/size", DELETE, r"manifest field input\.size is missing"),
        ("input/resize_mode", "squash", r"manifest field input\.resize_mode: expected one of stretch, keep_ratio"),
        ("input/resize_mode", DELETE, r"manifest field input\.resize_mode is missing"),
        ("input/std/2", 0, r"manifest field input\.std\[2\]: expected a number >= 1e-12, got 0"),
        ("input/scale", 1, r"manifest field input\.scale: expected true or false, got 1"),
        ("input", 3, r"manifest field input: expected a mapping of fields, got 3"),
        ("quantization/method", DELETE, r"manifest field quantization\.method is missing"),
        ("quantization/algo", 3, r"manifest field quantization\.algo: expected a string, got 3"),
        ("quantization/float_layers", [3], r"manifest field quantization\.float_layers\[0\]: expected a non-empty"),
        ("precision", "int8", r"manifest field quantization\.method: 'none' does not match precision 'int8'"),
        ("postprocess/conf_threshold", -1, r"manifest field postprocess\.conf_threshold: expected a number between 0"),
        ("postprocess/nms_top_k", 1.5, r"manifest field postprocess\.nms_top_k: expected an integer between 1 and"),
        (
            "postprocess/score_threshold",
            1.5,
            r"manifest field postprocess\.score_threshold: expected a number between 0 and 1, got 1\.5",
        ),
        (
            "postprocess/score_threshold",
            -0.1,
            r"manifest field postprocess\.score_threshold: expected a number between 0 and 1",
        ),
        (
            "postprocess/score_threshold",
            float("nan"),
            r"manifest field postprocess\.score_threshold: expected a number between 0 and 1, got nan",
        ),
        ("postprocess/nms_iou", 2, r"manifest field postprocess\.nms_iou: expected a number between 0 and 1, got 2"),
        (
            "postprocess/keep_top_k",
            10**12,
            r"manifest field postprocess\.keep_top_k: expected an integer between 1 and 10000",
        ),
        (
            "tensorrt/workspace_bytes",
            10**30,
            r"manifest field tensorrt\.workspace_bytes: expected an integer between 1 and",
        ),
        (
            "tensorrt/dynamic_shapes/image/max/2",
            10**9,
            r"manifest field tensorrt\.dynamic_shapes\.image\.max\[2\]: expected an integer between 1 and 4096",
        ),
        ("postprocess/score_threshold", DELETE, r"manifest field postprocess\.score_threshold is missing"),
        ("tensorrt/dynamic_shapes", [], r"manifest field tensorrt\.dynamic_shapes: expected a mapping, got \[\]"),
        ("tensorrt/dynamic_shapes/image/max/2", 0, r"manifest field tensorrt\.dynamic_shapes\.image\.max\[2\]: "),
        ("tensorrt/dynamic_shapes/image/min", [1, 3], r"manifest field tensorrt\.dynamic_shapes\.image: .* same rank"),
        ("tensorrt/dynamic_shapes/image/opt/2", 200, r"manifest field tensorrt\.dynamic_shapes\.image: .*min <= opt"),
        (
            "metrics/0/map50",
            -1,
            r"manifest field metrics\[0\]\.map50: expected a number between 0 and 1 or null, got -1",
        ),
        ("metrics/0/stage", DELETE, r"manifest field metrics\[0\]\.stage is missing"),
        ("target/compute_capability/0", 7.2, r"manifest field target\.compute_capability\[0\]: expected a non-empty"),
        ("provenance/recipe_sha256", 5, r"manifest field provenance\.recipe_sha256: expected a string, got 5"),
        ("files/0/sha256", "A" * 64, r"manifest field files\[0\]\.sha256: expected 64 lowercase hex digits"),
        ("files/0/size", -1, r"manifest field files\[0\]\.size: expected an integer >= 0, got -1"),
        ("classes", [], r"manifest field classes: expected at least one class, got \[\]"),
        ("name", "", r"manifest field name: expected a non-empty string, got ''"),
        ("schema_version", DELETE, r"manifest field schema_version is missing"),
        ("schema_version", 2, r"manifest schema_version 2 is not supported \(this SDK reads 1\)"),
        ("run_this", "os.system", r"manifest has unknown field\(s\): run_this"),
    ],
)
def test_refusal_names_the_field(path, value, message):
    with pytest.raises(ManifestError) as info:
        Manifest.from_dict(changed(path, value))
    assert re.match(message, str(info.value)), str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("path", ["quantization", "provenance", "metrics", "files", "created_at", "metrics/0/map"])
def test_optional_parts_may_be_left_out(path):
    Manifest.from_dict(changed(path, DELETE))


def test_a_root_that_is_not_an_object_is_refused():
    with pytest.raises(ManifestError, match=r"^manifest field <root>: expected an object, got \[\]$"):
        Manifest.from_dict([])  # type: ignore[arg-type]
