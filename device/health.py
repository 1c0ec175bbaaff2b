"""The health check of a bundle: the model loads, the golden images agree, a minimum FPS.

`health_check` runs it in this process; `health_check_isolated` runs it on an installed version in
a child process (`python -m device.health FOLDER SETTINGS_JSON`, which prints the report as one
JSON line), so that a model that crashes Paddle fails the check instead of killing the installer.
Golden images in a bundle are optional (the golden check is skipped with a warning without them):
see `device.golden` for the format and the comparison.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from edge_sdk.errors import BundleError, EdgeSdkError
from edge_sdk.model_files import ModelFiles

DEFAULT_FPS_FRAMES = 10

Log = Callable[[str], None]


def _quiet(message: str) -> None:
    pass


NO_GOLDEN_CHECK = "loaded (no golden check)"
"""The verdict of a passed health check that had no golden images to compare: the model only loaded and ran."""


@dataclass
class HealthReport:
    """Outcome of the health check. checks: name -> one-line result; fps: frames per second (detect);
    engine: the TensorRT engine the check built or loaded (key, folder, plan), None without TensorRT."""

    passed: bool = True
    reason: str = ""
    checks: Dict[str, str] = field(default_factory=dict)
    warnings: List[str] = field(default_factory=list)
    fps: Optional[float] = None
    engine: Optional[Dict[str, str]] = None

    def fail(self, check: str, reason: str) -> HealthReport:
        self.passed = False
        self.reason = reason
        self.checks[check] = "failed: " + reason
        return self

    def to_dict(self) -> Dict[str, Any]:
        return {
            "passed": self.passed,
            "reason": self.reason,
            "checks": self.checks,
            "warnings": self.warnings,
            "fps": self.fps,
            "engine": self.engine,
        }

    @classmethod
    def from_dict(cls, doc: Dict[str, Any]) -> HealthReport:
        """The report `to_dict` wrote (missing keys take their defaults)."""
        return cls(
            bool(doc.get("passed", True)),
            str(doc.get("reason", "")),
            dict(doc.get("checks") or {}),
            list(doc.get("warnings") or []),
            doc.get("fps"),
            doc.get("engine"),
        )

    def verdict(self) -> str:
        """What was verified, in a few words: "passed" only when golden images were compared,
        NO_GOLDEN_CHECK when the model loaded without any, else "failed: REASON"."""
        if not self.passed:
            return "failed: " + self.reason
        return "passed" if self.checks.get("golden", "").startswith("ok") else NO_GOLDEN_CHECK


@dataclass(frozen=True)
class HealthSettings:
    """Health-check tolerances; None: the default of the precision the model runs at (`for_precision`).

    iou: minimum IoU for a robot box to match a golden box of the same class.
    score_tolerance: maximum |robot score - golden score| of a match; boxes whose score is within
    this of the threshold may be missing on either side without counting.
    max_miss_fraction: allowed fraction of unmatched boxes (golden or robot) over all images.
    min_fps: minimum detect() frames per second over fps_frames frames (0: measured, not required).
    device, precision, dla_core, threads, engine_cache: the predictor options of `edge-sdk run` (see
    device.predictor.PlanOptions), so that on a GPU the check builds and caches the engine `run` loads.
    Defaults per precision (`device.golden.PRECISION_TOLERANCES`): fp32 0.9 / 0.05 / 10%,
    fp16 0.8 / 0.1 / 20%, int8 0.5 / 0.25 / 34%.
    """

    iou: Optional[float] = None
    score_tolerance: Optional[float] = None
    max_miss_fraction: Optional[float] = None
    min_fps: float = 0.0
    fps_frames: int = DEFAULT_FPS_FRAMES
    device: str = "auto"
    precision: Optional[str] = None
    dla_core: Optional[int] = None
    threads: Optional[int] = None
    engine_cache: Optional[str] = None

    def plan_options(self) -> Any:
        """The predictor options the check loads the model with: those the service's `run` will use."""
        from device.predictor import PlanOptions

        return PlanOptions(self.precision, self.device, self.dla_core, self.threads, self.engine_cache)

    @classmethod
    def for_precision(cls, *precisions: str, **fields: Any) -> HealthSettings:
        """Settings with the tolerances of the loosest of `precisions` (e.g. the bundle's
        manifest.precision and the precision its engine runs at); `fields` set the other fields."""
        return cls(**fields).resolved(*precisions)

    def resolved(self, *precisions: str) -> HealthSettings:
        """These settings with every tolerance left None taken from `for_precision`'s defaults."""
        from dataclasses import replace

        from device.golden import tolerance_for

        default = tolerance_for(*precisions)
        return replace(
            self,
            iou=default.iou if self.iou is None else self.iou,
            score_tolerance=default.score_tolerance if self.score_tolerance is None else self.score_tolerance,
            max_miss_fraction=default.max_miss_fraction if self.max_miss_fraction is None else self.max_miss_fraction,
        )


def health_check(bundle: ModelFiles, settings: HealthSettings, log: Log = _quiet) -> HealthReport:
    """Load the bundle in Detector, compare golden images, measure FPS. Never raises for a bad model."""
    import numpy as np

    from device.golden import GOLDEN_JSON, check_golden, load_golden, read_golden_image

    report = HealthReport()
    try:
        if hasattr(bundle, "verify"):
            bundle.verify()
        report.checks["files"] = "ok"
    except EdgeSdkError as exc:
        return report.fail("files", str(exc))
    try:
        golden = load_golden(bundle)
    except EdgeSdkError as exc:
        return report.fail("golden", str(exc))

    from device.detector import Detector

    started = time.perf_counter()
    try:
        detector = Detector(bundle, plan_options=settings.plan_options(), log=log)
    except Exception as exc:  # any failure to build the predictor fails the health check
        return report.fail("load", "the model does not load: {}".format(one_line(exc)))
    if detector.plan.use_tensorrt:
        plan = detector.plan
        report.engine = {"key": plan.cache_key, "folder": str(plan.engine_cache_dir), "plan": plan.describe()}
    report.checks["load"] = "ok ({:.1f} s, {})".format(time.perf_counter() - started, detector.plan.describe())
    log("health: model loaded")
    settings = settings.resolved(bundle.manifest.precision, detector.plan.precision)
    try:
        sample = None
        if golden is None:
            report.warnings.append("bundle has no {}: golden check skipped".format(GOLDEN_JSON))
            report.checks["golden"] = "skipped (no golden images)"
        else:
            try:
                results = check_golden(detector, bundle, golden, settings.iou, settings.score_tolerance)
                sample = read_golden_image(bundle, golden.entries[0]) if golden.entries else None
            except BundleError as exc:
                return report.fail("golden", str(exc))
            matched = sum(r.matched for r in results)
            unmatched = sum(r.unmatched for r in results)
            counted = sum(r.counted for r in results)
            fraction = unmatched / counted if counted else 0.0
            summary = (
                "{} images, {} boxes matched, {} unmatched ({:.0%}, allowed {:.0%} at IoU {:g}, score +-{:g})".format(
                    len(results),
                    matched,
                    unmatched,
                    fraction,
                    settings.max_miss_fraction,
                    settings.iou,
                    settings.score_tolerance,
                )
            )
            if fraction > settings.max_miss_fraction:
                problems = ["; {}: {}".format(r.image, p) for r in results for p in r.problems]
                return report.fail("golden", "golden check failed: " + summary + "".join(problems[:1]))
            report.checks["golden"] = "ok: " + summary
        log("health: golden check done")
        if sample is None:
            height, width = bundle.manifest.input.size
            sample = np.full((height, width, 3), 114, dtype=np.uint8)
        detector.detect(sample)  # warm-up
        frames = max(1, settings.fps_frames)
        t0 = time.perf_counter()
        for _ in range(frames):
            detector.detect(sample)
        report.fps = frames / max(time.perf_counter() - t0, 1e-9)
        if settings.min_fps > 0 and report.fps < settings.min_fps:
            return report.fail(
                "fps", "{:.1f} FPS over {} frames, below the minimum {:g}".format(report.fps, frames, settings.min_fps)
            )
        report.checks["fps"] = "{:.1f} FPS over {} frames".format(report.fps, frames) + (
            " (minimum {:g})".format(settings.min_fps) if settings.min_fps > 0 else ""
        )
    except Exception as exc:
        return report.fail("run", "the model fails to run: {}".format(one_line(exc)))
    finally:
        detector.close()
    return report


STATUS_PREFIX = "status: "
"""Marks the child's progress lines on its stderr (`health_check_isolated` passes them to its log)."""


def health_check_isolated(
    folder: Path, settings: HealthSettings, timeout: float = 1800.0, log: Log = _quiet
) -> HealthReport:
    """`health_check` of an installed version in a child process, so that a model that crashes
    Paddle (a segfault, an abort in TensorRT) fails the check instead of killing the installer.
    log: receives the child's progress as it happens (e.g. that the TensorRT engine is being built)."""
    import subprocess
    import sys
    import threading
    from dataclasses import asdict

    command = [
        sys.executable,
        "-m",
        "device.health",
        str(folder),
        json.dumps(asdict(settings)),
    ]
    env = dict(os.environ)
    env.pop("EDGE_SDK_CRASH_AT", None)
    child = subprocess.Popen(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    timer = threading.Timer(timeout, child.kill)
    timer.start()
    stdout = []  # type: List[str]
    reader = threading.Thread(target=lambda: stdout.append(child.stdout.read()), daemon=True)
    reader.start()
    stderr = []  # type: List[str]
    try:
        for line in child.stderr:
            if line.startswith(STATUS_PREFIX):
                log(line[len(STATUS_PREFIX) :].rstrip("\n"))
            else:
                stderr.append(line)
        returncode = child.wait()
        reader.join()
    finally:
        timed_out = not timer.is_alive()
        timer.cancel()
        if child.poll() is None:
            child.kill()
            child.wait()
    if timed_out:
        return HealthReport().fail("health", "the health check took longer than {:g} s".format(timeout))
    if returncode < 0:
        return HealthReport().fail("load", "the model crashed the health check (signal {})".format(-returncode))
    try:
        doc = json.loads("".join(stdout).strip().splitlines()[-1])
    except (ValueError, IndexError):
        tail = [line for line in stderr if line.strip()]
        return HealthReport().fail(
            "health",
            "the health check failed: {}".format(tail[-1].strip() if tail else "exit {}".format(returncode)),
        )
    return HealthReport.from_dict(doc)


def one_line(exc: BaseException) -> str:
    """The exception's message on one line, at most 300 characters (its type name when empty)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:300]


def main(argv: Optional[Sequence[str]] = None) -> int:
    """`python -m device.health FOLDER SETTINGS_JSON`: health-check an installed version folder,
    print the report as one JSON line (the child process of `health_check_isolated`)."""
    import sys

    from device.installed import InstalledBundle

    folder, settings_json = sys.argv[1:] if argv is None else argv
    try:
        settings = HealthSettings(**json.loads(settings_json))
        report = health_check(
            InstalledBundle(Path(folder)), settings, lambda m: print(STATUS_PREFIX + m, file=sys.stderr, flush=True)
        )
        print(json.dumps(report.to_dict()))
    except EdgeSdkError as exc:
        print("error: {}".format(exc), file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
