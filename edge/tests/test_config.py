"""Compiling a snapshot: the tables it builds, and every way a malformed one is refused."""

from __future__ import annotations

import copy
import random
import re
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from edge.config import ConfigError, EdgeConfig, Gateway, NumberRoute, OriginationTarget
from edge.tests.factories import (
    GATEWAY_HOST,
    NUMBER,
    ORIGINATION_URI,
    REALM,
    big_snapshot_doc,
    compiled,
    credential_doc,
    customer_doc,
    gateway_doc,
    origination_doc,
    snapshot_doc,
    trunk_doc,
)

Doc = dict[str, Any]


def test_default_snapshot_compiles() -> None:
    doc = snapshot_doc(version=42)
    config = EdgeConfig.compile(doc)
    assert config.version == 42
    assert config.content_hash == doc["content_hash"]
    assert config.realm == REALM
    assert config.generated_at == doc["generated_at"]
    trunk = config.trunk(1)
    assert trunk is not None
    assert trunk.customer_id == 1
    assert trunk.name == "pbx-1"
    assert trunk.active
    assert (trunk.max_channels, trunk.max_cps, trunk.max_call_duration) == (10, 5, 14400)
    assert trunk.allowed_prefixes == ()
    assert trunk.allowed_countries == frozenset()
    assert trunk.blocked_prefixes == ("+1900",)
    assert trunk.caller_id_policy == "customer_numbers"
    assert trunk.failover_stop_codes == frozenset({404, 486, 600, 603})
    assert not trunk.registration_allowed
    assert trunk.default_country == "US"
    assert trunk.origination_uris == (
        OriginationTarget("sip:127.0.0.1:5070", "127.0.0.1", 5070, "udp", 10, 100),
    )
    assert config.trunks[1] is trunk
    assert config.customer_of(trunk) is config.customers[1]
    customer = config.customer(1)
    assert customer is not None
    assert (customer.name, customer.active, customer.out_of_credit) == ("Acme", True, False)
    assert config.trunk(2) is None
    assert config.customer(2) is None


def test_compiles_what_orjson_decodes() -> None:
    doc = snapshot_doc()
    config = EdgeConfig.compile(orjson.loads(orjson.dumps(doc)))
    assert config.number(NUMBER) == NumberRoute(1, 1)


def test_config_is_only_built_by_compile() -> None:
    with pytest.raises(TypeError):
        EdgeConfig()


def test_allowed_destinations_split_into_prefixes_and_countries() -> None:
    config = compiled(trunks=[trunk_doc(allowed_destinations=["+1", "GB", "+4420", "IE", "+1"])])
    trunk = config.trunks[1]
    assert trunk.allowed_prefixes == ("+1", "+4420")
    assert trunk.allowed_countries == frozenset({"GB", "IE"})


@pytest.mark.parametrize(
    "uri, host, port, transport, user",
    [
        ("sip:pbx.acme.test", "pbx.acme.test", 5060, "udp", None),
        ("sip:pbx.acme.test:5080", "pbx.acme.test", 5080, "udp", None),
        ("sip:pbx.acme.test;transport=tcp", "pbx.acme.test", 5060, "tcp", None),
        ("sip:pbx.acme.test;transport=TLS", "pbx.acme.test", 5061, "tls", None),
        ("sips:pbx.acme.test", "pbx.acme.test", 5061, "tls", None),
        ("sips:pbx.acme.test:6000;transport=tcp", "pbx.acme.test", 6000, "tls", None),
        ("SIP:192.0.2.10", "192.0.2.10", 5060, "udp", None),
        ("sip:[2001:db8::10]:5070", "2001:db8::10", 5070, "udp", None),
        ("sip:+14155550100@pbx.acme.test", "pbx.acme.test", 5060, "udp", "+14155550100"),
    ],
)
def test_origination_uris_are_parsed_once(
    uri: str, host: str, port: int, transport: str, user: str | None
) -> None:
    config = compiled(trunks=[trunk_doc(origination_uris=[origination_doc(uri)])])
    (target,) = config.trunks[1].origination_uris
    assert (target.uri, target.host, target.port, target.transport, target.user) == (
        uri,
        host,
        port,
        transport,
        user,
    )


def test_origination_uris_sorted_by_priority_then_weight() -> None:
    uris = [
        origination_doc("sip:c.test", priority=20, weight=100),
        origination_doc("sip:a.test", priority=10, weight=1),
        origination_doc("sip:b.test", priority=10, weight=50),
    ]
    config = compiled(trunks=[trunk_doc(origination_uris=uris)])
    assert [t.host for t in config.trunks[1].origination_uris] == ["b.test", "a.test", "c.test"]


# --- source addresses -----------------------------------------------------------------------


def _acl_config() -> EdgeConfig:
    return compiled(
        trunks=[
            trunk_doc(id=1, acl=["10.0.0.0/8", "2001:db8::/32"]),
            trunk_doc(id=2, acl=["10.1.0.0/16", "2001:db8:1::/48"]),
            trunk_doc(id=3, acl=["10.1.2.3/32", "10.1.2.4", "2001:db8:1::5/128"]),
            trunk_doc(id=4, acl=["192.0.2.77/24"]),  # host bits set: the /24 is meant
        ],
        numbers=[],
    )


@pytest.mark.parametrize(
    "ip, trunk_id",
    [
        ("10.9.9.9", 1),
        ("10.1.9.9", 2),
        ("10.1.2.3", 3),
        ("10.1.2.4", 3),
        ("10.1.2.5", 2),
        ("192.0.2.1", 4),
        ("11.0.0.1", None),
        ("2001:db8:ffff::1", 1),
        ("2001:db8:1:2::1", 2),
        ("2001:db8:1::5", 3),
        ("2001:DB8:1:0::5", 3),  # another spelling of the same address
        ("[2001:db8:1::5]", 3),  # as it appears in a Via or URI
        ("::ffff:10.1.2.3", 3),  # IPv4-mapped: a dual-stack socket's view of 10.1.2.3
        ("2001:db9::1", None),
        ("not-an-ip", None),
        ("", None),
        ("10.1.2", None),
    ],
)
def test_trunk_for_source_most_specific_wins(ip: str, trunk_id: int | None) -> None:
    trunk = _acl_config().trunk_for_source(ip)
    assert (trunk.id if trunk else None) == trunk_id


def test_acl_default_route_matches_everything_else() -> None:
    config = compiled(
        trunks=[trunk_doc(id=1, acl=["0.0.0.0/0"]), trunk_doc(id=2, acl=["198.51.100.0/24"])],
        numbers=[],
        gateways=[],  # a network that holds a carrier's address is refused
    )
    assert config.trunk_for_source("203.0.113.9").id == 1  # type: ignore[union-attr]
    assert config.trunk_for_source("198.51.100.9").id == 2  # type: ignore[union-attr]
    assert config.trunk_for_source("2001:db8::1") is None


def test_acl_lookup_matches_a_brute_force_scan() -> None:
    import ipaddress

    rng = random.Random(7)
    networks: dict[str, int] = {}
    trunks = []
    for trunk_id in range(1, 201):
        cidrs = []
        for _ in range(3):
            length = rng.choice([8, 12, 16, 20, 24, 28, 32])
            network = ipaddress.ip_network((rng.getrandbits(32), length), strict=False)
            if str(network) not in networks:
                networks[str(network)] = trunk_id
                cidrs.append(str(network))
        trunks.append(trunk_doc(id=trunk_id, acl=cidrs))
    config = compiled(trunks=trunks, numbers=[])
    parsed = [(ipaddress.ip_network(cidr), trunk_id) for cidr, trunk_id in networks.items()]
    probes = [str(ipaddress.IPv4Address(rng.getrandbits(32))) for _ in range(500)]
    probes += [str(network.network_address + 1) for network, _ in parsed]
    for probe in probes:
        address = ipaddress.ip_address(probe)
        matching = [(n.prefixlen, t) for n, t in parsed if address in n]
        expected = max(matching)[1] if matching else None
        found = config.trunk_for_source(probe)
        assert (found.id if found else None) == expected, probe


def test_same_network_on_two_trunks_is_left_out_of_both() -> None:
    """The edge cannot tell whose a call from that network is: neither trunk gets it, both are
    reported, and everything else compiles."""
    doc = snapshot_doc(
        trunks=[
            trunk_doc(id=1, acl=["192.0.2.0/24", "198.51.100.1"]),
            trunk_doc(id=2, acl=["192.0.2.9/24"]),
            trunk_doc(id=3),
        ],
        numbers=[],
    )
    config = EdgeConfig.compile(doc)
    assert config.trunk_for_source("192.0.2.1") is None
    assert config.trunk_for_source("198.51.100.1").id == 1  # type: ignore[union-attr]
    assert config.trunk_for_source("127.0.0.3").id == 3  # type: ignore[union-attr]
    assert {(r.kind, r.id, r.field) for r in config.refusals} == {
        ("acl", 1, "acl"),
        ("acl", 2, "acl"),
    }
    assert re.search(r"trunks\[1\] \(id 2\)\.acl\[0\].*trunk 1", _refusal_text(doc))


def test_network_holding_a_carrier_address_is_left_out() -> None:
    doc = snapshot_doc(
        trunks=[trunk_doc(id=1, acl=["127.1.0.0/24", "127.0.0.1"])],
        gateways=[gateway_doc(host=GATEWAY_HOST)],
    )
    config = EdgeConfig.compile(doc)
    assert config.trunk_for_source(GATEWAY_HOST) is None
    assert config.is_carrier_source(GATEWAY_HOST)
    assert config.trunk_for_source("127.0.0.1").id == 1  # type: ignore[union-attr]
    (refusal,) = config.refusals
    assert (refusal.kind, refusal.id, refusal.field) == ("acl", 1, "acl")
    assert "'127.1.0.0/24' holds a carrier gateway's address" in refusal.reason


def test_refused_trunk_is_left_out_and_its_numbers_route_nowhere() -> None:
    doc = snapshot_doc(
        customers=[customer_doc(1), customer_doc(2)],
        trunks=[
            trunk_doc(id=1, allowed_destinations=["nowhere"]),
            trunk_doc(id=2, customer=2),
        ],
        numbers=[[NUMBER, 1, 1], ["+14155550101", 2, 2]],
    )
    config = EdgeConfig.compile(doc)
    assert config.trunk(1) is None and config.trunk_for_source("127.0.0.1") is None
    assert config.credential("pbx1") is None
    assert config.number(NUMBER) == NumberRoute(1, None)  # still the customer's caller-ID
    assert NUMBER in config.customer_numbers(1)
    assert config.number("+14155550101") == NumberRoute(2, 2)
    assert config.trunk_for_source("127.0.0.2").id == 2  # type: ignore[union-attr]
    (refusal,) = config.refusals
    assert (refusal.kind, refusal.id, refusal.field) == ("trunk", 1, "allowed_destinations")
    assert refusal.as_dict()["reason"].startswith("trunks[0] (id 1).allowed_destinations:")
    # Fixed in the next snapshot, the unchanged numbers route to it again.
    fixed = EdgeConfig.compile(
        snapshot_doc(
            customers=[customer_doc(1), customer_doc(2)],
            trunks=[trunk_doc(id=1), trunk_doc(id=2, customer=2)],
            numbers=[[NUMBER, 1, 1], ["+14155550101", 2, 2]],
        ),
        config,
    )
    assert fixed.refusals == () and fixed.number(NUMBER) == NumberRoute(1, 1)


def test_refused_origination_uri_is_left_out_of_its_trunk() -> None:
    doc = snapshot_doc(
        trunks=[
            trunk_doc(
                origination_uris=[origination_doc("sips:pbx.test;transport=udp"), origination_doc()]
            )
        ]
    )
    config = EdgeConfig.compile(doc)
    trunk = config.trunk(1)
    assert trunk is not None and [t.uri for t in trunk.origination_uris] == [ORIGINATION_URI]
    (refusal,) = config.refusals
    assert (refusal.kind, refusal.id, refusal.field) == ("origination_uri", 1, "origination_uris")
    # Reported again when the same document is compiled on top of it.
    assert EdgeConfig.compile(doc, config).refusals == config.refusals


def test_same_network_twice_on_one_trunk_is_harmless() -> None:
    config = compiled(trunks=[trunk_doc(acl=["192.0.2.0/24", "192.0.2.0/24"])])
    assert config.trunk_for_source("192.0.2.1").id == 1  # type: ignore[union-attr]


# --- credentials and numbers ----------------------------------------------------------------


def test_credentials_by_username() -> None:
    config = compiled(
        trunks=[
            trunk_doc(id=1, credentials=[credential_doc("alice"), credential_doc("bob")]),
            trunk_doc(id=2, credentials=[credential_doc("carol")]),
        ]
    )
    carol = config.credential("carol")
    assert carol is not None
    assert (carol.trunk_id, carol.username, carol.realm) == (2, "carol", REALM)
    assert carol.ha1_md5 == credential_doc("carol")["ha1_md5"]
    assert carol.ha1_sha256 == credential_doc("carol")["ha1_sha256"]
    assert config.credential("alice").trunk_id == 1  # type: ignore[union-attr]
    assert config.credential("mallory") is None


def test_duplicate_username_in_the_realm_is_left_out() -> None:
    doc = snapshot_doc(
        trunks=[
            trunk_doc(id=1, credentials=[credential_doc("alice")]),
            trunk_doc(id=2, credentials=[credential_doc("alice")]),
        ]
    )
    config = EdgeConfig.compile(doc)
    assert config.credential("alice").trunk_id == 1  # type: ignore[union-attr]
    assert config.trunk(2) is not None
    (refusal,) = config.refusals
    assert (refusal.kind, refusal.id, refusal.field) == ("credential", 2, "username")
    assert "'alice' is also a credential of trunk 1" in refusal.reason


@pytest.mark.parametrize("new_first", [True, False])
def test_credential_of_the_snapshot_realm_wins_over_an_old_realm(new_first: bool) -> None:
    old = credential_doc("alice", realm="old-realm")
    new = credential_doc("alice")
    trunks = [trunk_doc(id=1, credentials=[old]), trunk_doc(id=2, credentials=[new])]
    config = compiled(trunks=trunks[::-1] if new_first else trunks)
    assert config.credential("alice").trunk_id == 2  # type: ignore[union-attr]


def test_numbers_and_customer_numbers() -> None:
    config = compiled(
        customers=[customer_doc(1), customer_doc(2)],
        trunks=[trunk_doc(id=1), trunk_doc(id=2, customer=2)],
        numbers=[
            ["+14155550100", 1, 1],
            ["+14155550101", 1, 1],
            ["+442079460958", 1, None],
            ["+14155550199", 2, 2],
        ],
    )
    assert config.number("+14155550100") == NumberRoute(customer_id=1, trunk_id=1)
    assert config.number("+14155550100") is config.number("+14155550101")  # shared
    assert config.number("+442079460958") == NumberRoute(1, None)
    assert config.number("+14155550199") == NumberRoute(2, 2)
    assert config.number("+19999999999") is None
    assert config.customer_numbers(1) == {"+14155550100", "+14155550101", "+442079460958"}
    assert config.customer_numbers(2) == {"+14155550199"}
    assert config.customer_numbers(3) == frozenset()


# --- gateways -------------------------------------------------------------------------------


def _gateway_config() -> EdgeConfig:
    return compiled(
        gateways=[
            gateway_doc(id=1, priority=20, prefixes=[]),
            gateway_doc(id=2, priority=10, prefixes=["+44"]),
            gateway_doc(id=3, priority=10, prefixes=["+4420"], weight=200, carrier=2),
            gateway_doc(id=4, priority=5, prefixes=["+1", "+4420"], carrier=2),
            gateway_doc(id=5, priority=10, prefixes=["+44"], weight=300, carrier=3),
        ]
    )


@pytest.mark.parametrize(
    "number, ids",
    [
        ("+442079460958", [4, 5, 3, 2, 1]),  # priority, then weight descending
        ("+447911123456", [5, 2, 1]),
        ("+14155550100", [4, 1]),
        ("+33142685300", [1]),
        ("+4", [1]),
    ],
)
def test_gateways_for_a_number(number: str, ids: list[int]) -> None:
    assert [gw.id for gw in _gateway_config().gateways_for(number)] == ids


def test_gateway_fields() -> None:
    config = compiled(
        gateways=[
            gateway_doc(
                id=9,
                carrier=3,
                host="[2001:db8::7]",
                port=5061,
                transport="tls",
                prefixes=["+1"],
                tech_prefix="1234#",
                strip_plus=True,
            )
        ]
    )
    assert config.gateways == (
        Gateway(9, 3, "2001:db8::7", 5061, "tls", 10, 100, ("+1",), "1234#", True),
    )
    assert config.gateways_for("+44") == ()


def test_gateways_for_matches_a_brute_force_scan() -> None:
    rng = random.Random(3)
    pool = ["+1", "+14", "+141", "+1415", "+44", "+4420", "+442", "+33", "+331", "+49"]
    gateways = [
        gateway_doc(
            id=gid,
            priority=rng.choice([1, 2, 3]),
            weight=rng.randint(1, 5),
            prefixes=rng.sample(pool, rng.choice([0, 0, 1, 2])),
        )
        for gid in range(1, 31)
    ]
    config = compiled(gateways=gateways)
    for _ in range(300):
        number = "+" + "".join(rng.choice("1234") for _ in range(rng.randint(1, 11)))
        expected = sorted(
            (
                gw
                for gw in config.gateways
                if not gw.prefixes or any(number.startswith(p) for p in gw.prefixes)
            ),
            key=lambda gw: (gw.priority, -gw.weight, gw.id),
        )
        assert list(config.gateways_for(number)) == expected, number


def test_carrier_sources_are_gateway_ip_literals() -> None:
    config = compiled(
        gateways=[
            gateway_doc(id=1, host=GATEWAY_HOST),
            gateway_doc(id=2, host="2001:db8::7"),
            gateway_doc(id=3, host="sbc.carrier.test"),
        ]
    )
    assert config.is_carrier_source(GATEWAY_HOST)
    assert config.is_carrier_source("2001:DB8:0::7")
    assert config.is_carrier_source("[2001:db8::7]")
    assert not config.is_carrier_source("127.0.0.1")
    assert not config.is_carrier_source("sbc.carrier.test")
    assert config.unresolved_gateway_hosts == {"sbc.carrier.test"}

    resolved = config.with_resolved_hosts(
        {"sbc.carrier.test": ["203.0.113.5", "2001:db8::8"], "other.test": ["203.0.113.6"]}
    )
    assert resolved.is_carrier_source("203.0.113.5")
    assert resolved.is_carrier_source("2001:db8::8")
    assert not resolved.is_carrier_source("203.0.113.6")  # not a gateway's host
    assert resolved.is_carrier_source(GATEWAY_HOST)
    assert not config.is_carrier_source("203.0.113.5")  # the original is unchanged
    assert resolved.version == config.version
    assert resolved.trunk(1) is config.trunk(1)
    with pytest.raises(ValueError):
        config.with_resolved_hosts({"sbc.carrier.test": ["not-an-address"]})


# --- a production-sized snapshot ------------------------------------------------------------


def test_large_snapshot_compiles_correctly() -> None:
    # 10,000 trunks and 100,000 numbers; timing is measured by hand (docs/edge-policy.md), not
    # asserted here.
    doc = big_snapshot_doc()
    config = EdgeConfig.compile(doc)
    assert len(config.trunks) == 10_000
    assert config.number("+14150012345") == NumberRoute(346, 2346)
    assert config.number("+14150000050") == NumberRoute(51, None)  # every 50th has no trunk
    assert config.trunk_for_source("10.0.39.16").id == 10_000  # type: ignore[union-attr]
    assert config.trunk_for_source("172.16.5.9").id == 50  # type: ignore[union-attr]
    assert config.trunk_for_source("2001:db8:2710::1").id == 10_000  # type: ignore[union-attr]
    assert config.credential("pbx777").trunk_id == 777  # type: ignore[union-attr]
    assert len(config.customer_numbers(1)) == 100
    assert config.trunks[10].allowed_countries == {"GB", "IE"}


# --- refusals -------------------------------------------------------------------------------

Mutation = Callable[[Doc], None]


def _set(path: str, value: Any) -> Mutation:
    """A mutation that sets doc[a][b]... = value along a dotted path (digits index lists)."""

    def mutate(doc: Doc) -> None:
        *parents, last = path.split(".")
        node: Any = doc
        for key in parents:
            node = node[int(key)] if key.isdigit() else node[key]
        if last.isdigit():
            node[int(last)] = value
        else:
            node[last] = value

    return mutate


def _delete(path: str) -> Mutation:
    def mutate(doc: Doc) -> None:
        *parents, last = path.split(".")
        node: Any = doc
        for key in parents:
            node = node[int(key)] if key.isdigit() else node[key]
        del node[last]

    return mutate


@pytest.mark.parametrize(
    "mutate, message",
    [
        (_set("schema", 2), r"snapshot\.schema: this edge reads schema 1, got 2"),
        (_delete("schema"), "schema 1, got None"),
        (_set("schema", True), "got True"),
        (_delete("version"), "snapshot: missing 'version'"),
        (_set("version", "7"), r"snapshot\.version: expected an integer"),
        (_set("content_hash", 5), r"snapshot\.content_hash"),
        (_set("generated_at", 5), r"snapshot\.generated_at"),
        (_delete("realm"), "missing 'realm'"),
        (_set("customers", {}), r"snapshot\.customers: expected a list"),
        (_set("customers.0", []), r"customers\[0\]: expected an object"),
        (_set("customers.0.active", "yes"), r"customers\[0\]\.active: expected true or false"),
        (_delete("customers.0.out_of_credit"), r"customers\[0\]: missing 'out_of_credit'"),
        (_set("customers.0.id", 0), r"customers\[0\]\.id: expected an integer >= 1"),
        (_set("trunks.0", []), r"trunks\[0\]: expected an object"),
        (_set("trunks.0.id", "1"), r"trunks\[0\]\.id: expected an integer"),
        (_set("carriers.0.id", "1"), r"carriers\[0\]\.id"),
        (_set("carriers.0.gateways", {}), r"carriers\[0\] \(id 1\)\.gateways: expected a list"),
    ],
)
def test_malformed_snapshots_are_refused_with_where_and_what(
    mutate: Mutation, message: str
) -> None:
    doc = copy.deepcopy(snapshot_doc())
    mutate(doc)
    with pytest.raises(ConfigError, match=message):
        EdgeConfig.compile(doc)


def _refusal_text(doc: Doc) -> str:
    return "\n".join(refusal.reason for refusal in EdgeConfig.compile(doc).refusals)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (_set("trunks.0.customer", 9), r"trunks\[0\] \(id 1\)\.customer: no customer 9"),
        (_set("trunks.0.max_channels", -1), r"\.max_channels: expected an integer >= 0"),
        (_set("trunks.0.max_cps", True), r"\.max_cps: expected an integer"),
        (_set("trunks.0.max_call_duration", 0), r"\.max_call_duration"),
        (_delete("trunks.0.acl"), r"trunks\[0\] \(id 1\): missing 'acl'"),
        (_set("trunks.0.acl", ["10.0.0.0/33"]), r"\.acl\[0\]: '10\.0\.0\.0/33' is not an IP"),
        (_set("trunks.0.acl", [42]), r"\.acl\[0\]: expected a CIDR string"),
        (_set("trunks.0.allowed_destinations", ["gb"]), "neither an E.164 prefix"),
        (_set("trunks.0.allowed_destinations", ["+"]), "neither an E.164 prefix"),
        (_set("trunks.0.blocked_prefixes", ["1900"]), r"'1900' is not an E\.164 prefix"),
        (_set("trunks.0.caller_id_policy", "any"), r"'any' is not one of"),
        (_set("trunks.0.failover_stop_codes", [200]), "200 is not a SIP code 300-699"),
        (_set("trunks.0.default_country", "USA"), "'USA' is not an ISO code"),
        (_set("trunks.0.registration_allowed", 1), r"\.registration_allowed"),
        (_set("trunks.0.origination_uris.0.uri", "http://x"), "is not a SIP URI"),
        (_set("trunks.0.origination_uris.0.uri", "tel:+14155550100"), "not a sip: or sips:"),
        (_set("trunks.0.origination_uris.0.uri", "sip:x;transport=sctp"), "unsupported transport"),
        (_set("trunks.0.origination_uris.0.uri", "sips:x;transport=udp"), "unsupported transport"),
        (_set("trunks.0.origination_uris.0.priority", -1), r"origination_uris\[0\]\.priority"),
        (_delete("trunks.0.credentials.0.ha1_md5"), r"credentials\[0\]: missing 'ha1_md5'"),
        (_set("numbers.0", ["+14155550100", 1]), r"numbers\[0\]: expected \[E\.164"),
        (_set("numbers.0", "+14155550100"), r"numbers\[0\]: expected \[E\.164"),
        (_set("numbers.0.0", "14155550100"), "'14155550100' is not an E.164 number"),
        (_set("numbers.0.0", "+1415555010x"), "is not an E.164 number"),
        (_set("numbers.0.0", "+04155550100"), "is not an E.164 number"),
        (_set("numbers.0.1", 9), r"numbers\[0\] \(\+14155550100\): no customer 9"),
        (_set("numbers.0.2", 9), r"numbers\[0\] \(\+14155550100\): no trunk 9"),
        (_set("numbers.0.2", "1"), "must be integer ids"),
        (_set("carriers.0.gateways.0.transport", "sctp"), r"gateways\[0\]\.transport"),
        (_set("carriers.0.gateways.0.port", 0), r"gateways\[0\]\.port"),
        (_set("carriers.0.gateways.0.host", "bad host"), r"gateways\[0\]\.host"),
        (_set("carriers.0.gateways.0.host", "1.2.3.4:5060"), "give the port separately"),
        (_set("carriers.0.gateways.0.prefixes", ["44"]), "'44' is not an E.164 prefix"),
        (_set("carriers.0.gateways.0.tech_prefix", "1;x"), r"\.tech_prefix"),
        (_set("carriers.0.gateways.0.strip_plus", None), r"\.strip_plus"),
    ],
)
def test_refused_values_leave_their_object_out_with_where_and_what(
    mutate: Mutation, message: str
) -> None:
    """A value the edge refuses costs only its object: the snapshot still compiles."""
    doc = copy.deepcopy(snapshot_doc())
    mutate(doc)
    assert re.search(message, _refusal_text(doc))


def test_not_an_object_is_refused() -> None:
    with pytest.raises(ConfigError, match="expected an object"):
        EdgeConfig.compile([])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "doc, message",
    [
        (
            snapshot_doc(customers=[customer_doc(1), customer_doc(1)]),
            r"customers\[1\]: duplicate customer id 1",
        ),
        (snapshot_doc(trunks=[trunk_doc(1), trunk_doc(1, acl=[])]), "duplicate trunk id 1"),
        (
            snapshot_doc(gateways=[gateway_doc(1), gateway_doc(1, carrier=2)]),
            r"carriers\[1\] \(id 2\)\.gateways\[0\]: duplicate id 1",
        ),
    ],
)
def test_inconsistent_snapshots_are_refused(doc: Doc, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        EdgeConfig.compile(doc)


@pytest.mark.parametrize(
    "doc, message",
    [
        (snapshot_doc(numbers=[[NUMBER, 1, 1], [NUMBER, 1, None]]), "duplicate number"),
        (
            snapshot_doc(
                customers=[customer_doc(1), customer_doc(2)],
                trunks=[trunk_doc(1), trunk_doc(2, customer=2)],
                numbers=[[NUMBER, 1, 2]],
            ),
            "trunk 2 belongs to customer 2, not to the number's customer 1",
        ),
    ],
)
def test_inconsistent_numbers_are_left_out(doc: Doc, message: str) -> None:
    assert message in _refusal_text(doc)


def test_config_error_is_a_value_error() -> None:
    assert issubclass(ConfigError, ValueError)


# --- purity ---------------------------------------------------------------------------------

DECISION_MODULES = ("config", "validators", "numbering", "policy", "limits", "routing", "registrar")
IMPURE = {
    "asyncio", "concurrent", "datetime", "django", "multiprocessing", "os", "selectors",
    "socket", "ssl", "subprocess", "threading", "time",
    # The project's Django apps: the edge never reads the ORM.
    "accounts", "billing", "config", "core", "trunking",
}  # fmt: skip


@pytest.mark.parametrize("module", DECISION_MODULES)
def test_decision_modules_import_nothing_that_does_io(module: str) -> None:
    import ast
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / f"{module}.py"
    imported: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported.add(node.module.split(".")[0])
    assert imported & IMPURE == set()


def test_unchanged_numbers_are_reused_from_the_previous_config() -> None:
    first = compiled()
    again = EdgeConfig.compile(snapshot_doc(trunks=[trunk_doc(max_channels=3)]), first)
    assert again._numbers is first._numbers and again.trunk(1).max_channels == 3
    assert again.number(NUMBER) == first.number(NUMBER)
    changed = EdgeConfig.compile(snapshot_doc(numbers=[["+14155550101", 1, 1]]), again)
    assert changed.number(NUMBER) is None and changed.number("+14155550101") is not None


def test_reused_numbers_are_checked_against_the_new_trunks() -> None:
    first = compiled()
    moved = snapshot_doc(
        customers=[customer_doc(1), customer_doc(2)], trunks=[trunk_doc(customer=2)]
    )
    config = EdgeConfig.compile(moved, first)
    assert config.number(NUMBER) is None
    assert "belongs to customer 2" in config.refusals[0].reason


def test_unchanged_trunks_keep_their_compiled_policy() -> None:
    first = compiled(trunks=[trunk_doc(1), trunk_doc(2)])
    again = EdgeConfig.compile(snapshot_doc(trunks=[trunk_doc(1), trunk_doc(2, max_cps=9)]), first)
    assert again.trunk(1) is first.trunk(1)
    assert again.trunk(2) is not first.trunk(2) and again.trunk(2).max_cps == 9
    assert again.trunk_for_source("127.0.0.2") is again.trunk(2)


def test_ipv4_mapped_networks_match_ipv4_sources() -> None:
    config = compiled(trunks=[trunk_doc(acl=["::ffff:192.0.2.0/120"])], gateways=[])
    assert config.trunk_for_source("192.0.2.9").id == 1  # type: ignore[union-attr]
    assert config.trunk_for_source("::ffff:192.0.2.9").id == 1  # type: ignore[union-attr]


def test_an_unchanged_trunk_whose_customer_went_is_left_out() -> None:
    first = compiled(customers=[customer_doc(1), customer_doc(2)], trunks=[trunk_doc(customer=2)])
    again = EdgeConfig.compile(snapshot_doc(trunks=[trunk_doc(customer=2)], numbers=[]), first)
    assert again.trunk(1) is None
    assert [(r.kind, r.id, r.field) for r in again.refusals] == [("trunk", 1, "customer")]
