"""Choosing and building the Paddle Inference predictor for a bundle.

`plan` is a pure function: from the manifest, what the machine offers (`Environment`) and what the
user asked for, it decides device, precision, TensorRT settings and the engine cache folder, and
explains its choices in `PredictorPlan.notes`. `probe_environment` reads the machine and
`apply_plan` builds the predictor; both are thin and import paddle inside.

The TensorRT engine is built on the robot and cached under a folder whose name is a hash over the
bundle, the precision, the shape ranges, the Paddle / TensorRT / CUDA / cuDNN versions and the GPU's
compute capability: Paddle's own cache key ignores weights and versions, so a new bundle or a
JetPack upgrade would otherwise silently reuse a stale engine.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

from edge_sdk.errors import PredictorError
from edge_sdk.manifest import PRECISIONS, Manifest
from edge_sdk.quiet import native_output_quieted

DEVICES = ("auto", "cpu", "gpu")
TENSORRT_PRECISION_MODES = {"fp32": "Float32", "fp16": "Half", "int8": "Int8"}
# GPUs with Deep Learning Accelerators: Xavier (7.2) and Orin (8.7).
DLA_COMPUTE_CAPABILITIES = ("7.2", "8.7")
CACHE_ENV_VAR = "EDGE_SDK_ENGINE_CACHE"
SYSTEM_CACHE_ROOT = "/var/cache/edge-sdk/engines"
GPU_MEMORY_POOL_MB = 256


def default_cache_root() -> Path:
    """Where TensorRT engines are cached: $EDGE_SDK_ENGINE_CACHE, else the robot's system cache
    folder when it exists and is writable, else ~/.cache/edge-sdk/engines."""
    env = os.environ.get(CACHE_ENV_VAR)
    if env:
        return Path(env)
    if os.path.isdir(SYSTEM_CACHE_ROOT) and os.access(SYSTEM_CACHE_ROOT, os.W_OK):
        return Path(SYSTEM_CACHE_ROOT)
    return Path.home() / ".cache" / "edge-sdk" / "engines"


@dataclass(frozen=True)
class Environment:
    """What this machine's Paddle can do.

    tensorrt_version / cuda_version / cudnn_version: "8.5.2"-like strings, None when absent.
    compute_capability: of GPU 0, like "7.2"; None when no GPU is visible.
    """

    paddle_version: str
    with_cuda: bool = False
    tensorrt_version: Optional[str] = None
    cuda_version: Optional[str] = None
    cudnn_version: Optional[str] = None
    compute_capability: Optional[str] = None
    device_name: str = "cpu"
    cpu_count: int = 1

    @property
    def has_gpu(self) -> bool:
        return self.with_cuda and self.compute_capability is not None


@dataclass(frozen=True)
class PredictorPlan:
    """Everything `apply_plan` needs to configure Paddle Inference, decided up front.

    shape ranges: input name -> shape list (TensorRT dynamic shape info, empty without TensorRT).
    workspace_bytes: TensorRT builder workspace in bytes.
    engine_cache_dir: folder of the serialized TensorRT engine (None without TensorRT).
    """

    device: str
    precision: str
    use_tensorrt: bool = False
    tensorrt_precision: Optional[str] = None
    use_calib_mode: bool = False
    workspace_bytes: int = 1 << 30
    min_subgraph_size: int = 3
    min_shapes: Dict[str, List[int]] = field(default_factory=dict)
    max_shapes: Dict[str, List[int]] = field(default_factory=dict)
    opt_shapes: Dict[str, List[int]] = field(default_factory=dict)
    use_static: bool = False
    engine_cache_dir: Optional[Path] = None
    cache_key: str = ""
    dla_core: Optional[int] = None
    cpu_threads: int = 1
    use_mkldnn: bool = False
    use_mkldnn_int8: bool = False
    notes: Tuple[str, ...] = ()

    def describe(self) -> str:
        """One line such as "gpu, TensorRT Half (fp16), DLA core 0" or "cpu, fp32, oneDNN, 2 threads"."""
        if self.device == "gpu":
            parts = ["gpu"]
            if self.use_tensorrt:
                parts.append("TensorRT {} ({})".format(self.tensorrt_precision, self.precision))
            else:
                parts.append(self.precision)
            if self.dla_core is not None:
                parts.append("DLA core {}".format(self.dla_core))
            return ", ".join(parts)
        parts = ["cpu", self.precision]
        if self.use_mkldnn:
            parts.append("oneDNN int8" if self.use_mkldnn_int8 else "oneDNN")
        parts.append("{} thread{}".format(self.cpu_threads, "" if self.cpu_threads == 1 else "s"))
        return ", ".join(parts)


def shape_ranges(manifest: Manifest) -> Tuple[Dict[str, List[int]], Dict[str, List[int]], Dict[str, List[int]]]:
    """(min, max, opt) shapes per input: the manifest's TensorRT hints, or the fixed input size.

    A YOLOv3 export has inputs image [1,3,H,W], im_shape [1,2] and scale_factor [1,2].
    """
    hints = manifest.tensorrt.dynamic_shapes
    if hints:
        names = sorted(hints)
        return (
            {n: list(hints[n].min) for n in names},
            {n: list(hints[n].max) for n in names},
            {n: list(hints[n].opt) for n in names},
        )
    height, width = manifest.input.size
    fixed = {"image": [1, 3, height, width], "im_shape": [1, 2], "scale_factor": [1, 2]}
    return dict(fixed), dict(fixed), dict(fixed)


def engine_cache_key(
    bundle_sha256: str,
    precision: str,
    min_shapes: Dict[str, List[int]],
    max_shapes: Dict[str, List[int]],
    opt_shapes: Dict[str, List[int]],
    environment: Environment,
    dla_core: Optional[int] = None,
    min_subgraph_size: int = 3,
) -> str:
    """sha256 hex over everything that makes a serialized TensorRT engine valid."""
    payload = {
        "bundle_sha256": bundle_sha256,
        "precision": precision,
        "shapes": {"min": min_shapes, "max": max_shapes, "opt": opt_shapes},
        "paddle": environment.paddle_version,
        "tensorrt": environment.tensorrt_version,
        "cuda": environment.cuda_version,
        "cudnn": environment.cudnn_version,
        "compute_capability": environment.compute_capability,
        "dla_core": dla_core,
        "min_subgraph_size": min_subgraph_size,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class PlanOptions:
    """What the user asked of the predictor: `edge-sdk run`'s --precision, --device, --dla, --threads and
    --engine-cache, which the install health check is given too so that it builds the engine `run` loads.
    cache_root: engine cache folder (None: `default_cache_root()`)."""

    precision: Optional[str] = None
    device: str = "auto"
    dla_core: Optional[int] = None
    threads: Optional[int] = None
    cache_root: Optional[str] = None


def plan_for(
    manifest: Manifest, environment: Environment, options: PlanOptions, bundle_sha256: Optional[str]
) -> PredictorPlan:
    """`plan` with `options`: the one call the runtime's and the install health check's Detector make."""
    return plan(
        manifest,
        environment,
        precision=options.precision,
        device=options.device,
        dla_core=options.dla_core,
        threads=options.threads,
        cache_root=None if options.cache_root is None else Path(options.cache_root),
        bundle_sha256=bundle_sha256,
    )


def install_cache_root(environ: Dict[str, str], running_as_root: bool) -> Optional[str]:
    """The engine cache the install health check builds into: the one the service's `run` uses
    ($EDGE_SDK_ENGINE_CACHE, which the unit sets to SYSTEM_CACHE_ROOT), SYSTEM_CACHE_ROOT for an
    installer running as root (sudo drops the variable), else None (`default_cache_root()`, like `run`)."""
    if environ.get(CACHE_ENV_VAR):
        return environ[CACHE_ENV_VAR]
    return SYSTEM_CACHE_ROOT if running_as_root else None


def engine_cache_handover(
    folders: List[Path], files: List[Path], service_user: Optional[str], running_as_root: bool
) -> List[Tuple[Path, str, int]]:
    """(path, owner, mode) changes that make an engine the installer built usable by the service's user:
    the engine folder and its subfolders 0755 (`run` writes a probe file there), its files 0644, all owned
    by the user. Nothing when the installer is not root (it cannot chown, and it is then the one who
    runs `edge-sdk run`) or when no service user is known."""
    if not running_as_root or not service_user:
        return []
    return [(path, service_user, 0o755) for path in folders] + [(path, service_user, 0o644) for path in files]


def hand_over_engine_cache(engine_dir: Path, service_user: Optional[str]) -> None:
    """Apply `engine_cache_handover` to `engine_dir` and everything in it."""
    import shutil

    folders, files = [Path(engine_dir)], []  # type: List[Path], List[Path]
    for top, dirnames, filenames in os.walk(str(engine_dir)):
        folders += [Path(top) / name for name in dirnames]
        files += [Path(top) / name for name in filenames]
    for path, owner, mode in engine_cache_handover(folders, files, service_user, os.geteuid() == 0):
        shutil.chown(str(path), user=owner)
        os.chmod(str(path), mode)


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "bundle"


def plan(
    manifest: Manifest,
    environment: Environment,
    precision: Optional[str] = None,
    device: str = "auto",
    dla_core: Optional[int] = None,
    threads: Optional[int] = None,
    cache_root: Optional[Path] = None,
    bundle_sha256: Optional[str] = None,
) -> PredictorPlan:
    """Decide how to run `manifest`'s model here. Pure: reads nothing but its arguments.

    precision: fp32 | fp16 | int8, None for the bundle's own. device: auto | cpu | gpu.
    dla_core: 0 or 1 to put TensorRT layers on a Xavier/Orin DLA. threads: CPU math threads
    (default: all cores). bundle_sha256: of the bundle file; defaults to a hash of the manifest,
    which lists the sha256 of every model file. Raises PredictorError for a request that cannot
    be honoured and has no sensible fallback.
    """
    if device not in DEVICES:
        raise PredictorError("device {!r} is not one of {}".format(device, ", ".join(DEVICES)))
    requested = precision or manifest.precision
    if requested not in PRECISIONS:
        raise PredictorError("precision {!r} is not one of {}".format(requested, ", ".join(PRECISIONS)))
    if dla_core is not None and dla_core not in (0, 1):
        raise PredictorError("DLA core {!r} does not exist: Xavier and Orin have DLA cores 0 and 1".format(dla_core))
    if threads is not None and threads < 1:
        raise PredictorError("--threads must be >= 1, got {}".format(threads))
    quantized = manifest.quantization.method != "none"
    if requested == "int8" and not quantized:
        raise PredictorError(
            "INT8 requested but bundle {} {} is a float ({}) model without INT8 scales: "
            "make an INT8 bundle with edge-sdk compress, or run it in fp32/fp16".format(
                manifest.name, manifest.version, manifest.precision
            )
        )
    notes: List[str] = []

    use_gpu = _choose_gpu(environment, device, dla_core, notes)
    if use_gpu:
        return _gpu_plan(
            manifest, environment, requested, quantized, dla_core, threads, cache_root, bundle_sha256, notes
        )
    return _cpu_plan(manifest, environment, requested, quantized, device, threads, notes)


def _choose_gpu(environment: Environment, device: str, dla_core: Optional[int], notes: List[str]) -> bool:
    if device == "cpu":
        if dla_core is not None:
            raise PredictorError("--dla needs the GPU with TensorRT, but --device cpu was asked for")
        return False
    if not environment.with_cuda:
        if device == "gpu" or dla_core is not None:
            raise PredictorError(
                "{} asked for, but this Paddle {} is a CPU-only build (no CUDA)".format(
                    "--dla" if dla_core is not None else "--device gpu", environment.paddle_version
                )
            )
        return False
    if environment.compute_capability is None:
        if device == "gpu" or dla_core is not None:
            raise PredictorError("no CUDA GPU is visible to Paddle {}".format(environment.paddle_version))
        notes.append("Paddle has CUDA but no GPU is visible: running on the CPU")
        return False
    return True


def _gpu_plan(
    manifest: Manifest,
    environment: Environment,
    precision: str,
    quantized: bool,
    dla_core: Optional[int],
    threads: Optional[int],
    cache_root: Optional[Path],
    bundle_sha256: Optional[str],
    notes: List[str],
) -> PredictorPlan:
    cpu_threads = threads or max(1, environment.cpu_count)
    if environment.tensorrt_version is None:
        if dla_core is not None:
            raise PredictorError("--dla needs TensorRT, but this Paddle {} has none".format(environment.paddle_version))
        if quantized:
            raise PredictorError(
                "INT8 bundle {} needs TensorRT on the GPU, but this Paddle {} has none: use --device cpu".format(
                    manifest.name, environment.paddle_version
                )
            )
        if precision == "fp16":
            notes.append("FP16 requested but TensorRT is not available: running FP32 on the GPU")
        return PredictorPlan(device="gpu", precision="fp32", cpu_threads=cpu_threads, notes=tuple(notes))
    if quantized and precision != "int8":
        raise PredictorError(
            "bundle {} is INT8 (scales from {}): TensorRT runs it only with --precision int8".format(
                manifest.name, manifest.quantization.method
            )
        )
    if dla_core is not None:
        if environment.compute_capability not in DLA_COMPUTE_CAPABILITIES:
            raise PredictorError(
                "--dla {}: GPU {} (compute capability {}) has no DLA; only Xavier (7.2) and Orin (8.7) do".format(
                    dla_core, environment.device_name, environment.compute_capability
                )
            )
        if precision == "fp32":
            raise PredictorError("--dla runs FP16 or INT8 only: add --precision fp16")
        notes.append("DLA core {}: layers the DLA cannot run fall back to the GPU".format(dla_core))
    mins, maxs, opts = shape_ranges(manifest)
    key = engine_cache_key(
        bundle_sha256 or hashlib.sha256(manifest.canonical_bytes()).hexdigest(),
        precision,
        mins,
        maxs,
        opts,
        environment,
        dla_core,
        manifest.tensorrt.min_subgraph_size,
    )
    root = Path(cache_root) if cache_root is not None else default_cache_root()
    folder = root / "{}-{}-{}-{}".format(_safe_name(manifest.name), _safe_name(manifest.version), precision, key[:16])
    return PredictorPlan(
        device="gpu",
        precision=precision,
        use_tensorrt=True,
        tensorrt_precision=TENSORRT_PRECISION_MODES[precision],
        # INT8 scales come from the quantized program itself: never calibrate on the robot.
        use_calib_mode=False,
        workspace_bytes=manifest.tensorrt.workspace_bytes,
        min_subgraph_size=manifest.tensorrt.min_subgraph_size,
        min_shapes=mins,
        max_shapes=maxs,
        opt_shapes=opts,
        use_static=True,
        engine_cache_dir=folder,
        cache_key=key,
        dla_core=dla_core,
        cpu_threads=cpu_threads,
        notes=tuple(notes),
    )


def _cpu_plan(
    manifest: Manifest,
    environment: Environment,
    precision: str,
    quantized: bool,
    device: str,
    threads: Optional[int],
    notes: List[str],
) -> PredictorPlan:
    cpu_threads = threads or max(1, environment.cpu_count)
    why = "on the CPU as asked" if device == "cpu" else "no GPU"
    if precision == "fp16":
        notes.append(
            "FP16 requested but {}: running FP32 on CPU".format(
                "the CPU has no FP16 path" if device == "cpu" else "no GPU"
            )
        )
        precision = "fp32"
    if quantized and precision == "fp32":
        notes.append("INT8 bundle run in FP32 on CPU: its quantize/dequantize ops are computed in float (slower)")
        return PredictorPlan(
            device="cpu", precision="fp32", cpu_threads=cpu_threads, use_mkldnn=True, notes=tuple(notes)
        )
    if precision == "int8":
        notes.append("INT8 {}: oneDNN int8 kernels on the CPU".format(why))
        return PredictorPlan(
            device="cpu",
            precision="int8",
            cpu_threads=cpu_threads,
            use_mkldnn=True,
            use_mkldnn_int8=True,
            notes=tuple(notes),
        )
    if device == "auto" and not notes:
        notes.append(
            "no GPU: running FP32 on CPU (oneDNN, {} thread{})".format(cpu_threads, "" if cpu_threads == 1 else "s")
        )
    return PredictorPlan(device="cpu", precision="fp32", cpu_threads=cpu_threads, use_mkldnn=True, notes=tuple(notes))


def probe_environment() -> Environment:
    """Read what this machine's Paddle was built with and which GPU it sees."""
    try:
        import paddle
        from paddle import inference
    except ImportError as exc:
        raise PredictorError(
            "Paddle Inference is not installed ({}): install the Paddle 2.6 wheel".format(exc)
        ) from None

    def version(value: object) -> Optional[str]:
        text = str(value) if value is not None else ""
        return None if text in ("", "False", "None", "0") else text

    with_cuda = bool(paddle.is_compiled_with_cuda())
    trt = tuple(inference.get_trt_runtime_version()) if with_cuda else (0, 0, 0)
    compute_capability = None
    device_name = "cpu"
    if with_cuda and paddle.device.cuda.device_count() > 0:
        major, minor = paddle.device.cuda.get_device_capability(0)
        compute_capability = "{}.{}".format(major, minor)
        device_name = str(paddle.device.cuda.get_device_name(0))
    return Environment(
        paddle_version=str(paddle.__version__),
        with_cuda=with_cuda,
        tensorrt_version=".".join(str(v) for v in trt) if any(trt) else None,
        cuda_version=version(paddle.version.cuda()) if with_cuda else None,
        cudnn_version=version(paddle.version.cudnn()) if with_cuda else None,
        compute_capability=compute_capability,
        device_name=device_name,
        cpu_count=os.cpu_count() or 1,
    )


def check_cache_writable(folder: Path) -> bool:
    """Create `folder` and prove it is writable. Returns True when it already holds files (a cached engine)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(prefix=".write-check-", dir=str(folder))
        os.close(handle)
        os.unlink(probe)
    except OSError as exc:
        raise PredictorError(
            "TensorRT engine cache folder {} is not writable ({}): set {} or fix its permissions".format(
                folder, exc.strerror or exc, CACHE_ENV_VAR
            )
        ) from None
    return any(not p.name.startswith(".write-check-") for p in folder.iterdir())


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def apply_plan(plan: PredictorPlan, model_paths: Tuple[Path, Path], log: Optional[Callable[[str], None]] = _stderr):
    """Build a `paddle.inference.Predictor` from (model.pdmodel, model.pdiparams) as `plan` says.

    log receives one line per note and, on the first start, the "building the TensorRT engine" notice.
    """
    from paddle import inference

    emit = log or (lambda _message: None)
    for path in model_paths:
        if not Path(path).is_file():
            raise PredictorError("model file {} is missing".format(path))
    program, params = (str(p) for p in model_paths)
    config = inference.Config(program, params)
    config.disable_glog_info()
    config.switch_ir_optim(True)
    config.enable_memory_optim()
    for note in plan.notes:
        emit("note: " + note)
    try:
        if plan.device == "gpu":
            config.enable_use_gpu(GPU_MEMORY_POOL_MB, 0)
            if plan.use_tensorrt:
                assert plan.engine_cache_dir is not None
                cached = check_cache_writable(plan.engine_cache_dir)
                config.set_optim_cache_dir(str(plan.engine_cache_dir))
                config.enable_tensorrt_engine(
                    workspace_size=plan.workspace_bytes,
                    max_batch_size=1,
                    min_subgraph_size=plan.min_subgraph_size,
                    precision_mode=getattr(inference.PrecisionType, plan.tensorrt_precision or "Float32"),
                    use_static=plan.use_static,
                    use_calib_mode=plan.use_calib_mode,
                )
                config.set_trt_dynamic_shape_info(plan.min_shapes, plan.max_shapes, plan.opt_shapes)
                if plan.dla_core is not None:
                    config.enable_tensorrt_dla(plan.dla_core)
                if not cached:
                    emit(
                        "building the TensorRT engine ({}) in {}: the first start may take several minutes".format(
                            plan.describe(), plan.engine_cache_dir
                        )
                    )
        else:
            config.disable_gpu()
            config.set_cpu_math_library_num_threads(plan.cpu_threads)
            if plan.use_mkldnn:
                config.enable_mkldnn()
                config.set_mkldnn_cache_capacity(10)
                if plan.use_mkldnn_int8:
                    config.enable_mkldnn_int8()
        with native_output_quieted():  # the INT8 passes print their counts from C++
            return inference.create_predictor(config)
    except PredictorError:
        raise
    except Exception as exc:  # Paddle raises its own error types for a program it cannot load
        first_line = str(exc).strip().splitlines()
        reason = next((line for line in first_line if line.strip()), type(exc).__name__)
        raise PredictorError("cannot build the predictor ({}): {}".format(plan.describe(), reason.strip())) from None
