"""Rate decks, rating on ingest, the ledger and what it makes the edge do, recurring charges.

On whichever database the suite uses (SQLite by default, PostgreSQL with DATABASE_URL, where
ingest goes through COPY)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from django.core.exceptions import ValidationError

from accounts.choices import BillingMode
from accounts.models import AuditEntry
from billing import services
from billing.models import Balance, Cdr, LedgerEntry, Rate, RateDeck
from billing.rate_import import COLUMNS, RateImportError
from billing.selectors import customer_balance, out_of_credit
from core.tenancy import SYSTEM
from edge.cdr import iso_utc
from edge.tests.test_cdr import SETUP, make_cdr
from trunking.models import PhoneNumber
from trunking.snapshot import build_snapshot

pytestmark = pytest.mark.django_db(transaction=True)

HEADER = ",".join(COLUMNS) + "\n"
DECK_CSV = HEADER + (
    "44,United Kingdom,0.0500,0,60,60,2020-01-01,\n"
    "4420,London,0.0150,0.0500,60,6,2020-01-01,\n"
    "1,North America,0.0100,0,6,6,,\n"
)


@pytest.fixture
def deck(db) -> RateDeck:
    deck = RateDeck.objects.create(name="Retail", currency="USD")
    services.rate_deck_import(actor=SYSTEM, deck=deck, text=DECK_CSV)
    return deck


def _customer_snapshot(customer) -> dict:
    snapshot = build_snapshot()
    return next(c for c in snapshot["customers"] if c["id"] == customer.pk)


# --- import ------------------------------------------------------------------------------------


def test_import_stores_rows_and_audits(deck):
    rows = {r.prefix: r for r in Rate.objects.filter(deck=deck)}
    assert set(rows) == {"44", "4420", "1"}
    assert rows["4420"].connect_fee == Decimal("0.05") and rows["4420"].increment == 6
    assert rows["1"].effective_from == datetime(1970, 1, 1, tzinfo=UTC)
    assert AuditEntry.objects.filter(action="import", object_id=str(deck.pk)).exists()


@pytest.mark.parametrize(
    "line, column, message",
    [
        ("44,UK,-0.01,0,60,60,,", "rate_per_minute", "negative"),
        ("44,UK,0.01,0,60,0,,", "increment", "between 1 and 3600"),
        ("44,UK,abc,0,60,60,,", "rate_per_minute", "not a number"),
        ("4x,UK,0.01,0,60,60,,", "prefix", "1 to 15 digits"),
        ("44,UK,0.01,0,60,60,2026-13-01,", "effective_from", "ISO 8601"),
        ("44,UK,0.01,0,60,60,2026-02-01,2026-01-01", "effective_to", "after effective_from"),
        ("44,UK,0.0000001,0,60,60,,", "rate_per_minute", "decimal places"),
        ("44,UK,0.01,60,60,,", "line", "fields"),
    ],
)
def test_import_names_line_and_column_and_writes_nothing(line, column, message):
    deck = RateDeck.objects.create(name="Bad", currency="USD")
    text = HEADER + "33,France,0.02,0,60,60,,\n" + line + "\n"
    with pytest.raises(RateImportError) as caught:
        services.rate_deck_import(actor=SYSTEM, deck=deck, text=text)
    [error] = caught.value.errors
    assert (error.line, error.column) == (3, column)
    assert message in error.message
    assert not Rate.objects.filter(deck=deck).exists()  # all or nothing


def test_import_refuses_overlapping_periods_in_file_and_against_the_deck(deck):
    other = RateDeck.objects.create(name="Overlap", currency="USD")
    text = (
        HEADER
        + "33,France,0.02,0,60,60,2026-01-01,2026-06-01\n33,France,0.03,0,60,60,2026-05-01,\n"
    )
    with pytest.raises(RateImportError) as caught:
        services.rate_deck_import(actor=SYSTEM, deck=other, text=text)
    assert [(e.line, e.column) for e in caught.value.errors] == [(3, "effective_from")]
    # Against rows already in the deck: 44 is open-ended from 2020.
    with pytest.raises(RateImportError) as caught:
        services.rate_deck_import(
            actor=SYSTEM, deck=deck, text=HEADER + "44,UK,0.04,0,60,60,2026-01-01,\n"
        )
    assert "overlaps the deck's rate" in caught.value.errors[0].message
    # Adjacent periods are fine; replacing the deck drops the old rows.
    services.rate_deck_import(
        actor=SYSTEM,
        deck=other,
        text=HEADER + "33,F,0.02,0,60,60,2026-01-01,2026-06-01\n33,F,0.03,0,60,60,2026-06-01,\n",
    )
    assert services.rate_deck_import(actor=SYSTEM, deck=deck, text=DECK_CSV, replace=True) == 3


def test_import_header_errors_name_the_columns():
    deck = RateDeck.objects.create(name="Hdr", currency="USD")
    with pytest.raises(RateImportError) as caught:
        services.rate_deck_import(actor=SYSTEM, deck=deck, text="prefix,price\n44,1\n")
    [error] = caught.value.errors
    assert error.line == 1 and "unknown column(s) price" in error.message
    assert "missing column(s) rate_per_minute" in error.message


def test_assignment_refuses_a_deck_in_another_currency(customer, other_trunk):
    euro = RateDeck.objects.create(name="Euro", currency="EUR")
    with pytest.raises(ValidationError) as caught:
        services.rate_assignment_create(
            actor=SYSTEM, customer=customer, deck=euro, valid_from=datetime(2026, 1, 1, tzinfo=UTC)
        )
    assert "deck" in caught.value.message_dict
    usd = RateDeck.objects.create(name="Usd", currency="USD")
    with pytest.raises(ValidationError) as caught:
        services.rate_assignment_create(
            actor=SYSTEM,
            customer=customer,
            deck=usd,
            trunk=other_trunk,
            valid_from=datetime(2026, 1, 1, tzinfo=UTC),
        )
    assert "trunk" in caught.value.message_dict


# --- rating on ingest and the ledger ------------------------------------------------------------


def test_ingest_rates_debits_and_keeps_unrated_and_unanswered(customer, trunk, deck):
    services.rate_assignment_create(
        actor=SYSTEM, customer=customer, deck=deck, valid_from=datetime(2020, 1, 1, tzinfo=UTC)
    )
    services.ledger_post(
        actor=SYSTEM, customer=customer, kind=LedgerEntry.Kind.TOPUP, amount=Decimal("10")
    )
    london = make_cdr(customer_id=customer.pk, trunk_id=trunk.pk)  # +4420..., 61.2 s
    us = make_cdr(customer_id=customer.pk, trunk_id=trunk.pk, callee_e164="+14155550123")
    nowhere = make_cdr(customer_id=customer.pk, trunk_id=trunk.pk, callee_e164="+81312345678")
    unanswered = make_cdr(
        customer_id=customer.pk,
        trunk_id=trunk.pk,
        answer_at=None,
        duration_ms=0,
        answered_by=None,
        billable_seconds=0,
        final_code=486,
    )
    assert services.cdrs_ingest(records=[london, us, nowhere, unanswered]) == 4

    def stored(record):
        return Cdr.objects.get(call_id=record.call_id)

    # London 60/6: 62 s -> 66 s billable; 0.05 + 0.015 x 66 / 60 = 0.0665.
    row = stored(london)
    assert (row.billed_seconds, row.cost, row.currency) == (66, Decimal("0.0665"), "USD")
    assert row.rate.prefix == "4420"
    # North America 6/6: 62 s -> 66 s; 0.01 x 66 / 60 = 0.011.
    assert stored(us).cost == Decimal("0.0110")
    # No rate for Japan: kept, unrated, never free.
    assert (stored(nowhere).cost, stored(nowhere).unrated_reason) == (None, "no_rate")
    assert (stored(unanswered).cost, stored(unanswered).unrated_reason) == (Decimal("0"), "")
    assert customer_balance(customer.pk) == Decimal("10") - Decimal("0.0775")
    usage = LedgerEntry.objects.get(customer=customer, kind="usage")
    assert usage.amount == Decimal("-0.0775") and usage.note == "2 rated calls"

    # Ingesting the same records again charges nothing more.
    assert services.cdrs_ingest(records=[london, us, nowhere, unanswered]) == 0
    assert LedgerEntry.objects.filter(customer=customer, kind="usage").count() == 1
    assert services.ledger_verify() == {}


def test_trunk_assignment_wins_and_answer_time_picks_the_assignment(customer, trunk, deck):
    dear = RateDeck.objects.create(name="Dear", currency="USD")
    services.rate_deck_import(actor=SYSTEM, deck=dear, text=HEADER + "44,UK,1.0000,0,60,60,,\n")
    answered = datetime.fromtimestamp(SETUP + 4, UTC)
    services.rate_assignment_create(
        actor=SYSTEM, customer=customer, deck=deck, valid_from=answered - timedelta(days=1)
    )
    # From the call's answer time on, the trunk has its own deck: it wins.
    services.rate_assignment_create(
        actor=SYSTEM, customer=customer, deck=dear, trunk=trunk, valid_from=answered
    )
    record = make_cdr(customer_id=customer.pk, trunk_id=trunk.pk)
    earlier = make_cdr(
        customer_id=customer.pk,
        trunk_id=trunk.pk,
        answer_at=iso_utc(SETUP - 10),
    )
    services.cdrs_ingest(records=[record, earlier])
    assert Cdr.objects.get(call_id=record.call_id).cost == Decimal("2.0000")  # 120 s at 1/min
    assert Cdr.objects.get(call_id=earlier.call_id).cost == Decimal("0.0665")


@pytest.mark.parametrize(
    "mode, credit_limit, balance, blocked",
    [
        (BillingMode.PREPAID, "0", "0.0001", False),
        (BillingMode.PREPAID, "0", "0", True),
        (BillingMode.PREPAID, "50", "-1", True),
        (BillingMode.POSTPAID, "50", "-49.9999", False),
        (BillingMode.POSTPAID, "50", "-50", True),
        (BillingMode.POSTPAID, "0", "0", True),
    ],
)
def test_out_of_credit_rule(mode, credit_limit, balance, blocked):
    assert (
        out_of_credit(
            billing_mode=mode, credit_limit=Decimal(credit_limit), balance=Decimal(balance)
        )
        is blocked
    )


def test_balance_reaching_zero_blocks_the_customer_in_the_snapshot(customer, trunk, deck):
    customer.billing_mode = BillingMode.PREPAID
    customer.save()
    services.rate_assignment_create(
        actor=SYSTEM, customer=customer, deck=deck, valid_from=datetime(2020, 1, 1, tzinfo=UTC)
    )
    assert _customer_snapshot(customer)["out_of_credit"] is True  # prepaid, nothing paid in
    services.ledger_post(
        actor=SYSTEM, customer=customer, kind=LedgerEntry.Kind.TOPUP, amount=Decimal("0.05")
    )
    assert _customer_snapshot(customer)["out_of_credit"] is False
    services.cdrs_ingest(records=[make_cdr(customer_id=customer.pk, trunk_id=trunk.pk)])
    assert customer_balance(customer.pk) == Decimal("-0.0165")
    assert _customer_snapshot(customer)["out_of_credit"] is True


def test_low_balance_threshold_raises_one_event(customer):
    Balance.objects.create(customer=customer, low_balance_threshold=Decimal("5"))
    for amount in ("10", "-4", "-2", "-1"):
        services.ledger_post(
            actor=SYSTEM,
            customer=customer,
            kind=LedgerEntry.Kind.ADJUSTMENT,
            amount=Decimal(amount),
            note="test",
        )
    events = AuditEntry.objects.filter(note__startswith="low balance")
    assert events.count() == 1 and "4.0000 USD is below 5" in events.get().note


def test_recurring_charges_are_idempotent_per_month(customer, trunk):
    PhoneNumber.objects.create(
        customer=customer, trunk=trunk, number="+14155550199", monthly_price=Decimal("1.50")
    )
    PhoneNumber.objects.create(customer=customer, number="+14155550198", monthly_price=0)
    assert services.recurring_charges_post(month=date(2026, 12, 1)) == 1
    assert services.recurring_charges_post(month=date(2026, 12, 1)) == 0
    assert services.recurring_charges_post(month=date(2027, 1, 1)) == 1
    assert customer_balance(customer.pk) == Decimal("-3.00")
