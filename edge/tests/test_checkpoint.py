"""The call checkpoint on disk and what a restarted edge writes from it (runtime/checkpoint.py).

The whole story with real processes (SIPp, SIGKILL, restart) is test_edge_restart_sipp.py;
these check the file and the recovery rules on a real journal directory.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from edge.cdr import CallDetailRecord, iso_utc
from edge.runtime.checkpoint import (
    RESTART_REASON,
    CallCheckpoint,
    _line,
    checkpoint_path,
    recover,
)
from edge.runtime.journal import CdrJournal, journal_files, read_journal
from edge.tests.test_cdr import make_cdr

ANSWER = 1_790_000_000.0


def answered(call_id: str, answer: float = ANSWER) -> CallDetailRecord:
    """A call's CDR so far, as `B2bua.record_so_far` makes it."""
    return make_cdr(
        call_id=call_id,
        answer_at=iso_utc(answer),
        end_at=iso_utc(answer),
        duration_ms=0,
        billable_seconds=0,
        reason=RESTART_REASON,
        hangup_side="edge",
        final_code=200,
    )


def journalled(directory: Path) -> list[CallDetailRecord]:
    return [
        record
        for path in journal_files(directory, node="edge-1")
        for _, record in read_journal(path)
        if isinstance(record, CallDetailRecord)
    ]


def test_recover_writes_one_cdr_per_unfinished_call_ending_when_last_known_alive(tmp_path):
    journal = CdrJournal(tmp_path, node="edge-1")
    # Call "ended" finished normally before the crash: its CDR is in the journal.
    journal.append(make_cdr(call_id="ended", reason="normal_clearing"), now=0.0)
    journal.flush()
    path = checkpoint_path(tmp_path, "edge-1")
    path.write_bytes(
        _line(None, iso_utc(ANSWER + 5))
        + _line(answered("up-1"), iso_utc(ANSWER + 5))
        + _line(answered("ended"), iso_utc(ANSWER + 5))
        + _line(answered("up-2", ANSWER + 6), iso_utc(ANSWER + 7.5))
        + b'{"alive_at": "2026-11-24T08:00:00.1'  # torn by the crash
    )
    recovered = recover(journal)
    assert sorted(r.call_id for r in recovered) == ["up-1", "up-2"]
    by_id = {r.call_id: r for r in journalled(tmp_path)}
    assert set(by_id) == {"ended", "up-1", "up-2"}
    assert by_id["ended"].reason == "normal_clearing"
    for call_id, duration_ms in (("up-1", 7500), ("up-2", 1500)):
        record = by_id[call_id]
        assert (record.reason, record.final_code, record.hangup_side) == (
            RESTART_REASON,
            200,
            "edge",
        )
        assert record.end_at == iso_utc(ANSWER + 7.5)  # the last moment known alive
        assert (
            record.duration_ms == duration_ms and record.billable_seconds == duration_ms // 1000 + 1
        )
    assert not path.exists()
    # A second start (say, a crash right after) finds nothing more to write.
    assert recover(journal) == []
    assert len(journalled(tmp_path)) == 3


def test_recover_does_not_write_twice_if_the_checkpoint_outlived_its_recovery(tmp_path):
    journal = CdrJournal(tmp_path, node="edge-1")
    data = _line(answered("up"), iso_utc(ANSWER + 1))
    path = checkpoint_path(tmp_path, "edge-1")
    path.write_bytes(data)
    assert len(recover(journal)) == 1
    path.write_bytes(data)  # as if the edge died before removing it
    assert recover(journal) == []
    assert [r.call_id for r in journalled(tmp_path)] == ["up"]


class Core:
    def __init__(self) -> None:
        self.up: dict[str, CallDetailRecord] = {}

    def record_so_far(self, call_id: str, wall: float) -> CallDetailRecord | None:
        return self.up.get(call_id)


def test_the_checkpoint_lists_answered_calls_and_a_clean_close_removes_it(tmp_path):
    async def scene() -> None:
        loop = asyncio.get_running_loop()
        journal = CdrJournal(tmp_path, node="edge-1")
        core = Core()
        checkpoint = CallCheckpoint(core, journal, loop=loop, interval=0.2, append_delay=0.01)
        checkpoint.start()
        core.up["a"] = answered("a")
        checkpoint.answered("a")
        checkpoint.answered("not-up")  # ended already: nothing to keep
        deadline = time.monotonic() + 5
        while b'"call_id":"a"' not in _read(checkpoint.path):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        # The call ends (its CDR journalled, then its "ended" event); the next rewrite drops it.
        del core.up["a"]
        journal.append(make_cdr(call_id="a"), now=0.0)
        checkpoint.ended("a")
        rewrites = checkpoint.rewrites
        while checkpoint.rewrites == rewrites or b'"call_id":"a"' in _read(checkpoint.path):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        assert [r.call_id for r in journalled(tmp_path)] == ["a"]  # flushed before the rewrite
        journal.close()
        await checkpoint.aclose()
        assert not checkpoint.path.exists()

    asyncio.run(asyncio.wait_for(scene(), 20))


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return b""


def test_a_call_that_ends_before_the_appends_are_flushed_costs_no_line(tmp_path):
    """The line is built at the flush, for the calls still up then: a short call (most of a
    busy edge's) costs a lookup that finds nothing and no line; a long one is written once."""

    class CountingCore(Core):
        def __init__(self) -> None:
            super().__init__()
            self.asked: list[str] = []

        def record_so_far(self, call_id: str, wall: float) -> CallDetailRecord | None:
            self.asked.append(call_id)
            return super().record_so_far(call_id, wall)

    async def scene() -> None:
        loop = asyncio.get_running_loop()
        journal = CdrJournal(tmp_path, node="edge-1")
        core = CountingCore()
        checkpoint = CallCheckpoint(core, journal, loop=loop, interval=60, append_delay=0.05)
        checkpoint.start()
        core.up["long"] = answered("long")
        checkpoint.answered("long")
        core.up["short"] = answered("short")
        checkpoint.answered("short")
        del core.up["short"]  # it ends (its CDR journalled) before the appends are flushed
        checkpoint.ended("short")
        deadline = time.monotonic() + 5
        while b'"call_id":"long"' not in _read(checkpoint.path):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        assert core.asked == ["long", "short"]  # asked once each, at the flush
        assert b'"call_id":"short"' not in _read(checkpoint.path)
        journal.close()
        await checkpoint.aclose()

    asyncio.run(asyncio.wait_for(scene(), 20))
