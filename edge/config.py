"""The edge's compiled configuration: a snapshot document turned into lookup tables.

`EdgeConfig.compile(doc)` validates a schema-1 snapshot (`docs/snapshot.md`) and precomputes
every table a call needs, so that deciding a call is a handful of dict lookups: trunk by source
address (longest-prefix match over the populated prefix lengths only), credential by username,
number by E.164, gateways by the longest configured prefix of the number. A malformed document
is refused whole with a `ConfigError` that says what is wrong and where; a compiled config is
never modified (`with_resolved_hosts` returns a new one), so the runtime swaps configs by
replacing one reference.

Nothing here does I/O, reads a clock, resolves names or imports Django: the document comes in
as a decoded dict, tables come out.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from types import MappingProxyType
from typing import Any

from edge.sip.errors import RemoteProtocolError
from edge.sip.uri import parse_uri

__all__ = [
    "CALLER_ID_POLICIES",
    "MEDIA_MODES",
    "SCHEMA",
    "SRTP_MODES",
    "TRANSPORTS",
    "ConfigError",
    "Credential",
    "CustomerState",
    "EdgeConfig",
    "Gateway",
    "NumberRoute",
    "OriginationTarget",
    "TrunkPolicy",
    "address_key",
    "media_error",
]

SCHEMA = 1
# Distinct CIDRs and origination URIs remembered across snapshots (a few MB at most).
_PARSE_CACHE_SIZE = 1 << 17
TRANSPORTS = frozenset({"udp", "tcp", "tls"})
CALLER_ID_POLICIES = frozenset({"customer_numbers", "pass_through"})
# A trunk's media: "passthrough" relays SDP untouched; "anchor" puts the media through rtpengine
# (and refuses the call, 503 media_unavailable, if none answers); "auto" anchors when the edge
# has an rtpengine configured and passes through otherwise (the default: a PBX behind NAT gets
# audio wherever anchoring is available, and an edge without rtpengine keeps carrying calls).
MEDIA_MODES = frozenset({"auto", "anchor", "passthrough"})
# SRTP (SDES, RTP/SAVP) on the customer's side of an anchored call: "required" offers only
# SRTP, "offered" SRTP or RTP (the PBX chooses), "off" plain RTP. Needs media anchoring.
SRTP_MODES = frozenset({"required", "offered", "off"})
_MAX_PORT = 65535
_MAX_PRIORITY = 65535
_DIGITS = frozenset("0123456789")
_REGION_LETTERS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
_TECH_PREFIX_MARKS = "-_.!~*'()+#%"


class ConfigError(ValueError):
    """The snapshot is malformed; it is refused whole and the previous config stays in force."""


@dataclass(frozen=True, slots=True)
class OriginationTarget:
    """One enabled origination URI of a trunk, parsed once at compile time.

    `host` is what to connect to (an IPv6 literal without brackets); `user` is the URI's user
    part, if any: without one, the called number becomes the Request-URI user.
    """

    uri: str
    host: str
    port: int
    transport: str
    priority: int
    weight: int
    user: str | None = None


@dataclass(frozen=True, slots=True)
class TrunkPolicy:
    """Everything the edge enforces on one trunk's calls."""

    id: int
    customer_id: int
    name: str
    active: bool
    max_channels: int
    max_cps: int
    allowed_prefixes: tuple[str, ...]  # "+"-prefixes from allowed_destinations
    allowed_countries: frozenset[str]  # ISO 3166 codes from allowed_destinations
    blocked_prefixes: tuple[str, ...]
    caller_id_policy: str  # one of CALLER_ID_POLICIES
    failover_stop_codes: frozenset[int]
    registration_allowed: bool
    default_country: str
    max_call_duration: int  # seconds
    origination_uris: tuple[OriginationTarget, ...]  # by priority, then weight descending
    media_mode: str = "auto"  # one of MEDIA_MODES
    srtp: str = "off"  # one of SRTP_MODES (customer side; needs media_mode != "passthrough")


@dataclass(frozen=True, slots=True)
class CustomerState:
    id: int
    name: str
    active: bool
    out_of_credit: bool


@dataclass(frozen=True, slots=True)
class Credential:
    """A trunk's digest credential: HA1 values only, never a password."""

    trunk_id: int
    username: str
    realm: str
    ha1_md5: str
    ha1_sha256: str


@dataclass(frozen=True, slots=True)
class NumberRoute:
    """Who owns a DID and which trunk takes its calls (None: not routed to a trunk yet).

    Numbers with the same owner and trunk share one instance.
    """

    customer_id: int
    trunk_id: int | None


@dataclass(frozen=True, slots=True)
class Gateway:
    """One enabled signalling address of an enabled carrier."""

    id: int
    carrier_id: int
    host: str  # as configured: an IP literal (IPv6 without brackets) or a hostname
    port: int
    transport: str
    priority: int
    weight: int
    prefixes: tuple[str, ...]  # E.164 prefixes it takes; empty takes every destination
    tech_prefix: str
    strip_plus: bool
    srtp: bool = False  # SRTP (SDES) towards this gateway on anchored calls; absent: plain RTP


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


# --- validation helpers: each names the place of the problem -------------------------------


def _field(obj: Mapping[str, Any], key: str, where: str) -> Any:
    try:
        return obj[key]
    except KeyError:
        raise ConfigError(f"{where}: missing {key!r}") from None


def _object(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected an object, got {type(value).__name__}")
    return value


def _list(obj: Mapping[str, Any], key: str, where: str) -> list[Any]:
    value = _field(obj, key, where)
    if not isinstance(value, list):
        raise ConfigError(f"{where}.{key}: expected a list, got {type(value).__name__}")
    return value


def _int(
    obj: Mapping[str, Any], key: str, where: str, *, low: int = 0, high: int | None = None
) -> int:
    value = _field(obj, key, where)
    # bool is an int subclass; `true` is not a number of channels.
    if type(value) is not int or value < low or (high is not None and value > high):
        bounds = f"{low}..{high}" if high is not None else f">= {low}"
        raise ConfigError(f"{where}.{key}: expected an integer {bounds}, got {value!r}")
    return value


def _bool(obj: Mapping[str, Any], key: str, where: str) -> bool:
    value = _field(obj, key, where)
    if type(value) is not bool:
        raise ConfigError(f"{where}.{key}: expected true or false, got {value!r}")
    return value


def _str(obj: Mapping[str, Any], key: str, where: str, *, empty: bool = False) -> str:
    value = _field(obj, key, where)
    if not isinstance(value, str) or (not empty and not value):
        raise ConfigError(f"{where}.{key}: expected a non-empty string, got {value!r}")
    return value


def _choice(
    obj: Mapping[str, Any], key: str, where: str, choices: frozenset[str], default: str
) -> str:
    """An optional enumerated string: absent (an older snapshot) means `default`."""
    value = obj.get(key, default)
    if value not in choices:
        raise ConfigError(f"{where}.{key}: {value!r} is not one of {sorted(choices)}")
    return str(value)


def media_error(media_mode: str, srtp: str) -> str | None:
    """Why a trunk's media settings cannot work together, or None. The model validates with it."""
    if media_mode == "passthrough" and srtp != "off":
        return "SRTP on the customer side needs media anchoring (media_mode anchor or auto)"
    return None


def _is_prefix(value: Any) -> bool:
    """'+' and 1 to 15 ASCII digits: an E.164 prefix (a whole number is a prefix too)."""
    return (
        isinstance(value, str)
        and 2 <= len(value) <= 16
        and value[0] == "+"
        and _DIGITS.issuperset(value[1:])
    )


def _is_region(value: Any) -> bool:
    # Any two capital letters: a code this edge's phonenumbers does not know never matches,
    # which is better than refusing the whole snapshot over a newer region list.
    return isinstance(value, str) and len(value) == 2 and _REGION_LETTERS.issuperset(value)


def _prefixes(obj: Mapping[str, Any], key: str, where: str) -> tuple[str, ...]:
    items = _list(obj, key, where)
    for item in items:
        if not _is_prefix(item):
            raise ConfigError(f"{where}.{key}: {item!r} is not an E.164 prefix like '+44'")
    return tuple(dict.fromkeys(items))


def _host(value: Any, where: str) -> str:
    """A gateway host: an IP literal (brackets removed from IPv6) or a hostname."""
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: expected a host, got {value!r}")
    if value.startswith("["):
        if address_key(value) is None:
            raise ConfigError(f"{where}: {value!r} is not an IPv6 reference")
        return value[1:-1]
    if ":" in value:
        if address_key(value) is None:
            raise ConfigError(f"{where}: {value!r} is not a host (give the port separately)")
        return value
    if not all(ch.isascii() and (ch.isalnum() or ch in "-._") for ch in value):
        raise ConfigError(f"{where}: {value!r} is not a host")
    return value


@lru_cache(maxsize=_PARSE_CACHE_SIZE)
def _origination_address(text: str) -> tuple[str, int, str, str | None] | str:
    """(host, port, transport, user) of an origination URI, or why it is not one.

    Cached: consecutive snapshots repeat almost every URI, and parsing is most of the cost of
    compiling a trunk.
    """
    try:
        uri = parse_uri(text)
    except RemoteProtocolError as error:
        return f"{text!r} is not a SIP URI ({error.reason})"
    if uri.scheme not in ("sip", "sips"):
        return f"{text!r} is not a sip: or sips: URI"
    param = uri.params.get("transport")
    transport = (param or ("tls" if uri.scheme == "sips" else "udp")).lower()
    if transport not in TRANSPORTS or (uri.scheme == "sips" and transport == "udp"):
        return f"{text!r} has an unsupported transport {param!r}"
    if uri.scheme == "sips":
        transport = "tls"
    host = uri.host[1:-1] if uri.host.startswith("[") else uri.host
    port = uri.port if uri.port is not None else (5061 if transport == "tls" else 5060)
    return host, port, transport, uri.user


def _origination(item: Any, where: str) -> OriginationTarget:
    obj = _object(item, where)
    text = _str(obj, "uri", where)
    address = _origination_address(text)
    if isinstance(address, str):
        raise ConfigError(f"{where}.uri: {address}")
    host, port, transport, user = address
    return OriginationTarget(
        uri=text,
        host=host,
        port=port,
        transport=transport,
        priority=_int(obj, "priority", where, high=_MAX_PRIORITY),
        weight=_int(obj, "weight", where, high=_MAX_PRIORITY),
        user=user,
    )


def _customer(item: Any, where: str) -> CustomerState:
    obj = _object(item, where)
    return CustomerState(
        id=_int(obj, "id", where, low=1),
        name=_str(obj, "name", where, empty=True),
        active=_bool(obj, "active", where),
        out_of_credit=_bool(obj, "out_of_credit", where),
    )


def _trunk(obj: Mapping[str, Any], where: str) -> TrunkPolicy:
    destinations = _list(obj, "allowed_destinations", where)
    allowed_prefixes: list[str] = []
    allowed_countries: set[str] = set()
    for entry in destinations:
        if _is_prefix(entry):
            allowed_prefixes.append(entry)
        elif _is_region(entry):
            allowed_countries.add(entry)
        else:
            raise ConfigError(
                f"{where}.allowed_destinations: {entry!r} is neither an E.164 prefix ('+44') "
                "nor an ISO country code ('GB')"
            )
    caller_id_policy = _str(obj, "caller_id_policy", where)
    if caller_id_policy not in CALLER_ID_POLICIES:
        raise ConfigError(
            f"{where}.caller_id_policy: {caller_id_policy!r} is not one of "
            f"{sorted(CALLER_ID_POLICIES)}"
        )
    stop_codes = _list(obj, "failover_stop_codes", where)
    for code in stop_codes:
        if type(code) is not int or not 300 <= code <= 699:
            raise ConfigError(f"{where}.failover_stop_codes: {code!r} is not a SIP code 300-699")
    default_country = _str(obj, "default_country", where)
    if not _is_region(default_country):
        raise ConfigError(f"{where}.default_country: {default_country!r} is not an ISO code")
    origination = [
        _origination(item, f"{where}.origination_uris[{index}]")
        for index, item in enumerate(_list(obj, "origination_uris", where))
    ]
    origination.sort(key=lambda target: (target.priority, -target.weight))
    media_mode = _choice(obj, "media_mode", where, MEDIA_MODES, "auto")
    srtp = _choice(obj, "srtp", where, SRTP_MODES, "off")
    problem = media_error(media_mode, srtp)
    if problem is not None:
        raise ConfigError(f"{where}.srtp: {problem}")
    return TrunkPolicy(
        id=_int(obj, "id", where, low=1),
        customer_id=_int(obj, "customer", where, low=1),
        name=_str(obj, "name", where, empty=True),
        active=_bool(obj, "active", where),
        max_channels=_int(obj, "max_channels", where),
        max_cps=_int(obj, "max_cps", where),
        allowed_prefixes=tuple(dict.fromkeys(allowed_prefixes)),
        allowed_countries=frozenset(allowed_countries),
        blocked_prefixes=_prefixes(obj, "blocked_prefixes", where),
        caller_id_policy=caller_id_policy,
        failover_stop_codes=frozenset(stop_codes),
        registration_allowed=_bool(obj, "registration_allowed", where),
        default_country=default_country,
        max_call_duration=_int(obj, "max_call_duration", where, low=1),
        origination_uris=tuple(origination),
        media_mode=media_mode,
        srtp=srtp,
    )


def _gateway(item: Any, carrier_id: int, where: str) -> Gateway:
    obj = _object(item, where)
    transport = _str(obj, "transport", where)
    if transport not in TRANSPORTS:
        raise ConfigError(f"{where}.transport: {transport!r} is not one of {sorted(TRANSPORTS)}")
    tech_prefix = _str(obj, "tech_prefix", where, empty=True)
    # It goes in front of the number in the Request-URI user: nothing that would end the user
    # part or start a parameter (":", "@", ";", "?").
    if not all(ch.isascii() and (ch.isalnum() or ch in _TECH_PREFIX_MARKS) for ch in tech_prefix):
        raise ConfigError(
            f"{where}.tech_prefix: {tech_prefix!r} may hold letters, digits "
            f"and {_TECH_PREFIX_MARKS}"
        )
    return Gateway(
        id=_int(obj, "id", where, low=1),
        carrier_id=carrier_id,
        host=_host(_field(obj, "host", where), f"{where}.host"),
        port=_int(obj, "port", where, low=1, high=_MAX_PORT),
        transport=transport,
        priority=_int(obj, "priority", where, high=_MAX_PRIORITY),
        weight=_int(obj, "weight", where, high=_MAX_PRIORITY),
        prefixes=_prefixes(obj, "prefixes", where),
        tech_prefix=tech_prefix,
        strip_plus=_bool(obj, "strip_plus", where),
        srtp=_bool(obj, "srtp", where) if "srtp" in obj else False,
    )


def _ipv4_network(text: str) -> tuple[int, int, int] | None:
    """`_network` for plain "a.b.c.d[/n]", five times faster than ipaddress; else None."""
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
        return 32, 32, value
    if not (0 < len(length_text) <= 2 and _DIGITS.issuperset(length_text)):
        return None
    length = int(length_text)
    if length > 32:
        return None
    return 32, length, value >> (32 - length) << (32 - length)


@lru_cache(maxsize=_PARSE_CACHE_SIZE)
def _parse_network(entry: str) -> tuple[int, int, int] | None:
    """(bits, prefix length, network integer) of a CIDR, or None; cached like origination URIs."""
    fast = _ipv4_network(entry)
    if fast is not None:
        return fast
    try:
        network = ipaddress.ip_network(entry.strip(), strict=False)
    except ValueError:
        return None
    return network.max_prefixlen, network.prefixlen, int(network.network_address)


def _network(entry: Any, where: str) -> tuple[int, int, int]:
    """(bits, prefix length, network integer) of a CIDR; host bits are ignored."""
    if not isinstance(entry, str):
        raise ConfigError(f"{where}: expected a CIDR string, got {entry!r}")
    parsed = _parse_network(entry)
    if parsed is None:
        raise ConfigError(f"{where}: {entry!r} is not an IP network in CIDR notation")
    return parsed


# One family's ACL: (shift, {network >> shift: trunk}) from the longest prefix to the shortest.
_AclLevels = tuple[tuple[int, dict[int, TrunkPolicy]], ...]


def _acl_levels(by_length: dict[int, dict[int, TrunkPolicy]], bits: int) -> _AclLevels:
    return tuple((bits - length, by_length[length]) for length in sorted(by_length, reverse=True))


class EdgeConfig:
    """A compiled snapshot: read-only lookup tables, built by `EdgeConfig.compile(doc)`."""

    __slots__ = (
        "_acl4",
        "_acl6",
        "_carrier_addresses",
        "_catch_all_gateways",
        "_credentials",
        "_customer_numbers",
        "_gateway_lengths",
        "_gateways_by_prefix",
        "_number_routes",
        "_numbers",
        "_numbers_source",
        "_trunk_sources",
        "content_hash",
        "customers",
        "gateways",
        "generated_at",
        "realm",
        "trunks",
        "unresolved_gateway_hosts",
        "version",
    )

    version: int
    content_hash: str
    generated_at: str | None
    realm: str
    trunks: Mapping[int, TrunkPolicy]
    customers: Mapping[int, CustomerState]
    gateways: tuple[Gateway, ...]  # every gateway, by priority, weight descending, id
    unresolved_gateway_hosts: frozenset[str]  # gateway hostnames that are not IP literals
    _acl4: _AclLevels
    _acl6: _AclLevels
    _numbers_source: list[Any]  # the snapshot's numbers, to tell an unchanged list
    _trunk_sources: dict[int, Any]  # each trunk's object in the snapshot, likewise
    _number_routes: dict[tuple[int, int | None], NumberRoute]
    _credentials: dict[str, Credential]
    _numbers: dict[str, NumberRoute]
    _customer_numbers: dict[int, frozenset[str]]
    _gateways_by_prefix: dict[str, tuple[Gateway, ...]]
    _gateway_lengths: tuple[int, ...]
    _catch_all_gateways: tuple[Gateway, ...]
    _carrier_addresses: frozenset[tuple[int, int]]

    def __init__(self) -> None:
        raise TypeError("build an EdgeConfig with EdgeConfig.compile(doc)")

    def __repr__(self) -> str:
        return (
            f"<EdgeConfig v{self.version} {len(self.customers)} customers, "
            f"{len(self.trunks)} trunks, {len(self._numbers)} numbers, "
            f"{len(self.gateways)} gateways>"
        )

    # --- compiling ------------------------------------------------------------------------

    @classmethod
    def compile(cls, doc: Mapping[str, Any], previous: EdgeConfig | None = None) -> EdgeConfig:
        """Validate a decoded snapshot and build its lookup tables, or raise ConfigError.

        With `previous` (the config in use), tables whose source did not change are reused:
        most changes touch a trunk, not the 100,000 numbers, so a push compiles in half the
        time and allocates far less.
        """
        if not isinstance(doc, Mapping):
            raise ConfigError(f"snapshot: expected an object, got {type(doc).__name__}")
        schema = doc.get("schema")
        if schema != SCHEMA or type(schema) is not int:
            raise ConfigError(f"snapshot.schema: this edge reads schema {SCHEMA}, got {schema!r}")
        config: EdgeConfig = object.__new__(cls)
        config.version = _int(doc, "version", "snapshot")
        config.content_hash = _str(doc, "content_hash", "snapshot")
        generated_at = doc.get("generated_at")
        if generated_at is not None and not isinstance(generated_at, str):
            raise ConfigError(f"snapshot.generated_at: expected a string, got {generated_at!r}")
        config.generated_at = generated_at
        config.realm = _str(doc, "realm", "snapshot")

        customers: dict[int, CustomerState] = {}
        for index, item in enumerate(_list(doc, "customers", "snapshot")):
            customer = _customer(item, f"customers[{index}]")
            if customer.id in customers:
                raise ConfigError(f"customers[{index}]: duplicate customer id {customer.id}")
            customers[customer.id] = customer
        config.customers = MappingProxyType(customers)

        config._compile_trunks(_list(doc, "trunks", "snapshot"), customers, previous)
        config._compile_numbers(_list(doc, "numbers", "snapshot"), previous)
        config._compile_gateways(_list(doc, "carriers", "snapshot"))
        return config

    def _compile_trunks(
        self,
        items: list[Any],
        customers: Mapping[int, CustomerState],
        previous: EdgeConfig | None,
    ) -> None:
        before: Mapping[Any, Any] = previous._trunk_sources if previous is not None else {}
        sources: dict[int, Any] = {}
        trunks: dict[int, TrunkPolicy] = {}
        credentials: dict[str, Credential] = {}
        acl: dict[int, dict[int, dict[int, TrunkPolicy]]] = {32: {}, 128: {}}
        for index, item in enumerate(items):
            obj = _object(item, f"trunks[{index}]")
            where = f"trunks[{index}] (id {obj.get('id')!r})"
            # A trunk whose object is unchanged keeps its compiled policy (and identity).
            unchanged = previous is not None and before.get(obj.get("id"), None) == obj
            trunk = previous.trunks[obj["id"]] if previous and unchanged else _trunk(obj, where)
            sources[trunk.id] = obj
            if trunk.id in trunks:
                raise ConfigError(f"{where}: duplicate trunk id {trunk.id}")
            if trunk.customer_id not in customers:
                raise ConfigError(f"{where}.customer: no customer {trunk.customer_id}")
            trunks[trunk.id] = trunk
            for position, entry in enumerate(_list(obj, "acl", where)):
                bits, length, network = _network(entry, f"{where}.acl[{position}]")
                level = acl[bits].setdefault(length, {})
                key = network >> (bits - length)
                holder = level.get(key)
                if holder is not None and holder is not trunk:
                    raise ConfigError(
                        f"{where}.acl[{position}]: {entry!r} is also trunk {holder.id}'s network; "
                        "a source address must identify one trunk"
                    )
                level[key] = trunk
            for position, cred in enumerate(_list(obj, "credentials", where)):
                self._add_credential(credentials, trunk, cred, f"{where}.credentials[{position}]")
        self.trunks = MappingProxyType(trunks)
        self._trunk_sources = sources
        self._credentials = credentials
        self._acl4 = _acl_levels(acl[32], 32)
        self._acl6 = _acl_levels(acl[128], 128)

    def _add_credential(
        self, credentials: dict[str, Credential], trunk: TrunkPolicy, item: Any, where: str
    ) -> None:
        obj = _object(item, where)
        credential = Credential(
            trunk_id=trunk.id,
            username=_str(obj, "username", where),
            realm=_str(obj, "realm", where),
            ha1_md5=_str(obj, "ha1_md5", where),
            ha1_sha256=_str(obj, "ha1_sha256", where),
        )
        existing = credentials.get(credential.username)
        if existing is not None:
            # Usernames are unique per realm in the database; after a realm change an old
            # credential can share a username with a new one. The edge challenges in the
            # snapshot's realm only, so that one wins; two in the same realm is an error.
            if (existing.realm == self.realm) == (credential.realm == self.realm):
                raise ConfigError(
                    f"{where}: username {credential.username!r} is also a credential of trunk "
                    f"{existing.trunk_id}"
                )
            if existing.realm == self.realm:
                return
        credentials[credential.username] = credential

    def _compile_numbers(self, items: list[Any], previous: EdgeConfig | None) -> None:
        if previous is not None and previous._numbers_source == items:
            # The same numbers: their tables stand if every (customer, trunk) pair they use
            # is still valid under the new trunks and customers.
            for customer_id, trunk_id in previous._number_routes:
                self._check_route(customer_id, trunk_id, "numbers")
            self._numbers_source = previous._numbers_source
            self._number_routes = previous._number_routes
            self._numbers = previous._numbers
            self._customer_numbers = previous._customer_numbers
            return
        # The hot loop of compilation (100,000 numbers): checks are inlined and each distinct
        # (customer, trunk) pair is validated once and shared as one NumberRoute.
        routes: dict[tuple[int, int | None], NumberRoute] = {}
        numbers: dict[str, NumberRoute] = {}
        by_customer: dict[int, list[str]] = {}
        digits = _DIGITS
        for index, item in enumerate(items):
            try:
                e164, customer_id, trunk_id = item
            except (TypeError, ValueError):
                raise ConfigError(
                    f"numbers[{index}]: expected [E.164, customer id, trunk id or null], "
                    f"got {item!r}"
                ) from None
            if not (
                type(e164) is str
                and 3 <= len(e164) <= 16
                and e164[0] == "+"
                and e164[1] != "0"
                and digits.issuperset(e164[1:])
            ):
                raise ConfigError(f"numbers[{index}]: {e164!r} is not an E.164 number")
            if type(customer_id) is not int or (trunk_id is not None and type(trunk_id) is not int):
                raise ConfigError(
                    f"numbers[{index}] ({e164}): customer and trunk must be integer ids, "
                    f"got {customer_id!r}, {trunk_id!r}"
                )
            key = (customer_id, trunk_id)
            route = routes.get(key)
            if route is None:
                self._check_route(customer_id, trunk_id, f"numbers[{index}] ({e164})")
                route = routes[key] = NumberRoute(customer_id, trunk_id)
            if e164 in numbers:
                raise ConfigError(f"numbers[{index}]: duplicate number {e164}")
            numbers[e164] = route
            owned = by_customer.get(customer_id)
            if owned is None:
                by_customer[customer_id] = [e164]
            else:
                owned.append(e164)
        self._numbers_source = items
        self._number_routes = routes
        self._numbers = numbers
        self._customer_numbers = {cid: frozenset(owned) for cid, owned in by_customer.items()}

    def _check_route(self, customer_id: int, trunk_id: int | None, where: str) -> None:
        if customer_id not in self.customers:
            raise ConfigError(f"{where}: no customer {customer_id}")
        if trunk_id is not None:
            trunk = self.trunks.get(trunk_id)
            if trunk is None:
                raise ConfigError(f"{where}: no trunk {trunk_id}")
            if trunk.customer_id != customer_id:
                raise ConfigError(
                    f"{where}: trunk {trunk_id} belongs to customer {trunk.customer_id}, "
                    f"not to the number's customer {customer_id}"
                )

    def _compile_gateways(self, carriers: list[Any]) -> None:
        gateways: list[Gateway] = []
        carrier_ids: set[int] = set()
        gateway_ids: set[int] = set()
        for index, item in enumerate(carriers):
            obj = _object(item, f"carriers[{index}]")
            carrier_id = _int(obj, "id", f"carriers[{index}]", low=1)
            where = f"carriers[{index}] (id {carrier_id})"
            if carrier_id in carrier_ids:
                raise ConfigError(f"{where}: duplicate carrier id {carrier_id}")
            carrier_ids.add(carrier_id)
            for position, entry in enumerate(_list(obj, "gateways", where)):
                gateway = _gateway(entry, carrier_id, f"{where}.gateways[{position}]")
                if gateway.id in gateway_ids:
                    raise ConfigError(f"{where}.gateways[{position}]: duplicate id {gateway.id}")
                gateway_ids.add(gateway.id)
                gateways.append(gateway)
        gateways.sort(key=lambda gw: (gw.priority, -gw.weight, gw.id))
        self.gateways = tuple(gateways)

        # The gateways a number may use depend only on its longest configured prefix P: they
        # are the catch-all gateways plus those with a prefix that is a prefix of P. One table
        # entry per configured prefix, looked up from the longest length down.
        self._catch_all_gateways = tuple(gw for gw in gateways if not gw.prefixes)
        configured = {prefix for gw in gateways for prefix in gw.prefixes}
        self._gateways_by_prefix = {
            prefix: tuple(
                gw
                for gw in gateways
                if not gw.prefixes or any(prefix.startswith(own) for own in gw.prefixes)
            )
            for prefix in configured
        }
        self._gateway_lengths = tuple(sorted({len(prefix) for prefix in configured}, reverse=True))

        addresses: set[tuple[int, int]] = set()
        unresolved: set[str] = set()
        for gw in gateways:
            key = address_key(gw.host)
            if key is None:
                unresolved.add(gw.host)
            else:
                addresses.add(key)
        self._carrier_addresses = frozenset(addresses)
        self.unresolved_gateway_hosts = frozenset(unresolved)

    # --- lookups (hot path) ---------------------------------------------------------------

    def trunk(self, trunk_id: int) -> TrunkPolicy | None:
        return self.trunks.get(trunk_id)

    def customer(self, customer_id: int) -> CustomerState | None:
        return self.customers.get(customer_id)

    def customer_of(self, trunk: TrunkPolicy) -> CustomerState:
        """The trunk's customer: compiling checked that every trunk's customer exists."""
        return self.customers[trunk.customer_id]

    def trunk_for_source(self, ip: str) -> TrunkPolicy | None:
        """The trunk whose ACL holds `ip`, the most specific network winning; None if none."""
        key = address_key(ip)
        if key is None:
            return None
        bits, value = key
        for shift, table in self._acl4 if bits == 32 else self._acl6:
            trunk = table.get(value >> shift)
            if trunk is not None:
                return trunk
        return None

    def credential(self, username: str) -> Credential | None:
        return self._credentials.get(username)

    @property
    def has_credentials(self) -> bool:
        """Whether any trunk authenticates by digest (else unknown sources are refused)."""
        return bool(self._credentials)

    def number(self, e164: str) -> NumberRoute | None:
        return self._numbers.get(e164)

    def customer_numbers(self, customer_id: int) -> frozenset[str]:
        return self._customer_numbers.get(customer_id, frozenset())

    def gateways_for(self, e164: str) -> tuple[Gateway, ...]:
        """Gateways that take `e164`, by priority, weight descending, id."""
        table = self._gateways_by_prefix
        for length in self._gateway_lengths:
            found = table.get(e164[:length])
            if found is not None:
                return found
        return self._catch_all_gateways

    def is_carrier_source(self, ip: str) -> bool:
        """Whether `ip` is a gateway's address: a request from it is inbound carrier traffic.

        Gateways configured by hostname count only once their addresses are given to
        `with_resolved_hosts`; this module never resolves names.
        """
        key = address_key(ip)
        return key is not None and key in self._carrier_addresses

    def with_resolved_hosts(self, resolved: Mapping[str, Iterable[str]]) -> EdgeConfig:
        """A copy in which the given addresses of gateway hostnames count as carrier sources.

        `resolved` maps hostnames (from `unresolved_gateway_hosts`) to their IP addresses, as
        the runtime resolved them; other hostnames are ignored.
        """
        addresses = set(self._carrier_addresses)
        for host, ips in resolved.items():
            if host not in self.unresolved_gateway_hosts:
                continue
            for ip in ips:
                key = address_key(ip)
                if key is None:
                    raise ValueError(f"{host} resolved to {ip!r}, which is not an IP address")
                addresses.add(key)
        copy: EdgeConfig = object.__new__(EdgeConfig)
        for name in EdgeConfig.__slots__:
            object.__setattr__(copy, name, getattr(self, name))
        copy._carrier_addresses = frozenset(addresses)
        return copy
