"""The consumer side of the CDR stream: Redis stream -> PostgreSQL, exactly once in effect.

Edges XADD `ShipBatch` entries to the stream ``tl:cdr`` (`edge.runtime.cdr_shipper`). Every
Celery worker running `billing.tasks.cdr_consume` is a consumer of the group ``cdr-ingest``, so
several share the work. One round, `consume`:

1. entries this consumer was given and did not acknowledge (a failed round) are retried first,
   then entries idle in a dead consumer's hands for ``claim_idle`` seconds are claimed
   (XAUTOCLAIM: a worker killed mid-batch), then new ones are read (XREADGROUP ``>``);
2. all of them are stored in one transaction (`services.cdr_batches_ingest`: COPY into a
   temporary table, INSERT ... ON CONFLICT DO NOTHING);
3. only after the commit: each batch's byte range is recorded in the edge's committed hash
   (what lets the edge delete its journal file), then the entries are XACKed and XDELed.

A crash between any two steps repeats the work, never loses it: the insert is idempotent.
If the database is unreachable the entries stay pending and the round ends; a later round
retries them. An entry that is not a batch, or one whose batch makes the ingest fail for a
reason other than the database being unreachable, is quarantined whole (reason
``ingest_failed``) and acknowledged, so it never blocks the entries behind it.
If Redis restarts empty, the group is made again (from the start of the stream) and the edges
send again what they have not seen confirmed.
"""

from __future__ import annotations

import gc
import logging
import os
import socket
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import redis
from django.db import DatabaseError, InterfaceError, OperationalError, connection

from edge.runtime.cdr_shipper import COMMITTED_KEY, GROUP, STREAM, ShipBatch, committed_field

from .choices import QuarantineReason
from .models import CdrQuarantine
from .services import IngestReport, cdr_batches_ingest

logger = logging.getLogger(__name__)

Entry = tuple[bytes, dict[bytes, bytes]]


def consumer_name() -> str:
    """This worker process's name in the group (its pending entries are its own)."""
    return f"{socket.gethostname()}-{os.getpid()}"


class CdrStreamConsumer:
    def __init__(
        self,
        client: redis.Redis,
        *,
        name: str | None = None,
        count: int = 100,
        block_ms: int = 500,
        claim_idle: float = 30.0,
    ) -> None:
        self.redis = client
        self.name = name or consumer_name()
        self.count = count
        self.block_ms = block_ms
        self.claim_idle_ms = int(claim_idle * 1000)
        self._retry_own = True

    def ensure_group(self) -> None:
        try:
            self.redis.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
        except redis.ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise

    def consume(self, *, budget: float) -> int:
        """Rounds of read-store-acknowledge for up to ``budget`` seconds, stopping early when
        the stream has nothing for us; the number of entries done."""
        deadline = time.monotonic() + budget
        done = 0
        self.ensure_group()
        while time.monotonic() < deadline:
            try:
                entries = self._next_entries()
            except redis.ResponseError as error:
                if "NOGROUP" not in str(error):
                    raise
                self.ensure_group()  # Redis restarted empty
                continue
            if not entries:
                break
            with _automatic_gc_paused():
                stored = self._process(entries)
            if not stored:
                break  # the database is out of reach: the entries stay pending
            done += len(entries)
        return done

    def _next_entries(self) -> list[Entry]:
        if self._retry_own:
            # Our own unacknowledged entries (a round that failed), oldest first.
            own = self.redis.xreadgroup(GROUP, self.name, {STREAM: "0"}, count=self.count)
            entries = _entries(own)
            if entries:
                return entries
            self._retry_own = False
        _, claimed, *_ = self.redis.xautoclaim(
            STREAM, GROUP, self.name, min_idle_time=self.claim_idle_ms, start_id="0-0",
            count=self.count,
        )  # fmt: skip
        claimed = [(entry_id, fields) for entry_id, fields in claimed if fields]
        if claimed:
            return claimed
        new = self.redis.xreadgroup(
            GROUP, self.name, {STREAM: ">"}, count=self.count, block=self.block_ms
        )
        return _entries(new)

    def _process(self, entries: list[Entry]) -> bool:
        batches: list[ShipBatch] = []
        done_ids: list[bytes] = []
        bad: list[tuple[bytes, dict[bytes, bytes], str]] = []
        for entry_id, fields in entries:
            try:
                batches.append(ShipBatch.from_fields(fields))
                done_ids.append(entry_id)
            except ValueError as error:
                bad.append((entry_id, fields, str(error)))
        _usable_connection()
        try:
            if batches:
                _store(batches)
            for entry_id, fields, error in bad:
                _quarantine_entry(entry_id, fields, error)
        except (OperationalError, InterfaceError) as error:
            logger.warning("CDR ingest: the database is unreachable, will retry: %s", error)
            self._retry_own = True
            return False
        except Exception as error:
            logger.exception("CDR ingest failed for %d batches; trying one by one", len(batches))
            if not self._one_by_one(entries, error):
                self._retry_own = True
                return False
            return True
        self._confirm(batches, [entry_id for entry_id, _ in entries])
        return True

    def _one_by_one(self, entries: list[Entry], first_error: Exception) -> bool:
        for entry_id, fields in entries:
            batch: ShipBatch | None = None
            try:
                batch = ShipBatch.from_fields(fields)
                _store([batch])
            except (OperationalError, InterfaceError):
                return False
            except Exception as error:
                try:
                    _quarantine_entry(entry_id, fields, f"{type(error).__name__}: {error}")
                except DatabaseError:
                    return False
                if batch is None:
                    self._ack([entry_id])
                    continue
            # Stored, or kept whole in quarantine: either way it is in the database.
            assert batch is not None
            self._confirm([batch], [entry_id])
        return True

    def _confirm(self, batches: Sequence[ShipBatch], entry_ids: list[bytes]) -> None:
        """After commit: tell each edge what is committed, then acknowledge."""
        pipe = self.redis.pipeline(transaction=False)
        for batch in batches:
            pipe.hset(COMMITTED_KEY.format(edge=batch.edge), committed_field(batch), batch.end)
        pipe.xack(STREAM, GROUP, *entry_ids)
        pipe.xdel(STREAM, *entry_ids)
        pipe.execute()

    def _ack(self, entry_ids: list[bytes]) -> None:
        self.redis.xack(STREAM, GROUP, *entry_ids)
        self.redis.xdel(STREAM, *entry_ids)


def _usable_connection() -> None:
    """Keep the worker's database connection from one transaction to the next (Celery closes it
    around each task): a new one costs about 20 ms of both sides' CPU, its first COPY into the
    partitioned table included, as much as storing a few hundred records. One that no longer
    answers (the database restarted or was out of reach) is dropped; the next query connects."""
    if connection.connection is not None and not connection.is_usable():
        connection.close()


@contextmanager
def _automatic_gc_paused() -> Iterator[None]:
    """No automatic garbage collection while entries are stored. Decoding allocates several
    containers a record, all freed by reference counting as the batch ends (records hold no
    cycles); automatic collections in between only walk the worker's whole heap again, which
    measured 10-15 % of the ingest's CPU. Anything cyclic made meanwhile is collected after."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _entries(reply: Any) -> list[Entry]:
    if not reply:
        return []
    (_, entries), *_ = reply
    return [(entry_id, fields) for entry_id, fields in entries if fields]


def _store(batches: list[ShipBatch]) -> IngestReport:
    return cdr_batches_ingest(batches=batches)


def _quarantine_entry(entry_id: bytes, fields: dict[bytes, bytes], error: str) -> None:
    """Keep a whole stream entry the ingest could not take, with the error."""

    def text(name: bytes) -> str:
        return fields.get(name, b"").decode("utf-8", "replace")

    edge = text(b"edge")[:100] or "?"
    source = f"{text(b'seq')}@{text(b'start')}"[:100]
    data = fields.get(b"data", b"")
    CdrQuarantine.objects.bulk_create(
        [
            CdrQuarantine(
                key=f"{edge}:{source}:batch"[:255],
                edge=edge,
                source=source,
                reason=QuarantineReason.INGEST_FAILED,
                detail=f"stream entry {entry_id.decode()}: {error}",
                line=data.decode("utf-8", "backslashreplace").replace("\x00", "\\x00"),
            )
        ],
        ignore_conflicts=True,
    )
