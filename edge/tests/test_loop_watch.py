"""The loop watch (edge/runtime/loop_watch.py) on a real event loop: a callback that blocks
the loop shows as lag, and whether the loop worked or waited meanwhile is told apart."""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
import time

from edge.runtime.loop_watch import DUMP_SIGNAL, LoopWatch


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


def test_a_wait_on_the_loop_is_lag_but_not_loop_work(caplog):
    before = time.time()
    with caplog.at_level(logging.WARNING, logger="edge.runtime.loop_watch"):
        watch = _watched(lambda: time.sleep(0.1))  # as a wait for the GIL: no CPU time
    assert watch.longest_lag >= 0.09
    assert watch.stalls >= 1
    assert watch.longest_lag_busy < watch.longest_lag / 2
    assert before + 0.1 <= watch.longest_lag_at <= time.time()  # when, to set beside the logs
    (stall,) = [r.getMessage() for r in caplog.records if "stalled" in r.getMessage()]
    assert stall.startswith("event loop stalled ")


def test_stalls_are_logged_at_most_once_a_second(caplog):
    watch = LoopWatch()
    watch._log.clock = iter((10.0, 10.2, 10.5, 11.1)).__next__  # the times of four stalls
    with caplog.at_level(logging.WARNING, logger="edge.runtime.loop_watch"):
        for _ in range(4):
            watch._stalled(0.030, 0.025)
    assert [r.getMessage() for r in caplog.records] == [
        "event loop stalled 30.0 ms (25.0 ms of it the loop's own CPU)",
        "event loop stalled 30.0 ms (25.0 ms of it the loop's own CPU) (2 similar messages "
        "suppressed)",
    ]


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
        "trunkline_edge_loop_lag_longest_timestamp_seconds",
        "trunkline_edge_loop_lag_longest_busy_seconds",
        "trunkline_edge_loop_busy_longest_seconds",
        "trunkline_edge_loop_stalls",
    }


def _spin_for_the_stall_dump(seconds: float) -> None:
    until = time.thread_time() + seconds
    while time.thread_time() < until:
        pass


def _spin_on_a_worker(stop: threading.Event) -> None:
    while not stop.is_set():
        _spin_for_the_stall_dump(0.001)


def test_a_stall_dumps_the_loop_threads_stack_while_it_lasts(tmp_path, caplog):
    """`--stall-dump`: the timer, re-armed by each tick, interrupts the loop thread once it has
    not ticked for `dump_after` and faulthandler writes that thread's stack, during the stall
    (the function stalling is named), once a stall; only the loop thread's (a busy worker
    thread's is not read); nothing once the watch stopped."""
    path = tmp_path / "stacks.txt"
    stop = threading.Event()
    worker = threading.Thread(target=_spin_on_a_worker, args=(stop,))
    with path.open("w") as dump, caplog.at_level(logging.WARNING, "edge.runtime.loop_watch"):

        async def main() -> LoopWatch:
            watch = LoopWatch(dump_after=0.03, dump_file=dump)
            watch.start(asyncio.get_running_loop())
            await asyncio.sleep(0.02)
            _spin_for_the_stall_dump(0.15)
            await asyncio.sleep(0.02)
            watch.stop()
            return watch

        worker.start()
        try:
            watch = asyncio.run(main())
        finally:
            stop.set()
            worker.join()
        written = path.read_text()
        time.sleep(0.1)  # stopped: no dump comes later
        assert path.read_text() == written
    assert watch.dumps == 1
    assert written.count("Stack (most recent call first)") == 1
    assert "_spin_for_the_stall_dump" in written and "_spin_on_a_worker" not in written
    assert any("stack was written to stderr" in r.getMessage() for r in caplog.records)
    assert signal.getsignal(DUMP_SIGNAL) == signal.SIG_DFL  # handed back
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_no_stall_dump_unless_asked(tmp_path):
    path = tmp_path / "stacks.txt"
    with path.open("w") as dump:

        async def main() -> LoopWatch:
            watch = LoopWatch(dump_file=dump)  # dump_after 0: off, the default
            watch.start(asyncio.get_running_loop())
            await asyncio.sleep(0.01)
            _spin_for_the_stall_dump(0.1)
            watch.stop()
            return watch

        watch = asyncio.run(main())
    assert watch.dumps == 0 and path.read_text() == ""
