"""Admission decisions as tables of (call, policy, usage) -> decision, and the order of checks."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from edge.config import CustomerState, NumberRoute, TrunkPolicy
from edge.policy import (
    ADMIT,
    REFUSALS,
    Admit,
    OutboundCall,
    Reject,
    Usage,
    admit_inbound,
    admit_outbound,
    admit_register,
    limit_refusal,
    reject,
)
from edge.tests.factories import compiled, trunk_doc

OWN = "+14155550100"
OTHER = "+14155550199"
NUMBERS = frozenset({OWN})
CUSTOMER = CustomerState(1, "Acme", active=True, out_of_credit=False)
TRUNK = compiled(trunks=[trunk_doc(blocked_prefixes=["+1900", "+44909"])]).trunks[1]
IDLE = Usage(active_calls=0, cps_available=True)


def trunk(**changes: Any) -> TrunkPolicy:
    return replace(TRUNK, **changes)


def customer(**changes: Any) -> CustomerState:
    return replace(CUSTOMER, **changes)


def call(
    callee: str | None = "+12125550100", caller: str | None = OWN, region: str | None = None
) -> OutboundCall:
    return OutboundCall(callee, caller, region)


def test_refusal_table() -> None:
    assert REFUSALS == {
        "acl_denied": (403, "Forbidden"),
        "auth_failed": (403, "Forbidden"),
        "customer_suspended": (403, "Forbidden"),
        "no_credit": (402, "Payment Required"),
        "trunk_suspended": (403, "Forbidden"),
        "invalid_number": (484, "Address Incomplete"),
        "destination_blocked": (403, "Forbidden"),
        "destination_not_allowed": (403, "Forbidden"),
        "caller_id_denied": (403, "Forbidden"),
        "channel_limit": (503, "Service Unavailable"),
        "cps_limit": (503, "Service Unavailable"),
        "unknown_number": (404, "Not Found"),
        "no_route": (480, "Temporarily Unavailable"),
        "no_gateway": (503, "Service Unavailable"),
        "too_many_hops": (483, "Too Many Hops"),
        "draining": (503, "Service Unavailable"),
        "registration_not_allowed": (403, "Forbidden"),
        "interval_too_brief": (423, "Interval Too Brief"),
        "media_unavailable": (503, "Service Unavailable"),
        "srtp_required": (488, "Not Acceptable Here"),
    }
    for reason, (code, phrase) in REFUSALS.items():
        assert reject(reason) == Reject(code, reason, phrase)
    with pytest.raises(KeyError):
        reject("no_such_reason")


def test_refusals_are_documented() -> None:
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "edge-policy.md").read_text()
    for reason, (code, phrase) in REFUSALS.items():
        assert f"| `{reason}` | {code} | {phrase} |" in doc, reason


OUTBOUND = [
    # (name, call, trunk, customer, usage, expected reason or None)
    ("admitted", call(), TRUNK, CUSTOMER, IDLE, None),
    ("customer suspended", call(), TRUNK, customer(active=False), IDLE, "customer_suspended"),
    ("out of credit", call(), TRUNK, customer(out_of_credit=True), IDLE, "no_credit"),
    ("trunk suspended", call(), trunk(active=False), CUSTOMER, IDLE, "trunk_suspended"),
    ("not a number", call(callee=None), TRUNK, CUSTOMER, IDLE, "invalid_number"),
    ("blocked prefix", call("+19005550100"), TRUNK, CUSTOMER, IDLE, "destination_blocked"),
    ("second blocked prefix", call("+449091234567"), TRUNK, CUSTOMER, IDLE, "destination_blocked"),
    (
        "blocked even if allowed",
        call("+19005550100", region="US"),
        trunk(allowed_prefixes=("+1",), allowed_countries=frozenset({"US"})),
        CUSTOMER,
        IDLE,
        "destination_blocked",
    ),
    (
        "allowed by prefix",
        call("+442079460958"),
        trunk(allowed_prefixes=("+1", "+44")),
        CUSTOMER,
        IDLE,
        None,
    ),
    (
        "not an allowed prefix",
        call("+33142685300", region="FR"),
        trunk(allowed_prefixes=("+1", "+44")),
        CUSTOMER,
        IDLE,
        "destination_not_allowed",
    ),
    (
        "allowed by country",
        call("+447624123456", region="IM"),
        trunk(allowed_countries=frozenset({"IM"})),
        CUSTOMER,
        IDLE,
        None,
    ),
    (
        "country code shared, other country",
        call("+442079460958", region="GB"),
        trunk(allowed_countries=frozenset({"IM"})),
        CUSTOMER,
        IDLE,
        "destination_not_allowed",
    ),
    (
        "no region known",
        call("+15555555555", region=None),
        trunk(allowed_countries=frozenset({"US"})),
        CUSTOMER,
        IDLE,
        "destination_not_allowed",
    ),
    (
        "prefix or country",
        call("+33142685300", region="FR"),
        trunk(allowed_prefixes=("+1",), allowed_countries=frozenset({"FR"})),
        CUSTOMER,
        IDLE,
        None,
    ),
    ("caller not the customer's", call(caller=OTHER), TRUNK, CUSTOMER, IDLE, "caller_id_denied"),
    ("no caller-ID", call(caller=None), TRUNK, CUSTOMER, IDLE, "caller_id_denied"),
    (
        "pass-through caller",
        call(caller=OTHER),
        trunk(caller_id_policy="pass_through"),
        CUSTOMER,
        IDLE,
        None,
    ),
    (
        "pass-through, no caller",
        call(caller=None),
        trunk(caller_id_policy="pass_through"),
        CUSTOMER,
        IDLE,
        None,
    ),
    ("one channel left", call(), TRUNK, CUSTOMER, Usage(9, True), None),
    ("channels full", call(), TRUNK, CUSTOMER, Usage(10, True), "channel_limit"),
    ("over channels", call(), TRUNK, CUSTOMER, Usage(12, True), "channel_limit"),
    ("zero channels", call(), trunk(max_channels=0), CUSTOMER, IDLE, "channel_limit"),
    ("no CPS token", call(), TRUNK, CUSTOMER, Usage(0, False), "cps_limit"),
    # The order of checks: the first failing check names the refusal.
    (
        "suspended customer before credit",
        call(callee=None, caller=None),
        trunk(active=False),
        customer(active=False, out_of_credit=True),
        Usage(99, False),
        "customer_suspended",
    ),
    (
        "credit before trunk",
        call(callee=None),
        trunk(active=False),
        customer(out_of_credit=True),
        Usage(99, False),
        "no_credit",
    ),
    (
        "trunk before number",
        call(callee=None),
        trunk(active=False),
        CUSTOMER,
        Usage(99, False),
        "trunk_suspended",
    ),
    (
        "number before limits",
        call(callee=None),
        TRUNK,
        CUSTOMER,
        Usage(99, False),
        "invalid_number",
    ),
    (
        "blocked before not allowed",
        call("+19005550100"),
        trunk(allowed_prefixes=("+44",)),
        CUSTOMER,
        IDLE,
        "destination_blocked",
    ),
    (
        "destination before caller-ID",
        call("+33142685300", caller=None),
        trunk(allowed_prefixes=("+44",)),
        CUSTOMER,
        IDLE,
        "destination_not_allowed",
    ),
    (
        "caller-ID before limits",
        call(caller=OTHER),
        TRUNK,
        CUSTOMER,
        Usage(99, False),
        "caller_id_denied",
    ),
    ("channels before CPS", call(), TRUNK, CUSTOMER, Usage(10, False), "channel_limit"),
]


@pytest.mark.parametrize(
    "call_, trunk_, customer_, usage, expected",
    [case[1:] for case in OUTBOUND],
    ids=[case[0] for case in OUTBOUND],
)
def test_admit_outbound(
    call_: OutboundCall,
    trunk_: TrunkPolicy,
    customer_: CustomerState,
    usage: Usage,
    expected: str | None,
) -> None:
    decision = admit_outbound(call_, trunk_, customer_, NUMBERS)
    if decision is ADMIT:  # limits come last: the slot edge.limits decides after admission
        decision = limit_refusal(trunk_, usage) or ADMIT
    if expected is None:
        assert decision is ADMIT
    else:
        assert isinstance(decision, Reject)
        assert decision == reject(expected)


def test_every_outbound_reason_is_covered() -> None:
    covered = {case[-1] for case in OUTBOUND}
    assert covered >= {
        "customer_suspended",
        "no_credit",
        "trunk_suspended",
        "invalid_number",
        "destination_blocked",
        "destination_not_allowed",
        "caller_id_denied",
        "channel_limit",
        "cps_limit",
    }


ROUTED = NumberRoute(1, 1)
INBOUND = [
    # (name, number, trunk, customer, usage, expected reason or None)
    ("admitted", ROUTED, TRUNK, CUSTOMER, IDLE, None),
    ("not our number", None, None, None, IDLE, "unknown_number"),
    ("customer suspended", ROUTED, TRUNK, customer(active=False), IDLE, "customer_suspended"),
    ("out of credit still receives", ROUTED, TRUNK, customer(out_of_credit=True), IDLE, None),
    ("number on no trunk", NumberRoute(1, None), None, CUSTOMER, IDLE, "no_route"),
    ("trunk suspended", ROUTED, trunk(active=False), CUSTOMER, IDLE, "trunk_suspended"),
    ("channels full", ROUTED, TRUNK, CUSTOMER, Usage(10, True), "channel_limit"),
    ("no CPS on inbound", ROUTED, TRUNK, CUSTOMER, Usage(0, False), None),
    (
        "suspended customer before trunk",
        ROUTED,
        trunk(active=False),
        customer(active=False),
        Usage(10, True),
        "customer_suspended",
    ),
    (
        "customer before missing trunk",
        NumberRoute(1, None),
        None,
        customer(active=False),
        IDLE,
        "customer_suspended",
    ),
    (
        "trunk before channels",
        ROUTED,
        trunk(active=False),
        CUSTOMER,
        Usage(10, True),
        "trunk_suspended",
    ),
]


@pytest.mark.parametrize(
    "number, trunk_, customer_, usage, expected",
    [case[1:] for case in INBOUND],
    ids=[case[0] for case in INBOUND],
)
def test_admit_inbound(
    number: NumberRoute | None,
    trunk_: TrunkPolicy | None,
    customer_: CustomerState | None,
    usage: Usage,
    expected: str | None,
) -> None:
    decision = admit_inbound(number, trunk_, customer_)
    if decision is ADMIT and trunk_ is not None:
        decision = limit_refusal(trunk_, usage, count_cps=False) or ADMIT
    assert decision == (ADMIT if expected is None else reject(expected))


@pytest.mark.parametrize(
    "trunk_, customer_, expected",
    [
        (trunk(registration_allowed=True), CUSTOMER, None),
        (TRUNK, CUSTOMER, "registration_not_allowed"),
        (trunk(registration_allowed=True, active=False), CUSTOMER, "trunk_suspended"),
        (trunk(registration_allowed=True), customer(active=False), "customer_suspended"),
        (trunk(active=False), customer(active=False), "customer_suspended"),
    ],
)
def test_admit_register(
    trunk_: TrunkPolicy, customer_: CustomerState, expected: str | None
) -> None:
    assert admit_register(trunk_, customer_) == (ADMIT if expected is None else reject(expected))


def test_limit_refusal() -> None:
    assert limit_refusal(TRUNK, IDLE) is None
    assert limit_refusal(TRUNK, Usage(10, True)) == reject("channel_limit")
    assert limit_refusal(TRUNK, Usage(0, False)) == reject("cps_limit")
    assert limit_refusal(TRUNK, Usage(0, False), count_cps=False) is None


def test_decisions_are_shared_values() -> None:
    assert Admit() == ADMIT
    assert reject("cps_limit") is reject("cps_limit")
    with pytest.raises(AttributeError):
        reject("cps_limit").code = 200  # type: ignore[misc]
