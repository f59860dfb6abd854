"""What an edge accepts, value by value: the one home of the provisioning rules.

The snapshot compiler (`edge/config.py`) checks every value of a snapshot with these functions,
and Django calls the same functions (through the thin adapter in `trunking/validators.py`) on
every write, so a value an edge would refuse is refused at the API, the admin and the bulk
import instead of being stored. Each validator returns the value in the form the edge uses, or
raises `InvalidValue` saying what is wrong with it (never where: callers add that).

The source-address rule lives here too (`networks_overlap`, `network_holds`): a source address
identifies one trunk, and a carrier's address is never a trunk's. Django applies it across rows
at write time (`trunking/selectors.py`); the compiler applies it across the snapshot.

Pure: no I/O, no clock, no Django.
"""

from __future__ import annotations

import ipaddress
import re
from functools import lru_cache
from typing import Any, NamedTuple

from edge.sip.errors import RemoteProtocolError
from edge.sip.grammar import forgettable
from edge.sip.uri import parse_uri

__all__ = [
    "CALLER_ID_POLICIES",
    "E164_NUMBER",
    "TECH_PREFIX_MARKS",
    "TRANSPORTS",
    "InvalidValue",
    "Network",
    "OriginationAddress",
    "address_key",
    "caller_id_policy",
    "canonical_cidr",
    "destination",
    "e164_number",
    "e164_prefix",
    "failover_code",
    "gateway_host",
    "is_e164_number",
    "is_e164_prefix",
    "is_region",
    "network",
    "network_holds",
    "networks_overlap",
    "origination_uri",
    "region",
    "tech_prefix",
    "transport",
]

TRANSPORTS = frozenset({"udp", "tcp", "tls"})
CALLER_ID_POLICIES = frozenset({"customer_numbers", "pass_through"})
TECH_PREFIX_MARKS = "-_.!~*'()+#%"
_DIGITS = frozenset("0123456789")
_REGION_LETTERS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
# Distinct CIDRs and origination URIs remembered across snapshots (a few MB at most).
_PARSE_CACHE_SIZE = 1 << 17


class InvalidValue(ValueError):
    """A value an edge refuses; the message says why, in one sentence without a full stop."""

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else "invalid value"


# --- numbers and places -------------------------------------------------------------------


def is_e164_prefix(value: Any) -> bool:
    """'+' and 1 to 15 ASCII digits: an E.164 prefix (a whole number is a prefix too)."""
    return (
        isinstance(value, str)
        and 2 <= len(value) <= 16
        and value[0] == "+"
        and _DIGITS.issuperset(value[1:])
    )


def e164_prefix(value: Any) -> str:
    if not is_e164_prefix(value):
        raise InvalidValue(f"{value!r} is not an E.164 prefix like '+44'")
    return str(value)


def is_region(value: Any) -> bool:
    # Any two capital letters: a code this edge's phonenumbers does not know never matches,
    # which is better than refusing a snapshot over a newer region list.
    return isinstance(value, str) and len(value) == 2 and _REGION_LETTERS.issuperset(value)


def region(value: Any) -> str:
    if not is_region(value):
        raise InvalidValue(f"{value!r} is not an ISO code")
    return str(value)


def destination(value: Any) -> tuple[bool, str]:
    """An allowed destination: (True, '+44') for a prefix, (False, 'GB') for a country."""
    if is_e164_prefix(value):
        return True, value
    if is_region(value):
        return False, value
    raise InvalidValue(
        f"{value!r} is neither an E.164 prefix ('+44') nor an ISO country code ('GB')"
    )


# '+', a first digit that is not 0, and 2 to 15 digits in all. A pattern rather than code: the
# compiler checks 100,000 numbers with its `fullmatch` (a C call) in its hot loop.
E164_NUMBER = re.compile(r"\+[1-9][0-9]{1,14}")


def is_e164_number(value: Any) -> bool:
    return type(value) is str and E164_NUMBER.fullmatch(value) is not None


def e164_number(value: Any) -> str:
    if not is_e164_number(value):
        raise InvalidValue(f"{value!r} is not an E.164 number")
    return str(value)


def failover_code(value: Any) -> int:
    if type(value) is not int or not 300 <= value <= 699:
        raise InvalidValue(f"{value!r} is not a SIP code 300-699")
    return value


def caller_id_policy(value: Any) -> str:
    if value not in CALLER_ID_POLICIES:
        raise InvalidValue(f"{value!r} is not one of {sorted(CALLER_ID_POLICIES)}")
    return str(value)


def transport(value: Any) -> str:
    if value not in TRANSPORTS:
        raise InvalidValue(f"{value!r} is not one of {sorted(TRANSPORTS)}")
    return str(value)


# --- hosts and URIs -------------------------------------------------------------------------


@lru_cache(maxsize=8192)
def address_key(ip: str) -> tuple[int, int] | None:
    """(bits, integer) of an IP literal, or None if `ip` is not one.

    IPv4-mapped IPv6 addresses count as IPv4 and brackets are accepted, so every spelling of
    one address gives one key. Cached: sources repeat, and parsing costs a few microseconds.
    """
    text = ip[1:-1] if ip.startswith("[") and ip.endswith("]") else ip
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address):
        mapped = address.ipv4_mapped
        if mapped is None:
            return 128, int(address)
        address = mapped
    return 32, int(address)


forgettable(address_key.cache_clear)


def gateway_host(value: Any) -> str:
    """A gateway host: an IP literal (brackets removed from IPv6) or a hostname."""
    if not isinstance(value, str) or not value:
        raise InvalidValue(f"expected a host, got {value!r}")
    if value.startswith("["):
        if address_key(value) is None:
            raise InvalidValue(f"{value!r} is not an IPv6 reference")
        return value[1:-1]
    if ":" in value:
        if address_key(value) is None:
            raise InvalidValue(f"{value!r} is not a host (give the port separately)")
        return value
    if not all(ch.isascii() and (ch.isalnum() or ch in "-._") for ch in value):
        raise InvalidValue(f"{value!r} is not a host")
    return value


def tech_prefix(value: Any) -> str:
    """What goes in front of the number in the Request-URI user: nothing that would end the
    user part or start a parameter (":", "@", ";", "?")."""
    if not isinstance(value, str):
        raise InvalidValue(f"expected a string, got {value!r}")
    if not all(ch.isascii() and (ch.isalnum() or ch in TECH_PREFIX_MARKS) for ch in value):
        raise InvalidValue(f"{value!r} may hold letters, digits and {TECH_PREFIX_MARKS}")
    return value


class OriginationAddress(NamedTuple):
    """Where an origination URI sends INVITEs (`host` without IPv6 brackets)."""

    host: str
    port: int
    transport: str
    user: str | None


@lru_cache(maxsize=_PARSE_CACHE_SIZE)
def _origination_address(text: str) -> OriginationAddress | str:
    """The address of an origination URI, or why it is not one (cached, errors included:
    consecutive snapshots repeat almost every URI, and parsing is most of a trunk's cost)."""
    try:
        uri = parse_uri(text)
    except RemoteProtocolError as error:
        return f"{text!r} is not a SIP URI ({error.reason})"
    if uri.scheme not in ("sip", "sips"):
        return f"{text!r} is not a sip: or sips: URI"
    param = uri.params.get("transport")
    kind = (param or ("tls" if uri.scheme == "sips" else "udp")).lower()
    if kind not in TRANSPORTS:
        return f"{text!r} has an unsupported transport {param!r}"
    if uri.scheme == "sips" and kind == "udp":
        return f"{text!r} has an unsupported transport {param!r} (sips: needs TLS)"
    if uri.scheme == "sips":
        kind = "tls"
    host = uri.host[1:-1] if uri.host.startswith("[") else uri.host
    port = uri.port if uri.port is not None else (5061 if kind == "tls" else 5060)
    return OriginationAddress(host, port, kind, uri.user)


def origination_uri(value: Any) -> OriginationAddress:
    """A URI the edge can send a trunk's inbound calls to: sip: or sips:, a host, an optional
    port, and a transport the edge speaks (sips: only over TLS)."""
    if not isinstance(value, str) or not value:
        raise InvalidValue(f"expected a non-empty string, got {value!r}")
    address = _origination_address(value)
    if isinstance(address, str):
        raise InvalidValue(address)
    return address


# --- source networks ------------------------------------------------------------------------


class Network(NamedTuple):
    """An IP network as integers: `value` is the network address with host bits cleared."""

    bits: int  # 32 or 128
    length: int  # prefix length
    value: int


def _ipv4_network(text: str) -> Network | None:
    """`network` for plain "a.b.c.d[/n]", five times faster than ipaddress; else None."""
    address, slash, length_text = text.partition("/")
    parts = address.split(".")
    if len(parts) != 4:
        return None
    value = 0
    for part in parts:
        if not (0 < len(part) <= 3 and _DIGITS.issuperset(part)):
            return None
        if len(part) > 1 and part[0] == "0":  # ipaddress refuses leading zeros: so do we
            return None
        octet = int(part)
        if octet > 255:
            return None
        value = value << 8 | octet
    if not slash:
        return Network(32, 32, value)
    if not (0 < len(length_text) <= 2 and _DIGITS.issuperset(length_text)):
        return None
    length = int(length_text)
    if length > 32:
        return None
    return Network(32, length, value >> (32 - length) << (32 - length))


@lru_cache(maxsize=_PARSE_CACHE_SIZE)
def _parse_network(entry: str) -> Network | None:
    fast = _ipv4_network(entry)
    if fast is not None:
        return fast
    try:
        parsed = ipaddress.ip_network(entry.strip(), strict=False)
    except ValueError:
        return None
    value = int(parsed.network_address)
    if parsed.version == 6 and parsed.prefixlen >= 96 and value >> 32 == 0xFFFF:
        # IPv4-mapped: sources are matched as IPv4 (`address_key`), so the network is too.
        return Network(32, parsed.prefixlen - 96, value & 0xFFFFFFFF)
    return Network(parsed.max_prefixlen, parsed.prefixlen, value)


def network(value: Any) -> Network:
    """A CIDR (a bare address is a /32 or /128); host bits are ignored."""
    if not isinstance(value, str):
        raise InvalidValue(f"expected a CIDR string, got {value!r}")
    parsed = _parse_network(value)
    if parsed is None:
        raise InvalidValue(f"{value!r} is not an IP network in CIDR notation")
    return parsed


def canonical_cidr(value: Any) -> str:
    """The CIDR as it is stored: network address, '/', prefix length ('192.0.2.0/24')."""
    parsed = network(value)
    family = ipaddress.IPv4Network if parsed.bits == 32 else ipaddress.IPv6Network
    return str(family((parsed.value, parsed.length)))


def networks_overlap(a: Network, b: Network) -> bool:
    """Whether two networks share an address (then one holds the other)."""
    if a.bits != b.bits:
        return False
    shift = a.bits - min(a.length, b.length)
    return a.value >> shift == b.value >> shift


def network_holds(net: Network, key: tuple[int, int]) -> bool:
    """Whether the address `key` (from `address_key`) is inside `net`."""
    bits, value = key
    return bits == net.bits and value >> (bits - net.length) == net.value >> (bits - net.length)
