"""Snapshot documents for tests: a minimal valid one by default, with overrides.

    doc = snapshot_doc()  # customer 1, trunk 1, one number, one gateway
    doc = snapshot_doc(trunks=[trunk_doc(max_channels=1)])
    doc = snapshot_doc(trunks=[trunk_doc(), trunk_doc(id=2)], numbers=[["+14155550101", 1, 2]])
    config = compiled(gateways=[gateway_doc(prefixes=["+44"])])

Defaults: customer 1 "Acme" (active, in credit); trunk N ("pbx-N" of customer 1) accepts calls
from 127.0.x.y/32 where x.y is N (trunk 1: 127.0.0.1), has credential "pbxN" with password
`PASSWORD`, allows every destination, blocks +1900, requires the customer's numbers as
caller-ID and originates to sip:127.0.0.1:5070. Number +14155550100 belongs to customer 1 on
trunk 1. Gateway 1 of carrier 1 is 127.1.0.1:5080 over UDP for every destination (outside the
trunks' 127.0.0.0/16, so carrier and PBX traffic are told apart).

No Django: these build plain dicts, hashed the way `trunking/snapshot.py` hashes them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Any

import orjson

from edge.config import EdgeConfig

REALM = "trunkline"
PASSWORD = "secret"
NUMBER = "+14155550100"
GATEWAY_HOST = "127.1.0.1"
GATEWAY_PORT = 5080
ORIGINATION_URI = "sip:127.0.0.1:5070"

Doc = dict[str, Any]


def ha1(username: str, password: str = PASSWORD, realm: str = REALM) -> tuple[str, str]:
    """(MD5, SHA-256) HA1 of a username/password in a realm (RFC 7616)."""
    text = f"{username}:{realm}:{password}".encode()
    return hashlib.md5(text).hexdigest(), hashlib.sha256(text).hexdigest()


def credential_doc(username: str, password: str = PASSWORD, realm: str = REALM) -> Doc:
    md5, sha256 = ha1(username, password, realm)
    return {"username": username, "realm": realm, "ha1_md5": md5, "ha1_sha256": sha256}


def customer_doc(id: int = 1, **overrides: Any) -> Doc:
    doc: Doc = {"id": id, "name": "Acme" if id == 1 else f"Customer {id}", "active": True}
    doc["out_of_credit"] = False
    doc.update(overrides)
    return doc


def trunk_acl(trunk_id: int) -> str:
    """The default ACL of trunk `trunk_id`: 127.0.0.1/32 for trunk 1."""
    return f"127.0.{(trunk_id >> 8) & 255}.{trunk_id & 255}/32"


def trunk_doc(id: int = 1, customer: int = 1, **overrides: Any) -> Doc:
    doc: Doc = {
        "id": id,
        "customer": customer,
        "name": f"pbx-{id}",
        "active": True,
        "max_channels": 10,
        "max_cps": 5,
        "allowed_destinations": [],
        "blocked_prefixes": ["+1900"],
        "caller_id_policy": "customer_numbers",
        "failover_stop_codes": [404, 486, 600, 603],
        "registration_allowed": False,
        "default_country": "US",
        "max_call_duration": 14400,
        "acl": [trunk_acl(id)],
        "credentials": [credential_doc(f"pbx{id}")],
        "origination_uris": [origination_doc()],
    }
    doc.update(overrides)
    return doc


def origination_doc(uri: str = ORIGINATION_URI, priority: int = 10, weight: int = 100) -> Doc:
    return {"uri": uri, "priority": priority, "weight": weight}


def gateway_doc(id: int = 1, carrier: int = 1, **overrides: Any) -> Doc:
    """A gateway; `carrier` says which carrier `snapshot_doc` files it under."""
    doc: Doc = {
        "id": id,
        "carrier": carrier,
        "host": GATEWAY_HOST,
        "port": GATEWAY_PORT,
        "transport": "udp",
        "priority": 10,
        "weight": 100,
        "prefixes": [],
        "tech_prefix": "",
        "strip_plus": False,
    }
    doc.update(overrides)
    return doc


def content_hash(doc: Doc) -> str:
    """As trunking.snapshot.content_hash: everything but version, content_hash, generated_at."""
    content = {k: v for k, v in doc.items() if k not in ("version", "content_hash", "generated_at")}
    return hashlib.sha256(orjson.dumps(content, option=orjson.OPT_SORT_KEYS)).hexdigest()


def snapshot_doc(
    *,
    customers: Iterable[Doc] | None = None,
    trunks: Iterable[Doc] | None = None,
    numbers: Iterable[Sequence[Any]] | None = None,
    gateways: Iterable[Doc] | None = None,
    version: int = 1,
    realm: str = REALM,
) -> Doc:
    """A valid schema-1 snapshot; each argument replaces the default list whole.

    `gateways` are flat (`gateway_doc`) and grouped into carriers by their "carrier" key.
    """
    carriers: dict[int, list[Doc]] = {}
    for gateway in [gateway_doc()] if gateways is None else gateways:
        gateway = dict(gateway)
        carriers.setdefault(gateway.pop("carrier", 1), []).append(gateway)
    doc: Doc = {
        "schema": 1,
        "realm": realm,
        "customers": [customer_doc()] if customers is None else list(customers),
        "trunks": [trunk_doc()] if trunks is None else list(trunks),
        "numbers": [[NUMBER, 1, 1]] if numbers is None else [list(n) for n in numbers],
        "carriers": [
            {"id": carrier_id, "gateways": rows} for carrier_id, rows in sorted(carriers.items())
        ],
    }
    doc["version"] = version
    doc["content_hash"] = content_hash(doc)
    doc["generated_at"] = "2026-01-01T00:00:00+00:00"
    return doc


def compiled(**kwargs: Any) -> EdgeConfig:
    """`EdgeConfig.compile(snapshot_doc(**kwargs))`."""
    return EdgeConfig.compile(snapshot_doc(**kwargs))


def big_snapshot_doc(
    *, trunks: int = 10_000, numbers: int = 100_000, customers: int = 1_000
) -> Doc:
    """A production-sized snapshot: trunks spread over customers, numbers over trunks.

    Each trunk has an IPv4 /32, a /24 every tenth trunk, an IPv6 /64, a credential and an
    origination URI; every tenth trunk allows two countries and a prefix.
    """
    customer_docs = [customer_doc(id=c) for c in range(1, customers + 1)]
    trunk_docs = []
    for t in range(1, trunks + 1):
        acl = [f"10.{t >> 16 & 255}.{t >> 8 & 255}.{t & 255}/32", f"2001:db8:{t:x}::/64"]
        if t % 10 == 0:
            block = t // 10
            acl.append(f"172.{16 + (block >> 8 & 15)}.{block & 255}.0/24")
        trunk_docs.append(
            trunk_doc(
                id=t,
                customer=(t - 1) % customers + 1,
                acl=acl,
                credentials=[
                    {
                        "username": f"pbx{t}",
                        "realm": REALM,
                        "ha1_md5": f"{t:032x}",
                        "ha1_sha256": f"{t:064x}",
                    }
                ],
                origination_uris=[origination_doc(f"sip:pbx{t}.example.test:5060")],
                allowed_destinations=["+1", "GB", "IE"] if t % 10 == 0 else [],
            )
        )
    number_rows = []
    for n in range(numbers):
        t = n % trunks + 1
        number_rows.append([f"+1415{n:07d}", (t - 1) % customers + 1, t if n % 50 else None])
    gateway_docs = [
        gateway_doc(id=g, carrier=g % 5 + 1, host=f"198.51.100.{g}", prefixes=prefixes)
        for g, prefixes in enumerate(([], ["+1"], ["+44"], ["+4420"], ["+1", "+44"]) * 4, start=1)
    ]
    return snapshot_doc(
        customers=customer_docs, trunks=trunk_docs, numbers=number_rows, gateways=gateway_docs
    )
