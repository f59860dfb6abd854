"""Calls per second through the edge, as a ratio to Kamailio measured in the same run.

Load and far end are SIPp's built-in scenarios (shared/peers/README.md): ``sipp -sn uac`` sends
calls of zero duration (INVITE, 100, 180, 200, ACK, BYE, 200) to the proxy under test, which
relays them to ``sipp -sn uas``. A rate passes when every call of a run of ``--seconds``
seconds (rate x seconds calls) succeeds and the run ends on time (within 10 % + 0.5 s: SIPp
kept the rate rather than throttling on piled-up calls). Each
step starts a fresh UAS and a fresh proxy (after an overload, retransmissions from the previous
run poison the next). The search doubles the rate until a step fails, then bisects between the
last pass and the first failure until the gap is within ``--resolution`` or the peer's time
budget is spent; the figure is the highest rate that passed.

The peers, run the same way one after the other:

- kamailio: shared/peers/run-kamailio.sh, dialog-stateful and record-routing, one worker; UAC
  and UAS on 127.0.0.1 as in peers/README.md.
- edge: ``python -m edge`` (through this file's ``--serve-edge`` mode, which is the same entry
  point plus a live-event sink that encodes every batch and drops it, as the live-board
  publisher's stand-in). One IP-authenticated trunk with every policy check on: ACL
  127.0.0.2/32 (the UAC's address), allowed destinations +1, blocked prefixes +1900 and +1976,
  caller-ID pass-through (the built-in UAC calls from ``sipp``, not a number), channel and CPS
  limits far above the load; one carrier gateway, the UAS on 127.0.0.3; the CDR journal on
  local disk. The edge runs its compiled core when it is built and current (edge/native.py;
  the run prints which). The built-in UAC dials ``-s 14155550100``, which the trunk's default
  country (US) makes +14155550100.

Then, for the edge:

- latency: a run at half the rate found, with ``-trace_rtt``: SIPp's per-call response time
  from the INVITE to its 200 (the scenario's ``rtd`` mark), in whole milliseconds (SIPp's clock
  ticks in milliseconds, so "<1 ms" is as fine as it gets); p50, p99 and max over every call
  of the run, which lasts a step (``--latency-seconds`` to soak longer). Kamailio's figures at
  half its own rate are printed beside them.
- memory: the edge's VmRSS (/proc/PID/status) idle and holding ``--rss-calls`` concurrent
  calls (the UAC with ``-d 60000 -l N -r 500 -m N``), read when the control API reports them
  all active; then everything is stopped.

Output: one line per step, a summary, and last ``edge_cps_ratio_vs_kamailio=<x>`` (edge
calls/s over Kamailio's; ``nan`` when only one peer ran).

``--media``: the same search with every call's media anchored in a userspace rtpengine
(``--table=-1`` on loopback) that the peer under test drives: the edge's trunk in media mode
``anchor`` (``--rtpengine``), Kamailio with its ``rtpengine`` module (bench/kamailio-media/, a
copy of shared/peers extended with offer/answer/delete and the same flags). Like the proxy and
the UAS, each step gets a fresh rtpengine: after an overloaded step it holds thousands of
half-made sessions and answers the retransmissions of their requests, which made the steps
after it (and the other peer, when one rtpengine served the whole run) fail at rates that had
passed. SIPp's built-in scenarios carry SDP (no RTP is played: this measures signalling with
media control). Each step's line ends with the sessions its rtpengine still held when the
proxy had stopped (0: every call's session was deleted). Last line
``edge_media_cps_ratio_vs_kamailio=<x>``; no RSS run.

Usage:
    .venv/bin/python bench/edge_cps.py                  # both peers, about 6 minutes
    .venv/bin/python bench/edge_cps.py --quick          # a 1-minute smoke run
    .venv/bin/python bench/edge_cps.py --only kamailio  # the reference alone
    .venv/bin/python bench/edge_cps.py --interpreted    # the edge without its compiled core
    .venv/bin/python bench/edge_cps.py --only edge --latency-seconds 60   # a minute at half rate
    .venv/bin/python bench/edge_cps.py --media --quick  # media anchored in rtpengine, both peers
Needs sipp (Debian sip-tester) and kamailio (Debian kamailio); shared/peers is looked for
beside the repository (../shared/peers), or give --peers DIR.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from tempfile import mkdtemp
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from edge import native  # noqa: E402
from edge.tests import sipp_harness as h  # noqa: E402
from edge.tests.factories import gateway_doc, snapshot_doc, trunk_doc  # noqa: E402

CALLEE = "14155550100"  # the R-URI user of the built-in uac (-s); +14155550100 once normalised
RSS_RATE = 500
RSS_HOLD_MS = 60_000
STEP_OVERHEAD_S = 1.5  # start and stop of a proxy, a UAS and a UAC, roughly


# --- peers ------------------------------------------------------------------------------------


@dataclass
class Proxy:
    address: tuple[str, int]
    stop: Callable[[], None]
    edge: h.EdgeProcess | None = None


class Peer:
    name = ""
    uac_ip = h.EDGE_IP
    uas_ip = h.EDGE_IP

    def start(self, workdir: Path, uas_port: int, rtpengine: h.Rtpengine | None = None) -> Proxy:
        raise NotImplementedError


class KamailioPeer(Peer):
    name = "kamailio"
    uac_ip = h.EDGE_IP
    uas_ip = h.EDGE_IP  # the peer's config relays to 127.0.0.1:UAS_PORT

    def __init__(self, peers: Path) -> None:
        self.peers = peers

    def start(self, workdir: Path, uas_port: int, rtpengine: h.Rtpengine | None = None) -> Proxy:
        if rtpengine is not None:  # bench/kamailio-media/run-kamailio.sh reads it
            os.environ["TRUNKLINE_RTPENGINE_NG"] = "{}:{}".format(*rtpengine.ng_address)
        proxy = h.Kamailio(workdir, uas_port, peers=self.peers).start()
        return Proxy(proxy.sip_address, proxy.stop)


class EdgePeer(Peer):
    name = "edge"
    uac_ip = h.PBX_IP  # in the trunk's ACL
    uas_ip = h.CARRIER_IP  # the carrier gateway

    def __init__(self, extra_args: list[str], *, media: bool = False) -> None:
        self.extra_args = extra_args
        self.media = media
        self.core: str | None = None  # "compiled" or "interpreted (why)", from its /health

    def start(self, workdir: Path, uas_port: int, rtpengine: h.Rtpengine | None = None) -> Proxy:
        media_args = [] if rtpengine is None else ["--rtpengine", rtpengine.spec]
        edge = h.EdgeProcess(
            workdir,
            bench_snapshot(uas_port, media=self.media),
            node="bench-edge",
            drain_timeout=1,
            launcher=[sys.executable, str(Path(__file__).resolve()), "--serve-edge"],
            extra_args=["--log-level", "WARNING", *self.extra_args, *media_args],
        ).start()
        if self.core is None:
            self.core = str(edge.health().get("core"))
            print(f"  (edge core: {self.core})", flush=True)

        def stop() -> None:
            code = edge.stop(grace=5)
            if code not in (0, None):
                print(f"  (the edge exited {code})\n{edge.explain()}", file=sys.stderr)

        return Proxy(edge.sip_address, stop, edge)


def bench_snapshot(gateway_port: int, *, media: bool = False) -> dict[str, Any]:
    trunk = trunk_doc(
        media_mode="anchor" if media else "passthrough",
        id=1,
        customer=1,
        acl=[f"{h.PBX_IP}/32"],
        allowed_destinations=["+1"],
        blocked_prefixes=["+1900", "+1976"],
        caller_id_policy="pass_through",
        max_channels=100_000,
        max_cps=100_000,
        origination_uris=[],
    )
    gateway = gateway_doc(id=1, host=h.CARRIER_IP, port=gateway_port, prefixes=["+1"])
    return snapshot_doc(trunks=[trunk], numbers=[["+14155550100", 1, 1]], gateways=[gateway])


def serve_edge(argv: list[str]) -> int:
    """``python -m edge`` with a live-event sink: each batch is encoded, counted, dropped."""
    from edge.options import build_parser, options_from_namespace
    from edge.runtime.events import BatchingSink
    from edge.runtime.main import run

    parser = build_parser()
    options = options_from_namespace(parser.parse_args(argv))
    published = {"batches": 0, "bytes": 0}

    def publish(batch: bytes) -> None:
        published["batches"] += 1
        published["bytes"] += len(batch)

    return run(options, events=BatchingSink(publish, node=options.node))


# --- one step ---------------------------------------------------------------------------------


@dataclass
class Step:
    peer: str
    rate: int
    calls: int
    successful: int
    failed: int
    returncode: int | None
    elapsed: float
    passed: bool
    workdir: Path
    sessions_left: int | None = None  # --media: what the step's rtpengine still held

    def line(self) -> str:
        verdict = "pass" if self.passed else "FAIL"
        left = "" if self.sessions_left is None else f"  {self.sessions_left} sessions left"
        return (
            f"  {self.peer:9} {self.rate:6d} calls/s  {self.successful:7d}/{self.calls:<7d} ok"
            f"  {self.failed:6d} failed  {self.elapsed:5.1f} s  exit {self.returncode}  {verdict}"
            f"{left}"
        )


def _uas(peer: Peer, workdir: Path, *, wall_timeout: float) -> h.Sipp:
    """SIPp's built-in UAS as the far end, answering every call until stopped."""
    return h.Sipp(
        workdir,
        "uas",
        builtin="uas",
        local_ip=peer.uas_ip,
        calls=None,
        recv_timeout_ms=None,
        trace_messages=False,
        trace_errors=False,
        wall_timeout=wall_timeout,
    )


def run_step(
    peer: Peer,
    rate: int,
    seconds: float,
    workdir: Path,
    *,
    trace_rtt: bool = False,
    media: bool = False,
) -> Step:
    workdir.mkdir(parents=True, exist_ok=True)
    calls = max(1, round(rate * seconds))
    uas = _uas(peer, workdir, wall_timeout=seconds + 120)
    uas.start().wait_listening()
    proxy = None
    rtpengine = None
    sessions_left = None
    try:
        if media:
            # 4 ports per call in flight (RTP and RTCP on both legs): 5,000 calls at once.
            rtpengine = h.Rtpengine(workdir / "rtpengine", ports=(10000, 29999)).start()
        proxy = peer.start(workdir, uas.local_port, rtpengine)
        uac = h.Sipp(
            workdir,
            "uac",
            builtin="uac",
            local_ip=peer.uac_ip,
            remote=proxy.address,
            calls=calls,
            rate=rate,
            limit=max(100, rate),  # a second's worth of calls in flight
            duration_ms=0,
            service=CALLEE,
            recv_timeout_ms=5_000,  # a call waiting 5 s for an answer has failed anyway
            trace_messages=False,
            trace_errors=False,
            wall_timeout=seconds + 20,
            extra=["-trace_rtt", "-rtt_freq", "1"]
            if trace_rtt
            else (),  # SIPp drops a partial dump at exit
        )
        started = time.monotonic()
        result = uac.run()
        elapsed = time.monotonic() - started
    finally:
        uas.stop()
        if proxy is not None:
            proxy.stop()
        if rtpengine is not None:
            with contextlib.suppress(OSError):  # no answer to `list`: unknown
                sessions_left = len(rtpengine.sessions())
            rtpengine.stop()
    # SIPp throttles when calls pile up (-l): a run that overran did not carry the rate.
    on_time = elapsed <= seconds * 1.1 + 0.5
    passed = (
        result.returncode == 0
        and not result.timed_out
        and result.failed == 0
        and result.successful == calls
        and on_time
    )
    return Step(
        peer.name,
        rate,
        calls,
        result.successful,
        result.failed,
        result.returncode,
        elapsed,
        passed,
        workdir,
        sessions_left,
    )


# --- the search -------------------------------------------------------------------------------


@dataclass
class Search:
    best: int  # highest rate that passed (0: none)
    first_failure: int | None
    steps: list[Step]
    out_of_time: bool


def find_max_rate(
    peer: Peer,
    workdir: Path,
    *,
    start: int,
    ceiling: int,
    seconds: float,
    resolution: float,
    budget: float,
    media: bool = False,
) -> Search:
    deadline = time.monotonic() + budget
    steps: list[Step] = []

    def affordable() -> bool:
        return time.monotonic() + seconds + STEP_OVERHEAD_S <= deadline

    def attempt(rate: int) -> bool:
        step = run_step(
            peer, rate, seconds, workdir / f"{peer.name}-{rate}-{len(steps)}", media=media
        )
        steps.append(step)
        print(step.line(), flush=True)
        return step.passed

    best, failure = 0, None
    rate = start
    # Coarse: double up from `start` (or halve down if `start` already fails).
    while affordable():
        if attempt(rate):
            best = rate
            if failure is not None or rate * 2 > ceiling:
                break
            rate *= 2
        else:
            failure = rate
            if best or rate <= 10:
                break
            rate //= 2
    # Fine: bisect between the last pass and the first failure.
    if failure is not None and best:
        low, high = best, failure
        while high - low > max(10, low * resolution) and affordable():
            middle = (low + high) // 2
            if attempt(middle):
                low = middle
            else:
                high = middle
        best, failure = low, high
    out_of_time = not affordable()
    return Search(best, failure, steps, out_of_time)


# --- latency and memory -----------------------------------------------------------------------


@dataclass
class Latency:
    rate: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    calls: int
    passed: bool


def measure_latency(
    peer: Peer, rate: int, seconds: float, workdir: Path, *, media: bool = False
) -> Latency | None:
    if rate <= 0:
        return None
    step = run_step(peer, rate, seconds, workdir, trace_rtt=True, media=media)
    print(step.line() + "  (latency)", flush=True)
    times = []
    for path in workdir.glob("*_rtt.csv"):
        for line in path.read_text().splitlines()[1:]:
            fields = line.split(";")
            if len(fields) >= 3 and fields[2].strip() == "1":
                try:
                    times.append(float(fields[1]))
                except ValueError:
                    continue
    if not times:
        return None
    return Latency(
        rate, percentile(times, 50), percentile(times, 99), max(times), len(times), step.passed
    )


def _ms(value: float) -> str:
    """SIPp times whole milliseconds: 0 means under one."""
    return "<1 ms" if value < 1 else f"{value:.0f} ms"


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    rank = max(0, math.ceil(pct / 100 * len(ordered)) - 1)
    return ordered[rank]


@dataclass
class Memory:
    idle_kib: int | None
    loaded_kib: int | None
    active_calls: int
    wanted: int


def measure_rss(peer: EdgePeer, calls: int, workdir: Path) -> Memory:
    """The edge's RSS idle and holding `calls` concurrent calls."""
    workdir.mkdir(parents=True, exist_ok=True)
    uas = _uas(peer, workdir, wall_timeout=600)
    uas.start().wait_listening()
    proxy = None
    uac = None
    try:
        proxy = peer.start(workdir, uas.local_port)
        assert proxy.edge is not None
        edge = proxy.edge
        idle = edge.rss_kib()
        uac = h.Sipp(
            workdir,
            "uac",
            builtin="uac",
            local_ip=peer.uac_ip,
            remote=proxy.address,
            calls=calls,
            rate=RSS_RATE,
            limit=calls,
            duration_ms=RSS_HOLD_MS,
            service=CALLEE,
            recv_timeout_ms=None,
            trace_messages=False,
            trace_errors=False,
            wall_timeout=RSS_HOLD_MS / 1000 + 60,
        ).start()
        deadline = time.monotonic() + calls / RSS_RATE + 20
        active = 0
        while time.monotonic() < deadline:
            active = int(edge.health().get("active_calls", 0))
            if active >= calls:
                break
            time.sleep(0.25)
        time.sleep(0.5)  # let the last answers settle
        loaded = edge.rss_kib()
        active = int(edge.health().get("active_calls", active))
    finally:
        if uac is not None:
            uac.stop()
        if proxy is not None:
            proxy.stop()
        uas.stop()
    return Memory(idle, loaded, active, calls)


# --- main -------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--only", choices=("kamailio", "edge"), help="run one peer only")
    parser.add_argument("--quick", action="store_true", help="a 1-minute smoke run")
    parser.add_argument("--peers", type=Path, help="shared/peers (default: ../shared/peers)")
    parser.add_argument("--seconds", type=float, help="length of each step (default 10; quick 2)")
    parser.add_argument(
        "--latency-seconds",
        type=float,
        help="length of the half-rate latency run (default: a step's); 60 or more shows what "
        "state lingering for 32 s costs (garbage-collection pauses, edge/runtime/gc_policy.py)",
    )
    parser.add_argument("--start-rate", type=int, help="first rate (default 100; quick 400)")
    parser.add_argument("--max-rate", type=int, default=20_000, help="never try above this")
    parser.add_argument("--budget", type=float, help="seconds for the whole run (default 360)")
    parser.add_argument("--rss-calls", type=int, help="concurrent calls for RSS (5000; quick 1000)")
    parser.add_argument("--no-rss", action="store_true", help="skip the memory measurement")
    parser.add_argument("--workdir", type=Path, help="keep SIPp/edge/Kamailio files here")
    parser.add_argument(
        "--edge-arg", action="append", default=[], help="extra option for the edge (repeatable)"
    )
    parser.add_argument(
        "--media",
        action="store_true",
        help="anchor every call's media in rtpengine, a fresh one per step (needs rtpengine)",
    )
    parser.add_argument(
        "--interpreted",
        action="store_true",
        help="run the edge's Python source even if its compiled core is built (edge/native.py)",
    )
    args = parser.parse_args(argv)
    if args.interpreted:
        os.environ[native.ENV] = "0"  # the edge processes inherit it

    quick = args.quick
    seconds = args.seconds or (2.0 if quick else 10.0)
    start_rate = args.start_rate or (400 if quick else 100)
    budget = args.budget or (60.0 if quick else 360.0)
    resolution = 0.25 if quick else 0.05
    rss_calls = args.rss_calls or (1000 if quick else 5000)
    peers_dir = args.peers or h.default_peers_dir()
    workdir = args.workdir or Path(mkdtemp(prefix="edge-cps-"))
    workdir.mkdir(parents=True, exist_ok=True)

    if h.sipp_binary() is None:
        print("sipp is not installed (apt-get install sip-tester)", file=sys.stderr)
        return 2
    edge_args = list(args.edge_arg)
    if args.media:
        if h.rtpengine_binary() is None:
            print("rtpengine is not installed (apt-get install rtpengine-daemon)", file=sys.stderr)
            return 2
        peers_dir = REPO / "bench" / "kamailio-media"
        args.no_rss = True
    return _run(args, peers_dir, workdir, edge_args, seconds=seconds, start_rate=start_rate,
                budget=budget, resolution=resolution, rss_calls=rss_calls)  # fmt: skip


def _run(
    args: argparse.Namespace,
    peers_dir: Path,
    workdir: Path,
    edge_args: list[str],
    *,
    seconds: float,
    start_rate: int,
    budget: float,
    resolution: float,
    rss_calls: int,
) -> int:
    peers: list[Peer] = []
    if args.only in (None, "kamailio"):
        if not h.kamailio_available(peers_dir):
            print(
                f"kamailio or {peers_dir}/run-kamailio.sh is missing "
                "(apt-get install kamailio; --peers DIR)",
                file=sys.stderr,
            )
            return 2
        peers.append(KamailioPeer(peers_dir))
    if args.only in (None, "edge"):
        peers.append(EdgePeer(edge_args, media=args.media))

    began = time.monotonic()
    # The searches share most of the budget; latency and memory runs take the rest.
    latency_seconds = args.latency_seconds or seconds
    extras = (latency_seconds + STEP_OVERHEAD_S) * len(peers)  # one latency run per peer
    if any(isinstance(p, EdgePeer) for p in peers) and not args.no_rss:
        extras += rss_calls / RSS_RATE + 8
    search_budget = max(seconds * 2, (budget - extras) / len(peers))
    print(
        f"edge_cps: {seconds:g} s steps from {start_rate} calls/s, {search_budget:.0f} s of "
        f"search per peer, files in {workdir}",
        flush=True,
    )

    found: dict[str, Search] = {}
    latencies: dict[str, Latency | None] = {}
    for peer in peers:
        print(f"{peer.name}:", flush=True)
        search = find_max_rate(
            peer,
            workdir,
            start=start_rate,
            ceiling=args.max_rate,
            seconds=seconds,
            resolution=resolution,
            budget=search_budget,
            media=args.media,
        )
        found[peer.name] = search
        latencies[peer.name] = measure_latency(
            peer,
            search.best // 2,
            latency_seconds,
            workdir / f"{peer.name}-latency",
            media=args.media,
        )

    memory = None
    edge_peer = next((p for p in peers if isinstance(p, EdgePeer)), None)
    if edge_peer is not None and not args.no_rss:
        print(f"edge memory with {rss_calls} concurrent calls:", flush=True)
        memory = measure_rss(edge_peer, rss_calls, workdir / "edge-rss")

    print()
    for name, search in found.items():
        note = ""
        if search.first_failure is not None:
            note = f" (failed at {search.first_failure})"
        if search.out_of_time:
            note += " (time budget reached)"
        if name == "edge" and edge_peer is not None:
            note += f" (core: {edge_peer.core})"
        print(f"{name:9} {search.best:6d} calls/s without a failed call{note}")
    for name, latency in latencies.items():
        if latency is None:
            print(f"{name:9} latency: no data")
            continue
        flag = "" if latency.passed else " (that run had failures)"
        print(
            f"{name:9} INVITE->200 at {latency.rate} calls/s: p50 {_ms(latency.p50_ms)}, "
            f"p99 {_ms(latency.p99_ms)}, max {_ms(latency.max_ms)} "
            f"({latency.calls} calls over {latency_seconds:g} s; SIPp -trace_rtt, whole ms){flag}"
        )
    if memory is not None:
        idle = "?" if memory.idle_kib is None else f"{memory.idle_kib / 1024:.1f} MiB"
        loaded = "?" if memory.loaded_kib is None else f"{memory.loaded_kib / 1024:.1f} MiB"
        per_call = ""
        if memory.idle_kib and memory.loaded_kib and memory.active_calls:
            delta = (memory.loaded_kib - memory.idle_kib) / memory.active_calls
            per_call = f", {delta:.1f} KiB per call"
        print(
            f"edge      RSS idle {idle}, {loaded} with {memory.active_calls} active calls "
            f"(wanted {memory.wanted}){per_call}"
        )
    print(f"total {time.monotonic() - began:.0f} s")
    name = "edge_media_cps_ratio_vs_kamailio" if args.media else "edge_cps_ratio_vs_kamailio"
    if "edge" in found and "kamailio" in found and found["kamailio"].best:
        ratio = found["edge"].best / found["kamailio"].best
        print(f"{name}={ratio:.2f}")
    else:
        print(f"{name}=nan")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--serve-edge":
        raise SystemExit(serve_edge(sys.argv[2:]))
    raise SystemExit(main())
