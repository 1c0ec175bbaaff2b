"""Flash a bundle to many robots over OpenSSH (copy it, run `edge-sdk install` there, report), and
read many robots' `edge-sdk status --json` the same way (`fleet_status`).

A target is ``[user@]host[:port][/remote/root]`` (IPv6 hosts in brackets: ``user@[::1]:22``); the
path, when given, is that robot's install root (``--root`` of the remote install), overriding the
default remote root. For each robot, in parallel up to a limit:

1. ``edge-sdk list --json`` on the robot: if the active version has this bundle's sha256 the
   robot is **skipped**;
2. ``scp`` the bundle to a fresh name under /tmp on the robot;
3. ``edge-sdk install`` it there (the uploaded file is removed afterwards, whatever happens):
   exit 0 is **installed**, a refusal is **rejected** with the robot's one-line error.

A robot whose ssh/scp fails to connect or authenticate (ssh exit status 255) is **unreachable**;
anything else that goes wrong is **failed**. ssh and scp run with BatchMode=yes (never prompt)
and a connect timeout; host keys are checked against known_hosts (configurable).
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, TypeVar

from edge_sdk.errors import InstallError

OUTCOMES_OK = ("installed", "skipped")
T = TypeVar("T")
SSH_FAILURE = 255
_TARGET = re.compile(
    r"^(?:(?P<user>[^@/\s]+)@)?(?P<host>\[[^\]/\s]+\]|[^:@/\s\[\]]+)(?::(?P<port>\d+))?(?P<root>/\S*)?$"
)


@dataclass(frozen=True)
class Target:
    """One robot: ssh user (None: ssh's default), host, port (None: 22 / ssh config), install root."""

    host: str
    user: Optional[str] = None
    port: Optional[int] = None
    root: Optional[str] = None

    @property
    def destination(self) -> str:
        """user@host for ssh (brackets of an IPv6 host removed)."""
        host = self.host[1:-1] if self.host.startswith("[") else self.host
        return "{}@{}".format(self.user, host) if self.user else host

    @property
    def scp_host(self) -> str:
        """user@host for an scp remote path (IPv6 hosts keep their brackets)."""
        host = self.host if ":" not in self.host or self.host.startswith("[") else "[{}]".format(self.host)
        return "{}@{}".format(self.user, host) if self.user else host

    @property
    def label(self) -> str:
        text = self.destination if self.port is None else "{}:{}".format(self.destination, self.port)
        return text + (self.root or "")


def parse_target(text: str) -> Target:
    """``[user@]host[:port][/remote/root]`` -> Target. Raises InstallError naming the bad target."""
    match = _TARGET.match(text.strip())
    if not match:
        raise InstallError("robot {!r} is not [user@]host[:port][/remote/root]".format(text))
    port = match.group("port")
    if port is not None and not 0 < int(port) < 65536:
        raise InstallError("robot {!r}: port {} is out of range".format(text, port))
    return Target(match.group("host"), match.group("user"), int(port) if port else None, match.group("root"))


def read_targets_file(path: Path) -> List[str]:
    """Targets from a file, one per line; blank lines and # comments ignored."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise InstallError("cannot read robots file {}: {}".format(path, exc.strerror or exc)) from None
    return [line.split("#", 1)[0].strip() for line in lines if line.split("#", 1)[0].strip()]


@dataclass(frozen=True)
class SshOptions:
    """How to reach robots.

    identity: private key file (-i). known_hosts: UserKnownHostsFile (None: ssh's default).
    strict_host_key_checking: "yes" (default; unknown hosts are refused), "accept-new" or "no".
    connect_timeout: seconds. command_timeout: seconds for one remote step (the install includes
    the health check, which may build a TensorRT engine).
    """

    identity: Optional[str] = None
    known_hosts: Optional[str] = None
    strict_host_key_checking: str = "yes"
    connect_timeout: int = 10
    command_timeout: float = 1800.0
    ssh: str = "ssh"
    scp: str = "scp"

    def common(self) -> List[str]:
        args = [
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout={}".format(self.connect_timeout),
            "-o",
            "StrictHostKeyChecking={}".format(self.strict_host_key_checking),
            "-o",
            "LogLevel=ERROR",
        ]
        if self.known_hosts:
            args += ["-o", "UserKnownHostsFile={}".format(self.known_hosts)]
        if self.identity:
            args += ["-i", self.identity, "-o", "IdentitiesOnly=yes"]
        return args


@dataclass
class RobotResult:
    """outcome: installed, skipped, rejected, unreachable or failed; detail: one line; seconds: wall time."""

    target: Target
    outcome: str
    detail: str = ""
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.outcome in OUTCOMES_OK


@dataclass
class FlashPlan:
    """What to install and how: the remote command (words, e.g. "sudo edge-sdk") and install flags."""

    bundle: Path
    sha256: str
    remote_command: str = "edge-sdk"
    remote_root: Optional[str] = None
    install_args: List[str] = field(default_factory=list)


class _StepFailed(Exception):
    def __init__(self, outcome: str, detail: str) -> None:
        super().__init__(detail)
        self.outcome = outcome
        self.detail = detail


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    line = (errors or lines or [""])[-1]
    return line[len("error:") :].strip() if line.startswith("error:") else line


def _run(args: List[str], timeout: float) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(args, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise _StepFailed("failed", "{} timed out after {:g} s".format(Path(args[0]).name, timeout)) from None
    except FileNotFoundError:
        raise _StepFailed("failed", "{} is not installed on this machine".format(args[0])) from None


def _ssh(
    target: Target, options: SshOptions, command: str, timeout: Optional[float] = None
) -> subprocess.CompletedProcess:
    args = [options.ssh] + options.common()
    if target.port is not None:
        args += ["-p", str(target.port)]
    args += [target.destination, command]
    result = _run(args, options.command_timeout if timeout is None else timeout)
    if result.returncode == SSH_FAILURE:
        raise _StepFailed("unreachable", _last_line(result.stderr) or "ssh failed")
    return result


def _remote(remote_command: str, root: Optional[str], *words: str) -> str:
    """The shell command line running `remote_command words... [--root root]` on a robot."""
    command = shlex.split(remote_command) + list(words)
    if root:
        command += ["--root", root]
    return " ".join(shlex.quote(word) for word in command)


def flash_robot(
    plan: FlashPlan, target: Target, options: SshOptions, step: Callable[[str], None] = lambda s: None
) -> RobotResult:
    """Flash one robot; never raises for a robot problem (it is in the result)."""
    started = time.monotonic()
    try:
        outcome, detail = _flash_robot(plan, target, options, step)
    except _StepFailed as exc:
        outcome, detail = exc.outcome, exc.detail
    return RobotResult(target, outcome, detail, time.monotonic() - started)


def _flash_robot(plan: FlashPlan, target: Target, options: SshOptions, step: Callable[[str], None]) -> Tuple[str, str]:
    step("checking")
    listed = _ssh(
        target,
        options,
        _remote(plan.remote_command, target.root or plan.remote_root, "list", "--json"),
        timeout=options.connect_timeout + 120,
    )
    if listed.returncode != 0:
        raise _StepFailed(
            "failed",
            "`edge-sdk list` on the robot failed: "
            + (_last_line(listed.stderr) or "exit {}".format(listed.returncode)),
        )
    try:
        rows = json.loads(listed.stdout)
    except ValueError:
        raise _StepFailed("failed", "`edge-sdk list --json` on the robot printed no JSON") from None
    for row in rows if isinstance(rows, list) else []:
        if isinstance(row, dict) and row.get("sha256") == plan.sha256 and row.get("active"):
            return "skipped", "already active: {} {}".format(row.get("name"), row.get("version"))

    step("copying")
    remote_file = "/tmp/edge-sdk-flash-{}-{}".format(uuid.uuid4().hex[:12], plan.bundle.name)
    scp_args = [options.scp, "-q"] + options.common()
    if target.port is not None:
        scp_args += ["-P", str(target.port)]
    scp_args += [str(plan.bundle), "{}:{}".format(target.scp_host, remote_file)]
    copied = _run(scp_args, options.command_timeout)
    if copied.returncode != 0:
        outcome = "unreachable" if copied.returncode == SSH_FAILURE else "failed"
        raise _StepFailed(
            outcome, "copy failed: " + (_last_line(copied.stderr) or "scp exit {}".format(copied.returncode))
        )

    step("installing")
    install = _remote(
        plan.remote_command, target.root or plan.remote_root, "install", remote_file, *plan.install_args, "--json"
    )
    command = "{}; status=$?; rm -f {}; exit $status".format(install, shlex.quote(remote_file))
    installed = _ssh(target, options, command)
    if installed.returncode != 0:
        return "rejected", _last_line(installed.stderr) or "install exited with status {}".format(installed.returncode)
    try:
        doc = json.loads(installed.stdout)
    except ValueError:
        doc = {}
    if isinstance(doc, dict) and doc.get("outcome") == "already-installed":
        return "skipped", "already active: {} {}".format(doc.get("name"), doc.get("version"))
    if isinstance(doc, dict) and doc.get("summary"):
        return "installed", str(doc["summary"])
    return "installed", _last_line(installed.stdout)


def for_each_robot(targets: Sequence[Target], parallel: int, work: Callable[[Target], T]) -> List[T]:
    """work(target) for every target, at most `parallel` at a time; results in the order of `targets`."""
    if parallel < 1:
        raise InstallError("--parallel must be at least 1, got {}".format(parallel))
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        return list(pool.map(work, targets))


def flash(
    plan: FlashPlan,
    targets: Sequence[Target],
    options: SshOptions,
    parallel: int = 4,
    on_step: Callable[[Target, str], None] = lambda t, s: None,
    on_done: Callable[[RobotResult], None] = lambda r: None,
) -> List[RobotResult]:
    """Flash every target, at most `parallel` at a time; results in the order of `targets`."""

    def one(target: Target) -> RobotResult:
        result = flash_robot(plan, target, options, lambda s: on_step(target, s))
        on_done(result)
        return result

    return for_each_robot(targets, parallel, one)


@dataclass
class RobotStatus:
    """`edge-sdk status --json` of one robot (device.robot_status.robot_status), or why it could not be read.

    outcome: "ok", "unreachable" (ssh could not connect or log in) or "failed"; detail: one line."""

    target: Target
    outcome: str
    status: Optional[Dict[str, Any]] = None
    detail: str = ""


def robot_status(
    target: Target, options: SshOptions, remote_command: str = "edge-sdk", remote_root: Optional[str] = None
) -> RobotStatus:
    """One ssh command on the robot: `edge-sdk status --json`; never raises for a robot problem."""
    command = _remote(remote_command, target.root or remote_root, "status", "--json")
    try:
        result = _ssh(target, options, command, timeout=options.connect_timeout + 60)
    except _StepFailed as exc:
        return RobotStatus(target, exc.outcome, detail=exc.detail)
    if result.returncode != 0:
        reason = _last_line(result.stderr) or "exit {}".format(result.returncode)
        return RobotStatus(target, "failed", detail="`edge-sdk status` on the robot failed: " + reason)
    try:
        doc = json.loads(result.stdout)
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        return RobotStatus(target, "failed", detail="`edge-sdk status --json` on the robot printed no JSON object")
    return RobotStatus(target, "ok", doc)


def fleet_status(
    targets: Sequence[Target],
    options: SshOptions,
    remote_command: str = "edge-sdk",
    remote_root: Optional[str] = None,
    parallel: int = 16,
) -> List[RobotStatus]:
    """robot_status of every target, at most `parallel` at a time, in the order of `targets`."""
    return for_each_robot(targets, parallel, lambda t: robot_status(t, options, remote_command, remote_root))
