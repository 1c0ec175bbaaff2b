"""The bundle manifest (schema v1): everything the robot needs to preprocess, run and postprocess.

The manifest is the contract between workstation and robot: the runtime never guesses. Every
field is typed and validated on load (`edge_sdk.schema`); an invalid field raises `ManifestError`
naming it (``manifest field input.size[1]: expected an integer >= 1, got -3``). `Manifest.to_dict` / `Manifest.from_dict`
round-trip exactly, and `canonical_bytes` is what a signature covers.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Dict, Optional, Tuple

from edge_sdk.errors import ManifestError
from edge_sdk.schema import Schema, checked, to_plain

SCHEMA_VERSION = 1
ARCHS = ("mobilenet_v1", "darknet53", "mobilenet_v3_large")
"""YOLOv3 backbones the SDK builds and trains; a bundle's architecture is yolov3_ARCH."""
PRECISIONS = ("fp32", "fp16", "int8")
INT8_METHODS = ("none", "ptq", "qat")
RESIZE_MODES = ("stretch", "keep_ratio")
INTERPOLATIONS = ("nearest", "linear", "cubic", "area")
CHANNEL_ORDERS = ("RGB", "BGR")
MAX_INPUT_SIDE = 4096
"""Largest network input height or width, in pixels: a 4K camera frame fits."""
MAX_DETECTIONS = 10_000
"""Most boxes a bundle may keep per image after NMS (keep_top_k)."""
MAX_NMS_CANDIDATES = 100_000
"""Most candidate boxes a bundle may feed NMS per class (nms_top_k)."""
MAX_WORKSPACE_BYTES = 1 << 36
"""Largest TensorRT workspace a bundle may ask for (64 GiB; a Xavier has 32 GiB in all)."""


_SCHEMA = Schema(ManifestError, prefix="manifest field ", ignore_unknown=True)


def _fail(path: str, expected: str, value: Any) -> ManifestError:
    return ManifestError("manifest field {}: expected {}, got {!r}".format(path, expected, value))


@dataclass(frozen=True)
class InputSpec:
    """How an image becomes the `image` tensor [1,3,H,W] float32.

    size: (height, width) in pixels fed to the network, each at most MAX_INPUT_SIDE (no multiple
    is enforced here: YOLOv3 needs multiples of 32, imported PaddleDetection models may not).
    resize_mode: "stretch" (ignore aspect ratio, as PaddleDetection's YOLOv3) or "keep_ratio".
    interpolation: OpenCV interpolation name used for the resize.
    mean, std: per channel in `channel_order`, applied after dividing by 255 if `scale` is true.
    """

    size: Tuple[int, int] = checked(minimum=1, maximum=MAX_INPUT_SIDE)
    resize_mode: str = checked("stretch", choices=RESIZE_MODES, required=True)
    interpolation: str = checked("cubic", choices=INTERPOLATIONS, required=True)
    mean: Tuple[float, float, float] = checked((0.485, 0.456, 0.406), required=True)
    std: Tuple[float, float, float] = checked((0.229, 0.224, 0.225), minimum=1e-12, required=True)
    channel_order: str = checked("RGB", choices=CHANNEL_ORDERS, required=True)
    scale: bool = checked(True, required=True)


@dataclass(frozen=True)
class Quantization:
    """How INT8 scales were obtained: method "none" (float bundle), "ptq" or "qat".

    algo: PTQ algorithm (KL, hist, avg, mse, abs_max) or "" for none/qat.
    calibration_images: number of images the scales were computed on.
    float_layers: names of layers kept in float by the accuracy budget.
    """

    method: str = checked("none", choices=INT8_METHODS, required=True)
    algo: str = checked("", allow_empty=True)
    calibration_images: int = checked(0, minimum=0)
    float_layers: Tuple[str, ...] = ()


@dataclass(frozen=True)
class ShapeRange:
    """TensorRT dynamic shape range of one input: min, opt and max shapes (same rank)."""

    min: Tuple[int, ...] = checked(minimum=1, maximum=MAX_INPUT_SIDE)
    opt: Tuple[int, ...] = checked(minimum=1, maximum=MAX_INPUT_SIDE)
    max: Tuple[int, ...] = checked(minimum=1, maximum=MAX_INPUT_SIDE)


@dataclass(frozen=True)
class TensorRTHints:
    """Settings for Paddle-TensorRT on the robot. workspace_bytes in bytes."""

    min_subgraph_size: int = checked(3, minimum=1, required=True)
    workspace_bytes: int = checked(1 << 30, minimum=1, maximum=MAX_WORKSPACE_BYTES, required=True)
    dynamic_shapes: Dict[str, ShapeRange] = field(default_factory=dict)


@dataclass(frozen=True)
class Postprocess:
    """Decoding and NMS values baked into the exported graph, and the runtime's default threshold.

    Thresholds and the NMS IoU are in [0, 1]; nms_top_k: candidates per class fed to NMS;
    keep_top_k: boxes kept per image.
    """

    conf_threshold: float = checked(0.005, minimum=0, maximum=1, required=True)
    nms_iou: float = checked(0.45, minimum=0, maximum=1, required=True)
    nms_top_k: int = checked(1000, minimum=1, maximum=MAX_NMS_CANDIDATES, required=True)
    keep_top_k: int = checked(100, minimum=1, maximum=MAX_DETECTIONS, required=True)
    score_threshold: float = checked(0.3, minimum=0, maximum=1, required=True)


@dataclass(frozen=True)
class StageMetrics:
    """Measurements of one compression stage (train, prune, distill, int8, ...).

    map50 / map: COCO mAP@.5 and mAP@[.5:.95] in [0, 1]; flops: multiply-adds x2 at the input
    size; params: count; bytes: size of model files; latency_ms: CPU Paddle Inference median.
    Unmeasured values are null.
    """

    stage: str
    map50: Optional[float] = checked(None, minimum=0, maximum=1)
    map: Optional[float] = checked(None, minimum=0, maximum=1)
    flops: Optional[float] = checked(None, minimum=0)
    params: Optional[float] = checked(None, minimum=0)
    bytes: Optional[float] = checked(None, minimum=0)
    latency_ms: Optional[float] = checked(None, minimum=0)


@dataclass(frozen=True)
class TargetConstraints:
    """What a robot must be to run this bundle. l4t_*: L4T release like "35.1"; cc: "7.2"."""

    l4t_min: str = checked("35.1", required=True)
    l4t_max: str = checked("35.99", required=True)
    compute_capability: Tuple[str, ...] = checked(("7.2",), required=True)
    min_runtime_version: str = checked("0.1.0", required=True)


@dataclass(frozen=True)
class Provenance:
    """sha256 hex digests of what made the model; "" when not applicable."""

    dataset_sha256: str = checked("", allow_empty=True)
    recipe_sha256: str = checked("", allow_empty=True)
    teacher_sha256: str = checked("", allow_empty=True)
    calibration_sha256: str = checked("", allow_empty=True)


@dataclass(frozen=True)
class FileEntry:
    """One bundle member other than manifest.json / manifest.sig. size in bytes."""

    path: str
    size: int = checked(minimum=0)
    sha256: str


@dataclass(frozen=True)
class Manifest:
    """Schema v1. `files` is filled in by `edge_sdk.bundle.write_bundle`."""

    name: str
    version: str
    architecture: str
    classes: Tuple[str, ...]
    input: InputSpec
    precision: str = checked("fp32", choices=PRECISIONS, required=True)
    quantization: Quantization = field(default_factory=Quantization)
    postprocess: Postprocess = checked(default_factory=Postprocess, required=True)
    tensorrt: TensorRTHints = checked(default_factory=TensorRTHints, required=True)
    metrics: Tuple[StageMetrics, ...] = ()
    target: TargetConstraints = checked(default_factory=TargetConstraints, required=True)
    provenance: Provenance = field(default_factory=Provenance)
    created_at: str = checked("", allow_empty=True)
    sdk_version: str = checked("", allow_empty=True)
    paddle_version: str = checked("", allow_empty=True)
    files: Tuple[FileEntry, ...] = ()
    schema_version: int = checked(SCHEMA_VERSION, required=True)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> Manifest:
        if not isinstance(d, dict):
            raise _fail("<root>", "an object", d)
        if "schema_version" not in d:
            raise ManifestError("manifest field schema_version is missing")
        if d["schema_version"] != SCHEMA_VERSION:
            raise ManifestError(
                "manifest schema_version {!r} is not supported (this SDK reads {})".format(
                    d["schema_version"], SCHEMA_VERSION
                )
            )
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise ManifestError("manifest has unknown field(s): " + ", ".join(unknown))
        manifest = _SCHEMA.load(cls, d)
        _check(manifest)
        return manifest  # type: ignore[no-any-return]

    def to_dict(self) -> Dict[str, Any]:
        """Plain JSON types only (tuples become lists)."""
        return json.loads(json.dumps(asdict(self)))

    def canonical_bytes(self) -> bytes:
        """The exact bytes written as manifest.json and covered by manifest.sig."""
        return (json.dumps(self.to_dict(), sort_keys=True, indent=2, ensure_ascii=False) + "\n").encode("utf-8")

    @classmethod
    def from_bytes(cls, data: bytes) -> Manifest:
        try:
            d = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise ManifestError("manifest.json is not valid JSON: {}".format(exc)) from None
        return cls.from_dict(d)

    def file(self, path: str) -> Optional[FileEntry]:
        for entry in self.files:
            if entry.path == path:
                return entry
        return None

    def stage(self, name: str) -> Optional[StageMetrics]:
        for m in self.metrics:
            if m.stage == name:
                return m
        return None


def _check(manifest: Manifest) -> None:
    """Constraints spanning fields, or beyond one field's type and bounds."""
    if not manifest.classes:
        raise _fail("classes", "at least one class", [])
    if (manifest.precision == "int8") != (manifest.quantization.method != "none"):
        raise ManifestError(
            "manifest field quantization.method: {!r} does not match precision {!r}".format(
                manifest.quantization.method, manifest.precision
            )
        )
    for name, shapes in manifest.tensorrt.dynamic_shapes.items():
        path = "tensorrt.dynamic_shapes." + name
        if not len(shapes.min) == len(shapes.opt) == len(shapes.max):
            raise _fail(path, "min, opt and max of the same rank", to_plain(shapes))
        for lo, mid, hi in zip(shapes.min, shapes.opt, shapes.max):
            if not lo <= mid <= hi:
                raise _fail(path, "min <= opt <= max in every dimension", to_plain(shapes))
    for i, entry in enumerate(manifest.files):
        if len(entry.sha256) != 64 or any(c not in "0123456789abcdef" for c in entry.sha256):
            raise _fail("files[{}].sha256".format(i), "64 lowercase hex digits", entry.sha256)
