"""GET /api/v1/calls/active/ and DELETE /api/v1/calls/active/{call_id}/: asked of the edges,
tenant-scoped (the access matrix's five callers), hang-ups carried out by the edge and audited."""

from __future__ import annotations

import pytest

from accounts.models import AuditEntry
from trunking.models import EdgeNode
from trunking.tests.live_fakes import fake_edge
from trunking.tokens import edge_node_token

LIST = {"owner": 200, "other_customer": 200, "read_only": 200, "staff": 200, "anonymous": 401}
HANGUP = {"owner": 204, "other_customer": 404, "read_only": 403, "staff": 204, "anonymous": 401}


@pytest.fixture
def edge(db, trunk, other_trunk):
    node = EdgeNode.objects.create(name="edge-1", control_url="http://127.0.0.1:1")
    with fake_edge(edge_node_token(node)) as fake:
        node.control_url = f"http://127.0.0.1:{fake.port}"
        node.save(update_fields=["control_url"])
        fake.add_call("acme-call", trunk)
        fake.add_call("globex-call", other_trunk, direction="inbound", state="ringing")
        yield fake


@pytest.mark.parametrize("who, expected", LIST.items())
def test_list_shows_each_caller_its_own_calls(who, expected, api_as, edge, trunk):
    response = api_as(who).get("/api/v1/calls/active/")
    assert response.status_code == expected, response.content
    if expected != 200:
        return
    body = response.json()
    ids = {row["call_id"] for row in body["results"]}
    assert (
        ids
        == {
            "owner": {"acme-call"},
            "read_only": {"acme-call"},
            "other_customer": {"globex-call"},
            "staff": {"acme-call", "globex-call"},
        }[who]
    )
    assert body["count"] == len(ids) and body["unreachable_edges"] == []
    if who == "owner":
        (row,) = body["results"]
        assert row["edge"] == "edge-1" and row["trunk"] == trunk.name
        assert row["customer"] == "Acme" and row["state"] == "answered"


def test_filters_and_a_bad_filter_names_its_field(api_as, edge, trunk, other_trunk):
    staff = api_as("staff")
    by_trunk = staff.get(f"/api/v1/calls/active/?trunk={other_trunk.pk}").json()["results"]
    assert [row["call_id"] for row in by_trunk] == ["globex-call"]
    by_customer = staff.get(f"/api/v1/calls/active/?customer={trunk.customer_id}").json()
    assert [row["call_id"] for row in by_customer["results"]] == ["acme-call"]
    assert staff.get("/api/v1/calls/active/?search=globex").json()["count"] == 1
    assert staff.get("/api/v1/calls/active/?edge=edge-2").json()["count"] == 0
    response = staff.get("/api/v1/calls/active/?trunk=abc")
    assert response.status_code == 400 and "trunk" in response.json()
    # A customer filtering on another customer's trunk sees nothing, not its calls.
    owner = api_as("owner").get(f"/api/v1/calls/active/?trunk={other_trunk.pk}").json()
    assert owner["count"] == 0


@pytest.mark.parametrize("who, expected", HANGUP.items())
def test_hangup_goes_through_the_edge_for_those_allowed(who, expected, api_as, edge):
    response = api_as(who).delete("/api/v1/calls/active/acme-call/")
    assert response.status_code == expected, response.content
    assert edge.deleted == (["acme-call"] if expected == 204 else [])
    audited = AuditEntry.objects.filter(action="hangup")
    assert audited.count() == (1 if expected == 204 else 0)
    if expected == 204:
        assert "acme-call" in audited.get().note and "edge-1" in audited.get().note


def test_a_call_that_is_gone_is_404_and_an_unreachable_edge_is_reported(api_as, edge, db):
    staff = api_as("staff")
    assert staff.delete("/api/v1/calls/active/no-such-call/").status_code == 404
    EdgeNode.objects.create(name="edge-dead", control_url="http://127.0.0.1:9")
    body = staff.get("/api/v1/calls/active/").json()
    assert body["count"] == 2  # the live edge's calls are still listed
    assert [row["edge"] for row in body["unreachable_edges"]] == ["edge-dead"]
    owner = api_as("owner").get("/api/v1/calls/active/").json()
    assert owner["unreachable_edges"] == [{"edge": "edge-dead", "error": "unreachable"}]


def test_the_endpoints_are_in_the_openapi_document(api_as, db):
    schema = api_as("staff").get("/api/schema/?format=json").json()
    assert "get" in schema["paths"]["/api/v1/calls/active/"]
    assert "delete" in schema["paths"]["/api/v1/calls/active/{call_id}/"]
