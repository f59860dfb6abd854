"""The node's append-only CDR journal on local disk, and the helper that drives it from the loop.

Every call detail record is written here first; shipping (Redis, then PostgreSQL) reads these
files and is idempotent, so a record journalled is a record kept. Records are buffered and
written in batches — one ``os.write`` and one ``os.fsync`` per batch — because an fsync per
call would cost more than the call. The trade-off: a crash loses at most the records still in
the buffer, i.e. fewer than ``batch_size`` records or ``flush_interval`` seconds' worth.
Both are settings (``EDGE_CDR_BATCH_SIZE``, ``EDGE_CDR_FLUSH_INTERVAL``).

Files are ``cdr-<node>-<UTC yyyymmddTHHMMSS>-<seq>.jsonl``, one JSON record per line, opened
with O_APPEND; ``seq`` increases across a node's files and orders them. A file is rotated once
it reaches ``rotate_bytes`` (so it may exceed that by one batch). A restarted edge continues
its newest file unless that file is full or ends in a torn line (a crash mid-write), which is
left as the file's last line for `read_journal` to report.

`JournalFlusher` is the event loop's side: it buffers on the loop thread and runs the write and
fsync on one worker thread, so the loop never waits for the disk; one timer handle and at most
one write in flight, never a task per record.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from edge.cdr import CallDetailRecord, CdrDecodeError
from edge.runtime import allocator

__all__ = [
    "CdrJournal",
    "JournalFlusher",
    "TornLineError",
    "journal_file_name",
    "journal_files",
    "read_journal",
]

logger = logging.getLogger(__name__)

_NODE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_FILE_NAME = re.compile(r"cdr-(?P<node>.+)-(?P<stamp>[0-9]{8}T[0-9]{6})-(?P<seq>[0-9]+)\.jsonl")
_FILE_MODE = 0o640


class TornLineError(CdrDecodeError):
    """The file's last line has no newline and does not decode: a write cut short by a crash,
    or one still in progress. Not corruption: the record was never durably journalled."""


def journal_files(directory: Path, *, node: str | None = None) -> list[Path]:
    """The journal files in ``directory`` (of one node, if given), oldest first per node."""
    found = []
    for path in directory.glob("cdr-*.jsonl"):
        match = _FILE_NAME.fullmatch(path.name)
        if match and (node is None or match["node"] == node):
            found.append((match["node"], int(match["seq"]), path))
    return [path for _, _, path in sorted(found)]


def journal_file_name(name: str) -> tuple[str, int] | None:
    """(node, sequence number) of a journal file's name; None for another name."""
    match = _FILE_NAME.fullmatch(name)
    return None if match is None else (match["node"], int(match["seq"]))


def _file_seq(path: Path) -> int:
    match = _FILE_NAME.fullmatch(path.name)
    assert match is not None  # journal_files only lists matching names
    return int(match["seq"])


def read_journal(path: Path) -> Iterator[tuple[int, CallDetailRecord | CdrDecodeError]]:
    """Each line of a journal file as (line number, record or the reason it is not one).

    Bad lines are yielded, not raised, so a loader can keep the good ones and name the bad.
    A last line without its newline is a `TornLineError` unless it decodes whole.
    """
    with path.open("rb") as file:
        for number, line in enumerate(file, start=1):
            try:
                yield number, CallDetailRecord.from_json(line)
            except CdrDecodeError as exc:
                if line.endswith(b"\n"):
                    yield number, exc
                else:
                    yield number, TornLineError(f"torn last line ({len(line)} bytes): {exc}")


class CdrJournal:
    """Buffered, batched, fsynced appends of CDR lines to the node's current journal file.

    `append`, `should_flush` and `next_flush_deadline` belong to the caller's thread (the event
    loop); `flush` and `close` may run on another thread, one at a time. ``now`` is the caller's
    monotonic clock: it only times the batch, it never goes into a record.
    """

    def __init__(
        self,
        directory: Path,
        *,
        node: str,
        batch_size: int = 64,
        flush_interval: float = 0.05,
        rotate_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        if not _NODE.fullmatch(node):
            raise ValueError(f"node name {node!r} is not usable in a file name")
        if batch_size < 1 or flush_interval <= 0 or rotate_bytes < 1:
            raise ValueError("batch_size, flush_interval and rotate_bytes must be positive")
        self.directory = directory
        self.node = node
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.rotate_bytes = rotate_bytes
        self._buffer: list[bytes] = []
        self._deadline: float | None = None
        self._buffer_lock = threading.Lock()
        self._write_lock = threading.Lock()
        # Bytes not yet written: a batch being written, or what a failed write left behind.
        self._unwritten = b""
        self._fd: int | None = None
        directory.mkdir(parents=True, exist_ok=True)
        self._open()

    @property
    def path(self) -> Path:
        """The file now being appended to."""
        return self._path

    @property
    def pending(self) -> int:
        """Records buffered and not yet written."""
        return len(self._buffer)

    @property
    def next_flush_deadline(self) -> float | None:
        """When the oldest buffered record must be written (caller's clock), None if empty."""
        return self._deadline

    def append(self, cdr: CallDetailRecord, *, now: float) -> None:
        if self._fd is None:
            raise ValueError("the journal is closed")
        line = cdr.to_json() + b"\n"
        with self._buffer_lock:
            if not self._buffer:
                self._deadline = now + self.flush_interval
            self._buffer.append(line)

    def should_flush(self, now: float) -> bool:
        """True when a batch is full or its oldest record has waited ``flush_interval``."""
        return len(self._buffer) >= self.batch_size or (
            self._deadline is not None and now >= self._deadline
        )

    def flush(self) -> int:
        """Write every buffered record with one write and one fsync; the number written.

        A full file is rotated first, so a file may overrun ``rotate_bytes`` by one batch but a
        batch is never split. On an OSError (disk full, I/O error) what was not written is kept
        and written first by the next flush, so a file never gets a gap, nor half a line
        followed by another line.
        """
        with self._write_lock:
            if self._fd is None:
                raise ValueError("the journal is closed")
            with self._buffer_lock:
                lines, self._buffer, self._deadline = self._buffer, [], None
            if not lines and not self._unwritten:
                return 0
            # The file ends at a line boundary unless an earlier write stopped short.
            at_line_boundary = not self._unwritten
            self._unwritten += b"".join(lines)
            if at_line_boundary and self._size >= self.rotate_bytes:
                full = self._fd
                self._open(new=True)  # before closing the full file: if it fails, nothing changed
                os.close(full)
            view = memoryview(self._unwritten)
            try:
                while view:
                    written = os.write(self._fd, view)
                    self._size += written
                    view = view[written:]
            finally:
                self._unwritten = bytes(view)
            os.fsync(self._fd)
            return len(lines)

    def close(self) -> None:
        """Flush what is buffered and close the file. Safe to call twice."""
        if self._fd is None:
            return
        self.flush()
        with self._write_lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def _open(self, *, new: bool = False) -> None:
        """Continue the node's newest file if it is clean and not full, else start the next."""
        files = journal_files(self.directory, node=self.node)
        seq = 1
        if files:
            newest = files[-1]
            seq = _file_seq(newest) + 1
            if not new and self._continuable(newest):
                fd = os.open(newest, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
                self._fd, self._path, self._size = fd, newest, os.fstat(fd).st_size
                return
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        path = self.directory / f"cdr-{self.node}-{stamp}-{seq:06d}.jsonl"
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        fd = os.open(path, flags, _FILE_MODE)
        self._fd, self._path, self._size = fd, path, 0
        # The new name must survive a crash as well as the lines written under it.
        directory_fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(directory_fd)
        finally:
            os.close(directory_fd)

    def _continuable(self, path: Path) -> bool:
        size = path.stat().st_size
        if size >= self.rotate_bytes:
            return False
        if size == 0:
            return True
        with path.open("rb") as file:
            file.seek(-1, os.SEEK_END)
            return file.read(1) == b"\n"


class JournalFlusher:
    """Drives a `CdrJournal` from an asyncio loop; the runtime only calls `append` and `aclose`.

    A batch is handed to a single worker thread when it is full, or by one ``call_at`` timer
    when its oldest record is due; while a write is in flight new records keep buffering and
    the next batch goes when it completes. A failed write is logged and retried a flush
    interval later with the records it held.
    """

    def __init__(self, journal: CdrJournal, *, loop: asyncio.AbstractEventLoop) -> None:
        self.journal = journal
        self._loop = loop
        # One dedicated thread keeps batches in order and out of the default executor's queue.
        self._executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="cdr-journal", initializer=allocator.uncached_thread
        )
        # Its thread started now, not at the first call: what a thread's start allocates would
        # otherwise outlive that busy spell among its calls' objects (gc_policy.py).
        self._executor.submit(int)
        self._timer: asyncio.TimerHandle | None = None
        self._in_flight: asyncio.Future[int] | None = None
        self._closed = False

    def append(self, cdr: CallDetailRecord) -> None:
        if self._closed:
            raise ValueError("the journal flusher is closed")
        now = self._loop.time()
        self.journal.append(cdr, now=now)
        if self._in_flight is None:
            self._schedule(now)

    async def aclose(self) -> None:
        """Write everything still buffered, close the journal and stop the worker thread."""
        self._closed = True
        self._cancel_timer()
        if self._in_flight is not None:
            await asyncio.wait([self._in_flight])
        try:
            await self._loop.run_in_executor(self._executor, self.journal.close)
        finally:
            self._executor.shutdown(wait=False)

    def _schedule(self, now: float) -> None:
        deadline = self.journal.next_flush_deadline
        if self.journal.should_flush(now):
            self._start_flush()
        elif deadline is not None and self._timer is None:
            self._timer = self._loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self._in_flight is None:
            self._start_flush()

    def _start_flush(self) -> None:
        self._cancel_timer()
        self._in_flight = self._loop.run_in_executor(self._executor, self.journal.flush)
        self._in_flight.add_done_callback(self._on_flushed)

    def _on_flushed(self, future: asyncio.Future[int]) -> None:
        self._in_flight = None
        if self._closed:
            return  # aclose writes the rest
        error = future.exception()
        if error is not None:
            logger.error("CDR journal write failed, retrying: %s", error)
            self._timer = self._loop.call_later(self.journal.flush_interval, self._on_timer)
        else:
            self._schedule(self._loop.time())

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
