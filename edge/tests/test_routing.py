"""Route selection (priority strict, weighted within), Request-URIs, and the failover rules."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from typing import Any

import pytest

from edge.config import Gateway, TrunkPolicy
from edge.registrar import Registrar
from edge.routing import (
    Target,
    inbound_targets,
    outbound_targets,
    should_fail_over,
    weighted_order,
)
from edge.tests.factories import compiled, gateway_doc, origination_doc, trunk_doc

NUMBER = "+14155550100"
STOP = frozenset({404, 486, 600, 603})


@dataclass(frozen=True)
class Item:
    name: str
    priority: int
    weight: int


def test_priorities_are_strict() -> None:
    items = [Item("c", 30, 1000), Item("a", 10, 1), Item("b", 20, 65535), Item("a2", 10, 1)]
    rng = random.Random(1)
    for _ in range(200):
        order = [item.name for item in weighted_order(items, rng)]
        assert set(order[:2]) == {"a", "a2"}
        assert order[2:] == ["b", "c"]


def test_weights_share_first_attempts() -> None:
    items = [Item("light", 10, 1), Item("heavy", 10, 3)]
    rng = random.Random(2026)
    firsts = Counter(weighted_order(items, rng)[0].name for _ in range(10_000))
    assert firsts["light"] + firsts["heavy"] == 10_000
    assert 0.23 < firsts["light"] / 10_000 < 0.27  # 25 %, within 2 points (about 4.6 sigma)


def test_weighted_draw_is_without_replacement() -> None:
    items = [Item("a", 1, 50), Item("b", 1, 30), Item("c", 1, 20)]
    rng = random.Random(5)
    positions: dict[str, Counter[int]] = {name: Counter() for name in "abc"}
    for _ in range(10_000):
        order = weighted_order(items, rng)
        assert sorted(item.name for item in order) == ["a", "b", "c"]
        for index, item in enumerate(order):
            positions[item.name][index] += 1
    # First pick: 50/30/20. Last place: a is last only when b then c or c then b come first.
    assert 0.48 < positions["a"][0] / 10_000 < 0.52
    assert 0.28 < positions["b"][0] / 10_000 < 0.32
    expected_a_last = 0.3 * (0.2 / 0.7) + 0.2 * (0.3 / 0.8)
    assert abs(positions["a"][2] / 10_000 - expected_a_last) < 0.02


def test_weight_zero_only_after_weighted_ones() -> None:
    items = [Item("zero", 1, 0), Item("some", 1, 1), Item("zero2", 1, 0)]
    rng = random.Random(9)
    seen_last = set()
    for _ in range(200):
        order = [item.name for item in weighted_order(items, rng)]
        assert order[0] == "some"
        seen_last.add(order[2])
    assert seen_last == {"zero", "zero2"}  # but not always in the same order


def test_same_seed_same_order() -> None:
    items = [Item(str(i), i % 3, i + 1) for i in range(12)]
    first = weighted_order(items, random.Random(42))
    assert weighted_order(items, random.Random(42)) == first


def test_single_and_empty() -> None:
    rng = random.Random(0)
    assert weighted_order([], rng) == []
    assert weighted_order([Item("x", 5, 0)], rng) == [Item("x", 5, 0)]


# --- inbound --------------------------------------------------------------------------------


def _trunk_with(*uris: dict[str, Any]) -> TrunkPolicy:
    return compiled(trunks=[trunk_doc(origination_uris=list(uris))]).trunks[1]


@pytest.mark.parametrize(
    "uri, request_uri, host, port, transport",
    [
        ("sip:pbx.acme.test", f"sip:{NUMBER}@pbx.acme.test", "pbx.acme.test", 5060, "udp"),
        (
            "sip:pbx.acme.test:5080;transport=tcp",
            f"sip:{NUMBER}@pbx.acme.test:5080;transport=tcp",
            "pbx.acme.test",
            5080,
            "tcp",
        ),
        ("sips:pbx.acme.test", f"sips:{NUMBER}@pbx.acme.test", "pbx.acme.test", 5061, "tls"),
        ("sip:[2001:db8::5]", f"sip:{NUMBER}@[2001:db8::5]", "2001:db8::5", 5060, "udp"),
        ("sip:reception@10.0.0.5", "sip:reception@10.0.0.5", "10.0.0.5", 5060, "udp"),
    ],
)
def test_origination_targets(
    uri: str, request_uri: str, host: str, port: int, transport: str
) -> None:
    trunk = _trunk_with(origination_doc(uri))
    assert inbound_targets(trunk, NUMBER, [], random.Random(0)) == [
        Target("origination", uri, host, port, transport, request_uri)
    ]


def test_origination_priority_then_weight() -> None:
    trunk = _trunk_with(
        origination_doc("sip:backup.test", priority=20),
        origination_doc("sip:a.test", priority=10, weight=1),
        origination_doc("sip:b.test", priority=10, weight=3),
    )
    rng = random.Random(11)
    firsts: Counter[str] = Counter()
    for _ in range(4000):
        targets = inbound_targets(trunk, NUMBER, [], rng)
        assert targets[-1].host == "backup.test"
        firsts[targets[0].host] += 1
    assert 0.72 < firsts["b.test"] / 4000 < 0.78


def test_registered_contacts_replace_origination_uris() -> None:
    trunk = _trunk_with(origination_doc("sip:pbx.acme.test"))
    registrar = Registrar()
    registrar.register(1, "sip:pbx@192.168.1.10:5060", 300, 0.0, source=("203.0.113.7", 40001))
    registrar.register(
        1,
        "sip:pbx@192.168.1.11:5060;transport=tcp",
        300,
        1.0,
        source=("203.0.113.8", 5060),
        transport="tcp",
    )
    targets = inbound_targets(trunk, NUMBER, registrar.contacts(1, 2.0), random.Random(0))
    assert targets == [
        # Most recent registration first; reached where its REGISTER came from (NAT).
        Target(
            "contact",
            "sip:pbx@192.168.1.11:5060;transport=tcp",
            "203.0.113.8",
            5060,
            "tcp",
            "sip:pbx@192.168.1.11:5060;transport=tcp",
        ),
        Target(
            "contact",
            "sip:pbx@192.168.1.10:5060",
            "203.0.113.7",
            40001,
            "udp",
            "sip:pbx@192.168.1.10:5060",
        ),
    ]


def test_no_origination_and_no_contact_is_no_route() -> None:
    trunk = compiled(trunks=[trunk_doc(origination_uris=[])]).trunks[1]
    assert inbound_targets(trunk, NUMBER, [], random.Random(0)) == []


# --- outbound -------------------------------------------------------------------------------


def _gateway(**overrides: Any) -> Gateway:
    return compiled(gateways=[gateway_doc(**overrides)]).gateways[0]


@pytest.mark.parametrize(
    "overrides, request_uri",
    [
        ({}, "sip:+442079460958@127.1.0.1:5080"),
        ({"strip_plus": True}, "sip:442079460958@127.1.0.1:5080"),
        ({"tech_prefix": "1234#"}, "sip:1234#+442079460958@127.1.0.1:5080"),
        (
            {"tech_prefix": "99", "strip_plus": True, "transport": "tcp", "port": 5060},
            "sip:99442079460958@127.1.0.1:5060;transport=tcp",
        ),
        ({"transport": "tls", "port": 5061}, "sip:+442079460958@127.1.0.1:5061;transport=tls"),
        ({"host": "2001:db8::9"}, "sip:+442079460958@[2001:db8::9]:5080"),
        ({"host": "sbc.carrier.test"}, "sip:+442079460958@sbc.carrier.test:5080"),
    ],
)
def test_gateway_request_uri(overrides: dict[str, Any], request_uri: str) -> None:
    gateway = _gateway(id=9, carrier=3, **overrides)
    (target,) = outbound_targets([gateway], "+442079460958", random.Random(0))
    assert target == Target(
        "gateway",
        "9",
        gateway.host,
        gateway.port,
        gateway.transport,
        request_uri,
        gateway_id=9,
        carrier_id=3,
    )


def test_outbound_priority_then_weight() -> None:
    config = compiled(
        gateways=[
            gateway_doc(id=1, priority=10, weight=1),
            gateway_doc(id=2, priority=10, weight=3, carrier=2),
            gateway_doc(id=3, priority=5, weight=1, carrier=3),
        ]
    )
    rng = random.Random(3)
    firsts: Counter[int | None] = Counter()
    for _ in range(4000):
        targets = outbound_targets(config.gateways_for(NUMBER), NUMBER, rng)
        assert targets[0].gateway_id == 3
        firsts[targets[1].gateway_id] += 1
    assert 0.72 < firsts[2] / 4000 < 0.78


def test_no_gateway_no_target() -> None:
    assert outbound_targets((), NUMBER, random.Random(0)) == []


# --- failover -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "status, stop_codes, fail_over",
    [
        (None, STOP, True),  # timeout or transport error
        (408, STOP, True),
        (500, STOP, True),
        (502, STOP, True),
        (503, STOP, True),
        (504, STOP, True),
        (599, STOP, True),
        (503, frozenset({503}), False),  # the trunk's stop codes win
        (408, frozenset({408}), False),
        (None, frozenset({408}), True),  # no answer is not a code
        (404, STOP, False),
        (486, STOP, False),
        (600, STOP, False),
        (603, STOP, False),
        (404, frozenset(), False),  # other 4xx never fail over, listed or not
        (403, STOP, False),
        (480, STOP, False),
        (487, STOP, False),
        (604, frozenset(), False),
        (302, STOP, False),
        (200, STOP, False),
    ],
)
def test_should_fail_over(status: int | None, stop_codes: frozenset[int], fail_over: bool) -> None:
    assert should_fail_over(status, stop_codes) is fail_over
