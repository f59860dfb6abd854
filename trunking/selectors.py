"""Reads of the trunking app that are more than a filter: the source-address rule, where a
trunk's calls go, which edges are in trouble, and the calls in progress on the edges.

The source-address rule is checked here at write time, across rows, by the API, the admin and
anything else that stores an ACL entry or a carrier gateway: a source address identifies one
trunk, and a carrier's address is never a trunk's. The overlap test itself is the edge's
(`edge.validators.networks_overlap`, `network_holds`), which applies it again when it compiles
a snapshot.

Active calls live on the edges, not in the database: they are asked of every enabled edge's
control API (``GET /calls``), in parallel, each within ``EDGE_CALLS_TIMEOUT`` seconds. An edge
that does not answer contributes no calls and is reported as unreachable, so the board never
shows calls it cannot vouch for (no ghosts of a dead edge). Every read is scoped to the caller.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import connection
from django.db.models import Count, Q, QuerySet
from django.db.models.functions import TruncMinute
from django.utils import timezone

from accounts.models import Customer
from core.tenancy import Caller
from edge import validators as edge

from .choices import EdgeHealth, Transport
from .models import CarrierGateway, ConfigRevision, EdgeNode, IpAclEntry, Trunk
from .push import EdgePushError, _request
from .validators import edge_rule

# One answer whatever the network collides with, so that nobody learns another tenant's (or a
# carrier's) addresses from it.
SOURCE_IN_USE = (
    "This network overlaps addresses already in use elsewhere on the platform; a source "
    "address must identify one trunk. Ask the operator if the addresses are yours."
)


_LOCK_KEY = zlib.crc32(b"trunkline:source-addresses")


def _lock_source_addresses() -> None:
    """Within a transaction on PostgreSQL, wait for any other source-address write to commit
    (the lock is released with the transaction), so that this check sees its row. The API's
    writes and the admin's pages run check and write in one transaction; elsewhere (SQLite,
    autocommit) a race past the check is caught by the edge's compiler, which leaves both
    networks out and reports them."""
    if connection.vendor == "postgresql" and connection.in_atomic_block:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_LOCK_KEY])


def _overlapping_acl(network: edge.Network, *, trunk_id: int | None) -> bool:
    """Whether any other trunk's ACL entry shares an address with `network`."""
    others = IpAclEntry.objects.all()
    if trunk_id is not None:
        others = others.exclude(trunk_id=trunk_id)  # a trunk's own entries may nest
    for cidr in others.values_list("cidr", flat=True).iterator(chunk_size=5000):
        try:
            if edge.networks_overlap(network, edge.network(cidr)):
                return True
        except edge.InvalidValue:
            continue  # a bad stored row is the snapshot's to report, not this write's
    return False


def _holds_carrier_address(network: edge.Network) -> bool:
    for host in CarrierGateway.objects.values_list("host", flat=True):
        key = edge.address_key(host)
        if key is not None and edge.network_holds(network, key):
            return True
    return False


def acl_source_check(*, cidr: str, trunk_id: int | None, staff: bool) -> str:
    """`cidr` in canonical form if a trunk may take it as a source network; else a
    ValidationError on ``cidr``.

    Refused for everyone: a network that equals or overlaps another trunk's entry (any
    customer's) or holds a carrier gateway's address. Refused for customers only: a network
    broader than ACL_MIN_PREFIX_V4 / ACL_MIN_PREFIX_V6.
    """
    try:
        canonical = edge_rule(edge.canonical_cidr, str(cidr).strip())
    except ValidationError as exc:
        raise ValidationError({"cidr": exc.messages}) from exc
    network = edge.network(canonical)
    minimum = settings.ACL_MIN_PREFIX_V4 if network.bits == 32 else settings.ACL_MIN_PREFIX_V6
    if network.length < minimum and not staff:
        family = "IPv4" if network.bits == 32 else "IPv6"
        message = f"Give an {family} network of /{minimum} or narrower; broader ones need staff."
        raise ValidationError({"cidr": message})
    _lock_source_addresses()
    if _overlapping_acl(network, trunk_id=trunk_id) or _holds_carrier_address(network):
        raise ValidationError({"cidr": SOURCE_IN_USE})
    return canonical


def gateway_source_check(*, host: str) -> None:
    """ValidationError on ``host`` if it is an IP address inside a trunk's source network
    (the edge would take the carrier's calls for that trunk's). Hostnames are not resolved
    here; the edge checks the addresses it resolves."""
    key = edge.address_key(host)
    if key is None:
        return
    _lock_source_addresses()
    for trunk_id, cidr in IpAclEntry.objects.values_list("trunk_id", "cidr").iterator(
        chunk_size=5000
    ):
        try:
            held = edge.network_holds(edge.network(cidr), key)
        except edge.InvalidValue:
            continue
        if held:
            message = (
                f"This address is inside trunk {trunk_id}'s IP ACL ({cidr}); a carrier's "
                "address cannot be a trunk's source."
            )
            raise ValidationError({"host": message})


@dataclass(frozen=True)
class SipEndpoint:
    edge: str
    transport: str
    host: str
    port: int

    @property
    def uri(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        if self.transport == Transport.TLS:
            return f"sips:{host}:{self.port}"
        return f"sip:{host}:{self.port};transport={self.transport}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "edge": self.edge,
            "transport": self.transport,
            "host": self.host,
            "port": self.port,
            "uri": self.uri,
        }


def _first_sip_address(node: EdgeNode) -> tuple[str, int | None]:
    first = str(node.sip_addresses[0]) if node.sip_addresses else ""
    host, _, port = first.rpartition(":")
    if not host:
        return first, None
    host = host.strip("[]")
    return host, int(port) if port.isdigit() else None


def edge_sip_endpoints(nodes: QuerySet[EdgeNode] | None = None) -> list[SipEndpoint]:
    """Where a customer's PBX sends calls: every enabled edge's public address, per transport."""
    endpoints: list[SipEndpoint] = []
    for node in nodes if nodes is not None else EdgeNode.objects.filter(enabled=True):
        listen_host, listen_port = _first_sip_address(node)
        host = node.public_host or listen_host
        if not host:
            continue
        for transport, port in (
            (Transport.UDP, node.udp_port or listen_port),
            (Transport.TCP, node.tcp_port or listen_port),
            (Transport.TLS, node.tls_port),
        ):
            if port:
                endpoints.append(SipEndpoint(node.name, str(transport), host, port))
    return endpoints


def carrier_source_addresses(nodes: QuerySet[EdgeNode] | None = None) -> list[str]:
    """The addresses carriers (and customers' firewalls) see the edges' calls come from."""
    addresses: list[str] = []
    for node in nodes if nodes is not None else EdgeNode.objects.filter(enabled=True):
        listed = [str(a) for a in node.carrier_source_ips] or [
            node.public_host or _first_sip_address(node)[0]
        ]
        addresses.extend(a for a in listed if a and a not in addresses)
    return addresses


def failing_edge_nodes() -> QuerySet[EdgeNode]:
    """Enabled edges that are unreachable or refused the last push, with the reason in
    ``last_push_error``: what the admin's banner shows (the one place that decides it)."""
    return EdgeNode.objects.filter(enabled=True).filter(
        Q(health__in=[EdgeHealth.UNREACHABLE, EdgeHealth.FAILING]) | ~Q(last_push_error="")
    )


EDGE_CALLS_TIMEOUT = 2.0  # seconds an edge gets to list its calls

# The fields of one active call, as the REST API, the WebSocket and the page show it.
CALL_FIELDS = (
    "call_id", "edge", "trunk_id", "trunk", "customer_id", "customer", "direction", "caller",
    "callee", "state", "setup_at", "answer_at",
)  # fmt: skip


@dataclass
class EdgeCalls:
    """One edge's answer: its calls (raw, as the edge lists them) or why there are none."""

    node: EdgeNode
    calls: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    health: dict[str, Any] = field(default_factory=dict)  # its GET /health answer


def edge_calls(node: EdgeNode) -> EdgeCalls:
    """The calls in progress on ``node`` (its control API's ``GET /calls``) and its health
    (``GET /health``: the config version it runs, draining or not)."""
    try:
        answer = _request(node, "GET", "/calls", None, EDGE_CALLS_TIMEOUT)
        calls = answer["calls"]
        if not isinstance(calls, list):
            raise TypeError("calls is not a list")
        health = _request(node, "GET", "/health", None, EDGE_CALLS_TIMEOUT)
    except (EdgePushError, KeyError, TypeError) as exc:
        return EdgeCalls(node, error=str(exc) or type(exc).__name__)
    return EdgeCalls(
        node,
        calls=[call for call in calls if isinstance(call, dict)],
        health=health if isinstance(health, dict) else {},
    )


def edges_calls(nodes: Iterable[EdgeNode] | None = None) -> list[EdgeCalls]:
    """Every enabled edge's calls, asked in parallel."""
    nodes = list(EdgeNode.objects.filter(enabled=True) if nodes is None else nodes)
    if len(nodes) <= 1:
        return [edge_calls(node) for node in nodes]
    with ThreadPoolExecutor(max_workers=min(len(nodes), 16)) as pool:
        return list(pool.map(edge_calls, nodes))


class Names:
    """Trunk and customer names by id, loaded once per request (not per call)."""

    def __init__(self, caller: Caller) -> None:
        trunks = caller.scope(Trunk.objects.select_related("customer"))
        self.trunks = {t.pk: t for t in trunks}
        self.customers = {t.customer_id: t.customer.name for t in self.trunks.values()}
        if caller.is_staff:
            self.customers |= dict(Customer.objects.values_list("pk", "name"))

    def trunk(self, trunk_id: object) -> str | None:
        trunk = self.trunks.get(trunk_id)  # type: ignore[call-overload]
        return None if trunk is None else trunk.name

    def customer(self, customer_id: object) -> str | None:
        return self.customers.get(customer_id)  # type: ignore[call-overload]


def call_row(raw: dict[str, Any], edge: str, names: Names) -> dict[str, Any]:
    """An edge's call in the shape of CALL_FIELDS."""
    return {
        "call_id": str(raw.get("call_id", "")),
        "edge": edge,
        "trunk_id": raw.get("trunk_id"),
        "trunk": names.trunk(raw.get("trunk_id")),
        "customer_id": raw.get("customer_id"),
        "customer": names.customer(raw.get("customer_id")),
        "direction": raw.get("direction"),
        "caller": raw.get("caller"),
        "callee": raw.get("callee"),
        "state": raw.get("state"),
        "setup_at": raw.get("setup_at"),
        "answer_at": raw.get("answer_at"),
    }


def visible_to(caller: Caller, customer_id: object) -> bool:
    """May ``caller`` see a call (or an event) of ``customer_id``?"""
    if caller.is_staff:
        return True
    return caller.customer is not None and customer_id == caller.customer.pk


def _matches(row: dict[str, Any], search: str) -> bool:
    needle = search.lower()
    return any(
        needle in str(row[name]).lower()
        for name in ("call_id", "caller", "callee", "trunk", "customer", "edge")
        if row[name] is not None
    )


@dataclass
class ActiveCalls:
    calls: list[dict[str, Any]]
    edges: list[EdgeCalls]


def active_calls(
    *,
    caller: Caller,
    customer_id: int | None = None,
    trunk_id: int | None = None,
    edge: str | None = None,
    search: str | None = None,
    answers: list[EdgeCalls] | None = None,
) -> ActiveCalls:
    """The calls in progress on every edge that ``caller`` may see, filtered, oldest first."""
    answers = edges_calls() if answers is None else answers
    names = Names(caller)
    rows = []
    for answer in answers:
        for raw in answer.calls:
            if not visible_to(caller, raw.get("customer_id")):
                continue
            row = call_row(raw, answer.node.name, names)
            if customer_id is not None and row["customer_id"] != customer_id:
                continue
            if trunk_id is not None and row["trunk_id"] != trunk_id:
                continue
            if edge is not None and row["edge"] != edge:
                continue
            if search and not _matches(row, search):
                continue
            rows.append(row)
    rows.sort(key=lambda row: (row["setup_at"] or "", row["call_id"]))
    return ActiveCalls(calls=rows, edges=answers)


def find_active_call(*, caller: Caller, call_id: str) -> tuple[EdgeNode, dict[str, Any]] | None:
    """The edge carrying ``call_id`` and the call, if ``caller`` may see it; else None."""
    for answer in edges_calls():
        for raw in answer.calls:
            if str(raw.get("call_id")) == call_id and visible_to(caller, raw.get("customer_id")):
                return answer.node, call_row(raw, answer.node.name, Names(caller))
    return None


def board_trunks(caller: Caller) -> list[dict[str, Any]]:
    """The trunks on the board, with their limits (the gauges' full scale)."""
    trunks = caller.scope(Trunk.objects.select_related("customer")).order_by(
        "customer__name", "name"
    )
    return [
        {
            "id": t.pk,
            "name": t.name,
            "customer_id": t.customer_id,
            "customer": t.customer.name,
            "status": t.status,
            "max_channels": t.max_channels,
            "max_cps": t.max_cps,
        }
        for t in trunks
    ]


def board_edges(answers: list[EdgeCalls]) -> list[dict[str, Any]]:
    """The edges just asked: the config version each runs (its /health), its lag behind the
    current version, and its health; an edge that did not answer is "unreachable"."""
    current = ConfigRevision.objects.values_list("pk", flat=True).first()
    rows = []
    for answer in sorted(answers, key=lambda a: a.node.name):
        node = answer.node
        applied = answer.health.get("config_version", node.applied_version)
        if answer.error is not None:
            health = "unreachable"
        else:
            health = "draining" if answer.health.get("status") == "draining" else "ok"
        lag = None
        if isinstance(current, int) and isinstance(applied, int):
            lag = max(current - applied, 0)
        rows.append(
            {
                "name": node.name,
                "applied_version": applied,
                "config_version": current,
                "lag": lag,
                "health": health,
                "active_calls": answer.health.get("active_calls"),
                "error": answer.error,
            }
        )
    return rows


HISTORY_MINUTES = 15


def board_history(caller: Caller, *, now: datetime | None = None) -> list[dict[str, Any]]:
    """The last 15 minutes of call attempts from the CDRs loaded so far, per minute and
    reason: what the board's chart starts from (live events add to it). CDRs reach the
    database a little after the calls end, so the last minute is usually incomplete."""
    from billing.models import Cdr

    now = now or timezone.now()
    since = (now - timedelta(minutes=HISTORY_MINUTES)).replace(second=0, microsecond=0)
    rows = (
        caller.scope(Cdr.objects.filter(setup_at__gte=since))
        .annotate(minute=TruncMinute("setup_at"))
        .values("minute", "reason")
        .annotate(attempts=Count("id"), answers=Count("id", filter=Q(answer_at__isnull=False)))
        .order_by("minute", "reason")
    )
    return [
        {
            "minute": row["minute"].isoformat(),
            "reason": row["reason"],
            "attempts": row["attempts"],
            "answers": row["answers"],
        }
        for row in rows
    ]
