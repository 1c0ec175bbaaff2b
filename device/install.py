"""Install, roll back and list bundle versions on a robot, with a health-gated commit.

`install_bundle` verifies a bundle completely before anything is switched (sha256 of every file,
signature against the trusted keys, the manifest's target constraints against this robot (see
`device.robot`), no downgrade), stores it (see `device.store` for the crash-consistent layout),
points `active` at it in a pending state, runs the health check (`device.health`: the model loads
in `device.detector.Detector`, the golden images agree with the workstation's detections, a
minimum FPS) and commits, or restores the previous version, records the failure and raises
`InstallError` with a one-line reason.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from device.health import HealthReport, HealthSettings, health_check_isolated, one_line
from device.robot import RobotInfo, check_target, robot_info, version_key
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
from edge_sdk.errors import EdgeSdkError, InstallError

DEFAULT_KEEP = 3
PUBLIC_KEY_SUFFIXES = (".pem", ".pub")  # as edge_sdk.signing (not imported: it needs cryptography)

Log = Callable[[str], None]


def _quiet(message: str) -> None:
    pass


def version_dirname(name: str, version: str, sha256: str) -> str:
    def clean(text: str) -> str:
        return re.sub(r"[^A-Za-z0-9._]", "_", text).strip(".") or "_"

    return "{}-{}-{}".format(clean(name), clean(version), sha256[:12])


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
        checks = "; ".join("{} {}".format(k, v) for k, v in self.health.checks.items())
        return "{}; health {}: {}".format(text, self.health.verdict(), checks)


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
    """Verify and stage, switch (journaled), health-check, commit; see `install_bundle`."""
    trust = _trusted_keys(store, trusted_keys)
    robot = robot_info(store)
    staging = store.new_staging_dir()
    try:
        bundle = _open_verified(bundle_path, staging, trust, robot, log)
        manifest = bundle.manifest
        dirname = version_dirname(manifest.name, manifest.version, bundle.sha256)
        old = store.pointers()
        if _is_active(store, old, bundle, allow_downgrade):
            bundle.close()
            store.discard(staging)
            store.record(
                "already-installed", name=manifest.name, version=manifest.version, sha256=bundle.sha256, dir=dirname
            )
            return InstallResult("already-installed", manifest.name, manifest.version, bundle.sha256, dirname)
        created = not store.version_dir(dirname).is_dir()
        old_status = None if created else store.status(dirname)
        if created:
            _stage(bundle, bundle_path, staging)
        bundle.close()
    except BaseException:
        store.discard(staging)
        raise
    if not created:
        store.discard(staging)

    journal = _switch_journal(store, dirname, created, old, old_status)
    try:
        if created:
            store.publish(staging, dirname)
        store.apply_pointers(journal["new"])
        log("switched to {} (pending health check)".format(dirname))
        report = None if skip_health else _health_gate(store, journal, bundle, health, log)
        pruned = _commit(store, journal, bundle, report, keep)
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


def _open_verified(bundle_path: Path, staging: Path, trust: Optional[Path], robot: RobotInfo, log: Log) -> Any:
    """The bundle opened into `staging` (every sha256 and the signature checked) whose target fits `robot`."""
    from edge_sdk.bundle import open_bundle

    log("verifying {}".format(bundle_path.name))
    bundle = open_bundle(bundle_path, staging_dir=staging, trusted_keys=trust)
    crash_point("install.verified")
    check_target(bundle.manifest, robot)
    return bundle


def _is_active(store: Store, old: Dict[str, Optional[str]], bundle: Any, allow_downgrade: bool) -> bool:
    """True when `bundle` is the active version already; InstallError for an older version of the
    active bundle or different bytes under the same version (unless allow_downgrade)."""
    manifest = bundle.manifest
    active_info = store.install_info(old["active"]) if old["active"] else None
    if active_info is None:
        return False
    if active_info.get("sha256") == bundle.sha256:
        return True
    if active_info.get("name") == manifest.name and not allow_downgrade:
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
    return False


def _stage(bundle: Any, bundle_path: Path, staging: Path) -> None:
    """Fill `staging` with a new version folder: the extracted files, the manifest, the bundle file
    and its install info."""
    manifest = bundle.manifest
    os.rename(str(bundle.root), str(staging / FILES))  # the Bundle's cleanup then finds nothing
    _make_readable(staging / FILES)
    _write_manifest(staging / FILES / "manifest.json", manifest.canonical_bytes())
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


def _switch_journal(
    store: Store, dirname: str, created: bool, old: Dict[str, Optional[str]], old_status: Optional[Dict[str, Any]]
) -> Dict[str, Any]:
    """Write (and return) the journal that lets recovery finish or undo switching to `dirname`."""
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
    return journal


def _health_gate(store: Store, journal: Dict[str, Any], bundle: Any, health: HealthSettings, log: Log) -> HealthReport:
    """The health report of the switched-to version; on failure undo the switch, record it and
    raise HealthCheckFailed."""
    manifest = bundle.manifest
    dirname = journal["target"]
    try:
        log("health check of {}".format(dirname))
        report = health_check_isolated(store.version_dir(dirname), health, log=log)
    except Exception as exc:
        report = HealthReport().fail("health", str(exc) if isinstance(exc, EdgeSdkError) else one_line(exc))
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
        restored = journal["old"]["active"] or "nothing (no version was active)"
        raise HealthCheckFailed(
            "health check failed for {} {}: {}; restored {}".format(
                manifest.name, manifest.version, report.reason, restored
            )
        )
    if report.engine is not None:
        from device.predictor import hand_over_engine_cache
        from device.service import installed_unit_user

        hand_over_engine_cache(Path(report.engine["folder"]), installed_unit_user())
    return report


def _commit(store: Store, journal: Dict[str, Any], bundle: Any, report: Optional[HealthReport], keep: int) -> List[str]:
    """Mark the switched-to version good, prune old versions, record the install; returns the pruned folders."""
    manifest = bundle.manifest
    dirname = journal["target"]
    new = journal["new"]
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
        health="skipped" if report is None else report.verdict(),
        fps=None if report is None else report.fps,
    )
    store.clear_journal()
    return pruned


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
            health_text = HealthReport.from_dict(health).verdict()
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
