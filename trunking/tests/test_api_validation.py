"""Bad input is a 400 that names the field, and writes nothing."""

import pytest

from accounts.models import AuditEntry
from trunking.models import IpAclEntry, OriginationUri, PhoneNumber, Trunk


def _assert_rejected(response, field: str, model, before: int) -> None:
    assert response.status_code == 400, response.content
    assert field in response.json(), response.json()
    assert model.objects.count() == before


@pytest.mark.parametrize(
    "cidr", ["10.0.0.300/8", "not-a-net", "192.0.2.0/33", "2001:db8::/129", ""]
)
def test_bad_cidr(api_as, trunk, cidr):
    client = api_as("owner")
    before, audits = IpAclEntry.objects.count(), AuditEntry.objects.count()
    response = client.post("/api/v1/acl-entries/", {"trunk": trunk.pk, "cidr": cidr})
    _assert_rejected(response, "cidr", IpAclEntry, before)
    assert AuditEntry.objects.count() == audits


@pytest.mark.parametrize(
    "given, stored",
    [
        ("192.0.2.7", "192.0.2.7/32"),
        ("192.0.2.7/24", "192.0.2.0/24"),
        ("2001:DB8::1/64", "2001:db8::/64"),
    ],
)
def test_cidr_is_normalised(api_as, trunk, given, stored):
    response = api_as("owner").post("/api/v1/acl-entries/", {"trunk": trunk.pk, "cidr": given})
    assert response.status_code == 201, response.content
    assert response.json()["cidr"] == stored


@pytest.mark.parametrize(
    "number", ["12345", "+1415555", "+999123456789", "phone", "+44 20 7946 000000"]
)
def test_number_not_e164(api_as, trunk, number):
    response = api_as("owner").post("/api/v1/numbers/", {"number": number, "trunk": trunk.pk})
    _assert_rejected(response, "number", PhoneNumber, 0)


def test_number_is_normalised_to_e164(api_as, trunk):
    response = api_as("owner").post("/api/v1/numbers/", {"number": "+1 (415) 555-0188"})
    assert response.status_code == 201, response.content
    assert response.json()["number"] == "+14155550188"


def test_duplicate_number(api_as, number, other_customer):
    # Numbers are globally unique: another customer cannot take ours, in any spelling.
    response = api_as("other_customer").post("/api/v1/numbers/", {"number": "+1 415 555 0100"})
    _assert_rejected(response, "number", PhoneNumber, 1)


def test_number_on_another_customers_trunk(api_as, other_trunk):
    response = api_as("owner").post(
        "/api/v1/numbers/", {"number": "+14155550111", "trunk": other_trunk.pk}
    )
    _assert_rejected(response, "trunk", PhoneNumber, 0)


def test_staff_cannot_put_number_on_foreign_trunk(api_as, customer, other_trunk):
    response = api_as("staff").post(
        "/api/v1/numbers/",
        {"number": "+14155550111", "trunk": other_trunk.pk, "customer": customer.pk},
    )
    _assert_rejected(response, "trunk", PhoneNumber, 0)


@pytest.mark.parametrize(
    "uri",
    [
        "http://pbx.acme.test",
        "pbx.acme.test",
        "sip:",
        "sip:pbx.acme.test:99999",
        "sip:pbx.acme.test;transport=sctp",
        "tel:+14155550100",
        "sip:[2001:db8::1",
    ],
)
def test_malformed_sip_uri(api_as, trunk, uri):
    response = api_as("owner").post("/api/v1/origination-uris/", {"trunk": trunk.pk, "uri": uri})
    _assert_rejected(response, "uri", OriginationUri, 0)


@pytest.mark.parametrize(
    "uri",
    [
        "sip:pbx.acme.test",
        "sips:pbx.acme.test:5061",
        "sip:+14155550100@[2001:db8::1]:5070;transport=tcp",
    ],
)
def test_valid_sip_uri(api_as, trunk, uri):
    response = api_as("owner").post("/api/v1/origination-uris/", {"trunk": trunk.pk, "uri": uri})
    assert response.status_code == 201, response.content


@pytest.mark.parametrize(
    "field, value", [("priority", 65536), ("priority", -1), ("weight", 0), ("weight", 70000)]
)
def test_priority_and_weight_ranges(api_as, trunk, field, value):
    body = {"trunk": trunk.pk, "uri": "sip:pbx.acme.test", field: value}
    response = api_as("owner").post("/api/v1/origination-uris/", body)
    _assert_rejected(response, field, OriginationUri, 0)


@pytest.mark.parametrize(
    "field, value",
    [
        ("allowed_destinations", ["XX"]),
        ("allowed_destinations", ["+999"]),
        ("allowed_destinations", "GB"),
        ("blocked_prefixes", ["1900"]),
        ("default_country", "ZZ"),
        ("failover_stop_codes", [200]),
        ("max_channels", 0),
    ],
)
def test_trunk_policy_fields(api_as, trunk, field, value):
    before = Trunk.objects.get(pk=trunk.pk)
    response = api_as("owner").patch(f"/api/v1/trunks/{trunk.pk}/", {field: value})
    assert response.status_code == 400 and field in response.json(), response.content
    trunk.refresh_from_db()
    assert getattr(trunk, field) == getattr(before, field)


def test_trunk_accepts_country_codes_and_prefixes(api_as, trunk):
    body = {"allowed_destinations": ["GB", "+1"], "blocked_prefixes": ["+1900", "+44871"]}
    response = api_as("owner").patch(f"/api/v1/trunks/{trunk.pk}/", body)
    assert response.status_code == 200, response.content
    trunk.refresh_from_db()
    assert trunk.allowed_destinations == ["GB", "+1"]


def test_duplicate_trunk_name_names_the_field(api_as, trunk):
    response = api_as("owner").post("/api/v1/trunks/", {"name": trunk.name})
    assert response.status_code == 400, response.content
    assert Trunk.objects.count() == 1


def test_duplicate_credential_username(api_as, credential, trunk):
    response = api_as("owner").post(
        "/api/v1/credentials/", {"trunk": trunk.pk, "username": "acme-pbx"}
    )
    assert response.status_code == 400 and "username" in response.json()


@pytest.mark.parametrize(
    "url, ok",
    [
        ("http://edge:8081", True),
        ("https://edge-1.example.net", True),
        ("ftp://edge", False),
        ("edge:8081", False),
        ("http://:8081", False),
        ("http://edge:99999", False),
    ],
)
def test_edge_node_control_url(api_as, url, ok):
    response = api_as("staff").post("/api/v1/edge-nodes/", {"name": "e", "control_url": url})
    assert response.status_code == (201 if ok else 400), response.content
    if not ok:
        assert "control_url" in response.json()


@pytest.mark.parametrize(
    "body",
    [
        {"media_mode": "passthrough", "srtp": "required"},
        {"media_mode": "relay"},
        {"srtp": "maybe"},
    ],
)
def test_media_settings_the_edge_would_refuse(api_as, trunk, body):
    field = "srtp" if "srtp" in body else "media_mode"
    before = (trunk.media_mode, trunk.srtp)
    response = api_as("owner").patch(f"/api/v1/trunks/{trunk.pk}/", body, format="json")
    assert response.status_code == 400, response.content
    assert field in response.json(), response.json()
    trunk.refresh_from_db()
    assert (trunk.media_mode, trunk.srtp) == before


def test_srtp_on_a_passthrough_trunk_is_refused_against_the_stored_mode(api_as, trunk):
    trunk.media_mode = "passthrough"
    trunk.save()
    response = api_as("owner").patch(
        f"/api/v1/trunks/{trunk.pk}/", {"srtp": "offered"}, format="json"
    )
    assert response.status_code == 400 and "srtp" in response.json()
    ok = api_as("owner").patch(
        f"/api/v1/trunks/{trunk.pk}/", {"media_mode": "anchor", "srtp": "offered"}, format="json"
    )
    assert ok.status_code == 200, ok.content
    assert (ok.json()["media_mode"], ok.json()["srtp"]) == ("anchor", "offered")
