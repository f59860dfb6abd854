"""The loop watch (edge/runtime/loop_watch.py) on a real event loop: a callback that blocks
the loop shows as lag, and whether the loop worked or waited meanwhile is told apart."""

from __future__ import annotations

import asyncio
import time

from edge.runtime.loop_watch import LoopWatch


def _watched(block) -> LoopWatch:
    """A watch ticking every 5 ms while `block` runs once on the loop, 20 ms in."""

    async def main() -> LoopWatch:
        watch = LoopWatch()
        watch.start(asyncio.get_running_loop())
        await asyncio.sleep(0.02)
        block()
        await asyncio.sleep(0.02)
        watch.stop()
        return watch

    return asyncio.run(main())


def test_a_wait_on_the_loop_is_lag_but_not_loop_work():
    watch = _watched(lambda: time.sleep(0.1))  # as a wait for the GIL: no CPU time
    assert watch.longest_lag >= 0.09
    assert watch.stalls >= 1
    assert watch.longest_lag_busy < watch.longest_lag / 2


def test_work_on_the_loop_is_lag_and_loop_work():
    def spin() -> None:
        until = time.thread_time() + 0.1
        while time.thread_time() < until:
            pass

    watch = _watched(spin)
    assert watch.longest_busy >= 0.1 and watch.longest_lag_busy >= 0.1
    assert watch.longest_lag >= 0.09


def test_metrics_name_the_figures():
    watch = _watched(lambda: None)
    names = {family.name for family in watch.metrics()}
    assert names == {
        "trunkline_edge_loop_lag_longest_seconds",
        "trunkline_edge_loop_lag_longest_busy_seconds",
        "trunkline_edge_loop_busy_longest_seconds",
        "trunkline_edge_loop_stalls",
    }
