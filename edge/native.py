"""The edge's native build: its sans-IO core compiled to C extension modules with mypyc.

Why: the edge spends its CPU in the interpreter, spread over thousands of small functions
(parsing, transactions, the B2BUA's bookkeeping) with no single hot spot left to rewrite.
mypyc, part of mypy (which already checks this code with ``--strict``), compiles the same
annotated modules to C, as mypy and black ship themselves; the source is unchanged and runs
interpreted wherever there is no build. Measured with bench/edge_cps.py on one machine, the
same day: 1,400 calls/s compiled against 1,100 interpreted, and bench/sip_parse.py's ratio to
sipmessage 3.9 against 2.5.

What is compiled: `COMPILED`, the pure core, and beside it `C_EXTENSIONS`: edge/_arenas.c,
which gives pymalloc's free pools back to the system (written in C because it reads CPython's
allocator structures; edge/runtime/gc_policy.py says why). Not the asyncio glue (edge/runtime:
it waits on sockets, not on bytecode), and not edge/cdr.py or edge/config.py: they validate
untyped JSON by design, and a compiled function checks its argument types on entry, so a
corrupt journal line or snapshot would raise TypeError before the validation could name the
field.

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

Profile-guided: with gcc the build compiles twice, the first time instrumented, and trains on
whole calls through the core in between (`build`, edge/tests/workload.py).

The interpreter matters as much: the compiled modules call into libpython for every dict,
string and object. ``make`` prefers the distribution's optimised build of Python 3.11 (README,
"Which Python"): bench/edge_core.py measured 1.65 M instructions a call on pyenv's default
shared-library build and 1.39 M on Debian's, the same core.

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
from typing import Any

__all__ = [
    "COMPILED",
    "C_EXTENSIONS",
    "MANIFEST",
    "build",
    "clean",
    "is_compiled",
    "select",
    "status",
]

EDGE_DIR = Path(__file__).resolve().parent
REPO = EDGE_DIR.parent
MANIFEST = EDGE_DIR / "native-manifest.json"
GROUP = "edge._compiled"  # one shared library, edge/_compiled__mypyc.*.so, for every module
BUILD_DIR = REPO / "var" / "native-build"
ENV = "TRUNKLINE_EDGE_NATIVE"  # "0": always interpreted
PGO_ENV = "TRUNKLINE_EDGE_PGO"  # "0": no profile-guided build (`build`)
PROFILE_DIR = BUILD_DIR / "profile"
TRAINING_CALLS = 3_000  # calls through the instrumented core (edge/tests/workload.py)

COMPILED = (
    "edge/sip/errors.py",
    "edge/sip/tables.py",
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
# Plain C extension modules built beside them: (module, source).
C_EXTENSIONS = (
    # pymalloc's free pools given back to the system (edge/runtime/gc_policy.py)
    ("edge._arenas", "edge/_arenas.c"),
)
# The package directories that hold compiled modules.
_PACKAGE_DIRS = (EDGE_DIR, EDGE_DIR / "sip")

_status = "interpreted (not built)"


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _sources() -> dict[str, str | None]:
    """Each compiled source's SHA-256 (None for one that is missing)."""
    names = [*COMPILED, *(source for _, source in C_EXTENSIONS)]
    return {name: _digest(REPO / name) if (REPO / name).exists() else None for name in names}


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


def _profile_flags() -> tuple[list[str], list[str]] | None:
    """gcc's flags for the two passes of a profile-guided build, or None where it is not
    done: ``TRUNKLINE_EDGE_PGO=0``, or a compiler that is not gcc."""
    import sysconfig

    compiler = os.environ.get("CC") or str(sysconfig.get_config_var("CC") or "")
    if os.environ.get(PGO_ENV, "") == "0" or "gcc" not in compiler or "clang" in compiler:
        return None
    profile = str(PROFILE_DIR)
    return (
        [f"-fprofile-generate={profile}"],
        [f"-fprofile-use={profile}", "-fprofile-partial-training", "-Wno-missing-profile"],
    )


def _compile(extensions: list[Any], extra: list[str]) -> None:
    from setuptools import setup  # type: ignore[import-untyped]

    for extension in extensions:
        base = extension.__dict__.setdefault("_trunkline_args", list(extension.extra_compile_args))
        extension.extra_compile_args = [*base, *extra]
        extension.extra_link_args = [flag for flag in extra if flag.startswith("-fprofile-gen")]
    setup(
        name="trunkline-edge-native",
        packages=[],
        py_modules=[],
        ext_modules=extensions,
        script_args=[
            "--quiet",
            "build_ext",
            "--inplace",
            "--force",  # the second pass compiles the same C files again, with the profile
            "--build-temp",
            str(BUILD_DIR / "temp"),
        ],
    )


def _train() -> None:
    """The profile's training run: whole calls through the instrumented core, in a child
    process (its counters are written when it exits). A failed run is reported and the
    second pass compiles without a profile."""
    import subprocess

    command = [
        sys.executable,
        "-c",
        f"from edge.tests.workload import run_calls; run_calls({TRAINING_CALLS})",
    ]
    env = {**os.environ, ENV: "1"}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        warnings.warn(
            f"edge: the profile's training run failed; compiling without it\n{result.stderr}",
            RuntimeWarning,
            stacklevel=2,
        )


def build(*, force: bool = False) -> bool:
    """Compile `COMPILED` in place; False when it was already up to date.

    Profile-guided where the compiler is gcc (`_profile_flags`): a first pass instrumented,
    `_train` runs calls through it, a second pass compiles with the counts (hot paths laid out
    and inlined for the calls an edge carries). Measured on one machine, user CPU of
    ``bench/edge_core.py --run 4000`` (0.3 s of it start-up), three runs each, alternated:
    3.83 / 3.86 / 4.13 s without the profile, 3.63 / 3.64 / 3.40 s with it (~10 % of the
    calls' CPU). It costs the build a second compile and the training run (``make native``:
    ~2 min without, ~6 min with, on 2 cores); ``TRUNKLINE_EDGE_PGO=0`` skips it.
    """
    if not force and _built_files() and _stale() is None:
        return False
    # Imported here: mypyc and setuptools are build tools (requirements-dev.txt), not runtime.
    from mypyc.build import mypycify

    clean()
    BUILD_DIR.mkdir(parents=True, exist_ok=True)
    sources = _sources()  # before compiling: the manifest describes what was compiled
    manifest = json.dumps({"python": sys.implementation.cache_tag, "sources": sources}, indent=1)
    cwd = Path.cwd()
    os.chdir(REPO)  # mypyc names modules by their paths relative to the working directory
    try:
        from setuptools import Extension

        extensions = mypycify(
            list(COMPILED), opt_level="3", group_name=GROUP, target_dir=str(BUILD_DIR / "c")
        )
        extensions += [
            Extension(name, [source], extra_compile_args=["-O2"]) for name, source in C_EXTENSIONS
        ]
        flags = _profile_flags()
        if flags is None:
            _compile(extensions, [])
        else:
            generate, use = flags
            _compile(extensions, generate)
            MANIFEST.write_text(manifest + "\n")  # the training run imports the build
            _train()
            _compile(extensions, use)
    finally:
        os.chdir(cwd)
    MANIFEST.write_text(manifest + "\n")
    return True
