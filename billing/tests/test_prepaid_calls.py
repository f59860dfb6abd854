"""Prepaid calls cannot outrun the balance (issue 12 item 4): `services.prepaid_calls_check`
asks the edges for their calls (a stand-in control API over real HTTP), prices the calls in
progress as ingest will (`RatingBook`), and ends a prepaid customer's calls with reason
`no_credit` once its balance minus their running cost is at or below zero.

The edge's side (`DELETE /calls/{id}?reason=no_credit`, the `no_credit` ending) is tested in
edge/tests; the whole chain with SIPp in test_prepaid_e2e.py. On whichever database the suite
uses (SQLite by default, PostgreSQL with DATABASE_URL)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from accounts.choices import BillingMode
from accounts.models import AuditEntry
from billing import services
from billing.models import LedgerEntry, RateDeck
from billing.rate_import import COLUMNS
from billing.selectors import RatingBook, prepaid_exposures, running_cost
from core.tenancy import SYSTEM
from edge.cdr import iso_utc
from trunking.models import EdgeNode
from trunking.selectors import edges_calls
from trunking.tests.live_fakes import fake_edge
from trunking.tokens import edge_node_token

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 12, 4, 20, 0, 0, tzinfo=UTC)
# London: 0.05 connect, 0.015/min, 60/6. Calls to +4420... are priced by it.
DECK_CSV = ",".join(COLUMNS) + "\n4420,London,0.0150,0.0500,60,6,2020-01-01,\n"


def _ago(seconds: float) -> str:
    return iso_utc((NOW - timedelta(seconds=seconds)).timestamp())


@pytest.fixture
def priced(customer, other_customer):
    """Both customers prepaid on the London deck; Acme has 0.10 paid in, Globex 10."""
    deck = RateDeck.objects.create(name="Retail", currency="USD")
    services.rate_deck_import(actor=SYSTEM, deck=deck, text=DECK_CSV)
    for who, amount in ((customer, "0.10"), (other_customer, "10")):
        services.rate_assignment_create(
            actor=SYSTEM, customer=who, deck=deck, valid_from=datetime(2020, 1, 1, tzinfo=UTC)
        )
        services.ledger_post(
            actor=SYSTEM, customer=who, kind=LedgerEntry.Kind.TOPUP, amount=Decimal(amount)
        )
    return deck


@pytest.fixture
def edge(db):
    node = EdgeNode.objects.create(name="edge-1", control_url="http://127.0.0.1:1")
    with fake_edge(edge_node_token(node)) as fake:
        node.control_url = f"http://127.0.0.1:{fake.port}"
        node.save(update_fields=["control_url"])
        yield fake


def test_running_cost_is_rated_like_ingest_from_the_answer(priced, customer, trunk):
    book = RatingBook()
    call = {
        "call_id": "c",
        "trunk_id": trunk.pk,
        "customer_id": customer.pk,
        "direction": "outbound",
        "callee": "+442071234567",
    }
    # 61 s so far on 60/6: 66 s billable, 0.05 + 0.015 x 66 / 60 = 0.0665 (as ingest would).
    assert running_cost(book, {**call, "answer_at": _ago(61)}, NOW) == Decimal("0.0665")
    # Just answered: the connect fee and the whole first block already count.
    assert running_cost(book, {**call, "answer_at": _ago(0)}, NOW) == Decimal("0.0650")
    assert running_cost(book, {**call, "answer_at": None}, NOW) == Decimal("0")
    # No price for it: ingest will list it unrated; it does not count here.
    assert running_cost(book, {**call, "answer_at": _ago(5), "callee": "+81312345678"}, NOW) == 0


def test_calls_that_outrun_the_balance_are_ended_with_no_credit(
    priced, edge, customer, trunk, other_trunk
):
    edge.add_call("long", trunk, answer_at=_ago(61))  # 0.0665 so far
    edge.add_call("short", trunk, answer_at=_ago(30))  # 0.0650 so far
    edge.add_call("ringing", trunk, state="ringing", answer_at=None)
    edge.add_call("globex", other_trunk, answer_at=_ago(600))  # 10 paid in: 0.2000 so far
    (exposure, other) = prepaid_exposures(answers=edges_calls(), now=NOW)
    assert (exposure.customer_id, exposure.balance) == (customer.pk, Decimal("0.10"))
    assert exposure.running_cost == Decimal("0.1315") and exposure.out_of_credit
    assert other.running_cost == Decimal("0.2000") and not other.out_of_credit

    cut = services.prepaid_calls_check(now=NOW)

    assert sorted(c.call_id for c in cut) == ["long", "ringing", "short"]
    assert edge.reasons == {"long": "no_credit", "short": "no_credit", "ringing": "no_credit"}
    assert [c["call_id"] for c in edge.calls] == ["globex"]
    notes = list(AuditEntry.objects.filter(action="hangup").values_list("note", flat=True))
    assert len(notes) == 3
    assert all("no_credit" in n and "0.1315 running on 3 call(s)" in n for n in notes)
    # The ledger is the CDRs' business: nothing is debited here.
    assert not LedgerEntry.objects.filter(customer=customer, kind="usage").exists()


@pytest.mark.parametrize("paid_in, ended", [("0.0665", True), ("0.0666", False)])
def test_the_line_is_zero_left(priced, edge, customer, trunk, paid_in, ended):
    services.ledger_post(
        actor=SYSTEM,
        customer=customer,
        kind=LedgerEntry.Kind.ADJUSTMENT,
        amount=Decimal(paid_in) - Decimal("0.10"),
    )
    edge.add_call("long", trunk, answer_at=_ago(61))
    cut = services.prepaid_calls_check(now=NOW)
    assert bool(cut) is ended
    assert (edge.deleted == ["long"]) is ended


def test_postpaid_customers_and_idle_edges_are_left_alone(priced, edge, customer, trunk):
    customer.billing_mode = BillingMode.POSTPAID
    customer.save()
    edge.add_call("long", trunk, answer_at=_ago(6000))
    assert services.prepaid_calls_check(now=NOW) == []
    assert edge.deleted == []
    edge.calls.clear()
    assert services.prepaid_calls_check(now=NOW) == []


def test_an_edge_that_does_not_answer_is_skipped_without_error(priced, customer, trunk):
    EdgeNode.objects.create(name="away", control_url="http://127.0.0.1:1")
    assert services.prepaid_calls_check(now=NOW) == []


def test_beat_runs_the_task_every_prepaid_check_seconds(priced, edge, trunk, settings):
    from billing.tasks import check_prepaid_calls

    entry = settings.CELERY_BEAT_SCHEDULE["prepaid-calls"]
    assert entry["task"] == check_prepaid_calls.name
    assert entry["schedule"] == settings.PREPAID_CHECK_SECONDS == 5.0
    edge.add_call("long", trunk, answer_at=iso_utc(datetime.now(UTC).timestamp() - 3600))
    assert check_prepaid_calls() == 1
    assert edge.reasons == {"long": "no_credit"}
