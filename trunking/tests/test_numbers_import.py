"""Bulk import of numbers: all or nothing; every bad row reported by index and field."""

from accounts.models import AuditEntry
from trunking.models import PhoneNumber


def test_import_creates_all(api_as, trunk):
    rows = [
        {"number": f"+1415555{n:04d}", "trunk": trunk.pk, "monthly_price": "1.50"}
        for n in range(200, 230)
    ]
    response = api_as("owner").post("/api/v1/numbers/import/", {"numbers": rows})
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["created"] == 30
    stored = PhoneNumber.objects.filter(customer=trunk.customer, trunk=trunk)
    assert {(n["id"], n["number"]) for n in body["numbers"]} == {(n.pk, n.number) for n in stored}
    assert stored.count() == 30
    assert AuditEntry.objects.filter(action="import").count() == 30


def test_import_reports_every_bad_row_and_writes_nothing(api_as, trunk, other_trunk, number):
    rows = [
        {"number": "+14155550301"},
        {"number": "not a number"},
        {"number": "+14155550302", "trunk": other_trunk.pk},
        {"number": "+14155550301"},
        {"number": number.number},
        {"number": "+14155550303", "monthly_price": "-1"},
        {"number": "+14155550304", "colour": "blue"},
        "just a string",
    ]
    response = api_as("owner").post("/api/v1/numbers/import/", {"numbers": rows}, format="json")
    assert response.status_code == 400, response.content
    assert response.json()["code"] == "invalid"  # the API's one error shape
    errors = [(e["index"], e["field"]) for e in response.json()["rows"]]
    assert errors == [
        (1, "number"),
        (2, "trunk"),
        (3, "number"),
        (4, "number"),
        (5, "monthly_price"),
        (6, "colour"),
        (7, None),
    ]
    assert PhoneNumber.objects.count() == 1


def test_staff_import_needs_customer(api_as, customer):
    response = api_as("staff").post(
        "/api/v1/numbers/import/", {"numbers": [{"number": "+14155550401"}]}
    )
    assert response.status_code == 400 and "customer" in response.json()
    response = api_as("staff").post(
        "/api/v1/numbers/import/",
        {"customer": customer.pk, "numbers": [{"number": "+14155550401"}]},
    )
    assert response.status_code == 201
    assert PhoneNumber.objects.get().customer == customer


def test_read_only_cannot_import(api_as, customer):
    response = api_as("read_only").post(
        "/api/v1/numbers/import/", {"numbers": [{"number": "+14155550401"}]}
    )
    assert response.status_code == 403
    assert not PhoneNumber.objects.exists()
