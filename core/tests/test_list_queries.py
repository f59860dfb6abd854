"""List endpoints run the same number of queries whatever the page size (no N+1)."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from accounts import audit
from accounts.choices import AuditAction
from core.tenancy import SYSTEM
from trunking.models import Carrier, CarrierGateway, PhoneNumber, Trunk


@pytest.fixture
def many(customer, member):
    trunks = Trunk.objects.bulk_create(Trunk(customer=customer, name=f"t{i}") for i in range(12))
    PhoneNumber.objects.bulk_create(
        PhoneNumber(customer=customer, trunk=trunks[i % 12], number=f"+1415555{i:04d}")
        for i in range(12)
    )
    for i in range(12):
        carrier = Carrier.objects.create(name=f"c{i}")
        CarrierGateway.objects.create(carrier=carrier, host=f"gw{i}.test")
        audit.record(actor=SYSTEM, obj=trunks[i], action=AuditAction.CREATE)


@pytest.mark.parametrize(
    "path",
    [
        "trunks",
        "numbers",
        "carriers",
        "carrier-gateways",
        "audit-log",
        "users",
        "api-keys",
        "customers",
    ],
)
def test_query_count_is_constant(api_as, many, path):
    client = api_as("staff")
    counts = []
    for size in (2, 12):
        with CaptureQueriesContext(connection) as ctx:
            response = client.get(f"/api/v1/{path}/?page_size={size}")
        assert response.status_code == 200
        counts.append(len(ctx))
    assert counts[0] == counts[1], counts
