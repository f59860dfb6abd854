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

What ran in a stall (`--stall-dump MS`, off by default): each tick re-arms a one-shot
`ITIMER_REAL`, and `faulthandler` writes the stack of the thread that SIGALRM interrupts, the
loop's (the main thread: the kernel delivers the timer's signal to it), to stderr once the loop has
not ticked for MS milliseconds: while the stall is still going on, once a stall. The signal
handler is faulthandler's C one, so it runs whatever the thread holds (the GIL, a collection,
the compiled core). A compiled function adds no frame of its own: a stall inside the compiled
core shows as the runtime's call into it. Only the loop thread's stack, never the others':
reading the stack of a thread that runs on meanwhile is a race CPython 3.11 does not guard
(CPython issue 116008 crashes it so). The first version of this option armed
`faulthandler.dump_traceback_later`, whose watchdog thread reads every thread's stack that
way: of twelve edges run with it at 4,800 calls/s (about twenty dumps), one died of SIGSEGV
halfway through writing a dump (issue 15's sixth session); eight more with this version wrote
their eighteen dumps and exited cleanly. One per process (one `ITIMER_REAL`, one SIGALRM
handler): the loop must run on the main thread, and nothing else in the process may use
SIGALRM.
"""

from __future__ import annotations

import asyncio
import faulthandler
import logging
import signal
import sys
import threading
import time
from collections.abc import Iterable
from typing import TextIO

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from edge.runtime.transports import Throttled

__all__ = ["DUMP_SIGNAL", "EVERY", "STALL", "LoopWatch"]

logger = logging.getLogger(__name__)

# 200 ticks a second cost about 1 ms of CPU a second; a pause shows at least its length
# minus this.
EVERY = 0.005
STALL = 0.020
STALL_LOG_EVERY = 1.0  # seconds between two stall warnings at most
DUMP_SIGNAL = signal.SIGALRM  # what ITIMER_REAL sends


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
        if self.dump_after:
            if threading.current_thread() is not threading.main_thread():
                raise RuntimeError("--stall-dump: the event loop must run on the main thread")
            faulthandler.register(
                DUMP_SIGNAL, file=self._dump_file or sys.stderr, all_threads=False, chain=False
            )
        self._loop = loop
        self._cpu = time.thread_time()
        self._schedule(loop.time())

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
            if self.dump_after:
                signal.setitimer(signal.ITIMER_REAL, 0)  # disarmed before the handler goes
                faulthandler.unregister(DUMP_SIGNAL)
        self._loop = None

    def _schedule(self, now: float) -> None:
        assert self._loop is not None
        self._due = now + self.every
        self._handle = self._loop.call_at(self._due, self._tick)
        if self.dump_after:
            # Re-armed from here on: the dump comes `dump_after` after this tick unless the
            # next one is in time (its lateness counts from its due time, `every` later).
            signal.setitimer(signal.ITIMER_REAL, self.every + self.dump_after)

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
                "event loop stalled %.1f ms: the loop thread's stack was written to stderr "
                "after %.0f ms of it (above)",
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
