"""How late the edge's event loop runs: the pause a SIP request waits out, seen from inside.

A callback scheduled every `EVERY` seconds runs late by as long as the loop could not run
anything: a long callback on the loop, a wait for the GIL that another thread of the edge
holds (a replaced config freed on a worker), or a wait for a CPU the machine's other
processes hold. The loop thread's own CPU time between two ticks tells the first apart from
the others, and does not depend on the machine's load; the lag is what SIP saw.

/metrics: the longest lag since start, when it ended (a Unix time, to set beside the logs and
other metrics) and the loop's CPU time in that interval, the most CPU time the loop spent
between two ticks, and how many ticks came over `STALL` late (issue 15's target is none over
20 ms, including while a 100,000-number snapshot is applied). Each such stall is also logged
as a warning, at most one a second (`Throttled`: with how many were not logged since).

What ran in a stall (`--stall-dump MS`, off by default): each tick re-arms CPython's
`faulthandler.dump_traceback_later`, whose C thread needs no GIL, so when the loop has not
ticked for MS milliseconds every thread's Python stack is written to stderr while the stall is
still going on, once a stall. A compiled function adds no frame of its own: a stall inside the
compiled core shows as the runtime's call into it. One per process (faulthandler has one such
timer): an edge started inside a test that uses it, or pytest's `faulthandler_timeout`, must
leave the option off.
"""

from __future__ import annotations

import asyncio
import faulthandler
import logging
import sys
import time
from collections.abc import Iterable
from typing import TextIO

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from edge.runtime.transports import Throttled

__all__ = ["EVERY", "STALL", "LoopWatch"]

logger = logging.getLogger(__name__)

# 200 ticks a second cost about 1 ms of CPU a second; a pause shows at least its length
# minus this.
EVERY = 0.005
STALL = 0.020
STALL_LOG_EVERY = 1.0  # seconds between two stall warnings at most


class LoopWatch:
    """Ticks on a running loop and keeps the figures above."""

    def __init__(
        self, every: float = EVERY, *, dump_after: float = 0.0, dump_file: TextIO | None = None
    ) -> None:
        self.every = every
        self.dump_after = dump_after  # seconds; 0: no stack dumps
        self._dump_file = dump_file  # a file with a descriptor; None: stderr
        self.dumps = 0  # stalls long enough for a dump
        self.longest_lag = 0.0
        self.longest_lag_busy = 0.0  # the loop thread's CPU time in the longest lag's interval
        self.longest_lag_at = 0.0  # Unix time the longest lag ended
        self.longest_busy = 0.0
        self.stalls = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._due = 0.0
        self._cpu = 0.0
        self._log = Throttled(STALL_LOG_EVERY, logger)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start ticking (call on the loop's thread: its CPU time is the one read)."""
        self._loop = loop
        self._cpu = time.thread_time()
        self._schedule(loop.time())

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
            if self.dump_after:
                faulthandler.cancel_dump_traceback_later()
        self._loop = None

    def _schedule(self, now: float) -> None:
        assert self._loop is not None
        self._due = now + self.every
        self._handle = self._loop.call_at(self._due, self._tick)
        if self.dump_after:
            # Re-armed from here on: the dump comes `dump_after` after this tick unless the
            # next one is in time (its lateness counts from its due time, `every` later).
            faulthandler.dump_traceback_later(
                self.every + self.dump_after, file=self._dump_file or sys.stderr
            )

    def _tick(self) -> None:
        assert self._loop is not None
        now = self._loop.time()
        cpu = time.thread_time()
        lag, busy = now - self._due, cpu - self._cpu
        self._cpu = cpu
        if lag > self.longest_lag:
            self.longest_lag, self.longest_lag_busy = lag, busy
            self.longest_lag_at = time.time()
        if busy > self.longest_busy:
            self.longest_busy = busy
        if lag > STALL:
            self.stalls += 1
            self._stalled(lag, busy)
        if self.dump_after and lag > self.dump_after:
            self.dumps += 1
            self._log(
                "stall-dump",
                logging.WARNING,
                "event loop stalled %.1f ms: every thread's stack was written to stderr after "
                "%.0f ms of it (above)",
                lag * 1000,
                self.dump_after * 1000,
            )
        self._schedule(now)

    def _stalled(self, lag: float, busy: float) -> None:
        self._log(
            "stall",
            logging.WARNING,
            "event loop stalled %.1f ms (%.1f ms of it the loop's own CPU)",
            lag * 1000,
            busy * 1000,
        )

    def metrics(self) -> Iterable[Metric]:
        yield GaugeMetricFamily(
            "trunkline_edge_loop_lag_longest_seconds",
            "Longest time the event loop could not run since start (a timer's lateness)",
            value=self.longest_lag,
        )
        yield GaugeMetricFamily(
            "trunkline_edge_loop_lag_longest_timestamp_seconds",
            "When that longest lag ended (Unix time; 0 before any tick)",
            value=self.longest_lag_at,
        )
        yield GaugeMetricFamily(
            "trunkline_edge_loop_lag_longest_busy_seconds",
            "The loop thread's CPU time during that longest lag (the rest it waited: for the "
            "GIL or for a CPU)",
            value=self.longest_lag_busy,
        )
        yield GaugeMetricFamily(
            "trunkline_edge_loop_busy_longest_seconds",
            f"Most CPU time the loop thread spent between two ticks {self.every * 1000:g} ms "
            "apart (its longest own work without a pause)",
            value=self.longest_busy,
        )
        yield CounterMetricFamily(
            "trunkline_edge_loop_stalls",
            f"Ticks of the loop watch that ran more than {STALL * 1000:g} ms late",
            value=self.stalls,
        )
