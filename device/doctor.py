"""`edge-sdk doctor`: check that a robot can run bundles, and say how to fix what is wrong.

Every check is a function of a `Probe` (what was read from the machine) and returns `Check`s;
`probe_machine(root)` is the thin part that reads files under `root` (``/`` on a robot, a fake
folder in tests) and asks Paddle. Nothing here changes the machine.
"""

from __future__ import annotations

import glob
import grp
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

from device.predictor import SYSTEM_CACHE_ROOT
from device.robot import parse_l4t_release

OK, WARN, FAIL = "ok", "warn", "fail"

# JetPack 5.1.x ships L4T 35.2 to 35.6; our Paddle Inference wheel is built for it.
SUPPORTED_L4T = ((35, 2), (35, 99))
XAVIER_COMPUTE_CAPABILITY = "7.2"
PADDLE_SERIES = "2.6"
MIN_FREE_DISK_BYTES = 2 * 1024**3


@dataclass(frozen=True)
class Check:
    """One finding. status: ok, warn or fail; fix: what to do about it ("" when ok)."""

    name: str
    status: str
    detail: str
    fix: str = ""


@dataclass
class Probe:
    """What was read from the machine; every field may be missing (None) off a Jetson."""

    python_version: Tuple[int, int, int] = (0, 0, 0)
    paddle_probed: bool = True
    paddle_version: Optional[str] = None
    paddle_cuda: bool = False
    paddle_tensorrt: Optional[Tuple[int, int, int]] = None
    cuda_version: Optional[str] = None
    cudnn_version: Optional[str] = None
    gpu_names: List[str] = field(default_factory=list)
    gpu_capabilities: List[str] = field(default_factory=list)
    gpu_kernel_error: Optional[str] = None
    nv_tegra_release: Optional[str] = None
    device_model: Optional[str] = None
    cameras: Dict[str, str] = field(default_factory=dict)
    serial_ports: List[str] = field(default_factory=list)
    user_is_root: bool = False
    user_groups: List[str] = field(default_factory=list)
    engine_cache: str = SYSTEM_CACHE_ROOT
    engine_cache_error: Optional[str] = None
    free_disk_bytes: Optional[int] = None
    power_mode: Optional[str] = None


def parse_power_mode(text: str) -> Optional[str]:
    """`nvpmodel -q` output (`NV Power Mode: MAXN`) -> "MAXN"."""
    match = re.search(r"NV Power Mode:\s*(\S+)", text)
    return match.group(1) if match else None


def check_python(p: Probe) -> List[Check]:
    version = ".".join(str(v) for v in p.python_version)
    if p.python_version[:2] < (3, 8):
        return [Check("python", FAIL, "Python " + version, "use Python 3.8 or newer (JetPack 5 ships 3.8)")]
    return [Check("python", OK, "Python " + version)]


def check_paddle(p: Probe) -> List[Check]:
    if not p.paddle_probed:
        return [Check("paddle", WARN, "not checked (--skip-paddle)")]
    if p.paddle_version is None:
        return [
            Check(
                "paddle",
                FAIL,
                "Paddle Inference is not installed",
                "install the Paddle Inference 2.6 wheel for JetPack 5.1 (see docs/deploy-to-robot.md)",
            )
        ]
    checks = []
    if not p.paddle_version.startswith(PADDLE_SERIES + "."):
        checks.append(
            Check(
                "paddle",
                FAIL,
                "Paddle {} (bundles are made with Paddle {}.x)".format(p.paddle_version, PADDLE_SERIES),
                "install Paddle Inference {}.x: other major versions cannot load our programs".format(PADDLE_SERIES),
            )
        )
    else:
        checks.append(Check("paddle", OK, "Paddle " + p.paddle_version))
    if not p.paddle_cuda:
        checks.append(
            Check(
                "paddle-cuda",
                WARN,
                "this Paddle build has no CUDA: the runtime will use the CPU predictor",
                "on a Jetson, install the JetPack 5.1 Paddle Inference wheel (built with CUDA and TensorRT)",
            )
        )
        return checks
    checks.append(Check("paddle-cuda", OK, "CUDA {} cuDNN {}".format(p.cuda_version or "?", p.cudnn_version or "?")))
    if not p.paddle_tensorrt or p.paddle_tensorrt[0] == 0:
        checks.append(
            Check(
                "tensorrt",
                FAIL,
                "this Paddle build has no TensorRT",
                "install the Paddle Inference wheel built with TensorRT 8.5 for JetPack 5.1",
            )
        )
    else:
        checks.append(Check("tensorrt", OK, "TensorRT " + ".".join(str(v) for v in p.paddle_tensorrt)))
    return checks


def check_gpu(p: Probe) -> List[Check]:
    if not p.paddle_cuda:
        return []
    if not p.gpu_names:
        return [
            Check(
                "gpu",
                FAIL,
                "Paddle has CUDA but sees no GPU",
                "check `nvidia-smi`/`tegrastats`, and that the container runs with --runtime nvidia",
            )
        ]
    checks = [
        Check("gpu", OK, ", ".join("{} (compute {})".format(n, c) for n, c in zip(p.gpu_names, p.gpu_capabilities)))
    ]
    if p.gpu_kernel_error:
        fix = "this Paddle wheel has no kernels for compute capability {}: install the Jetson build (sm_72)".format(
            ", ".join(p.gpu_capabilities)
        )
        checks.append(Check("gpu-kernels", FAIL, p.gpu_kernel_error, fix))
    elif XAVIER_COMPUTE_CAPABILITY not in p.gpu_capabilities:
        checks.append(
            Check(
                "gpu-kernels",
                WARN,
                "GPU is not an AGX Xavier (compute {}), bundles target {}".format(
                    ", ".join(p.gpu_capabilities), XAVIER_COMPUTE_CAPABILITY
                ),
                "bundles whose target lists only 7.2 will be refused by `edge-sdk install` here",
            )
        )
    return checks


def check_l4t(p: Probe) -> List[Check]:
    if p.nv_tegra_release is None:
        return [
            Check(
                "l4t",
                WARN,
                "not a Jetson (no /etc/nv_tegra_release)",
                "fine on a workstation; a robot needs JetPack 5.1 (L4T r35)",
            )
        ]
    release = parse_l4t_release(p.nv_tegra_release)
    if release is None:
        return [Check("l4t", FAIL, "cannot read /etc/nv_tegra_release", "reflash the robot with JetPack 5.1.x")]
    name = "L4T r{}.{}.{}".format(*release)
    if not SUPPORTED_L4T[0] <= release[:2] <= SUPPORTED_L4T[1]:
        return [
            Check(
                "l4t",
                FAIL,
                name + " is not JetPack 5.1 (needs L4T r35.2 or newer r35)",
                "flash JetPack 5.1.x with SDK Manager",
            )
        ]
    model = " on " + p.device_model if p.device_model else ""
    return [Check("l4t", OK, name + model)]


def check_cameras(p: Probe) -> List[Check]:
    if not p.cameras:
        return [
            Check(
                "camera",
                WARN,
                "no /dev/video* camera found",
                "plug in the USB camera or check the CSI ribbon; use --source FILE to test without one",
            )
        ]
    return [
        Check("camera", OK, "{}: {}".format(dev, formats or "formats unknown (install v4l-utils)"))
        for dev, formats in sorted(p.cameras.items())
    ]


def check_serial(p: Probe) -> List[Check]:
    checks = []
    if not p.serial_ports:
        checks.append(
            Check(
                "serial",
                WARN,
                "no serial port found (/dev/ttyTHS*, ttyUSB*, ttyACM*)",
                "connect the robot controller cable",
            )
        )
    else:
        checks.append(Check("serial", OK, ", ".join(p.serial_ports)))
    if not p.user_is_root and "dialout" not in p.user_groups:
        checks.append(
            Check(
                "dialout",
                FAIL,
                "this user is not in the dialout group",
                "sudo usermod -aG dialout $USER, then log in again",
            )
        )
    return checks


def check_engine_cache(p: Probe) -> List[Check]:
    if p.engine_cache_error:
        return [
            Check(
                "engine-cache",
                FAIL,
                "{} is not writable: {}".format(p.engine_cache, p.engine_cache_error),
                "sudo mkdir -p {0} && sudo chown $USER {0}".format(p.engine_cache),
            )
        ]
    return [Check("engine-cache", OK, p.engine_cache + " is writable")]


def check_disk(p: Probe) -> List[Check]:
    if p.free_disk_bytes is None:
        return []
    gib = p.free_disk_bytes / 1024**3
    if p.free_disk_bytes < MIN_FREE_DISK_BYTES:
        return [
            Check(
                "disk",
                FAIL,
                "{:.1f} GiB free".format(gib),
                "free at least 2 GiB: old bundles (`edge-sdk list`), logs, recordings",
            )
        ]
    return [Check("disk", OK, "{:.1f} GiB free".format(gib))]


def check_power_mode(p: Probe) -> List[Check]:
    if p.nv_tegra_release is None:
        return []
    if p.power_mode is None:
        return [Check("power-mode", WARN, "power mode unknown (nvpmodel not found)", "sudo nvpmodel -m 0 for MAXN")]
    if p.power_mode != "MAXN":
        return [
            Check(
                "power-mode",
                WARN,
                "power mode " + p.power_mode,
                "sudo nvpmodel -m 0 && sudo jetson_clocks for full speed",
            )
        ]
    return [Check("power-mode", OK, "MAXN")]


CHECKS: List[Callable[[Probe], List[Check]]] = [
    check_python,
    check_paddle,
    check_gpu,
    check_l4t,
    check_cameras,
    check_serial,
    check_engine_cache,
    check_disk,
    check_power_mode,
]


def diagnose(p: Probe) -> List[Check]:
    """Every check's findings, in a fixed order."""
    return [check for run in CHECKS for check in run(p)]


def _read(path: str) -> Optional[str]:
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except OSError:
        return None


def _writable(folder: str) -> Optional[str]:
    """None when the runtime could write engines to `folder`, else the reason. Creates nothing
    but a temporary file that is removed at once."""
    existing = folder
    while not os.path.exists(existing) and os.path.dirname(existing) != existing:
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        return "{} is not a folder".format(existing)
    if existing != folder:
        if os.access(existing, os.W_OK | os.X_OK):
            return None
        return "cannot create it: {} is not writable".format(existing)
    try:
        with tempfile.NamedTemporaryFile(dir=folder):
            pass
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def _camera_formats(device: str) -> str:
    if not shutil.which("v4l2-ctl"):
        return ""
    try:
        out = subprocess.run(
            ["v4l2-ctl", "-d", device, "--list-formats"], capture_output=True, text=True, timeout=5
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return ", ".join(sorted(set(re.findall(r"'(\w{3,4})'", out))))


def _probe_paddle(p: Probe) -> None:
    try:
        import paddle
        import paddle.inference
    except ImportError:
        return
    p.paddle_version = paddle.__version__
    p.paddle_cuda = bool(paddle.device.is_compiled_with_cuda())
    p.paddle_tensorrt = tuple(paddle.inference.get_trt_runtime_version())  # type: ignore[assignment]
    if not p.paddle_cuda:
        return
    p.cuda_version = paddle.version.cuda()
    p.cudnn_version = paddle.version.cudnn()
    for index in range(paddle.device.cuda.device_count()):
        major, minor = paddle.device.cuda.get_device_capability(index)
        p.gpu_names.append(paddle.device.cuda.get_device_name(index))
        p.gpu_capabilities.append("{}.{}".format(major, minor))
    if p.gpu_names:
        # A wheel without kernels for this GPU fails on the first real op, in its own process.
        code = "import paddle; print(float(paddle.ones([4], dtype='float32').sum()))"
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            lines = [line for line in result.stderr.splitlines() if line.strip()]
            p.gpu_kernel_error = lines[-1] if lines else "a GPU op failed"


def probe_machine(root: str = "/", engine_cache: str = SYSTEM_CACHE_ROOT, with_paddle: bool = True) -> Probe:
    """Read the machine. Files are read under `root`; Paddle is asked only when with_paddle."""
    p = Probe(python_version=tuple(sys.version_info[:3]))  # type: ignore[arg-type]
    p.paddle_probed = with_paddle
    if with_paddle:
        _probe_paddle(p)

    def under(*parts: str) -> str:
        return os.path.join(root, *parts)

    p.nv_tegra_release = _read(under("etc", "nv_tegra_release"))
    model = _read(under("proc", "device-tree", "model"))
    p.device_model = model.strip("\x00\n ") if model else None
    for device in sorted(glob.glob(under("dev", "video*"))):
        p.cameras[device] = _camera_formats(device) if root == "/" else ""
    for pattern in ("ttyTHS*", "ttyUSB*", "ttyACM*"):
        p.serial_ports.extend(sorted(glob.glob(under("dev", pattern))))
    p.user_is_root = os.geteuid() == 0
    p.user_groups = [grp.getgrgid(g).gr_name for g in os.getgroups() if _group_exists(g)]
    p.engine_cache = engine_cache
    p.engine_cache_error = _writable(engine_cache)
    p.free_disk_bytes = shutil.disk_usage(root).free
    if shutil.which("nvpmodel"):
        try:
            out = subprocess.run(["nvpmodel", "-q"], capture_output=True, text=True, timeout=5).stdout
        except (OSError, subprocess.TimeoutExpired):
            out = ""
        p.power_mode = parse_power_mode(out)
    return p


def _group_exists(gid: int) -> bool:
    try:
        grp.getgrgid(gid)
    except KeyError:
        return False
    return True
