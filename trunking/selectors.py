"""Reads of the trunking app that are more than a filter: where a trunk's calls go, and which
edges are in trouble."""

from dataclasses import dataclass
from typing import Any

from django.db.models import Q, QuerySet

from .choices import EdgeHealth, Transport
from .models import EdgeNode


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
        Q(health=EdgeHealth.UNREACHABLE) | ~Q(last_push_error="")
    )
