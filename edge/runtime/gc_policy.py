"""How an edge process runs CPython's cyclic garbage collector, and what it costs.

A finished call leaves about twenty GC-tracked objects behind for up to 32 s (transactions
lingering for retransmissions, RFC 3261 17; 19 by `bench/edge_core.py --memory`), so an edge
carrying 1,000 calls/s holds about 610,000 of them. Reference counting frees every one when
its timer ends; nothing per call is cyclic garbage (the tests check). CPython's default policy
still walks them all in each full collection, and by its 25 %-growth rule that came every few
seconds: measured through the edge with SIPp at 700 calls/s for 60 s, INVITE->200 p99 484 ms
and max 960 ms, against p99 28 ms with full collections off.

The policy (`install`):

- young collections every `YOUNG_THRESHOLD` allocations: they walk what was allocated since the
  last one, so they are short (0.3 ms on average at 1,800 calls/s);
- no middle collections: what survives a young collection (a finished call's lingering
  transactions, nearly all of it) stays in the middle generation, which only a full collection
  walks. Each middle collection walked every object that had survived the young ones since the
  last, so it cost as much per call as the young ones together and stopped the loop for longer:
  measured through the edge with SIPp at 1,800 calls/s over 60 s (``bench/edge_cps.py --only
  edge --pauses --no-apply``, 2026-12-05), 1,373 young collections took 409 ms and 613 middle
  ones 833 ms (longest 6.4 ms), and 2.5 % of the calls took 4 ms or more to their 200 (SIPp's
  clock), so the p99 read 4 ms; without the middle ones, 635 ms of young collections in all,
  0.56 % of calls at 4 ms or more, p99 under 1 ms (Kamailio in the same bench: 0.25 %). They
  never found anything to free: 0 unreachable objects over that soak, and 0 in two full
  collections 20 s apart at that rate. What a middle collection would reclaim (a reference
  cycle some code drops after it outlived a young collection: an asyncio future holding its
  exception's traceback, say) waits for the next full collection instead, which
  ``trunkline_edge_gc_collected_objects`` counts;
- no automatic full collection: a full one falls due every ``full_interval`` seconds instead
  (the edge's ``--gc-full-interval``, default 3600; 0 never), so what cycles other code leaves
  (asyncio, the control API) is still reclaimed. It walks everything held, so it stops the loop
  for as long: measured at 700 calls/s, one took 0.55 s, at 1,800 calls/s 1.15 s. So one that
  falls due while the edge holds more than `QUIET_HELD` calls and transactions waits for the
  next quiet check that finds it quiet (the release after a busy spell, below, is one), and
  runs busy only `FULL_DEFER_LIMIT` (a day) after it fell due, with a warning
  (``trunkline_edge_gc_full_forced``). Over 65 s at 700 calls/s with one every 20 s, and at
  1,800 calls/s with two, they found no cyclic garbage at all
  (``trunkline_edge_gc_collected_objects`` tells an operator whether a longer interval, or 0,
  is safe for their traffic);
- what start-up built (modules, the compiled snapshot) is frozen out of every collection;
- young collections also run every `YOUNG_INTERVAL` seconds, whatever the allocation count
  says. CPython counts allocations minus deallocations, and every object freed lowers the
  count, the frozen and the old included: for 32 s after a snapshot apply froze the live calls'
  state, their lingering transactions ending kept the count under the threshold while the new
  calls' objects piled up young, and the first collection then walked them all (measured at 150
  calls/s: 231,000 young objects 27 s after an apply, a 143 ms young and a 112 ms middle
  collection, back to back on the loop). On the timer a young collection walks what 0.1 s of
  calls left alive.

Calls held for minutes cost the young collections nothing: what survives one is in a generation
only the full collection walks, so there is no freezing of settled call state to do. Measured
in-process (bench/edge_core.py --held, callgrind, the policy installed and its timer simulated,
short calls at 100/s): the collector's share of a short call 0.022 M instructions holding 100,
1,000 or 10,000 answered calls (the core's 1.750 / 1.751 / 1.756 M); objects walked per short
call 73 and 72 holding 100 and 10,000 (counted from ``gc.callbacks``). The full collection does
walk them: about 100 ms of CPU holding 10,000 (in-process, busy machine), the pause
``--gc-full-interval`` schedules.

Every collection is timed; /metrics exports counts, total seconds and the longest pause per
generation (`metrics`). The time is the collecting thread's CPU time, not the clock's: the
collector runs Python callbacks (this timing among them) at its start and end, and there the
thread may hand the GIL to another and wait for it back, as long as that one's longest C call
(a replaced config freed on a worker thread). Timed by the clock, such waits read as collections of
hundreds of milliseconds (issue 15's run: 434 and 370 ms while a snapshot was applied).

The policy is for a process that is an edge, not one it shares (the embedded ``make run``
keeps Django's defaults).

Memory after a busy spell (issue 15: the RSS after 5,000 calls end should return to within
10 % of idle). Measured through the edge with SIPp (bench/edge_cps.py --rss-after), once the
calls and their lingering transactions were gone nothing of them was left in Python, yet the
RSS stayed at 2.2-2.4x idle:

- CPython's free lists (2,000 tuples of each small size, floats, dicts, lists...) keep blocks
  allocated where the last frees left them, each pinning a 16 KiB pymalloc pool and its 1 MiB
  arena; only a full collection empties them;
- dicts and lists keep the table of their busiest moment (`B2bua.release_memory`);
- glibc keeps freed memory in its heaps until it is trimmed.

So when the edge has gone quiet (`held()` calls and transactions at most `QUIET_HELD`, checked
every `QUIET_CHECK_INTERVAL` s) after holding at least `RELEASE_AFTER` since the last time,
`release_memory` runs once: the core rebuilds its tables, a full collection (it walks what
little is left: about 3 ms measured after 5,000 calls) empties the free lists, after which
pymalloc frees the arenas left empty, and the C allocator returns its free pages
(`allocator.give_back`: glibc's ``malloc_trim(0)``, jemalloc's cache flush and purge; under
10 ms). Measured with the bench, 34 s after the calls ended: 2.42x idle before,
1.58x and 1.68x after (2 runs). What is left: pymalloc frees an arena (1 MiB) only when every
block in it is free, and the few objects that live on from a busy spell (a timestamp, a cached
text, an h11 date header, a timer handle...) end up scattered over dozens of them. Started with
``PYTHONMALLOC=malloc`` (glibc for every object, trimmed to the page) the edge came back to
1.06x idle, but it held 10.4 KiB per call instead of 9.8 and its core ran 12 % more
instructions per call (bench/edge_core.py: 1.88 M against 1.68 M). Since 2026-12-05 a
standalone edge runs on glibc's malloc or jemalloc, jemalloc by default (edge/runtime/
allocator.py: 1.05-1.08x idle, 8.4 KiB per call, 1.09 M instructions a call against 1.03 M on
pymalloc); what follows is what ``EDGE_ALLOCATOR=pymalloc`` leaves, and what this release does
for it.

What pins those arenas, measured 2026-12-05 (compiled core; a machine at load 9-10, where SIPp
loses a few calls that then stay up): ``EDGE_CPS_MEMTRACE=DIR bench/edge_cps.py --only edge
--rss-only`` writes pymalloc's statistics at idle and after the release. After 5,000 calls:
93 arenas against 20 at idle, 4,402 of their pools free (72 MiB, still resident: pymalloc
never gives back part of an arena), kept by about 320 pools in use holding 84 KB more than at
idle. Three kinds of survivor:

- calls still up at the release (``QUIET_HELD`` allows 64): a call's hundred-odd objects were
  allocated wherever pymalloc had room when it started, so each pins 3-4 arenas. In-process
  (the core alone, fake network): 5,000 calls all ended leave 17 arenas against 14; 5 of them
  left up, spread over the spell, 31;
- what the first calls made once for the process: phonenumbers' metadata of the dialled region
  (a module import, its regular expressions, ~100 blocks), the journal's and the checkpoint's
  worker threads (~25), and the known-value caches (edge.sip.grammar's ``forget_known``). These
  are now made at start-up (edge.numbering's ``prepare_regions``, the executors' first task) or
  emptied by the release;
  tracemalloc through the edge (``EDGE_CPS_MEMTRACE_FRAMES=1``, which slows it: 600 calls at
  100/s before, 1,500 at 150/s after) counted 312 blocks alive after the release that were not
  at idle before, 202 after (none of these sites among them);
- what is replaced all the time and so is wherever the last replacement landed: uvicorn's
  Date header, rebuilt every second (69 blocks), timer handles and their deadlines, the
  counters of this policy and of the runtime (ints and floats are objects), asyncio futures,
  and 28 blocks of the core's (its timer queue, a CDR's timestamps).

The bench's idle is read 1 s after start-up, before any call: what the changes above moved
to start-up is in it (50.3 MiB against 49.4-51.4 before, within the run-to-run spread). After
them, on the same loaded machine, 34 s after the calls ended: 2.28x, 2.37x and 2.55x idle
(3, 1 and 5 calls still up; 91 and 96 arenas where read) against 2.45x before (1 up), within
the spread of such runs: the second kind of survivor is gone, but the first and the third
cannot be, and a few objects still keep dozens of arenas.

So the release now also gives back the free pools inside those arenas, which CPython 3.11's
pymalloc never does: edge/_arenas.c (built with the compiled core; C because it reads
pymalloc's pool headers) notes every arena allocated after start-up (`install`), and at the
release drops the pages of each empty pool but its first, which holds the header pymalloc
links its free pools through, so 12 of each 16 KiB (``madvise(MADV_DONTNEED)``; the pool is
marked unused, so pymalloc initialises it afresh when it takes it again).
``trunkline_edge_memory_returned_bytes_total`` counts what it gave back. Measured 2026-12-05
on a quiet machine (``bench/edge_cps.py --only edge --rss-only``, compiled core), 34 s after
5,000 calls ended: 1.59x idle before, 1.21x and 1.24x after (two runs). pymalloc's statistics
of the second (``EDGE_CPS_MEMTRACE``): 53 arenas against 20 at idle, 2,025 pools free in them;
their header pages (about 8 MiB) are most of what is left above idle, and they are pymalloc's
to keep. Hence still not the target's 1.10x; ``PYTHONMALLOC=malloc`` (above) reaches it at
12 % more CPU per call.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from edge.runtime import allocator
from edge.sip import grammar

__all__ = [
    "DEFAULT_FULL_INTERVAL",
    "FULL_DEFER_LIMIT",
    "QUIET_CHECK_INTERVAL",
    "QUIET_HELD",
    "RELEASE_AFTER",
    "THRESHOLDS",
    "YOUNG_INTERVAL",
    "YOUNG_THRESHOLD",
    "GcPolicy",
]

logger = logging.getLogger(__name__)

YOUNG_THRESHOLD = 2_000
# The middle and oldest generations' thresholds: never reached, so CPython runs only young
# collections, and only `GcPolicy` runs full ones.
_NEVER = 2**31 - 1
# gc.set_threshold's arguments as the edge runs (also bench/edge_core.py's workload).
THRESHOLDS = (YOUNG_THRESHOLD, _NEVER, _NEVER)
DEFAULT_FULL_INTERVAL = 3600.0
YOUNG_INTERVAL = 0.1
GENERATIONS = 3
# Quiet: at most this many calls and transactions held (a full collection then walks a few
# thousand objects, a few ms), looked at this often (a finished call's transactions linger 32 s:
# the release comes within 2 s of the last one ending).
QUIET_HELD = 64
QUIET_CHECK_INTERVAL = 2.0
# How busy the edge must have been since the last release for another to be worth it.
RELEASE_AFTER = 1000
# A full collection that fell due while the edge was busy waits for it to be quiet, at most this
# long (seconds), then runs anyway: an edge busy day and night still reclaims its cycles.
FULL_DEFER_LIMIT = 86_400.0


def _pool_give_back() -> Callable[[], tuple[int, int]] | None:
    """edge/_arenas.c's `give_back` with its arena notes installed from now on, or None where
    it is not built or not used (the interpreted core)."""
    from edge import native

    if not native.is_compiled():
        return None
    try:
        from edge import _arenas
    except ImportError:  # its file removed from a current build
        return None
    _arenas.install()
    return _arenas.give_back


class GcPolicy:
    """Installs the policy on a running loop and keeps the collector's timings."""

    def __init__(
        self,
        *,
        full_interval: float = DEFAULT_FULL_INTERVAL,
        held: Callable[[], int] | None = None,
        release: Callable[[], None] | None = None,
    ) -> None:
        """`held`: the calls and transactions the core holds; `release`: the core's own
        release (its tables). Without `held`, memory is never released."""
        if full_interval < 0:
            raise ValueError("full_interval must not be negative")
        self.full_interval = full_interval
        self._held = held
        self._release = release
        self._peak = 0  # the most held at a check since the last release
        self._quiet_timer: asyncio.TimerHandle | None = None
        self._trim = allocator.give_back()  # the C allocator's free pages to the system
        self._give_back: Callable[[], tuple[int, int]] | None = None  # set by `install`
        self.releases = 0
        self.returned_bytes = 0  # free pools' pages inside pymalloc's arenas
        self.collections = [0] * GENERATIONS
        self.seconds = [0.0] * GENERATIONS
        self.longest = [0.0] * GENERATIONS
        self.collected = 0
        self.last_full = 0.0  # seconds the latest full collection took
        self._full_due_at: float | None = None  # loop time a deferred full collection fell due
        self.full_forced = 0  # full collections run busy, FULL_DEFER_LIMIT after they fell due
        self._started_at = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._young_timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._saved_threshold: tuple[int, int, int] | None = None

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        """Collect and freeze what exists now, set the thresholds, start the timers and the
        timing callback."""
        gc.collect()
        gc.freeze()
        if self._held is not None:
            self._give_back = _pool_give_back()  # before the arenas of the calls to come
        self._saved_threshold = gc.get_threshold()
        gc.set_threshold(*THRESHOLDS)
        gc.callbacks.append(self._on_gc)
        self._loop = loop
        self._schedule()
        self._young_timer = loop.call_later(YOUNG_INTERVAL, self._young_collection)
        if self._held is not None:
            self._quiet_timer = loop.call_later(QUIET_CHECK_INTERVAL, self._check_quiet)

    def uninstall(self) -> None:
        """Back to the thresholds found (for a process that goes on after the edge)."""
        for timer in (self._timer, self._young_timer, self._quiet_timer):
            if timer is not None:
                timer.cancel()
        self._timer = self._young_timer = self._quiet_timer = None
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)
        if self._saved_threshold is not None:
            gc.set_threshold(*self._saved_threshold)
            self._saved_threshold = None

    def _schedule(self) -> None:
        if self._loop is not None and self.full_interval > 0:
            self._timer = self._loop.call_later(self.full_interval, self._full_collection)

    def _full_collection(self) -> None:
        self._timer = None
        if self._held is not None and self._held() > QUIET_HELD:
            # Due, but it would stop the loop for as long as it walks what is held: it waits
            # for a quiet check (`_check_quiet`), at most FULL_DEFER_LIMIT.
            if self._full_due_at is None and self._loop is not None:
                self._full_due_at = self._loop.time()
            return
        self._collect_full()

    def _collect_full(self) -> None:
        self._full_due_at = None
        found = gc.collect()
        logger.debug("full collection: %d unreachable, %.1f ms", found, self.last_full * 1000)
        if self._timer is not None:
            self._timer.cancel()
        self._schedule()

    def _young_collection(self) -> None:
        # Disabled: a snapshot compiling in slices, whose young objects are frozen when it
        # ends (edge/runtime/control.py); walked here, 0.1 s of them took 10-25 ms.
        if gc.isenabled():
            gc.collect(0)
        if self._loop is not None:
            self._young_timer = self._loop.call_later(YOUNG_INTERVAL, self._young_collection)

    def _check_quiet(self) -> None:
        assert self._held is not None and self._loop is not None
        held = self._held()
        self._peak = max(self._peak, held)
        if held <= QUIET_HELD and self._peak >= RELEASE_AFTER:
            self.release_memory()  # its full collection is the one due, if one is
            self._peak = held
        elif self._full_due_at is not None and (
            held <= QUIET_HELD or self._loop.time() - self._full_due_at >= FULL_DEFER_LIMIT
        ):
            if held > QUIET_HELD:
                self.full_forced += 1
                logger.warning(
                    "full garbage collection %.0f s overdue, run with %d calls and "
                    "transactions held: the loop stops while it walks them",
                    FULL_DEFER_LIMIT,
                    held,
                )
            self._collect_full()
        self._quiet_timer = self._loop.call_later(QUIET_CHECK_INTERVAL, self._check_quiet)

    def release_memory(self) -> None:
        """Give back to the system what a busy spell left allocated (the module's docstring)."""
        started = time.perf_counter()
        if self._release is not None:
            self._release()
        grammar.forget_known()  # the caches of values known well-formed
        self._collect_full()  # also empties CPython's free lists; the interval starts again
        if self._trim is not None:
            self._trim()
        if self._give_back is not None:
            _, returned = self._give_back()
            self.returned_bytes += returned
        self.releases += 1
        logger.debug("memory released in %.1f ms", (time.perf_counter() - started) * 1000)

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started_at = time.thread_time()
            return
        generation = int(info["generation"])
        took = time.thread_time() - self._started_at
        self.collections[generation] += 1
        self.seconds[generation] += took
        if took > self.longest[generation]:
            self.longest[generation] = took
        if generation == GENERATIONS - 1:
            self.last_full = took
        self.collected += int(info.get("collected", 0))

    def metrics(self) -> Iterable[Metric]:
        collections = CounterMetricFamily(
            "trunkline_edge_gc_collections",
            "Garbage collections by generation",
            labels=["generation"],
        )
        seconds = CounterMetricFamily(
            "trunkline_edge_gc_seconds",
            "CPU time spent in garbage collections (the loop is stopped meanwhile)",
            labels=["generation"],
        )
        longest = GaugeMetricFamily(
            "trunkline_edge_gc_longest_pause_seconds",
            "Longest single garbage collection since start (CPU time)",
            labels=["generation"],
        )
        for generation in range(GENERATIONS):
            label = [str(generation)]
            collections.add_metric(label, self.collections[generation])
            seconds.add_metric(label, self.seconds[generation])
            longest.add_metric(label, self.longest[generation])
        yield collections
        yield seconds
        yield longest
        yield CounterMetricFamily(
            "trunkline_edge_gc_collected_objects",
            "Unreachable objects the collector freed (cyclic garbage)",
            value=self.collected,
        )
        yield CounterMetricFamily(
            "trunkline_edge_gc_full_forced",
            "Full collections run busy, a day after they fell due (the loop stopped meanwhile)",
            value=self.full_forced,
        )
        yield CounterMetricFamily(
            "trunkline_edge_memory_releases",
            "Times the edge gave memory back after a busy spell, once quiet",
            value=self.releases,
        )
        yield CounterMetricFamily(
            "trunkline_edge_memory_returned_bytes",
            "Bytes of free pymalloc pools given back to the system by those releases",
            value=self.returned_bytes,
        )
