"""The architecture's rules that no single module can check: import layers, lazy imports, zlib."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

# Imports every module of the given packages, after blocking the listed modules, and prints the
# top-level names of everything imported. A blocked module that is imported raises ImportError.
WALK = textwrap.dedent(
    """
    import importlib, pkgutil, sys
    for name in {blocked!r}:
        sys.modules[name] = None
    for package_name in {packages!r}:
        package = importlib.import_module(package_name)
        for info in pkgutil.walk_packages(package.__path__, package_name + "."):
            if not info.name.endswith(".__main__"):
                importlib.import_module(info.name)
    print(" ".join(sorted({{m.split(".")[0] for m in sys.modules}})))
    """
)


def _imported(packages, blocked=()):
    code = WALK.format(packages=list(packages), blocked=list(blocked))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return set(result.stdout.split())


def test_robot_packages_import_without_paddleslim():
    imported = _imported(["device", "calibration"], blocked=["paddleslim"])
    assert "compress" not in imported


def test_device_does_not_import_calibration_or_compress():
    imported = _imported(["device"], blocked=["paddleslim", "compress", "calibration"])
    assert {"device", "edge_sdk"} <= imported


def test_edge_sdk_imports_no_paddle_opencv_or_pyserial_at_import_time():
    imported = _imported(["edge_sdk"])
    assert not {"paddle", "paddleslim", "cv2", "serial"} & imported


def test_cli_help_works_without_paddle_or_opencv():
    code = (
        "import sys\n"
        "for name in ('paddle', 'paddleslim', 'cv2', 'serial'): sys.modules[name] = None\n"
        "from edge_cli import app\n"
        "from typer.testing import CliRunner\n"
        "runner = CliRunner()\n"
        "result = runner.invoke(app, ['--help'])\n"
        "assert result.exit_code == 0, result.output\n"
        "names = [c.name for c in app.registered_commands] + [g.name for g in app.registered_groups]\n"
        "for name in names:\n"
        "    r = runner.invoke(app, [name, '--help'])\n"
        "    assert r.exit_code == 0, (name, r.output)\n"
        "print(len(names))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert int(result.stdout.split()[-1]) >= 3


ZLIB_AFTER_PADDLE = (
    "import {first}\nimport paddle\nimport zlib\nassert zlib.decompress(zlib.compress(b'x' * 1000)) == b'x' * 1000\n"
)


def test_zlib_trap_is_real_without_the_guard():
    """Without zlib imported ahead of paddle, decompress crashes: the guard below is needed."""
    result = subprocess.run(
        [sys.executable, "-c", ZLIB_AFTER_PADDLE.format(first="os")], capture_output=True, timeout=120
    )
    if result.returncode == 0:
        pytest.skip("this Paddle build no longer has the zlib symbol clash")
    assert result.returncode != 0


@pytest.mark.parametrize("entry", ["edge_sdk", "device", "calibration", "compress", "edge_cli"])
def test_every_entry_package_imports_zlib_before_paddle(entry):
    result = subprocess.run(
        [sys.executable, "-c", ZLIB_AFTER_PADDLE.format(first=entry)], capture_output=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
