"""The standalone edge's allocator (edge/runtime/allocator.py): chosen by re-executing the
process with PYTHONMALLOC, same PID, same command line; said plainly where it cannot be."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from edge.runtime import allocator

REPO = Path(__file__).resolve().parents[2]

# Prints this process's PID, allocator and PYTHONMALLOC, adopts argv[1], prints them again.
SCRIPT = """
import os, sys
from edge.runtime import allocator
def line(what):
    print(what, os.getpid(), allocator.running(), os.environ.get("PYTHONMALLOC"), flush=True)
line("start")
allocator.adopt(sys.argv[1])
line("now")
print(allocator.status(sys.argv[1]), flush=True)
"""


def adopt(wanted: str, *python_flags: str, pythonmalloc: str | None = None) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONMALLOC"}
    if pythonmalloc is not None:
        env["PYTHONMALLOC"] = pythonmalloc
    env["PYTHONPATH"] = str(REPO)  # -E (one of the cases) ignores it: cwd is the repo too
    done = subprocess.run(
        [sys.executable, *python_flags, "-c", SCRIPT, wanted],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout.splitlines()


def test_adopting_malloc_re_executes_the_same_process_once():
    start, again, now, status = adopt("malloc")
    pid = start.split()[1]
    assert start == f"start {pid} pymalloc None"
    assert again == f"start {pid} malloc malloc"  # exec: the same PID, the same command line
    assert now == f"now {pid} malloc malloc"
    assert status == "malloc"


def test_adopting_pymalloc_under_pythonmalloc_malloc_goes_back_to_pymalloc():
    start, again, now, status = adopt("pymalloc", pythonmalloc="malloc")
    assert start.split()[2:] == ["malloc", "malloc"]
    assert again.split()[2:] == now.split()[2:] == ["pymalloc", "pymalloc"]
    assert status == "pymalloc"


def test_the_running_allocator_is_not_re_executed():
    start, now, status = adopt("malloc", pythonmalloc="malloc")
    assert start.split()[2] == now.split()[2] == "malloc"
    assert status == "malloc"


def test_the_debug_hooks_stay_on_across_the_re_execution():
    start, _again, now, status = adopt("malloc", pythonmalloc="debug")
    assert start.split()[2:] == ["pymalloc", "debug"]
    assert now.split()[2:] == ["malloc", "malloc_debug"]
    assert status == "malloc"


def test_under_minus_e_it_runs_on_and_says_why():
    start, now, status = adopt("malloc", "-E")
    assert start.split()[2] == now.split()[2] == "pymalloc"
    assert status == (
        "pymalloc (wanted malloc: Python was started with -E or -I, which ignore PYTHONMALLOC)"
    )


def test_an_unknown_allocator_is_refused():
    with pytest.raises(ValueError, match="unknown allocator 'jemalloc'"):
        allocator.adopt("jemalloc")


def test_a_process_that_did_not_adopt_says_whose_allocator_it_runs():
    # The embedded platform (and this test process) runs on what it started with.
    other = "malloc" if allocator.running() == "pymalloc" else "pymalloc"
    assert allocator.status(other) == (
        f"{allocator.running()} (this process's; EDGE_ALLOCATOR applies to python -m edge and "
        "runedge)"
    )
    assert allocator.status(allocator.running()) == allocator.running()
