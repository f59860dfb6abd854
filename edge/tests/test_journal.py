"""The CDR journal: batching and fsync, rotation, reopening, torn lines, and the loop's flusher."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import re
import threading
from pathlib import Path

import pytest

from edge.cdr import CallDetailRecord, CdrDecodeError
from edge.runtime.journal import (
    CdrJournal,
    JournalFlusher,
    TornLineError,
    journal_files,
    read_journal,
)
from edge.tests.test_cdr import make_cdr

FILE_NAME = re.compile(r"cdr-edge-1-[0-9]{8}T[0-9]{6}-(?P<seq>[0-9]{6})\.jsonl")


@pytest.fixture
def syscalls(monkeypatch):
    """Counts of os.write and os.fsync calls made from here on."""
    counts = {"write": 0, "fsync": 0}
    real_write, real_fsync = os.write, os.fsync

    def write(fd, data):
        counts["write"] += 1
        return real_write(fd, data)

    def fsync(fd):
        counts["fsync"] += 1
        return real_fsync(fd)

    monkeypatch.setattr(os, "write", write)
    monkeypatch.setattr(os, "fsync", fsync)
    return counts


def records_in(directory: Path) -> list[CallDetailRecord | CdrDecodeError]:
    return [item for path in journal_files(directory) for _, item in read_journal(path)]


# --- batching ---------------------------------------------------------------------------------


def test_nothing_reaches_disk_before_flush_and_everything_after(tmp_path, syscalls):
    journal = CdrJournal(tmp_path, node="edge-1", batch_size=10, flush_interval=0.05)
    syscalls.update(write=0, fsync=0)
    cdrs = [make_cdr() for _ in range(3)]
    for cdr in cdrs:
        journal.append(cdr, now=100.0)
    assert journal.path.stat().st_size == 0
    assert journal.pending == 3
    assert syscalls == {"write": 0, "fsync": 0}

    assert journal.flush() == 3
    assert syscalls == {"write": 1, "fsync": 1}  # one write and one fsync for the batch
    assert records_in(tmp_path) == cdrs
    assert journal.pending == 0
    assert journal.flush() == 0
    assert syscalls == {"write": 1, "fsync": 1}  # an empty flush touches nothing


def test_should_flush_when_the_batch_is_full_or_the_oldest_record_is_due(tmp_path):
    journal = CdrJournal(tmp_path, node="edge-1", batch_size=3, flush_interval=0.05)
    assert journal.next_flush_deadline is None
    assert not journal.should_flush(1_000.0)

    journal.append(make_cdr(), now=100.0)
    journal.append(make_cdr(), now=100.04)
    assert journal.next_flush_deadline == pytest.approx(100.05)  # set by the oldest record
    assert not journal.should_flush(100.049)
    assert journal.should_flush(100.05)

    journal.flush()
    assert journal.next_flush_deadline is None
    for _ in range(3):
        journal.append(make_cdr(), now=200.0)
    assert journal.should_flush(200.0)  # full, long before its deadline


def test_close_flushes_and_fsyncs(tmp_path, syscalls):
    journal = CdrJournal(tmp_path, node="edge-1")
    cdr = make_cdr()
    journal.append(cdr, now=0.0)
    journal.close()
    assert syscalls["fsync"] >= 1
    assert records_in(tmp_path) == [cdr]
    journal.close()  # twice is harmless
    with pytest.raises(ValueError, match="closed"):
        journal.append(make_cdr(), now=1.0)


def test_a_failed_write_keeps_its_records_for_the_next_flush(tmp_path, monkeypatch):
    journal = CdrJournal(tmp_path, node="edge-1")
    first, second = make_cdr(), make_cdr()
    journal.append(first, now=0.0)
    real_write = os.write
    calls = []

    def full_disk_after_ten_bytes(fd, data):
        calls.append(len(data))
        if len(calls) == 1:
            return real_write(fd, bytes(data[:10]))  # a short write, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full_disk_after_ten_bytes)
    with pytest.raises(OSError):
        journal.flush()
    monkeypatch.setattr(os, "write", real_write)

    journal.append(second, now=1.0)
    assert journal.flush() == 1
    assert records_in(tmp_path) == [first, second]  # no gap, no half line, no repeat


# --- files ------------------------------------------------------------------------------------


def test_file_names_and_mode(tmp_path):
    journal = CdrJournal(tmp_path, node="edge-1")
    match = FILE_NAME.fullmatch(journal.path.name)
    assert match and match["seq"] == "000001"
    assert journal.path.stat().st_mode & 0o777 == 0o640


@pytest.mark.parametrize("node", ["", "../edge", "edge/1", "edge 1", "-edge"])
def test_node_names_must_be_safe_in_a_file_name(tmp_path, node):
    with pytest.raises(ValueError, match="node name"):
        CdrJournal(tmp_path, node=node)


def test_rotation_by_size(tmp_path):
    line_size = len(make_cdr().to_json()) + 1
    journal = CdrJournal(tmp_path, node="edge-1", rotate_bytes=2 * line_size)
    cdrs = [make_cdr() for _ in range(5)]
    for cdr in cdrs:
        journal.append(cdr, now=0.0)
        journal.flush()
    journal.close()

    files = journal_files(tmp_path, node="edge-1")
    assert [FILE_NAME.fullmatch(f.name)["seq"] for f in files] == ["000001", "000002", "000003"]
    assert [len(list(read_journal(f))) for f in files] == [2, 2, 1]
    assert records_in(tmp_path) == cdrs


def test_a_batch_may_overrun_the_rotation_size_but_is_never_split(tmp_path):
    journal = CdrJournal(tmp_path, node="edge-1", rotate_bytes=10)
    for _ in range(4):
        journal.append(make_cdr(), now=0.0)
    journal.flush()
    journal.append(make_cdr(), now=0.0)
    journal.close()
    files = journal_files(tmp_path)
    assert [len(list(read_journal(f))) for f in files] == [4, 1]


def test_reopening_appends_to_the_newest_file(tmp_path):
    first = CdrJournal(tmp_path, node="edge-1")
    cdrs = [make_cdr(), make_cdr()]
    first.append(cdrs[0], now=0.0)
    first.close()

    second = CdrJournal(tmp_path, node="edge-1")
    assert second.path == first.path
    second.append(cdrs[1], now=0.0)
    second.close()
    assert journal_files(tmp_path) == [first.path]
    assert records_in(tmp_path) == cdrs


def test_reopening_after_a_torn_write_starts_a_new_file(tmp_path):
    first = CdrJournal(tmp_path, node="edge-1")
    for _ in range(2):
        first.append(make_cdr(), now=0.0)
    first.close()
    size = first.path.stat().st_size
    os.truncate(first.path, size - 30)  # the crash cut the last line short

    second = CdrJournal(tmp_path, node="edge-1")
    assert second.path != first.path
    assert FILE_NAME.fullmatch(second.path.name)["seq"] == "000002"
    cdr = make_cdr()
    second.append(cdr, now=0.0)
    second.close()

    items = records_in(tmp_path)
    assert isinstance(items[1], TornLineError)  # still the last line of its own file
    assert items[2] == cdr


def test_each_node_keeps_its_own_files(tmp_path):
    one = CdrJournal(tmp_path, node="edge")
    other = CdrJournal(tmp_path, node="edge-1")
    assert one.path != other.path
    one.close()
    other.close()
    assert CdrJournal(tmp_path, node="edge").path == one.path
    assert journal_files(tmp_path, node="edge") == [one.path]


# --- reading ----------------------------------------------------------------------------------


def test_read_journal_tolerates_a_torn_last_line(tmp_path):
    journal = CdrJournal(tmp_path, node="edge-1")
    cdrs = [make_cdr() for _ in range(3)]
    for cdr in cdrs:
        journal.append(cdr, now=0.0)
    journal.close()
    size = journal.path.stat().st_size
    os.truncate(journal.path, size - len(cdrs[2].to_json()) // 2)

    items = list(read_journal(journal.path))
    assert [number for number, _ in items] == [1, 2, 3]
    assert [item for _, item in items[:2]] == cdrs[:2]
    torn = items[2][1]
    assert isinstance(torn, TornLineError)
    assert "torn last line" in str(torn)


def test_read_journal_reports_bad_lines_and_goes_on(tmp_path):
    good = [make_cdr(), make_cdr()]
    path = tmp_path / "cdr-edge-1-20261124T080000-000001.jsonl"
    path.write_bytes(good[0].to_json() + b"\nnot json\n" + good[1].to_json() + b"\n")
    items = list(read_journal(path))
    assert items[0] == (1, good[0])
    assert items[1][0] == 2
    assert isinstance(items[1][1], CdrDecodeError)
    assert not isinstance(items[1][1], TornLineError)  # a newline-terminated line is complete
    assert items[2] == (3, good[1])


def test_a_complete_last_line_without_newline_is_a_record(tmp_path):
    cdr = make_cdr()
    path = tmp_path / "hand-made.jsonl"
    path.write_bytes(cdr.to_json())
    assert list(read_journal(path)) == [(1, cdr)]


# --- the event loop's side --------------------------------------------------------------------


async def _wait_for(condition, timeout: float = 2.0) -> None:
    for _ in range(int(timeout / 0.005)):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition not met in time")


def test_flusher_starts_its_thread_at_once(tmp_path):
    """At start-up, not with the first call's CDR: a thread's start allocates objects that
    live as long as it does, which would otherwise outlive the first busy spell among its
    calls' objects (edge/runtime/gc_policy.py)."""

    async def scenario():
        flusher = JournalFlusher(
            CdrJournal(tmp_path, node="edge-1"), loop=asyncio.get_running_loop()
        )
        names = [thread.name for thread in threading.enumerate()]
        assert any(name.startswith("cdr-journal") for name in names), names
        await flusher.aclose()

    asyncio.run(scenario())


def test_flusher_writes_on_its_timer(tmp_path):
    async def scenario():
        journal = CdrJournal(tmp_path, node="edge-1", batch_size=100, flush_interval=0.05)
        flusher = JournalFlusher(journal, loop=asyncio.get_running_loop())
        cdrs = [make_cdr() for _ in range(3)]
        for cdr in cdrs:
            flusher.append(cdr)
        assert journal.path.stat().st_size == 0
        await _wait_for(lambda: journal.pending == 0 and journal.path.stat().st_size > 0)
        assert records_in(tmp_path) == cdrs
        await flusher.aclose()

    asyncio.run(scenario())


def test_flusher_writes_a_full_batch_without_waiting_for_the_timer(tmp_path):
    async def scenario():
        journal = CdrJournal(tmp_path, node="edge-1", batch_size=4, flush_interval=60.0)
        flusher = JournalFlusher(journal, loop=asyncio.get_running_loop())
        cdrs = [make_cdr() for _ in range(6)]
        for cdr in cdrs:
            flusher.append(cdr)
        await _wait_for(lambda: len(records_in(tmp_path)) >= 4)
        # The batch is taken when the worker runs: the appends that beat it to the GIL (the
        # thread is already up: it starts with the flusher) are in it, the rest wait for
        # their batch or their time.
        written = records_in(tmp_path)
        assert written == cdrs[: len(written)]
        await flusher.aclose()  # ... or for shutdown
        assert records_in(tmp_path) == cdrs
        with pytest.raises(ValueError, match="closed"):
            flusher.append(make_cdr())

    asyncio.run(scenario())


def test_flusher_retries_a_failed_write(tmp_path, monkeypatch, caplog):
    async def scenario():
        journal = CdrJournal(tmp_path, node="edge-1", batch_size=1, flush_interval=0.01)
        flusher = JournalFlusher(journal, loop=asyncio.get_running_loop())
        real_write, failures = os.write, []

        def failing_once(fd, data):
            if not failures:
                failures.append(1)
                raise OSError(errno.EIO, "Input/output error")
            return real_write(fd, data)

        monkeypatch.setattr(os, "write", failing_once)
        cdr = make_cdr()
        flusher.append(cdr)
        await _wait_for(lambda: records_in(tmp_path) == [cdr])
        await flusher.aclose()

    with caplog.at_level(logging.ERROR, logger="edge.runtime.journal"):
        asyncio.run(scenario())
    assert "CDR journal write failed" in caplog.text
