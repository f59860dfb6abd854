"""Answered calls survive the edge: a checkpoint on disk, and CDRs for them after a crash.

A call's CDR is written when it ends. An edge killed mid-call (SIGKILL, OOM, power) would
leave its answered calls without any record, and their minutes unbilled. So the edge keeps,
in its journal directory, a checkpoint file (``calls-<node>.checkpoint``, JSON lines): each
answered call's CDR so far (`B2bua.record_so_far`), appended within ``append_delay`` of the
answer (built then, and only for the calls still up: a call that ended sooner has its CDR in the
journal), and every ``interval`` seconds (5 by default) the whole file rewritten with the lines
of the calls still up (the call events say which: "answered", "ended"; the core is not asked
again) and the time the edge was last known alive (written to a temporary file, fsynced,
renamed over the old one, directory fsynced). Every line carries the time it was written.

At start, before it takes any call, `recover` reads the checkpoint a dead edge left: each call
in it whose CDR is not in the node's journal gets one, reason ``edge_restart``, ending at the
last moment the edge was known alive (so at most ``interval`` seconds are lost, never the
call); a call that ended normally has its CDR in the journal and gets no second one. The
recovered CDRs are journalled and fsynced before the checkpoint is removed, so a crash during
recovery recovers again without duplicates (the journal is read again).

Order on disk: a rewrite drops the calls that ended, so it first flushes the journal (their
CDRs are then durable), all on one worker thread that also does the appends. A clean shutdown
ends every call with its own CDR and removes the checkpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import orjson

from edge.call_events import CallEvent
from edge.cdr import CallDetailRecord, CdrDecodeError, iso_utc, parse_iso_utc
from edge.runtime import allocator
from edge.runtime.journal import CdrJournal, journal_files, read_journal

if TYPE_CHECKING:
    from edge.runtime.events import EventSink, LiveEvent

__all__ = [
    "DEFAULT_INTERVAL",
    "RESTART_REASON",
    "AnsweredCalls",
    "CallCheckpoint",
    "checkpoint_path",
    "recover",
]

logger = logging.getLogger(__name__)

DEFAULT_INTERVAL = 5.0
DEFAULT_APPEND_DELAY = 0.05
RESTART_REASON = "edge_restart"
_FILE_MODE = 0o640


@runtime_checkable
class AnsweredCalls(Protocol):
    """What the checkpoint reads of the core (`edge.b2bua.B2bua`)."""

    def record_so_far(self, call_id: str, wall: float) -> CallDetailRecord | None: ...


def checkpoint_path(directory: Path, node: str) -> Path:
    return directory / f"calls-{node}.checkpoint"


def _line(record: CallDetailRecord | None, alive_at: str) -> bytes:
    head = b'{"alive_at":' + orjson.dumps(alive_at)
    if record is None:
        return head + b"}\n"
    return head + b',"record":' + record.to_json() + b"}\n"


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_checkpoint(path: Path) -> tuple[float | None, dict[str, CallDetailRecord]]:
    """(last moment known alive, the answered calls by record id); a torn or bad line is
    skipped (the lines before it still count)."""
    alive: float | None = None
    records: dict[str, CallDetailRecord] = {}
    with path.open("rb") as file:
        for number, line in enumerate(file, start=1):
            try:
                entry = orjson.loads(line)
                stamp = parse_iso_utc(entry["alive_at"]).timestamp()
                record = entry.get("record")
                if record is not None:
                    cdr = CallDetailRecord.from_json(orjson.dumps(record))
                    records[cdr.call_id] = cdr
            except (orjson.JSONDecodeError, CdrDecodeError, KeyError, TypeError, ValueError):
                logger.warning("%s line %d is not a checkpoint line: skipped", path, number)
                continue
            alive = stamp if alive is None else max(alive, stamp)
    return alive, records


def _journalled(directory: Path, node: str, wanted: set[str], since: float) -> set[str]:
    """Which of the record ids `wanted` have a CDR in the node's journal files written since
    `since` (a file last written before a call was answered cannot hold its end)."""
    found: set[str] = set()
    for path in journal_files(directory, node=node):
        try:
            if path.stat().st_mtime < since:
                continue
        except FileNotFoundError:
            continue
        for _, record in read_journal(path):
            if isinstance(record, CallDetailRecord) and record.call_id in wanted:
                found.add(record.call_id)
    return found


def _ended_at(record: CallDetailRecord, end: float) -> CallDetailRecord:
    answer = parse_iso_utc(record.answer_at).timestamp() if record.answer_at else end
    end = max(end, answer)
    duration_ms = round((end - answer) * 1000) if record.answer_at else 0
    return dataclasses.replace(
        record,
        end_at=iso_utc(end),
        duration_ms=duration_ms,
        billable_seconds=-(-duration_ms // 1000),
        final_code=200,
        reason=RESTART_REASON,
        hangup_side="edge",
    )


def recover(journal: CdrJournal) -> list[CallDetailRecord]:
    """At start, before any call: write the CDR of each call a dead edge left answered and
    unfinished (reason ``edge_restart``), fsync them, then remove its checkpoint.

    Blocking file I/O: run it off the event loop. Returns the records written.
    """
    directory, node = journal.directory, journal.node
    path = checkpoint_path(directory, node)
    if not path.exists():
        return []
    alive, records = _read_checkpoint(path)
    recovered: list[CallDetailRecord] = []
    if records and alive is not None:
        answers = [parse_iso_utc(r.answer_at).timestamp() for r in records.values() if r.answer_at]
        since = min(answers, default=alive) - 1.0
        ended = _journalled(directory, node, set(records), since)
        recovered = [_ended_at(r, alive) for r in records.values() if r.call_id not in ended]
        for record in recovered:
            journal.append(record, now=0.0)
        journal.flush()
    path.unlink()
    _fsync_directory(directory)
    return recovered


class _CheckpointingSink:
    """The runtime's event sink, with every "answered" event noted in the checkpoint."""

    def __init__(self, inner: EventSink, checkpoint: CallCheckpoint) -> None:
        self._inner = inner
        self._checkpoint = checkpoint

    def publish(self, events: Sequence[LiveEvent]) -> None:
        for event in events:
            if type(event) is not CallEvent:  # the node's own events (NodeEvent)
                continue
            kind = event.kind
            if kind == "answered":
                self._checkpoint.answered(event.call_id)
            elif kind == "ended":
                self._checkpoint.ended(event.call_id)
        self._inner.publish(events)


class CallCheckpoint:
    """Keeps the node's checkpoint file current from the event loop (see the module doc).

    `answered` and the periodic rewrite run on the loop thread and hand their writes, in
    order, to one worker thread; `aclose` (after the journal is closed, at a clean shutdown)
    waits for them and removes the file.
    """

    def __init__(
        self,
        core: AnsweredCalls,
        journal: CdrJournal,
        *,
        loop: asyncio.AbstractEventLoop,
        interval: float = DEFAULT_INTERVAL,
        append_delay: float = DEFAULT_APPEND_DELAY,
    ) -> None:
        if interval <= 0 or append_delay < 0:
            raise ValueError("interval must be positive and append_delay not negative")
        self.core = core
        self.journal = journal
        self.path = checkpoint_path(journal.directory, journal.node)
        self.interval = interval
        self.append_delay = append_delay
        self._loop = loop
        self._executor = ThreadPoolExecutor(
            max_workers=1,
            thread_name_prefix="call-checkpoint",
            initializer=allocator.uncached_thread,
        )
        # Its thread started now, not at the first call: what a thread's start allocates would
        # otherwise outlive that busy spell among its calls' objects (gc_policy.py).
        self._executor.submit(int)
        # Answered calls whose line is not built yet (see `answered`).
        self._answered: list[str] = []
        # The checkpoint line of every answered call still up, by record id.
        self._lines: dict[str, bytes] = {}
        self._append_timer: asyncio.TimerHandle | None = None
        self._tick_timer: asyncio.TimerHandle | None = None
        self._writes: set[asyncio.Future[None]] = set()
        self._closed = False
        self.failures = 0
        self.rewrites = 0

    def sink(self, inner: EventSink) -> EventSink:
        """`inner`, with the answers noted here first."""
        return _CheckpointingSink(inner, self)

    def start(self) -> None:
        """Write the first checkpoint (no calls yet, the edge alive now) and start the timer."""
        self._rewrite()

    # --- the loop's side ---------------------------------------------------------------------

    def answered(self, call_id: str) -> None:
        """Note an answer; its line is built when the appends are flushed (`append_delay`
        later), and only if the call is still up then: a call that ended first has its CDR in
        the journal, so the many short calls of a busy edge cost the checkpoint nothing."""
        if self._closed:
            return
        self._answered.append(call_id)
        if self._append_timer is None:
            self._append_timer = self._loop.call_later(self.append_delay, self._flush_appends)

    def ended(self, call_id: str) -> None:
        """The call's CDR is in the journal's buffer: the next rewrite leaves it out."""
        self._lines.pop(call_id, None)

    def _take_answered(self, wall: float) -> list[bytes]:
        """The lines of the calls answered since the last flush that are still up."""
        ids, self._answered = self._answered, []
        alive_at = iso_utc(wall)
        lines = []
        for call_id in ids:
            record = self.core.record_so_far(call_id, wall)
            if record is not None:
                line = self._lines[call_id] = _line(record, alive_at)
                lines.append(line)
        return lines

    def _flush_appends(self) -> None:
        self._append_timer = None
        lines = self._take_answered(time.time())
        if lines:
            self._submit(self._append, b"".join(lines))

    def _rewrite(self) -> None:
        self._tick_timer = None
        if self._closed:
            return
        wall = time.time()
        # Appends still waiting are in this snapshot; later ones are written after it.
        if self._append_timer is not None:
            self._append_timer.cancel()
            self._append_timer = None
        self._take_answered(wall)
        # The calls' lines are the ones written at their answer: nothing of a call changes
        # after it but its end, which recovery takes from the newest `alive_at`.
        data = _line(None, iso_utc(wall)) + b"".join(self._lines.values())
        self._submit(self._replace, data)
        self.rewrites += 1
        self._tick_timer = self._loop.call_later(self.interval, self._rewrite)

    def _submit(self, write: Callable[[bytes], None], data: bytes) -> None:
        future: asyncio.Future[None] = self._loop.run_in_executor(self._executor, write, data)
        self._writes.add(future)
        future.add_done_callback(self._written)

    def _written(self, future: asyncio.Future[None]) -> None:
        self._writes.discard(future)
        if not future.cancelled() and future.exception() is not None:
            self.failures += 1
            logger.error("call checkpoint not written: %s", future.exception())

    async def aclose(self) -> None:
        """At a clean shutdown, after every call has its CDR journalled and the journal is
        closed: stop, and remove the checkpoint (nothing is left to recover)."""
        self._closed = True
        for timer in (self._append_timer, self._tick_timer):
            if timer is not None:
                timer.cancel()
        if self._writes:
            await asyncio.wait(list(self._writes))
        try:
            await self._loop.run_in_executor(self._executor, self._remove)
        finally:
            self._executor.shutdown(wait=False)

    # --- the worker thread's side --------------------------------------------------------------

    def _append(self, data: bytes) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, _FILE_MODE)
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)

    def _replace(self, data: bytes) -> None:
        # The calls left out of `data` ended: their CDRs must be durable before they go.
        with contextlib.suppress(ValueError):  # a journal closed at shutdown flushed already
            self.journal.flush()
        temporary = self.path.with_suffix(".tmp")
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
        fd = os.open(temporary, flags, _FILE_MODE)
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, self.path)
        _fsync_directory(self.path.parent)

    def _remove(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        _fsync_directory(self.path.parent)
