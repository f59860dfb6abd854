"""The standalone edge's allocator (edge/runtime/allocator.py): chosen by re-executing the
process with PYTHONMALLOC, same PID, same command line; said plainly where it cannot be."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from edge.runtime import allocator

REPO = Path(__file__).resolve().parents[2]
# .ci/run installs it (Debian: libjemalloc2); the Dockerfile's image has it too.
needs_jemalloc = pytest.mark.skipif(
    allocator._jemalloc_library() is None,
    reason="jemalloc is not installed (apt-get install libjemalloc2)",
)

# Prints this process's PID, allocator and PYTHONMALLOC (and LD_PRELOAD, MALLOC_CONF when
# set), adopts argv[1], prints them again.
SCRIPT = """
import os, sys
from edge.runtime import allocator
def line(what):
    extra = [os.environ[name] for name in ("LD_PRELOAD", "MALLOC_CONF") if name in os.environ]
    print(what, os.getpid(), allocator.running(), os.environ.get("PYTHONMALLOC"), *extra,
          flush=True)
line("start")
allocator.adopt(sys.argv[1])
line("now")
print(allocator.status(sys.argv[1]), flush=True)
"""


def adopt(
    wanted: str,
    *python_flags: str,
    pythonmalloc: str | None = None,
    script: str = SCRIPT,
    **more: str,
) -> list[str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONMALLOC", "LD_PRELOAD", "MALLOC_CONF")
    }
    if pythonmalloc is not None:
        env["PYTHONMALLOC"] = pythonmalloc
    env.update(more)
    return python(*python_flags, "-c", script, wanted, env=env).splitlines()


def python(*args: str, env: dict[str, str]) -> str:
    """What a new interpreter run in the repository with `args` prints."""
    env = {**env, "PYTHONPATH": str(REPO)}  # -E (one of the cases) ignores it: cwd is the repo
    done = subprocess.run(
        [sys.executable, *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout


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


@needs_jemalloc
def test_adopting_jemalloc_preloads_it_with_its_settings():
    start, again, now, status = adopt("jemalloc", LD_PRELOAD="libc.so.6")
    pid = start.split()[1]
    assert start == f"start {pid} pymalloc None libc.so.6"
    # Every object through malloc, jemalloc's malloc: preloaded first, the other preload kept.
    settings = f"malloc libjemalloc.so.2 libc.so.6 {allocator.JEMALLOC_CONF}"
    assert again == f"start {pid} jemalloc {settings}"
    assert now == f"now {pid} jemalloc {settings}"
    assert status == "jemalloc"


@needs_jemalloc
def test_an_operators_jemalloc_settings_win():
    *_, now, status = adopt("jemalloc", MALLOC_CONF="narenas:1")
    assert now.split()[2:] == ["jemalloc", "malloc", "libjemalloc.so.2", "narenas:1"]
    assert status == "jemalloc"


@needs_jemalloc
def test_leaving_jemalloc_drops_it_from_the_preloads():
    start, again, now, status = adopt(
        "malloc", pythonmalloc="malloc", LD_PRELOAD="libjemalloc.so.2:libc.so.6"
    )
    assert start.split()[2:] == ["jemalloc", "malloc", "libjemalloc.so.2:libc.so.6"]
    assert again.split()[2:] == now.split()[2:] == ["malloc", "malloc", "libc.so.6"]
    assert status == "malloc"


NOT_INSTALLED = """
from edge.runtime import allocator
allocator._jemalloc_library = lambda: None
"""


def test_without_jemalloc_installed_the_edge_runs_on_malloc_and_says_why():
    start, again, now, status = adopt("jemalloc", script=NOT_INSTALLED + SCRIPT)
    assert start.split()[2:] == ["pymalloc", "None"]
    assert again.split()[2:] == now.split()[2:] == ["malloc", "malloc"]  # no LD_PRELOAD
    assert status == "malloc (wanted jemalloc: jemalloc is not installed (Debian: libjemalloc2))"


def under_jemalloc(script: str, **more: str) -> list[str]:
    """The words `script` prints, run by a Python preloaded with jemalloc for every object."""
    env = {**os.environ, "PYTHONMALLOC": "malloc", "LD_PRELOAD": "libjemalloc.so.2", **more}
    return python("-c", script, env=env).split()


# Under jemalloc with its own purging off: how much the process holds (VmRSS, KiB) after a
# million small objects were made and freed, then after `give_back`.
GIVE_BACK = """
import sys
from edge.runtime import allocator
def rss():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
assert allocator.running() == "jemalloc"
objects = [str(n) * 3 for n in range(1_000_000)]
del objects
before = rss()
allocator.give_back()()
print(before, rss())
"""


@needs_jemalloc
def test_give_back_returns_jemallocs_free_pages_to_the_system():
    """gc_policy's release at the edge's quiet moment: under jemalloc, its caches flushed and
    its free pages purged (here jemalloc's own return of them is off, decay -1)."""
    before, after = map(
        int, under_jemalloc(GIVE_BACK, MALLOC_CONF="dirty_decay_ms:-1,muzzy_decay_ms:-1")
    )
    assert before - after > 40_000  # KiB: most of the ~60 MiB the objects took


# Under jemalloc: whether a thread has a thread cache, on the main thread, on a thread that
# called uncached_thread, and on the CDR journal's worker (whose executor calls it).
THREAD_CACHES = """
import asyncio, ctypes, tempfile, threading
from pathlib import Path
from edge.runtime import allocator
from edge.runtime.journal import CdrJournal, JournalFlusher
def cached():
    enabled, size = ctypes.c_bool(), ctypes.c_size_t(1)
    assert allocator._mallctl()(
        b"thread.tcache.enabled", ctypes.byref(enabled), ctypes.byref(size), None, 0
    ) == 0
    return enabled.value
def uncached():
    allocator.uncached_thread()
    seen.append(cached())
seen = [cached()]
thread = threading.Thread(target=uncached)
thread.start()
thread.join()
with tempfile.TemporaryDirectory() as directory:
    flusher = JournalFlusher(CdrJournal(Path(directory), node="t"), loop=asyncio.new_event_loop())
    seen.append(flusher._executor.submit(cached).result())
print(*seen)
"""


@needs_jemalloc
def test_the_edges_worker_threads_run_without_jemallocs_thread_cache():
    """What a sleeping worker freed would stay in its cache, pinning its pages (1.11-1.13x idle
    after a busy spell instead of 1.05-1.07x); the loop's thread keeps its cache."""
    assert under_jemalloc(THREAD_CACHES) == ["True", "False", "False"]


def test_an_unknown_allocator_is_refused():
    with pytest.raises(ValueError, match="unknown allocator 'tcmalloc'"):
        allocator.adopt("tcmalloc")


def test_a_process_that_did_not_adopt_says_whose_allocator_it_runs():
    # The embedded platform (and this test process) runs on what it started with.
    other = "malloc" if allocator.running() == "pymalloc" else "pymalloc"
    assert allocator.status(other) == (
        f"{allocator.running()} (this process's; EDGE_ALLOCATOR applies to python -m edge and "
        "runedge)"
    )
    assert allocator.status(allocator.running()) == allocator.running()
