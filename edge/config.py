"""The edge's compiled configuration: a snapshot document turned into lookup tables.

`EdgeConfig.compile(doc)` validates a schema-1 snapshot (`docs/snapshot.md`) and precomputes
every table a call needs, so that deciding a call is a handful of dict lookups: trunk by source
address (longest-prefix match over the populated prefix lengths only), credential by username,
number by E.164, gateways by the longest configured prefix of the number. Every value is
checked with `edge/validators.py`, the rules Django also applies on write. A document whose
structure is wrong is refused whole with a `ConfigError` that says what is wrong and where; an
object with a refused value (a trunk, an ACL entry, an origination URI, a credential, a number,
a gateway) is left out with what depends on it, and listed in `refusals`, so one bad row never
stops the rest of the configuration. A compiled config is never modified
(`with_resolved_hosts` returns a new one), so the runtime swaps configs by replacing one
reference.

Nothing here does I/O, reads a clock, resolves names or imports Django: the document comes in
as a decoded dict, tables come out.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, TypeVar

from edge import validators
from edge.slices import Steps, run_to_end
from edge.validators import CALLER_ID_POLICIES, TRANSPORTS, address_key

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
    "Refusal",
    "TrunkPolicy",
    "address_key",
    "media_error",
]

SCHEMA = 1
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
_T = TypeVar("_T")


class ConfigError(ValueError):
    """The snapshot, or one object of it, is malformed. Raised out of `EdgeConfig.compile`
    only for the document's structure (schema, version, customers, duplicate ids): then it is
    refused whole and the previous config stays in force. `field` names the refused field."""

    def __init__(self, message: str, *, field: str = "") -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True, slots=True)
class Refusal:
    """One object of a snapshot that the edge left out, and why; the rest was applied.

    `kind` is "trunk", "acl", "origination_uri", "credential", "number" or "gateway"; `id`
    is the trunk's id for a trunk and what hangs under it, the gateway's id, or the number;
    `field` is the refused field; `reason` says what and where in the document.
    """

    kind: str
    id: int | str | None
    field: str
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "id": self.id, "field": self.field, "reason": self.reason}


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


# --- validation helpers: each names the place of the problem -------------------------------


def _field(obj: Mapping[str, Any], key: str, where: str) -> Any:
    try:
        return obj[key]
    except KeyError:
        raise ConfigError(f"{where}: missing {key!r}", field=key) from None


def _object(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected an object, got {type(value).__name__}")
    return value


def _list(obj: Mapping[str, Any], key: str, where: str) -> list[Any]:
    value = _field(obj, key, where)
    if not isinstance(value, list):
        raise ConfigError(f"{where}.{key}: expected a list, got {type(value).__name__}", field=key)
    return value


def _int(
    obj: Mapping[str, Any], key: str, where: str, *, low: int = 0, high: int | None = None
) -> int:
    value = _field(obj, key, where)
    # bool is an int subclass; `true` is not a number of channels.
    if type(value) is not int or value < low or (high is not None and value > high):
        bounds = f"{low}..{high}" if high is not None else f">= {low}"
        raise ConfigError(f"{where}.{key}: expected an integer {bounds}, got {value!r}", field=key)
    return value


def _bool(obj: Mapping[str, Any], key: str, where: str) -> bool:
    value = _field(obj, key, where)
    if type(value) is not bool:
        raise ConfigError(f"{where}.{key}: expected true or false, got {value!r}", field=key)
    return value


def _str(obj: Mapping[str, Any], key: str, where: str, *, empty: bool = False) -> str:
    value = _field(obj, key, where)
    if not isinstance(value, str) or (not empty and not value):
        raise ConfigError(f"{where}.{key}: expected a non-empty string, got {value!r}", field=key)
    return value


def _valid(check: Callable[[Any], _T], value: Any, where: str, field: str) -> _T:
    """`check(value)` (one of edge.validators), its InvalidValue turned into a ConfigError
    about `where`.`field` (formatted only then: this runs for every value of a snapshot)."""
    try:
        return check(value)
    except validators.InvalidValue as error:
        raise ConfigError(f"{where}.{field}: {error.message}", field=field) from None


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


def _prefixes(obj: Mapping[str, Any], key: str, where: str) -> tuple[str, ...]:
    items = _list(obj, key, where)
    for item in items:
        _valid(validators.e164_prefix, item, where, key)
    return tuple(dict.fromkeys(items))


def _origination(item: Any, where: str) -> OriginationTarget:
    obj = _object(item, where)
    text = _str(obj, "uri", where)
    host, port, transport, user = _valid(validators.origination_uri, text, where, "uri")
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


def _trunk(obj: Mapping[str, Any], where: str, refusals: list[Refusal]) -> TrunkPolicy:
    """The trunk's policy; an origination URI the edge refuses is left out (in `refusals`),
    any other refused value refuses the trunk (ConfigError)."""
    trunk_id = _int(obj, "id", where, low=1)
    allowed_prefixes: list[str] = []
    allowed_countries: set[str] = set()
    for entry in _list(obj, "allowed_destinations", where):
        is_prefix, value = _valid(validators.destination, entry, where, "allowed_destinations")
        (allowed_prefixes.append if is_prefix else allowed_countries.add)(value)
    caller_id_policy = _valid(
        validators.caller_id_policy,
        _str(obj, "caller_id_policy", where),
        where,
        "caller_id_policy",
    )
    stop_codes = [
        _valid(validators.failover_code, code, where, "failover_stop_codes")
        for code in _list(obj, "failover_stop_codes", where)
    ]
    default_country = _valid(
        validators.region,
        _str(obj, "default_country", where),
        where,
        "default_country",
    )
    origination = []
    for index, item in enumerate(_list(obj, "origination_uris", where)):
        try:
            origination.append(_origination(item, f"{where}.origination_uris[{index}]"))
        except ConfigError as error:
            refusals.append(Refusal("origination_uri", trunk_id, "origination_uris", str(error)))
    origination.sort(key=lambda target: (target.priority, -target.weight))
    media_mode = _choice(obj, "media_mode", where, MEDIA_MODES, "auto")
    srtp = _choice(obj, "srtp", where, SRTP_MODES, "off")
    problem = media_error(media_mode, srtp)
    if problem is not None:
        raise ConfigError(f"{where}.srtp: {problem}", field="srtp")
    return TrunkPolicy(
        id=trunk_id,
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


def _gateway(obj: Mapping[str, Any], carrier_id: int, where: str) -> Gateway:
    return Gateway(
        id=_int(obj, "id", where, low=1),
        carrier_id=carrier_id,
        host=_valid(validators.gateway_host, _field(obj, "host", where), where, "host"),
        port=_int(obj, "port", where, low=1, high=_MAX_PORT),
        transport=_valid(validators.transport, _str(obj, "transport", where), where, "transport"),
        priority=_int(obj, "priority", where, high=_MAX_PRIORITY),
        weight=_int(obj, "weight", where, high=_MAX_PRIORITY),
        prefixes=_prefixes(obj, "prefixes", where),
        tech_prefix=_valid(
            validators.tech_prefix,
            _str(obj, "tech_prefix", where, empty=True),
            where,
            "tech_prefix",
        ),
        strip_plus=_bool(obj, "strip_plus", where),
        srtp=_bool(obj, "srtp", where) if "srtp" in obj else False,
    )


# Lists this long are compared a slice at a time (`_same_items`).
_COMPARE_SLICE = 2_000
# Steps of a compile (edge/slices.py): a yield after this many trunks, and numbers.
_TRUNKS_PER_STEP = 4
_NUMBERS_PER_STEP = 256


def _same_items(old: list[Any], new: list[Any]) -> Steps[bool]:
    """`old == new`, a slice at a time: one comparison of two 100,000-number lists is one C
    call of 15-20 ms (measured), a stall of the event loop that runs the compile."""
    if old is new:
        return True
    if len(old) != len(new):
        return False
    step = _COMPARE_SLICE
    for start in range(0, len(old), step):
        if old[start : start + step] != new[start : start + step]:
            return False
        yield
    return True


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
        "_left_out_trunks",
        "_number_refusals",
        "_number_routes",
        "_numbers",
        "_numbers_source",
        "_trunk_sources",
        "content_hash",
        "customers",
        "gateways",
        "generated_at",
        "realm",
        "refusals",
        "source",
        "trunks",
        "unresolved_gateway_hosts",
        "version",
    )

    version: int
    content_hash: str
    generated_at: str | None
    realm: str
    source: Mapping[str, Any]  # the document compiled: the base a delta applies to
    trunks: Mapping[int, TrunkPolicy]
    customers: Mapping[int, CustomerState]
    gateways: tuple[Gateway, ...]  # every gateway, by priority, weight descending, id
    unresolved_gateway_hosts: frozenset[str]  # gateway hostnames that are not IP literals
    refusals: tuple[Refusal, ...]  # what was left out, and why
    _acl4: _AclLevels
    _acl6: _AclLevels
    _numbers_source: list[Any]  # the snapshot's numbers, to tell an unchanged list
    _trunk_sources: dict[int, Any]  # each cleanly compiled trunk's object, likewise
    _left_out_trunks: frozenset[int]  # trunks refused whole: their numbers route nowhere
    _number_routes: dict[tuple[int, int | None], NumberRoute]
    _number_refusals: tuple[Refusal, ...]
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
            f"{len(self.gateways)} gateways, {len(self.refusals)} refused>"
        )

    # --- compiling ------------------------------------------------------------------------

    @classmethod
    def compile(cls, doc: Mapping[str, Any], previous: EdgeConfig | None = None) -> EdgeConfig:
        """Validate a decoded snapshot and build its lookup tables (`compile_steps` at once).

        Raises ConfigError if the document's structure is wrong; an object with a refused
        value is left out and listed in `refusals`. With `previous` (the config in use),
        tables whose source did not change are reused: most changes touch a trunk, not the
        100,000 numbers, so a push compiles in half the time and allocates far less.
        """
        return run_to_end(cls.compile_steps(doc, previous))

    @classmethod
    def compile_steps(
        cls, doc: Mapping[str, Any], previous: EdgeConfig | None = None
    ) -> Steps[EdgeConfig]:
        """`compile` in steps of a few trunks or a few hundred numbers (edge/slices.py)."""
        if not isinstance(doc, Mapping):
            raise ConfigError(f"snapshot: expected an object, got {type(doc).__name__}")
        schema = doc.get("schema")
        if schema != SCHEMA or type(schema) is not int:
            raise ConfigError(f"snapshot.schema: this edge reads schema {SCHEMA}, got {schema!r}")
        config: EdgeConfig = object.__new__(cls)
        config.source = doc
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

        refusals: list[Refusal] = []
        # Gateways first: a trunk's ACL may not hold a carrier's address.
        config._compile_gateways(_list(doc, "carriers", "snapshot"), refusals)
        yield from config._compile_trunks(
            _list(doc, "trunks", "snapshot"), customers, previous, refusals
        )
        yield from config._compile_numbers(_list(doc, "numbers", "snapshot"), previous)
        config.refusals = (*refusals, *config._number_refusals)
        return config

    def _compile_trunks(
        self,
        items: list[Any],
        customers: Mapping[int, CustomerState],
        previous: EdgeConfig | None,
        refusals: list[Refusal],
    ) -> Steps[None]:
        before: Mapping[Any, Any] = previous._trunk_sources if previous is not None else {}
        sources: dict[int, Any] = {}
        trunks: dict[int, TrunkPolicy] = {}
        left_out: set[int] = set()
        credentials: dict[str, Credential] = {}
        # Source networks by family and prefix length, as the lookups read them; a network two
        # trunks hold goes in `shared` (both are left out, below).
        tables: dict[int, dict[int, dict[int, TrunkPolicy]]] = {32: {}, 128: {}}
        shared: dict[validators.Network, set[int]] = {}
        parse_network = validators.network
        for index, item in enumerate(items):
            if index % _TRUNKS_PER_STEP == 0:
                yield
            obj = _object(item, f"trunks[{index}]")
            trunk_id = _int(obj, "id", f"trunks[{index}]", low=1)
            where = f"trunks[{index}] (id {trunk_id})"
            if trunk_id in trunks or trunk_id in left_out:
                raise ConfigError(f"{where}: duplicate trunk id {trunk_id}")
            # A trunk whose object is unchanged keeps its compiled policy (and identity).
            if (
                previous is not None
                and before.get(trunk_id) == obj
                and previous.trunks[trunk_id].customer_id in customers
            ):
                trunk = previous.trunks[trunk_id]
                acl, credential_items = obj["acl"], obj["credentials"]
                clean = True
            else:
                own: list[Refusal] = []
                try:
                    trunk = _trunk(obj, where, own)
                    acl = _list(obj, "acl", where)
                    credential_items = _list(obj, "credentials", where)
                    if trunk.customer_id not in customers:
                        raise ConfigError(
                            f"{where}.customer: no customer {trunk.customer_id}", field="customer"
                        )
                except ConfigError as error:
                    refusals.append(Refusal("trunk", trunk_id, error.field, str(error)))
                    left_out.add(trunk_id)
                    continue
                refusals.extend(own)
                clean = not own
            trunks[trunk_id] = trunk
            if clean:
                sources[trunk_id] = obj
            for position, entry in enumerate(acl):
                try:
                    net = parse_network(entry)
                except validators.InvalidValue as error:
                    reason = f"{where}.acl[{position}]: {error.message}"
                    refusals.append(Refusal("acl", trunk_id, "acl", reason))
                    continue
                bits, length, value = net
                level = tables[bits].get(length)
                if level is None:
                    level = tables[bits][length] = {}
                holder = level.setdefault(value >> (bits - length), trunk)
                if holder is not trunk:
                    shared.setdefault(net, {holder.id}).add(trunk_id)
            for position, cred in enumerate(credential_items):
                at = f"{where}.credentials[{position}]"
                try:
                    self._add_credential(credentials, trunk, cred, at)
                except ConfigError as error:
                    refusals.append(Refusal("credential", trunk_id, error.field, str(error)))
        self.trunks = MappingProxyType(trunks)
        self._trunk_sources = sources
        self._left_out_trunks = frozenset(left_out)
        self._credentials = credentials
        self._finish_acl(items, tables, shared, refusals)

    def _finish_acl(
        self,
        items: list[Any],
        acl: dict[int, dict[int, dict[int, TrunkPolicy]]],
        shared: dict[validators.Network, set[int]],
        refusals: list[Refusal],
    ) -> None:
        """The source-address tables, without the networks the edge refuses: one held by two
        trunks is left out of both (the edge cannot tell whose a call is), and so is one that
        holds a carrier gateway's address (a carrier's calls are never a trunk's). Nested
        networks of different trunks stay: the most specific one wins (Django refuses them on
        write)."""
        why: dict[validators.Network, str] = {}
        for net in shared:
            bits, length, value = net
            del acl[bits][length][value >> (bits - length)]
            why[net] = "is also trunk {other}'s network; a source address must identify one trunk"
        for bits, address in self._carrier_addresses:
            for length, level in acl[bits].items():
                key = address >> (bits - length)
                if key in level:
                    del level[key]
                    net = validators.Network(bits, length, key << (bits - length))
                    why[net] = "holds a carrier gateway's address"
        if why:
            # Rare: find the refused entries again to say where they are.
            for index, item in enumerate(items):
                trunk = self.trunks.get(item.get("id"))
                if trunk is None:
                    continue
                for position, entry in enumerate(item["acl"]):
                    try:
                        net = validators.network(entry)
                    except validators.InvalidValue:
                        continue
                    if net not in why:
                        continue
                    holders = shared.get(net, {trunk.id, 0})
                    text = why[net].format(other=min(holders - {trunk.id}))
                    reason = f"trunks[{index}] (id {trunk.id}).acl[{position}]: {entry!r} {text}"
                    refusals.append(Refusal("acl", trunk.id, "acl", reason))
        self._acl4 = _acl_levels({k: v for k, v in acl[32].items() if v}, 32)
        self._acl6 = _acl_levels({k: v for k, v in acl[128].items() if v}, 128)

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
                    f"{existing.trunk_id}",
                    field="username",
                )
            if existing.realm == self.realm:
                return
        credentials[credential.username] = credential

    def _compile_numbers(self, items: list[Any], previous: EdgeConfig | None) -> Steps[None]:
        if (
            previous is not None
            and (yield from _same_items(previous._numbers_source, items))
            and previous._left_out_trunks == self._left_out_trunks
            # The same numbers: their tables stand if every (customer, trunk) pair they use
            # is still valid under the new trunks and customers.
            and all(
                self._route_problem(customer_id, trunk_id) is None
                for customer_id, trunk_id in previous._number_routes
            )
        ):
            self._numbers_source = previous._numbers_source
            self._number_routes = previous._number_routes
            self._number_refusals = previous._number_refusals
            self._numbers = previous._numbers
            self._customer_numbers = previous._customer_numbers
            return
        # The hot loop of compilation (100,000 numbers): each distinct (customer, trunk) pair
        # is validated once and shared as one NumberRoute.
        routes: dict[tuple[int, int | None], NumberRoute] = {}
        bad_routes: dict[tuple[int, int | None], str] = {}
        numbers: dict[str, NumberRoute] = {}
        by_customer: dict[int, list[str]] = {}
        refusals: list[Refusal] = []
        left_out = self._left_out_trunks
        e164_match = validators.E164_NUMBER.fullmatch  # validators.is_e164_number, inlined
        for index, item in enumerate(items):
            if index % _NUMBERS_PER_STEP == 0:
                yield
            try:
                e164, customer_id, trunk_id = item
            except (TypeError, ValueError):
                reason = (
                    f"numbers[{index}]: expected [E.164, customer id, trunk id or null], "
                    f"got {item!r}"
                )
                refusals.append(Refusal("number", None, "number", reason))
                continue
            if type(e164) is not str or e164_match(e164) is None:
                reason = f"numbers[{index}]: {e164!r} is not an E.164 number"
                refusals.append(Refusal("number", str(e164), "number", reason))
                continue
            if type(customer_id) is not int or (trunk_id is not None and type(trunk_id) is not int):
                reason = (
                    f"numbers[{index}] ({e164}): customer and trunk must be integer ids, "
                    f"got {customer_id!r}, {trunk_id!r}"
                )
                refusals.append(Refusal("number", e164, "trunk", reason))
                continue
            if trunk_id in left_out:
                trunk_id = None  # the trunk was refused: the number is owned, routed nowhere
            key = (customer_id, trunk_id)
            route = routes.get(key)
            if route is None:
                problem = bad_routes.get(key)
                if problem is None:
                    problem = self._route_problem(customer_id, trunk_id)
                if problem is not None:
                    bad_routes[key] = problem
                    field = "trunk" if "trunk" in problem else "customer"
                    refusals.append(
                        Refusal("number", e164, field, f"numbers[{index}] ({e164}): {problem}")
                    )
                    continue
                route = routes[key] = NumberRoute(customer_id, trunk_id)
            if e164 in numbers:
                reason = f"numbers[{index}]: duplicate number {e164}"
                refusals.append(Refusal("number", e164, "number", reason))
                continue
            numbers[e164] = route
            owned = by_customer.get(customer_id)
            if owned is None:
                by_customer[customer_id] = [e164]
            else:
                owned.append(e164)
        self._numbers_source = items
        self._number_routes = routes
        self._number_refusals = tuple(refusals)
        self._numbers = numbers
        customer_numbers: dict[int, frozenset[str]] = {}
        done = 0
        for cid, owned in by_customer.items():
            customer_numbers[cid] = frozenset(owned)
            done += len(owned)
            if done >= _NUMBERS_PER_STEP:
                done = 0
                yield
        self._customer_numbers = customer_numbers

    def _route_problem(self, customer_id: int, trunk_id: int | None) -> str | None:
        """Why a number of `customer_id` cannot route to `trunk_id`, or None if it can."""
        if customer_id not in self.customers:
            return f"no customer {customer_id}"
        if trunk_id is not None:
            trunk = self.trunks.get(trunk_id)
            if trunk is None:
                return f"no trunk {trunk_id}"
            if trunk.customer_id != customer_id:
                return (
                    f"trunk {trunk_id} belongs to customer {trunk.customer_id}, "
                    f"not to the number's customer {customer_id}"
                )
        return None

    def _compile_gateways(self, carriers: list[Any], refusals: list[Refusal]) -> None:
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
                at = f"{where}.gateways[{position}]"
                gateway_obj = _object(entry, at)
                gateway_id = _int(gateway_obj, "id", at, low=1)
                if gateway_id in gateway_ids:
                    raise ConfigError(f"{at}: duplicate id {gateway_id}")
                gateway_ids.add(gateway_id)
                try:
                    gateways.append(_gateway(gateway_obj, carrier_id, at))
                except ConfigError as error:
                    refusals.append(Refusal("gateway", gateway_id, error.field, str(error)))
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
