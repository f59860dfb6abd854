"""The operators' admin: pages render, inline edits and actions are audited."""

import pytest
from django.urls import reverse

from accounts.models import AuditEntry, Customer
from edge.sip.digest import ha1
from trunking.models import EdgeNode, IpAclEntry, SipCredential, Trunk


@pytest.fixture
def admin_client_(client, db):
    from accounts.models import User

    user = User.objects.create_superuser("root", "root@example.com", "pw-root-12345")
    client.force_login(user)
    return client


@pytest.mark.parametrize(
    "model",
    ["customer", "user", "apikey", "auditentry", "trunk", "phonenumber", "carrier", "edgenode"],
)
def test_changelists_render(admin_client_, model, trunk, number, carrier, edge_node):
    app = "accounts" if model in ("customer", "user", "apikey", "auditentry") else "trunking"
    response = admin_client_.get(reverse(f"admin:{app}_{model}_changelist"))
    assert response.status_code == 200


def test_trunk_change_page_with_inlines_is_audited(admin_client_, trunk):
    url = reverse("admin:trunking_trunk_change", args=[trunk.pk])
    page = admin_client_.get(url)
    assert page.status_code == 200
    form = {
        "customer": trunk.customer_id,
        "name": trunk.name,
        "status": "active",
        "max_channels": 12,
        "max_cps": 5,
        "allowed_destinations": "[]",
        "blocked_prefixes": "[]",
        "caller_id_policy": "customer_numbers",
        "failover_stop_codes": "[404, 486, 600, 603]",
        "default_country": "US",
        "max_call_duration": 14400,
        "media_mode": "anchor",
        "srtp": "offered",
        "acl_entries-TOTAL_FORMS": 1,
        "acl_entries-INITIAL_FORMS": 0,
        "acl_entries-0-cidr": "203.0.113.0/24",
        "acl_entries-0-description": "office",
        "credentials-TOTAL_FORMS": 1,
        "credentials-INITIAL_FORMS": 0,
        "credentials-0-username": "admin-made",
        "credentials-0-realm": "trunkline",
        "credentials-0-password": "",
        "origination_uris-TOTAL_FORMS": 0,
        "origination_uris-INITIAL_FORMS": 0,
    }
    response = admin_client_.post(url, form, follow=True)
    assert response.status_code == 200
    assert not (response.context.get("errors") or []), response.context.get("errors")
    trunk.refresh_from_db()
    assert trunk.max_channels == 12
    assert IpAclEntry.objects.filter(trunk=trunk, cidr="203.0.113.0/24").exists()
    credential = SipCredential.objects.get(username="admin-made")
    shown = [str(m) for m in response.context["messages"] if "admin-made" in str(m)]
    assert len(shown) == 1
    password = shown[0].split(": ", 1)[1].split(" ", 1)[0]
    assert credential.ha1_sha256 == ha1("admin-made", "trunkline", password, "SHA-256")
    actions = set(AuditEntry.objects.values_list("content_type__model", "action"))
    assert {("trunk", "update"), ("ipaclentry", "create"), ("sipcredential", "create")} <= actions


def test_suspend_action(admin_client_, trunk, customer):
    admin_client_.post(
        reverse("admin:trunking_trunk_changelist"),
        {"action": "suspend", "_selected_action": [trunk.pk]},
    )
    admin_client_.post(
        reverse("admin:accounts_customer_changelist"),
        {"action": "suspend", "_selected_action": [customer.pk]},
    )
    assert Trunk.objects.get(pk=trunk.pk).status == "suspended"
    assert Customer.objects.get(pk=customer.pk).status == "suspended"
    assert AuditEntry.objects.filter(action="suspend").count() == 2


def test_admin_delete_is_audited(admin_client_, edge_node):
    url = reverse("admin:trunking_edgenode_delete", args=[edge_node.pk])
    admin_client_.post(url, {"post": "yes"})
    assert not EdgeNode.objects.exists()
    assert AuditEntry.objects.filter(action="delete", object_id=str(edge_node.pk)).exists()
