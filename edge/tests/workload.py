"""Whole calls through one in-process core, driven by edge/tests/test_b2bua.py's scripted peers.

The workload behind bench/edge_core.py (instructions and memory per call) and the training run of
the compiled core's profile-guided build (edge/native.py): the call bench/edge_cps.py's SIPp
places (INVITE, 100, 180, 200, ACK, BYE, 200 through an outbound trunk with every policy check).
"""

from __future__ import annotations

import gc
from types import ModuleType
from typing import Any

from edge.runtime.gc_policy import THRESHOLDS
from edge.sip.message import Request, Response, make_response


def scripted_edge() -> tuple[ModuleType, Any]:
    """test_b2bua (its peers and helpers) and a core with one trunk that never limits."""
    from edge.tests import test_b2bua as t
    from edge.tests.factories import trunk_doc

    return t, t.Edge(trunks=[trunk_doc(max_cps=10**6, max_channels=10**6)])


def answered_call(t: ModuleType, edge: Any) -> tuple[Request, Response]:
    """A call set up and acknowledged: (the A leg's INVITE, its 200 OK)."""
    a_invite = t.invite(t.PBX)
    edge.send(a_invite, t.PBX)
    edge.take(t.PBX)
    (b_invite,) = edge.take(t.GATEWAY)
    edge.send(t.answer(b_invite, 180, tag="gw", peer=t.GATEWAY), t.GATEWAY)
    edge.send(t.answer(b_invite, 200, tag="gw", peer=t.GATEWAY), t.GATEWAY)
    _, a_ok = edge.take(t.PBX)
    edge.send(t.in_dialog("ACK", a_ok, a_invite, t.PBX, cseq=1), t.PBX)
    edge.take(t.GATEWAY)
    return a_invite, a_ok


def hang_up(t: ModuleType, edge: Any, a_invite: Request, a_ok: Response) -> None:
    """The caller's BYE, relayed and answered."""
    edge.send(t.in_dialog("BYE", a_ok, a_invite, t.PBX, cseq=2), t.PBX)
    edge.take(t.PBX)
    (b_bye,) = edge.take(t.GATEWAY)
    edge.send(make_response(b_bye, 200), t.GATEWAY)


def run_calls(calls: int) -> None:
    """`calls` whole calls through one core (after one warm-up call), with the edge's GC
    thresholds (edge/runtime/gc_policy.py)."""
    t, edge = scripted_edge()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
    for _ in range(calls + 1):
        a_invite, a_ok = answered_call(t, edge)
        hang_up(t, edge, a_invite, a_ok)
        edge.advance(0.001)
        edge.cdrs.clear()
        edge.events.clear()
    assert edge.core.active_calls == 0
