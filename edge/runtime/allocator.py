"""Which allocator CPython gives the edge's objects: the C library's ``malloc`` or ``pymalloc``.

A standalone edge (``python -m edge``, ``manage.py runedge``) runs on ``malloc`` by default
(``--allocator``, ``EDGE_ALLOCATOR``). The choice is a trade between memory given back and CPU:

- ``pymalloc``, CPython's own small-object allocator, takes memory in 1 MiB arenas and gives an
  arena back only when every block in it is free. The few objects that outlive a busy spell (a
  timer handle, a counter's last value, a cached header) are scattered over dozens of arenas,
  so after 5,000 calls an edge stays at 1.15-1.21x its idle RSS for good, even with the free
  pools' pages given back (edge/_arenas.c, edge/runtime/gc_policy.py); what is left there is
  the header page of each free pool, which pymalloc links its free pools through.
  Nor does the next spell reuse what one leaves: three spells of 5,000 calls in a row left
  1.15, 1.19 and 1.25x idle (``bench/edge_cps.py --only edge --rss-only --rss-spells 3``).
- ``malloc`` (glibc's): freed blocks go back to its heap, which `gc_policy`'s release trims to
  the page (``malloc_trim``): 1.07, 1.07 and 1.09x idle after the same three spells. It costs
  about 15 % more instructions in the core (1.21 M a call against 1.03 M compiled, 3.90 M
  against 3.55 M interpreted; `bench/edge_core.py`, callgrind; glibc's tcache tunables bring
  it to 1.18 M at most), about 10 % more of the edge's CPU at 1,125 calls/s (52-61 % of a core
  against 47-49 %), 8.9 KiB per call in progress against 8.4 (PSS), 11.1 KiB per finished
  call lingering against 10.4, and a tail: 0.8-1.6 % of INVITE->200 times read 4 ms or more
  on SIPp's clock against 0.6-0.7 % (README, "Edges per core").

CPython reads its allocator from ``PYTHONMALLOC`` when it starts and never changes it, so
`adopt` re-executes the process (same PID, same command line) with ``PYTHONMALLOC`` set when
the wanted allocator is not the one running. `edge.runtime.main.run`, which the standalone
entry points (and only they) call, calls it before anything else starts. The embedded platform
(``runplatform``) runs its edge on whatever its process has, as it runs it without
`gc_policy`. `sys.getallocatedblocks` tells which runs: it counts pymalloc's blocks, and is 0
when pymalloc is not in use.
"""

from __future__ import annotations

import os
import sys

__all__ = ["ALLOCATORS", "DEFAULT_ALLOCATOR", "adopt", "running", "status"]

ALLOCATORS = ("malloc", "pymalloc")
DEFAULT_ALLOCATOR = "malloc"
# PYTHONMALLOC values with CPython's debug hooks: a re-execution keeps them on.
_DEBUG = ("debug", "pymalloc_debug", "malloc_debug")


def running() -> str:
    """The allocator of this process's objects: "malloc" or "pymalloc"."""
    return "pymalloc" if sys.getallocatedblocks() else "malloc"


def _setting(wanted: str) -> str:
    """The PYTHONMALLOC value that gives `wanted`, keeping the debug hooks if they are on."""
    debug = os.environ.get("PYTHONMALLOC", "") in _DEBUG
    return f"{wanted}_debug" if debug else wanted


def _obstacle(wanted: str) -> str | None:
    """Why this process cannot be re-executed on `wanted`, or None if it can."""
    if sys.flags.ignore_environment:
        return "Python was started with -E or -I, which ignore PYTHONMALLOC"
    if os.environ.get("PYTHONMALLOC") == _setting(wanted):
        # Already re-executed (or started so), and still not on it: do not loop.
        return f"PYTHONMALLOC={_setting(wanted)} did not take effect"
    if not sys.orig_argv or not sys.executable:
        return "the command line that started this process is unknown"
    return None


def adopt(wanted: str) -> None:
    """Return if this process runs on `wanted`; else re-execute it on `wanted` (no return).

    Where that cannot work (`_obstacle`) it returns, and `status` says why. Call it before any
    thread, socket or file is opened: exec keeps the PID and drops the rest.
    """
    if wanted not in ALLOCATORS:
        raise ValueError(f"unknown allocator {wanted!r}: one of {', '.join(ALLOCATORS)}")
    if running() == wanted or _obstacle(wanted) is not None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, sys.orig_argv, {**os.environ, "PYTHONMALLOC": _setting(wanted)})


def status(wanted: str) -> str:
    """What runs, for the start-up log: "malloc", or "pymalloc (wanted malloc: why)"."""
    current = running()
    if current == wanted:
        return current
    why = _obstacle(wanted)
    if why is None:  # `adopt` was not called: the embedded platform, or a test
        return f"{current} (this process's; EDGE_ALLOCATOR applies to python -m edge and runedge)"
    return f"{current} (wanted {wanted}: {why})"
