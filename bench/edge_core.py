"""The edge's sans-IO core alone: CPU instructions and memory per call, in-process, no sockets.

A profiling aid for issue 15's work, not a throughput benchmark (bench/edge_cps.py is that,
against Kamailio): the machines here are shared, so seconds move with the neighbours' load,
while the instructions a call costs, counted by valgrind's callgrind, do not. Each call is the
one edge_cps.py's SIPp places (INVITE, 100, 180, 200, ACK, BYE, 200 through an outbound trunk
with every policy check), driven through `B2bua.datagram_received` by the scripted peers of
edge/tests/test_b2bua.py; the peers' own work is not counted.

    .venv/bin/python bench/edge_core.py              # instructions/call under callgrind
    .venv/bin/python bench/edge_core.py --memory     # GC objects and bytes per held call
    .venv/bin/python bench/edge_core.py --calls 300 --interpreted

Instructions: two runs under callgrind, collecting only inside the core's entry points
(compiled: the mypyc wrappers of `datagram_received` and `slot_decided`; interpreted: the whole
run minus a run that builds the same messages without feeding the core), N calls after a
warm-up; the line is (instructions) / N. Memory: N calls answered and acknowledged and held;
GC-tracked objects and tracemalloc bytes per held call, after the lingering transactions of
their set-up ended (the state of a call minutes into its conversation).
"""

from __future__ import annotations

import argparse
import gc
import os
import subprocess
import sys
import tempfile
import tracemalloc
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

ENTRY_POINTS = ("CPyPy_b2bua___B2bua___datagram_received", "CPyPy_b2bua___B2bua___slot_decided")


def _edge():  # type: ignore[no-untyped-def]
    from edge.tests import test_b2bua as t
    from edge.tests.factories import trunk_doc

    return t, t.Edge(trunks=[trunk_doc(max_cps=10**6, max_channels=10**6)])


def _answered(t, edge):  # type: ignore[no-untyped-def]
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


def run_calls(calls: int) -> None:
    """`calls` whole calls through one core (after one warm-up call)."""
    from edge.sip.message import make_response

    t, edge = _edge()
    gc.freeze()
    gc.set_threshold(2_000, 2, 2**31 - 1)  # as the edge runs (edge/runtime/gc_policy.py)
    for _ in range(calls + 1):
        a_invite, a_ok = _answered(t, edge)
        edge.send(t.in_dialog("BYE", a_ok, a_invite, t.PBX, cseq=2), t.PBX)
        edge.take(t.PBX)
        (b_bye,) = edge.take(t.GATEWAY)
        edge.send(make_response(b_bye, 200), t.GATEWAY)
        edge.advance(0.001)
        edge.cdrs.clear()
        edge.events.clear()
    assert edge.core.active_calls == 0


def _callgrind(calls: int, *, compiled: bool) -> int:
    with tempfile.TemporaryDirectory() as directory:
        out = Path(directory) / "callgrind.out"
        command = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"]
        if compiled:
            command += [f"--toggle-collect={name}" for name in ENTRY_POINTS]
        command += [sys.executable, __file__, "--run", str(calls)]
        env = {**os.environ, "TRUNKLINE_EDGE_NATIVE": "1" if compiled else "0"}
        subprocess.run(command, check=True, env=env, capture_output=True)
        summary = subprocess.run(
            ["callgrind_annotate", str(out)], check=True, capture_output=True, text=True
        ).stdout
    line = next(line for line in summary.splitlines() if "PROGRAM TOTALS" in line)
    return int(line.split()[0].replace(",", ""))


def instructions(calls: int, *, interpreted: bool) -> None:
    from edge import native

    compiled = not interpreted and native.status() == "compiled"
    if compiled:
        per_call = _callgrind(calls, compiled=True) / (calls + 1)
    else:  # no entry point to toggle on: the difference between two lengths of run
        per_call = (
            _callgrind(calls * 2, compiled=False) - _callgrind(calls, compiled=False)
        ) / calls
        print("  (interpreted: the peers' own work is counted too)")
    core = "compiled" if compiled else "interpreted"
    print(f"edge core ({core}): {per_call / 1e6:.2f} M instructions per call (callgrind)")


def memory(calls: int) -> None:
    t, edge = _edge()
    _answered(t, edge)
    edge.advance(40)  # the warm-up's lingering transactions end
    gc.collect()
    before = len(gc.get_objects())
    tracemalloc.start()
    start = tracemalloc.take_snapshot()
    for _ in range(calls):
        _answered(t, edge)
    edge.wire.clear()
    edge.events.clear()
    edge.advance(40)  # their set-up transactions end too: a call minutes into its conversation
    gc.collect()
    grown = sum(s.size_diff for s in tracemalloc.take_snapshot().compare_to(start, "filename"))
    objects = len(gc.get_objects()) - before
    assert edge.core.active_calls == calls + 1
    print(
        f"edge core: {objects / calls:.1f} GC-tracked objects and {grown / calls / 1024:.1f} KiB"
        f" (tracemalloc) per held call, {calls} calls"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--interpreted", action="store_true", help="the core without mypyc")
    parser.add_argument("--memory", action="store_true", help="objects and bytes per held call")
    parser.add_argument("--run", type=int, help=argparse.SUPPRESS)  # the callgrind child
    args = parser.parse_args()
    if args.run is not None:
        run_calls(args.run)
    elif args.memory:
        memory(args.calls)
    else:
        instructions(args.calls, interpreted=args.interpreted)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
