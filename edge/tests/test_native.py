"""The compiled core (edge/native.py): used only when it matches the sources, else the source.

The checks that need a build copy the package, compiled modules included, to a temporary
directory and import it from a fresh interpreter, so that changing a source there cannot touch
this checkout. CI builds the core (`make test` runs `python -m edge.native_build build`) and
sets TRUNKLINE_EXPECT_NATIVE=1, so there a missing or broken build fails the suite.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

import pytest

import edge.b2bua
from edge import native
from edge.b2bua import CallEvent

# The copies below are only as good as this checkout's build (CI's is always current).
CURRENT = bool(native._built_files()) and native._stale() is None
needs_build = pytest.mark.skipif(not CURRENT, reason="no current compiled core: make native")


def _is_extension(path: str) -> bool:
    return any(path.endswith(suffix) for suffix in EXTENSION_SUFFIXES)


def test_ci_runs_the_compiled_core():
    if os.environ.get("TRUNKLINE_EXPECT_NATIVE") != "1":
        pytest.skip("TRUNKLINE_EXPECT_NATIVE=1 (set by .ci/run) asks for the compiled core")
    assert native.status() == "compiled"
    assert native.is_compiled()
    assert _is_extension(edge.b2bua.__file__)


def test_the_status_says_what_this_process_runs():
    assert native.is_compiled() == _is_extension(edge.b2bua.__file__)


def test_call_events_serialise_every_field():
    event = CallEvent("ended", "c1", 1, 2, "outbound", "+1", "+2", 1.5, "busy", 486)
    fields = {field.name: getattr(event, field.name) for field in dataclasses.fields(CallEvent)}
    assert event.as_dict() == fields


def _import_in_copy(tmp_path: Path, *, env: dict[str, str] | None = None) -> dict[str, str]:
    code = (
        "import json, edge.b2bua, edge.sip.message, edge.native as n; "
        "print(json.dumps({'b2bua': edge.b2bua.__file__, "
        "'message': edge.sip.message.__file__, 'status': n.status()}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        # Whatever this run was told (TRUNKLINE_EDGE_NATIVE=0 for the interpreted suite), the
        # copy decides by its own build; a test that wants the variable passes it in `env`.
        env={
            **{k: v for k, v in os.environ.items() if k != native.ENV},
            "PYTHONPATH": str(tmp_path),
            **(env or {}),
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return {**json.loads(result.stdout), "stderr": result.stderr}


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    shutil.copytree(
        native.EDGE_DIR,
        tmp_path / "edge",
        ignore=shutil.ignore_patterns("__pycache__", "tests"),
    )
    return tmp_path


@needs_build
def test_an_unchanged_copy_runs_compiled(copy: Path):
    seen = _import_in_copy(copy)
    assert seen["status"] == "compiled"
    assert _is_extension(seen["b2bua"]) and _is_extension(seen["message"])
    assert seen["b2bua"].startswith(str(copy))
    assert "out of date" not in seen["stderr"]


@needs_build
def test_a_changed_source_runs_the_python_source_with_a_warning(copy: Path):
    routing = copy / "edge" / "routing.py"
    routing.write_text(routing.read_text() + "\n# edited after the build\n")
    seen = _import_in_copy(copy)
    assert seen["status"] == "interpreted (edge/routing.py changed)"
    # Not only the changed module: the whole core, in edge/ and edge/sip/ alike.
    assert seen["b2bua"] == str(copy / "edge" / "b2bua.py")
    assert seen["message"] == str(copy / "edge" / "sip" / "message.py")
    assert "compiled core is out of date (edge/routing.py changed)" in seen["stderr"]


@needs_build
def test_a_manifest_from_another_python_is_not_trusted(copy: Path):
    manifest = copy / "edge" / native.MANIFEST.name
    recorded = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**recorded, "python": "cpython-399"}))
    seen = _import_in_copy(copy)
    assert seen["status"] == "interpreted (built for cpython-399)"
    assert seen["b2bua"].endswith(".py")


@needs_build
def test_the_environment_can_ask_for_the_python_source(copy: Path):
    seen = _import_in_copy(copy, env={native.ENV: "0"})
    assert seen["status"] == f"interpreted ({native.ENV}=0)"
    assert seen["b2bua"].endswith(".py") and seen["message"].endswith(".py")
    assert "out of date" not in seen["stderr"]


def test_without_a_build_the_source_runs(copy: Path):
    for path in native._built_files():
        (copy / path.relative_to(native.REPO)).unlink()
    seen = _import_in_copy(copy)
    assert seen["status"] == "interpreted (not built)"
    assert seen["b2bua"].endswith(".py")


def test_profile_guided_only_with_gcc_and_not_when_turned_off(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv(native.PGO_ENV, raising=False)
    monkeypatch.setenv("CC", "x86_64-linux-gnu-gcc")
    generate, use = native._profile_flags() or ([], [])
    assert generate == [f"-fprofile-generate={native.PROFILE_DIR}"]
    assert f"-fprofile-use={native.PROFILE_DIR}" in use
    monkeypatch.setenv("CC", "clang")
    assert native._profile_flags() is None
    monkeypatch.setenv("CC", "gcc")
    monkeypatch.setenv(native.PGO_ENV, "0")
    assert native._profile_flags() is None
