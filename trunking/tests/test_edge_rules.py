"""What an edge would refuse is refused on write: a 400 naming the field, nothing stored.

The values come from the edge's own validators (edge/validators.py) through the Django adapter;
source addresses are checked across rows (trunking/selectors.py) by the API and the admin.
"""

import pytest
from django.urls import reverse

from edge import validators as edge_validators
from trunking.admin import CarrierGatewayForm, IpAclEntryForm
from trunking.choices import CallerIdPolicy, Transport
from trunking.models import CarrierGateway, IpAclEntry, OriginationUri, Trunk
from trunking.selectors import SOURCE_IN_USE


def _rejected(response, field: str, model, before: int) -> list[str]:
    assert response.status_code == 400, response.content
    assert field in response.json(), response.json()
    assert model.objects.count() == before
    return response.json()[field]


def test_enumerations_are_the_edges() -> None:
    assert set(CallerIdPolicy.values) == edge_validators.CALLER_ID_POLICIES
    assert set(Transport.values) == edge_validators.TRANSPORTS


# --- values ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "uri", ["sips:pbx.acme.test;transport=udp", "sips:pbx.acme.test:5061;transport=UDP"]
)
def test_sips_over_udp_is_refused(api_as, trunk, uri):
    response = api_as("owner").post("/api/v1/origination-uris/", {"trunk": trunk.pk, "uri": uri})
    (message,) = _rejected(response, "uri", OriginationUri, 0)
    assert "sips: needs TLS" in message


@pytest.mark.parametrize(
    "field, value",
    [
        ("host", "bad host"),
        ("host", "198.51.100.9:5060"),
        ("host", "[2001:db8::1"),
        ("host", "gw.example.test;x=1"),
        ("tech_prefix", "12;x"),
        ("tech_prefix", "12@"),
    ],
)
def test_gateway_values_the_edge_refuses(api_as, carrier, field, value):
    body = {"carrier": carrier.pk, "host": "203.0.113.9", field: value}
    response = api_as("staff").post("/api/v1/carrier-gateways/", body)
    _rejected(response, field, CarrierGateway, 0)


@pytest.mark.parametrize(
    "host, tech_prefix", [("[2001:db8::1]", ""), ("gw-1.carrier.test", "0011#"), ("::1", "")]
)
def test_gateway_values_the_edge_accepts(api_as, carrier, host, tech_prefix):
    body = {"carrier": carrier.pk, "host": host, "tech_prefix": tech_prefix}
    response = api_as("staff").post("/api/v1/carrier-gateways/", body)
    assert response.status_code == 201, response.content


# --- source addresses -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "cidr",
    [
        "192.0.2.0/24",  # equal
        "192.0.2.77/24",  # equal once normalised
        "192.0.2.128/25",  # inside
        "192.0.2.5",  # one address inside
        "::ffff:192.0.2.5",  # the same address, IPv4-mapped
    ],
)
def test_another_customers_network_is_refused_without_saying_whose(
    api_as, acl_entry, other_trunk, cidr
):
    # acl_entry is the owner's 192.0.2.0/24; the other customer tries to take part of it.
    response = api_as("other_customer").post(
        "/api/v1/acl-entries/", {"trunk": other_trunk.pk, "cidr": cidr}
    )
    (message,) = _rejected(response, "cidr", IpAclEntry, 1)
    assert message == SOURCE_IN_USE
    assert "Acme" not in message and "192.0.2" not in message


def test_overlap_is_refused_for_staff_too(api_as, acl_entry, other_trunk):
    response = api_as("staff").post(
        "/api/v1/acl-entries/", {"trunk": other_trunk.pk, "cidr": "192.0.0.0/16"}
    )
    assert _rejected(response, "cidr", IpAclEntry, 1) == [SOURCE_IN_USE]


def test_a_trunks_own_networks_may_nest(api_as, acl_entry):
    response = api_as("owner").post(
        "/api/v1/acl-entries/", {"trunk": acl_entry.trunk_id, "cidr": "192.0.2.7"}
    )
    assert response.status_code == 201, response.content


def test_editing_an_entry_is_checked_against_the_others(api_as, acl_entry, other_trunk):
    theirs = IpAclEntry.objects.create(trunk=other_trunk, cidr="198.51.100.0/24")
    response = api_as("staff").patch(f"/api/v1/acl-entries/{theirs.pk}/", {"cidr": "192.0.2.0/26"})
    assert _rejected(response, "cidr", IpAclEntry, 2) == [SOURCE_IN_USE]
    theirs.refresh_from_db()
    assert theirs.cidr == "198.51.100.0/24"
    ok = api_as("staff").patch(f"/api/v1/acl-entries/{theirs.pk}/", {"description": "hq"})
    assert ok.status_code == 200, ok.content


def test_network_holding_a_carrier_address_is_refused(api_as, trunk, gateway):
    response = api_as("owner").post(
        "/api/v1/acl-entries/", {"trunk": trunk.pk, "cidr": "198.51.100.0/24"}
    )
    assert _rejected(response, "cidr", IpAclEntry, 0) == [SOURCE_IN_USE]


def test_gateway_inside_a_trunk_network_is_refused(api_as, acl_entry, carrier):
    response = api_as("staff").post(
        "/api/v1/carrier-gateways/", {"carrier": carrier.pk, "host": "192.0.2.10"}
    )
    (message,) = _rejected(response, "host", CarrierGateway, 0)
    assert "192.0.2.0/24" in message


@pytest.mark.parametrize(
    "cidr, minimum", [("198.51.0.0/16", "/24"), ("0.0.0.0/0", "/24"), ("2001:db8::/32", "/48")]
)
def test_customers_may_not_open_a_trunk_to_a_broad_network(api_as, trunk, cidr, minimum):
    response = api_as("owner").post("/api/v1/acl-entries/", {"trunk": trunk.pk, "cidr": cidr})
    (message,) = _rejected(response, "cidr", IpAclEntry, 0)
    assert minimum in message


def test_staff_may_give_a_broad_network(api_as, trunk):
    response = api_as("staff").post(
        "/api/v1/acl-entries/", {"trunk": trunk.pk, "cidr": "198.51.0.0/16"}
    )
    assert response.status_code == 201, response.content


def test_the_minimum_prefix_is_a_setting(api_as, trunk, settings):
    settings.ACL_MIN_PREFIX_V4 = 16
    response = api_as("owner").post(
        "/api/v1/acl-entries/", {"trunk": trunk.pk, "cidr": "198.51.0.0/16"}
    )
    assert response.status_code == 201, response.content
    settings.ACL_MIN_PREFIX_V4 = 32
    response = api_as("owner").post(
        "/api/v1/acl-entries/", {"trunk": trunk.pk, "cidr": "203.0.113.0/31"}
    )
    assert "/32" in _rejected(response, "cidr", IpAclEntry, 1)[0]


# --- the admin applies the same rules -------------------------------------------------------


def test_admin_acl_form_refuses_another_trunks_network(acl_entry, other_trunk):
    form = IpAclEntryForm(
        data={"cidr": "192.0.2.0/25", "description": ""}, instance=IpAclEntry(trunk=other_trunk)
    )
    assert not form.is_valid()
    assert form.errors["cidr"] == [SOURCE_IN_USE]
    broad = IpAclEntryForm(
        data={"cidr": "10.0.0.0/8", "description": ""}, instance=IpAclEntry(trunk=other_trunk)
    )
    assert broad.is_valid(), broad.errors  # staff may open broader networks


def test_admin_gateway_form_refuses_a_trunk_address(acl_entry, carrier):
    data = {"host": "192.0.2.1", "port": 5060, "transport": "udp", "priority": 10}
    form = CarrierGatewayForm(
        data={**data, "weight": 100, "prefixes": "[]", "tech_prefix": ""},
        instance=CarrierGateway(carrier=carrier),
    )
    assert not form.is_valid()
    assert "host" in form.errors


def test_admin_trunk_page_refuses_an_overlapping_inline(client, acl_entry, other_trunk):
    from accounts.models import User

    client.force_login(User.objects.create_superuser("root", "root@example.test", "pw-root-1234"))
    url = reverse("admin:trunking_trunk_change", args=[other_trunk.pk])
    form = {
        "customer": other_trunk.customer_id,
        "name": other_trunk.name,
        "status": "active",
        "max_channels": 10,
        "max_cps": 5,
        "allowed_destinations": "[]",
        "blocked_prefixes": "[]",
        "caller_id_policy": "customer_numbers",
        "failover_stop_codes": "[404]",
        "default_country": "US",
        "max_call_duration": 14400,
        "acl_entries-TOTAL_FORMS": 1,
        "acl_entries-INITIAL_FORMS": 0,
        "acl_entries-0-cidr": "192.0.2.0/24",
        "acl_entries-0-description": "",
        "credentials-TOTAL_FORMS": 0,
        "credentials-INITIAL_FORMS": 0,
        "origination_uris-TOTAL_FORMS": 0,
        "origination_uris-INITIAL_FORMS": 0,
    }
    response = client.post(url, form)
    assert response.status_code == 200  # the page again, with the error
    assert SOURCE_IN_USE in response.content.decode()
    assert not IpAclEntry.objects.filter(trunk=other_trunk).exists()
    assert Trunk.objects.get(pk=other_trunk.pk).failover_stop_codes != [404]


@pytest.mark.django_db(transaction=True)
def test_two_writers_cannot_both_pass_the_source_address_check(trunk, other_trunk):
    """Writer A has checked 203.0.113.0/24 and not yet written it; writer B, checking the same
    network meanwhile, waits for A's commit and is then refused (PostgreSQL's lock)."""
    import threading
    import time

    from django.core.exceptions import ValidationError
    from django.db import connection, connections, transaction

    from trunking.selectors import acl_source_check

    if connection.vendor != "postgresql":
        pytest.skip("the lock is PostgreSQL's; SQLite runs one writer at a time")
    checked, write, outcome = threading.Event(), threading.Event(), {}

    def writer_a() -> None:
        try:
            with transaction.atomic():
                cidr = acl_source_check(cidr="203.0.113.0/24", trunk_id=trunk.pk, staff=False)
                checked.set()
                write.wait(30)
                IpAclEntry.objects.create(trunk=trunk, cidr=cidr)
        finally:
            connections.close_all()

    def writer_b() -> None:
        try:
            with transaction.atomic():
                acl_source_check(cidr="203.0.113.0/25", trunk_id=other_trunk.pk, staff=False)
            outcome["b"] = "passed"
        except ValidationError as exc:
            outcome["b"] = exc.message_dict["cidr"][0]
        finally:
            connections.close_all()

    a = threading.Thread(target=writer_a)
    a.start()
    assert checked.wait(30)
    b = threading.Thread(target=writer_b)
    b.start()
    # B must be waiting for A's lock before A writes (poll pg_locks; no timing assertion).
    deadline = time.monotonic() + 30
    while True:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            )
            if cursor.fetchone()[0] == 1:
                break
        assert time.monotonic() < deadline and b.is_alive(), outcome
        time.sleep(0.01)
    write.set()
    a.join(30)
    b.join(30)
    assert outcome == {"b": SOURCE_IN_USE}
