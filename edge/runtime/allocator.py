"""Which allocator the edge's objects live in: jemalloc, glibc's ``malloc`` or ``pymalloc``.

A standalone edge (``python -m edge``, ``manage.py runedge``) runs on ``jemalloc`` by default,
on ``malloc`` where jemalloc is not installed (``--allocator``, ``EDGE_ALLOCATOR``). The choice
is a trade between memory given back and CPU. Measured with three spells of 5,000 calls in a
row on one edge, the RSS read 34 s after each (``bench/edge_cps.py --only edge --rss-only
--rss-spells 3``), and the core's instructions a call (``bench/edge_core.py``, callgrind):

- ``jemalloc`` (Debian's ``libjemalloc2``, preloaded with ``LD_PRELOAD``, with
  ``PYTHONMALLOC=malloc`` so that every object goes to it): 1.05, 1.06, 1.08x idle, 8.4 KiB
  per call in progress (PSS), 1.09 M instructions a call compiled (3.71 M interpreted). Its
  per-thread cache keeps freed blocks of each size to hand out again at once, which is why it
  is cheaper than glibc; but each cached block keeps its run of pages (a slab) from going
  back. A worker thread frees what the loop made (a call's CDR, once the journal wrote it) and
  then sleeps, and a sleeping thread's cache is never flushed: with every thread cached an
  edge stayed at 1.11-1.13x idle (with no thread cache at all 1.05-1.07x, but 1.95 M
  instructions a call). So the edge's worker threads run without one (`uncached_thread`), the
  loop's is flushed and the arenas purged at the quiet moment (`give_back`), and jemalloc's
  background thread returns pages that fall free later after a second (`JEMALLOC_CONF`, unless
  ``MALLOC_CONF`` gives other settings).
- ``malloc`` (glibc's): freed blocks go back to its heap, which `gc_policy`'s release trims to
  the page (``malloc_trim``, `give_back`): 1.07, 1.07, 1.09x idle, 8.9 KiB per call, 1.21 M
  instructions a call (3.90 M interpreted; glibc's tcache tunables bring it to 1.18 M at
  most), and a longer tail of INVITE->200 times (docs/edge-per-core.md, the seventh session).
- ``pymalloc``, CPython's own small-object allocator: the fewest instructions (1.03 M, 3.55 M
  interpreted), but it takes memory in 1 MiB arenas and gives an arena back only when every
  block in it is free. The few objects that outlive a busy spell (a timer handle, a counter's
  last value, a cached header) are scattered over dozens of arenas, and the next spell does
  not reuse what one leaves: 1.15, 1.19, 1.25x idle, even with the free pools' pages given
  back (edge/_arenas.c, edge/runtime/gc_policy.py); what is left there is the header page of
  each free pool, which pymalloc links its free pools through.

CPython reads its allocator from ``PYTHONMALLOC`` when it starts and never changes it, and the
dynamic loader reads ``LD_PRELOAD`` before that, so `adopt` re-executes the process (same PID,
same command line) with them set when the wanted allocator is not the one running.
`edge.runtime.main.run`, which the standalone entry points (and only they) call, calls it
before anything else starts. The embedded platform (``runplatform``) runs its edge on whatever
its process has, as it runs it without `gc_policy`. `sys.getallocatedblocks` tells whether
pymalloc runs: it counts pymalloc's blocks, and is 0 when pymalloc is not in use; jemalloc is
known by its ``mallctl``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import sys
from collections.abc import Callable
from typing import Any

__all__ = [
    "ALLOCATORS",
    "DEFAULT_ALLOCATOR",
    "JEMALLOC_CONF",
    "adopt",
    "give_back",
    "running",
    "status",
    "uncached_thread",
]

ALLOCATORS = ("malloc", "pymalloc", "jemalloc")
DEFAULT_ALLOCATOR = "jemalloc"
# PYTHONMALLOC values with CPython's debug hooks: a re-execution keeps them on.
_DEBUG = ("debug", "pymalloc_debug", "malloc_debug")
# jemalloc's settings when MALLOC_CONF does not give any: a background thread returns the
# pages of freed runs 1 s after they fall free (by default 10 s, and only when the process
# next allocates), at once rather than through a second, "muzzy" stage.
JEMALLOC_CONF = "background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0"
_JEMALLOC_NAME = "jemalloc"  # the library's name for the dynamic loader: libjemalloc.so.N
_ALL_ARENAS = 4096  # MALLCTL_ARENAS_ALL (jemalloc.h)


def _process_symbol(name: str) -> Any:
    """A C function of this process's global scope (its libraries and preloads), or None."""
    try:
        return getattr(ctypes.CDLL(None), name)
    except (OSError, AttributeError):
        return None


def running() -> str:
    """The allocator of this process's objects: "malloc", "pymalloc" or "jemalloc"."""
    if sys.getallocatedblocks():
        return "pymalloc"
    return "jemalloc" if _mallctl() is not None else "malloc"


@functools.cache
def _jemalloc_library() -> str | None:
    """What LD_PRELOAD names to load jemalloc (libjemalloc.so.2), or None if not installed.
    Once: `find_library` runs ``ldconfig -p``."""
    return ctypes.util.find_library(_JEMALLOC_NAME)


def _without_jemalloc(preload: str) -> list[str]:
    """LD_PRELOAD's entries (space- or colon-separated, ld.so(8)), jemalloc's dropped."""
    entries = preload.replace(":", " ").split()
    return [entry for entry in entries if _JEMALLOC_NAME not in os.path.basename(entry)]


def _environment(wanted: str) -> dict[str, str]:
    """This process's environment as `wanted` needs it: PYTHONMALLOC (keeping CPython's debug
    hooks if they are on) and LD_PRELOAD (jemalloc in it for "jemalloc" only)."""
    env = dict(os.environ)
    debug = env.get("PYTHONMALLOC", "") in _DEBUG
    python_malloc = "pymalloc" if wanted == "pymalloc" else "malloc"
    env["PYTHONMALLOC"] = f"{python_malloc}_debug" if debug else python_malloc
    preload = _without_jemalloc(env.get("LD_PRELOAD", ""))
    if wanted == "jemalloc":
        library = _jemalloc_library()
        if library is not None:
            preload.insert(0, library)
        env.setdefault("MALLOC_CONF", JEMALLOC_CONF)  # an operator's own settings win
    if preload:
        env["LD_PRELOAD"] = " ".join(preload)
    else:
        env.pop("LD_PRELOAD", None)
    return env


_NOT_INSTALLED = "jemalloc is not installed (Debian: libjemalloc2)"


def _attainable(wanted: str) -> str:
    """`wanted`, or glibc's malloc for jemalloc where it is not installed: the nearer of the
    other two (it gives memory back too)."""
    if wanted == "jemalloc" and _jemalloc_library() is None:
        return "malloc"
    return wanted


def _obstacle(wanted: str) -> str | None:
    """Why this process cannot be re-executed on `wanted`, or None if it can."""
    if sys.flags.ignore_environment:
        return "Python was started with -E or -I, which ignore PYTHONMALLOC"
    env = _environment(wanted)
    if all(os.environ.get(name) == env.get(name) for name in ("PYTHONMALLOC", "LD_PRELOAD")):
        # Already re-executed (or started so), and still not on it: do not loop.
        return f"PYTHONMALLOC={env['PYTHONMALLOC']} did not take effect"
    if not sys.orig_argv or not sys.executable:
        return "the command line that started this process is unknown"
    return None


def adopt(wanted: str) -> None:
    """Return if this process runs on `wanted`; else re-execute it on `wanted` (no return),
    or on malloc if `wanted` is jemalloc and it is not installed.

    Where that cannot work (`_obstacle`) it returns, and `status` says why. Call it before any
    thread, socket or file is opened: exec keeps the PID and drops the rest.
    """
    if wanted not in ALLOCATORS:
        raise ValueError(f"unknown allocator {wanted!r}: one of {', '.join(ALLOCATORS)}")
    target = _attainable(wanted)
    if running() == target or _obstacle(target) is not None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, sys.orig_argv, _environment(target))


def status(wanted: str) -> str:
    """What runs, for the start-up log: "malloc", or "pymalloc (wanted malloc: why)"."""
    current = running()
    if current == wanted:
        return current
    target = _attainable(wanted)
    if current == target:
        return f"{current} (wanted {wanted}: {_NOT_INSTALLED})"
    why = _obstacle(target)
    if why is None:  # `adopt` was not called: the embedded platform, or a test
        return f"{current} (this process's; EDGE_ALLOCATOR applies to python -m edge and runedge)"
    if target != wanted:
        why = f"{_NOT_INSTALLED}, and for malloc: {why}"
    return f"{current} (wanted {wanted}: {why})"


@functools.cache
def _mallctl() -> Any:
    """jemalloc's control interface (mallctl(3)) when jemalloc runs, else None."""
    mallctl = _process_symbol("mallctl")
    if mallctl is not None:
        mallctl.argtypes = [
            ctypes.c_char_p,
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_size_t,
        ]
    return mallctl


def give_back() -> Callable[[], None] | None:
    """What returns the free memory of this process's C allocator to the system at a quiet
    moment (`gc_policy`'s release), or None where there is nothing to call: glibc's
    ``malloc_trim(0)``; under jemalloc also its thread cache flushed (this thread's: the
    loop's, where the core allocates; the workers have none, `uncached_thread`) and every
    arena purged. pymalloc's arenas are edge/_arenas.c's."""
    steps: list[Callable[[], object]] = []
    trim = _process_symbol("malloc_trim")  # glibc's; absent on musl and macOS
    if trim is not None:
        steps.append(lambda: trim(0))
    mallctl = _mallctl()
    if mallctl is not None:
        purge = f"arena.{_ALL_ARENAS}.purge".encode()
        steps.append(lambda: mallctl(b"thread.tcache.flush", None, None, None, 0))
        steps.append(lambda: mallctl(purge, None, None, None, 0))
    if not steps:
        return None

    def run() -> None:
        for step in steps:
            step()

    return run


def uncached_thread() -> None:
    """Run the calling thread without jemalloc's thread cache (elsewhere a no-op): the edge's
    worker threads (the journal's, the checkpoint's, the shipper's, the loop's executor), whose
    caches would keep the pages of what they freed once they sleep (the module's docstring).
    The loop's thread keeps its cache, flushed at the release (`give_back`)."""
    mallctl = _mallctl()
    if mallctl is None:
        return
    enabled = ctypes.c_bool(False)
    mallctl(b"thread.tcache.enabled", None, None, ctypes.byref(enabled), ctypes.sizeof(enabled))
