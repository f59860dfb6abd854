"""Answered calls of an edge killed with SIGKILL get their CDRs when it restarts (issue 9.4).

SIPp places calls through a real `python -m edge`: 20 are answered and held, 2 more end
normally first. The edge is killed (no chance to write anything), restarted on the same
journal directory, and must then have written exactly one CDR per call: `edge_restart` for
each held call, ending at the last moment its checkpoint knew it alive (after the answer,
not after the kill), and no second record for the calls that had ended.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Sequence
from datetime import datetime

import pytest

from edge.runtime.checkpoint import RESTART_REASON, checkpoint_path
from edge.tests import sipp_harness as h
from edge.tests.test_edge_sipp import (  # noqa: F401 (lab is a fixture)
    DIALLED,
    DID,
    Lab,
    lab,
    lab_snapshot,
    sent_call_ids,
)

pytestmark = [pytest.mark.sipp]

HELD = 20
ENDED = 2


def checkpointed_calls(edge: h.EdgeProcess, *, besides: Sequence[str] = ()) -> int:
    """How many calls the edge's checkpoint file lists, but those whose caller-side Call-ID
    is in `besides` (a line being written is skipped)."""
    path = checkpoint_path(edge.journal_dir, edge.node)
    try:
        lines = path.read_bytes().splitlines()
    except FileNotFoundError:
        return 0
    ids = set()
    for line in lines:
        try:
            record = json.loads(line)["record"]
        except (ValueError, KeyError):
            continue
        if record["a_call_id"] not in besides:
            ids.add(record["call_id"])
    return len(ids)


def parse(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_answered_calls_of_a_killed_edge_get_edge_restart_cdrs(lab: Lab) -> None:  # noqa: F811
    gateway = lab.uas("uas_basic.xml", "gateway", h.CARRIER_IP, calls=None)
    snapshot = lab_snapshot(gateway_port=gateway.local_port, max_channels=50, max_cps=100)
    edge = lab.edge(snapshot)
    gateway.start().wait_listening()

    short = lab.uac(
        "uac_basic.xml",
        "pbx-short",
        h.PBX_IP,
        edge,
        caller=DID,
        callee=DIALLED,
        calls=ENDED,
        duration_ms=100,
    ).run()
    assert short.ok, short.explain()
    ended = edge.wait_for_cdrs(ENDED)
    assert [r["reason"] for r in ended] == ["normal_clearing"] * ENDED

    held = lab.uac(
        "uac_wait_bye.xml",
        "pbx-held",
        h.PBX_IP,
        edge,
        caller=DID,
        callee=DIALLED,
        calls=HELD,
        rate=HELD,
        recv_timeout_ms=60_000,
    ).start()
    edge.wait_active_calls(HELD, timeout=20)
    deadline = time.monotonic() + 10
    while checkpointed_calls(edge, besides=sent_call_ids(short)) < HELD:
        assert time.monotonic() < deadline, "the checkpoint does not list the answered calls"
        time.sleep(0.05)

    edge.process.send_signal(signal.SIGKILL)
    edge.process.wait(10)
    killed_at = time.time()
    held.stop(grace=1)

    # The same node name and journal directory (the workdir), new ports.
    restarted = h.EdgeProcess(edge.workdir, snapshot, node=edge.node, drain_timeout=5.0)
    lab.edges.append(restarted)
    restarted.start()
    assert "answered calls were left unfinished" in h._tail(restarted.stderr_path)

    records = restarted.cdrs()
    held_ids = sent_call_ids(held.result())
    assert len(held_ids) == HELD
    for a_call_id in held_ids:
        (record,) = h.cdrs_for(records, a_call_id)
        assert record["reason"] == RESTART_REASON and record["final_code"] == 200
        assert record["hangup_side"] == "edge"
        answer, end = parse(record["answer_at"]), parse(record["end_at"])
        assert answer <= end <= datetime.fromtimestamp(killed_at, answer.tzinfo)
        assert record["duration_ms"] == round((end - answer).total_seconds() * 1000)
    for a_call_id in sent_call_ids(short):
        (record,) = h.cdrs_for(records, a_call_id)
        assert record["reason"] == "normal_clearing"
    assert len(records) == HELD + ENDED
    assert not checkpoint_path(restarted.journal_dir, restarted.node).exists() or (
        checkpointed_calls(restarted) == 0
    )
