"""Secrets are generated or given once, returned once, stored only as hashes, never audited."""

import json

from accounts import keys
from accounts.models import ApiKey, AuditEntry
from edge.sip.digest import ha1
from trunking.models import EdgeNode, SipCredential
from trunking.tokens import edge_node_token


def test_credential_password_is_shown_once_and_stored_as_ha1(api_as, trunk, settings):
    client = api_as("owner")
    response = client.post("/api/v1/credentials/", {"trunk": trunk.pk, "username": "acme-9"})
    assert response.status_code == 201, response.content
    password = response.json()["password"]
    assert len(password) >= 20
    credential = SipCredential.objects.get(username="acme-9")
    assert credential.realm == settings.SIP_REALM
    assert credential.ha1_md5 == ha1("acme-9", credential.realm, password, "MD5")
    assert credential.ha1_sha256 == ha1("acme-9", credential.realm, password, "SHA-256")
    shown_again = client.get(f"/api/v1/credentials/{credential.pk}/").json()
    assert "password" not in shown_again and password not in json.dumps(shown_again)
    audit_rows = json.dumps(list(AuditEntry.objects.values("changes", "note")))
    assert password not in audit_rows and credential.ha1_md5 not in audit_rows


def test_given_password_and_reset(api_as, credential):
    client = api_as("owner")
    row = credential.credential
    response = client.post(
        f"/api/v1/credentials/{row.pk}/set-password/", {"password": "correct horse battery"}
    )
    assert response.status_code == 200 and response.json()["password"] == "correct horse battery"
    row.refresh_from_db()
    assert row.ha1_md5 == ha1(row.username, row.realm, "correct horse battery", "MD5")
    assert credential.password != "correct horse battery"


def test_api_key_is_shown_once_hashed_and_revocable(api_as):
    client = api_as("owner")
    response = client.post("/api/v1/api-keys/", {"name": "ci-script", "role": "read_only"})
    assert response.status_code == 201, response.content
    secret = response.json()["key"]
    stored = ApiKey.objects.get(pk=response.json()["id"])
    assert stored.secret_hash == keys.hash_key(secret) and secret not in stored.secret_hash
    assert secret.startswith(f"tk_{stored.prefix}_")
    assert "key" not in client.get(f"/api/v1/api-keys/{stored.pk}/").json()

    new_client = api_as("anonymous")
    new_client.credentials(HTTP_AUTHORIZATION=f"Api-Key {secret}")
    assert new_client.get("/api/v1/trunks/").status_code == 200
    assert new_client.post("/api/v1/trunks/", {"name": "x"}).status_code == 403  # read-only key
    stored.refresh_from_db()
    assert stored.last_used_at is not None

    assert client.delete(f"/api/v1/api-keys/{stored.pk}/").status_code == 204
    assert new_client.get("/api/v1/trunks/").status_code == 401
    assert secret not in json.dumps(list(AuditEntry.objects.values("changes", "note")))


def test_malformed_and_unknown_keys_are_401(api_as):
    client = api_as("anonymous")
    for value in ("Api-Key nonsense", "Api-Key tk_000000000000_guess", "Api-Key "):
        client.credentials(HTTP_AUTHORIZATION=value)
        response = client.get("/api/v1/trunks/")
        assert response.status_code == 401
        assert response["WWW-Authenticate"] == "Api-Key"


def test_role_cannot_be_escalated(api_as):
    response = api_as("owner").post("/api/v1/api-keys/", {"name": "x", "role": "owner"})
    assert response.status_code == 400 and "role" in response.json()


def test_edge_node_token_shown_once_and_not_stored(api_as):
    client = api_as("staff")
    response = client.post(
        "/api/v1/edge-nodes/", {"name": "edge-9", "control_url": "http://127.0.0.1:8099"}
    )
    assert response.status_code == 201
    token = response.json()["token"]
    node = EdgeNode.objects.get(name="edge-9")
    assert token == edge_node_token(node)
    assert "token" not in client.get(f"/api/v1/edge-nodes/{node.pk}/").json()
    rotated = client.post(f"/api/v1/edge-nodes/{node.pk}/rotate-token/").json()["token"]
    assert rotated != token
    node.refresh_from_db()
    assert rotated == edge_node_token(node)
    assert all(token not in str(v) for v in EdgeNode.objects.values().get(pk=node.pk).values())
