"""List endpoints run the same number of queries whatever the page size (no N+1).

The fixture gives every listed object related rows of its own (its own customer, member, key,
actor, trunk, gateways...), and the pages compared hold 2 and 12 objects, so a query per object
changes the count; `test_a_query_per_object_is_caught` proves it for the related rows the
viewsets fetch ahead.
"""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from accounts import audit
from accounts.api import views as account_views
from accounts.choices import AuditAction, Role
from accounts.models import AuditEntry, Customer, Membership, User
from accounts.services import api_key_create
from core.tenancy import SYSTEM, Caller
from trunking.api import views as trunking_views
from trunking.models import (
    Carrier,
    CarrierGateway,
    EdgeNode,
    IpAclEntry,
    OriginationUri,
    PhoneNumber,
    SipCredential,
    Trunk,
)

ITEMS = 12


@pytest.fixture
def many(db):
    for i in range(ITEMS):
        customer = Customer.objects.create(name=f"customer {i}")
        user = User.objects.create_user(f"user{i}", f"user{i}@example.test", "pw-123456789")
        Membership.objects.create(user=user, customer=customer, role=Role.ADMIN)
        key = api_key_create(actor=SYSTEM, customer=customer, name=f"key {i}").api_key
        trunk = Trunk.objects.create(customer=customer, name=f"t{i}")
        for j in range(1 + i % 3):  # related rows differ in number too
            IpAclEntry.objects.create(trunk=trunk, cidr=f"10.{i}.{j}.0/24")
            OriginationUri.objects.create(trunk=trunk, uri=f"sip:pbx{i}-{j}.test")
        SipCredential.objects.create(
            trunk=trunk, username=f"u{i}", realm="trunkline", ha1_md5="0" * 32, ha1_sha256="0" * 64
        )
        number = PhoneNumber.objects.create(
            customer=customer, trunk=trunk if i % 2 else None, number=f"+1415555{i:04d}"
        )
        carrier = Carrier.objects.create(name=f"c{i}")
        for j in range(1 + i % 3):
            CarrierGateway.objects.create(carrier=carrier, host=f"gw{i}-{j}.test")
        EdgeNode.objects.create(name=f"edge-{i}", control_url=f"http://127.0.0.1:{9000 + i}")
        # Each entry has its own actor and key, on objects of different types.
        caller = Caller(user=user, api_key=key, customer=customer, role=Role.ADMIN, is_staff=False)
        audit.record(actor=caller, obj=trunk if i % 2 else number, action=AuditAction.CREATE)


PATHS = [
    "trunks",
    "acl-entries",
    "credentials",
    "origination-uris",
    "numbers",
    "carriers",
    "carrier-gateways",
    "edge-nodes",
    "audit-log",
    "users",
    "api-keys",
    "customers",
]


def query_counts(client, path: str) -> list[int]:
    """Queries for a page of 2 and a page of 12 objects (checked to hold that many)."""
    counts = []
    for size in (2, ITEMS):
        with CaptureQueriesContext(connection) as ctx:
            response = client.get(f"/api/v1/{path}/?page_size={size}")
        assert response.status_code == 200, response.content
        assert len(response.json()["results"]) == size, path
        counts.append(len(ctx))
    return counts


@pytest.mark.parametrize("path", PATHS)
def test_query_count_is_constant(api_as, many, path):
    counts = query_counts(api_as("staff"), path)
    assert counts[0] == counts[1], counts


@pytest.mark.parametrize(
    "path, viewset, plain",
    [
        ("users", account_views.UserViewSet, User.objects.order_by("username")),
        ("audit-log", account_views.AuditEntryViewSet, AuditEntry.objects.all()),
        ("carriers", trunking_views.CarrierViewSet, Carrier.objects.all()),
    ],
)
def test_a_query_per_object_is_caught(api_as, many, monkeypatch, path, viewset, plain):
    """Without the viewset's select_related/prefetch_related, the fixture makes the counts
    differ: the test above can fail."""
    monkeypatch.setattr(viewset, "queryset", plain)
    counts = query_counts(api_as("staff"), path)
    assert counts[0] < counts[1], counts
