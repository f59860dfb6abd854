"""Writes of the billing app: storing (and rating) the edges' call detail records, the balance
ledger, rate decks and their import, recurring charges, invoices, re-rating.

`cdr_batches_ingest` is the one way journal lines become rows, for the Redis consumer
(`billing.cdr_stream`), the embedded in-process shipper and ``load_cdrs`` alike; `cdrs_ingest`
is its bulk insert, and rates every record and debits what it inserted.
"""

import logging
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from itertools import islice
from typing import Any

import orjson
from django.core.exceptions import ValidationError
from django.db import close_old_connections, connection, transaction
from django.db.models import Count, F, Sum
from django.utils import timezone
from psycopg.errors import UniqueViolation

from accounts import audit
from accounts.choices import AuditAction
from accounts.models import Customer
from core.tenancy import SYSTEM, Caller
from edge.cdr import CallDetailRecord, CdrDecodeError, parse_iso_utc
from edge.runtime.cdr_shipper import ShipBatch
from trunking.models import EdgeNode, PhoneNumber, Trunk
from trunking.push import request_config_push
from trunking.selectors import edges_calls
from trunking.services import EdgeUnavailable, edge_call_end

from .choices import QuarantineReason
from .models import (
    Balance,
    Cdr,
    CdrIngestProgress,
    CdrQuarantine,
    Invoice,
    InvoiceLine,
    InvoiceSequence,
    LedgerEntry,
    Rate,
    RateAssignment,
    RateDeck,
)
from .rate_import import check_overlaps, parse_rate_csv
from .selectors import Rating, RatingBook, out_of_credit, prepaid_exposures

logger = logging.getLogger(__name__)

# The columns a record fills (all but ``id`` and ``ingested_at``, which the database sets).
CDR_COLUMNS = tuple(
    field.column
    for field in Cdr._meta.concrete_fields
    if not field.primary_key and field.name != "ingested_at"
)
# Without COPY, rows go in statements of this many (well under SQLite's variable limit).
BULK_BATCH_SIZE = 500


def cdrs_ingest(*, records: Iterable[CallDetailRecord]) -> int:
    """Store and rate ``records`` in one transaction; the number that were new.

    Idempotent on (edge, call_id, setup_at) (as unique as (edge, call_id): a record's setup
    time never changes): a record already stored is skipped, so a journal can be
    loaded again after a crash or by mistake. Each record is rated as it goes in
    (`billing.rating`, through a `RatingBook` read once per call, before any COPY starts) and
    the cost of the rows really inserted is debited from their customers' balances in the same
    transaction, so a record is charged exactly once. PostgreSQL gets the rows through COPY, as
    DESIGN requires (row-by-row inserts cannot keep up with the edges): a list straight into
    the table (in a savepoint; if any row is already stored, undone and redone the next way),
    an iterator into a temporary table and then one INSERT ... ON CONFLICT DO NOTHING. Other
    databases (SQLite, the embedded default) get bulk inserts. An iterator is consumed once,
    as it comes: on PostgreSQL the COPY streams it, so the caller chooses how much to hold in
    memory.
    """
    book = RatingBook()
    with transaction.atomic():
        if connection.vendor != "postgresql":
            charged = _ingest_by_bulk_insert(records, book)
            inserted = len(charged)
        elif isinstance(records, Sequence):
            # Shipped batches are nearly always all new: COPY straight into the table, in a
            # savepoint; only if a row is already there (a re-sent batch) is it undone and the
            # batch goes the ON CONFLICT way. Half the database work of the common case.
            rows = [_copy_line(record, book) for record in records]
            try:
                with transaction.atomic():
                    inserted = _copy_into(Cdr._meta.db_table, [line for line, _ in rows])
                charged = [charge for _, charge in rows if charge is not None]
            except UniqueViolation:
                charged = _ingest_by_copy(line for line, _ in rows)
                inserted = len(charged)
        else:
            charged = _ingest_by_copy(_copy_line(record, book)[0] for record in records)
            inserted = len(charged)
        usage_debit(charges=charged)
    return inserted


# What ingest hands the ledger for each new row: (customer id, cost, answer time).
Charge = tuple[int | None, Decimal | None, datetime | None]

# The columns of a COPY line (`_copy_line`), in its order; the same set as `CDR_COLUMNS`.
COPY_COLUMNS = (
    "edge", "call_id", "a_call_id", "b_call_id", "customer_id", "trunk_id", "direction",
    "caller_e164", "callee_e164", "caller_raw", "callee_raw", "source_ip", "source_port",
    "routes", "answered_by", "setup_at", "ringing_at", "answer_at", "end_at", "duration_ms",
    "billable_seconds", "final_code", "reason", "hangup_side", "codecs", "media",
    "config_version", "rate_id", "billed_seconds", "cost", "currency", "unrated_reason",
)  # fmt: skip
if sorted(COPY_COLUMNS) != sorted(CDR_COLUMNS):
    raise RuntimeError(f"billing.Cdr's columns changed: make _copy_line write {CDR_COLUMNS}")
# COPY's text format: columns split by tabs, rows by newlines, NULL as \N; a backslash, tab,
# newline or carriage return inside a value is written as its backslash escape.
_COPY_SPECIAL = re.compile(r"[\\\t\n\r]")
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
# A NULL while a line is assembled: NUL is in no value (a record's text has none, JSON escapes
# it, PostgreSQL text cannot hold it), so it marks the NULLs in the joined line unambiguously.
_NULL = "\x00"
_COPY_TABS = len(COPY_COLUMNS) - 1
# Text in a COPY statement arrives in chunks of about this many characters.
_COPY_CHUNK = 1 << 20


def _copy_text(value: str) -> str:
    return value if _COPY_SPECIAL.search(value) is None else value.translate(_COPY_ESCAPES)


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


def _copy_line(record: CallDetailRecord, book: RatingBook) -> tuple[str, Charge | None]:
    """The record as one line of COPY text (columns in `COPY_COLUMNS` order), rated, and the
    charge it makes if it is new (None: nothing to debit).

    The values are `_column_values`' (the tests hold the two together), written as PostgreSQL
    reads them: times as the journal's ISO-8601 UTC text (it parses them itself: no datetime
    per time here), JSON as orjson writes it. Most lines need no escape at all: the joined line
    is checked once, and only a line with a tab, newline or backslash in a value is joined again
    with each value escaped. (A per-value `copy.write_row` costs more than this whole function.)
    """
    answer_text = record.answer_at
    answer_at = None if answer_text is None else parse_iso_utc(answer_text)
    rating = book.rate(
        customer_id=record.customer_id,
        trunk_id=record.trunk_id,
        direction=record.direction,
        callee_e164=record.callee_e164 or "",
        answer_at=answer_at,
        duration_ms=record.duration_ms,
    )
    customer_id, trunk_id, media = record.customer_id, record.trunk_id, record.media
    cost, rate_id = rating.cost, rating.rate_id
    values = (
        record.edge,
        record.call_id,
        record.a_call_id,
        record.b_call_id or "",
        _NULL if customer_id is None else str(customer_id),
        _NULL if trunk_id is None else str(trunk_id),
        record.direction,
        record.caller_e164 or "",
        record.callee_e164 or "",
        record.caller_raw,
        record.callee_raw,
        record.source_ip,
        str(record.source_port),
        _json(record.routes),
        record.answered_by or "",
        record.setup_at,
        record.ringing_at or _NULL,
        answer_text or _NULL,
        record.end_at,
        str(record.duration_ms),
        str(record.billable_seconds),
        str(record.final_code),
        record.reason,
        record.hangup_side or "",
        _json(record.codecs),
        _NULL if media is None else _json(media),
        str(record.config_version),
        _NULL if rate_id is None else str(rate_id),
        str(rating.billed_seconds),
        _NULL if cost is None else str(cost),
        rating.currency,
        rating.unrated_reason,
    )
    line = "\t".join(values)
    # Three scans for one character each (memchr), not a regex scan of the line: that was
    # 34,000 of the function's 84,000 instructions (callgrind).
    if line.count("\t") != _COPY_TABS or "\\" in line or "\n" in line or "\r" in line:
        line = "\t".join([_copy_text(value) for value in values])
    copy_line = line.replace(_NULL, "\\N")
    # Each NULL grew by one character: as many as there are NULLs, or a value held a NUL
    # (validation lets none through: never guess). One scan of the line instead of two.
    if len(copy_line) - len(line) != values.count(_NULL):
        raise ValueError(f"CDR {record.edge}:{record.call_id} has a NUL in a value")
    charge = (customer_id, cost, answer_at) if customer_id is not None and cost else None
    return copy_line + "\n", charge


def _copy_into(table: str, lines: Iterable[str]) -> int:
    """COPY text ``lines`` (each ending in a newline) into ``table``, in chunks."""
    count = 0
    chunk: list[str] = []
    size = 0
    with (
        connection.connection.cursor() as cursor,
        cursor.copy(f"COPY {table} ({', '.join(COPY_COLUMNS)}) FROM STDIN") as copy,
    ):
        for line in lines:
            chunk.append(line)
            size += len(line)
            if size >= _COPY_CHUNK:
                copy.write("".join(chunk))
                count += len(chunk)
                chunk, size = [], 0
        if chunk:
            copy.write("".join(chunk))
            count += len(chunk)
    return count


def _ingest_by_copy(lines: Iterable[str]) -> list[Charge]:
    columns = ", ".join(CDR_COLUMNS)
    table = Cdr._meta.db_table
    with connection.connection.cursor() as cursor:
        # Same column types as the table, none of its constraints, gone at commit; dropped
        # explicitly too so that two calls in one outer transaction do not collide.
        cursor.execute(
            f"CREATE TEMPORARY TABLE cdr_incoming ON COMMIT DROP AS "
            f"SELECT {columns} FROM {table} WITH NO DATA"
        )
        _copy_into("cdr_incoming", lines)
        cursor.execute(
            f"INSERT INTO {table} ({columns}) SELECT {columns} FROM cdr_incoming "
            f"ON CONFLICT (edge, call_id, setup_at) DO NOTHING "
            f"RETURNING customer_id, cost, answer_at"
        )
        inserted = cursor.fetchall()
        cursor.execute("DROP TABLE cdr_incoming")
    return inserted


def _ingest_by_bulk_insert(records: Iterable[CallDetailRecord], book: RatingBook) -> list[Charge]:
    inserted: list[Charge] = []
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
                new[key] = Cdr(**_column_values(record, book))
        Cdr.objects.bulk_create(new.values(), ignore_conflicts=True)
        inserted += [(cdr.customer_id, cdr.cost, cdr.answer_at) for cdr in new.values()]
    return inserted


def _column_values(record: CallDetailRecord, book: RatingBook) -> dict[str, Any]:
    """The record as `Cdr` column values: "" for text it lacks, datetimes for its times, and
    its rating."""
    answer_at = _datetime_or_none(record.answer_at)
    rating: Rating = book.rate(
        customer_id=record.customer_id,
        trunk_id=record.trunk_id,
        direction=record.direction,
        callee_e164=record.callee_e164 or "",
        answer_at=answer_at,
        duration_ms=record.duration_ms,
    )
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
        "answer_at": answer_at,
        "end_at": parse_iso_utc(record.end_at),
        "duration_ms": record.duration_ms,
        "billable_seconds": record.billable_seconds,
        "final_code": record.final_code,
        "reason": record.reason,
        "hangup_side": record.hangup_side or "",
        "codecs": record.codecs,
        "media": record.media,
        "config_version": record.config_version,
        "rate_id": rating.rate_id,
        "billed_seconds": rating.billed_seconds,
        "cost": rating.cost,
        "currency": rating.currency,
        "unrated_reason": rating.unrated_reason,
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
    held: list[CdrQuarantine] = field(default_factory=list)  # the lines held, as entries


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
    known_edges = set(
        EdgeNode.objects.filter(name__in={b.edge for b in batches}).values_list("name", flat=True)
    )
    per_edge: dict[str, list[CallDetailRecord]] = {batch.edge: [] for batch in batches}
    held: list[CdrQuarantine] = []
    from_json = CallDetailRecord.from_json
    for batch in batches:
        edge = batch.edge
        stored = per_edge[edge]
        known = edge in known_edges
        for at, line in batch.lines():
            try:
                record = from_json(line)
            except CdrDecodeError as error:
                torn = batch.torn and not line.endswith(b"\n")
                reason = QuarantineReason.TORN_LINE if torn else QuarantineReason.UNDECODABLE
                held.append(_held(batch, at, line, reason, str(error)))
                continue
            if record.edge != edge:
                detail = f"shipped by {edge!r}, recorded by {record.edge!r}"
                held.append(_held(batch, at, line, QuarantineReason.EDGE_MISMATCH, detail, record))
            elif not known:
                detail = f"no edge node named {edge!r} is registered; retry once it is"
                held.append(_held(batch, at, line, QuarantineReason.UNKNOWN_EDGE, detail, record))
            else:
                stored.append(record)
    report.held = list(held)
    report.quarantined = len(held)
    notes = _orphan_notes([record for records in per_edge.values() for record in records])
    held.extend(notes)
    report.noted = len(notes)
    now = datetime.now(UTC)
    for edge, edge_records in per_edge.items():
        inserted = cdrs_ingest(records=edge_records) if edge_records else 0
        edge_held = sum(1 for entry in held if entry.edge == edge and not entry.stored)
        _record_progress(edge, edge_records, inserted, edge_held, now)
        report.records += len(edge_records)
        report.inserted += inserted
    CdrQuarantine.objects.bulk_create(held, ignore_conflicts=True)
    return report


def _held(
    batch: ShipBatch,
    offset: int,
    line: bytes,
    reason: QuarantineReason,
    detail: str,
    record: CallDetailRecord | None = None,
) -> CdrQuarantine:
    """A shipped line held in quarantine, keyed by its place in its journal file."""
    source = f"{batch.seq}@{offset}"
    return CdrQuarantine(
        key=f"{batch.edge}:{source}",
        edge=batch.edge,
        source=source,
        reason=reason,
        detail=detail,
        call_id="" if record is None else record.call_id,
        line=_line_text(line),
    )


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
    if not customer_ids and not trunk_ids:
        return []
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
        # The times are all in one fixed-width form: as text, they sort as the times do.
        ends = [r.end_at for r in records]
        changes["last_call_end_at"] = parse_iso_utc(max(ends))
        changes["last_lag_seconds"] = (now - parse_iso_utc(min(ends))).total_seconds()
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


# --- the balance ledger -----------------------------------------------------------------------


def _actor_label(actor: Caller | str) -> str:
    if isinstance(actor, str):
        return actor
    if actor.api_key is not None:
        return f"api-key:{actor.api_key.prefix}"
    if actor.user is not None:
        return f"user:{actor.user.username}"
    return "system"


@transaction.atomic
def ledger_post(
    *,
    actor: Caller | str,
    customer: Customer,
    kind: str,
    amount: Decimal,
    note: str = "",
    reference: str = "",
    period: date | None = None,
    audited: bool = True,
) -> LedgerEntry | None:
    """Add one entry to ``customer``'s ledger and move its balance; None if ``reference`` was
    posted already (so periodic jobs can run again safely).

    Credits are positive, debits negative. When the entry moves the customer into or out of
    credit (`selectors.out_of_credit`), a config push is queued after commit so every edge
    refuses (or again admits) its calls within seconds; crossing the low-balance threshold
    writes an audit row (the event)."""
    if (
        reference
        and LedgerEntry.objects.filter(customer=customer, kind=kind, reference=reference).exists()
    ):
        return None
    entry = LedgerEntry(
        customer=customer,
        kind=kind,
        amount=amount,
        currency=customer.currency,
        actor=_actor_label(actor)[:200],
        note=note[:500],
        reference=reference,
        period=month_of(period or timezone.now()),
    )
    entry.full_clean()
    entry.save()
    balance, _ = Balance.objects.select_for_update().get_or_create(customer=customer)
    before = balance.amount
    balance.amount = before + amount
    threshold = balance.low_balance_threshold
    below = threshold is not None and balance.amount < threshold
    fields = ["amount", "updated_at"]
    if below != balance.below_threshold:
        balance.below_threshold = below
        fields.append("below_threshold")
    balance.save(update_fields=fields)
    if audited:
        audit.record(actor=_audit_actor(actor), obj=entry, action=AuditAction.CREATE, note=note)
    if "below_threshold" in fields and below:
        audit.record(
            actor=SYSTEM,
            obj=balance,
            action=AuditAction.UPDATE,
            note=f"low balance: {balance.amount} {customer.currency} is below {threshold}",
        )
    was_blocked = out_of_credit(
        billing_mode=customer.billing_mode, credit_limit=customer.credit_limit, balance=before
    )
    is_blocked = out_of_credit(
        billing_mode=customer.billing_mode,
        credit_limit=customer.credit_limit,
        balance=balance.amount,
    )
    if was_blocked != is_blocked:
        request_config_push()
    return entry


def _audit_actor(actor: Caller | str) -> Caller:
    return SYSTEM if isinstance(actor, str) else actor


def usage_debit(*, charges: Iterable[Charge]) -> None:
    """Debit the rated cost of newly stored CDRs: one ledger entry per customer and answer
    month per batch (the month puts the usage on the right invoice)."""
    totals: dict[tuple[int, date], tuple[Decimal, int]] = {}
    for customer_id, cost, answer_at in charges:
        if customer_id is None or not cost or answer_at is None:
            continue
        key = (customer_id, month_of(answer_at))
        total, calls = totals.get(key, (Decimal("0"), 0))
        totals[key] = (total + cost, calls + 1)
    if not totals:
        return
    customers = Customer.objects.in_bulk({customer_id for customer_id, _ in totals})
    for (customer_id, period), (total, calls) in sorted(totals.items()):
        ledger_post(
            actor="system:cdr-ingest",
            customer=customers[customer_id],
            kind=LedgerEntry.Kind.USAGE,
            amount=-total,
            period=period,
            note=f"{calls} rated call{'s' if calls != 1 else ''}",
            audited=False,  # the ledger row is the record; one audit row per batch is noise
        )


def month_of(moment: datetime | date) -> date:
    """The first day of the UTC month of ``moment``."""
    if isinstance(moment, datetime):
        moment = moment.astimezone(UTC)
    return date(moment.year, moment.month, 1)


def ledger_verify() -> dict[int, tuple[Decimal, Decimal]]:
    """Customers whose stored balance differs from the sum of their ledger: {id: (stored,
    summed)}. Empty when all is well (a periodic check)."""
    sums = dict(
        LedgerEntry.objects.order_by()
        .values("customer_id")
        .annotate(total=Sum("amount"))
        .values_list("customer_id", "total")
    )
    wrong = {}
    for customer_id, stored in Balance.objects.values_list("customer_id", "amount"):
        summed = sums.pop(customer_id, Decimal("0"))
        if summed != stored:
            wrong[customer_id] = (stored, summed)
    for customer_id, summed in sums.items():
        wrong[customer_id] = (Decimal("0"), summed)
    return wrong


# --- rate decks -------------------------------------------------------------------------------


@transaction.atomic
def rate_deck_import(*, actor: Caller, deck: RateDeck, text: str, replace: bool = False) -> int:
    """Load a CSV of rates into ``deck``, all or nothing; the number of rows added.

    Raises `billing.rate_import.RateImportError` listing every bad line (number, column,
    reason) and writes nothing then. ``replace`` deletes the deck's rows first (rated CDRs
    keep the cost they were charged; `Cdr.rate` has no database constraint). The rows are
    checked against each other and against the rows kept, for overlapping effective periods
    of one prefix."""
    rows = parse_rate_csv(text)
    existing = (
        []
        if replace
        else list(
            Rate.objects.filter(deck=deck).values_list(
                "id", "prefix", "effective_from", "effective_to"
            )
        )
    )
    check_overlaps(rows, existing)
    if replace:
        Rate.objects.filter(deck=deck).delete()
    Rate.objects.bulk_create([Rate(deck=deck, **row.fields) for row in rows], batch_size=5_000)
    deck.save(update_fields=["updated_at"])  # the rating cache keys on it
    audit.record(
        actor=actor,
        obj=deck,
        action=AuditAction.IMPORT,
        note=f"{len(rows)} rates{' (replacing the deck)' if replace else ''}",
    )
    return len(rows)


@transaction.atomic
def rate_assignment_create(
    *,
    actor: Caller,
    customer: Customer,
    deck: RateDeck,
    valid_from: datetime,
    direction: str = "outbound",
    trunk: Trunk | None = None,
) -> RateAssignment:
    """Price ``customer``'s calls with ``deck`` from ``valid_from``. The deck's currency must
    be the customer's, and a trunk must be the customer's own."""
    errors: dict[str, str] = {}
    if deck.currency != customer.currency:
        errors["deck"] = (
            f"The deck is in {deck.currency}; the customer is billed in {customer.currency}."
        )
    if trunk is not None and trunk.customer_id != customer.pk:
        errors["trunk"] = "The trunk does not belong to this customer."
    if errors:
        raise ValidationError(errors)
    assignment = RateAssignment(
        customer=customer, deck=deck, valid_from=valid_from, direction=direction, trunk=trunk
    )
    assignment.full_clean()
    assignment.save()
    audit.record(actor=actor, obj=assignment, action=AuditAction.CREATE)
    return assignment


# --- recurring charges ------------------------------------------------------------------------


def recurring_charges_post(*, month: date) -> int:
    """Charge every assigned number's monthly price for ``month`` (its first day); the number
    of charges posted. Idempotent per number and month (the ledger reference), so the daily
    task posts a number assigned mid-month on the day it first sees it: a first, partial month
    is charged in full, as DID providers commonly do."""
    label = f"{month:%Y-%m}"
    posted = 0
    numbers = (
        PhoneNumber.objects.filter(monthly_price__gt=0)
        .select_related("customer")
        .order_by("customer_id", "id")
    )
    for number in numbers.iterator(chunk_size=2_000):
        with transaction.atomic():
            entry = ledger_post(
                actor="system:recurring-charges",
                customer=number.customer,
                kind=LedgerEntry.Kind.RECURRING,
                amount=-number.monthly_price,
                note=f"{number.number} for {label}",
                reference=f"number:{number.pk}:{label}",
                period=month,
                audited=False,
            )
        posted += entry is not None
    return posted


# --- invoices ---------------------------------------------------------------------------------


class InvoiceError(Exception):
    """A request the invoice rules forbid (editing an issued invoice, ...)."""


def _next_month(period: date) -> date:
    return date(period.year + period.month // 12, period.month % 12 + 1, 1)


@transaction.atomic
def invoice_draft(*, actor: Caller, customer: Customer, period: date) -> Invoice:
    """Build (or rebuild) ``customer``'s draft invoice for the month of ``period``.

    Lines: usage by destination from the month's rated calls (by answer time), the month's
    number charges, and each adjustment or refund of the month. Its total is the sum of its
    lines, which is the sum of the month's ledger entries other than top-ups (as a positive
    amount due). An issued invoice is never rebuilt."""
    period = month_of(period)
    invoice, _ = Invoice.objects.select_for_update().get_or_create(
        customer=customer,
        period=period,
        kind=Invoice.Kind.INVOICE,
        defaults={"currency": customer.currency},
    )
    if invoice.status != Invoice.Status.DRAFT:
        raise InvoiceError(f"Invoice #{invoice.number} is issued; correct it with a credit note.")
    invoice.lines.all().delete()
    start = datetime(period.year, period.month, 1, tzinfo=UTC)
    end_date = _next_month(period)
    end = datetime(end_date.year, end_date.month, 1, tzinfo=UTC)
    lines: list[InvoiceLine] = []
    usage = (
        Cdr.objects.filter(customer=customer, answer_at__gte=start, answer_at__lt=end, cost__gt=0)
        .order_by()
        .values("rate__destination", "rate__prefix")
        .annotate(calls=Count("id"), seconds=Sum("billed_seconds"), amount=Sum("cost"))
        .order_by("rate__destination", "rate__prefix")
    )
    for row in usage:
        lines.append(
            InvoiceLine(
                invoice=invoice,
                kind=InvoiceLine.Kind.USAGE,
                description=f"{row['rate__destination'] or 'Calls'} (+{row['rate__prefix']})",
                quantity=Decimal(row["calls"]),
                minutes=(Decimal(row["seconds"]) / 60).quantize(Decimal("0.01")),
                amount=row["amount"],
            )
        )
    entries = LedgerEntry.objects.filter(customer=customer, period=period)
    recurring = entries.filter(kind=LedgerEntry.Kind.RECURRING).aggregate(
        count=Count("id"), total=Sum("amount")
    )
    if recurring["count"]:
        lines.append(
            InvoiceLine(
                invoice=invoice,
                kind=InvoiceLine.Kind.NUMBERS,
                description=f"Phone numbers, {period:%B %Y}",
                quantity=Decimal(recurring["count"]),
                amount=-recurring["total"],
            )
        )
    for entry in entries.filter(
        kind__in=[LedgerEntry.Kind.ADJUSTMENT, LedgerEntry.Kind.REFUND]
    ).order_by("created_at", "id"):
        lines.append(
            InvoiceLine(
                invoice=invoice,
                kind=InvoiceLine.Kind.ADJUSTMENT,
                description=f"{entry.get_kind_display()}: {entry.note}"[:200],
                quantity=Decimal(1),
                amount=-entry.amount,
            )
        )
    InvoiceLine.objects.bulk_create(lines)
    invoice.total = sum((line.amount for line in lines), Decimal("0"))
    invoice.currency = customer.currency
    invoice.save(update_fields=["total", "currency"])
    return invoice


def period_ledger_due(*, customer: Customer, period: date) -> Decimal:
    """What the month's ledger says is due: minus the sum of its entries other than top-ups
    (a check that an invoice's total is right)."""
    total = (
        LedgerEntry.objects.filter(customer=customer, period=month_of(period))
        .exclude(kind=LedgerEntry.Kind.TOPUP)
        .aggregate(total=Sum("amount"))["total"]
    )
    return -(total or Decimal("0"))


@transaction.atomic
def invoice_issue(*, actor: Caller, invoice: Invoice) -> Invoice:
    """Give ``invoice`` the next number (no gaps: the sequence row is locked meanwhile) and
    freeze it."""
    invoice = Invoice.objects.select_for_update().get(pk=invoice.pk)
    if invoice.status != Invoice.Status.DRAFT:
        raise InvoiceError(f"Invoice #{invoice.number} is already issued.")
    sequence, _ = InvoiceSequence.objects.select_for_update().get_or_create(pk=1)
    sequence.last += 1
    sequence.save(update_fields=["last"])
    invoice.number = sequence.last
    invoice.status = Invoice.Status.ISSUED
    invoice.issued_at = timezone.now()
    invoice.save(update_fields=["number", "status", "issued_at"])
    audit.record(actor=actor, obj=invoice, action=AuditAction.UPDATE, note="issued")
    return invoice


@transaction.atomic
def invoice_credit_note(
    *, actor: Caller, invoice: Invoice, amount: Decimal | None = None, note: str
) -> Invoice:
    """Correct an issued invoice: a credit note (numbered at once) for ``amount`` (default:
    the whole invoice), with a matching ledger credit so the balance follows."""
    if invoice.status != Invoice.Status.ISSUED or invoice.kind != Invoice.Kind.INVOICE:
        raise InvoiceError("Only an issued invoice can be credited.")
    amount = invoice.total if amount is None else amount
    if not Decimal("0") < amount <= invoice.total:
        raise InvoiceError(f"A credit note is for more than 0 and at most {invoice.total}.")
    credit = Invoice.objects.create(
        customer=invoice.customer,
        kind=Invoice.Kind.CREDIT_NOTE,
        period=invoice.period,
        currency=invoice.currency,
        total=-amount,
        corrects=invoice,
    )
    InvoiceLine.objects.create(
        invoice=credit,
        kind=InvoiceLine.Kind.ADJUSTMENT,
        description=f"Credit for invoice #{invoice.number}: {note}"[:200],
        quantity=Decimal(1),
        amount=-amount,
    )
    ledger_post(
        actor=actor,
        customer=invoice.customer,
        kind=LedgerEntry.Kind.REFUND,
        amount=amount,
        note=f"credit note for invoice #{invoice.number}: {note}",
        reference=f"credit-note:{credit.pk}",
        # The month after the one invoiced: the issued invoice's own month stays as it was.
        period=_next_month(invoice.period),
    )
    return invoice_issue(actor=actor, invoice=credit)


# --- re-rating --------------------------------------------------------------------------------


@transaction.atomic
def rerate(*, actor: Caller, customer: Customer, period: date) -> dict[str, Any]:
    """Rate ``customer``'s calls answered in the month of ``period`` again (after a deck was
    fixed or assigned): each CDR gets its new rate and cost, and the ledger gets one usage entry
    with the difference, for that month, so drafts and balances follow. A month whose invoice is
    issued is not re-rated (correct it with a credit note)."""
    period = month_of(period)
    if Invoice.objects.filter(
        customer=customer, period=period, kind=Invoice.Kind.INVOICE, status="issued"
    ).exists():
        raise InvoiceError(f"{period:%Y-%m} is invoiced; correct it with a credit note.")
    start = datetime(period.year, period.month, 1, tzinfo=UTC)
    next_month = _next_month(period)
    end = datetime(next_month.year, next_month.month, 1, tzinfo=UTC)
    book = RatingBook()
    changed: list[Cdr] = []
    difference = Decimal("0")
    rows = Cdr.objects.filter(customer=customer, answer_at__gte=start, answer_at__lt=end)
    for cdr in rows.iterator(chunk_size=5_000):
        rating = book.rate(
            customer_id=cdr.customer_id,
            trunk_id=cdr.trunk_id,
            direction=cdr.direction,
            callee_e164=cdr.callee_e164,
            answer_at=cdr.answer_at,
            duration_ms=cdr.duration_ms,
        )
        new = (rating.rate_id, rating.billed_seconds, rating.cost, rating.currency,
               rating.unrated_reason)  # fmt: skip
        old = (cdr.rate_id, cdr.billed_seconds, cdr.cost, cdr.currency, cdr.unrated_reason)
        if new != old:
            difference += (rating.cost or 0) - (cdr.cost or 0)
            (cdr.rate_id, cdr.billed_seconds, cdr.cost, cdr.currency, cdr.unrated_reason) = new
            changed.append(cdr)
    Cdr.objects.bulk_update(
        changed,
        ["rate", "billed_seconds", "cost", "currency", "unrated_reason"],
        batch_size=2_000,
    )
    if difference:
        ledger_post(
            actor=actor,
            customer=customer,
            kind=LedgerEntry.Kind.USAGE,
            amount=-difference,
            period=period,
            note=f"re-rating {period:%Y-%m}: {len(changed)} calls changed",
        )
    audit.record(
        actor=actor,
        obj=customer,
        action=AuditAction.UPDATE,
        note=f"re-rated {period:%Y-%m}: {len(changed)} calls, difference {difference}",
    )
    return {"changed": len(changed), "difference": difference}


@transaction.atomic
def balance_set_threshold(
    *, actor: Caller, customer: Customer, threshold: Decimal | None
) -> Balance:
    """Set the balance below which a low-balance event is raised (None: no threshold)."""
    balance, _ = Balance.objects.select_for_update().get_or_create(customer=customer)
    before = audit.snapshot(balance)
    balance.low_balance_threshold = threshold
    balance.below_threshold = threshold is not None and balance.amount < threshold
    balance.save(update_fields=["low_balance_threshold", "below_threshold", "updated_at"])
    audit.record(actor=actor, obj=balance, action=AuditAction.UPDATE, before=before)
    return balance


# --- prepaid calls in progress (docs/billing.md "Prepaid calls in progress") -------------------


@dataclass(frozen=True, slots=True)
class PrepaidCut:
    """A call ended for `no_credit` by `prepaid_calls_check`."""

    customer_id: int
    node: str
    call_id: str


def prepaid_calls_check(*, now: datetime | None = None) -> list[PrepaidCut]:
    """End the calls of every prepaid customer whose balance minus the running cost of its
    calls in progress (`selectors.prepaid_exposures`: rated as ingest will rate them) is at or
    below zero: each edge carrying one is asked to hang it up with reason `no_credit` (on its
    CDR), and an audit row names the call and the figures. Run every PREPAID_CHECK_SECONDS
    (beat, or runplatform's loop in the embedded default). An edge that does not answer keeps
    its calls until a later round reaches it; the ledger is not touched here: the calls' CDRs
    debit what they cost when they are ingested."""
    moment = now or timezone.now()
    exposures = [e for e in prepaid_exposures(answers=edges_calls(), now=moment) if e.out_of_credit]
    if not exposures:
        return []
    trunk_ids = {call.get("trunk_id") for e in exposures for _, call in e.calls}
    trunks = Trunk.objects.in_bulk([pk for pk in trunk_ids if isinstance(pk, int)])
    cut: list[PrepaidCut] = []
    for exposure in exposures:
        for node, call in exposure.calls:
            call_id = str(call.get("call_id"))
            try:
                if not edge_call_end(node=node, call_id=call_id, reason="no_credit"):
                    continue  # it ended meanwhile
            except EdgeUnavailable as error:
                logger.warning("no_credit hang-up of call %s failed: %s", call_id, error)
                continue
            cut.append(PrepaidCut(exposure.customer_id, node.name, call_id))
            trunk_id = call.get("trunk_id")
            trunk = trunks.get(trunk_id) if isinstance(trunk_id, int) else None
            with transaction.atomic():
                audit.record(
                    actor=SYSTEM,
                    obj=trunk or node,
                    action=AuditAction.HANGUP,
                    note=(
                        f"no_credit: call {call_id} on edge {node.name} "
                        f"({call.get('caller')} -> {call.get('callee')}) ended: balance "
                        f"{exposure.balance} minus {exposure.running_cost} running on "
                        f"{len(exposure.calls)} call(s) in progress"
                    ),
                )
    return cut
