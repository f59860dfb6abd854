"""How an edge process runs CPython's cyclic garbage collector, and what it costs.

A finished call leaves about thirty GC-tracked objects behind for up to 32 s (transactions
lingering for retransmissions, RFC 3261 17), so an edge carrying 1,000 calls/s holds about a
million of them. Reference counting frees every one when its timer ends; nothing per call is
cyclic garbage (the tests check). CPython's default policy still walks them all in each full
collection, and by its 25 %-growth rule that came every few seconds: measured through the edge
with SIPp at 700 calls/s for 60 s, INVITE->200 p99 484 ms and max 960 ms, against p99 28 ms
with full collections off.

The policy (`install`):

- young collections every `YOUNG_THRESHOLD` allocations, the middle generation every
  `MIDDLE_THRESHOLD` young ones: small collections walk few survivors, so they are short
  (under 5 ms each in the core bench at 1,000 calls/s of lingering state) and cost less in
  total than rarer, larger ones (14 against 37 us per call);
- no automatic full collection: a full one runs every ``full_interval`` seconds instead (the
  edge's ``--gc-full-interval``, default 3600; 0 never), so what cycles other code leaves
  (asyncio, the control API) is still reclaimed, at a time an operator chooses. It still walks
  everything: measured at 700 calls/s, one took 0.55 s, and over 65 s of such load with one
  every 20 s they found no cyclic garbage at all (``trunkline_edge_gc_collected_objects``
  tells an operator whether a longer interval, or 0, is safe for their traffic);
- what start-up built (modules, the compiled snapshot) is frozen out of every collection;
- young collections also run every `YOUNG_INTERVAL` seconds (and a middle one every
  `MIDDLE_THRESHOLD` of those), whatever the allocation count says. CPython counts allocations
  minus deallocations, and every object freed lowers the count, the frozen and the old
  included: for 32 s after a snapshot apply froze the live calls' state, their lingering
  transactions ending kept the count under the threshold while the new calls' objects piled
  up young, and the first collection then walked them all (measured at 150 calls/s: 231,000
  young objects 27 s after an apply, a 143 ms young and a 112 ms middle collection, back to
  back on the loop). On the timer a young collection walks what 0.1 s of calls left alive.

Every collection is timed; /metrics exports counts, total seconds and the longest pause per
generation (`metrics`). The time is the collecting thread's CPU time, not the clock's: the
collector runs Python callbacks (this timing among them) at its start and end, and there the
thread may hand the GIL to another and wait for it back, as long as that one's longest C call
(a snapshot decoded on a worker thread). Timed by the clock, such waits read as collections of
hundreds of milliseconds (issue 15's run: 434 and 370 ms while a snapshot was applied).

The policy is for a process that is an edge, not one it shares (the embedded ``make run``
keeps Django's defaults).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Iterable
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

__all__ = [
    "DEFAULT_FULL_INTERVAL",
    "MIDDLE_THRESHOLD",
    "YOUNG_INTERVAL",
    "YOUNG_THRESHOLD",
    "GcPolicy",
]

logger = logging.getLogger(__name__)

YOUNG_THRESHOLD = 2_000
MIDDLE_THRESHOLD = 2
# The oldest generation's threshold: never reached, so only `GcPolicy` runs full collections.
_NEVER = 2**31 - 1
DEFAULT_FULL_INTERVAL = 3600.0
YOUNG_INTERVAL = 0.1
GENERATIONS = 3


class GcPolicy:
    """Installs the policy on a running loop and keeps the collector's timings."""

    def __init__(self, *, full_interval: float = DEFAULT_FULL_INTERVAL) -> None:
        if full_interval < 0:
            raise ValueError("full_interval must not be negative")
        self.full_interval = full_interval
        self.collections = [0] * GENERATIONS
        self.seconds = [0.0] * GENERATIONS
        self.longest = [0.0] * GENERATIONS
        self.collected = 0
        self.last_full = 0.0  # seconds the latest full collection took
        self._started_at = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._young_timer: asyncio.TimerHandle | None = None
        self._young_runs = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._saved_threshold: tuple[int, int, int] | None = None

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        """Collect and freeze what exists now, set the thresholds, start the timers and the
        timing callback."""
        gc.collect()
        gc.freeze()
        self._saved_threshold = gc.get_threshold()
        gc.set_threshold(YOUNG_THRESHOLD, MIDDLE_THRESHOLD, _NEVER)
        gc.callbacks.append(self._on_gc)
        self._loop = loop
        self._schedule()
        self._young_timer = loop.call_later(YOUNG_INTERVAL, self._young_collection)

    def uninstall(self) -> None:
        """Back to the thresholds found (for a process that goes on after the edge)."""
        for timer in (self._timer, self._young_timer):
            if timer is not None:
                timer.cancel()
        self._timer = self._young_timer = None
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)
        if self._saved_threshold is not None:
            gc.set_threshold(*self._saved_threshold)
            self._saved_threshold = None

    def _schedule(self) -> None:
        if self._loop is not None and self.full_interval > 0:
            self._timer = self._loop.call_later(self.full_interval, self._full_collection)

    def _full_collection(self) -> None:
        found = gc.collect()
        logger.debug("full collection: %d unreachable, %.1f ms", found, self.last_full * 1000)
        self._schedule()

    def _young_collection(self) -> None:
        # Disabled: a snapshot compiling on a worker, whose young objects are frozen when it
        # ends (edge/runtime/control.py); walked here, 0.1 s of them took 10-25 ms.
        if gc.isenabled():
            self._young_runs += 1
            gc.collect(1 if self._young_runs % MIDDLE_THRESHOLD == 0 else 0)
        if self._loop is not None:
            self._young_timer = self._loop.call_later(YOUNG_INTERVAL, self._young_collection)

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
