"""What a call costs the edge and Kamailio: simulated instructions and cache events, and CPU.

Why: bench/edge_cps.py gives the ratio of calls per second, which the shared machine's load
moves; this shows where the difference comes from. Each peer runs under valgrind's callgrind
(with its cache and branch simulation) twice for the same wall time: once idle, once carrying
SIPp's calls (the same call as edge_cps.py: INVITE, 180, 200, ACK, BYE, 200, at a low rate,
since callgrind runs a program ~50x slower). (loaded - idle) / calls is what a call costs that
process in user space (instructions, L1 and last-level cache misses, mispredicted branches),
start-up, shutdown and timer polling cancelling out; a rough cycle estimate weighs them as
valgrind's manual does. The edge's instructions are split into the sans-IO core (inclusive cost
of its compiled entry points `datagram_received`, `slot_decided`, `on_timer`), uvloop's own
code, and the rest (the asyncio glue in edge/runtime, the interpreter running it, libc); the
split needs the compiled core.

Callgrind counts no kernel time and simulates one process alone on a CPU: the last lines (not
under valgrind) are each peer's user and system CPU per call at ``--cpu-rate`` from /proc, to
be read on a quiet machine.

    .venv/bin/python bench/edge_instructions.py                 # both peers, ~15 minutes
    .venv/bin/python bench/edge_instructions.py --only edge --interpreted --cpu-rate 0
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import edge_cps  # noqa: E402  (bench/edge_cps.py: the peers, the snapshot, the edge launcher)

from edge.tests import sipp_harness as h  # noqa: E402

CORE_ENTRY_POINTS = (
    "CPyPy_b2bua___B2bua___datagram_received",
    "CPyPy_b2bua___B2bua___slot_decided",
    "CPyPy_b2bua___B2bua___on_timer",
)
PEERS = h.default_peers_dir()
VALGRIND = ("valgrind", "--tool=callgrind", "--cache-sim=yes", "--branch-sim=yes")


def _totals(files: list[Path]) -> dict[str, int]:
    """Program totals of each event, the core's inclusive and uvloop's own instructions,
    summed over `files`."""
    found: dict[str, int] = {"core": 0, "uvloop": 0}
    for path in files:
        inclusive = subprocess.run(
            ["callgrind_annotate", "--inclusive=yes", "--threshold=100", str(path)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        events: list[str] = []
        for line in inclusive.splitlines():
            if line.startswith("Events shown:"):
                events = line.split(":", 1)[1].split()
            elif "PROGRAM TOTALS" in line:
                words = [word for word in line.split() if word[:1].isdigit()]  # not "(100.0%)"
                counts = [int(word.replace(",", "")) for word in words[: len(events)]]
                for event, count in zip(events, counts, strict=True):
                    found[event] = found.get(event, 0) + count
            else:
                for name in CORE_ENTRY_POINTS:
                    # The wrapper is listed under two spellings of its C file; the one with
                    # the shared object's name after it is counted.
                    if f":{name} [" in line:
                        found["core"] += int(line.split()[0].replace(",", ""))
        exclusive = subprocess.run(
            ["callgrind_annotate", "--threshold=100", str(path)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        for line in exclusive.splitlines():
            if "uvloop" in line and line.strip()[:1].isdigit():
                found["uvloop"] += int(line.split()[0].replace(",", ""))
    return found


def _stop_group(process: subprocess.Popen[bytes], timeout: float = 120) -> None:
    """SIGTERM to the process group, then wait: valgrind writes its profile at exit."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)


def _retransmissions(workdir: Path) -> int:
    """What SIPp's UAC and UAS retransmitted: answers slower than T1 (500 ms) under valgrind
    mean more messages per call, which the figure would count as the call's cost."""
    total = 0
    for name in ("uac", "uas"):
        stats = h.read_sipp_stats(workdir / f"{name}.stats.csv")
        total += stats.count("Retransmissions") if stats is not None else 0
    return total


def _calls(workdir: Path, proxy: tuple[str, int], uac_ip: str, calls: int, rate: float) -> int:
    uac = h.Sipp(
        workdir,
        "uac",
        builtin="uac",
        local_ip=uac_ip,
        remote=proxy,
        calls=calls,
        rate=rate,
        limit=max(10, int(rate * 4)),
        duration_ms=0,
        service=edge_cps.CALLEE,
        recv_timeout_ms=30_000,
        trace_messages=False,
        trace_errors=False,
        wall_timeout=calls / rate + 120,
    )
    result = uac.start().wait()
    return result.successful


def run_peer(peer: str, workdir: Path, seconds: float, rate: float, *, interpreted: bool) -> str:
    """The line for one peer: (loaded - idle) instructions / calls."""
    results: dict[str, dict[str, int]] = {}
    calls_done = retransmitted = 0
    calls = max(1, round(seconds * rate))
    for phase in ("idle", "loaded"):
        phase_dir = workdir / peer / phase
        phase_dir.mkdir(parents=True, exist_ok=True)
        out = phase_dir / "callgrind.out.%p"
        uas_ip = h.EDGE_IP if peer == "kamailio" else h.CARRIER_IP
        uas = h.Sipp(
            phase_dir,
            "uas",
            builtin="uas",
            local_ip=uas_ip,
            calls=None,
            recv_timeout_ms=None,
            wall_timeout=seconds + 600,
            trace_messages=False,
            trace_errors=False,
        )
        uas.start().wait_listening()
        try:
            if peer == "kamailio":
                kamailio = h.Kamailio(phase_dir, uas.local_port, peers=PEERS)
                script = kamailio.peers / "run-kamailio.sh"
                process = subprocess.Popen(
                    [
                        *VALGRIND,
                        "--trace-children=yes",
                        "--trace-children-skip=*/find,*/sed,*/dirname,*/mktemp,*/head",
                        f"--callgrind-out-file={out}",
                        "bash",
                        str(script),
                        str(kamailio.port),
                        str(uas.local_port),
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,
                )
                deadline = time.monotonic() + 120
                while not h._udp_bound(h.EDGE_IP, kamailio.port):
                    if process.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError("kamailio under valgrind did not start")
                    time.sleep(0.2)
                time.sleep(5)  # its workers start after the socket is bound
                address, uac_ip = kamailio.sip_address, h.EDGE_IP
                stop = partial(_stop_group, process)
            else:
                env = {"TRUNKLINE_EDGE_NATIVE": "0" if interpreted else "1"}
                edge = h.EdgeProcess(
                    phase_dir,
                    edge_cps.bench_snapshot(uas.local_port),
                    node="bench-edge",
                    drain_timeout=1,
                    launcher=[
                        *VALGRIND,
                        f"--callgrind-out-file={out}",
                        sys.executable,
                        str(REPO / "bench" / "edge_cps.py"),
                        "--serve-edge",
                    ],
                    extra_args=["--log-level", "WARNING"],
                    env=env,
                ).start(timeout=300)
                address, uac_ip = edge.sip_address, h.PBX_IP
                stop = partial(edge.stop, grace=300)
            try:
                if phase == "idle":
                    time.sleep(calls / rate)
                else:
                    calls_done = _calls(phase_dir, address, uac_ip, calls, rate)
            finally:
                stop()
        finally:
            uas.stop()
        results[phase] = _totals(sorted(phase_dir.glob("callgrind.out.*")))
        if phase == "loaded":
            retransmitted = _retransmissions(phase_dir)
    if calls_done == 0:
        return f"{peer}: no call completed"
    per_call = {
        key: (results["loaded"][key] - results["idle"][key]) / calls_done for key in results["idle"]
    }
    misses = per_call.get("D1mr", 0) + per_call.get("D1mw", 0) + per_call.get("I1mr", 0)
    last_level = per_call.get("DLmr", 0) + per_call.get("DLmw", 0) + per_call.get("ILmr", 0)
    mispredicted = per_call.get("Bcm", 0) + per_call.get("Bim", 0)
    # A rough cycle estimate from the simulated events (valgrind's manual: an L1 miss costs
    # ~10 cycles, a last-level miss ~100, a mispredicted branch ~15).
    cycles = per_call["Ir"] + 10 * misses + 100 * last_level + 15 * mispredicted
    note = f", {retransmitted} SIPp retransmissions: lower --rate" if retransmitted else ""
    line = (
        f"{peer:9} {per_call['Ir'] / 1e6:5.2f} M instructions per call, L1 misses"
        f" {misses / 1e3:.0f} k, last-level {last_level / 1e3:.1f} k, mispredicted branches"
        f" {mispredicted / 1e3:.0f} k: ~{cycles / 1e6:.2f} M cycles ({calls_done} calls"
        f"{note})"
    )
    if peer == "edge" and per_call["core"] > 0:
        rest = per_call["Ir"] - per_call["core"] - per_call["uvloop"]
        line += (
            f"\n          instructions: core {per_call['core'] / 1e6:.2f} M, uvloop"
            f" {per_call['uvloop'] / 1e6:.2f} M, glue and interpreter {rest / 1e6:.2f} M"
        )
    return line


def _cpu_times(pids: list[int]) -> tuple[float, float]:
    """(user, system) CPU seconds of `pids`, from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    user = system = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            user += int(fields[11])
            system += int(fields[12])
    return user / tick, system / tick


def cpu_split(peer_name: str, rate: int, seconds: float, workdir: Path) -> str:
    """User and system CPU per call of the peer's processes at `rate` (not under valgrind):
    what the kernel's share is, which callgrind does not count."""
    peer = edge_cps.KamailioPeer(PEERS) if peer_name == "kamailio" else edge_cps.EdgePeer([])
    marks: dict[str, tuple[float, float]] = {}
    start = peer.start

    def start_and_mark(*args: object, **kwargs: object) -> edge_cps.Proxy:
        proxy = start(*args, **kwargs)  # type: ignore[arg-type]
        pids = proxy.pids()
        marks["start"] = _cpu_times(pids)
        stop = proxy.stop

        def mark_and_stop() -> None:
            marks["end"] = _cpu_times(pids)
            stop()

        proxy.stop = mark_and_stop
        return proxy

    peer.start = start_and_mark  # type: ignore[method-assign]
    step = edge_cps.run_step(peer, rate, seconds, workdir / f"cpu-{peer_name}")
    calls = max(1, step.successful)
    user = (marks["end"][0] - marks["start"][0]) / calls * 1e6
    system = (marks["end"][1] - marks["start"][1]) / calls * 1e6
    verdict = "" if step.passed else " (the step did not pass: the machine is busy?)"
    return (
        f"{peer_name:9} at {rate} calls/s: user {user:.0f} us, system {system:.0f} us CPU per"
        f" call ({step.successful} calls){verdict}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--only", choices=("kamailio", "edge"))
    parser.add_argument("--seconds", type=float, default=60.0, help="each run's length")
    parser.add_argument(
        "--rate", type=float, default=2.0, help="calls/s of the loaded runs (slow: valgrind)"
    )
    parser.add_argument("--interpreted", action="store_true", help="the edge's core uncompiled")
    parser.add_argument(
        "--cpu-rate", type=int, default=300, help="calls/s of the /proc CPU split (0: skip)"
    )
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    h.require_sipp()
    peers = [args.only] if args.only else ["kamailio", "edge"]
    with tempfile.TemporaryDirectory(prefix="edge-instructions-") as temporary:
        workdir = args.workdir or Path(temporary)
        lines = [
            run_peer(peer, workdir, args.seconds, args.rate, interpreted=args.interpreted)
            for peer in peers
        ]
        if args.cpu_rate:
            lines += [cpu_split(peer, args.cpu_rate, 10, workdir) for peer in peers]
    for line in lines:
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
