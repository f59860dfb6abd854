"""The edge configuration snapshot: everything an edge needs to decide calls, from the database.

An edge never queries the ORM: it receives this document (as JSON) and compiles its own lookup
tables from it. The document is immutable and versioned; ``content_hash`` is the SHA-256 of the
canonical JSON of everything but ``version``, ``generated_at`` and the hash itself, so two
builds of the same configuration hash the same. The schema is documented in
``docs/snapshot.md``; bump ``SCHEMA`` when a change is not backward compatible.
"""

import hashlib
from collections import defaultdict
from typing import Any

import orjson
from django.conf import settings
from django.db import connection, transaction
from django.db.models import TextField
from django.db.models.functions import Cast
from django.utils import timezone

from accounts.choices import CustomerStatus
from accounts.models import Customer
from edge import snapshot_wire

from .choices import NumberStatus, TrunkStatus
from .models import (
    CarrierGateway,
    ConfigRevision,
    IpAclEntry,
    OriginationUri,
    PhoneNumber,
    SipCredential,
    Trunk,
)

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


def _content() -> Snapshot:
    """The versionless content, read in a handful of queries (no per-row queries)."""
    customers = [
        {
            "id": c["id"],
            "name": c["name"],
            "active": c["status"] == CustomerStatus.ACTIVE,
            # Balances arrive with the billing app; until then no customer is out of credit.
            "out_of_credit": False,
        }
        for c in Customer.objects.order_by("id").values("id", "name", "status")
    ]
    acl = _grouped(
        IpAclEntry.objects.order_by("trunk_id", "cidr")
        .values("trunk_id", "cidr")
        .iterator(chunk_size=LARGE_CHUNK),
        "trunk_id",
    )
    credentials = _grouped(
        SipCredential.objects.order_by("trunk_id", "username")
        .values("trunk_id", "username", "realm", "ha1_md5", "ha1_sha256")
        .iterator(chunk_size=LARGE_CHUNK),
        "trunk_id",
    )
    origination = _grouped(
        OriginationUri.objects.filter(enabled=True)
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
        Trunk.objects.order_by("id")
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
    # Tuples straight from the cursor, in large chunks: this is the snapshot's biggest table.
    numbers = list(
        PhoneNumber.objects.filter(status=NumberStatus.ACTIVE)
        .order_by("number")
        .values_list("number", "customer_id", "trunk_id")
        .iterator(chunk_size=LARGE_CHUNK)
    )
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
    carriers = [
        {"id": carrier_id, "gateways": rows} for carrier_id, rows in sorted(gateways.items())
    ]
    return {
        "schema": SCHEMA,
        "realm": settings.SIP_REALM,
        "customers": customers,
        "trunks": trunks,
        "numbers": numbers,
        "carriers": carriers,
    }


def content_hash(content: Snapshot) -> str:
    return hashlib.sha256(orjson.dumps(content, option=orjson.OPT_SORT_KEYS)).hexdigest()


def _read_content() -> Snapshot:
    """`_content` from one consistent view of the database: a number read in one query must
    not point at a trunk deleted before the next query ran (the edge would refuse the whole
    snapshot). PostgreSQL needs REPEATABLE READ for that; SQLite transactions have it. Inside
    a caller's transaction, that transaction's isolation applies."""
    outermost = not connection.in_atomic_block
    with transaction.atomic():
        if outermost and connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        return _content()


def build_snapshot() -> Snapshot:
    """The current snapshot, with its version: a new version only if the content changed."""
    content = _read_content()
    digest = content_hash(content)
    with transaction.atomic():
        latest = ConfigRevision.objects.select_for_update().order_by("-id").first()
        if latest is None or latest.content_hash != digest:
            latest = ConfigRevision.objects.create(content_hash=digest)
    return {
        **content,
        "version": latest.pk,
        "content_hash": digest,
        "generated_at": timezone.now().isoformat(),
    }


def encode(snapshot: Snapshot) -> bytes:
    """The snapshot as it travels to edges: lines, which they decode without stalling calls
    (edge/snapshot_wire.py)."""
    return snapshot_wire.encode_lines(snapshot)
