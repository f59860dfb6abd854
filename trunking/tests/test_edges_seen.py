"""Where to send calls, and what an edge sees (issue 10, items 8 and 10)."""

import http.server
import threading

import pytest

from trunking.choices import EdgeHealth
from trunking.models import EdgeNode
from trunking.tokens import edge_node_token


@pytest.fixture
def public_edge(db) -> EdgeNode:
    return EdgeNode.objects.create(
        name="edge-a",
        control_url="http://127.0.0.1:9",
        sip_addresses=["10.0.0.5:5060"],
        public_host="sip.example.net",
        tls_port=5061,
        carrier_source_ips=["203.0.113.10"],
    )


def test_trunk_says_where_its_pbx_sends_calls(api_as, trunk, public_edge):
    EdgeNode.objects.create(
        name="off",
        control_url="http://127.0.0.1:9",
        enabled=False,
        public_host="off.example.net",
        sip_addresses=["10.0.0.6:5060"],
    )
    EdgeNode.objects.create(
        name="edge-b", control_url="http://127.0.0.1:9", sip_addresses=["198.51.100.4:5070"]
    )
    body = api_as("owner").get(f"/api/v1/trunks/{trunk.pk}/").json()
    assert [e["uri"] for e in body["sip_endpoints"]] == [
        "sip:sip.example.net:5060;transport=udp",
        "sip:sip.example.net:5060;transport=tcp",
        "sips:sip.example.net:5061",
        "sip:198.51.100.4:5070;transport=udp",
        "sip:198.51.100.4:5070;transport=tcp",
    ]
    assert body["carrier_source_addresses"] == ["203.0.113.10", "198.51.100.4"]


def test_trunk_admin_page_says_it_too(admin_client, trunk, public_edge):
    page = admin_client.get(f"/admin/trunking/trunk/{trunk.pk}/change/").content.decode()
    assert "sips:sip.example.net:5061" in page and "203.0.113.10" in page


def test_failing_edge_is_a_banner_on_every_admin_page(admin_client, public_edge):
    client = admin_client
    assert 'id="edge-alerts"' not in client.get("/admin/").content.decode()
    public_edge.last_push_error = "snapshot refused: trunk 7 has an invalid URI"
    public_edge.health = EdgeHealth.UNREACHABLE
    public_edge.save()
    for url in ("/admin/", "/admin/trunking/trunk/"):
        page = client.get(url).content.decode()
        assert 'id="edge-alerts"' in page and "trunk 7 has an invalid URI" in page, url


class _ControlApi(http.server.BaseHTTPRequestHandler):
    token = ""

    def do_GET(self) -> None:  # the http.server API
        ok = self.headers.get("Authorization") == f"Bearer {self.token}"
        self.send_response(200 if ok else 401)
        self.end_headers()
        self.wfile.write(b'{"status": "ok", "path": "%s"}' % self.path.encode() if ok else b"no")

    def log_message(self, *args: object) -> None:
        pass


def test_edge_admin_links_health_and_metrics_fetched_with_its_token(admin_client, db):
    client = admin_client
    server = http.server.HTTPServer(("127.0.0.1", 0), _ControlApi)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        node = EdgeNode.objects.create(
            name="edge-c", control_url=f"http://127.0.0.1:{server.server_port}"
        )
        _ControlApi.token = edge_node_token(node)
        page = client.get(f"/admin/trunking/edgenode/{node.pk}/change/").content.decode()
        for what in ("health", "metrics"):
            link = f"/admin/trunking/edgenode/{node.pk}/control/{what}/"
            assert link in page
            answer = client.get(link)
            assert answer.status_code == 200 and f'"/{what}"' in answer.content.decode()
    finally:
        server.shutdown()
        server.server_close()


def test_customers_cannot_reach_the_control_view(api_as, client, member, public_edge):
    client.force_login(member)
    response = client.get(f"/admin/trunking/edgenode/{public_edge.pk}/control/health/")
    assert response.status_code == 302  # to the admin login


def test_staff_obtain_the_embedded_edge_token_once(api_as, db):
    node = EdgeNode.objects.create(name="embedded", control_url="http://127.0.0.1:8081")
    body = api_as("staff").post(f"/api/v1/edge-nodes/{node.pk}/rotate-token/").json()
    node.refresh_from_db()
    assert body["token"] == edge_node_token(node)
    assert "token" not in api_as("staff").get(f"/api/v1/edge-nodes/{node.pk}/").json()
