"""Exceptions a user can cause. The CLI prints each as one line and exits non-zero."""

from __future__ import annotations


class EdgeSdkError(Exception):
    """Base of every error caused by input, configuration or environment (not a bug)."""

    exit_code = 2


class BundleError(EdgeSdkError):
    """A bundle that cannot be read, written or trusted."""


class ManifestError(BundleError):
    """A manifest field is missing, of the wrong type or out of range."""


class UnsafeArchiveError(BundleError):
    """A bundle member that could escape staging or exhaust the disk."""


class IntegrityError(BundleError):
    """A file whose size or sha256 differs from the manifest, or a missing/extra file."""


class SignatureError(BundleError):
    """A bundle that is unsigned, or signed by a key that is not trusted."""


class DataError(EdgeSdkError):
    """A dataset file or entry that cannot be read."""


class RecipeError(EdgeSdkError):
    """A recipe field that is missing or invalid."""


class SourceError(EdgeSdkError):
    """A frame source (camera, file, stream) that cannot be opened."""


class SinkError(EdgeSdkError):
    """An output (serial port, file, preview server) that cannot be opened."""


class PredictorError(EdgeSdkError):
    """A predictor that cannot be built with the requested device or precision."""


class InstallError(EdgeSdkError):
    """An install, rollback or flash that was refused or failed."""
