"""The edge snapshot: complete, versioned by content, and served only to edges."""

from edge import snapshot_wire
from trunking.models import CarrierGateway, PhoneNumber
from trunking.snapshot import build_snapshot
from trunking.tokens import edge_node_token


def test_snapshot_holds_what_an_edge_needs(
    trunk, acl_entry, credential, origination_uri, number, gateway
):
    snap = build_snapshot()
    assert snap["schema"] == 1 and snap["version"] >= 1 and len(snap["content_hash"]) == 64
    (t,) = snap["trunks"]
    assert t["id"] == trunk.pk and t["acl"] == ["192.0.2.0/24"]
    assert t["origination_uris"] == [
        {"uri": "sip:pbx.acme.test:5060", "priority": 10, "weight": 100}
    ]
    (cred,) = t["credentials"]
    assert cred["ha1_md5"] == credential.credential.ha1_md5 and "password" not in cred
    assert [list(n) for n in snap["numbers"]] == [["+14155550100", trunk.customer_id, trunk.pk]]
    assert snap["carriers"][0]["gateways"][0]["host"] == "198.51.100.7"


def test_version_changes_only_with_content(trunk, gateway):
    first = build_snapshot()
    assert build_snapshot()["version"] == first["version"]
    PhoneNumber.objects.create(number="+14155550177", customer=trunk.customer, trunk=trunk)
    second = build_snapshot()
    assert second["version"] > first["version"]
    assert second["content_hash"] != first["content_hash"]
    CarrierGateway.objects.update(enabled=False)
    third = build_snapshot()
    assert third["carriers"] == [] and third["version"] > second["version"]


def test_snapshot_endpoint_requires_an_edge_token(client, edge_node, settings, trunk):
    url = "/internal/edge/snapshot"
    assert client.get(url).status_code == 401
    assert client.get(url, HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
    token = edge_node_token(edge_node)
    response = client.get(
        url, HTTP_AUTHORIZATION=f"Bearer {token}", HTTP_X_EDGE_NODE=edge_node.name
    )
    assert response.status_code == 200
    assert snapshot_wire.decode(response.content)["trunks"][0]["id"] == trunk.pk
    edge_node.refresh_from_db()
    assert edge_node.last_seen is not None
    settings.EDGE_CONTROL_TOKEN = "shared-secret"
    assert client.get(url, HTTP_AUTHORIZATION="Bearer shared-secret").status_code == 200
    settings.EDGE_CONTROL_TOKEN = ""
    assert client.get(url, HTTP_AUTHORIZATION="Bearer ").status_code == 401


def test_add_edge_node_command_registers_and_prints_the_token(db, capsys):
    from django.core.management import call_command

    from trunking.models import EdgeNode

    call_command("add_edge_node", "edge-7", "--control-url", "http://edge:8081")
    call_command("add_edge_node", "edge-7", "--control-url", "http://edge-7:8081")
    node = EdgeNode.objects.get(name="edge-7")
    assert node.control_url == "http://edge-7:8081"
    assert capsys.readouterr().out.count(edge_node_token(node)) == 2


def test_snapshot_carries_the_trunks_media_settings_and_the_edge_compiles_them(trunk):
    from edge.config import EdgeConfig

    trunk.media_mode, trunk.srtp = "anchor", "required"
    trunk.save()
    snap = build_snapshot()
    (t,) = snap["trunks"]
    assert (t["media_mode"], t["srtp"]) == ("anchor", "required")
    policy = EdgeConfig.compile(snap).trunk(trunk.pk)
    assert policy is not None and (policy.media_mode, policy.srtp) == ("anchor", "required")
