"""Shipped batches into the database: quarantine of bad input, the stream consumer against a
real Redis, the monthly partitions. Runs on SQLite and on PostgreSQL (DATABASE_URL); the parts
that only exist on PostgreSQL (partitions) say so."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

import pytest
import redis
from django.db import connection
from django.urls import reverse

from accounts.models import AuditEntry
from billing.cdr_stream import CdrStreamConsumer
from billing.choices import QuarantineReason
from billing.models import Cdr, CdrIngestProgress, CdrQuarantine
from billing.partitions import DEFAULT_PARTITION, cdr_partitions, cdr_partitions_ensure
from billing.services import (
    cdr_batches_ingest,
    cdr_batches_ingest_in_process,
    cdr_quarantine_retry,
    cdrs_ingest,
)
from billing.tests.cdr_harness import RedisServer
from edge.cdr import iso_utc
from edge.runtime.cdr_shipper import (
    COMMITTED_KEY,
    GROUP,
    STREAM,
    InProcessTransport,
    JournalShipper,
    ShipBatch,
)
from edge.runtime.journal import CdrJournal, journal_files
from edge.tests.test_cdr import SETUP
from edge.tests.test_cdr import make_cdr as _make_cdr
from trunking.models import EdgeNode

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def edge_node(db) -> EdgeNode:
    return EdgeNode.objects.create(name="edge-1", control_url="http://127.0.0.1:9")


def make_cdr(**overrides):
    """A record naming no customer or trunk unless told (those the tests create, if any)."""
    return _make_cdr(**{"customer_id": None, "trunk_id": None, **overrides})


def _batch(lines: list[bytes], *, edge: str = "edge-1", seq: int = 1, start: int = 0,
           torn: bool = False) -> ShipBatch:  # fmt: skip
    data = b"".join(lines)
    return ShipBatch(edge, seq, start, start + len(data), data, torn=torn)


def test_bad_lines_are_quarantined_and_do_not_block_the_rest(edge_node, customer, trunk):
    good = [make_cdr(customer_id=customer.pk, trunk_id=trunk.pk) for _ in range(3)]
    lines = [
        good[0].to_json() + b"\n",
        b'{"edge": "edge-1", "call_id": 12}\n',  # does not decode
        good[1].to_json() + b"\n",
        b"\xff\x00 not even text\n",
        good[2].to_json() + b"\n",
    ]
    report = cdr_batches_ingest(batches=[_batch(lines)])
    assert (report.records, report.inserted, report.quarantined) == (3, 3, 2)
    assert set(Cdr.objects.values_list("call_id", flat=True)) == {r.call_id for r in good}
    held = list(CdrQuarantine.objects.order_by("id"))
    assert [(q.reason, q.stored) for q in held] == [(QuarantineReason.UNDECODABLE, False)] * 2
    offset = len(lines[0])
    assert held[0].source == f"1@{offset}" and "missing fields" in held[0].detail
    assert held[1].line == "\\xff\\x00 not even text\n"  # kept, readable, storable

    # Shipped again (a redelivery): nothing new anywhere.
    again = cdr_batches_ingest(batches=[_batch(lines)])
    assert again.inserted == 0
    assert Cdr.objects.count() == 3 and CdrQuarantine.objects.count() == 2
    progress = CdrIngestProgress.objects.get(edge="edge-1")
    assert (progress.committed, progress.duplicates, progress.quarantined) == (3, 3, 4)
    assert progress.last_call_end_at is not None


def test_torn_line_is_quarantined_as_torn(edge_node):
    record = make_cdr()
    lines = [record.to_json() + b"\n", make_cdr().to_json()[:40]]
    cdr_batches_ingest(batches=[_batch(lines, torn=True)])
    assert Cdr.objects.get().call_id == record.call_id
    assert CdrQuarantine.objects.get().reason == QuarantineReason.TORN_LINE


def test_unknown_edge_is_held_then_retried_once_registered():
    record = make_cdr(edge="edge-9")
    cdr_batches_ingest(batches=[_batch([record.to_json() + b"\n"], edge="edge-9")])
    entry = CdrQuarantine.objects.get()
    assert (entry.reason, entry.stored, entry.call_id) == ("unknown_edge", False, record.call_id)
    assert not Cdr.objects.exists()

    assert cdr_quarantine_retry(entries=[entry]) == 0  # still unknown: held again
    assert CdrQuarantine.objects.get().reason == "unknown_edge"
    EdgeNode.objects.create(name="edge-9", control_url="http://127.0.0.1:9")
    assert cdr_quarantine_retry(entries=CdrQuarantine.objects.all()) == 1
    assert Cdr.objects.get().call_id == record.call_id
    assert not CdrQuarantine.objects.exists()


def test_record_naming_another_edge_is_held(edge_node):
    record = make_cdr(edge="edge-2")
    cdr_batches_ingest(batches=[_batch([record.to_json() + b"\n"])])
    assert CdrQuarantine.objects.get().reason == QuarantineReason.EDGE_MISMATCH
    assert not Cdr.objects.exists()


def test_deleted_customer_or_trunk_is_stored_and_noted(edge_node, customer, trunk):
    gone_customer = make_cdr(customer_id=customer.pk + 1000, trunk_id=trunk.pk)
    gone_trunk = make_cdr(customer_id=customer.pk, trunk_id=trunk.pk + 1000)
    fine = make_cdr(customer_id=customer.pk, trunk_id=trunk.pk)
    lines = [r.to_json() + b"\n" for r in (gone_customer, gone_trunk, fine)]
    report = cdr_batches_ingest(batches=[_batch(lines)])
    assert (report.inserted, report.noted) == (3, 2)
    notes = {(q.call_id, q.reason, q.stored) for q in CdrQuarantine.objects.all()}
    assert notes == {
        (gone_customer.call_id, "customer_deleted", True),
        (gone_trunk.call_id, "trunk_deleted", True),
    }


def test_admin_shows_quarantine_and_retries(admin_client):
    record = make_cdr(edge="edge-7")
    cdr_batches_ingest(batches=[_batch([record.to_json() + b"\n"], edge="edge-7")])
    url = reverse("admin:billing_cdrquarantine_changelist")
    page = admin_client.get(url)
    assert page.status_code == 200 and b"unknown_edge" in page.content
    EdgeNode.objects.create(name="edge-7", control_url="http://127.0.0.1:9")
    entry = CdrQuarantine.objects.get()
    response = admin_client.post(
        url, {"action": "retry_ingest", "_selected_action": [entry.pk]}, follow=True
    )
    assert response.status_code == 200
    assert Cdr.objects.filter(call_id=record.call_id).exists()
    retried = AuditEntry.objects.get(note="retry ingest (unknown_edge)")
    assert retried.action == "delete" and retried.actor is not None and retried.actor.is_staff


def test_embedded_default_ships_the_journal_in_process(edge_node, tmp_path):
    """No Redis: the edge's shipper hands batches to billing's ingest on its own thread."""
    journal = CdrJournal(tmp_path, node="edge-1", rotate_bytes=1000)
    records = [make_cdr() for _ in range(4)]
    for record in records:
        journal.append(record, now=0.0)
        journal.flush()  # each flush past 1000 bytes starts a new file
    shipper = JournalShipper(
        tmp_path, node="edge-1", transport=InProcessTransport(cdr_batches_ingest_in_process)
    )
    shipper.step()
    shipper.step()
    assert sorted(_stored()) == sorted(r.call_id for r in records)
    assert journal_files(tmp_path) == [journal.path]  # the others were committed whole
    assert shipper.committed == 4


def _stored() -> list[str]:
    return list(Cdr.objects.values_list("call_id", flat=True))


# --- the consumer, with a Redis of its own ------------------------------------------------


@pytest.fixture
def stream_redis(tmp_path: Path):
    server = RedisServer(tmp_path).start()
    client = redis.Redis.from_url(server.url)
    try:
        yield client
    finally:
        client.close()
        server.stop()


def test_consumer_stores_confirms_and_acknowledges(edge_node, stream_redis):
    records = [make_cdr() for _ in range(5)]
    lines = [r.to_json() + b"\n" for r in records]
    first, second = _batch(lines[:2]), _batch(lines[2:], start=len(b"".join(lines[:2])))
    for batch in (first, second, first):  # the first one shipped twice
        stream_redis.xadd(STREAM, batch.fields())
    consumer = CdrStreamConsumer(stream_redis, name="c1", block_ms=10)
    assert consumer.consume(budget=5) == 3
    assert Cdr.objects.count() == 5
    assert stream_redis.hgetall(COMMITTED_KEY.format(edge="edge-1")) == {
        b"1:0": str(first.end).encode(),
        f"1:{second.start}".encode(): str(second.end).encode(),
    }
    assert stream_redis.xpending(STREAM, GROUP)["pending"] == 0
    assert stream_redis.xlen(STREAM) == 0


def test_consumer_pauses_automatic_gc_while_storing_and_restores_it(
    edge_node, stream_redis, monkeypatch
):
    import gc

    from billing import cdr_stream

    enabled_while_storing = []

    def store(batches):
        enabled_while_storing.append(gc.isenabled())
        if len(enabled_while_storing) == 1:
            raise RuntimeError("a bug in the ingest")  # the round goes on one by one
        return cdr_batches_ingest(batches=batches)

    monkeypatch.setattr(cdr_stream, "_store", store)
    stream_redis.xadd(STREAM, _batch([make_cdr().to_json() + b"\n"]).fields())
    assert gc.isenabled()
    assert CdrStreamConsumer(stream_redis, name="c1", block_ms=10).consume(budget=5) == 1
    assert enabled_while_storing == [False, False] and gc.isenabled()
    assert Cdr.objects.count() == 1


def test_consumer_quarantines_an_entry_that_is_not_a_batch(edge_node, stream_redis):
    stream_redis.xadd(STREAM, {"edge": "edge-1", "junk": "1"})
    record = make_cdr()
    stream_redis.xadd(STREAM, _batch([record.to_json() + b"\n"]).fields())
    consumer = CdrStreamConsumer(stream_redis, name="c1", block_ms=10)
    assert consumer.consume(budget=5) == 2
    assert Cdr.objects.get().call_id == record.call_id
    assert CdrQuarantine.objects.get().reason == QuarantineReason.INGEST_FAILED
    assert stream_redis.xpending(STREAM, GROUP)["pending"] == 0


def test_consumer_claims_what_a_dead_consumer_left(edge_node, stream_redis):
    record = make_cdr()
    stream_redis.xadd(STREAM, _batch([record.to_json() + b"\n"]).fields())
    dead = CdrStreamConsumer(stream_redis, name="dead")
    dead.ensure_group()
    # The dead consumer read the entry and never acknowledged it (killed mid-batch).
    stream_redis.xreadgroup(GROUP, "dead", {STREAM: ">"}, count=10)
    live = CdrStreamConsumer(stream_redis, name="live", block_ms=10, claim_idle=0)
    assert live.consume(budget=5) == 1
    assert Cdr.objects.get().call_id == record.call_id
    assert stream_redis.xpending(STREAM, GROUP)["pending"] == 0


# --- partitions ---------------------------------------------------------------------------


def test_partitions_by_month_on_postgresql(edge_node):
    if connection.vendor != "postgresql":
        assert cdr_partitions_ensure() == []  # SQLite: a plain table
        return
    with connection.cursor() as cursor:
        cursor.execute("SELECT relkind FROM pg_class WHERE relname = 'billing_cdr'")
        assert cursor.fetchone() == ("p",)  # partitioned
    assert DEFAULT_PARTITION in cdr_partitions()
    try:
        # A record for a month without a partition lands in the default one...
        march = datetime(2031, 3, 5, tzinfo=UTC).timestamp()
        late = make_cdr(setup_at=iso_utc(march), end_at=iso_utc(march + 120))
        now = make_cdr(setup_at=iso_utc(SETUP))
        assert cdrs_ingest(records=[late, now]) == 2
        # ...and moves to its month's partition when that is made.
        created = cdr_partitions_ensure(today=date(2031, 2, 10), months_ahead=2)
        assert created == ["billing_cdr_y2031m01", "billing_cdr_y2031m02",
                           "billing_cdr_y2031m03", "billing_cdr_y2031m04"]  # fmt: skip
        assert cdr_partitions_ensure(today=date(2031, 2, 10), months_ahead=2) == []
        with connection.cursor() as cursor:
            cursor.execute("SELECT call_id FROM billing_cdr_y2031m03")
            assert cursor.fetchall() == [(late.call_id,)]
            cursor.execute(f"SELECT call_id FROM {DEFAULT_PARTITION} WHERE call_id = %s",
                           [late.call_id])  # fmt: skip
            assert cursor.fetchall() == []
        assert Cdr.objects.count() == 2
        assert cdrs_ingest(records=[late, now]) == 0  # idempotent across partitions too
    finally:
        with connection.cursor() as cursor:
            for name in cdr_partitions():
                if name.startswith("billing_cdr_y2031"):
                    cursor.execute(f"DROP TABLE {name}")


def test_edge_node_page_shows_the_edges_shipping_and_what_was_committed(admin_client, edge_node):
    """The edge's own figures come from its /metrics (with the node's token); the database's
    from CdrIngestProgress, which the ingest keeps."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from trunking.tokens import edge_node_token

    token = edge_node_token(edge_node)

    class Metrics(BaseHTTPRequestHandler):
        def do_GET(self):
            ok = self.headers.get("Authorization") == f"Bearer {token}"
            body = (
                b"trunkline_edge_cdr_journalled_total 12.0\n"
                b"trunkline_edge_cdr_shipped_total 12.0\n"
                b"trunkline_edge_cdr_committed_total 9.0\n"
                b"trunkline_edge_cdr_lag_records 3.0\n"
                b"trunkline_edge_cdr_lag_seconds 0.4\n"
            )
            self.send_response(200 if ok else 401)
            self.end_headers()
            self.wfile.write(body if ok else b"")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Metrics)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        EdgeNode.objects.filter(pk=edge_node.pk).update(
            control_url=f"http://127.0.0.1:{server.server_address[1]}"
        )
        cdr_batches_ingest(batches=[_batch([make_cdr().to_json() + b"\n"])])
        page = admin_client.get(reverse("admin:trunking_edgenode_change", args=[edge_node.pk]))
        text = page.content.decode()
        assert "12 journalled, 12 shipped, 9 confirmed committed, lag 3 records / 0.4 s" in text
        assert "Database: 1 committed, 0 re-sent duplicates, 0 quarantined" in text
    finally:
        server.shutdown()
