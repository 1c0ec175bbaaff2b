"""Install, roll back and list bundle versions on a robot, with a health-gated commit.

`install_bundle` verifies a bundle completely before anything is switched (sha256 of every file,
signature against the trusted keys, the manifest's target constraints against this robot, no
downgrade), stores it (see `device.store` for the crash-consistent layout), points `active` at it
in a pending state, runs the health check (the model loads in `device.detector.Detector`, the
golden images agree with the workstation's detections, a minimum FPS) and commits, or restores the
previous version, records the failure and raises `InstallError` with a one-line reason.

The robot: `ROOT/robot.json`, when present, describes it::

    {"l4t": "35.4.1", "compute_capability": "7.2", "runtime_version": "0.1.0"}

(runtime_version defaults to this edge-sdk's version). Without the file, the L4T release is read
from /etc/nv_tegra_release and the compute capability from the Tegra SoC in
/proc/device-tree/compatible; a machine that is neither refuses installs with a message saying
how to write robot.json.

Golden images in a bundle (optional; the golden check is skipped with a warning without them):
see `device.golden` for the format and the comparison.

`python -m device.install FILE --root DIR ...` is a small entry point without the CLI (used by
the power-cut tests, where start-up time matters).
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import edge_sdk
from device.store import (
    BUNDLE_FILE,
    DEFAULT_ROOT,
    FILES,
    INSTALL_INFO,
    Store,
    copy_file_durably,
    crash_point,
    now_iso,
    recover_locked,
    write_json,
)
from edge_sdk.errors import BundleError, EdgeSdkError, InstallError
from edge_sdk.fileio import file_sha256

DEFAULT_KEEP = 3
DEFAULT_FPS_FRAMES = 10
PUBLIC_KEY_SUFFIXES = (".pem", ".pub")  # as edge_sdk.signing (not imported: it needs cryptography)
# Tegra SoC (device-tree "compatible") -> CUDA compute capability.
TEGRA_COMPUTE_CAPABILITY = {"tegra210": "5.3", "tegra186": "6.2", "tegra194": "7.2", "tegra234": "8.7"}
NV_TEGRA_RELEASE = "/etc/nv_tegra_release"
DEVICE_TREE_COMPATIBLE = "/proc/device-tree/compatible"

Log = Callable[[str], None]


def _quiet(message: str) -> None:
    pass


# ----------------------------------------------------------------------------- versions and robot


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
    from device.doctor import parse_l4t_release

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


# ----------------------------------------------------------------------------- installed versions


class InstalledBundle:
    """An installed version, usable wherever an opened `edge_sdk.bundle.Bundle` is (e.g. Detector).

    root: the folder of its extracted files; path: its stored .edgebundle file.
    """

    def __init__(self, folder: Path) -> None:
        from edge_sdk.manifest import Manifest

        info = _read_required(folder / INSTALL_INFO)
        self.folder = folder
        self.dirname = folder.name
        self.path = folder / BUNDLE_FILE
        self.root = folder / FILES
        self.sha256 = info["sha256"]  # type: str
        self.signed = bool(info.get("signed"))
        self.signer_key_id = info.get("signer_key_id")  # type: Optional[str]
        self.info = info
        try:
            self.manifest = Manifest.from_bytes((self.root / "manifest.json").read_bytes())
        except OSError as exc:
            raise InstallError("installed version {} is damaged: {}".format(folder.name, exc)) from None

    def path_of(self, arcname: str) -> Path:
        if self.manifest.file(arcname) is None:
            raise BundleError("bundle {} has no file {!r}".format(self.dirname, arcname))
        return self.root.joinpath(*arcname.split("/"))

    def verify(self) -> None:
        """Check the stored bundle file's sha256 and every extracted file's sha256 (IntegrityError)."""
        from edge_sdk.errors import IntegrityError

        if file_sha256(self.path) != self.sha256:
            raise IntegrityError(
                "installed version {}: stored bundle file does not match its sha256".format(self.dirname)
            )
        for entry in self.manifest.files:
            path = self.root.joinpath(*entry.path.split("/"))
            if not path.is_file() or file_sha256(path) != entry.sha256:
                raise IntegrityError(
                    "installed version {}: file {} is missing or altered".format(self.dirname, entry.path)
                )

    def close(self) -> None:
        """Nothing to release (kept for symmetry with Bundle)."""


def _read_required(path: Path) -> Dict[str, Any]:
    from device.store import read_json

    doc = read_json(path)
    if doc is None:
        raise InstallError("{} is missing or unreadable".format(path))
    return doc


def active_bundle(root: Any = DEFAULT_ROOT) -> InstalledBundle:
    """The active version (after recovery), for `edge-sdk run`. Raises InstallError if none."""
    from device.store import recover

    recover(root)
    store = Store(root)
    active = store.pointer("active")
    if active is None:
        raise InstallError("no bundle is installed in {} (use `edge-sdk install FILE`)".format(store.root))
    return InstalledBundle(store.version_dir(active))


def version_dirname(name: str, version: str, sha256: str) -> str:
    def clean(text: str) -> str:
        return re.sub(r"[^A-Za-z0-9._]", "_", text).strip(".") or "_"

    return "{}-{}-{}".format(clean(name), clean(version), sha256[:12])


# ----------------------------------------------------------------------------- health check


@dataclass
class HealthReport:
    """Outcome of the health check. checks: name -> one-line result; fps: frames per second (detect)."""

    passed: bool = True
    reason: str = ""
    checks: Dict[str, str] = field(default_factory=dict)
    warnings: List[str] = field(default_factory=list)
    fps: Optional[float] = None

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
        }


@dataclass(frozen=True)
class HealthSettings:
    """Health-check tolerances; None: the default of the precision the model runs at (`for_precision`).

    iou: minimum IoU for a robot box to match a golden box of the same class.
    score_tolerance: maximum |robot score - golden score| of a match; boxes whose score is within
    this of the threshold may be missing on either side without counting.
    max_miss_fraction: allowed fraction of unmatched boxes (golden or robot) over all images.
    min_fps: minimum detect() frames per second over fps_frames frames (0: measured, not required).
    Defaults per precision (`device.golden.PRECISION_TOLERANCES`): fp32 0.9 / 0.05 / 10%,
    fp16 0.8 / 0.1 / 20%, int8 0.5 / 0.25 / 34%.
    """

    iou: Optional[float] = None
    score_tolerance: Optional[float] = None
    max_miss_fraction: Optional[float] = None
    min_fps: float = 0.0
    fps_frames: int = DEFAULT_FPS_FRAMES
    device: str = "auto"

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


def health_check(bundle: Any, settings: HealthSettings, log: Log = _quiet) -> HealthReport:
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
        detector = Detector(bundle, device=settings.device)
    except Exception as exc:  # any failure to build the predictor fails the health check
        return report.fail("load", "the model does not load: {}".format(_one_line(exc)))
    report.checks["load"] = "ok ({:.1f} s, {})".format(time.perf_counter() - started, detector.plan.device)
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
        return report.fail("run", "the model fails to run: {}".format(_one_line(exc)))
    finally:
        detector.close()
    return report


def health_check_isolated(folder: Path, settings: HealthSettings, timeout: float = 1800.0) -> HealthReport:
    """`health_check` of an installed version in a child process, so that a model that crashes
    Paddle (a segfault, an abort in TensorRT) fails the check instead of killing the installer."""
    import subprocess
    import sys
    from dataclasses import asdict

    command = [
        sys.executable,
        "-m",
        "device.install",
        "health",
        str(folder),
        "--settings",
        json.dumps(asdict(settings)),
    ]
    env = dict(os.environ)
    env.pop("EDGE_SDK_CRASH_AT", None)
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return HealthReport().fail("health", "the health check took longer than {:g} s".format(timeout))
    if done.returncode < 0:
        return HealthReport().fail("load", "the model crashed the health check (signal {})".format(-done.returncode))
    try:
        doc = json.loads(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        tail = [line for line in done.stderr.splitlines() if line.strip()]
        return HealthReport().fail(
            "health", "the health check failed: {}".format(tail[-1] if tail else "exit {}".format(done.returncode))
        )
    return HealthReport(doc["passed"], doc["reason"], doc["checks"], doc["warnings"], doc["fps"])


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:300]


# ----------------------------------------------------------------------------- install


@dataclass
class InstallResult:
    """outcome: "installed" or "already-installed"; dirname: the version folder."""

    outcome: str
    name: str
    version: str
    sha256: str
    dirname: str
    health: Optional[HealthReport] = None
    pruned: List[str] = field(default_factory=list)
    recovered: List[str] = field(default_factory=list)

    def summary(self) -> str:
        if self.outcome == "already-installed":
            return "{} {} ({}) is already installed and active".format(self.name, self.version, self.sha256[:12])
        text = "installed {} {} ({})".format(self.name, self.version, self.sha256[:12])
        if self.health is None:
            return text + "; health check skipped"
        return text + "; health: " + "; ".join("{} {}".format(k, v) for k, v in self.health.checks.items())


class HealthCheckFailed(InstallError):
    """The new version failed its health check; the previous one was restored."""


class _Locked:
    """Context: the store's lock, with recovery run first; refuses if another process holds it."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.recovered = []  # type: List[str]

    def __enter__(self) -> _Locked:
        self.store.ensure_layout()
        if not self.store.lock(wait=False):
            raise InstallError("another install or rollback is running on {} (lock held)".format(self.store.root))
        try:
            self.recovered = recover_locked(self.store)
        except BaseException:
            self.store.unlock()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.store.unlock()


def _trusted_keys(store: Store, trusted_keys: Optional[Any]) -> Optional[Path]:
    """The folder/file of trusted keys to require, or None when signatures are not required.

    An explicit --trusted-keys must hold keys; the default ROOT/keys requires signatures only when
    it holds at least one key.
    """

    def has_keys(path: Path) -> bool:
        if path.is_dir():
            return any(p.suffix in PUBLIC_KEY_SUFFIXES and p.is_file() for p in path.iterdir())
        return path.is_file()

    if trusted_keys is not None:
        path = Path(trusted_keys)
        if not path.exists():
            raise InstallError("trusted keys {} do not exist".format(path))
        if not has_keys(path):
            raise InstallError("no trusted keys (*.pem, *.pub) in {}".format(path))
        return path
    return store.keys if has_keys(store.keys) else None


def install_bundle(
    bundle_path: Any,
    root: Any = DEFAULT_ROOT,
    trusted_keys: Optional[Any] = None,
    allow_downgrade: bool = False,
    skip_health: bool = False,
    health: HealthSettings = HealthSettings(),
    keep: int = DEFAULT_KEEP,
    log: Log = _quiet,
) -> InstallResult:
    """Verify, store, switch, health-check and commit one bundle. Raises InstallError/BundleError.

    Any refusal or failure leaves the active version as it was and is recorded in history.jsonl.
    """
    store = Store(root)
    bundle_path = Path(bundle_path)
    with _Locked(store) as locked:
        try:
            result = _install_locked(store, bundle_path, trusted_keys, allow_downgrade, skip_health, health, keep, log)
        except HealthCheckFailed:
            raise
        except EdgeSdkError as exc:
            store.record("refused", file=str(bundle_path), reason=str(exc))
            raise
        result.recovered = locked.recovered
        return result


def _install_locked(
    store: Store,
    bundle_path: Path,
    trusted_keys: Optional[Any],
    allow_downgrade: bool,
    skip_health: bool,
    health: HealthSettings,
    keep: int,
    log: Log,
) -> InstallResult:
    from edge_sdk.bundle import open_bundle

    trust = _trusted_keys(store, trusted_keys)
    robot = robot_info(store)
    staging = store.new_staging_dir()
    try:
        log("verifying {}".format(bundle_path.name))
        bundle = open_bundle(bundle_path, staging_dir=staging, trusted_keys=trust)
        manifest = bundle.manifest
        crash_point("install.verified")
        check_target(manifest, robot)
        dirname = version_dirname(manifest.name, manifest.version, bundle.sha256)
        old = store.pointers()
        active_info = store.install_info(old["active"]) if old["active"] else None
        if active_info is not None and active_info.get("sha256") == bundle.sha256:
            bundle.close()
            store.discard(staging)
            store.record(
                "already-installed", name=manifest.name, version=manifest.version, sha256=bundle.sha256, dir=dirname
            )
            return InstallResult("already-installed", manifest.name, manifest.version, bundle.sha256, dirname)
        if active_info is not None and active_info.get("name") == manifest.name and not allow_downgrade:
            current = active_info.get("version", "")
            if version_key(manifest.version) < version_key(current):
                raise InstallError(
                    "bundle {} {} is older than the active {} (pass --allow-downgrade to install it)".format(
                        manifest.name, manifest.version, current
                    )
                )
            if manifest.version == current:
                raise InstallError(
                    "bundle {} {} differs from the active {} {} (sha256 {} vs {}); bump the version "
                    "or pass --allow-downgrade".format(
                        manifest.name,
                        manifest.version,
                        manifest.name,
                        current,
                        bundle.sha256[:12],
                        active_info.get("sha256", "")[:12],
                    )
                )

        created = not store.version_dir(dirname).is_dir()
        old_status = None if created else store.status(dirname)
        if created:
            os.rename(str(bundle.root), str(staging / FILES))  # the Bundle's cleanup then finds nothing
            _make_readable(staging / FILES)
            manifest_path = staging / FILES / "manifest.json"
            _write_manifest(manifest_path, manifest.canonical_bytes())
            copy_file_durably(bundle_path, staging / BUNDLE_FILE, bundle.sha256)
            crash_point("stage.copied")
            info = {
                "name": manifest.name,
                "version": manifest.version,
                "sha256": bundle.sha256,
                "size": bundle.size,
                "signed": bundle.signed,
                "signer_key_id": bundle.signer_key_id,
                "source_file": bundle_path.name,
                "installed_at": now_iso(),
                "precision": manifest.precision,
                "created_at": manifest.created_at,
            }
            write_json(staging / INSTALL_INFO, info, "stage.info")
        bundle.close()
    except BaseException:
        store.discard(staging)
        raise
    if not created:
        store.discard(staging)

    new = {"active": dirname, "previous": old["active"] if old["active"] != dirname else old["previous"]}
    journal = {
        "op": "install",
        "phase": "switching",
        "target": dirname,
        "created": created,
        "old": old,
        "new": new,
        "old_status": old_status,
        "started_at": now_iso(),
    }
    store.write_journal(journal)
    try:
        if created:
            store.publish(staging, dirname)
        store.apply_pointers(new)
        log("switched to {} (pending health check)".format(dirname))

        report = None  # type: Optional[HealthReport]
        if not skip_health:
            try:
                log("health check of {}".format(dirname))
                report = health_check_isolated(store.version_dir(dirname), health)
            except Exception as exc:
                report = HealthReport().fail("health", str(exc) if isinstance(exc, EdgeSdkError) else _one_line(exc))
            if not report.passed:
                _undo(store, journal)
                store.record(
                    "health-failed",
                    name=manifest.name,
                    version=manifest.version,
                    sha256=bundle.sha256,
                    dir=dirname,
                    reason=report.reason,
                )
                restored = old["active"] or "nothing (no version was active)"
                raise HealthCheckFailed(
                    "health check failed for {} {}: {}; restored {}".format(
                        manifest.name, manifest.version, report.reason, restored
                    )
                )

        store.set_status(
            dirname,
            {
                "status": "good",
                "committed_at": now_iso(),
                "health": report.to_dict() if report is not None else {"skipped": True},
            },
        )
        journal["phase"] = "commit"
        store.write_journal(journal)
        store.apply_pointers(new)
        pruned = _prune(store, keep)
        store.record(
            "installed",
            name=manifest.name,
            version=manifest.version,
            sha256=bundle.sha256,
            dir=dirname,
            previous=new["previous"],
            health="skipped" if report is None else "passed",
            fps=None if report is None else report.fps,
        )
        store.clear_journal()
    except HealthCheckFailed:
        raise
    except BaseException:
        # Disk full, Ctrl-C, a bug: the journal says how to finish or undo; do it now.
        try:
            recover_locked(store)
        except Exception:
            pass  # the next recover() at start-up retries
        raise
    return InstallResult("installed", manifest.name, manifest.version, bundle.sha256, dirname, report, pruned)


def _make_readable(top: Path) -> None:
    """Folders 0755 and files 0644: the runtime may run as another user than the installer."""
    for dirpath, _dirnames, filenames in os.walk(str(top)):
        os.chmod(dirpath, 0o755)
        for filename in filenames:
            os.chmod(os.path.join(dirpath, filename), 0o644)


def _write_manifest(path: Path, data: bytes) -> None:
    """Keep the manifest next to the extracted files (InstalledBundle reads it from there)."""
    with open(str(path), "xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _undo(store: Store, journal: Dict[str, Any]) -> None:
    """Restore the pointers of before the switch and drop the version folder the install created."""
    store.apply_pointers(journal["old"])
    target = journal["target"]
    if target not in journal["old"].values():
        if journal["created"]:
            store.discard(store.version_dir(target))
        elif journal.get("old_status") is not None:
            store.set_status(target, journal["old_status"])
    store.clear_journal()


def _prune(store: Store, keep: int) -> List[str]:
    """Remove the oldest versions beyond `keep` besides the active one (previous is always kept)."""
    pointers = store.pointers()
    others = [d for d in store.version_dirs() if d != pointers["active"]]
    others.sort(key=lambda d: ((store.install_info(d) or {}).get("installed_at", ""), d), reverse=True)
    kept = [pointers["previous"]] if pointers["previous"] in others else []
    pruned = []
    for dirname in others:
        if dirname in kept:
            continue
        if len(kept) < max(keep, 0):
            kept.append(dirname)
            continue
        store.discard(store.version_dir(dirname))
        pruned.append(dirname)
    return pruned


# ----------------------------------------------------------------------------- rollback and list


def rollback(root: Any = DEFAULT_ROOT) -> Tuple[str, Optional[str]]:
    """Make `previous` active; the new previous is the newest other good version older than it.

    The rolled-back version is kept, marked "rolled-back". Returns (new active, new previous).
    """
    store = Store(root)
    with _Locked(store):
        old = store.pointers()
        target = old["previous"]
        if target is None or not store.version_dir(target).is_dir():
            raise InstallError("nothing to roll back to: no previous version in {}".format(store.root))
        target_time = (store.install_info(target) or {}).get("installed_at", "")
        candidates = []
        for dirname in store.version_dirs():
            if dirname in (target, old["active"]):
                continue
            status = store.status(dirname) or {}
            installed = (store.install_info(dirname) or {}).get("installed_at", "")
            if status.get("status") == "good" and installed <= target_time:
                candidates.append((installed, dirname))
        new = {"active": target, "previous": max(candidates)[1] if candidates else None}
        set_status = {}
        if old["active"] is not None and store.version_dir(old["active"]).is_dir():
            status = store.status(old["active"]) or {}
            status.update({"status": "rolled-back", "rolled_back_at": now_iso()})
            set_status[old["active"]] = status
        journal = {
            "op": "rollback",
            "phase": "commit",
            "target": target,
            "created": False,
            "old": old,
            "new": new,
            "set_status": set_status,
        }
        store.write_journal(journal)
        store.apply_pointers(new)
        for dirname, status in set_status.items():
            store.set_status(dirname, status)
        store.record("rolled-back", dir=old["active"], active=target, previous=new["previous"])
        store.clear_journal()
        return target, new["previous"]


def list_versions(root: Any = DEFAULT_ROOT) -> List[Dict[str, Any]]:
    """Installed versions, newest first: dir, name, version, sha256, installed_at, signed_by, status,
    health (one line), fps, active, previous. Runs recovery first when the store needs it."""
    from device.store import recover

    store = Store(root)
    if not store.root.is_dir():
        return []
    recover(root)
    pointers = store.pointers()
    rows = []
    for dirname in store.version_dirs():
        info = store.install_info(dirname) or {}
        status = store.status(dirname) or {}
        health = status.get("health") or {}
        if health.get("skipped"):
            health_text = "skipped"
        elif health:
            health_text = "passed" if health.get("passed") else "failed: " + str(health.get("reason", ""))
        else:
            health_text = "pending"
        rows.append(
            {
                "dir": dirname,
                "name": info.get("name", "?"),
                "version": info.get("version", "?"),
                "sha256": info.get("sha256", ""),
                "installed_at": info.get("installed_at", ""),
                "signed_by": info.get("signer_key_id") if info.get("signed") else None,
                "status": status.get("status", "pending"),
                "health": health_text,
                "fps": health.get("fps"),
                "active": dirname == pointers["active"],
                "previous": dirname == pointers["previous"],
            }
        )
    rows.sort(key=lambda r: (r["installed_at"], r["dir"]), reverse=True)
    return rows


# ----------------------------------------------------------------------------- entry point


def main(argv: Optional[Sequence[str]] = None) -> int:
    """`python -m device.install install FILE | rollback | list [--root DIR] [...]`: without the CLI's start-up cost."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m device.install", description="Install bundles on this robot.")
    commands = parser.add_subparsers(dest="command", required=True)
    install = commands.add_parser("install", help="install a bundle")
    install.add_argument("file")
    install.add_argument("--trusted-keys", default=None)
    install.add_argument("--allow-downgrade", action="store_true")
    install.add_argument("--skip-health", action="store_true")
    install.add_argument("--min-fps", type=float, default=0.0)
    install.add_argument("--keep", type=int, default=DEFAULT_KEEP)
    commands.add_parser("rollback", help="make the previous version active")
    commands.add_parser("list", help="print the installed versions as JSON")
    health = commands.add_parser("health", help="health-check an installed version folder; print the report as JSON")
    health.add_argument("folder")
    health.add_argument("--settings", default="{}", help="HealthSettings fields as JSON")
    for name, sub in commands.choices.items():
        if name != "health":
            sub.add_argument("--root", default=DEFAULT_ROOT)
    args = parser.parse_args(argv)
    try:
        if args.command == "install":
            result = install_bundle(
                args.file,
                args.root,
                args.trusted_keys,
                args.allow_downgrade,
                args.skip_health,
                HealthSettings(min_fps=args.min_fps),
                args.keep,
            )
            print(result.summary())
        elif args.command == "health":
            settings = HealthSettings(**json.loads(args.settings))
            print(json.dumps(health_check(InstalledBundle(Path(args.folder)), settings).to_dict()))
        elif args.command == "rollback":
            print("active: {}; previous: {}".format(*rollback(args.root)))
        else:
            print(json.dumps(list_versions(args.root), sort_keys=True))
    except EdgeSdkError as exc:
        print("error: {}".format(exc), file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
