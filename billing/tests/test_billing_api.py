"""The billing API: who reads and writes what, deck import errors, the ledger, balances,
invoices as JSON, CSV and PDF."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

import pytest

from billing import services
from billing.models import Invoice, LedgerEntry, RateAssignment, RateDeck
from billing.rate_import import COLUMNS
from core.tenancy import SYSTEM

pytestmark = pytest.mark.django_db

CSV = ",".join(COLUMNS) + "\n44,UK,0.0500,0,60,60,2020-01-01,\n1,NANP,0.0100,0,6,6,,\n"
READERS = ("owner", "read_only", "staff")


@pytest.fixture
def deck(customer) -> RateDeck:
    deck = RateDeck.objects.create(name="Retail", currency="USD")
    services.rate_deck_import(actor=SYSTEM, deck=deck, text=CSV)
    services.rate_assignment_create(
        actor=SYSTEM, customer=customer, deck=deck, valid_from=datetime(2020, 1, 1, tzinfo=UTC)
    )
    return deck


@pytest.fixture
def entry(customer) -> LedgerEntry:
    return services.ledger_post(
        actor=SYSTEM, customer=customer, kind="topup", amount=Decimal("25"), note="wire"
    )


@pytest.fixture
def invoice(customer, entry) -> Invoice:
    services.ledger_post(
        actor=SYSTEM,
        customer=customer,
        kind="adjustment",
        amount=Decimal("-2.5"),
        note="setup fee",
        period=date(2026, 11, 1),
    )
    return services.invoice_draft(actor=SYSTEM, customer=customer, period=date(2026, 11, 5))


@pytest.mark.parametrize(
    "path, fixture",
    [
        ("rate-decks", "deck"),
        ("ledger-entries", "entry"),
        ("invoices", "invoice"),
    ],
)
@pytest.mark.parametrize(
    "who, sees",
    [("owner", True), ("read_only", True), ("staff", True), ("other_customer", False)],
)
def test_reads_are_tenant_scoped(path, fixture, who, sees, api_as, request):
    obj = request.getfixturevalue(fixture)
    client = api_as(who)
    listed = {row["id"] for row in client.get(f"/api/v1/{path}/").json()["results"]}
    assert (obj.pk in listed) is sees
    assert client.get(f"/api/v1/{path}/{obj.pk}/").status_code == (200 if sees else 404)
    assert api_as("anonymous").get(f"/api/v1/{path}/").status_code == 401


def test_rates_and_balances_are_tenant_scoped(api_as, deck, customer, other_customer, entry):
    for who, count in (("owner", 2), ("staff", 2), ("other_customer", 0)):
        assert api_as(who).get("/api/v1/rates/").json()["count"] == count, who
    mine = api_as("owner").get(f"/api/v1/balances/{customer.pk}/")
    assert mine.status_code == 200
    assert mine.json()["balance"] == "25.0000" and mine.json()["out_of_credit"] is False
    assert api_as("owner").get(f"/api/v1/balances/{other_customer.pk}/").status_code == 404
    assert (
        api_as("other_customer")
        .get(f"/api/v1/balances/{other_customer.pk}/")
        .json()["out_of_credit"]
    )  # prepaid with nothing paid in
    assert {
        row["customer"] for row in api_as("staff").get("/api/v1/balances/").json()["results"]
    } >= {
        customer.pk,
        other_customer.pk,
    }


@pytest.mark.parametrize("who", ["owner", "read_only", "other_customer"])
def test_only_staff_write(who, api_as, customer, deck, invoice):
    client = api_as(who)
    assert client.post("/api/v1/rate-decks/", {"name": "X", "currency": "USD"}).status_code == 403
    assert client.post(f"/api/v1/rate-decks/{deck.pk}/import/", {"csv": CSV}).status_code in (
        403,
        404,
    )
    assert (
        client.post(
            "/api/v1/ledger-entries/",
            {"customer": customer.pk, "kind": "topup", "amount": "5", "note": "x"},
        ).status_code
        == 403
    )
    assert client.post(f"/api/v1/invoices/{invoice.pk}/issue/").status_code in (403, 404)
    assert client.patch(
        f"/api/v1/balances/{customer.pk}/", {"low_balance_threshold": "1"}
    ).status_code in (403, 404)


def test_import_through_the_api_names_bad_lines(api_as):
    client = api_as("staff")
    deck = client.post("/api/v1/rate-decks/", {"name": "Wholesale", "currency": "EUR"}).json()
    bad = ",".join(COLUMNS) + "\n33,France,0.01,0,60,60,,\n34,Spain,-1,0,60,0,,\n"
    response = client.post(f"/api/v1/rate-decks/{deck['id']}/import/", {"csv": bad}, format="json")
    assert response.status_code == 400
    assert response.json()["csv"] == [
        {"line": 3, "column": "rate_per_minute", "message": "must not be negative"},
        {"line": 3, "column": "increment", "message": "must be between 1 and 3600 seconds"},
    ]
    assert client.get(f"/api/v1/rate-decks/{deck['id']}/").json()["rates"] == 0
    good = client.post(f"/api/v1/rate-decks/{deck['id']}/import/", {"csv": CSV}, format="json")
    assert good.json() == {"imported": 2}


def test_assignment_in_another_currency_is_a_400(api_as, customer):
    client = api_as("staff")
    euro = RateDeck.objects.create(name="Euro", currency="EUR")
    response = client.post(
        "/api/v1/rate-assignments/",
        {"customer": customer.pk, "deck": euro.pk, "valid_from": "2026-01-01T00:00:00Z"},
    )
    assert response.status_code == 400 and "deck" in response.json()
    assert not RateAssignment.objects.exists()


def test_ledger_post_and_balance(api_as, customer):
    client = api_as("staff")
    bad = client.post(
        "/api/v1/ledger-entries/",
        {"customer": customer.pk, "kind": "topup", "amount": "-5", "note": "oops"},
    )
    assert bad.status_code == 400 and "amount" in bad.json()
    usage = client.post(
        "/api/v1/ledger-entries/",
        {"customer": customer.pk, "kind": "usage", "amount": "-5", "note": "no"},
    )
    assert usage.status_code == 400 and "kind" in usage.json()
    ok = client.post(
        "/api/v1/ledger-entries/",
        {"customer": customer.pk, "kind": "topup", "amount": "12.5", "note": "card payment"},
    )
    assert ok.status_code == 201, ok.content
    assert ok.json()["actor"] == "user:operator" and ok.json()["currency"] == "USD"
    balance = api_as("owner").get(f"/api/v1/balances/{customer.pk}/").json()
    assert balance["balance"] == "12.5000"
    threshold = client.patch(f"/api/v1/balances/{customer.pk}/", {"low_balance_threshold": "20"})
    assert threshold.status_code == 200 and threshold.json()["low_balance_threshold"] == "20.0000"
    # Entries never change.
    entry_id = ok.json()["id"]
    assert client.patch(f"/api/v1/ledger-entries/{entry_id}/", {"note": "x"}).status_code == 405
    assert client.delete(f"/api/v1/ledger-entries/{entry_id}/").status_code == 405


def test_invoice_issue_documents_and_credit_note(api_as, customer, invoice):
    client = api_as("staff")
    draft = client.get(f"/api/v1/invoices/{invoice.pk}/").json()
    assert (draft["status"], draft["number"], draft["total"]) == ("draft", None, "2.5000")
    issued = client.post(f"/api/v1/invoices/{invoice.pk}/issue/")
    assert issued.status_code == 200 and issued.json()["number"] == 1
    assert client.post(f"/api/v1/invoices/{invoice.pk}/issue/").status_code == 409
    rebuild = client.post("/api/v1/invoices/", {"customer": customer.pk, "period": "2026-11-01"})
    assert rebuild.status_code == 409  # issued: only a credit note corrects it
    pdf = api_as("owner").get(f"/api/v1/invoices/{invoice.pk}/pdf/")
    assert pdf.status_code == 200 and pdf.content.startswith(b"%PDF")
    text = api_as("owner").get(f"/api/v1/invoices/{invoice.pk}/csv/").content.decode()
    assert "setup fee" in text and "amount due,,,,2.50" in text
    credit = client.post(
        f"/api/v1/invoices/{invoice.pk}/credit-note/", {"amount": "1", "note": "goodwill"}
    )
    assert credit.status_code == 201, credit.content
    assert (credit.json()["number"], credit.json()["total"]) == (2, "-1.0000")
    assert api_as("other_customer").get(f"/api/v1/invoices/{invoice.pk}/pdf/").status_code == 404


def test_admin_import_page_lists_bad_lines_then_imports(client, admin_user):
    from django.core.files.uploadedfile import SimpleUploadedFile

    client.force_login(admin_user)
    deck = RateDeck.objects.create(name="Admin deck", currency="USD")
    url = f"/admin/billing/ratedeck/{deck.pk}/import/"
    assert client.get(url).status_code == 200
    bad = ",".join(COLUMNS) + "\n44,UK,x,0,60,60,,\n"
    page = client.post(url, {"file": SimpleUploadedFile("d.csv", bad.encode())})
    assert page.status_code == 200
    assert b"<td>2</td><td>rate_per_minute</td>" in page.content.replace(b"\n", b"")
    assert not deck.rates.exists()
    done = client.post(url, {"file": SimpleUploadedFile("d.csv", CSV.encode())})
    assert done.status_code == 302 and deck.rates.count() == 2
    invoices = client.get("/admin/billing/invoice/")
    assert invoices.status_code == 200


def test_usage_export_by_customer_and_destination(api_as, customer, other_customer, trunk, deck):
    from edge.tests.test_cdr import make_cdr

    services.cdrs_ingest(
        records=[
            make_cdr(customer_id=customer.pk, trunk_id=trunk.pk),  # +44…, 62 s on 60/60: 0.1000
            make_cdr(customer_id=customer.pk, trunk_id=trunk.pk),
            make_cdr(customer_id=customer.pk, trunk_id=trunk.pk, callee_e164="+81312345678"),
            make_cdr(customer_id=other_customer.pk, trunk_id=None),
        ]
    )
    period = "since=2026-11-01T00:00:00Z&until=2026-12-01T00:00:00Z"
    rows = api_as("owner").get(f"/api/v1/cdrs/usage/?{period}").json()
    assert {(r["destination"], r["calls"], r["amount"], r["unrated_reason"]) for r in rows} == {
        ("UK", 2, "0.2000", ""),
        (None, 1, None, "no_rate"),
    }
    uk = next(r for r in rows if r["destination"] == "UK")
    assert uk["billed_minutes"] == "4.00" and uk["customer"] == customer.pk
    staff = api_as("staff").get(f"/api/v1/cdrs/usage/?{period}&format=csv")
    assert staff["Content-Type"] == "text/csv"
    lines = staff.content.decode().splitlines()
    assert lines[0].startswith("customer,customer_name,destination")
    assert len(lines) == 4  # header, UK, unrated Japan, the other customer's no_deck
    assert api_as("owner").get("/api/v1/cdrs/usage/").status_code == 400  # a period is required
