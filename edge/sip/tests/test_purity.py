"""edge/sip stays sans-IO: no module of the library imports I/O, clocks, threads or Django."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent
FORBIDDEN = {
    "asyncio",
    "concurrent",
    "datetime",
    "django",
    "importlib",
    "multiprocessing",
    "selectors",
    "socket",
    "ssl",
    "subprocess",
    "threading",
    "time",
}
MODULES = sorted(path for path in PACKAGE.rglob("*.py") if "tests" not in path.parts)


def imported_top_level_names(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "__import__":
            names.add("__import__")
    return names


def test_the_scan_sees_the_library() -> None:
    assert {"message.py", "parser.py", "uri.py"} <= {path.name for path in MODULES}


@pytest.mark.parametrize("path", MODULES, ids=lambda path: str(path.relative_to(PACKAGE)))
def test_module_imports_nothing_that_does_io(path: Path) -> None:
    assert imported_top_level_names(path) & (FORBIDDEN | {"__import__"}) == set()
