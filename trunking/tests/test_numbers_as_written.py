"""Numbers as people write them: national spellings, bulk assign and release, a trunk's
numbers, filters by any spelling (issue 10, 7)."""

import pytest

from accounts.models import AuditEntry
from trunking.models import PhoneNumber, Trunk


@pytest.fixture
def uk_trunk(customer) -> Trunk:
    return Trunk.objects.create(customer=customer, name="london", default_country="GB")


def test_national_number_is_read_in_the_trunks_country(api_as, uk_trunk):
    response = api_as("owner").post(
        "/api/v1/numbers/", {"number": "020 7946 0123", "trunk": uk_trunk.pk}
    )
    assert response.status_code == 201, response.content
    assert response.json()["number"] == "+442079460123"


def test_national_number_without_a_country_says_what_to_do(api_as, customer):
    response = api_as("owner").post("/api/v1/numbers/", {"number": "020 7946 0123"})
    assert response.status_code == 400
    (message,) = response.json()["number"]
    assert "country code" in message and "default country" in message
    assert "NumberParseException" not in message and "(1)" not in message
    customer.default_country = "GB"
    customer.save()
    response = api_as("owner").post("/api/v1/numbers/", {"number": "020 7946 0123"})
    assert response.status_code == 201 and response.json()["number"] == "+442079460123"


def test_import_reads_national_rows_in_the_trunks_country(api_as, uk_trunk):
    rows = [{"number": "020 7946 0124", "trunk": uk_trunk.pk}, {"number": "+1 415 555 0177"}]
    response = api_as("owner").post("/api/v1/numbers/import/", {"numbers": rows}, format="json")
    assert response.status_code == 201, response.content
    assert [n["number"] for n in response.json()["numbers"]] == ["+442079460124", "+14155550177"]


def _numbers(customer, *digits):
    return [PhoneNumber.objects.create(number=f"+1415555{d}", customer=customer) for d in digits]


def test_bulk_assign_is_all_or_nothing_and_audited(api_as, customer, trunk, other_customer):
    mine = _numbers(customer, "0501", "0502")
    (theirs,) = _numbers(other_customer, "0503")
    client = api_as("owner")
    response = client.post(
        "/api/v1/numbers/assign/",
        {"trunk": trunk.pk, "numbers": ["(415) 555-0501", "+1 415 555 0503", "nonsense"]},
        format="json",
    )
    assert response.status_code == 400, response.content
    body = response.json()
    assert body["code"] == "invalid" and [e["index"] for e in body["rows"]] == [1, 2]
    assert not PhoneNumber.objects.filter(trunk=trunk).exists()  # nothing changed
    response = client.post(
        "/api/v1/numbers/assign/",
        {"trunk": trunk.pk, "numbers": ["(415) 555-0501", "+1.415.555.0502"]},
        format="json",
    )
    assert response.status_code == 200, response.content
    assert {n["id"] for n in response.json()["numbers"]} == {n.pk for n in mine}
    assert set(PhoneNumber.objects.filter(trunk=trunk)) == set(mine)
    notes = AuditEntry.objects.filter(content_type__model="phonenumber", action="update")
    assert {e.note for e in notes} == {f"assigned to trunk {trunk.name}"} and notes.count() == 2
    theirs.refresh_from_db()
    assert theirs.trunk_id is None


def test_release_unassigns_and_audits(api_as, customer, trunk, number):
    listed = api_as("owner").get(f"/api/v1/trunks/{trunk.pk}/numbers/").json()
    assert [n["number"] for n in listed["results"]] == [number.number]
    response = api_as("owner").post(
        "/api/v1/numbers/release/", {"numbers": ["+1 (415) 555-0100"]}, format="json"
    )
    assert response.status_code == 200, response.content
    number.refresh_from_db()
    assert number.trunk_id is None
    entry = AuditEntry.objects.get(content_type__model="phonenumber", action="update")
    assert entry.changes["trunk"] == [trunk.pk, None] and "released" in entry.note
    assert api_as("owner").get(f"/api/v1/trunks/{trunk.pk}/numbers/").json()["count"] == 0


def test_another_customer_cannot_release_or_list(api_as, trunk, number):
    response = api_as("other_customer").post(
        "/api/v1/numbers/release/", {"numbers": [number.number]}, format="json"
    )
    assert response.status_code == 400
    number.refresh_from_db()
    assert number.trunk_id == trunk.pk
    assert api_as("other_customer").get(f"/api/v1/trunks/{trunk.pk}/numbers/").status_code == 404


@pytest.mark.parametrize("spelling", ["+1 (415) 555-0100", "+1.415.555.0100", "14155550100"])
def test_number_filter_accepts_any_spelling(api_as, number, spelling):
    response = api_as("owner").get("/api/v1/numbers/", {"number": spelling})
    assert [n["id"] for n in response.json()["results"]] == [number.pk]


def test_number_prefix_filter_ignores_punctuation(api_as, number):
    response = api_as("owner").get("/api/v1/numbers/", {"number_prefix": "+1 (415)"})
    assert [n["id"] for n in response.json()["results"]] == [number.pk]


def test_staff_number_with_a_trunk_only_belongs_to_the_trunks_customer(api_as, trunk):
    """Found by the property test: the customer was left empty (a 500 on PostgreSQL)."""
    response = api_as("staff").post(
        "/api/v1/numbers/", {"number": "+14155550177", "trunk": trunk.pk}, format="json"
    )
    assert response.status_code == 201, response.content
    assert response.json()["customer"] == trunk.customer_id
    missing = api_as("staff").post("/api/v1/numbers/", {"number": "+14155550178"}, format="json")
    assert missing.status_code == 400 and "customer" in missing.json()
