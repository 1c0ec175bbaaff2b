"""Routine output stays quiet: what Paddle, PaddleSlim and their C++ code print is hidden unless verbose.

One switch, `quiet_libraries(verbose)`, called by a command before anything imports paddle:

- glog's INFO and WARNING lines (`I1203 ... New Executor is Running`, `tcp_utils`) through
  GLOG_minloglevel, which processes started later (data-parallel workers) inherit;
- Python warnings raised inside those libraries (`UserWarning: When training, we now always track
  global mean and variance`, once per epoch);
- their loggers' records below ERROR (PaddleSlim's INFO lines with temporary paths);
- what C++ code writes straight to stderr (`---    quantized 50 fused_conv2d ops`, 32 lines per
  INT8 predictor), for the blocks wrapped in `native_output_quieted()`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import warnings
from typing import Iterator

LIBRARIES = ("paddle", "paddleslim", "_distutils_hack")
"""Top-level modules whose warnings and log records below ERROR are routine."""
VERBOSE_HELP = (
    "Also show what Paddle and PaddleSlim print (glog lines, their warnings and INFO logs, INT8 pass counts)."
)
"""The help of `--verbose`, the same on every command that runs Paddle."""
GLOG_LEVEL = "2"
"""GLOG_minloglevel when quiet: ERROR and FATAL only."""

_quiet = True


class _LibraryLogger(logging.Logger):
    """A logger that drops the records below ERROR of LIBRARIES' loggers (they set their own level and handler)."""

    def handle(self, record: logging.LogRecord) -> None:
        if _quiet and record.levelno < logging.ERROR and self.name.split(".")[0] in LIBRARIES:
            return
        super().handle(record)


def quiet_libraries(verbose: bool) -> None:
    """Hide the libraries' routine output (see the module docstring), or show all of it when `verbose`.

    Call before paddle is imported: glog reads GLOG_minloglevel once, and loggers created before
    this call keep their class.
    """
    global _quiet
    _quiet = not verbose
    if verbose:
        os.environ["GLOG_minloglevel"] = "0"  # also when a quiet parent process (or test) left it at GLOG_LEVEL
        return
    os.environ.setdefault("GLOG_minloglevel", GLOG_LEVEL)
    pattern = r"({})(\.|$)".format("|".join(LIBRARIES))
    warnings.filterwarnings("ignore", module=pattern)
    logging.setLoggerClass(_LibraryLogger)


@contextlib.contextmanager
def native_output_quieted() -> Iterator[None]:
    """Hold back what is written to file descriptor 2 (C++ code included) during the block.

    What was held back is written out after all when the block raises, or when `quiet_libraries(True)`
    asked for verbose output. Other threads writing to stderr meanwhile are held back too.
    """
    if not _quiet:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    held = tempfile.TemporaryFile()
    failed = False
    try:
        os.dup2(held.fileno(), 2)
        yield
    except BaseException:
        failed = True
        raise
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        if failed:
            held.seek(0)
            sys.stderr.write(held.read().decode("utf-8", "replace"))
            sys.stderr.flush()
        held.close()
