"""What this robot is (L4T release, GPU compute capability, runtime version) and whether a bundle fits it.

`ROOT/robot.json`, when present, describes the robot::

    {"l4t": "35.4.1", "compute_capability": "7.2", "runtime_version": "0.1.0"}

(runtime_version defaults to this edge-sdk's version). Without the file, the L4T release is read
from /etc/nv_tegra_release and the compute capability from the Tegra SoC in
/proc/device-tree/compatible; a machine that is neither refuses installs with a message saying
how to write robot.json.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Tuple

import edge_sdk
from device.store import Store
from edge_sdk.errors import InstallError

# Tegra SoC (device-tree "compatible") -> CUDA compute capability.
TEGRA_COMPUTE_CAPABILITY = {"tegra210": "5.3", "tegra186": "6.2", "tegra194": "7.2", "tegra234": "8.7"}
NV_TEGRA_RELEASE = "/etc/nv_tegra_release"
DEVICE_TREE_COMPATIBLE = "/proc/device-tree/compatible"


def parse_l4t_release(text: str) -> Optional[Tuple[int, int, int]]:
    """`# R35 (release), REVISION: 3.1, ...` -> (35, 3, 1); None when it is not that format."""
    match = re.search(r"#\s*R(\d+)\s*\(release\),\s*REVISION:\s*(\d+)(?:\.(\d+))?", text)
    if not match:
        return None
    return int(match.group(1)), int(match.group(2)), int(match.group(3) or 0)


def version_key(text: str) -> Tuple[Tuple[int, ...], Tuple[Any, ...]]:
    """Sort key for versions like "1.2.10", "35.4.1", "1.0.0rc1": numeric release parts compare as
    numbers ("1.0" == "1.0.0"), and a pre-release suffix sorts before the release ("1.0rc1" < "1.0")."""
    match = re.match(r"^[vV]?(\d+(?:\.\d+)*)(.*)$", text.strip())
    if not match:
        return (), (0, text)
    release = [int(x) for x in match.group(1).split(".")]
    while release and release[-1] == 0:
        release.pop()
    suffix = match.group(2).lstrip(".-_+")
    if not suffix:
        return tuple(release), (1,)
    tokens = tuple((1, int(t), "") if t.isdigit() else (0, 0, t) for t in re.findall(r"\d+|[A-Za-z]+", suffix))
    return tuple(release), (0,) + tokens


def _numeric(text: str) -> Tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", text))


@dataclass(frozen=True)
class RobotInfo:
    """What this robot is: L4T release ("35.4.1"), GPU compute capability ("7.2"), runtime version."""

    l4t: str
    compute_capability: str
    runtime_version: str
    source: str


def robot_info(store: Store) -> RobotInfo:
    """From ROOT/robot.json if present, else from the Jetson's own files. Raises InstallError."""
    path = store.robot_path
    if path.exists():
        return _robot_json(path)
    hint = 'describe this machine in {} e.g. {{"l4t": "35.4.1", "compute_capability": "7.2"}}'.format(path)
    try:
        release = parse_l4t_release(Path(NV_TEGRA_RELEASE).read_text(errors="replace"))
    except OSError:
        raise InstallError(
            "cannot tell which robot this is: no {} (not a Jetson?); {}".format(NV_TEGRA_RELEASE, hint)
        ) from None
    if release is None:
        raise InstallError("cannot read the L4T release from {}; {}".format(NV_TEGRA_RELEASE, hint))
    try:
        compatible = Path(DEVICE_TREE_COMPATIBLE).read_bytes().decode("ascii", "replace").split("\0")
    except OSError:
        compatible = []
    capability = None
    for entry in compatible:
        soc = entry.split(",")[-1]
        if soc in TEGRA_COMPUTE_CAPABILITY:
            capability = TEGRA_COMPUTE_CAPABILITY[soc]
    if capability is None:
        raise InstallError("cannot tell this Jetson's GPU from {}; {}".format(DEVICE_TREE_COMPATIBLE, hint))
    return RobotInfo("{}.{}.{}".format(*release), capability, edge_sdk.__version__, NV_TEGRA_RELEASE)


def _robot_json(path: Path) -> RobotInfo:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise InstallError("{} is not valid JSON: {}".format(path, exc)) from None
    if not isinstance(doc, dict):
        raise InstallError("{} must be a JSON object".format(path))
    values = {}
    for key in ("l4t", "compute_capability"):
        value = doc.get(key)
        if not isinstance(value, str) or not value:
            raise InstallError('{}: field "{}" must be a non-empty string like "35.4.1" / "7.2"'.format(path, key))
        values[key] = value
    runtime = doc.get("runtime_version", edge_sdk.__version__)
    if not isinstance(runtime, str) or not runtime:
        raise InstallError('{}: field "runtime_version" must be a non-empty string'.format(path))
    return RobotInfo(values["l4t"], values["compute_capability"], runtime, str(path))


def check_target(manifest: Any, robot: RobotInfo) -> None:
    """Refuse a bundle whose target constraints this robot does not meet (InstallError)."""
    target = manifest.target
    label = "bundle {} {}".format(manifest.name, manifest.version)
    l4t = _numeric(robot.l4t)
    low, high = _numeric(target.l4t_min), _numeric(target.l4t_max)
    if l4t < low or l4t[: len(high)] > high:
        raise InstallError(
            "{} needs L4T {}..{}, this robot has L4T {}".format(label, target.l4t_min, target.l4t_max, robot.l4t)
        )
    if robot.compute_capability not in target.compute_capability:
        raise InstallError(
            "{} targets compute capability {}, this robot's GPU is {}".format(
                label, ", ".join(target.compute_capability), robot.compute_capability
            )
        )
    if version_key(robot.runtime_version) < version_key(target.min_runtime_version):
        raise InstallError(
            "{} needs edge-sdk runtime >= {}, this robot runs {}".format(
                label, target.min_runtime_version, robot.runtime_version
            )
        )
