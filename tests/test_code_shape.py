"""Short functions in the product: none in client/, core/, service/ or worker/ reaches 80 lines
(docstring and comments included), so each reads on one screen."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ROOTS = ("client", "core", "service", "worker")
MAX_LINES = 80


def _functions(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    return [
        (node.end_lineno - node.lineno + 1, f"{path.relative_to(REPO)}:{node.lineno} {node.name}")
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno
    ]


def test_no_product_function_reaches_80_lines() -> None:
    found = [f for root in ROOTS for path in (REPO / root).rglob("*.py") for f in _functions(path)]
    assert len(found) > 500  # the walk found the code
    too_long = sorted((f for f in found if f[0] >= MAX_LINES), reverse=True)
    assert not too_long, f"functions of {MAX_LINES}+ lines: {too_long}"


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_benchmarks_and_scripts_import_no_test_module() -> None:
    """What bench/ and scripts/ share with the tests lives in the product (contrail.testing), so
    a benchmark never depends on a test module's internals."""
    scripts = sorted([*(REPO / "bench").glob("*.py"), *(REPO / "scripts").glob("*.py")])
    assert len(scripts) > 10
    offending = {
        str(path.relative_to(REPO)): sorted(
            m for m in _imported_modules(path) if m == "tests" or m.startswith("tests.")
        )
        for path in scripts
    }
    assert {k: v for k, v in offending.items() if v} == {}
