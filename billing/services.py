"""Writes of the billing app. For now: storing the edges' call detail records in `Cdr`.

`cdr_batches_ingest` is the one way shipped journal lines become rows, for the Redis consumer
(`billing.cdr_stream`) and the embedded in-process shipper alike; `cdrs_ingest` is its bulk
insert, also used by ``load_cdrs``.
"""

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import islice
from typing import Any

import orjson
from django.db import close_old_connections, connection, transaction
from django.db.models import F
from psycopg.errors import UniqueViolation
from psycopg.types.json import Jsonb

from accounts import audit
from accounts.choices import AuditAction
from accounts.models import Customer
from core.tenancy import SYSTEM, Caller
from edge.cdr import CallDetailRecord, CdrDecodeError, parse_iso_utc
from edge.runtime.cdr_shipper import ShipBatch
from trunking.models import EdgeNode, Trunk

from .choices import QuarantineReason
from .models import Cdr, CdrIngestProgress, CdrQuarantine

# The columns a record fills (all but ``id`` and ``ingested_at``, which the database sets).
CDR_COLUMNS = tuple(
    field.column
    for field in Cdr._meta.concrete_fields
    if not field.primary_key and field.name != "ingested_at"
)
# Without COPY, rows go in statements of this many (well under SQLite's variable limit).
BULK_BATCH_SIZE = 500


def cdrs_ingest(*, records: Iterable[CallDetailRecord]) -> int:
    """Store ``records`` in one transaction; the number that were new.

    Idempotent on (edge, call_id, setup_at) (as unique as (edge, call_id): a record's setup
    time never changes): a record already stored is skipped, so a journal can be
    loaded again after a crash or by mistake. PostgreSQL gets the rows through COPY, as DESIGN
    requires (row-by-row inserts cannot keep up with the edges): a list straight into the
    table (in a savepoint; if any row is already stored, undone and redone the next way),
    an iterator into a temporary table and then one INSERT ... ON CONFLICT DO NOTHING. Other
    databases (SQLite, the embedded default) get bulk inserts. An iterator is consumed once,
    as it comes: on PostgreSQL the COPY streams it, so the caller chooses how much to hold in
    memory.
    """
    with transaction.atomic():
        if connection.vendor != "postgresql":
            return _ingest_by_bulk_insert(records)
        if isinstance(records, Sequence):
            # Shipped batches are nearly always all new: COPY straight into the table, in a
            # savepoint; only if a row is already there (a re-sent batch) is it undone and the
            # batch goes the ON CONFLICT way. Half the database work of the common case.
            rows = [_copy_row(record) for record in records]
            try:
                with transaction.atomic():
                    return _copy_into(Cdr._meta.db_table, rows)
            except UniqueViolation:
                return _ingest_by_copy(rows)
        return _ingest_by_copy(_copy_row(record) for record in records)


def _copy_row(record: CallDetailRecord) -> list[Any]:
    values = _column_values(record)
    values["routes"] = Jsonb(values["routes"], dumps=_json_text)
    values["codecs"] = Jsonb(values["codecs"], dumps=_json_text)
    return [values[column] for column in CDR_COLUMNS]


def _json_text(value: Any) -> str:
    return orjson.dumps(value).decode()


def _copy_into(table: str, rows: Iterable[list[Any]]) -> int:
    count = 0
    with (
        connection.connection.cursor() as cursor,
        cursor.copy(f"COPY {table} ({', '.join(CDR_COLUMNS)}) FROM STDIN") as copy,
    ):
        for row in rows:
            copy.write_row(row)
            count += 1
    return count


def _ingest_by_copy(rows: Iterable[list[Any]]) -> int:
    columns = ", ".join(CDR_COLUMNS)
    table = Cdr._meta.db_table
    with connection.connection.cursor() as cursor:
        # Same column types as the table, none of its constraints, gone at commit; dropped
        # explicitly too so that two calls in one outer transaction do not collide.
        cursor.execute(
            f"CREATE TEMPORARY TABLE cdr_incoming ON COMMIT DROP AS "
            f"SELECT {columns} FROM {table} WITH NO DATA"
        )
        _copy_into("cdr_incoming", rows)
        cursor.execute(
            f"INSERT INTO {table} ({columns}) SELECT {columns} FROM cdr_incoming "
            f"ON CONFLICT (edge, call_id, setup_at) DO NOTHING"
        )
        inserted = cursor.rowcount
        cursor.execute("DROP TABLE cdr_incoming")
    return inserted


def _ingest_by_bulk_insert(records: Iterable[CallDetailRecord]) -> int:
    inserted = 0
    for chunk in _chunks(records, BULK_BATCH_SIZE):
        # bulk_create(ignore_conflicts=True) cannot say how many rows it inserted, so the rows
        # already stored are looked up first; ignore_conflicts still guards a concurrent load.
        stored = set(
            Cdr.objects.filter(
                edge__in={r.edge for r in chunk}, call_id__in=[r.call_id for r in chunk]
            )
            .order_by()
            .values_list("edge", "call_id")
        )
        new: dict[tuple[str, str], Cdr] = {}
        for record in chunk:
            key = (record.edge, record.call_id)
            if key not in stored and key not in new:
                new[key] = Cdr(**_column_values(record))
        Cdr.objects.bulk_create(new.values(), ignore_conflicts=True)
        inserted += len(new)
    return inserted


def _column_values(record: CallDetailRecord) -> dict[str, Any]:
    """The record as `Cdr` column values: "" for text it lacks, datetimes for its times."""
    return {
        "edge": record.edge,
        "call_id": record.call_id,
        "a_call_id": record.a_call_id,
        "b_call_id": record.b_call_id or "",
        "customer_id": record.customer_id,
        "trunk_id": record.trunk_id,
        "direction": record.direction,
        "caller_e164": record.caller_e164 or "",
        "callee_e164": record.callee_e164 or "",
        "caller_raw": record.caller_raw,
        "callee_raw": record.callee_raw,
        "source_ip": record.source_ip,
        "source_port": record.source_port,
        "routes": record.routes,
        "answered_by": record.answered_by or "",
        "setup_at": parse_iso_utc(record.setup_at),
        "ringing_at": _datetime_or_none(record.ringing_at),
        "answer_at": _datetime_or_none(record.answer_at),
        "end_at": parse_iso_utc(record.end_at),
        "duration_ms": record.duration_ms,
        "billable_seconds": record.billable_seconds,
        "final_code": record.final_code,
        "reason": record.reason,
        "hangup_side": record.hangup_side or "",
        "codecs": record.codecs,
        "config_version": record.config_version,
    }


def _datetime_or_none(text: str | None) -> datetime | None:
    return None if text is None else parse_iso_utc(text)


def _chunks(records: Iterable[CallDetailRecord], size: int) -> Iterator[list[CallDetailRecord]]:
    iterator = iter(records)
    while chunk := list(islice(iterator, size)):
        yield chunk


# --- shipped batches -----------------------------------------------------------------------


@dataclass
class IngestReport:
    """What one `cdr_batches_ingest` did."""

    records: int = 0  # lines that decoded to records from known edges
    inserted: int = 0  # of those, new rows
    quarantined: int = 0  # lines held in quarantine (not stored)
    noted: int = 0  # records stored and noted in quarantine (customer or trunk deleted)


def _line_text(line: bytes) -> str:
    """The line as text PostgreSQL takes (no NUL, valid UTF-8): other bytes escaped as \\xNN."""
    return line.decode("utf-8", "backslashreplace").replace("\x00", "\\x00")


@transaction.atomic
def cdr_batches_ingest(*, batches: Sequence[ShipBatch]) -> IngestReport:
    """Store the CDR lines an edge shipped, in one transaction; what was done.

    Every line ends somewhere an operator can see it: a record from a registered edge is stored
    (idempotently, `cdrs_ingest`); a line that does not decode, a torn last line, a record from
    an unregistered edge, or one that names another edge than the one that shipped it is held
    in `CdrQuarantine` with its reason and text; a record whose customer or trunk no longer
    exists is stored and noted there. None of these stops the lines after it. Shipping the same
    batch again changes nothing (quarantine entries are keyed by their place in the journal).
    """
    report = IngestReport()
    records: list[tuple[ShipBatch, int, bytes, CallDetailRecord]] = []
    held: list[CdrQuarantine] = []
    for batch in batches:
        for offset, line in batch.lines():
            source = f"{batch.seq}@{offset}"
            key = f"{batch.edge}:{source}"
            try:
                record = CallDetailRecord.from_json(line)
            except CdrDecodeError as error:
                torn = batch.torn and not line.endswith(b"\n")
                held.append(
                    CdrQuarantine(
                        key=key,
                        edge=batch.edge,
                        source=source,
                        reason=QuarantineReason.TORN_LINE if torn else QuarantineReason.UNDECODABLE,
                        detail=str(error),
                        line=_line_text(line),
                    )
                )
                continue
            if record.edge != batch.edge:
                held.append(
                    CdrQuarantine(
                        key=key,
                        edge=batch.edge,
                        source=source,
                        reason=QuarantineReason.EDGE_MISMATCH,
                        detail=f"shipped by {batch.edge!r}, recorded by {record.edge!r}",
                        call_id=record.call_id,
                        line=_line_text(line),
                    )
                )
                continue
            records.append((batch, offset, line, record))

    known_edges = set(
        EdgeNode.objects.filter(name__in={b.edge for b in batches}).values_list("name", flat=True)
    )
    stored: list[CallDetailRecord] = []
    for batch, offset, line, record in records:
        if record.edge in known_edges:
            stored.append(record)
            continue
        held.append(
            CdrQuarantine(
                key=f"{batch.edge}:{batch.seq}@{offset}",
                edge=batch.edge,
                source=f"{batch.seq}@{offset}",
                reason=QuarantineReason.UNKNOWN_EDGE,
                detail=f"no edge node named {record.edge!r} is registered; retry once it is",
                call_id=record.call_id,
                line=_line_text(line),
            )
        )
    held.extend(_orphan_notes(stored))
    per_edge: dict[str, list[CallDetailRecord]] = {batch.edge: [] for batch in batches}
    for record in stored:
        per_edge[record.edge].append(record)
    now = datetime.now(UTC)
    for edge, edge_records in per_edge.items():
        inserted = cdrs_ingest(records=edge_records)
        edge_held = sum(1 for entry in held if entry.edge == edge and not entry.stored)
        _record_progress(edge, edge_records, inserted, edge_held, now)
        report.records += len(edge_records)
        report.inserted += inserted
        report.quarantined += edge_held
    report.noted = sum(1 for entry in held if entry.stored)
    CdrQuarantine.objects.bulk_create(held, ignore_conflicts=True)
    return report


def _orphan_notes(stored: list[CallDetailRecord]) -> list[CdrQuarantine]:
    """Notes for the records naming a customer or trunk that no longer exists."""
    customer_ids = {r.customer_id for r in stored if r.customer_id is not None}
    trunk_ids = {r.trunk_id for r in stored if r.trunk_id is not None}
    if customer_ids:
        customer_ids -= set(
            Customer.objects.filter(pk__in=customer_ids).values_list("pk", flat=True)
        )
    if trunk_ids:
        trunk_ids -= set(Trunk.objects.filter(pk__in=trunk_ids).values_list("pk", flat=True))
    notes = []
    for record in stored:
        for missing, reason, what, value in (
            (customer_ids, QuarantineReason.CUSTOMER_DELETED, "customer", record.customer_id),
            (trunk_ids, QuarantineReason.TRUNK_DELETED, "trunk", record.trunk_id),
        ):
            if value in missing:
                notes.append(
                    CdrQuarantine(
                        key=f"{record.edge}:{record.call_id}:{reason}",
                        edge=record.edge,
                        reason=reason,
                        detail=f"{what} {value} no longer exists; the CDR is stored all the same",
                        call_id=record.call_id,
                        stored=True,
                    )
                )
    return notes


def _record_progress(
    edge: str, records: list[CallDetailRecord], inserted: int, held: int, now: datetime
) -> None:
    # Two workers may meet an edge's first batch at once: insert-or-nothing, then update.
    CdrIngestProgress.objects.bulk_create([CdrIngestProgress(edge=edge)], ignore_conflicts=True)
    changes: dict[str, Any] = {
        "last_committed_at": now,
        "committed": F("committed") + inserted,
        "duplicates": F("duplicates") + (len(records) - inserted),
        "quarantined": F("quarantined") + held,
    }
    if records:
        ends = [parse_iso_utc(r.end_at) for r in records]
        changes["last_call_end_at"] = max(ends)
        changes["last_lag_seconds"] = (now - min(ends)).total_seconds()
    CdrIngestProgress.objects.filter(edge=edge).update(**changes)


def cdr_batches_ingest_in_process(batches: Sequence[ShipBatch]) -> IngestReport:
    """The embedded default's shipper calls this on its own thread (no Redis, no worker)."""
    close_old_connections()
    return cdr_batches_ingest(batches=batches)


@transaction.atomic
def cdr_quarantine_retry(*, entries: Iterable[CdrQuarantine], actor: Caller = SYSTEM) -> int:
    """Ingest held quarantine entries again (their cause fixed, e.g. the edge now registered);
    the number that are now stored. Entries still refused stay, with their reason refreshed.
    Each retried entry is deleted with an audit row ("retry ingest") naming who asked."""
    resolved = 0
    for entry in entries:
        if entry.stored or entry.resolved_at is not None:
            continue
        seq, _, offset = entry.source.partition("@")
        line = entry.line.encode()
        if not seq.isdigit() or not offset.isdigit():
            continue
        batch = ShipBatch(entry.edge, int(seq), int(offset), int(offset) + len(line), line)
        audit.record(
            actor=actor,
            obj=entry,
            action=AuditAction.DELETE,
            before=audit.snapshot(entry),
            note=f"retry ingest ({entry.reason})",
        )
        entry.delete()  # frees its key: a refusal below records it again
        report = cdr_batches_ingest(batches=[batch])
        if report.records:
            resolved += 1
    return resolved
