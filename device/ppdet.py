"""Wrap a PaddleDetection export (model.pdmodel, model.pdiparams, infer_cfg.yml) into a bundle.

`infer_cfg.yml` is read into a typed `PpdetConfig` (architecture, labels, preprocessing,
min_subgraph_size); every preprocessing step is translated into the manifest's `InputSpec`, and a
step the runtime cannot reproduce exactly is refused with its name rather than guessed.
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

from edge_sdk.bundle import MODEL_PARAMS, MODEL_PROGRAM, PARAMS_FILE, PROGRAM_FILE
from edge_sdk.errors import BundleError
from edge_sdk.manifest import InputSpec, Manifest, Quantization, ShapeRange, TensorRTHints

# PaddleDetection's `interp` values are OpenCV's: 0 nearest, 1 linear, 2 cubic, 3 area, 4 lanczos4.
PPDET_INTERPOLATIONS = {0: "nearest", 1: "linear", 2: "cubic", 3: "area"}
MODEL_FILES = (PROGRAM_FILE, PARAMS_FILE, "infer_cfg.yml")
# Every quantize/dequantize op type (quantize_linear, fake_quantize_*, fake_channel_wise_dequantize_*, ...).
QUANT_OP_MARKER = "quantize"


@dataclass(frozen=True)
class PpdetConfig:
    """What `infer_cfg.yml` says, typed. input_size: (height, width)."""

    architecture: str
    classes: Tuple[str, ...]
    input: InputSpec
    min_subgraph_size: int = 3
    draw_threshold: Optional[float] = None


def _fail(path: Path, message: str) -> BundleError:
    return BundleError("{}: {}".format(path, message))


def _number_list(value: Any, length: int, path: Path, field: str) -> List[float]:
    if not isinstance(value, (list, tuple)) or len(value) != length:
        raise _fail(path, "{} must be a list of {} numbers, got {!r}".format(field, length, value))
    out = []
    for item in value:
        if isinstance(item, bool) or not isinstance(item, (int, float)):
            raise _fail(path, "{} must be a list of {} numbers, got {!r}".format(field, length, value))
        out.append(float(item))
    return out


def parse_infer_cfg(path: Union[str, Path]) -> PpdetConfig:
    """Read PaddleDetection's infer_cfg.yml; BundleError naming the file and the field otherwise."""
    import yaml

    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise _fail(path, "cannot read ({})".format(exc.strerror or exc)) from None
    except yaml.YAMLError as exc:
        raise _fail(path, "not valid YAML ({})".format(str(exc).splitlines()[0])) from None
    if not isinstance(doc, dict):
        raise _fail(path, "expected a mapping at the top level")
    arch = doc.get("arch")
    if not isinstance(arch, str) or not arch:
        raise _fail(path, "field arch is missing")
    labels = doc.get("label_list")
    if not isinstance(labels, list) or not labels or not all(isinstance(x, (str, int)) for x in labels):
        raise _fail(path, "field label_list must be a non-empty list of names")
    steps = doc.get("Preprocess")
    if not isinstance(steps, list) or not steps:
        raise _fail(path, "field Preprocess must be a list of steps")
    size: Optional[Tuple[int, int]] = None
    keep_ratio = False
    interpolation = "cubic"
    mean, std, scale = [0.0, 0.0, 0.0], [1.0, 1.0, 1.0], False
    for index, step in enumerate(steps):
        where = "Preprocess[{}]".format(index)
        if not isinstance(step, dict) or "type" not in step:
            raise _fail(path, "{} must be a mapping with a type".format(where))
        kind = step["type"]
        if kind == "Resize":
            target = _number_list(step.get("target_size"), 2, path, where + ".target_size")
            size = (int(target[0]), int(target[1]))
            if min(size) < 1:
                raise _fail(path, "{}.target_size must be positive, got {}".format(where, list(size)))
            keep_ratio = bool(step.get("keep_ratio", False))
            interp = step.get("interp", 2)
            if interp not in PPDET_INTERPOLATIONS:
                raise _fail(
                    path, "{}.interp {!r} is not supported (0 nearest, 1 linear, 2 cubic, 3 area)".format(where, interp)
                )
            interpolation = PPDET_INTERPOLATIONS[interp]
        elif kind == "NormalizeImage":
            norm_type = step.get("norm_type", "mean_std")
            scale = bool(step.get("is_scale", True))
            if norm_type == "mean_std":
                mean = _number_list(step.get("mean"), 3, path, where + ".mean")
                std = _number_list(step.get("std"), 3, path, where + ".std")
                if min(std) <= 0:
                    raise _fail(path, "{}.std must be positive, got {}".format(where, std))
            elif norm_type != "none":
                raise _fail(path, "{}.norm_type {!r} is not supported (mean_std or none)".format(where, norm_type))
        elif kind == "Permute":
            continue
        else:
            raise _fail(
                path,
                "{} type {!r} is not supported by the runtime (Resize, NormalizeImage, Permute)".format(where, kind),
            )
    if size is None:
        raise _fail(path, "Preprocess has no Resize step: the network input size is unknown")
    min_subgraph = doc.get("min_subgraph_size", 3)
    if isinstance(min_subgraph, bool) or not isinstance(min_subgraph, int) or min_subgraph < 1:
        raise _fail(path, "min_subgraph_size must be a positive integer, got {!r}".format(min_subgraph))
    draw = doc.get("draw_threshold")
    return PpdetConfig(
        architecture=arch,
        classes=tuple(str(x) for x in labels),
        # PaddleDetection decodes images to RGB before every step.
        input=InputSpec(
            size=size,
            resize_mode="keep_ratio" if keep_ratio else "stretch",
            interpolation=interpolation,
            mean=tuple(mean),  # type: ignore[arg-type]
            std=tuple(std),  # type: ignore[arg-type]
            channel_order="RGB",
            scale=scale,
        ),
        min_subgraph_size=min_subgraph,
        draw_threshold=float(draw) if isinstance(draw, (int, float)) and not isinstance(draw, bool) else None,
    )


def _framework_pb2() -> Any:
    """Paddle's ProgramDesc protobuf module, without importing Paddle itself when it is not loaded yet.

    `import paddle` takes 4-6 s here, most of `bundle import-ppdet`; framework_pb2.py needs only protobuf.
    It is loaded under its own name, so a later `import paddle` uses this very module (one descriptor pool
    entry). Any surprise falls back to the plain import.
    """
    name = "paddle.base.proto.framework_pb2"
    if "paddle" not in sys.modules and name not in sys.modules:
        try:
            spec = importlib.util.find_spec("paddle")
            locations = [] if spec is None else list(spec.submodule_search_locations or [])
            source = Path(locations[0], "base", "proto", "framework_pb2.py") if locations else None
            if source is not None and source.is_file():
                module_spec = importlib.util.spec_from_file_location(name, str(source))
                if module_spec is not None and module_spec.loader is not None:
                    module = importlib.util.module_from_spec(module_spec)
                    module_spec.loader.exec_module(module)
                    sys.modules[name] = module
                    return module
        except Exception:  # noqa: BLE001 - an unexpected layout: the plain import below
            sys.modules.pop(name, None)
    try:
        from paddle.base.proto import framework_pb2
    except ImportError:  # Paddle before 2.5
        from paddle.fluid.proto import framework_pb2  # type: ignore[no-redef]
    return framework_pb2


def program_op_types(pdmodel: Union[str, Path]) -> List[str]:
    """The op types of a serialized Paddle program (every block), sorted."""
    program = _framework_pb2().ProgramDesc()
    try:
        program.ParseFromString(Path(pdmodel).read_bytes())
    except Exception as exc:  # protobuf's DecodeError and friends
        raise BundleError("{} is not a Paddle program ({})".format(pdmodel, exc)) from None
    return sorted({op.type for block in program.blocks for op in block.ops})


def program_is_quantized(pdmodel: Union[str, Path]) -> bool:
    """True when the program holds quantize/dequantize ops (a QAT or PTQ export)."""
    return any(QUANT_OP_MARKER in op for op in program_op_types(pdmodel))


def build_manifest(
    config: PpdetConfig,
    name: str,
    version: str,
    quantized: bool = False,
    workspace_bytes: int = 1 << 30,
) -> Manifest:
    """The manifest of an imported PaddleDetection model (files are filled in by write_bundle)."""
    from dataclasses import replace

    from edge_sdk.manifest import Postprocess

    height, width = config.input.size

    def fixed(*dims: int) -> ShapeRange:
        return ShapeRange(min=(1,) + dims, opt=(1,) + dims, max=(1,) + dims)

    postprocess = Postprocess()
    if config.draw_threshold is not None:
        postprocess = replace(postprocess, score_threshold=config.draw_threshold)
    return Manifest(
        name=name,
        version=version,
        architecture="ppdet_{}".format(config.architecture.lower()),
        classes=config.classes,
        input=config.input,
        precision="int8" if quantized else "fp32",
        quantization=Quantization(method="qat") if quantized else Quantization(),
        postprocess=postprocess,
        tensorrt=TensorRTHints(
            min_subgraph_size=config.min_subgraph_size,
            workspace_bytes=workspace_bytes,
            dynamic_shapes={"image": fixed(3, height, width), "im_shape": fixed(2), "scale_factor": fixed(2)},
        ),
    )


def import_ppdet(
    export_dir: Union[str, Path],
    out_path: Union[str, Path],
    name: Optional[str] = None,
    version: str = "0.1.0",
    signing_key: Any = None,
) -> Path:
    """Bundle a PaddleDetection export folder. name defaults to the folder's name. Returns the bundle path."""
    from edge_sdk.bundle import write_bundle

    folder = Path(export_dir)
    if not folder.is_dir():
        raise BundleError("{} is not a folder (expected a PaddleDetection export folder)".format(folder))
    missing = [f for f in MODEL_FILES if not (folder / f).is_file()]
    if missing:
        raise BundleError(
            "{} lacks {} (a PaddleDetection export has {})".format(folder, ", ".join(missing), ", ".join(MODEL_FILES))
        )
    config = parse_infer_cfg(folder / "infer_cfg.yml")
    quantized = program_is_quantized(folder / PROGRAM_FILE)
    manifest = build_manifest(config, name or folder.resolve().name, version, quantized=quantized)
    files: Dict[str, Any] = {
        MODEL_PROGRAM: folder / PROGRAM_FILE,
        MODEL_PARAMS: folder / PARAMS_FILE,
    }
    return Path(write_bundle(out_path, manifest, files, signing_key=signing_key))
