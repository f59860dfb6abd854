"""Where a call goes: the ordered targets of an inbound or outbound call, and when to fail over.

Targets are tried in order: lowest priority value first; within one priority, a weighted
random order (RFC 2782 style, without replacement) so that over many calls each target gets
its weight's share of first attempts. `should_fail_over` decides, from a target's final answer,
whether the next target is tried. The rules are in `docs/edge-policy.md`.

No I/O, clock or global randomness: the caller passes its own `random.Random` (seeded in
tests), and hostnames are left for the runtime to resolve.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from math import inf, log
from typing import Literal, Protocol, TypeVar

from edge.config import Gateway, OriginationTarget, TrunkPolicy

__all__ = [
    "ContactLike",
    "Target",
    "TargetKind",
    "inbound_targets",
    "outbound_targets",
    "should_fail_over",
    "weighted_order",
]

TargetKind = Literal["origination", "contact", "gateway"]


@dataclass(slots=True, init=False, unsafe_hash=True)
class Target:
    """One place to send the call: connect to `host:port` over `transport`, with `request_uri`.

    `ref` names the target in the decision trace and on the CDR: the origination or contact
    URI, or the gateway id (as text; `gateway_id` and `carrier_id` carry the numbers).
    """

    kind: TargetKind
    ref: str
    host: str
    port: int
    transport: str
    request_uri: str
    gateway_id: int | None = None
    carrier_id: int | None = None
    srtp: bool = False  # a gateway that wants SRTP (SDES) when the call's media is anchored

    def __init__(
        self,
        kind: TargetKind,
        ref: str,
        host: str,
        port: int,
        transport: str,
        request_uri: str,
        gateway_id: int | None = None,
        carrier_id: int | None = None,
        srtp: bool = False,
    ) -> None:
        self.kind = kind
        self.ref = ref
        self.host = host
        self.port = port
        self.transport = transport
        self.request_uri = request_uri
        self.gateway_id = gateway_id
        self.carrier_id = carrier_id
        self.srtp = srtp


class ContactLike(Protocol):
    """A live registration, as `edge.registrar.Contact` has it."""

    @property
    def uri(self) -> str: ...

    @property
    def source(self) -> tuple[str, int]: ...

    @property
    def transport(self) -> str: ...


class _Weighted(Protocol):
    @property
    def priority(self) -> int: ...

    @property
    def weight(self) -> int: ...


W = TypeVar("W", bound=_Weighted)


def weighted_order(items: Iterable[W], rng: random.Random) -> list[W]:
    """`items` by priority ascending; within a priority, a weighted random order.

    The order is distributed exactly as drawing one item at a time with probability
    weight / (sum of the weights left), as RFC 2782 describes, but costs one random number
    and one sort: each item gets an exponential "arrival time" with rate = its weight, and the
    earliest arrives first (Efraimidis and Spirakis). Weight 0 comes after every weighted
    item of its priority, in random order among themselves.
    """
    pool = list(items)
    if len(pool) < 2:
        return pool
    rand = rng.random
    keys = []
    for index, item in enumerate(pool):
        weight = item.weight
        if weight > 0:
            # 1 - random() is in (0, 1], so the logarithm is defined.
            keys.append((item.priority, -log(1.0 - rand()) / weight, 0.0, index))
        else:
            keys.append((item.priority, inf, rand(), index))
    keys.sort()
    return [pool[key[3]] for key in keys]


def _uri_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _origination_target(origination: OriginationTarget, e164: str) -> Target:
    uri = origination.uri
    if origination.user is None:
        # "sip:pbx.example:5060;transport=tcp" -> "sip:+1415...@pbx.example:5060;transport=tcp"
        scheme, _, rest = uri.partition(":")
        request_uri = f"{scheme}:{e164}@{rest}"
    else:
        request_uri = uri
    return Target(
        "origination",
        uri,
        origination.host,
        origination.port,
        origination.transport,
        request_uri,
    )


def _contact_target(contact: ContactLike) -> Target:
    # Reach the PBX where its REGISTER came from: the Contact host is often a private
    # address behind NAT. The Request-URI is the contact as registered.
    host, port = contact.source
    return Target("contact", contact.uri, host, port, contact.transport, contact.uri)


def inbound_targets(
    trunk: TrunkPolicy,
    e164: str,
    contacts: Sequence[ContactLike],
    rng: random.Random,
) -> list[Target]:
    """Targets for a call to DID `e164` on `trunk`.

    A trunk with live registrations is reached at its registered contacts (in the order
    given: the registrar lists the most recent first) and its origination URIs are not
    used; a trunk without any is reached at its origination URIs by priority and weight.
    An empty list means there is no route (`no_route`).
    """
    if contacts:
        return [_contact_target(contact) for contact in contacts]
    return [
        _origination_target(origination, e164)
        for origination in weighted_order(trunk.origination_uris, rng)
    ]


def _gateway_target(gateway: Gateway, e164: str) -> Target:
    number = e164[1:] if gateway.strip_plus and e164.startswith("+") else e164
    port = f":{gateway.port}"
    transport = "" if gateway.transport == "udp" else f";transport={gateway.transport}"
    request_uri = f"sip:{gateway.tech_prefix}{number}@{_uri_host(gateway.host)}{port}{transport}"
    return Target(
        "gateway",
        str(gateway.id),
        gateway.host,
        gateway.port,
        gateway.transport,
        request_uri,
        gateway.id,
        gateway.carrier_id,
        gateway.srtp,
    )


def outbound_targets(gateways: Iterable[Gateway], e164: str, rng: random.Random) -> list[Target]:
    """Targets for an outbound call to `e164` through `gateways` (`EdgeConfig.gateways_for`).

    An empty list means no gateway takes the destination (`no_gateway`).
    """
    return [_gateway_target(gateway, e164) for gateway in weighted_order(gateways, rng)]


def should_fail_over(status: int | None, stop_codes: frozenset[int]) -> bool:
    """Whether to try the next target after this one answered `status` (None: no answer).

    Timeouts and transport errors, 408 and 5xx fail over unless the trunk lists the code as a
    stop code; every other answer (2xx, 3xx, other 4xx, 6xx) ends the attempt.
    """
    if status is None:
        return True
    if status in stop_codes:
        return False
    return status == 408 or 500 <= status <= 599
