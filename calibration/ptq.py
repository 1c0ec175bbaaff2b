"""Post-training quantization (PTQ) of an exported program with PaddleSlim, on the workstation.

`quantize_post_training` runs `paddleslim.quant.quant_post_static` over calibration images
preprocessed exactly as the bundle's `InputSpec` says (`device.preprocess.Preprocessor`, the code the
robot runs). With `onnx_format=True` the saved program carries quantize/dequantize ops with their
scales and int8-stored weights: Paddle Inference runs it on the CPU with oneDNN int8
(`enable_mkldnn_int8`) and Paddle-TensorRT reads its scales with `use_calib_mode=False`.

Layers are named by the structured name of their weight's layer in the detector
(``neck.yolo_block.0.conv_module.conv0.conv``), read from the model folder's `model.layers.json`
(written by `write_layer_names`, shipped in bundles) or else from `model.pdiparams.info` (written by
`paddle.jit.save`); without either, by the weight's variable name (``conv2d_27.w_0``).

`fold_batch_norm=True` fuses each conv + batch_norm into one conv + bias before calibration (Paddle's
conv_bn_fuse passes, run on the CPU place): the conv output is then quantized after the BN scaling
instead of before it, and the BN parameters and ops disappear from the saved program. Weight
variable names are kept, so layer names still resolve.
PaddleSlim and Paddle are imported inside the functions: the robot imports this package without them.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Union

import numpy as np

from calibration.config import PTQ_ALGOS
from edge_sdk.bundle import PARAMS_FILE, PROGRAM_FILE
from edge_sdk.data.dataset import ImageRecord
from edge_sdk.data.images import read_bgr
from edge_sdk.errors import DataError, RecipeError
from edge_sdk.fileio import atomic_write_bytes, fsync_dir
from edge_sdk.manifest import InputSpec
from edge_sdk.progress import progress_bar

PARAMS_INFO_FILE = "model.pdiparams.info"
LAYER_NAMES_FILE = "model.layers.json"
# attribute under which compress.export's inference wrapper holds the detector
WRAPPER_PREFIX = "model."
# op type -> name of its weight input (PaddleSlim's quantizable ops with weights)
WEIGHT_INPUTS = {
    "conv2d": "Filter",
    "depthwise_conv2d": "Filter",
    "conv2d_transpose": "Filter",
    "mul": "Y",
    "matmul": "Y",
    "matmul_v2": "Y",
}


@dataclass(frozen=True)
class QuantLayer:
    """A layer PTQ quantizes. name: structured layer name (or weight_var); weight_var: its weight's variable."""

    name: str
    weight_var: str
    op_type: str


class _PlainUnpickler(pickle.Unpickler):
    """Reads only plain containers and strings: refuses to import anything."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError("refusing to load {}.{}".format(module, name))


def _names_from_info(info_path: Path) -> Dict[str, str]:
    """weight variable -> structured layer name, from a model.pdiparams.info pickle (plain dicts only)."""
    try:
        with open(str(info_path), "rb") as handle:
            info = _PlainUnpickler(handle).load()
    except (pickle.UnpicklingError, EOFError, ValueError, OSError):
        return {}
    names = {}
    for var, meta in info.items() if isinstance(info, dict) else ():
        structured = meta.get("structured_name") if isinstance(meta, dict) else None
        if isinstance(var, str) and isinstance(structured, str) and structured.endswith(".weight"):
            layer = structured[: -len(".weight")]
            names[var] = layer[len(WRAPPER_PREFIX) :] if layer.startswith(WRAPPER_PREFIX) else layer
    return names


def layer_names(model_dir: Union[str, Path]) -> Dict[str, str]:
    """weight variable -> structured layer name for the program in model_dir ({} when unknown).

    Reads model.layers.json (JSON object of strings) if present, else model.pdiparams.info.
    """
    model_dir = Path(model_dir)
    json_path = model_dir / LAYER_NAMES_FILE
    if json_path.is_file():
        try:
            names = json.loads(json_path.read_text(encoding="utf-8"))
        except (ValueError, OSError):
            names = None
        if isinstance(names, dict):
            return {k: v for k, v in names.items() if isinstance(k, str) and isinstance(v, str)}
    info_path = model_dir / PARAMS_INFO_FILE
    return _names_from_info(info_path) if info_path.is_file() else {}


def write_layer_names(model_dir: Union[str, Path], out_path: Optional[Union[str, Path]] = None) -> Path:
    """Write `layer_names(model_dir)` as JSON to out_path (default model_dir/model.layers.json), atomically.

    Call it right after `paddle.jit.save` (which writes model.pdiparams.info) and ship the JSON with
    the program: it is what names layers in the INT8 budget's messages and the recipe's layer lists.
    """
    model_dir = Path(model_dir)
    out_path = Path(out_path) if out_path is not None else model_dir / LAYER_NAMES_FILE
    atomic_write_bytes(out_path, json.dumps(layer_names(model_dir), indent=1, sort_keys=True).encode("utf-8"))
    return out_path


CALLSTACK_ATTR = "op_callstack"


def strip_op_callstacks(model_dir: Union[str, Path]) -> int:
    """Remove from model_dir/model.pdmodel, in place and atomically, the Python call stacks Paddle
    records on ops built in static mode (`op_callstack`: about 1 KB of the workstation's file paths
    per op); the ops and what they compute are unchanged. Returns how many ops had one.
    Call it on every program that goes into a bundle."""
    from paddle.framework import core

    path = Path(model_dir) / PROGRAM_FILE
    desc = core.ProgramDesc(path.read_bytes())
    stripped = 0
    for block_index in range(desc.num_blocks()):
        block = desc.block(block_index)
        for op_index in range(block.op_size()):
            op = block.op(op_index)
            if op.has_attr(CALLSTACK_ATTR):
                op.remove_attr(CALLSTACK_ATTR)
                stripped += 1
    if stripped:
        atomic_write_bytes(path, desc.serialize_to_string())
    return stripped


def _check_model_dir(model_dir: Path) -> None:
    for name in (PROGRAM_FILE, PARAMS_FILE):
        if not (model_dir / name).is_file():
            raise DataError(
                "{} has no {}: expected an exported program (model.pdmodel + model.pdiparams)".format(model_dir, name)
            )


def list_quantizable_layers(model_dir: Union[str, Path]) -> List[QuantLayer]:
    """The layers with weights PTQ would quantize, in program order (reads model.pdmodel only)."""
    import paddle

    model_dir = Path(model_dir)
    _check_model_dir(model_dir)
    with static_mode():
        program = paddle.static.Program.parse_from_string((model_dir / PROGRAM_FILE).read_bytes())
    structured = layer_names(model_dir)
    layers = []
    seen = set()
    for block in program.blocks:
        for op in block.ops:
            slot = WEIGHT_INPUTS.get(op.type)
            if slot is None or not op.input(slot):
                continue
            weight = op.input(slot)[0]
            var = block._find_var_recursive(weight)
            if var is None or not var.persistable or weight in seen:
                continue
            seen.add(weight)
            layers.append(QuantLayer(structured.get(weight, weight), weight, op.type))
    return layers


def resolve_layers(model_dir: Union[str, Path], names: Sequence[str]) -> List[QuantLayer]:
    """QuantLayers for layer names (structured or weight variable names); RecipeError names unknown ones."""
    layers = list_quantizable_layers(model_dir)
    by_name = {}
    for layer in layers:
        by_name[layer.name] = layer
        by_name[WRAPPER_PREFIX + layer.name] = layer
        by_name[layer.weight_var] = layer
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise RecipeError(
            "no quantizable layer named {} (e.g. {})".format(
                ", ".join(unknown), ", ".join(layer.name for layer in layers[:3])
            )
        )
    out: List[QuantLayer] = []
    for n in names:
        if by_name[n] not in out:
            out.append(by_name[n])
    return out


def calibration_loader(
    records: Sequence[ImageRecord],
    input_spec: InputSpec,
    batch_size: int,
    on_batch: Optional[Callable[[], None]] = None,
) -> Any:
    """A paddle.io.DataLoader of {"image": [B,3,h,w], "im_shape": [B,2], "scale_factor": [B,2]} float32
    batches, preprocessed as the manifest's input spec says. on_batch: called as each batch is handed out."""
    import paddle

    from device.preprocess import Preprocessor

    preprocess = Preprocessor(input_spec)

    class CalibrationImages(paddle.io.Dataset):
        def __len__(self) -> int:
            return len(records)

        def __getitem__(self, index: int) -> Dict[str, np.ndarray]:
            image = read_bgr(records[index].path, "calibration image")
            return {key: value[0] for key, value in preprocess(image).items()}

    class ReportingLoader(paddle.io.DataLoader):
        def __iter__(self) -> Iterator[Any]:
            for batch in super().__iter__():
                if on_batch is not None:
                    on_batch()
                yield batch

    def stack(samples: List[Dict[str, np.ndarray]]) -> Dict[str, np.ndarray]:
        return {key: np.stack([s[key] for s in samples]) for key in samples[0]}

    return ReportingLoader(
        CalibrationImages(), batch_size=batch_size, shuffle=False, drop_last=False, collate_fn=stack, num_workers=0
    )


@contextlib.contextmanager
def static_mode() -> Iterator[None]:
    """Paddle's static graph mode for the block, then back to dygraph if that is where we were."""
    import paddle

    was_dynamic = paddle.in_dynamic_mode()
    paddle.enable_static()
    try:
        yield
    finally:
        if was_dynamic:
            paddle.disable_static()


@contextlib.contextmanager
def _quiet_paddle_bars() -> Iterator[None]:
    """Silence the tqdm bars of Paddle's PTQ and quantization passes (our rich bar counts the batches)."""
    import functools

    from paddle.static.quantization import post_training_quantization, quantization_pass

    modules = [m for m in (post_training_quantization, quantization_pass) if hasattr(m, "tqdm")]
    originals = [m.tqdm for m in modules]
    for module, original in zip(modules, originals):
        module.tqdm = functools.partial(original, disable=True)
    try:
        yield
    finally:
        for module, original in zip(modules, originals):
            module.tqdm = original


def _executor_place() -> Any:
    import paddle

    if paddle.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0:
        return paddle.CUDAPlace(0)
    return paddle.CPUPlace()


def fold_conv_batch_norm(program: Any, scope: Any) -> Any:
    """`program` with each conv + batch_norm fused into conv + elementwise_add, as PTQ's `optimize_model`
    does (the same Paddle passes); the fused weights and biases are written into `scope`. Static mode."""
    from paddle.framework import core
    from paddle.static.quantization.post_training_quantization import _apply_pass, _remove_ctrl_vars
    from paddle.static.quantization.quantization_pass import IrGraph

    graph = _remove_ctrl_vars(IrGraph(core.Graph(program.desc), for_test=True))
    for name in (
        "conv_bn_fuse_pass",
        "depthwise_conv_bn_fuse_pass",
        "conv_transpose_bn_fuse_pass",
        "conv_eltwiseadd_bn_fuse_pass",
        "depthwise_conv_eltwiseadd_bn_fuse_pass",
    ):
        graph = _apply_pass(scope, graph, name)
    return graph.to_program()


def replace_dir(tmp_dir: Path, out_dir: Path) -> Path:
    """Put the finished folder tmp_dir at out_dir (replacing an older one), then fsync the parent."""
    if out_dir.exists():
        shutil.rmtree(str(out_dir))
    os.replace(str(tmp_dir), str(out_dir))
    fsync_dir(out_dir.parent)
    return out_dir


def quantize_post_training(
    model_dir: Union[str, Path],
    calibration_records: Sequence[ImageRecord],
    input_spec: InputSpec,
    out_dir: Union[str, Path],
    algo: str = "KL",
    skip_layers: Sequence[str] = (),
    batch_size: int = 8,
    hist_percent: float = 0.9999,
    progress: bool = True,
    fold_batch_norm: bool = True,
) -> Path:
    """Quantize model_dir/model.pdmodel + model.pdiparams to INT8; returns out_dir holding the same two files.

    calibration_records: the images scales are computed on (all of them, in batches of batch_size).
    input_spec: the manifest's preprocessing. algo: KL, hist, avg, mse or abs_max. skip_layers:
    layer names (see `list_quantizable_layers`) kept in float. hist_percent: the percentile "hist"
    clips at. fold_batch_norm: fuse conv + batch_norm before calibrating (module docstring). out_dir
    is written atomically (a temporary sibling folder, then renamed) and gets model.layers.json when
    the layer names are known.
    Raises RecipeError for a bad algo or layer name, DataError for missing files or images.
    """
    if algo not in PTQ_ALGOS:
        raise RecipeError("int8.algo: expected one of {}, got {!r}".format(", ".join(PTQ_ALGOS), algo))
    if not calibration_records:
        raise DataError("the calibration set is empty")
    if batch_size < 1:
        raise RecipeError("int8.batch_size: expected an integer >= 1, got {!r}".format(batch_size))
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    _check_model_dir(model_dir)
    skip_vars = [layer.weight_var for layer in resolve_layers(model_dir, list(skip_layers))]

    import paddle
    from paddleslim.quant import quant_post_static

    batches = (len(calibration_records) + batch_size - 1) // batch_size
    passes = 2 if algo in ("KL", "hist") else 1
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=".{}.tmp-".format(out_dir.name), dir=str(out_dir.parent)))
    try:
        with progress_bar(
            "calibrating ({}, {} images)".format(algo, len(calibration_records)), passes * batches, progress
        ) as advance:
            loader = calibration_loader(calibration_records, input_spec, batch_size, advance)
            scope = paddle.static.Scope()
            with static_mode(), _quiet_paddle_bars(), paddle.static.scope_guard(scope):
                # Paddle's conv+bn fuse passes run on the CPU place only
                executor = paddle.static.Executor(paddle.CPUPlace() if fold_batch_norm else _executor_place())
                quant_post_static(
                    executor,
                    str(model_dir),
                    str(tmp_dir),
                    data_loader=loader,
                    model_filename=PROGRAM_FILE,
                    params_filename=PARAMS_FILE,
                    save_model_filename=PROGRAM_FILE,
                    save_params_filename=PARAMS_FILE,
                    batch_size=batch_size,
                    batch_nums=batches,
                    scope=scope,
                    algo=algo,
                    hist_percent=hist_percent,
                    onnx_format=True,
                    skip_tensor_list=skip_vars or None,
                    optimize_model=fold_batch_norm,
                )
        for name in (PROGRAM_FILE, PARAMS_FILE):
            if not (tmp_dir / name).is_file():
                raise RecipeError("PaddleSlim wrote no {} for {}".format(name, model_dir))
        strip_op_callstacks(tmp_dir)
        if layer_names(model_dir):
            write_layer_names(model_dir, tmp_dir / LAYER_NAMES_FILE)
        os.chmod(str(tmp_dir), 0o755)
        return replace_dir(tmp_dir, out_dir)
    except BaseException:
        shutil.rmtree(str(tmp_dir), ignore_errors=True)
        raise
