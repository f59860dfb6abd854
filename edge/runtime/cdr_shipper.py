"""Ships the node's CDR journal to the control plane, and deletes a journal file only once every
record in it is known to be committed in the database.

The journal (`edge.runtime.journal`) is the record of truth on the edge; this module tails its
files and sends their complete lines in batches (`ShipBatch`: a file's sequence number, a byte
range, the lines), through a `ShipTransport`:

- `RedisShipTransport` (production): XADD to the stream ``tl:cdr``; a Celery consumer group
  (`billing.cdr_stream`) COPYs the batches into PostgreSQL and, *after* its transaction commits,
  records each batch's byte range in the hash ``tl:cdr:committed:<node>``;
- `InProcessTransport` (the embedded default, no Redis): the same batches go to an ingest
  function the caller gives (billing's service, into SQLite), confirmed when it returns.

Confirmation is per byte range. A file is deleted (or moved to an archive directory) once it is
finished (not the newest file of the node, which the journal may still append to) and its
confirmed ranges cover it from byte 0 to its end. Redis' acceptance of an XADD confirms
nothing: Redis here keeps nothing on disk. When Redis restarts (its run id changes) every range
not yet confirmed is sent again; so is one unconfirmed for ``resend_after`` seconds (a batch
the consumer quarantined or lost). The consumer's insert is idempotent on (edge, call id,
setup time), so re-sending is harmless.

A finished file whose last line has no newline ends in a torn line (the edge crashed in the
middle of a write): it is counted, logged, and shipped flagged as torn, so the consumer keeps it
in quarantine with its reason and the file can still be completed; it is never fatal.

Everything here runs on one thread of its own (`ShipperThread`): file reads and the transport's
calls block that thread, never the event loop. The loop only reads the counters (`metrics`).
No CDR is decoded here: the lines are shipped as they are on disk.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from edge.runtime import allocator
from edge.runtime.journal import journal_files

__all__ = [
    "COMMITTED_KEY",
    "GROUP",
    "STREAM",
    "InProcessTransport",
    "JournalShipper",
    "RedisShipTransport",
    "ShipBatch",
    "ShipTransport",
    "ShipperThread",
    "committed_field",
]

logger = logging.getLogger(__name__)

STREAM = "tl:cdr"
GROUP = "cdr-ingest"
COMMITTED_KEY = "tl:cdr:committed:{edge}"

_SEQ = re.compile(r"-([0-9]+)\.jsonl$")
_FIELD = re.compile(r"([0-9]+):([0-9]+)")


@dataclass(frozen=True, slots=True)
class ShipBatch:
    """Whole lines ``data`` of journal file number ``seq`` of ``edge``, bytes ``start``-``end``.

    ``torn`` marks the last piece of a finished file that has no newline (a crash mid-write).
    """

    edge: str
    seq: int
    start: int
    end: int
    data: bytes
    torn: bool = False

    def fields(self) -> dict[str, bytes | str | int]:
        """The batch as a stream entry's fields."""
        return {
            "edge": self.edge,
            "seq": self.seq,
            "start": self.start,
            "end": self.end,
            "torn": int(self.torn),
            "data": self.data,
        }

    @classmethod
    def from_fields(cls, fields: dict[bytes, bytes]) -> ShipBatch:
        """The batch of a stream entry; ValueError if it is not one an edge wrote."""
        try:
            batch = cls(
                edge=fields[b"edge"].decode(),
                seq=int(fields[b"seq"]),
                start=int(fields[b"start"]),
                end=int(fields[b"end"]),
                data=fields[b"data"],
                torn=fields[b"torn"] == b"1",
            )
        except (KeyError, ValueError, UnicodeDecodeError) as error:
            raise ValueError(f"not a CDR batch: {error!r}") from None
        if not batch.edge or batch.start < 0 or batch.end - batch.start != len(batch.data):
            raise ValueError("not a CDR batch: its byte range does not match its data")
        return batch

    def lines(self) -> Iterator[tuple[int, bytes]]:
        """Each line (ending in its newline, but a torn last one) with the byte offset it starts
        at in its journal file.

        Lines end at b"\\n" only, as the journal writes them and as `records` and the shipper's
        cuts count them (a stray carriage return is inside a line, which then fails to
        decode). Found by bytes.find (memchr): bytes.splitlines, which also splits at CR, and
        bytes.split test every byte, about 8,000 and 5,000 instructions a record here."""
        data = self.data
        find = data.find
        at, size = 0, len(data)
        while at < size:
            end = find(b"\n", at) + 1 or size  # no newline left: the torn piece, as it is
            yield self.start + at, data[at:end]
            at = end

    @property
    def records(self) -> int:
        return self.data.count(b"\n") + (1 if self.torn else 0)


def committed_field(batch: ShipBatch) -> str:
    """The batch's field in the edge's committed hash; its value is ``batch.end``."""
    return f"{batch.seq}:{batch.start}"


class ShipTransport(Protocol):
    """Where batches go, and what is known committed. Methods block; errors are OSError or the
    client's own and mean "try again later"."""

    def send(self, batches: Sequence[ShipBatch]) -> None: ...

    def confirmed(self) -> tuple[str, dict[str, int]]:
        """(an id that changes when the store lost what it knew, {"seq:start": end})."""
        ...

    def forget(self, fields: Iterable[str], replace: dict[str, int]) -> None:
        """Drop ``fields`` from the committed marks, then set ``replace`` (compaction)."""
        ...

    def close(self) -> None: ...


class RedisShipTransport:
    """XADD to the CDR stream; committed marks from the hash the consumer writes after commit."""

    def __init__(self, url: str, *, node: str, timeout: float = 2.0) -> None:
        import redis  # the sync client; this runs on the shipper's thread

        self._redis = redis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout
        )
        self._key = COMMITTED_KEY.format(edge=node)

    def send(self, batches: Sequence[ShipBatch]) -> None:
        pipe = self._redis.pipeline(transaction=False)
        for batch in batches:
            pipe.xadd(STREAM, batch.fields())  # type: ignore[arg-type]
        pipe.execute()

    def confirmed(self) -> tuple[str, dict[str, int]]:
        pipe = self._redis.pipeline(transaction=False)
        pipe.info("server")
        pipe.hgetall(self._key)
        info, marks = pipe.execute()
        return str(info["run_id"]), {k.decode(): int(v) for k, v in marks.items()}

    def forget(self, fields: Iterable[str], replace: dict[str, int]) -> None:
        pipe = self._redis.pipeline(transaction=True)
        names = list(fields)
        if names:
            pipe.hdel(self._key, *names)
        if replace:
            pipe.hset(self._key, mapping=replace)  # type: ignore[arg-type]
        pipe.execute()

    def close(self) -> None:
        self._redis.close()


class InProcessTransport:
    """The embedded default: ``ingest`` stores the batches (in its own transaction) or raises;
    what it returned from is committed."""

    def __init__(self, ingest: Callable[[Sequence[ShipBatch]], object]) -> None:
        self._ingest = ingest
        self._marks: dict[str, int] = {}

    def send(self, batches: Sequence[ShipBatch]) -> None:
        self._ingest(batches)
        for batch in batches:
            self._marks[committed_field(batch)] = batch.end

    def confirmed(self) -> tuple[str, dict[str, int]]:
        return "in-process", dict(self._marks)

    def forget(self, fields: Iterable[str], replace: dict[str, int]) -> None:
        for name in fields:
            self._marks.pop(name, None)
        self._marks.update(replace)

    def close(self) -> None:
        pass


@dataclass
class _Pending:
    end: int
    records: int
    read_at: float


@dataclass
class _File:
    path: Path
    read_to: int = 0  # bytes shipped (or, after a rewind, to ship again from here)
    counted_to: int = 0  # bytes whose records were counted as journalled
    confirmed_to: int = 0  # bytes from 0 known committed
    marks: dict[int, int] = field(default_factory=dict)  # confirmed ranges beyond, start -> end
    pending: dict[int, _Pending] = field(default_factory=dict)  # shipped, not yet confirmed


class JournalShipper:
    """Tails one node's journal files and ships them; one `step` at a time, on one thread."""

    def __init__(
        self,
        directory: Path,
        *,
        node: str,
        transport: ShipTransport,
        batch_bytes: int = 256 * 1024,
        max_unconfirmed_bytes: int = 64 * 1024 * 1024,
        resend_after: float = 120.0,
        archive_dir: Path | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.directory = directory
        self.node = node
        self.transport = transport
        self.batch_bytes = batch_bytes
        self.max_unconfirmed_bytes = max_unconfirmed_bytes
        self.resend_after = resend_after
        self.archive_dir = archive_dir
        self._clock = clock
        self._files: dict[int, _File] = {}
        self._epoch: str | None = None
        # Counters (read by the loop thread for /metrics; ints, replaced whole).
        self.journalled = 0
        self.shipped = 0
        self.committed = 0
        self.resent = 0
        self.torn_lines = 0
        self.files_done = 0
        self.errors = 0
        self.backlog_bytes = 0
        self.unconfirmed_bytes = 0
        self.oldest_unconfirmed: float | None = None

    # --- one round ---------------------------------------------------------------------------

    def step(self) -> bool:
        """Learn what is committed, finish files, ship what is new; True if more is waiting.

        A transport or file error is logged and counted; the next step tries again.
        """
        try:
            self._scan_files()
            self._learn_confirmed()
            self._finish_files()
            more = self._ship()
        except Exception as error:
            self.errors += 1
            logger.warning("CDR shipping paused (retrying): %s", error)
            return False
        self._update_gauges()
        return more

    def _learn_confirmed(self) -> None:
        epoch, marks = self.transport.confirmed()
        if self._epoch is not None and epoch != self._epoch:
            rewound = 0
            for known in self._files.values():
                rewound += known.read_to - known.confirmed_to
                known.read_to = known.confirmed_to
                known.pending.clear()
            logger.warning(
                "the CDR stream's Redis restarted (it keeps nothing): re-sending %d bytes "
                "not yet confirmed committed",
                rewound,
            )
        self._epoch = epoch
        by_file: dict[int, dict[str, int]] = {}
        for name, end in marks.items():
            match = _FIELD.fullmatch(name)
            if match:
                by_file.setdefault(int(match[1]), {})[name] = end
        now = self._clock()
        for seq, fields in by_file.items():
            state = self._files.get(seq)
            if state is None:
                # A file removed already: a batch of it confirmed again (a redelivery).
                self.transport.forget(fields, {})
                continue
            for name, end in fields.items():
                start = int(name.partition(":")[2])
                state.marks[start] = max(end, state.marks.get(start, 0))
            self._advance(state)
            # Compaction: many marks inside the confirmed prefix become one.
            covered = [n for n, e in fields.items() if e <= state.confirmed_to]
            if len(covered) > 1 or (covered and covered != [f"{seq}:0"]):
                self.transport.forget(covered, {f"{seq}:0": state.confirmed_to})
        for state in self._files.values():
            for start, pending in list(state.pending.items()):
                if now - pending.read_at >= self.resend_after:
                    logger.warning(
                        "CDR batch %s bytes %d-%d unconfirmed for %.0f s: sending again",
                        state.path.name, start, pending.end, now - pending.read_at,
                    )  # fmt: skip
                    state.read_to = min(state.read_to, state.confirmed_to)
                    state.pending.clear()
                    break

    def _advance(self, state: _File) -> None:
        for start in sorted(state.marks):
            if start > state.confirmed_to:
                break
            state.confirmed_to = max(state.confirmed_to, state.marks.pop(start))
        for start in sorted(state.pending):
            pending = state.pending[start]
            if pending.end > state.confirmed_to:
                break
            self.committed += pending.records
            del state.pending[start]
        state.read_to = max(state.read_to, state.confirmed_to)

    def _scan_files(self) -> None:
        for path in journal_files(self.directory, node=self.node):
            match = _SEQ.search(path.name)
            if match and int(match[1]) not in self._files:
                self._files[int(match[1])] = _File(path)

    def _newest(self) -> int | None:
        return max(self._files) if self._files else None

    def _finish_files(self) -> None:
        newest = self._newest()
        for seq in sorted(self._files):
            state = self._files[seq]
            if seq == newest:
                break
            try:
                size = state.path.stat().st_size
            except FileNotFoundError:
                # Removed by someone else (an operator): nothing left to ship or to confirm.
                logger.warning("CDR journal file %s disappeared before it was committed whole",
                               state.path.name)  # fmt: skip
                del self._files[seq]
                continue
            if state.confirmed_to < size:
                continue
            if self.archive_dir is not None:
                self.archive_dir.mkdir(parents=True, exist_ok=True)
                shutil.move(state.path, self.archive_dir / state.path.name)
            else:
                state.path.unlink()
            self.transport.forget([f"{seq}:0"], {})
            del self._files[seq]
            self.files_done += 1
            logger.info("CDR journal file %s committed whole: removed", state.path.name)

    def _ship(self) -> bool:
        newest = self._newest()
        batches: list[ShipBatch] = []
        reads: list[tuple[_File, ShipBatch, int]] = []
        budget = self.max_unconfirmed_bytes - self._unconfirmed()
        more = False
        for seq in sorted(self._files):
            state = self._files[seq]
            try:
                size = state.path.stat().st_size
            except FileNotFoundError:
                continue  # _finish_files forgets it next round
            while state.read_to < size:
                if budget <= 0 or len(batches) >= 64:
                    more = budget > 0
                    break
                batch = self._read(seq, state, size, finished=seq != newest)
                if batch is None:
                    break
                batches.append(batch)
                reads.append((state, batch, batch.records))
                state.read_to = batch.end
                budget -= len(batch.data)
            if more or budget <= 0:
                break
        if not batches:
            return False
        try:
            self.transport.send(batches)
        except BaseException:
            for state, batch, _ in reads:
                state.read_to = min(state.read_to, batch.start)
            raise
        now = self._clock()
        for state, batch, records in reads:
            state.pending[batch.start] = _Pending(batch.end, records, now)
            fresh = max(0, batch.end - max(batch.start, state.counted_to))
            if fresh == len(batch.data):
                self.journalled += records
                self.shipped += records
            else:
                self.resent += records
            state.counted_to = max(state.counted_to, batch.end)
            if batch.torn:
                self.torn_lines += 1
                logger.warning(
                    "CDR journal %s ends in a torn line at byte %d (%d bytes; a crash "
                    "mid-write): shipped to quarantine",
                    state.path.name, batch.start, len(batch.data),
                )  # fmt: skip
        return more

    def _read(self, seq: int, state: _File, size: int, *, finished: bool) -> ShipBatch | None:
        with state.path.open("rb") as file:
            data = os.pread(
                file.fileno(), min(self.batch_bytes, size - state.read_to), state.read_to
            )
        cut = data.rfind(b"\n") + 1
        if cut == 0 and len(data) == self.batch_bytes:
            # One line longer than a batch: read up to its newline, whatever its length.
            with state.path.open("rb") as file:
                rest = os.pread(file.fileno(), size - state.read_to, state.read_to)
            cut, data = rest.find(b"\n") + 1, rest
        if cut:
            data = data[:cut]
            return ShipBatch(self.node, seq, state.read_to, state.read_to + cut, data)
        if finished and state.read_to + len(data) == size:
            return ShipBatch(self.node, seq, state.read_to, size, data, torn=True)
        return None  # the newest file's line being written: next time

    def _unconfirmed(self) -> int:
        return sum(s.read_to - s.confirmed_to for s in self._files.values())

    def _update_gauges(self) -> None:
        sizes = 0
        oldest: float | None = None
        for state in self._files.values():
            with contextlib.suppress(OSError):
                sizes += state.path.stat().st_size - state.read_to
            for pending in state.pending.values():
                if oldest is None or pending.read_at < oldest:
                    oldest = pending.read_at
        self.backlog_bytes = max(sizes, 0)
        self.unconfirmed_bytes = self._unconfirmed()
        self.oldest_unconfirmed = oldest

    # --- metrics (any thread) --------------------------------------------------------------------

    def metrics(self) -> Iterable[Metric]:
        oldest = self.oldest_unconfirmed
        lag_seconds = 0.0 if oldest is None else max(0.0, self._clock() - oldest)
        yield CounterMetricFamily(
            "trunkline_edge_cdr_journalled",
            "CDR records found in the journal by the shipper",
            value=self.journalled,
        )
        yield CounterMetricFamily(
            "trunkline_edge_cdr_shipped", "CDR records shipped (first sends)", value=self.shipped
        )
        yield CounterMetricFamily(
            "trunkline_edge_cdr_committed",
            "CDR records confirmed committed in the database",
            value=self.committed,
        )
        yield CounterMetricFamily(
            "trunkline_edge_cdr_resent", "CDR records shipped again, unconfirmed", value=self.resent
        )
        yield GaugeMetricFamily(
            "trunkline_edge_cdr_lag_records",
            "CDR records shipped or found and not yet confirmed committed",
            value=max(self.journalled - self.committed, 0),
        )
        yield GaugeMetricFamily(
            "trunkline_edge_cdr_lag_seconds",
            "Age of the oldest CDR batch not yet confirmed committed",
            value=lag_seconds,
        )
        yield GaugeMetricFamily(
            "trunkline_edge_cdr_backlog_bytes",
            "Journal bytes not yet shipped",
            value=self.backlog_bytes,
        )
        yield CounterMetricFamily(
            "trunkline_edge_cdr_torn_lines",
            "Torn last lines found in finished journal files (crash mid-write)",
            value=self.torn_lines,
        )
        yield CounterMetricFamily(
            "trunkline_edge_cdr_files_done",
            "Journal files removed once committed whole",
            value=self.files_done,
        )
        yield CounterMetricFamily(
            "trunkline_edge_cdr_ship_errors",
            "Shipping rounds that failed (Redis or the database unreachable) and were retried",
            value=self.errors,
        )


class ShipperThread:
    """Runs a `JournalShipper` on a thread of its own: a step every ``interval`` seconds, or at
    once while there is more to ship; `stop` ships what is left, then joins."""

    def __init__(self, shipper: JournalShipper, *, interval: float = 0.2) -> None:
        self.shipper = shipper
        self.interval = interval
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cdr-shipper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        allocator.uncached_thread()
        while not self._stopping.is_set():
            if not self.shipper.step():
                self._stopping.wait(self.interval)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop after one last round (the journal's final flush ships too)."""
        self._stopping.set()
        self._thread.join(timeout)
        if not self._thread.is_alive():
            self.shipper.step()
        with contextlib.suppress(Exception):
            self.shipper.transport.close()
