"""The architecture's rules that no single module can check: import layers, lazy imports, zlib."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Dict, List, Set, Tuple

import pytest

REPO = Path(__file__).resolve().parents[1]
LAYERS = ("edge_sdk", "device", "calibration", "compress", "edge_cli")
"""The packages from the bottom layer up: each may import only the packages before it."""


def module_imports(root: Path, packages=LAYERS) -> Dict[str, Set[str]]:
    """Every module of `packages` under `root` -> the project modules it imports, read with ast.

    Imports inside functions count too; `from pkg import name` counts as importing `pkg.name` when
    that is a module, else `pkg`.
    """
    files = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            name = ".".join(path.relative_to(root).with_suffix("").parts)
            files[name[: -len(".__init__")] if name.endswith(".__init__") else name] = path
    graph = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                targets.add(base)
                targets.update(base + "." + alias.name for alias in node.names)
        deps = set()
        for target in targets:
            while target and target not in files:
                target = target.rpartition(".")[0]
            if target and target != name:
                deps.add(target)
        graph[name] = deps
    return graph


def upward_imports(graph: Dict[str, Set[str]]) -> List[Tuple[str, str]]:
    """(importer, imported) pairs where a lower layer imports a higher one."""
    rank = {package: i for i, package in enumerate(LAYERS)}
    return sorted(
        (name, dep)
        for name, deps in graph.items()
        for dep in deps
        if rank[dep.split(".")[0]] > rank[name.split(".")[0]]
    )


def import_cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    cycles = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    cycles.append(sorted(component))
    return cycles


def test_every_top_level_package_has_a_layer():
    packages = {p.parent.name for p in REPO.glob("*/__init__.py")} - {"tests", "benchmarks"}
    assert packages == set(LAYERS)


def test_no_import_runs_up_the_layers():
    assert upward_imports(module_imports(REPO)) == []


def test_no_import_cycles():
    assert import_cycles(module_imports(REPO)) == []


def test_the_checks_catch_a_back_edge_and_a_cycle(tmp_path):
    """A lazy import inside a function from edge_sdk up to device, and a two-module cycle."""
    for package in LAYERS:
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "device" / "sources.py").write_text("import edge_sdk.bundle\n")
    (tmp_path / "edge_sdk" / "bundle.py").write_text("def open_bundle():\n    from device import sources\n")
    (tmp_path / "compress" / "a.py").write_text("from . import b\n")
    (tmp_path / "compress" / "b.py").write_text("def f():\n    from compress.a import x\n")
    graph = module_imports(tmp_path)
    assert upward_imports(graph) == [("edge_sdk.bundle", "device"), ("edge_sdk.bundle", "device.sources")]
    assert import_cycles(graph) == [["compress.a", "compress.b"], ["device.sources", "edge_sdk.bundle"]]


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
