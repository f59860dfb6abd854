"""Writes of the billing app. For now: loading the edges' call detail records into `Cdr`."""

from collections.abc import Iterable, Iterator
from datetime import datetime
from itertools import islice
from typing import Any

from django.db import connection, transaction
from psycopg.types.json import Jsonb

from edge.cdr import CallDetailRecord, parse_iso_utc

from .models import Cdr

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

    Idempotent on (edge, call_id): a record already stored is skipped, so a journal can be
    loaded again after a crash or by mistake. PostgreSQL gets the rows through COPY into a
    temporary table and one INSERT ... ON CONFLICT DO NOTHING, as DESIGN requires (row-by-row
    inserts cannot keep up with the edges); other databases (SQLite, the embedded default)
    through bulk inserts. ``records`` is consumed once, as it comes: on PostgreSQL the COPY
    streams it, so the caller chooses how much to hold in memory.
    """
    with transaction.atomic():
        if connection.vendor == "postgresql":
            return _ingest_by_copy(records)
        return _ingest_by_bulk_insert(records)


def _ingest_by_copy(records: Iterable[CallDetailRecord]) -> int:
    columns = ", ".join(CDR_COLUMNS)
    table = Cdr._meta.db_table
    with connection.connection.cursor() as cursor:
        # Same column types as the table, none of its constraints, gone at commit; dropped
        # explicitly too so that two calls in one outer transaction do not collide.
        cursor.execute(
            f"CREATE TEMPORARY TABLE cdr_incoming ON COMMIT DROP AS "
            f"SELECT {columns} FROM {table} WITH NO DATA"
        )
        with cursor.copy(f"COPY cdr_incoming ({columns}) FROM STDIN") as copy:
            for record in records:
                values = _column_values(record)
                values["routes"] = Jsonb(values["routes"])
                values["codecs"] = Jsonb(values["codecs"])
                values["media"] = Jsonb(values["media"]) if values["media"] is not None else None
                copy.write_row([values[column] for column in CDR_COLUMNS])
        cursor.execute(
            f"INSERT INTO {table} ({columns}) SELECT {columns} FROM cdr_incoming "
            f"ON CONFLICT (edge, call_id) DO NOTHING"
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
        "media": record.media,
        "config_version": record.config_version,
    }


def _datetime_or_none(text: str | None) -> datetime | None:
    return None if text is None else parse_iso_utc(text)


def _chunks(records: Iterable[CallDetailRecord], size: int) -> Iterator[list[CallDetailRecord]]:
    iterator = iter(records)
    while chunk := list(islice(iterator, size)):
        yield chunk
