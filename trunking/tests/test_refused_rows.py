"""Defence in depth: a stored row an edge refuses (old data, a raw SQL edit) costs only itself.

The snapshot still reaches the edges, which leave that object out; what was left out is on the
config revision, the edge-node API and the admin. An edge that refuses a push is "failing".
"""

import os

import pytest
from django.urls import reverse

from edge.tests.sipp_harness import EdgeProcess
from trunking.models import ConfigRevision, EdgeNode, IpAclEntry, OriginationUri, Trunk
from trunking.push import edge_probe, edge_push
from trunking.snapshot import build_snapshot, encode, record_refusals
from trunking.tasks import reconcile_edges
from trunking.tokens import edge_node_token


@pytest.fixture
def bad_rows(trunk, other_trunk, acl_entry):
    """Rows the API would refuse, written behind its back: a trunk policy value, a network
    another customer's trunk already holds, a sips: URI over UDP."""
    Trunk.objects.filter(pk=other_trunk.pk).update(allowed_destinations=["nowhere"])
    third = Trunk.objects.create(customer=other_trunk.customer, name="third")
    IpAclEntry.objects.create(trunk=third, cidr=acl_entry.cidr)
    OriginationUri.objects.create(trunk=trunk, uri="sips:pbx.acme.test;transport=udp")
    return {
        ("trunk", other_trunk.pk, "allowed_destinations"),
        ("acl", trunk.pk, "acl"),
        ("acl", third.pk, "acl"),
        ("origination_uri", trunk.pk, "origination_uris"),
    }


def _kinds(refusals):
    return {(item["kind"], item["id"], item["field"]) for item in refusals}


@pytest.mark.slow
def test_one_bad_trunk_does_not_stop_another_customers_change(
    tmp_path, api_as, trunk, bad_rows, edge_node
):
    first = build_snapshot()
    edge = EdgeProcess(
        tmp_path / "edge", first, node=edge_node.name, token=edge_node_token(edge_node)
    )
    edge.start()
    try:
        assert edge.health()["config_version"] == first["version"]  # it started on it
        EdgeNode.objects.filter(pk=edge_node.pk).update(
            control_url=f"http://{edge.ip}:{edge.control_port}"
        )
        edge_node.refresh_from_db()

        # The owner's change reaches the edge although the snapshot holds the bad rows.
        response = api_as("owner").patch(f"/api/v1/trunks/{trunk.pk}/", {"max_channels": 3})
        assert response.status_code == 200, response.content
        snapshot = build_snapshot()
        assert snapshot["version"] > first["version"]
        assert edge_push(node=edge_node, body=encode(snapshot)) == snapshot["version"]
        assert edge.health()["config_version"] == snapshot["version"]
        edge_node.refresh_from_db()
        assert edge_node.health == "ok" and edge_node.last_push_error == ""

        # What the edge left out is reported, object and field.
        assert _kinds(record_refusals(snapshot)) == bad_rows
        row = api_as("staff").get("/api/v1/edge-nodes/").json()["results"][0]
        assert row["config_refusal_count"] == len(bad_rows)
        assert _kinds(row["config_refusals"]) == bad_rows
    finally:
        edge.stop()


def test_refusals_are_recorded_once_per_version_and_shown(api_as, client, bad_rows, edge_node):
    snapshot = build_snapshot()
    EdgeNode.objects.filter(pk=edge_node.pk).update(
        applied_version=snapshot["version"],
        control_url="http://127.0.0.1:9",  # nobody there
    )
    row = api_as("staff").get(f"/api/v1/edge-nodes/{edge_node.pk}/").json()
    assert row["config_refusals"] is None  # not checked yet
    reconcile_edges()  # the periodic task checks the current version (the edge is down)
    revision = ConfigRevision.objects.get(pk=snapshot["version"])
    assert revision.refusal_count == len(bad_rows)
    assert _kinds(revision.refusals) == bad_rows
    row = api_as("staff").get(f"/api/v1/edge-nodes/{edge_node.pk}/").json()
    assert _kinds(row["config_refusals"]) == bad_rows
    assert "allowed_destinations: 'nowhere' is neither" in " ".join(
        item["reason"] for item in row["config_refusals"]
    )

    # The admin warns on the edge node pages and lists the refusals.
    from accounts.models import User

    client.force_login(User.objects.create_superuser("root", "root@example.test", "pw-root-12"))
    listing = client.get(reverse("admin:trunking_edgenode_changelist")).content.decode()
    assert f"Config version {revision.pk} leaves out {len(bad_rows)} object(s)" in listing
    page = client.get(reverse("admin:trunking_edgenode_change", args=[edge_node.pk]))
    assert "allowed_destinations" in page.content.decode()
    assert "is also trunk" in page.content.decode() and "<li>trunk " in page.content.decode()
    (other_trunk_id,) = {item["id"] for item in revision.refusals if item["kind"] == "trunk"}
    trunk_page = client.get(reverse("admin:trunking_trunk_change", args=[other_trunk_id]))
    assert "The edges leave this out: trunk" in trunk_page.content.decode()


def test_a_clean_configuration_has_nothing_refused(trunk, acl_entry, origination_uri):
    snapshot = build_snapshot()
    assert record_refusals(snapshot) == []
    revision = ConfigRevision.objects.get(pk=snapshot["version"])
    assert (revision.refusal_count, revision.refusals) == (0, [])


def test_an_edge_that_refuses_a_push_is_failing_until_one_succeeds(edge_node):
    """A real HTTP server stands in for the edge: it refuses a push, answers its health probe,
    then applies the next push."""
    import http.server
    import json
    import threading

    from trunking.push import EdgePushError

    answers = [(400, {"error": "snapshot: duplicate customer id 1"}), (200, {"applied_version": 8})]

    class Edge(http.server.BaseHTTPRequestHandler):
        def _answer(self, code, body):
            self.send_response(code)
            self.end_headers()
            self.wfile.write(json.dumps(body).encode())

        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            self._answer(*answers.pop(0))

        def do_GET(self):
            self._answer(200, {"status": "ok", "config_version": 7})

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Edge)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    edge_node.control_url = f"http://127.0.0.1:{server.server_address[1]}"
    edge_node.save(update_fields=["control_url"])
    try:
        with pytest.raises(EdgePushError, match="HTTP 400"):
            edge_push(node=edge_node, body=b"{}")
        edge_node.refresh_from_db()
        assert edge_node.health == "failing"
        assert "duplicate customer id" in edge_node.last_push_error
        assert edge_probe(node=edge_node) is not None  # it answers...
        edge_node.refresh_from_db()
        assert edge_node.health == "failing"  # ...but is not "ok"
        assert api_row(edge_node)["health"] == "failing"
        assert edge_push(node=edge_node, body=b"{}") == 8
        edge_node.refresh_from_db()
        assert (edge_node.health, edge_node.last_push_error) == ("ok", "")
    finally:
        server.shutdown()


def api_row(node):
    from trunking.api.serializers import EdgeNodeSerializer

    return EdgeNodeSerializer(EdgeNode.objects.get(pk=node.pk), context={}).data


def test_the_demo_configuration_has_nothing_refused(db):
    from django.core.management import call_command

    call_command("seed_demo", stdout=open(os.devnull, "w"))  # noqa: SIM115
    assert record_refusals(build_snapshot()) == []
