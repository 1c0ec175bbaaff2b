"""Temperatures, power and GPU load of the robot, read from `tegrastats` (or sysfs off a Jetson).

`parse_tegrastats(line)` is pure and tested on recorded lines of JetPack 4 and 5; `Telemetry`
runs `tegrastats` in a background thread and keeps the newest reading.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional

# A sensor that is off reads -256C on JetPack 5; anything at or below this is ignored.
_SENSOR_OFF_CELSIUS = -200.0

_TEMPERATURE = re.compile(r"\b([A-Za-z][\w]*)@(-?\d+(?:\.\d+)?)C\b")
# "VDD_GPU_SOC 2375mW/2375mW" (JetPack 5) or "GPU 0/0" (JetPack 4): current/average milliwatts.
_POWER = re.compile(r"\b([A-Z][A-Z0-9_]*) (\d+)(?:mW)?/(\d+)(?:mW)?(?![\w])")
_GPU_LOAD = re.compile(r"\bGR3D_FREQ (\d+)%")
_RAM = re.compile(r"\bRAM (\d+)/(\d+)MB")
_CPU = re.compile(r"\bCPU \[([^\]]*)\]")
_NOT_POWER_RAILS = {"RAM", "SWAP", "IRAM", "EMC_FREQ", "GR3D_FREQ"}


@dataclass(frozen=True)
class Reading:
    """One telemetry sample.

    temperatures: sensor name -> degrees Celsius.
    power_mw: rail name -> current draw in milliwatts.
    gpu_load: GPU (GR3D) load in percent, None when unknown.
    cpu_load: per-core load in percent, None for a core that is off.
    ram_used_mb, ram_total_mb: memory in MiB, None when unknown.
    """

    temperatures: Dict[str, float] = field(default_factory=dict)
    power_mw: Dict[str, int] = field(default_factory=dict)
    gpu_load: Optional[int] = None
    cpu_load: List[Optional[int]] = field(default_factory=list)
    ram_used_mb: Optional[int] = None
    ram_total_mb: Optional[int] = None

    def to_stats(self) -> Dict[str, object]:
        """The keys the sinks and the preview show: temperatures, gpu_load, power_mw."""
        return {"temperatures": dict(self.temperatures), "gpu_load": self.gpu_load, "power_mw": dict(self.power_mw)}


def parse_tegrastats(line: str) -> Reading:
    """Parse one line printed by `tegrastats`. Unknown parts are ignored, never an error."""
    temperatures = {}
    for name, value in _TEMPERATURE.findall(line):
        celsius = float(value)
        if celsius > _SENSOR_OFF_CELSIUS and not name.isdigit():
            temperatures[name] = celsius
    power = {}
    for name, current, _average in _POWER.findall(line):
        if name not in _NOT_POWER_RAILS:
            power[name] = int(current)
    gpu = _GPU_LOAD.search(line)
    ram = _RAM.search(line)
    cpu = _CPU.search(line)
    cpu_load: List[Optional[int]] = []
    if cpu:
        for core in cpu.group(1).split(","):
            match = re.match(r"\s*(\d+)%", core)
            cpu_load.append(int(match.group(1)) if match else None)
    return Reading(
        temperatures=temperatures,
        power_mw=power,
        gpu_load=int(gpu.group(1)) if gpu else None,
        cpu_load=cpu_load,
        ram_used_mb=int(ram.group(1)) if ram else None,
        ram_total_mb=int(ram.group(2)) if ram else None,
    )


def read_thermal_zones(sys_root: str = "/") -> Dict[str, float]:
    """Temperatures from /sys/class/thermal (any Linux): zone type -> degrees Celsius."""
    temperatures = {}
    for zone in sorted(glob.glob(os.path.join(sys_root, "sys/class/thermal/thermal_zone*"))):
        try:
            with open(os.path.join(zone, "type")) as f:
                name = f.read().strip()
            with open(os.path.join(zone, "temp")) as f:
                celsius = int(f.read().strip()) / 1000.0
        except (OSError, ValueError):
            continue
        if celsius > _SENSOR_OFF_CELSIUS:
            temperatures[name] = celsius
    return temperatures


class Telemetry:
    """Keeps the newest `Reading`: from `tegrastats` when it exists, else from sysfs thermal zones.

    interval_ms: tegrastats sampling period in milliseconds.
    """

    def __init__(self, interval_ms: int = 1000, command: Optional[str] = None) -> None:
        self._interval_ms = interval_ms
        self._command = command or shutil.which("tegrastats")
        self._latest = Reading()
        self._sysfs_read_at = float("-inf")
        self._lock = threading.Lock()
        self._process: Optional[subprocess.Popen] = None
        self._thread: Optional[threading.Thread] = None

    @property
    def source(self) -> str:
        return "tegrastats" if self._command else "sysfs"

    def start(self) -> Telemetry:
        if self._command:
            self._process = subprocess.Popen(
                [self._command, "--interval", str(self._interval_ms)],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
            self._thread = threading.Thread(target=self._read_lines, name="tegrastats", daemon=True)
            self._thread.start()
        return self

    def _read_lines(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        for line in self._process.stdout:
            reading = parse_tegrastats(line)
            with self._lock:
                self._latest = reading

    def latest(self) -> Reading:
        """The newest reading; off a Jetson, sysfs is read at most once per interval."""
        if not self._command:
            now = time.monotonic()
            if now - self._sysfs_read_at >= self._interval_ms / 1000.0:
                self._latest = Reading(temperatures=read_thermal_zones())
                self._sysfs_read_at = now
            return self._latest
        with self._lock:
            return self._latest

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=2)
            except subprocess.TimeoutExpired:
                self._process.kill()
        if self._thread is not None:
            self._thread.join(timeout=2)
