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
    .venv/bin/python bench/edge_core.py --held 100,1000,10000 --calls 200 --rate 100
    .venv/bin/python bench/edge_core.py --stalls 45 --rate 2400   # the longest single inputs

Instructions: two runs under callgrind, collecting only inside the core's entry points
(compiled: the mypyc wrappers of `datagram_received` and `slot_decided`; interpreted: the whole
run minus a run that builds the same messages without feeding the core), N calls after a
warm-up; the line is (instructions) / N. Memory: N calls answered and acknowledged and held;
GC-tracked objects and tracemalloc bytes per held call, after the lingering transactions of
their set-up ended (the state of a call minutes into its conversation); then N short calls
ended, while their four transactions linger (RFC 3261 17: up to 32 s after the BYE; an edge
carrying R short calls a second holds about 32 R of them).

--held (issue 15: the cost per call stays flat from 100 to 10,000 concurrent calls; the
edge_cps.py --cpu-levels figure from /proc moved between 0.88 and 1.76 from run to run with the
machine's load). One callgrind run per H, compiled core, the edge's GC policy installed
(`GcPolicy.install`: freeze, thresholds, timing callback) and its young timer simulated (the
policy's own `_young_collection` every 0.1 s of simulated time). Uninstrumented (valgrind's
client requests, `_Callgrind`): H answered calls at 500/s, 34 s for their set-up to end, and
34 s of short calls at `--rate` (as many lingering transactions end as start); then `--calls`
short calls counted with cache and branch simulation: the core's entry points inclusive
(`datagram_received`, `slot_decided`, `next_timer`, `on_timer`, with the collections they
trigger), every collection wherever triggered (`gc_collect_main`), and the whole process (the
scripted peers too). Instructions growing with H would be algorithmic (a heap's log n, an O(H)
walk); misses growing alone, the working set. The simulated caches start cold when the counted
calls start (and the transactions ending in them were built uninstrumented), the same at every
H. Measured 2026-12-05 (200 calls at 100/s), H = 100 / 1,000 / 10,000: core 1.750 / 1.751 /
1.756 M instructions, D1 misses 28,117 / 28,308 / 28,157, LL (8 MiB) misses 368 / 380 / 467,
mispredicts 47,725 / 47,959 / 48,183; collector 0.022 M at each: flat. With `--last-level 524288`
(the L2 per core) 6,704 and 6,665 LL misses at 100 and 10,000: the held calls are not touched.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import mmap
import os
import re
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

ENTRY_POINTS = ("CPyPy_b2bua___B2bua___datagram_received", "CPyPy_b2bua___B2bua___slot_decided")
# --held: also the timer entry points the runtime calls (its lingering transactions end there,
# and the timer heap holds every held call's deadline).
HELD_ENTRY_POINTS = (
    *ENTRY_POINTS,
    "CPyPy_b2bua___B2bua___next_timer",
    "CPyPy_b2bua___B2bua___on_timer",
)
# Every garbage collection, automatic or not, wherever it was triggered (CPython 3.11).
GC_FUNCTION = "gc_collect_main"
LINGER_S = 34.0  # a finished call's transactions linger up to 32 s (RFC 3261 17)
FILL_RATE = 500  # calls/s that fill the held calls, as bench/edge_cps.py --cpu-levels
# The last-level cache callgrind simulates: this machine's L3 (lscpu: 8 MiB; 16-way, 64 B lines
# assumed; callgrind read 64 MiB from the virtual CPU's CPUID, where 10,000 held calls fit).
LAST_LEVEL_CACHE = 8 * 1024 * 1024


from edge.tests.workload import answered_call as _answered  # noqa: E402
from edge.tests.workload import hang_up, run_calls  # noqa: E402
from edge.tests.workload import scripted_edge as _edge  # noqa: E402


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


def _grown(run: Callable[[], None]) -> tuple[int, int]:
    """GC-tracked objects and tracemalloc bytes left behind by `run` (after a collection)."""
    gc.collect()
    before = len(gc.get_objects())
    tracemalloc.start()
    try:
        start = tracemalloc.take_snapshot()
        run()
        gc.collect()
        grown = sum(s.size_diff for s in tracemalloc.take_snapshot().compare_to(start, "filename"))
    finally:
        tracemalloc.stop()
    return len(gc.get_objects()) - before, grown


def _per_call(objects: int, grown: int, calls: int, what: str) -> None:
    print(
        f"edge core: {objects / calls:.1f} GC-tracked objects and {grown / calls / 1024:.1f} KiB"
        f" (tracemalloc) per {what}, {calls} calls"
    )


def memory(calls: int) -> None:
    t, edge = _edge()
    _answered(t, edge)
    edge.advance(40)  # the warm-up's lingering transactions end

    def held() -> None:
        for _ in range(calls):
            _answered(t, edge)
        edge.wire.clear()
        edge.events.clear()
        edge.advance(40)  # their set-up transactions end too: a call minutes into its conversation

    objects, grown = _grown(held)
    assert edge.core.active_calls == calls + 1
    _per_call(objects, grown, calls, "held call")
    _lingering(calls)


def _lingering(calls: int) -> None:
    """What a finished call holds while its transactions linger (up to 32 s after its BYE):
    at R short calls a second, an edge holds about 32 R of them."""
    t, edge = _edge()
    hang_up(t, edge, *_answered(t, edge))
    edge.advance(40)
    edge.cdrs.clear()

    def finished() -> None:
        for _ in range(calls):
            hang_up(t, edge, *_answered(t, edge))
            edge.advance(0.0001)  # well inside 32 s: every call's transactions still linger
        edge.wire.clear()
        edge.events.clear()
        edge.cdrs.clear()

    objects, grown = _grown(finished)
    assert edge.core.active_calls == 0 and len(edge.core.layer) == 4 * calls
    _per_call(objects, grown, calls, "finished call while its 4 transactions linger")


# --- --held: the cost of one more call while the core holds H answered ones -------------------

# Valgrind's client requests (valgrind.h, amd64): the magic preamble rotates rdi by 3+13+61+51
# = 128 bits (a no-op natively), then `xchg rbx, rbx` asks valgrind; rax points at the request
# and its 5 arguments, the answer comes in rdx (0 when not under valgrind). Python has no
# binding, so the 30 bytes run from an executable page.
_CLIENT_REQUEST = bytes.fromhex(
    "4889f8"  # mov rax, rdi (the request block)
    "31d2"  # xor edx, edx (the answer outside valgrind)
    "48c1c703" "48c1c70d" "48c1c73d" "48c1c733"  # rol rdi, 3 / 13 / 61 / 51
    "4887db"  # xchg rbx, rbx
    "4889d0"  # mov rax, rdx
    "c3"  # ret
)  # fmt: skip
_CALLGRIND = 0x43540000  # VG_USERREQ_TOOL_BASE('C', 'T')
START_INSTRUMENTATION = _CALLGRIND + 4
STOP_INSTRUMENTATION = _CALLGRIND + 5


class _Callgrind:
    """Callgrind's start/stop/zero requests, so that the fill of H calls runs uninstrumented
    (about 5x native speed instead of 50-100x) and only the measured calls are counted."""

    def __init__(self) -> None:
        self._page = mmap.mmap(
            -1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC
        )
        self._page.write(_CLIENT_REQUEST)
        address = ctypes.addressof(ctypes.c_char.from_buffer(self._page))
        self._call = ctypes.CFUNCTYPE(ctypes.c_uint64, ctypes.c_void_p)(address)

    def request(self, code: int) -> None:
        block = (ctypes.c_uint64 * 6)(code, 0, 0, 0, 0, 0)
        self._call(ctypes.addressof(block))


class _StubLoop:
    """Enough of a loop for `GcPolicy.install`: its timers are driven by `_HeldRun.advance`."""

    class _Handle:
        def cancel(self) -> None:
            pass

    def call_later(self, delay: float, callback: object) -> _StubLoop._Handle:
        return self._Handle()


class _HeldRun:
    """One core as the edge runs it: its GC policy installed, simulated time, and the policy's
    young collection every `YOUNG_INTERVAL` of it (the same method the loop's timer calls)."""

    def __init__(self, rate: int) -> None:
        from edge.runtime.gc_policy import YOUNG_INTERVAL, GcPolicy

        self.t, self.edge = _edge()
        self.policy = GcPolicy()
        self.policy.install(_StubLoop())  # type: ignore[arg-type]
        self.young_interval = YOUNG_INTERVAL
        self.next_young = self.edge.now + YOUNG_INTERVAL
        self.gap = 1 / rate

    def advance(self, seconds: float) -> None:
        end = self.edge.now + seconds
        while self.next_young <= end:
            self.edge.advance(self.next_young - self.edge.now)
            self.policy._young_collection()
            self.next_young += self.young_interval
        self.edge.advance(end - self.edge.now)
        self.edge.wire.clear()
        self.edge.cdrs.clear()
        self.edge.events.clear()

    def hold(self, calls: int) -> None:
        for _ in range(calls):
            _answered(self.t, self.edge)
            self.advance(1 / FILL_RATE)

    def short_call(self) -> None:
        t, edge = self.t, self.edge
        hang_up(t, edge, *_answered(t, edge))
        self.advance(self.gap)


def run_held(held: int, calls: int, rate: int) -> None:
    """The callgrind child of --held: fill, settle and reach the steady state uninstrumented,
    then count `calls` short calls (the simulated caches start cold: a few thousand misses in
    all, spread over the calls)."""
    callgrind = _Callgrind()
    run = _HeldRun(rate)
    run.hold(held)
    run.advance(LINGER_S)  # the fill's set-up transactions end
    for _ in range(round(LINGER_S * rate)):  # as many short calls' transactions end as start
        run.short_call()
    active = run.edge.core.active_calls
    callgrind.request(START_INSTRUMENTATION)
    for _ in range(calls):
        run.short_call()
    callgrind.request(STOP_INSTRUMENTATION)
    assert active == run.edge.core.active_calls == held, (active, held)
    sys.stdout.flush()
    os._exit(0)  # no interpreter teardown in the figures


def _costs(line: str) -> list[int]:
    """The event counts at the start of a callgrind_annotate line ('.' is none)."""
    counts = []
    for token in re.sub(r"\(\s*[\d.]+%\)", "", line).split():
        if token == ".":
            counts.append(0)
        elif token[0].isdigit():
            counts.append(int(token.replace(",", "")))
        else:
            break
    return counts


def _parts(summary: str) -> dict[str, dict[str, int]]:
    """The events of the whole process, of the core's entry points (inclusive) and of the
    garbage collector (inclusive), from `callgrind_annotate --inclusive=yes` output."""
    events: list[str] = []
    parts: dict[str, dict[str, int]] = {"core": {}, "gc": {}, "process": {}}
    seen: set[str] = set()
    for line in summary.splitlines():
        if line.startswith("Events shown:"):
            events = line.split()[2:]
        elif line.endswith("PROGRAM TOTALS"):
            parts["process"] = dict(zip(events, _costs(line), strict=True))
        elif " [" in line and line.lstrip()[:1].isdigit():
            function = line.split(" [", 1)[0].rsplit(":", 1)[-1]
            part = (
                "core" if function in HELD_ENTRY_POINTS else "gc" if function == GC_FUNCTION else ""
            )
            if part and function not in seen:  # a function's inclusive line comes first
                seen.add(function)
                for event, count in zip(events, _costs(line), strict=True):
                    parts[part][event] = parts[part].get(event, 0) + count
    return parts


def _held_costs(held: int, calls: int, rate: int, last_level: int) -> dict[str, dict[str, int]]:
    """Events of the whole process, of the core's entry points (inclusive of the collections
    they trigger) and of every garbage collection, over `calls` short calls holding `held`."""
    with tempfile.TemporaryDirectory() as directory:
        out = Path(directory) / "callgrind.out"
        command = [
            "valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
            "--instr-atstart=no", "--cache-sim=yes", "--branch-sim=yes", f"--LL={last_level},16,64",
            sys.executable, __file__, "--run-held", str(held), "--calls", str(calls),
            "--rate", str(rate),
        ]  # fmt: skip
        env = {**os.environ, "TRUNKLINE_EDGE_NATIVE": "1"}
        subprocess.run(command, check=True, env=env, capture_output=True)
        summary = subprocess.run(
            ["callgrind_annotate", "--inclusive=yes", "--threshold=100", str(out)],
            check=True, capture_output=True, text=True,
        ).stdout  # fmt: skip
    return _parts(summary)


def held_levels(levels: list[int], calls: int, rate: int, last_level: int) -> None:
    from edge import native

    if native.status() != "compiled":
        raise SystemExit("--held counts the compiled core's entry points: make native first")
    print(
        f"edge core (compiled), {calls} short calls at {rate}/s (simulated) holding H answered"
        " calls, per call (callgrind, cache and branch simulation):"
    )
    for held in levels:
        parts = _held_costs(held, calls, rate, last_level)
        cells = []
        for part in ("core", "gc", "process"):
            e = parts[part]
            d1 = e.get("D1mr", 0) + e.get("D1mw", 0)
            ll = e.get("ILmr", 0) + e.get("DLmr", 0) + e.get("DLmw", 0)
            mispredicts = e.get("Bcm", 0) + e.get("Bim", 0)
            cells.append(
                f"{part} {e.get('Ir', 0) / calls / 1e6:.3f} M Ir, {d1 / calls:,.0f} D1 miss,"
                f" {ll / calls:,.0f} LL miss, {mispredicts / calls:,.0f} mispredicts"
            )
        print(f"  H={held:6d}: " + "; ".join(cells), flush=True)


# --- --stalls: the longest single inputs of a steady load -------------------------------------


def stalls(seconds: float, rate: int, threshold_ms: float) -> None:
    """Short calls at `rate` a second of simulated time for `seconds`, one core, and every
    input (a datagram, a slot decision, a timer) that took `threshold_ms` or more of real time.

    Issue 15: at 2,400 calls/s the edge's loop stalled for 35-70 ms, 34, 36 and 44 s into a
    soak, inside the core. Past 32 s the finished calls' transactions stop piling up (242,400
    lingering at 2,400 calls/s) and the tables that hold them churn at a constant size:
    CPython's dicts then rebuild themselves whole each time their deleted slots run out, one
    input paying O(table) for all. In-process the same moments show (11, 6 and 5 ms, compiled);
    the edge pays more (a fresh 10 MiB table faulted in, caches cold).
    """
    from edge import b2bua
    from edge.runtime.gc_policy import THRESHOLDS

    slow: list[tuple[float, str, float, int]] = []

    def timed(name: str, method: Callable[..., object]) -> Callable[..., object]:
        def entry(self: b2bua.B2bua, *args: object) -> object:
            started = time.perf_counter()
            try:
                return method(self, *args)
            finally:
                took = (time.perf_counter() - started) * 1000
                if took >= threshold_ms:
                    slow.append((float(args[-2]), name, took, len(self.layer)))  # type: ignore[arg-type]

        return entry

    for name in ("datagram_received", "slot_decided", "on_timer"):
        setattr(b2bua.B2bua, name, timed(name, getattr(b2bua.B2bua, name)))
    t, edge = _edge()
    start = edge.now
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
    for _ in range(int(seconds * rate)):
        hang_up(t, edge, *_answered(t, edge))
        edge.advance(1 / rate)
        edge.cdrs.clear()
        edge.events.clear()
    print(f"inputs of {threshold_ms:g} ms or more, {rate} calls/s for {seconds:g} s (simulated):")
    for now, name, took, layer in slow:
        print(f"  {now - start:6.2f} s  {name:17s} {took:6.1f} ms  ({layer:,} transactions)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--interpreted", action="store_true", help="the core without mypyc")
    parser.add_argument(
        "--memory", action="store_true", help="objects and bytes per held and per finished call"
    )
    parser.add_argument("--run", type=int, help=argparse.SUPPRESS)  # the callgrind child
    parser.add_argument("--run-held", type=int, help=argparse.SUPPRESS)  # the --held child
    parser.add_argument(
        "--rate", type=int, default=200, help="--held, --stalls: short calls/s (simulated)"
    )
    parser.add_argument(
        "--held",
        type=lambda v: [int(n) for n in v.split(",")],
        metavar="H,H,...",
        help="instructions, cache misses and mispredicts per short call holding H answered calls",
    )
    parser.add_argument(
        "--last-level",
        type=int,
        default=LAST_LEVEL_CACHE,
        help="--held: bytes of the simulated last-level cache (default this machine's L3, 8 MiB;"
        " 524288 for its per-core L2)",
    )
    parser.add_argument(
        "--stalls",
        type=float,
        metavar="SECONDS",
        help="short calls at --rate for SECONDS (simulated): every input of --threshold ms or more",
    )
    parser.add_argument("--threshold", type=float, default=5.0, help="--stalls: ms (default 5)")
    args = parser.parse_args()
    if args.stalls is not None:
        stalls(args.stalls, args.rate, args.threshold)
    elif args.held:
        held_levels(args.held, args.calls, args.rate, args.last_level)
    elif args.run_held is not None:
        run_held(args.run_held, args.calls, args.rate)
    elif args.run is not None:
        run_calls(args.run)
    elif args.memory:
        memory(args.calls)
    else:
        instructions(args.calls, interpreted=args.interpreted)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
