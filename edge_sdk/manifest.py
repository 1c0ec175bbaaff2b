"""The bundle manifest (schema v1): everything the robot needs to preprocess, run and postprocess.

The manifest is the contract between workstation and robot: the runtime never guesses. Every
field is typed and validated on load; an invalid field raises `ManifestError` naming it
(``input.size[1]: expected int > 0, got -3``). `Manifest.to_dict` / `Manifest.from_dict`
round-trip exactly, and `canonical_bytes` is what a signature covers.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Dict, Optional, Tuple

from edge_sdk.errors import ManifestError

SCHEMA_VERSION = 1
PRECISIONS = ("fp32", "fp16", "int8")
INT8_METHODS = ("none", "ptq", "qat")
RESIZE_MODES = ("stretch", "keep_ratio")
INTERPOLATIONS = ("nearest", "linear", "cubic", "area")
CHANNEL_ORDERS = ("RGB", "BGR")
MAX_INPUT_SIDE = 4096
"""Largest network input height or width, in pixels: a 4K camera frame fits."""


def _fail(path: str, expected: str, value: Any) -> ManifestError:
    return ManifestError("manifest field {}: expected {}, got {!r}".format(path, expected, value))


def _get(d: Dict[str, Any], key: str, path: str, default: Any = ...) -> Any:
    if not isinstance(d, dict):
        raise _fail(path or "<root>", "an object", d)
    if key not in d:
        if default is ...:
            raise ManifestError("manifest field {}{} is missing".format(path + "." if path else "", key))
        return default
    return d[key]


def _str(v: Any, path: str, choices: Optional[Tuple[str, ...]] = None) -> str:
    if not isinstance(v, str) or not v:
        raise _fail(path, "a non-empty string", v)
    if choices is not None and v not in choices:
        raise _fail(path, "one of " + ", ".join(choices), v)
    return v


def _num(v: Any, path: str, minimum: Optional[float] = None, integer: bool = False) -> Any:
    ok_types = (int,) if integer else (int, float)
    if isinstance(v, bool) or not isinstance(v, ok_types):
        raise _fail(path, "an integer" if integer else "a number", v)
    if minimum is not None and v < minimum:
        raise _fail(path, "a value >= {}".format(minimum), v)
    return v


def _opt_num(v: Any, path: str, minimum: Optional[float] = None) -> Optional[float]:
    return None if v is None else float(_num(v, path, minimum))


def _list(v: Any, path: str, length: Optional[int] = None) -> list:
    if not isinstance(v, list):
        raise _fail(path, "a list", v)
    if length is not None and len(v) != length:
        raise _fail(path, "a list of {} items".format(length), v)
    return v


@dataclass(frozen=True)
class InputSpec:
    """How an image becomes the `image` tensor [1,3,H,W] float32.

    size: (height, width) in pixels fed to the network.
    resize_mode: "stretch" (ignore aspect ratio, as PaddleDetection's YOLOv3) or "keep_ratio".
    interpolation: OpenCV interpolation name used for the resize.
    mean, std: per channel in `channel_order`, applied after dividing by 255 if `scale` is true.
    """

    size: Tuple[int, int]
    resize_mode: str = "stretch"
    interpolation: str = "cubic"
    mean: Tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: Tuple[float, float, float] = (0.229, 0.224, 0.225)
    channel_order: str = "RGB"
    scale: bool = True

    @classmethod
    def from_dict(cls, d: Dict[str, Any], path: str = "input") -> InputSpec:
        size = _list(_get(d, "size", path), path + ".size", 2)
        size = tuple(_num(s, "{}.size[{}]".format(path, i), 1, integer=True) for i, s in enumerate(size))
        mean = tuple(
            float(_num(m, "{}.mean[{}]".format(path, i)))
            for i, m in enumerate(_list(_get(d, "mean", path), path + ".mean", 3))
        )
        std = tuple(
            float(_num(s, "{}.std[{}]".format(path, i), 1e-12))
            for i, s in enumerate(_list(_get(d, "std", path), path + ".std", 3))
        )
        scale = _get(d, "scale", path)
        if not isinstance(scale, bool):
            raise _fail(path + ".scale", "true or false", scale)
        return cls(
            size=size,  # type: ignore[arg-type]
            resize_mode=_str(_get(d, "resize_mode", path), path + ".resize_mode", RESIZE_MODES),
            interpolation=_str(_get(d, "interpolation", path), path + ".interpolation", INTERPOLATIONS),
            mean=mean,  # type: ignore[arg-type]
            std=std,  # type: ignore[arg-type]
            channel_order=_str(_get(d, "channel_order", path), path + ".channel_order", CHANNEL_ORDERS),
            scale=scale,
        )


@dataclass(frozen=True)
class Quantization:
    """How INT8 scales were obtained: method "none" (float bundle), "ptq" or "qat".

    algo: PTQ algorithm (KL, hist, avg, mse, abs_max) or "" for none/qat.
    calibration_images: number of images the scales were computed on.
    float_layers: names of layers kept in float by the accuracy budget.
    """

    method: str = "none"
    algo: str = ""
    calibration_images: int = 0
    float_layers: Tuple[str, ...] = ()

    @classmethod
    def from_dict(cls, d: Dict[str, Any], path: str = "quantization") -> Quantization:
        algo = _get(d, "algo", path, "")
        if not isinstance(algo, str):
            raise _fail(path + ".algo", "a string", algo)
        layers = _list(_get(d, "float_layers", path, []), path + ".float_layers")
        return cls(
            method=_str(_get(d, "method", path), path + ".method", INT8_METHODS),
            algo=algo,
            calibration_images=_num(_get(d, "calibration_images", path, 0), path + ".calibration_images", 0, True),
            float_layers=tuple(_str(x, "{}.float_layers[{}]".format(path, i)) for i, x in enumerate(layers)),
        )


@dataclass(frozen=True)
class ShapeRange:
    """TensorRT dynamic shape range of one input: min, opt and max shapes (same rank)."""

    min: Tuple[int, ...]
    opt: Tuple[int, ...]
    max: Tuple[int, ...]

    @classmethod
    def from_dict(cls, d: Dict[str, Any], path: str) -> ShapeRange:
        out = {}
        for key in ("min", "opt", "max"):
            dims = _list(_get(d, key, path), "{}.{}".format(path, key))
            out[key] = tuple(_num(x, "{}.{}[{}]".format(path, key, i), 1, True) for i, x in enumerate(dims))
        if not len(out["min"]) == len(out["opt"]) == len(out["max"]):
            raise _fail(path, "min, opt and max of the same rank", d)
        for lo, mid, hi in zip(out["min"], out["opt"], out["max"]):
            if not lo <= mid <= hi:
                raise _fail(path, "min <= opt <= max in every dimension", d)
        return cls(**out)


@dataclass(frozen=True)
class TensorRTHints:
    """Settings for Paddle-TensorRT on the robot. workspace_bytes in bytes."""

    min_subgraph_size: int = 3
    workspace_bytes: int = 1 << 30
    dynamic_shapes: Dict[str, ShapeRange] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Dict[str, Any], path: str = "tensorrt") -> TensorRTHints:
        shapes = _get(d, "dynamic_shapes", path, {})
        if not isinstance(shapes, dict):
            raise _fail(path + ".dynamic_shapes", "an object", shapes)
        return cls(
            min_subgraph_size=_num(_get(d, "min_subgraph_size", path), path + ".min_subgraph_size", 1, True),
            workspace_bytes=_num(_get(d, "workspace_bytes", path), path + ".workspace_bytes", 1, True),
            dynamic_shapes={
                k: ShapeRange.from_dict(v, "{}.dynamic_shapes.{}".format(path, k)) for k, v in shapes.items()
            },
        )


@dataclass(frozen=True)
class Postprocess:
    """Decoding and NMS values baked into the exported graph, and the runtime's default threshold."""

    conf_threshold: float = 0.005
    nms_iou: float = 0.45
    nms_top_k: int = 1000
    keep_top_k: int = 100
    score_threshold: float = 0.3

    @classmethod
    def from_dict(cls, d: Dict[str, Any], path: str = "postprocess") -> Postprocess:
        return cls(
            conf_threshold=float(_num(_get(d, "conf_threshold", path), path + ".conf_threshold", 0)),
            nms_iou=float(_num(_get(d, "nms_iou", path), path + ".nms_iou", 0)),
            nms_top_k=_num(_get(d, "nms_top_k", path), path + ".nms_top_k", 1, True),
            keep_top_k=_num(_get(d, "keep_top_k", path), path + ".keep_top_k", 1, True),
            score_threshold=float(_num(_get(d, "score_threshold", path), path + ".score_threshold", 0)),
        )


@dataclass(frozen=True)
class StageMetrics:
    """Measurements of one compression stage (train, prune, distill, int8, ...).

    map50 / map: COCO mAP@.5 and mAP@[.5:.95] in [0, 1]; flops: multiply-adds x2 at the input
    size; params: count; bytes: size of model files; latency_ms: CPU Paddle Inference median.
    Unmeasured values are null.
    """

    stage: str
    map50: Optional[float] = None
    map: Optional[float] = None
    flops: Optional[float] = None
    params: Optional[float] = None
    bytes: Optional[float] = None
    latency_ms: Optional[float] = None

    @classmethod
    def from_dict(cls, d: Dict[str, Any], path: str) -> StageMetrics:
        kw = {"stage": _str(_get(d, "stage", path), path + ".stage")}
        for f in fields(cls):
            if f.name != "stage":
                kw[f.name] = _opt_num(_get(d, f.name, path, None), "{}.{}".format(path, f.name), 0)
        return cls(**kw)  # type: ignore[arg-type]


@dataclass(frozen=True)
class TargetConstraints:
    """What a robot must be to run this bundle. l4t_*: L4T release like "35.1"; cc: "7.2"."""

    l4t_min: str = "35.1"
    l4t_max: str = "35.99"
    compute_capability: Tuple[str, ...] = ("7.2",)
    min_runtime_version: str = "0.1.0"

    @classmethod
    def from_dict(cls, d: Dict[str, Any], path: str = "target") -> TargetConstraints:
        cc = _list(_get(d, "compute_capability", path), path + ".compute_capability")
        return cls(
            l4t_min=_str(_get(d, "l4t_min", path), path + ".l4t_min"),
            l4t_max=_str(_get(d, "l4t_max", path), path + ".l4t_max"),
            compute_capability=tuple(_str(c, "{}.compute_capability[{}]".format(path, i)) for i, c in enumerate(cc)),
            min_runtime_version=_str(_get(d, "min_runtime_version", path), path + ".min_runtime_version"),
        )


@dataclass(frozen=True)
class Provenance:
    """sha256 hex digests of what made the model; "" when not applicable."""

    dataset_sha256: str = ""
    recipe_sha256: str = ""
    teacher_sha256: str = ""
    calibration_sha256: str = ""

    @classmethod
    def from_dict(cls, d: Dict[str, Any], path: str = "provenance") -> Provenance:
        kw = {}
        for f in fields(cls):
            v = _get(d, f.name, path, "")
            if not isinstance(v, str):
                raise _fail("{}.{}".format(path, f.name), "a hex string", v)
            kw[f.name] = v
        return cls(**kw)


@dataclass(frozen=True)
class FileEntry:
    """One bundle member other than manifest.json / manifest.sig. size in bytes."""

    path: str
    size: int
    sha256: str

    @classmethod
    def from_dict(cls, d: Dict[str, Any], path: str) -> FileEntry:
        digest = _str(_get(d, "sha256", path), path + ".sha256")
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise _fail(path + ".sha256", "64 lowercase hex digits", digest)
        return cls(
            path=_str(_get(d, "path", path), path + ".path"),
            size=_num(_get(d, "size", path), path + ".size", 0, True),
            sha256=digest,
        )


@dataclass(frozen=True)
class Manifest:
    """Schema v1. `files` is filled in by `edge_sdk.bundle.write_bundle`."""

    name: str
    version: str
    architecture: str
    classes: Tuple[str, ...]
    input: InputSpec
    precision: str = "fp32"
    quantization: Quantization = field(default_factory=Quantization)
    postprocess: Postprocess = field(default_factory=Postprocess)
    tensorrt: TensorRTHints = field(default_factory=TensorRTHints)
    metrics: Tuple[StageMetrics, ...] = ()
    target: TargetConstraints = field(default_factory=TargetConstraints)
    provenance: Provenance = field(default_factory=Provenance)
    created_at: str = ""
    sdk_version: str = ""
    paddle_version: str = ""
    files: Tuple[FileEntry, ...] = ()
    schema_version: int = SCHEMA_VERSION

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> Manifest:
        if not isinstance(d, dict):
            raise _fail("<root>", "an object", d)
        schema = _get(d, "schema_version", "")
        if schema != SCHEMA_VERSION:
            raise ManifestError(
                "manifest schema_version {!r} is not supported (this SDK reads {})".format(schema, SCHEMA_VERSION)
            )
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ManifestError("manifest has unknown field(s): " + ", ".join(unknown))
        classes = _list(_get(d, "classes", ""), "classes")
        if not classes:
            raise _fail("classes", "at least one class", classes)
        precision = _str(_get(d, "precision", ""), "precision", PRECISIONS)
        quant = Quantization.from_dict(_get(d, "quantization", "", {"method": "none"}))
        if (precision == "int8") != (quant.method != "none"):
            raise ManifestError(
                "manifest field quantization.method: {!r} does not match precision {!r}".format(quant.method, precision)
            )
        return cls(
            schema_version=schema,
            name=_str(_get(d, "name", ""), "name"),
            version=_str(_get(d, "version", ""), "version"),
            created_at=_get(d, "created_at", "", ""),
            sdk_version=_get(d, "sdk_version", "", ""),
            paddle_version=_get(d, "paddle_version", "", ""),
            architecture=_str(_get(d, "architecture", ""), "architecture"),
            classes=tuple(_str(c, "classes[{}]".format(i)) for i, c in enumerate(classes)),
            input=InputSpec.from_dict(_get(d, "input", "")),
            precision=precision,
            quantization=quant,
            postprocess=Postprocess.from_dict(_get(d, "postprocess", "")),
            tensorrt=TensorRTHints.from_dict(_get(d, "tensorrt", "")),
            metrics=tuple(
                StageMetrics.from_dict(m, "metrics[{}]".format(i))
                for i, m in enumerate(_list(_get(d, "metrics", "", []), "metrics"))
            ),
            target=TargetConstraints.from_dict(_get(d, "target", "")),
            provenance=Provenance.from_dict(_get(d, "provenance", "", {})),
            files=tuple(
                FileEntry.from_dict(f, "files[{}]".format(i))
                for i, f in enumerate(_list(_get(d, "files", "", []), "files"))
            ),
        )

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
