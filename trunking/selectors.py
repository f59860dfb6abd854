"""Reads of the trunking app that are more than a filter: the source-address rule, where a
trunk's calls go, and which edges are in trouble.

The source-address rule is checked here at write time, across rows, by the API, the admin and
anything else that stores an ACL entry or a carrier gateway: a source address identifies one
trunk, and a carrier's address is never a trunk's. The overlap test itself is the edge's
(`edge.validators.networks_overlap`, `network_holds`), which applies it again when it compiles
a snapshot.
"""

import zlib
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import connection
from django.db.models import Q, QuerySet

from edge import validators as edge

from .choices import EdgeHealth, Transport
from .models import CarrierGateway, EdgeNode, IpAclEntry
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


def edge_sip_endpoints(nodes: "QuerySet[EdgeNode] | None" = None) -> list[SipEndpoint]:
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


def carrier_source_addresses(nodes: "QuerySet[EdgeNode] | None" = None) -> list[str]:
    """The addresses carriers (and customers' firewalls) see the edges' calls come from."""
    addresses: list[str] = []
    for node in nodes if nodes is not None else EdgeNode.objects.filter(enabled=True):
        listed = [str(a) for a in node.carrier_source_ips] or [
            node.public_host or _first_sip_address(node)[0]
        ]
        addresses.extend(a for a in listed if a and a not in addresses)
    return addresses


def failing_edge_nodes() -> "QuerySet[EdgeNode]":
    """Enabled edges that are unreachable or refused the last push, with the reason in
    ``last_push_error``: what the admin's banner shows (the one place that decides it)."""
    return EdgeNode.objects.filter(enabled=True).filter(
        Q(health__in=[EdgeHealth.UNREACHABLE, EdgeHealth.FAILING]) | ~Q(last_push_error="")
    )
