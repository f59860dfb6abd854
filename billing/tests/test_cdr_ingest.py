"""CDRs into the database: faithful columns, idempotent ingest, the load_cdrs command, the admin.

These run on whichever database the suite uses: SQLite by default, PostgreSQL (where ingest
goes through COPY and a temporary table) with DATABASE_URL set.
"""

from __future__ import annotations

from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.db import transaction
from django.urls import reverse

from billing.models import Cdr, CdrQuarantine
from billing.services import cdrs_ingest
from edge.cdr import iso_utc, parse_iso_utc
from edge.runtime.journal import CdrJournal, journal_file_name
from edge.tests.test_cdr import SETUP, make_cdr, refused_cdr

pytestmark = pytest.mark.django_db(transaction=True)


def _columns(cdr: Cdr) -> dict:
    return {field.attname: getattr(cdr, field.attname) for field in Cdr._meta.concrete_fields}


def test_ingest_stores_every_field(customer, trunk):
    answered = make_cdr(customer_id=customer.pk, trunk_id=trunk.pk, source_ip="2001:db8::10")
    refused = refused_cdr()
    assert cdrs_ingest(records=[answered, refused]) == 2

    row = _columns(Cdr.objects.get(call_id=answered.call_id))
    assert row.pop("id") > 0
    assert row.pop("ingested_at") is not None
    assert row == {
        "edge": "edge-1",
        "call_id": answered.call_id,
        "a_call_id": answered.a_call_id,
        "b_call_id": answered.b_call_id,
        "customer_id": customer.pk,
        "trunk_id": trunk.pk,
        "direction": "outbound",
        "caller_e164": "+14155550100",
        "callee_e164": "+442079460000",
        "caller_raw": "4155550100",
        "callee_raw": "011442079460000",
        "source_ip": "2001:db8::10",
        "source_port": 5060,
        "routes": answered.routes,
        "answered_by": "sip:198.51.100.8:5060",
        "setup_at": parse_iso_utc(answered.setup_at),
        "ringing_at": parse_iso_utc(answered.ringing_at),
        "answer_at": parse_iso_utc(answered.answer_at),
        "end_at": parse_iso_utc(answered.end_at),
        "duration_ms": 61_200,
        "billable_seconds": 62,
        "final_code": 200,
        "reason": "normal_clearing",
        "hangup_side": "caller",
        "codecs": ["PCMU", "PCMA"],
        "media": answered.media,
        "config_version": 42,
        # No deck is assigned: an answered call is kept unrated, with the reason.
        "rate_id": None,
        "billed_seconds": 0,
        "cost": None,
        "currency": "",
        "unrated_reason": "no_deck",
    }
    assert row["setup_at"].microsecond == 123_000  # milliseconds survive the trip

    stored = Cdr.objects.get(call_id=refused.call_id)
    assert (stored.customer_id, stored.trunk_id, stored.b_call_id) == (None, None, "")
    assert (stored.callee_e164, stored.answered_by, stored.hangup_side) == ("", "", "")
    assert (stored.answer_at, stored.routes, stored.codecs, stored.media) == (None, [], [], None)


AWKWARD = 'tab\there, new\nline, cr\r, back\\slash \\N, "quoted", \\t, é ☎'


@pytest.mark.parametrize("path", ["straight", "on_conflict"])
def test_copy_stores_what_the_columns_say(customer, trunk, path):
    """COPY text (`_copy_line`) and `_column_values` (the bulk insert's) agree on every column,
    for text that COPY must escape, JSON, NULLs, rated and unrated calls, both COPY paths."""
    from billing.models import RateDeck
    from billing.selectors import RatingBook
    from billing.services import _column_values, rate_assignment_create, rate_deck_import
    from core.tenancy import SYSTEM

    deck = RateDeck.objects.create(name="Retail", currency=customer.currency)
    rate_deck_import(
        actor=SYSTEM,
        deck=deck,
        text="prefix,destination,rate_per_minute,connect_fee,first_block,increment,"
        "effective_from,effective_to\n44,UK,0.0500,0.0100,60,6,2020-01-01,\n",
    )
    rate_assignment_create(
        actor=SYSTEM, customer=customer, deck=deck, valid_from=parse_iso_utc(iso_utc(SETUP - 9e6))
    )
    records = [
        make_cdr(
            edge="edge\\1",
            customer_id=customer.pk,
            trunk_id=trunk.pk,
            a_call_id=AWKWARD,
            b_call_id="b\\\t",
            caller_raw=AWKWARD,
            callee_raw="\\",
            answered_by=AWKWARD,
            routes=[
                {"target": AWKWARD, "kind": "gate\\way\t", "status": 200, "reason": "answered"}
            ],
            codecs=[AWKWARD, "PCMU"],
            media={"engine": "rtp\\engine\t1", "mode": "srtp", "packets_in": 5, "mos": 4.25},
        ),
        make_cdr(customer_id=customer.pk, callee_e164="+81312345678", media=None),  # no rate
        make_cdr(customer_id=None, trunk_id=None, caller_e164=None, hangup_side=None),
        refused_cdr(),
    ]
    book = RatingBook()
    expected = {r.call_id: _column_values(r, book) for r in records}
    if path == "straight":
        assert cdrs_ingest(records=records) == len(records)
    else:
        assert cdrs_ingest(records=[records[-1]]) == 1
        assert cdrs_ingest(records=iter(records)) == len(records) - 1  # a re-send, and new
    stored = {cdr.call_id: _columns(cdr) for cdr in Cdr.objects.all()}
    for row in stored.values():
        del row["id"], row["ingested_at"]
    assert stored == expected
    assert stored[records[0].call_id]["cost"] is not None  # rated: the rating columns are there


@pytest.mark.parametrize("special", ["\\", "\n", "\r", "\t"])
def test_one_character_that_copy_must_escape_is_escaped_alone(special):
    # Each is looked for on its own in the joined COPY line: a line with only one of them must
    # still go the escaping way, or COPY would read the value wrong (or fail).
    record = make_cdr(caller_raw=f"41{special}55")
    assert cdrs_ingest(records=[record]) == 1
    assert Cdr.objects.get(call_id=record.call_id).caller_raw == f"41{special}55"


def test_ingest_is_idempotent_on_edge_and_call_id():
    first = [make_cdr() for _ in range(3)]
    assert cdrs_ingest(records=first) == 3
    assert cdrs_ingest(records=first) == 0
    # Old and new together, a record repeated within the batch, the same id on another edge.
    again = [first[0], make_cdr(), make_cdr(edge="edge-2", call_id=first[1].call_id)]
    assert cdrs_ingest(records=[*again, again[1]]) == 2
    assert Cdr.objects.count() == 5
    assert cdrs_ingest(records=[]) == 0


def test_two_ingests_in_one_transaction():
    with transaction.atomic():
        assert cdrs_ingest(records=[make_cdr()]) == 1
        assert cdrs_ingest(records=[make_cdr()]) == 1
    assert Cdr.objects.count() == 2


def test_history_outlives_the_objects_it_names(customer, trunk):
    # Ids of a customer and trunk deleted since (or never known here) still load.
    record = make_cdr(customer_id=customer.pk + 1000, trunk_id=trunk.pk + 1000)
    assert cdrs_ingest(records=[record]) == 1
    assert Cdr.objects.get().customer_id == customer.pk + 1000


def test_ingest_streams_a_generator():
    records = (make_cdr(setup_at=iso_utc(SETUP + n)) for n in range(1200))
    assert cdrs_ingest(records=records) == 1200
    assert Cdr.objects.count() == 1200


# --- the command ------------------------------------------------------------------------------


def _load(*paths: Path | str, **options) -> tuple[str, str, CommandError | None]:
    out, err = StringIO(), StringIO()
    try:
        call_command("load_cdrs", *map(str, paths), stdout=out, stderr=err, **options)
    except CommandError as exc:
        return out.getvalue(), err.getvalue(), exc
    return out.getvalue(), err.getvalue(), None


@pytest.fixture
def edge_node(db):
    from trunking.models import EdgeNode

    return EdgeNode.objects.create(name="edge-1", control_url="http://127.0.0.1:9")


def _plain(**overrides):
    """A record naming no customer or trunk (none that would be noted as deleted)."""
    return make_cdr(**{"customer_id": None, "trunk_id": None, **overrides})


def _held() -> list[tuple[str, str, str]]:
    from billing.models import CdrQuarantine

    return sorted(CdrQuarantine.objects.values_list("source", "reason", "call_id"))


def test_load_cdrs_end_to_end(tmp_path, edge_node):
    journal = CdrJournal(tmp_path, node="edge-1")
    before = [_plain() for _ in range(3)]
    for cdr in before:
        journal.append(cdr, now=0.0)
    journal.close()
    bad = b'{"edge": "edge-1", "call_id": 12}\n'  # a line the edge did not write
    with journal.path.open("ab") as file:
        bad_at = file.tell()
        file.write(bad)
    journal = CdrJournal(tmp_path, node="edge-1")  # the edge restarts and carries on
    after = [_plain() for _ in range(2)]
    for cdr in after:
        journal.append(cdr, now=0.0)
    journal.close()

    # Small batches: the bad line shares one with good lines, and more batches follow it.
    out, err, error = _load(tmp_path, batch_bytes=2500)
    assert f"{journal.path}:4: undecodable: missing fields:" in err
    assert isinstance(error, CommandError) and "1 bad line(s)" in str(error)
    assert "5 record(s) read: 5 inserted, 0 already present, 1 bad line(s) held" in out
    assert set(Cdr.objects.values_list("call_id", flat=True)) == {
        cdr.call_id for cdr in before + after
    }
    # Held as the stream consumer holds it: its place in the journal, reason and text.
    seq = journal_file_name(journal.path.name)[1]
    assert _held() == [(f"{seq}@{bad_at}", "undecodable", "")]
    assert CdrQuarantine.objects.get().line == bad.decode()

    out, err, error = _load(journal.path)  # the same file again: nothing new, nothing twice
    assert "5 record(s) read: 0 inserted, 5 already present, 1 bad line(s) held" in out
    assert f"{journal.path}:4: undecodable" in err and error is not None
    assert Cdr.objects.count() == 5 and len(_held()) == 1


def test_load_cdrs_holds_what_the_stream_consumer_holds(tmp_path, edge_node, customer, trunk):
    """A record of an unregistered edge, one naming another edge than its file, one whose
    customer is gone: held, held, stored and noted; the unknown edge's retried once it is
    registered. Shipping the same files afterwards holds nothing twice."""
    from billing.services import cdr_batches_ingest_in_process, cdr_quarantine_retry
    from edge.runtime.cdr_shipper import InProcessTransport, JournalShipper
    from trunking.models import EdgeNode

    stranger = CdrJournal(tmp_path, node="edge-9")
    unknown = make_cdr(edge="edge-9", customer_id=None, trunk_id=None)
    stranger.append(unknown, now=0.0)
    stranger.close()
    journal = CdrJournal(tmp_path, node="edge-1")
    other = make_cdr(edge="edge-2", customer_id=None, trunk_id=None)
    orphan = make_cdr(customer_id=customer.pk + 1000, trunk_id=trunk.pk)
    good = make_cdr(customer_id=customer.pk, trunk_id=trunk.pk)
    for record in (other, orphan, good):
        journal.append(record, now=0.0)
    journal.close()

    out, err, error = _load(tmp_path)
    assert "2 record(s) read: 2 inserted" in out and "2 bad line(s) held" in out
    assert "1 noted (customer or trunk deleted)" in out
    assert f"{journal.path}:1: edge_mismatch: shipped by 'edge-1', recorded by 'edge-2'" in err
    assert f"{stranger.path}:1: unknown_edge: no edge node named 'edge-9'" in err
    assert error is not None
    assert set(Cdr.objects.values_list("call_id", flat=True)) == {orphan.call_id, good.call_id}
    assert sorted((reason, call_id) for _, reason, call_id in _held()) == [
        ("customer_deleted", orphan.call_id),
        ("edge_mismatch", other.call_id),
        ("unknown_edge", unknown.call_id),
    ]

    # The edges ship the same files later (as if Redis had come back): nothing doubles.
    for node in ("edge-1", "edge-9"):
        shipper = JournalShipper(
            tmp_path, node=node, transport=InProcessTransport(cdr_batches_ingest_in_process)
        )
        shipper.step()
    assert Cdr.objects.count() == 2 and len(_held()) == 3

    EdgeNode.objects.create(name="edge-9", control_url="http://127.0.0.1:9")
    held = CdrQuarantine.objects.filter(reason="unknown_edge")
    assert cdr_quarantine_retry(entries=held) == 1
    assert Cdr.objects.filter(call_id=unknown.call_id).exists()


def test_load_cdrs_torn_last_line(tmp_path, edge_node):
    """The node's newest file: a write in progress, reported and left for later (no error).
    An older file: the edge crashed mid-write and went on in a new file; held as torn."""
    journal = CdrJournal(tmp_path, node="edge-1")
    for _ in range(2):
        journal.append(_plain(), now=0.0)
    journal.close()
    torn = _plain().to_json()[:40]
    with journal.path.open("ab") as file:
        file.write(torn)  # the crash came mid-write

    out, err, error = _load(journal.path)
    assert error is None
    assert f"{journal.path}:3: torn last line (40 bytes) in the node's newest file" in err
    assert "2 inserted, 0 already present, 0 bad line(s) held" in out
    assert "1 torn last line(s) left for a later run" in out
    assert _held() == []

    restarted = CdrJournal(tmp_path, node="edge-1")  # a torn file is not continued
    restarted.append(_plain(), now=0.0)
    restarted.close()
    assert restarted.path != journal.path
    out, err, error = _load(tmp_path)
    assert f"{journal.path}:3: torn_line:" in err and error is not None
    assert "3 record(s) read: 1 inserted, 2 already present, 1 bad line(s) held" in out
    (entry,) = CdrQuarantine.objects.all()
    assert (entry.reason, entry.line) == ("torn_line", torn.decode())


def test_load_cdrs_reads_a_line_longer_than_a_batch(tmp_path, edge_node):
    journal = CdrJournal(tmp_path, node="edge-1")
    records = [_plain(a_call_id="x" * 200), _plain()]
    for record in records:
        journal.append(record, now=0.0)
    journal.close()
    out, _, error = _load(journal.path, batch_bytes=100)
    assert error is None and "2 record(s) read: 2 inserted" in out


def test_load_cdrs_refuses_a_missing_path_or_a_file_not_named_as_a_journal(tmp_path):
    _, _, error = _load(tmp_path / "nowhere.jsonl")
    assert error is not None and "no such file" in str(error)
    stray = tmp_path / "cdrs.jsonl"
    stray.write_bytes(_plain().to_json() + b"\n")
    for path in (stray, tmp_path):
        _, _, error = _load(path)
        assert error is not None and "not named as an edge names its journal files" in str(error)
    assert Cdr.objects.count() == 0


# --- the admin --------------------------------------------------------------------------------


def test_admin_lists_filters_and_searches_cdrs(admin_client, customer):
    answered = make_cdr(customer_id=customer.pk)
    refused = refused_cdr(a_call_id="refused-1@carrier.test", setup_at=iso_utc(SETUP + 5))
    cdrs_ingest(records=[answered, refused])
    url = reverse("admin:billing_cdr_changelist")
    for query, shown in [
        ({}, 2),
        ({"final_code": "2xx"}, 1),
        ({"final_code": "403"}, 1),
        ({"reason": "acl_denied"}, 1),
        ({"direction": "inbound"}, 1),
        ({"customer": customer.pk}, 1),
        ({"q": answered.a_call_id}, 1),
        ({"q": "+44207946"}, 1),
        ({"q": "4155550100"}, 2),
    ]:
        response = admin_client.get(url, query)
        assert response.status_code == 200, query
        assert response.context["cl"].result_count == shown, query

    detail = admin_client.get(reverse("admin:billing_cdr_change", args=[Cdr.objects.first().pk]))
    assert detail.status_code == 200
    assert admin_client.get(reverse("admin:billing_cdr_add")).status_code == 403
