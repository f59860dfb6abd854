"""Changes that matter to edges queue exactly one push per transaction, after commit."""

import pytest
from django.db import transaction

from trunking import push
from trunking.models import EdgeNode, IpAclEntry, PhoneNumber, Trunk

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def pushes(monkeypatch) -> list[int]:
    """Counts the pushes that would be queued (the queueing itself is tested end to end)."""
    queued: list[int] = []

    def enqueue(keys: set[str]) -> None:
        queued.append(1)

    monkeypatch.setattr(push, "_enqueue_push", enqueue)
    return queued


def test_one_push_per_transaction(customer, pushes):
    pushes.clear()
    with transaction.atomic():
        trunk = Trunk.objects.create(customer=customer, name="a")
        IpAclEntry.objects.create(trunk=trunk, cidr="192.0.2.1/32")
        PhoneNumber.objects.create(customer=customer, trunk=trunk, number="+14155550123")
        trunk.delete()
        assert pushes == []  # not before the commit
    assert pushes == [1]


def test_changes_edges_do_not_need_queue_nothing(pushes):
    EdgeNode.objects.create(name="edge-9", control_url="http://127.0.0.1:9")
    assert pushes == []


def test_api_write_and_bulk_import_queue_a_push(api_as, trunk, pushes):
    client = api_as("owner")
    pushes.clear()
    client.patch(f"/api/v1/trunks/{trunk.pk}/", {"max_channels": 3})
    assert pushes == [1]
    client.post("/api/v1/numbers/import/", {"numbers": [{"number": "+14155550111"}]})
    assert pushes == [1, 1]


def test_rolled_back_change_queues_nothing(customer, pushes):
    pushes.clear()
    with pytest.raises(RuntimeError), transaction.atomic():
        Trunk.objects.create(customer=customer, name="b")
        raise RuntimeError
    assert pushes == []


def test_edge_push_records_the_version_an_edge_reports(edge_node):
    """A real HTTP server stands in for an edge's control API: one that applies the snapshot
    (200), one that already runs a newer version (409), one that refuses it (400)."""
    import http.server
    import json
    import threading

    from trunking.push import EdgePushError, edge_push

    answers = [(200, {"applied_version": 7}), (409, {"applied_version": 9}), (400, {"error": "x"})]

    class Edge(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            code, body = answers.pop(0)
            self.send_response(code)
            self.end_headers()
            self.wfile.write(json.dumps(body).encode())

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Edge)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    edge_node.control_url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        assert edge_push(node=edge_node, body=b"{}") == 7
        assert edge_push(node=edge_node, body=b"{}") == 9
        with pytest.raises(EdgePushError, match="HTTP 400"):
            edge_push(node=edge_node, body=b"{}")
    finally:
        server.shutdown()
    edge_node.refresh_from_db()
    # It answered but refused: failing, with the refusal on record.
    assert edge_node.applied_version == 9 and edge_node.health == "failing"
    assert "HTTP 400" in edge_node.last_push_error
    edge_node.control_url = "http://127.0.0.1:9"  # nothing listens there
    with pytest.raises(EdgePushError):
        edge_push(node=edge_node, body=b"{}")
    edge_node.refresh_from_db()
    assert edge_node.health == "unreachable"
