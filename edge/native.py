"""The edge's native build: its sans-IO core compiled to C extension modules with mypyc.

Why: the edge spends its CPU in the interpreter, spread over thousands of small functions
(parsing, transactions, the B2BUA's bookkeeping) with no single hot spot left to rewrite.
mypyc, part of mypy (which already checks this code with ``--strict``), compiles the same
annotated modules to C, as mypy and black ship themselves; the source is unchanged and runs
interpreted wherever there is no build. Measured with bench/edge_cps.py on one machine, the
same day: 1,400 calls/s compiled against 1,100 interpreted, and bench/sip_parse.py's ratio to
sipmessage 3.9 against 2.5.

What is compiled: `COMPILED`, the pure core. Not the asyncio glue (edge/runtime: it waits on
sockets, not on bytecode), and not edge/cdr.py or edge/config.py: they validate untyped JSON by
design, and a compiled function checks its argument types on entry, so a corrupt journal line or
snapshot would raise TypeError before the validation could name the field.

Dataclasses: mypyc compiles a class's own ``__init__`` but leaves the one the dataclass
decorator generates to the interpreter (measured: a frozen two-field dataclass built in 1,125 ns,
the same class with its ``__init__`` written out in 114 ns). The values the core builds per
message or per call (transaction events, `Transmit`, `CallEvent`, URIs, Vias, slot requests...)
are therefore declared ``@dataclass(init=False, ...)`` with a written ``__init__``, and not
``frozen`` (a frozen class's ``__setattr__`` would refuse that ``__init__``); those that were
frozen keep their hash (``unsafe_hash``) and are treated as immutable. With the character
checks that follow it, this took a call through the compiled core from 2.11 M instructions to
1.69 M (``bench/edge_core.py``, callgrind).

Freshness: the build writes `MANIFEST` with the SHA-256 of each compiled source. When the
package is imported (edge/__init__.py calls `select`), the compiled modules are used only if
every source still matches; otherwise, or with ``TRUNKLINE_EDGE_NATIVE=0``, ``edge`` and
``edge.sip`` import their ``.py`` files and a warning names the first changed file. An edited
checkout therefore never runs stale machine code; ``make`` rebuilds it.

Command line: ``python -m edge.native_build build|status|clean`` (edge/native_build.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import warnings
from importlib.machinery import (
    BYTECODE_SUFFIXES,
    EXTENSION_SUFFIXES,
    SOURCE_SUFFIXES,
    FileFinder,
    SourceFileLoader,
    SourcelessFileLoader,
)
from pathlib import Path

__all__ = ["COMPILED", "MANIFEST", "build", "clean", "is_compiled", "select", "status"]

EDGE_DIR = Path(__file__).resolve().parent
REPO = EDGE_DIR.parent
MANIFEST = EDGE_DIR / "native-manifest.json"
GROUP = "edge._compiled"  # one shared library, edge/_compiled__mypyc.*.so, for every module
BUILD_DIR = REPO / "var" / "native-build"
ENV = "TRUNKLINE_EDGE_NATIVE"  # "0": always interpreted

COMPILED = (
    "edge/sip/errors.py",
    "edge/sip/grammar.py",
    "edge/sip/uri.py",
    "edge/sip/message.py",
    "edge/sip/parser.py",
    "edge/sip/timers.py",
    "edge/sip/transaction.py",
    "edge/sip/dialog.py",
    "edge/sip/sdp.py",
    "edge/sip/digest.py",
    "edge/numbering.py",
    "edge/policy.py",
    "edge/routing.py",
    "edge/limits.py",
    "edge/registrar.py",
    "edge/security.py",
    "edge/calls.py",
    "edge/call_events.py",
    "edge/challenges.py",
    "edge/b2bua.py",
)
# The package directories that hold compiled modules.
_PACKAGE_DIRS = (EDGE_DIR, EDGE_DIR / "sip")

_status = "interpreted (not built)"


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _sources() -> dict[str, str | None]:
    """Each compiled source's SHA-256 (None for one that is missing)."""
    return {name: _digest(REPO / name) if (REPO / name).exists() else None for name in COMPILED}


def _built_files() -> list[Path]:
    return sorted(
        {
            path
            for directory in _PACKAGE_DIRS
            for suffix in EXTENSION_SUFFIXES  # ".cpython-311-x86_64-linux-gnu.so", ".so", ...
            for path in directory.glob(f"*{suffix}")
        }
    )


def _stale() -> str | None:
    """Why the build does not match the sources ("edge/routing.py changed", "no build
    manifest", ...), or None when it does."""
    try:
        recorded = json.loads(MANIFEST.read_text())
    except (OSError, ValueError):
        return "no build manifest"
    if recorded.get("python") != sys.implementation.cache_tag:
        return f"built for {recorded.get('python')}"
    built = recorded.get("sources", {})
    for name, digest in _sources().items():
        if built.get(name) != digest:
            return f"{name} changed"
    return None


def _source_only(directory: Path) -> None:
    """Make `directory` (a package's path entry) import .py files, never extension modules."""
    sys.path_importer_cache[str(directory)] = FileFinder(
        str(directory),
        (SourceFileLoader, SOURCE_SUFFIXES),
        (SourcelessFileLoader, BYTECODE_SUFFIXES),
    )


def select() -> str:
    """Decide, before any compiled module is imported, whether ``edge`` uses its build."""
    global _status
    if not _built_files():
        _status = "interpreted (not built)"
        return _status
    reason = f"{ENV}=0" if os.environ.get(ENV, "") == "0" else _stale() or ""
    if not reason:
        _status = "compiled"
        return _status
    for directory in _PACKAGE_DIRS:
        _source_only(directory)
    _status = f"interpreted ({reason})"
    if not reason.startswith(ENV):
        warnings.warn(
            f"edge: the compiled core is out of date ({reason}); running the Python "
            "source. Rebuild with `python -m edge.native_build build` (make does).",
            RuntimeWarning,
            stacklevel=2,
        )
    return _status


def status() -> str:
    """What ``edge`` runs, as decided when it was imported: "compiled" or "interpreted (why)"."""
    return _status


def is_compiled() -> bool:
    return _status == "compiled"


def clean() -> None:
    for path in _built_files():
        path.unlink()
    MANIFEST.unlink(missing_ok=True)
    shutil.rmtree(BUILD_DIR, ignore_errors=True)


def build(*, force: bool = False) -> bool:
    """Compile `COMPILED` in place; False when it was already up to date."""
    if not force and _built_files() and _stale() is None:
        return False
    # Imported here: mypyc and setuptools are build tools (requirements-dev.txt), not runtime.
    from mypyc.build import mypycify
    from setuptools import setup  # type: ignore[import-untyped]

    clean()
    BUILD_DIR.mkdir(parents=True, exist_ok=True)
    sources = _sources()  # before compiling: the manifest describes what was compiled
    cwd = Path.cwd()
    os.chdir(REPO)  # mypyc names modules by their paths relative to the working directory
    try:
        extensions = mypycify(
            list(COMPILED), opt_level="3", group_name=GROUP, target_dir=str(BUILD_DIR / "c")
        )
        setup(
            name="trunkline-edge-native",
            packages=[],
            py_modules=[],
            ext_modules=extensions,
            script_args=[
                "--quiet",
                "build_ext",
                "--inplace",
                "--build-temp",
                str(BUILD_DIR / "temp"),
            ],
        )
    finally:
        os.chdir(cwd)
    MANIFEST.write_text(
        json.dumps({"python": sys.implementation.cache_tag, "sources": sources}, indent=1) + "\n"
    )
    return True
