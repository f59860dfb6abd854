"""The journal shipper against a transport that remembers (no Redis, no Django): what it sends,
what it deletes and when, what it sends again. The Redis path with real processes is in
billing/tests/test_cdr_pipeline_faults.py."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import pytest

from edge.cdr import CallDetailRecord
from edge.runtime.cdr_shipper import (
    InProcessTransport,
    JournalShipper,
    ShipBatch,
    committed_field,
)
from edge.runtime.journal import CdrJournal, journal_files
from edge.tests.test_cdr import make_cdr


class Store:
    """A stand-in for stream + consumer: batches arrive; `commit` confirms what arrived."""

    def __init__(self) -> None:
        self.sent: list[ShipBatch] = []
        self.marks: dict[str, int] = {}
        self.epoch = "run-1"
        self.down = False

    def send(self, batches: Sequence[ShipBatch]) -> None:
        if self.down:
            raise ConnectionError("store down")
        self.sent.extend(batches)

    def confirmed(self) -> tuple[str, dict[str, int]]:
        if self.down:
            raise ConnectionError("store down")
        return self.epoch, dict(self.marks)

    def forget(self, fields: Iterable[str], replace: dict[str, int]) -> None:
        for name in fields:
            self.marks.pop(name, None)
        self.marks.update(replace)

    def close(self) -> None:
        pass

    def commit(self) -> None:
        for batch in self.sent:
            self.marks[committed_field(batch)] = batch.end

    def lines(self) -> list[bytes]:
        return [line for batch in self.sent for _, line in batch.lines()]


def _write(journal: CdrJournal, n: int) -> list[CallDetailRecord]:
    records = [make_cdr() for _ in range(n)]
    for record in records:
        journal.append(record, now=0.0)
    journal.flush()
    return records


def test_ships_lines_and_deletes_a_file_only_when_committed_whole(tmp_path: Path) -> None:
    journal = CdrJournal(tmp_path, node="edge-1", rotate_bytes=2000)
    store = Store()
    clock = [0.0]
    shipper = JournalShipper(
        tmp_path, node="edge-1", transport=store, batch_bytes=1500, clock=lambda: clock[0]
    )
    first = _write(journal, 3)  # > 2000 bytes: the next flush rotates
    shipper.step()
    assert [CallDetailRecord.from_json(line).call_id for line in store.lines()] == [
        r.call_id for r in first
    ]
    assert shipper.shipped == 3 and shipper.committed == 0
    second = _write(journal, 1)  # a new file; the first is finished
    assert len(journal_files(tmp_path)) == 2
    shipper.step()
    assert len(store.lines()) == 4
    # Sent is not committed: the finished file stays until the store confirms it.
    shipper.step()
    assert len(journal_files(tmp_path)) == 2
    store.commit()
    shipper.step()
    assert journal_files(tmp_path) == [journal.path]  # the newest is kept: it is appended to
    assert shipper.committed == 4 and shipper.files_done == 1
    assert all(not name.startswith("1:") for name in store.marks)  # the deleted file's marks
    assert second[0].call_id.encode() in store.lines()[-1]


def test_a_store_that_restarted_empty_gets_everything_unconfirmed_again(tmp_path: Path) -> None:
    journal = CdrJournal(tmp_path, node="edge-1")
    store = Store()
    shipper = JournalShipper(tmp_path, node="edge-1", transport=store)
    _write(journal, 2)
    shipper.step()
    store.commit()
    shipper.step()  # the first two confirmed
    _write(journal, 3)
    shipper.step()
    assert len(store.lines()) == 5
    # The store restarts: the three sent and unconfirmed are lost with it; it forgot its marks.
    store.sent, store.marks, store.epoch = store.sent[:1], {}, "run-2"
    shipper.step()  # learns of the restart and rewinds...
    shipper.step()  # ...to what it knows confirmed: only the three go again
    assert len(store.lines()) == 5
    assert shipper.resent == 3
    store.commit()
    shipper.step()
    assert shipper.committed == 5


def test_unreachable_store_pauses_and_loses_nothing(tmp_path: Path) -> None:
    journal = CdrJournal(tmp_path, node="edge-1")
    store = Store()
    shipper = JournalShipper(tmp_path, node="edge-1", transport=store)
    store.down = True
    records = _write(journal, 4)
    assert shipper.step() is False
    assert shipper.errors == 1 and store.sent == []
    store.down = False
    shipper.step()
    assert len(store.lines()) == 4 == len(records)


def test_unconfirmed_batches_go_again_after_resend_after(tmp_path: Path) -> None:
    journal = CdrJournal(tmp_path, node="edge-1")
    store = Store()
    clock = [0.0]
    shipper = JournalShipper(
        tmp_path, node="edge-1", transport=store, resend_after=60, clock=lambda: clock[0]
    )
    _write(journal, 2)
    shipper.step()
    clock[0] = 59
    shipper.step()
    assert len(store.lines()) == 2
    clock[0] = 61
    shipper.step()
    shipper.step()
    assert len(store.lines()) == 4 and shipper.resent == 2


def test_torn_last_line_of_a_finished_file_is_shipped_flagged_not_fatal(tmp_path: Path) -> None:
    journal = CdrJournal(tmp_path, node="edge-1")
    _write(journal, 2)
    journal.close()
    with journal.path.open("ab") as file:
        file.write(make_cdr().to_json()[:50])  # the crash came mid-write
    journal = CdrJournal(tmp_path, node="edge-1")  # restarted: a new file
    store = Store()
    shipper = JournalShipper(tmp_path, node="edge-1", transport=store)
    shipper.step()
    torn = [batch for batch in store.sent if batch.torn]
    assert len(torn) == 1 and len(torn[0].data) == 50
    assert shipper.torn_lines == 1
    store.commit()
    shipper.step()
    assert journal_files(tmp_path) == [journal.path]  # the torn file is done with


def test_the_newest_files_partial_line_waits(tmp_path: Path) -> None:
    journal = CdrJournal(tmp_path, node="edge-1")
    _write(journal, 1)
    with journal.path.open("ab") as file:
        file.write(b'{"edge": "edge-1", "ca')  # a write in progress
    store = Store()
    shipper = JournalShipper(tmp_path, node="edge-1", transport=store)
    shipper.step()
    assert len(store.lines()) == 1 and not any(b.torn for b in store.sent)


def test_a_restarted_shipper_resumes_after_what_is_confirmed(tmp_path: Path) -> None:
    journal = CdrJournal(tmp_path, node="edge-1")
    store = Store()
    _write(journal, 2)
    JournalShipper(tmp_path, node="edge-1", transport=store).step()
    store.commit()
    _write(journal, 1)
    again = JournalShipper(tmp_path, node="edge-1", transport=store)  # the edge restarted
    again.step()
    again.step()
    assert len(store.lines()) == 3  # the two confirmed are not sent again


def test_in_process_transport_confirms_what_the_ingest_returned_from(tmp_path: Path) -> None:
    journal = CdrJournal(tmp_path, node="edge-1", rotate_bytes=100)
    got: list[ShipBatch] = []
    failing = [True]

    def ingest(batches: Sequence[ShipBatch]) -> None:
        if failing[0]:
            raise RuntimeError("database locked")
        got.extend(batches)

    shipper = JournalShipper(tmp_path, node="edge-1", transport=InProcessTransport(ingest))
    _write(journal, 1)
    _write(journal, 1)  # rotated: the first file is finished
    shipper.step()
    assert got == [] and len(journal_files(tmp_path)) == 2
    failing[0] = False
    shipper.step()
    shipper.step()
    assert len(got) == 2 and journal_files(tmp_path) == [journal.path]


@pytest.mark.parametrize(
    "fields",
    [
        {b"edge": b"e", b"seq": b"1", b"start": b"0", b"end": b"5", b"torn": b"0"},  # no data
        {b"edge": b"e", b"seq": b"x", b"start": b"0", b"end": b"1", b"torn": b"0", b"data": b"a"},
        {b"edge": b"e", b"seq": b"1", b"start": b"0", b"end": b"9", b"torn": b"0", b"data": b"a"},
    ],
)
def test_a_stream_entry_that_is_not_a_batch_is_refused(fields: dict[bytes, bytes]) -> None:
    with pytest.raises(ValueError, match="not a CDR batch"):
        ShipBatch.from_fields(fields)


@pytest.mark.parametrize(
    "data, torn, expected",
    [
        (b"a\nbb\n\nccc\n", False, [(100, b"a\n"), (102, b"bb\n"), (105, b"\n"), (106, b"ccc\n")]),
        # A stray CR stays inside its line (the journal ends lines with LF alone), as a CRLF does.
        (b"a\rb\nc\r\n", False, [(100, b"a\rb\n"), (104, b"c\r\n")]),
        (b"a\nbro", True, [(100, b"a\n"), (102, b"bro")]),  # the torn piece comes last, as is
    ],
)
def test_batch_lines_end_at_newlines_with_their_offsets(
    data: bytes, torn: bool, expected: list[tuple[int, bytes]]
) -> None:
    batch = ShipBatch("e", 1, 100, 100 + len(data), data, torn=torn)
    assert list(batch.lines()) == expected
    assert b"".join(line for _, line in batch.lines()) == data
    assert batch.records == len(expected)


def test_a_running_edge_ships_its_cdrs_and_says_so_in_metrics(tmp_path: Path) -> None:
    """The runtime wires the shipper: a refused call's CDR reaches the ingest it was given
    (the embedded default's path) with no command run, and /metrics counts it committed."""
    import asyncio
    import threading

    from edge.runtime.main import EdgeRuntime
    from edge.tests.test_runtime_main import Peer, fetch, options

    got: list[bytes] = []
    arrived = threading.Event()

    def ingest(batches: Sequence[ShipBatch]) -> None:
        got.extend(line for batch in batches for _, line in batch.lines())
        arrived.set()

    async def scenario() -> bytes:
        runtime = EdgeRuntime(options(tmp_path), cdr_ingest=ingest)
        await runtime.start()
        sip, peer = runtime.sip_address, Peer()
        assert sip is not None and runtime.control_address is not None
        metrics_url = f"http://127.0.0.1:{runtime.control_address[1]}/metrics"

        def talk() -> bytes:
            peer.send(peer.invite(sip, callee="+19005550100"), sip)  # a blocked prefix
            peer.final()
            assert arrived.wait(10), "the CDR was not shipped"
            for _ in range(50):  # the shipper counts it once the ingest has returned
                _status, body = fetch("GET", metrics_url)
                if b"trunkline_edge_cdr_committed_total 1.0" in body:
                    break
                time.sleep(0.1)
            return body

        body = await asyncio.to_thread(talk)
        runtime.stop()
        await runtime.run_until_stopped()
        peer.close()
        return body

    body = asyncio.run(scenario())
    (line,) = got
    assert CallDetailRecord.from_json(line).reason == "destination_blocked"
    assert b"trunkline_edge_cdr_committed_total 1.0" in body
    assert b"trunkline_edge_cdr_lag_records 0.0" in body
