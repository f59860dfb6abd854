"""A push reads again only what changed, and gets what a full read gets; each version is
encoded once and then re-sent, never rebuilt, by retries and the periodic reconcile; an edge on
the version before gets a delta, and the whole snapshot if it asks for it (412)."""

import http.server
import json
import threading
import time

import orjson
import pytest

from edge import snapshot_wire
from trunking import push, snapshot, snapshot_cache, tasks
from trunking.models import (
    CarrierGateway,
    ConfigRevision,
    EdgeNode,
    IpAclEntry,
    OriginationUri,
    PhoneNumber,
    SipCredential,
    Trunk,
)

# Commits are real (changes are recorded after them) and the push runs threads.
pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def recorded(monkeypatch):
    """Commits record what changed, as in production, but queue no push: the test publishes."""
    monkeypatch.setattr(push, "_enqueue_push", push._record_changes)
    push.take_changes()  # nothing left from before this test
    snapshot_cache.forget()  # nor versions of a database flushed since


def plain(value):
    return orjson.loads(orjson.dumps(value))  # tuples as lists, as on the wire


def test_a_build_from_changes_equals_a_full_read(
    customer, other_customer, trunk, other_trunk, number, gateway, recorded, monkeypatch
):
    before = snapshot_cache.publish()
    previous = snapshot._last_built.snapshot
    entry = IpAclEntry.objects.create(trunk=trunk, cidr="192.0.2.0/24")

    def move_entry():
        entry.trunk = other_trunk
        entry.save()

    steps = [
        lambda: Trunk.objects.filter(pk=trunk.pk).first().save(),  # no content change
        lambda: setattr(trunk, "max_channels", 7) or trunk.save(),
        lambda: IpAclEntry.objects.create(trunk=trunk, cidr="198.51.100.0/24"),
        move_entry,
        lambda: SipCredential.objects.create(
            trunk=other_trunk,
            username="globex",
            realm="trunkline",
            ha1_md5="a" * 32,
            ha1_sha256="b" * 64,
        ),
        lambda: OriginationUri.objects.create(trunk=trunk, uri="sip:pbx.acme.test:5080"),
        lambda: PhoneNumber.objects.create(number="+14155550111", customer=customer, trunk=trunk),
        lambda: Trunk.objects.create(customer=other_customer, name="new"),
        lambda: trunk.delete(),  # its number's trunk becomes NULL without a signal
        lambda: setattr(customer, "name", "Acme 2") or customer.save(),
        lambda: CarrierGateway.objects.filter(pk=gateway.pk).first().delete(),
    ]
    for step in steps:
        step()
        with monkeypatch.context() as patch:
            # Only the changes are read again: reading everything would fail this test.
            patch.setattr(snapshot, "_content", lambda: pytest.fail("read everything"))
            release = snapshot_cache.publish(push.take_changes())
        built = snapshot._last_built
        assert plain(built.content) == plain(snapshot._content())
        if release.version != before.version:
            delta = snapshot_wire.decode(release.delta)
            assert delta.base_version == before.version
            assert plain(snapshot_wire.apply_delta(plain(previous), delta)) == plain(built.snapshot)
        previous = built.snapshot
        before = release


def test_a_bulk_write_without_keys_reads_everything(trunk, recorded, monkeypatch):
    snapshot_cache.publish()
    Trunk.objects.filter(pk=trunk.pk).update(max_channels=9)
    push.request_config_push()  # autocommit: recorded at once
    reads = []
    monkeypatch.setattr(
        snapshot, "_content", lambda real=snapshot._content: reads.append(1) or real()
    )
    snapshot_cache.publish(push.take_changes())
    assert reads == [1] and snapshot._last_built.content["trunks"][0]["max_channels"] == 9


class FakeEdge(http.server.BaseHTTPRequestHandler):
    """An edge's control API: reports its version, applies what it is sent (or asks for the
    whole snapshot: `refuse_deltas`)."""

    version = 0
    refuse_deltas = False
    received: list[bytes] = []

    def do_GET(self):
        self._answer(200, {"status": "ok", "config_version": FakeEdge.version})

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        FakeEdge.received.append(body)
        doc = snapshot_wire.decode(body)
        if isinstance(doc, snapshot_wire.Delta) and (
            FakeEdge.refuse_deltas or doc.base_version != FakeEdge.version
        ):
            self._answer(412, {"error": "base", "applied_version": FakeEdge.version})
            return
        FakeEdge.version = doc["version"]
        self._answer(200, {"applied_version": FakeEdge.version})

    def _answer(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_edge(edge_node):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeEdge)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    edge_node.control_url = f"http://127.0.0.1:{server.server_address[1]}"
    edge_node.save()
    FakeEdge.received = []
    FakeEdge.refuse_deltas = False
    yield edge_node
    server.shutdown()


def test_a_push_sends_the_delta_and_reconcile_and_retries_resend_without_building(
    trunk, recorded, fake_edge, monkeypatch
):
    first = snapshot_cache.publish()
    FakeEdge.version = first.version
    EdgeNode.objects.filter(pk=fake_edge.pk).update(applied_version=first.version)
    trunk.max_channels = 5
    trunk.save()
    # The push after the change: the edge is on the version before, it gets the delta.
    version = tasks.push_config()
    (sent,) = FakeEdge.received
    second = snapshot_cache.latest_release()
    assert version == second.version == FakeEdge.version and second.base == first.version
    assert sent == second.delta
    assert [t["max_channels"] for t in snapshot_wire.decode(sent)["trunks"]] == [5]
    fake_edge.refresh_from_db()
    assert fake_edge.applied_version == second.version

    # From now on nothing is built again: the periodic reconcile (between its full checks)
    # and the retries re-send.
    monkeypatch.setattr(tasks, "_last_full_check", time.monotonic())
    monkeypatch.setattr(snapshot_cache, "build", lambda *a: pytest.fail("built again"))
    FakeEdge.version = first.version  # say it restarted from an old saved snapshot
    FakeEdge.received = []
    assert tasks.reconcile_edges() == {"drifted": [fake_edge.name], "unreachable": []}
    assert FakeEdge.received == [second.delta] and FakeEdge.version == second.version

    # An edge that cannot take the delta (412) gets the whole snapshot in the same push.
    FakeEdge.version = first.version
    FakeEdge.refuse_deltas = True
    FakeEdge.received = []
    EdgeNode.objects.filter(pk=fake_edge.pk).update(applied_version=first.version)
    assert tasks.push_config_to_edge(fake_edge.pk) == second.version
    assert FakeEdge.received == [second.delta, second.full]
    assert snapshot_wire.decode(second.full)["version"] == second.version


def test_a_version_recorded_meanwhile_by_another_process_makes_the_build_read_everything(
    trunk, other_trunk, recorded, monkeypatch
):
    """Two workers: this one reads trunk A's change while another records a version with trunk
    B's. Recording a version from the older view would make it the latest without B's change:
    the build reads everything again instead."""
    snapshot_cache.publish()
    trunk.max_channels = 3
    trunk.save()
    changes = push.take_changes()
    Trunk.objects.filter(pk=other_trunk.pk).update(max_channels=4)  # the other worker's change
    real_read, reads = snapshot._read, []

    def read_then_another_worker_publishes(*args):
        result = real_read(*args)
        if not reads:
            ConfigRevision.objects.create(content_hash="from another worker")
        reads.append(args[0])
        return result

    monkeypatch.setattr(snapshot, "_read", read_then_another_worker_publishes)
    built, _ = snapshot.build(changes)
    assert reads == [changes, None]  # from the changes, then everything
    by_id = {t["id"]: t["max_channels"] for t in built.content["trunks"]}
    assert by_id == {trunk.pk: 3, other_trunk.pk: 4}
    assert built.version == ConfigRevision.objects.order_by("-id").first().pk


def test_the_reconcile_reads_everything_now_and_then(trunk, recorded, fake_edge, monkeypatch):
    """A write no commit announced (a raw UPDATE) reaches the edges at the reconcile's next
    full check, and only then."""
    first = snapshot_cache.publish()
    first.full  # noqa: B018 -- encoded and stored, as a push leaves it
    FakeEdge.version = first.version
    Trunk.objects.filter(pk=trunk.pk).update(max_channels=6)  # no signal, no push
    monkeypatch.setattr(tasks, "_last_full_check", time.monotonic())
    tasks.reconcile_edges()
    assert FakeEdge.version == first.version and FakeEdge.received == []
    monkeypatch.setattr(tasks, "_last_full_check", time.monotonic() - tasks.FULL_CHECK_SECONDS)
    assert tasks.reconcile_edges()["drifted"] == [fake_edge.name]
    (sent,) = FakeEdge.received
    assert FakeEdge.version > first.version
    assert snapshot_wire.decode(sent)["trunks"][0]["max_channels"] == 6


def test_after_a_full_check_the_reconcile_reads_one_row_again(
    trunk, recorded, fake_edge, monkeypatch
):
    FakeEdge.version = snapshot_cache.publish().version
    monkeypatch.setattr(tasks, "_last_full_check", -tasks.FULL_CHECK_SECONDS)
    tasks.reconcile_edges()  # a full check (the first of a process is one)
    monkeypatch.setattr(tasks, "_last_full_check", time.monotonic())
    monkeypatch.setattr(snapshot_cache, "build", lambda *a: pytest.fail("built again"))
    assert tasks.reconcile_edges() == {"drifted": [], "unreachable": []}
