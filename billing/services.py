"""Writes of the billing app: loading (and rating) the edges' call detail records, the balance
ledger, rate decks and their import, recurring charges."""

from collections.abc import Iterable, Iterator
from datetime import date, datetime
from decimal import Decimal
from itertools import islice
from typing import Any

from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.db.models import Sum
from psycopg.types.json import Jsonb

from accounts import audit
from accounts.choices import AuditAction
from accounts.models import Customer
from core.tenancy import SYSTEM, Caller
from edge.cdr import CallDetailRecord, parse_iso_utc
from trunking.models import PhoneNumber, Trunk
from trunking.push import request_config_push

from .models import Balance, Cdr, LedgerEntry, Rate, RateAssignment, RateDeck
from .rate_import import check_overlaps, parse_rate_csv
from .selectors import Rating, RatingBook, out_of_credit

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

    Idempotent on (edge, call_id): a record already stored is skipped, so a journal can be
    loaded again after a crash or by mistake. Each new record is rated as it goes in
    (`billing.rating`, through a `RatingBook` read once per call) and the cost of the rows that
    were really inserted is debited from their customers' balances in the same transaction, so
    a record is charged exactly once. PostgreSQL gets the rows through COPY into a temporary
    table and one INSERT ... ON CONFLICT DO NOTHING, as DESIGN requires (row-by-row inserts
    cannot keep up with the edges); other databases (SQLite, the embedded default) through bulk
    inserts. ``records`` is consumed once, as it comes: on PostgreSQL the COPY streams it, so the
    caller chooses how much to hold in memory.
    """
    book = RatingBook()
    with transaction.atomic():
        if connection.vendor == "postgresql":
            charged = _ingest_by_copy(records, book)
        else:
            charged = _ingest_by_bulk_insert(records, book)
        usage_debit(charges=charged)
    return len(charged)


def _ingest_by_copy(
    records: Iterable[CallDetailRecord], book: RatingBook
) -> list[tuple[int | None, Decimal | None, str]]:
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
                values = _column_values(record, book)
                values["routes"] = Jsonb(values["routes"])
                values["codecs"] = Jsonb(values["codecs"])
                copy.write_row([values[column] for column in CDR_COLUMNS])
        cursor.execute(
            f"INSERT INTO {table} ({columns}) SELECT {columns} FROM cdr_incoming "
            f"ON CONFLICT (edge, call_id) DO NOTHING RETURNING customer_id, cost, currency"
        )
        inserted = cursor.fetchall()
        cursor.execute("DROP TABLE cdr_incoming")
    return inserted


def _ingest_by_bulk_insert(
    records: Iterable[CallDetailRecord], book: RatingBook
) -> list[tuple[int | None, Decimal | None, str]]:
    inserted: list[tuple[int | None, Decimal | None, str]] = []
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
        inserted += [(cdr.customer_id, cdr.cost, cdr.currency) for cdr in new.values()]
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


def usage_debit(*, charges: Iterable[tuple[int | None, Decimal | None, str]]) -> None:
    """Debit the rated cost of newly stored CDRs: one ledger entry per customer per batch."""
    totals: dict[int, tuple[Decimal, int]] = {}
    for customer_id, cost, _currency in charges:
        if customer_id is None or not cost:
            continue
        total, calls = totals.get(customer_id, (Decimal("0"), 0))
        totals[customer_id] = (total + cost, calls + 1)
    if not totals:
        return
    for customer in Customer.objects.filter(pk__in=totals):
        total, calls = totals[customer.pk]
        ledger_post(
            actor="system:cdr-ingest",
            customer=customer,
            kind=LedgerEntry.Kind.USAGE,
            amount=-total,
            note=f"{calls} rated call{'s' if calls != 1 else ''}",
            audited=False,  # the ledger row is the record; one audit row per batch is noise
        )


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
                audited=False,
            )
        posted += entry is not None
    return posted
