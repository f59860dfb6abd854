"""Every write of a provisioning object leaves one audit row in its transaction."""

import pytest
from django.db import transaction

from accounts import audit
from accounts.choices import AuditAction
from accounts.models import AuditEntry
from core.tenancy import SYSTEM
from trunking.models import Trunk


def test_api_create_update_delete_are_audited(api_as, customer):
    client = api_as("owner")
    created = client.post(
        "/api/v1/trunks/", {"name": "pbx-a", "max_channels": 4}, HTTP_X_REQUEST_ID="req-123"
    )
    trunk_id = created.json()["id"]
    assert created["X-Request-ID"] == "req-123"
    client.patch(f"/api/v1/trunks/{trunk_id}/", {"max_channels": 8})
    client.delete(f"/api/v1/trunks/{trunk_id}/")

    rows = list(
        AuditEntry.objects.filter(content_type__model="trunk", object_id=str(trunk_id)).order_by(
            "id"
        )
    )
    assert [r.action for r in rows] == ["create", "update", "delete"]
    assert all(r.customer_id == customer.pk and r.api_key is not None for r in rows)
    assert rows[0].request_id == "req-123"
    assert rows[0].changes["max_channels"] == [None, 4]
    assert rows[1].changes == {"max_channels": [4, 8]}
    assert rows[2].changes["name"] == ["pbx-a", None]


def test_update_without_changes_writes_nothing(api_as, trunk):
    api_as("owner").patch(f"/api/v1/trunks/{trunk.pk}/", {"name": trunk.name})
    assert not AuditEntry.objects.filter(action="update").exists()


def test_audit_row_rolls_back_with_its_change(customer):
    with pytest.raises(RuntimeError), transaction.atomic():
        trunk = Trunk.objects.create(customer=customer, name="doomed")
        audit.record(actor=SYSTEM, obj=trunk, action=AuditAction.CREATE)
        raise RuntimeError
    assert not AuditEntry.objects.exists() and not Trunk.objects.exists()


def test_suspend_and_resume_trunk_through_api(api_as, trunk):
    client = api_as("owner")
    response = client.post(f"/api/v1/trunks/{trunk.pk}/suspend/", {"reason": "fraud check"})
    assert response.status_code == 200 and response.json()["status"] == "suspended"
    assert client.post(f"/api/v1/trunks/{trunk.pk}/resume/").json()["status"] == "active"
    actions = list(
        AuditEntry.objects.filter(content_type__model="trunk").values_list("action", "note")
    )
    assert actions == [("resume", ""), ("suspend", "fraud check")]
    assert api_as("read_only").post(f"/api/v1/trunks/{trunk.pk}/suspend/").status_code == 403
    assert api_as("other_customer").post(f"/api/v1/trunks/{trunk.pk}/suspend/").status_code == 404


def test_customer_suspend_is_staff_only(api_as, customer):
    assert api_as("owner").post(f"/api/v1/customers/{customer.pk}/suspend/").status_code == 403
    response = api_as("staff").post(
        f"/api/v1/customers/{customer.pk}/suspend/", {"reason": "unpaid"}
    )
    assert response.status_code == 200 and response.json()["status"] == "suspended"
