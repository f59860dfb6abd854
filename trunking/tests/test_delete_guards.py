"""Nothing is silently destroyed: deletes that would orphan numbers or trunks answer 409 naming
what holds them (staff may force), and everything a delete reaches is audited (issue 10, 6)."""

from accounts.models import AuditEntry, Customer
from trunking.models import IpAclEntry, PhoneNumber, SipCredential, Trunk


def _audit(model: str, object_id: int) -> list[AuditEntry]:
    return list(
        AuditEntry.objects.filter(content_type__model=model, object_id=str(object_id)).order_by(
            "id"
        )
    )


def test_trunk_with_numbers_is_409_naming_them(api_as, trunk, number):
    response = api_as("owner").delete(f"/api/v1/trunks/{trunk.pk}/")
    assert response.status_code == 409, response.content
    body = response.json()
    assert body["code"] == "conflict" and body["held_by"] == ["1 phone number"]
    assert Trunk.objects.filter(pk=trunk.pk).exists()
    # A customer may not force; staff may.
    assert api_as("owner").delete(f"/api/v1/trunks/{trunk.pk}/?force=true").status_code == 403
    assert api_as("staff").delete(f"/api/v1/trunks/{trunk.pk}/?force=true").status_code == 204
    number.refresh_from_db()
    assert number.trunk_id is None and number.customer_id == trunk.customer_id
    (unassigned,) = _audit("phonenumber", number.pk)
    assert unassigned.action == "update" and unassigned.changes["trunk"] == [trunk.pk, None]
    assert "deleted" in unassigned.note


def test_trunk_delete_audits_what_it_cascades_to(api_as, trunk, acl_entry, credential):
    assert api_as("owner").delete(f"/api/v1/trunks/{trunk.pk}/").status_code == 204
    assert not IpAclEntry.objects.filter(pk=acl_entry.pk).exists()
    for model, pk in (
        ("ipaclentry", acl_entry.pk),
        ("sipcredential", credential.credential.pk),
        ("trunk", trunk.pk),
    ):
        entries = [e for e in _audit(model, pk) if e.action == "delete"]
        assert len(entries) == 1, model
    assert not SipCredential.objects.filter(trunk_id=trunk.pk).exists()
    (cascaded,) = [e for e in _audit("ipaclentry", acl_entry.pk) if e.action == "delete"]
    assert cascaded.note.startswith("deleted with trunk")
    assert "ha1_md5" not in cascaded.changes  # secrets stay out of the log


def test_customer_with_trunks_is_409_and_force_removes_everything_audited(
    api_as, customer, trunk, number
):
    response = api_as("staff").delete(f"/api/v1/customers/{customer.pk}/")
    assert response.status_code == 409, response.content
    assert set(response.json()["held_by"]) == {"1 phone number", "1 trunk"}
    assert Customer.objects.filter(pk=customer.pk).exists()
    response = api_as("staff").delete(f"/api/v1/customers/{customer.pk}/?force=true")
    assert response.status_code == 204, response.content
    assert not Customer.objects.filter(pk=customer.pk).exists()
    assert not PhoneNumber.objects.filter(pk=number.pk).exists()
    for model, pk in (("phonenumber", number.pk), ("trunk", trunk.pk), ("customer", customer.pk)):
        assert any(e.action == "delete" for e in _audit(model, pk)), model


def test_force_must_be_a_boolean(api_as, trunk):
    response = api_as("staff").delete(f"/api/v1/trunks/{trunk.pk}/?force=maybe")
    assert response.status_code == 400 and "force" in response.json()
    assert Trunk.objects.filter(pk=trunk.pk).exists()


def test_admin_delete_audits_the_cascade_too(admin_client, trunk, acl_entry, number):
    response = admin_client.post(f"/admin/trunking/trunk/{trunk.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302
    assert any(e.action == "delete" for e in _audit("ipaclentry", acl_entry.pk))
    (unassigned,) = _audit("phonenumber", number.pk)
    assert unassigned.changes["trunk"] == [trunk.pk, None]
