"""The shape of the tree: what a newcomer can rely on when reading it.

Modules stay small enough to read in one sitting and functions short enough to hold
in one's head (the native kernel's C++ source is the one exception), and
``make bench`` runs every benchmark the folder holds.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODULE_LINES = 400
FUNCTION_LINES = 60


def _sources() -> list[Path]:
    return sorted((ROOT / "omax").rglob("*.py"))


def test_no_module_is_over_400_lines():
    long = {
        str(p.relative_to(ROOT)): n
        for p in _sources()
        if (n := len(p.read_text().splitlines())) > MODULE_LINES
    }
    assert not long, f"modules over {MODULE_LINES} lines: {long}"


def test_no_function_is_over_60_lines():
    long = []
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines})")
    assert not long, f"functions over {FUNCTION_LINES} lines: {long}"


def test_make_bench_runs_every_benchmark():
    makefile = (ROOT / "Makefile").read_text()
    listed = set(re.search(r"BENCHMARKS := ((?:.|\\\n)*?)\n(?!\t)", makefile)[1].split())
    scripts = {
        p.stem
        for p in (ROOT / "benchmarks").glob("*.py")
        if not p.stem.startswith("_") and p.stem not in {"make_models", "gpu_check", "gpu_bench"}
    }
    assert scripts <= listed, f"benchmarks make bench does not run: {scripts - listed}"
    for driver in ("make_models.py", "gpu_check.py", "gpu_bench.sh"):
        assert f"benchmarks/{driver}" in makefile
