"""Property: whatever the API accepts compiles on the edge, with nothing left out.

Hypothesis writes random provisioning through the real API (ACL entries, origination URIs,
carrier gateways, numbers one by one and by bulk import, trunk policy fields), as customers and
as staff, with values near and past every rule's edge; then the snapshot is built
(trunking/snapshot.py) and compiled by the edge's own compiler. A value the API stored and the
edge refuses fails the test.
"""

import ipaddress

import pytest
from django.db import transaction
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.config import EdgeConfig
from trunking.models import IpAclEntry
from trunking.snapshot import build_snapshot

# --- values: a small address space so networks collide, and spellings good and bad --------

_v4_networks = st.builds(
    lambda address, length: f"{ipaddress.IPv4Address(address)}/{length}",
    st.integers(0xC0000200, 0xC00003FF) | st.sampled_from([0x0A000001, 0xC6336407, 0]),
    st.integers(0, 32),
)
_v6_networks = st.builds(
    lambda low, length: f"{ipaddress.IPv6Address((0x20010DB8 << 96) | low)}/{length}",
    st.integers(0, 0xFFFF),
    st.sampled_from([32, 47, 48, 64, 120, 128]),
)
cidrs = st.one_of(
    _v4_networks,
    _v6_networks,
    _v4_networks.map(lambda text: text.split("/")[0]),  # a bare address
    _v4_networks.map(lambda text: f"::ffff:{text.split('/')[0]}"),  # IPv4-mapped
    _v4_networks.map(lambda text: f" {text} "),
    st.sampled_from(["192.0.2.0/33", "192.0.2.01/32", "not-a-net", "", "2001:db8::/129"]),
    st.text(max_size=12),
)
hosts = st.one_of(
    st.sampled_from(
        [
            "pbx.acme.test",
            "gw-1.carrier.test",
            "198.51.100.7",
            "192.0.2.9",
            "[2001:db8::1]",
            "2001:db8::2",
            "::ffff:192.0.2.9",
            "bad host",
            "a:b",
            "[::1",
            "x;y",
            "h@st",
            "1.2.3.4:5060",
        ]
    ),
    st.text(alphabet="ab.-_:[]19@;", min_size=1, max_size=12),
)
uris = st.one_of(
    st.builds(
        lambda scheme, user, host, port, params: f"{scheme}:{user}{host}{port}{params}",
        st.sampled_from(["sip", "sips", "tel", "http", "SIP"]),
        st.sampled_from(["", "+14155550100@", "alice@", "@"]),
        hosts,
        st.sampled_from(["", ":5060", ":0", ":65536", ":x"]),
        st.sampled_from(
            [
                "",
                ";transport=udp",
                ";transport=tcp",
                ";transport=tls",
                ";transport=UDP",
                ";transport=sctp",
                ";lr",
                ";transport=",
            ]
        ),
    ),
    st.text(max_size=20),
)
tech_prefixes = st.text(alphabet="0123456789#*+-_.!~'()%;:@?ab ", max_size=16)
prefixes = st.one_of(
    st.sampled_from(["+1", "+44", "+1900", "+999", "+", "44", "+4420", "+0", "+1234567890123456"]),
    st.text(alphabet="+0123456789", max_size=6),
)
regions = st.sampled_from(["US", "GB", "ZZ", "gb", "USA", "", "XK"])
phone_numbers = st.one_of(
    st.sampled_from(
        [
            "+14155550100",
            "+1 415 555 0101",
            "(415) 555-0102",
            "+442079460000",
            "+999123",
            "12345",
            "+0123",
            "phone",
        ]
    ),
    st.builds(lambda n: f"+1415555{n:04d}", st.integers(0, 9999)),
)
stop_codes = st.lists(st.integers(100, 800) | st.sampled_from([True, "486"]), max_size=4)

# --- operations: (who, method, path, body); "{trunk}" etc. filled from the fixtures --------

WHO = st.sampled_from(["owner", "other_customer", "staff"])
operations = st.one_of(
    st.tuples(WHO, st.just("post"), st.just("acl-entries"), st.fixed_dictionaries(
        {"trunk": st.sampled_from(["mine", "theirs"]), "cidr": cidrs})),
    st.tuples(WHO, st.just("post"), st.just("origination-uris"), st.fixed_dictionaries(
        {"trunk": st.sampled_from(["mine", "theirs"]), "uri": uris})),
    st.tuples(st.just("staff"), st.just("post"), st.just("carrier-gateways"), st.fixed_dictionaries(
        {"host": hosts, "tech_prefix": tech_prefixes,
         "transport": st.sampled_from(["udp", "tcp", "tls", "sctp"]),
         "port": st.integers(0, 70000), "prefixes": st.lists(prefixes, max_size=3)})),
    st.tuples(WHO, st.just("post"), st.just("numbers"), st.fixed_dictionaries(
        {"number": phone_numbers, "trunk": st.sampled_from(["mine", "theirs", None])})),
    st.tuples(st.sampled_from(["owner", "other_customer"]), st.just("post"),
              st.just("numbers/import"), st.fixed_dictionaries({"numbers": st.lists(
                  st.fixed_dictionaries({"number": phone_numbers},
                                        optional={"trunk": st.sampled_from(["mine", "theirs"])}),
                  min_size=1, max_size=4)})),
    st.tuples(WHO, st.just("patch"), st.just("trunks"), st.fixed_dictionaries({}, optional={
        "allowed_destinations": st.lists(prefixes | regions, max_size=3),
        "blocked_prefixes": st.lists(prefixes, max_size=3),
        "failover_stop_codes": stop_codes,
        "default_country": regions,
        "caller_id_policy": st.sampled_from(["customer_numbers", "pass_through", "any"]),
        "max_channels": st.integers(-1, 3),
        "max_call_duration": st.integers(-1, 3),
    })),
)  # fmt: skip


def _resolve(who, body, trunk, other_trunk, carrier):
    own, theirs = (trunk, other_trunk) if who != "other_customer" else (other_trunk, trunk)
    names = {"mine": own.pk, "theirs": theirs.pk}

    def resolved(obj):
        return {k: names.get(v, v) if k == "trunk" else v for k, v in obj.items()}

    if "numbers" in body:  # a bulk import: rows name trunks too
        return {"numbers": [resolved(row) for row in body["numbers"]]}, own
    return resolved(body), own


@pytest.mark.django_db
@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(ops=st.lists(operations, min_size=1, max_size=6))
def test_what_the_api_accepts_compiles_on_the_edge(
    ops, api_as, trunk, other_trunk, carrier, acl_entry, gateway
):
    with transaction.atomic():
        clients = {who: api_as(who) for who in ("owner", "other_customer", "staff")}
        accepted = 0
        for who, method, path, body in ops:
            body, own = _resolve(who, body, trunk, other_trunk, carrier)
            if path == "carrier-gateways":
                body["carrier"] = carrier.pk
            url = f"/api/v1/trunks/{own.pk}/" if path == "trunks" else f"/api/v1/{path}/"
            response = getattr(clients[who], method)(url, body, format="json")
            assert response.status_code in (200, 201, 400), (path, body, response.content)
            accepted += response.status_code < 300
        snapshot = build_snapshot()
        config = EdgeConfig.compile(snapshot)
        assert config.refusals == (), [r.reason for r in config.refusals]
        # Every stored source network identifies its trunk on the edge.
        for entry in IpAclEntry.objects.all():
            address = ipaddress.ip_network(entry.cidr).network_address
            found = config.trunk_for_source(str(address))
            assert found is not None and found.id == entry.trunk_id, entry.cidr
        transaction.set_rollback(True)
