"""The edge configuration snapshot: everything an edge needs to decide calls, from the database.

An edge never queries the ORM: it receives this document (as JSON) and compiles its own lookup
tables from it. The document is immutable and versioned; ``content_hash`` is the SHA-256 of the
canonical JSON of everything but ``version``, ``generated_at`` and the hash itself, so two
builds of the same configuration hash the same. The schema is documented in
``docs/snapshot.md``; bump ``SCHEMA`` when a change is not backward compatible.
"""

from __future__ import annotations

import hashlib
import logging
from collections import defaultdict
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

import orjson
from django.conf import settings
from django.db import connection, transaction
from django.db.models import TextField
from django.db.models.functions import Cast
from django.utils import timezone

from accounts.choices import CustomerStatus
from accounts.models import Customer
from billing.selectors import ZERO, balances_by_customer, out_of_credit
from edge import snapshot_wire
from edge.config import ConfigError, EdgeConfig

from .choices import NumberStatus, TrunkStatus
from .models import (
    Carrier,
    CarrierGateway,
    ConfigRevision,
    IpAclEntry,
    OriginationUri,
    PhoneNumber,
    SipCredential,
    Trunk,
)

logger = logging.getLogger(__name__)

SCHEMA = 1
TRUNK_FIELDS = (
    "id", "customer_id", "name", "status", "max_channels", "max_cps", "caller_id_policy",
    "registration_allowed", "default_country", "max_call_duration", "media_mode", "srtp",
)  # fmt: skip
TRUNK_JSON_FIELDS = ("allowed_destinations", "blocked_prefixes", "failover_stop_codes")
LARGE_CHUNK = 20_000  # rows per fetch for the big tables (Django's default is 2,000... or 100)
Snapshot = dict[str, Any]


def _grouped(rows: Any, key: str) -> dict[int, list[dict[str, Any]]]:
    groups: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[row.pop(key)].append(row)
    return groups


def _customers() -> list[dict[str, Any]]:
    """Every customer's object; out of credit by the billing app's one rule and balance."""
    balances = balances_by_customer()
    return [
        {
            "id": c["id"],
            "name": c["name"],
            "active": c["status"] == CustomerStatus.ACTIVE,
            "out_of_credit": out_of_credit(
                billing_mode=c["billing_mode"],
                credit_limit=c["credit_limit"],
                balance=balances.get(c["id"], ZERO),
            ),
        }
        for c in Customer.objects.order_by("id").values(
            "id", "name", "status", "billing_mode", "credit_limit"
        )
    ]


def _trunks(ids: Collection[int] | None = None) -> list[dict[str, Any]]:
    """Every trunk's object, by id; with ``ids``, only those trunks (that still exist)."""

    def only(queryset: Any, field: str = "trunk_id") -> Any:
        return queryset if ids is None else queryset.filter(**{f"{field}__in": ids})

    acl = _grouped(
        only(IpAclEntry.objects.order_by("trunk_id", "cidr"))
        .values("trunk_id", "cidr")
        .iterator(chunk_size=LARGE_CHUNK),
        "trunk_id",
    )
    credentials = _grouped(
        only(SipCredential.objects.order_by("trunk_id", "username"))
        .values("trunk_id", "username", "realm", "ha1_md5", "ha1_sha256")
        .iterator(chunk_size=LARGE_CHUNK),
        "trunk_id",
    )
    origination = _grouped(
        only(OriginationUri.objects.filter(enabled=True))
        .order_by("trunk_id", "priority", "-weight", "id")
        .values("trunk_id", "uri", "priority", "weight")
        .iterator(chunk_size=LARGE_CHUNK),
        "trunk_id",
    )
    # JSON columns come as text and are decoded with orjson: Django's per-value json.loads
    # was a third of the build time with 10,000 trunks.
    json_text = {f"{name}_json": Cast(name, TextField()) for name in TRUNK_JSON_FIELDS}
    trunks = []
    for t in (
        only(Trunk.objects.order_by("id"), "id")
        .annotate(**json_text)
        .values(*TRUNK_FIELDS, *json_text)
        .iterator(chunk_size=LARGE_CHUNK)
    ):
        trunks.append(
            {
                "id": t["id"],
                "customer": t["customer_id"],
                "name": t["name"],
                "active": t["status"] == TrunkStatus.ACTIVE,
                "max_channels": t["max_channels"],
                "max_cps": t["max_cps"],
                "allowed_destinations": orjson.loads(t["allowed_destinations_json"]),
                "blocked_prefixes": orjson.loads(t["blocked_prefixes_json"]),
                "caller_id_policy": t["caller_id_policy"],
                "failover_stop_codes": orjson.loads(t["failover_stop_codes_json"]),
                "registration_allowed": t["registration_allowed"],
                "default_country": t["default_country"],
                "max_call_duration": t["max_call_duration"],
                "media_mode": t["media_mode"],
                "srtp": t["srtp"],
                "acl": [row["cidr"] for row in acl.get(t["id"], [])],
                "credentials": credentials.get(t["id"], []),
                "origination_uris": origination.get(t["id"], []),
            }
        )
    return trunks


def _numbers() -> list[Any]:
    # Tuples straight from the cursor, in large chunks: this is the snapshot's biggest table.
    return list(
        PhoneNumber.objects.filter(status=NumberStatus.ACTIVE)
        .order_by("number")
        .values_list("number", "customer_id", "trunk_id")
        .iterator(chunk_size=LARGE_CHUNK)
    )


def _carriers() -> list[dict[str, Any]]:
    gateways = _grouped(
        CarrierGateway.objects.filter(enabled=True, carrier__enabled=True)
        .order_by("carrier_id", "priority", "-weight", "id")
        .values(
            "carrier_id",
            "id",
            "host",
            "port",
            "transport",
            "priority",
            "weight",
            "prefixes",
            "tech_prefix",
            "strip_plus",
            "srtp",
        ),
        "carrier_id",
    )
    return [{"id": carrier_id, "gateways": rows} for carrier_id, rows in sorted(gateways.items())]


SECTIONS = {"customers": _customers, "numbers": _numbers, "carriers": _carriers}


def _content() -> Snapshot:
    """The versionless content, read in a handful of queries (no per-row queries)."""
    return {
        "schema": SCHEMA,
        "realm": settings.SIP_REALM,
        "customers": _customers(),
        "trunks": _trunks(),
        "numbers": _numbers(),
        "carriers": _carriers(),
    }


def _patched(base: Snapshot, changes: Changes) -> Snapshot:
    """``base`` with what ``changes`` names read again: the sections whole, the trunks by id.
    Everything else is ``base``'s own objects (the delta to an edge is found by identity)."""
    content = {**base, "realm": settings.SIP_REALM}
    for section in changes.sections:
        content[section] = SECTIONS[section]()
    if changes.trunks:
        by_id = {trunk["id"]: trunk for trunk in base["trunks"]}
        for trunk_id in changes.trunks:
            by_id.pop(trunk_id, None)
        fresh = _trunks(changes.trunks)
        by_id.update((trunk["id"], trunk) for trunk in fresh)
        content["trunks"] = [by_id[trunk_id] for trunk_id in sorted(by_id)]
    return content


def content_hash(content: Snapshot) -> str:
    return hashlib.sha256(orjson.dumps(content, option=orjson.OPT_SORT_KEYS)).hexdigest()


@dataclass(frozen=True)
class Changes:
    """What changed since the last push, as the signals saw it (trunking/signals.py): whole
    sections (``customers``, ``numbers``, ``carriers``) and trunks by id; or everything
    (a bulk write, or nothing known)."""

    sections: frozenset[str] = frozenset()
    trunks: frozenset[int] = frozenset()
    everything: bool = False

    EVERYTHING_KEY: ClassVar[str] = "all"

    @classmethod
    def from_keys(cls, keys: Iterable[str]) -> Changes:
        """From the keys `change_keys` gives; no keys at all means nothing is known."""
        sections: set[str] = set()
        trunks: set[int] = set()
        for key in keys:
            kind, _, value = key.partition(":")
            if kind == "trunk" and value.isdigit():
                trunks.add(int(value))
            elif kind in SECTIONS and not value:
                sections.add(kind)
            else:  # "all", or a key this version does not know
                return cls(everything=True)
        if not sections and not trunks:
            return cls(everything=True)
        return cls(frozenset(sections), frozenset(trunks))


def change_keys(instance: Any, *, deleted: bool = False) -> list[str]:
    """The keys (for `Changes.from_keys`) of a saved or deleted object of an edge-relevant
    model: the trunk it belongs to, or its section."""
    if isinstance(instance, Trunk):
        # Deleting a trunk sets its numbers' trunk to NULL, behind the signals' back.
        return [f"trunk:{instance.pk}", *(["numbers"] if deleted else [])]
    if isinstance(instance, IpAclEntry | SipCredential | OriginationUri):
        return [f"trunk:{instance.trunk_id}"]
    if isinstance(instance, Customer):
        return ["customers"]
    if isinstance(instance, PhoneNumber):
        return ["numbers"]
    if isinstance(instance, Carrier | CarrierGateway):
        return ["carriers"]
    return [Changes.EVERYTHING_KEY]


@dataclass(frozen=True)
class Built:
    """A snapshot this process built: its content and version, the base of the next build."""

    version: int
    content_hash: str
    generated_at: str
    content: Snapshot

    @property
    def snapshot(self) -> Snapshot:
        return {
            **self.content,
            "version": self.version,
            "content_hash": self.content_hash,
            "generated_at": self.generated_at,
        }


_last_built: Built | None = None


BUILD_ATTEMPTS = 3
# Held while a revision is recorded (PostgreSQL advisory lock, to the transaction's end).
REVISION_LOCK = 0x7472756E6B  # "trunk"


def _read(changes: Changes | None, base: Built | None) -> tuple[Snapshot, tuple[int, str] | None]:
    """The content, from one consistent view of the database, and the latest revision in that
    view. A number read in one query must not point at a trunk deleted before the next query
    ran: PostgreSQL needs REPEATABLE READ for that; SQLite transactions have it. Inside a
    caller's transaction, that transaction's isolation applies."""
    outermost = not connection.in_atomic_block
    with transaction.atomic():
        if outermost and connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        seen = ConfigRevision.objects.order_by("-id").values_list("id", "content_hash").first()
        if (
            changes is not None
            and not changes.everything
            and base is not None
            and seen == (base.version, base.content_hash)
        ):
            return _patched(base.content, changes), seen
        return _content(), seen


def build(changes: Changes | None = None) -> tuple[Built, Built | None]:
    """The current snapshot, and the one this process built before it if the version moved
    (the base of a delta) -- a new version only if the content changed.

    With ``changes`` (what changed since this process's last build, which must still be the
    latest version) only those are read again: a trunk's change reads that trunk, not the
    10,000 others and the 100,000 numbers. Without, or if another process published since,
    everything is read. A build records its version only if no other was recorded since it
    read the database (one at a time); else it reads everything again: an older view must not
    become the latest version, nor a version miss another process's change.
    """
    global _last_built
    for attempt in range(BUILD_ATTEMPTS):
        base = _last_built
        content, seen = _read(changes, base)
        digest = content_hash(content)
        with transaction.atomic():
            if connection.vendor == "postgresql":
                with connection.cursor() as cursor:
                    cursor.execute("SELECT pg_advisory_xact_lock(%s)", [REVISION_LOCK])
            latest = ConfigRevision.objects.order_by("-id").first()
            now = None if latest is None else (latest.pk, latest.content_hash)
            if now != seen and attempt < BUILD_ATTEMPTS - 1:
                changes = None
                continue
            if latest is None or latest.content_hash != digest:
                latest = ConfigRevision.objects.create(content_hash=digest)
        break
    if base is not None and (base.version, base.content_hash) == (latest.pk, digest):
        return base, None  # nothing changed: the same version, the same bytes
    built = Built(latest.pk, digest, timezone.now().isoformat(), content)
    _last_built = built
    return built, base


def delta(base: Built, new: Built) -> dict[str, Any]:
    """What an edge on ``base`` needs to hold ``new`` (edge/snapshot_wire.py, `apply_delta`):
    the trunks that differ, the trunks that went, and any other section whole. Cheap: a build
    from changes shares the unchanged objects with its base, so most comparisons are identity."""
    replace = {
        key: value
        for key, value in new.content.items()
        if key != "trunks" and (key not in base.content or base.content[key] != value)
    }
    before = {trunk["id"]: trunk for trunk in base.content["trunks"]}
    upsert = []
    for trunk in new.content["trunks"]:
        old = before.pop(trunk["id"], None)
        if old is not trunk and old != trunk:
            upsert.append(trunk)
    return {
        "base_version": base.version,
        "version": new.version,
        "content_hash": new.content_hash,
        "generated_at": new.generated_at,
        "replace": replace,
        "trunks": upsert,
        "deleted_trunks": sorted(before),
    }


def last_built() -> Built | None:
    """The snapshot this process built last (it may no longer be the latest version)."""
    return _last_built


def build_snapshot() -> Snapshot:
    """The current snapshot, read whole, with its version."""
    return build()[0].snapshot


def encode(snapshot: Snapshot) -> bytes:
    """The snapshot as it travels to edges: lines, which they decode without stalling calls
    (edge/snapshot_wire.py)."""
    return snapshot_wire.encode_lines(snapshot)


# --- what the edges will leave out ------------------------------------------------------------

# The last snapshot compiled here, so the next check recompiles only what changed (as an edge
# does): 10,000 trunks and 100,000 numbers take about 0.5 s in full, under 0.1 s after one change.
_last_checked: EdgeConfig | None = None


def check_snapshot(snapshot: Snapshot) -> list[dict[str, Any]]:
    """What an edge leaves out of ``snapshot``, and why: the edge's own compiler decides.

    Rows the write-time rules refuse should never be stored; these are the ones that were
    anyway (stored before a rule existed, or by raw SQL). An edge applies everything else.
    A snapshot an edge would refuse whole gives one refusal of kind "snapshot".
    """
    global _last_checked
    try:
        config = EdgeConfig.compile(snapshot, _last_checked)
    except ConfigError as error:
        return [{"kind": "snapshot", "id": None, "field": "", "reason": str(error)}]
    _last_checked = config
    return [refusal.as_dict() for refusal in config.refusals]


def record_refusals(snapshot: Snapshot) -> list[dict[str, Any]]:
    """Check ``snapshot``'s version once and keep what it leaves out on its ConfigRevision
    (the admin and ``GET /api/v1/edge-nodes/`` show it). Returns the refusals."""
    revision = ConfigRevision.objects.filter(pk=snapshot["version"]).first()
    if revision is not None and revision.refusal_count is not None:
        return list(revision.refusals)
    refusals = check_snapshot(snapshot)
    ConfigRevision.objects.filter(pk=snapshot["version"]).update(
        refusals=refusals[: ConfigRevision.REFUSALS_KEPT], refusal_count=len(refusals)
    )
    if refusals:
        logger.warning(
            "config version %s leaves out %d object(s); first: %s",
            snapshot["version"],
            len(refusals),
            refusals[0]["reason"],
        )
    return refusals
