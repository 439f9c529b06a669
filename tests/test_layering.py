"""The three packages' layering and size, read from the source: ``trainers`` at the bottom,
``spaces`` above it, ``search`` on top; the read side free of Ray and of the writer; no module
so long that a newcomer must hold several jobs at once."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("search", "spaces", "trainers")
#: What each package may never import (at module level or inside a function).
FORBIDDEN = {
    "trainers": {"search", "spaces", "ray", "optuna", "mlflow"},
    "spaces": {"search", "ray", "mlflow"},
}
#: Past this a module is likely doing more than one job: split it by job, not by line count.
MAX_LINES = 400


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def _imported(path: Path) -> set[str]:
    """The top-level names of every module ``path`` imports, wherever in the file."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_lower_packages_import_nothing_above_them(package: str) -> None:
    wrong = {
        str(path.relative_to(ROOT)): sorted(_imported(path) & FORBIDDEN[package])
        for path in _modules(package)
    }
    assert {k: v for k, v in wrong.items() if v} == {}


def test_the_scan_sees_imports_inside_functions(tmp_path: Path) -> None:
    source = tmp_path / "lazy.py"
    source.write_text("def f():\n    import ray.tune\n    from search.study import x\n")
    assert _imported(source) == {"ray", "search"}


def test_no_module_is_longer_than_the_limit() -> None:
    lengths = {
        str(path.relative_to(ROOT)): len(path.read_text().splitlines())
        for package in PACKAGES
        for path in _modules(package)
    }
    assert {k: n for k, n in lengths.items() if n > MAX_LINES} == {}


def test_the_readme_names_every_module_once() -> None:
    """README's "How it is built" gives each module one line: a new module gets its line."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## How it is built", 1)[1].split("\n## ", 1)[0]
    paths = [
        str(path.relative_to(ROOT))
        for package in PACKAGES
        for path in _modules(package)
        if path.name not in ("__init__.py", "__main__.py")
    ]
    assert {p: section.count(f"`{p}`") for p in paths if section.count(f"`{p}`") != 1} == {}


@pytest.mark.parametrize(
    "module", ["search.leaderboard", "search.report", "search.resume", "search.cli"]
)
def test_the_read_side_imports_neither_ray_nor_the_writer(module: str) -> None:
    """leaderboard, report and resume read MLflow and Optuna, and the CLI must answer a bad flag
    at once: Ray Tune and the tracker (a Tune callback) are not needed for either."""
    code = (
        f"import sys, {module}; "
        "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.') "
        "or m == 'search.tracking'))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        },
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
