"""The parent's side of `compress --gpus`: what paddle.distributed.launch is given and what is kept.

paddle.distributed.launch prints its whole environment when a worker fails and writes it to
`envlog.N`, `backup_env.N.json` and `<job>.<pod>.log` in its log folder. So it gets only the
variables Python, Paddle and CUDA need (`launcher_environment`) and a private temporary log folder
whose worker logs are copied to WORKDIR/launch-logs afterwards, and its output is filtered
(`run_launcher`). The processes it starts run edge_cli/worker.py.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import threading
from pathlib import Path
from typing import Callable, Dict, List, Mapping

LAUNCH_ENV_NAMES = frozenset(
    ("PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TERM", "TZ", "TMPDIR", "COLUMNS",
     "NO_COLOR", "VIRTUAL_ENV", "LD_LIBRARY_PATH", "LD_PRELOAD")
)  # fmt: skip
LAUNCH_ENV_PREFIXES = (
    "LC_", "PYTHON", "FLAGS_", "GLOG_", "PADDLE_", "CUDA_", "CUDNN_", "NCCL_", "NVIDIA_", "OMP_", "MKL_",
    "KMP_", "OPENBLAS_", "EDGE_SDK_",
)  # fmt: skip
"""What the launched processes inherit: locale, Python, Paddle flags, CUDA/NCCL and thread settings."""
WORKER_LOG_GLOB = "workerlog.*"
ENV_FILE_GLOBS = ("envlog.*", "backup_env.*", "*.log")
"""Files the launcher writes holding the environment (also left by earlier versions in WORKDIR/launch-logs)."""


def launcher_environment(environ: Mapping[str, str]) -> Dict[str, str]:
    """The variables of `environ` that the launcher and its workers need (no credentials, tokens, ...)."""
    return {k: v for k, v in environ.items() if k in LAUNCH_ENV_NAMES or k.startswith(LAUNCH_ENV_PREFIXES)}


def check_cuda_devices(ids: List[int], option: str) -> None:
    """Raise EdgeSdkError (naming `option`) unless Paddle has CUDA and sees every device id in `ids`."""
    import paddle

    from edge_sdk.errors import EdgeSdkError

    if not paddle.device.is_compiled_with_cuda():
        raise EdgeSdkError(
            "{}: this Paddle build has no CUDA (install paddlepaddle-gpu), or use --gpus cpu:N for N CPU processes".format(
                option
            )
        )
    count = paddle.device.cuda.device_count()
    missing = [i for i in ids if i >= count]
    if missing:
        raise EdgeSdkError(
            "{}: {} CUDA device(s) visible{}, no device {}".format(
                option, count, " (ids 0-{})".format(count - 1) if count else "", ", ".join(map(str, missing))
            )
        )


def _is_launcher_line(line: str) -> bool:
    return line.startswith(("LAUNCH ", "Container rank ", "env {", "environ(")) or "ERROR LOG DETAIL" in line


def run_launcher(
    command: List[str],
    log_dir: Path,
    keep_dir: Path,
    environ: Mapping[str, str],
    verbose: bool = False,
    out: Callable[[str], None] = print,
    err: Callable[[str], None] = print,
) -> int:
    """Run `command` (paddle.distributed.launch with `--log_dir log_dir`) and return its exit code.

    Workers' output goes to `out`; the launcher's own lines go to `err` when `verbose`, never its
    environment dumps. A failed worker's log tail, which the launcher repeats, is shown once. Then
    the worker logs are copied to `keep_dir` and `log_dir` (with the launcher's env files) removed.
    Ctrl-C reaches the launcher too (same process group) and SIGTERM is passed on to it; this waits for
    it to stop its workers (they save checkpoints as on Ctrl-C), then raises KeyboardInterrupt.
    """
    printed = set()
    in_tail = False
    interrupted = False
    proc = subprocess.Popen(
        command,
        env=launcher_environment(environ),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        bufsize=1,
    )

    def forward_sigterm(signum: int, frame: object) -> None:
        nonlocal interrupted
        interrupted = True
        proc.send_signal(signal.SIGTERM)

    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, forward_sigterm)
    try:
        with proc.stdout:
            lines = iter(proc.stdout.readline, "")
            while True:
                try:
                    line = next(lines, None)
                except KeyboardInterrupt:
                    interrupted = True
                    continue
                if line is None:
                    break
                line = line.rstrip("\n")
                if line.startswith(("env {", "environ(")):
                    continue
                if _is_launcher_line(line):
                    in_tail = in_tail or "ERROR LOG DETAIL" in line
                    if verbose:
                        err(line)
                    continue
                if in_tail and line in printed:
                    continue
                printed.add(line)
                out(line)
        while True:
            try:
                code = proc.wait()
                break
            except KeyboardInterrupt:
                interrupted = True
    finally:
        keep_dir.mkdir(parents=True, exist_ok=True)
        for pattern in ENV_FILE_GLOBS:
            for stale in keep_dir.glob(pattern):
                stale.unlink()
        for log in sorted(Path(log_dir).glob(WORKER_LOG_GLOB)):
            shutil.copyfile(str(log), str(keep_dir / log.name))
        shutil.rmtree(str(log_dir), ignore_errors=True)
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    if interrupted:
        raise KeyboardInterrupt
    return code
