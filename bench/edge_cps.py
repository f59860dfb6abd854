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

Issue 15's figures, each behind a flag, each bounded in time (the searches share ``--budget``;
these add fixed times), each stopping what it starts:

- ``--pauses`` (with ``--latency-seconds 60``): during the edge's latency soak, a process of
  its own sends the edge an OPTIONS every 5 ms from the PBX's address and times each answer
  (`h.OptionsProbe`). A request arriving while the event loop is paused (a garbage collection,
  a config swap, any long callback) waits out the pause, so the longest answer bounds the
  longest pause from above; it also holds the loopback, the edge's handling and the probe's own
  scheduling on shared cores, and a pause shows at least its length minus 5 ms (an OPTIONS
  unanswered in 2 s counts as 2 s, and the unanswered are counted). Half-way, a
  full snapshot of 100,000 numbers and 10,000 trunks (the load's trunk among them) is POSTed to
  the control API as the control plane sends it (snapshot lines, edge/snapshot_wire.py;
  ``--apply-json``: as one JSON document, which the edge decodes in one C call): the worst case
  of a config change (a delta carries only what changed). The run prints the longest answer
  and p99 over the soak, the apply's time, the probe's and INVITE->200's p99 and max before,
  during (request to answer) and after the apply, the edge's longest garbage collection and
  its loop watch from /metrics (edge/runtime/loop_watch.py: the longest lag seen from inside,
  and how much of it the loop was working; not the machine's load), and the edge's CPU as a
  share of a core before, during and after the apply and in each 10 s of the soak (the first
  calls' transactions stop lingering at 32 s, just after the apply). ``--no-apply``: the
  probe only. Adds about 2 s (building the snapshot).
- ``--wire``: the latency runs also timed on the wire (`WireCapture`): tcpdump on loopback
  keeps each INVITE to the proxy and each 200 from it, and a call's INVITE->200 is read off
  their kernel time stamps, to the microsecond. SIPp's own figure comes in 4 ms steps on these
  machines, so its p99 reads "<1 ms" or "4 ms" by whether 1 % of calls cross a step. Prints
  p50, p90, p99 and max for each peer and the edge/Kamailio ratio of the p99s, each at half its
  rate (issue 15's target: <= 1.0). Needs tcpdump and root.
- ``--rss-after``: the memory run holds the calls only until they are read, then lets SIPp
  end them (BYE) and reads memory again 2 s after the edge reports 0 active calls and 34 s
  later (a finished call's transactions linger up to 32 s), as ratios to idle; and measures
  Kamailio the same way (its active dialogs: the UAC's calls in progress). Memory is also read
  as RSS and PSS summed over the peer's processes (/proc/PID/smaps_rollup): Kamailio keeps
  dialogs in memory shared by its processes, which summed RSS counts once per process and PSS
  once; KiB per call compares by PSS. Adds about 2 x (``--rss-calls`` / 500 + 55) s.
- ``--cpu-levels 100,1000,10000``: the edge's CPU (utime + stime, /proc/PID/stat, all threads)
  per call while it holds N long calls: one UAC fills it with N calls at ``--fill-rate`` and
  holds them; its CPU is read for 5 s with no other traffic (printed per second: the cost of
  holding); then a second UAC sends short calls at ``--cpu-rate`` and, 34 s later (when as
  many short calls' lingering transactions end each second as start, and the fill's have
  ended), the CPU over ``--cpu-seconds`` (10 s) is divided by the calls the edge's own counter
  (/metrics) saw in that window. Both rates stay well below what the edge carried in this run
  (defaults: 500/s and 200/s, or half and a quarter of the rate found if less), so the window
  measures work, not a backlog; a level whose window was not steady (the rate not kept, calls
  lost from the hold, failures) says so. One line per level, also net of the holding cost, and
  the ratio of the last level to the first (target: flat). Adds about N / 500 + 55 s a level.
- ``--edges 2``: after the single edge, the same search with two edge processes on
  127.0.0.11 and 127.0.0.12, each its own SIP and control port, node name and journal, sharing
  their trunk limits through Redis (``--redis-url``, default $REDIS_URL; CDRs stay in the
  journals, as for one edge), each fed by its own SIPp UAC at half the rate, one UAS behind
  both; a step passes when both UACs pass. The figure is the aggregate calls/s; printed as
  ``edge_x2_cps_ratio_vs_kamailio=<x>`` (Kamailio: one worker) before the last line.
- ``--known-rate PEER=N`` (kamailio, edge, edge-x2): skip that peer's search and take N as
  found (its latency run is at N / 2), to re-run one measurement without the searches.
- ``--rounds N``: the searches N times over, each peer once a round in the same order
  (Kamailio, the edge, the edges together; the budget is shared by the rounds), and the
  ``--cpu-levels`` sequence N times over. A round's ratio compares peers measured minutes
  apart; a neighbour's busy spell moves one round, where a single run's figure moved by 40 %
  within ten minutes on the same code. Printed: each round's rates and ratios, and as the
  figures the median (the lower middle of an even count): each peer's median search (its
  latency run at half that rate), the median of the rounds' ratios on the last lines, each
  level's median CPU per call and the median of the rounds' last-to-first ratios.
- ``--rss-only``: the memory run of ``--rss-after`` and nothing else (no search, no latency
  run; about 70 s for the edge alone with ``--only edge``).

Output: one line per step, a summary, and last ``edge_cps_ratio_vs_kamailio=<x>`` (edge
calls/s over Kamailio's; ``nan`` when only one peer ran). Each step's line, and each latency
line, says how much of the machine's CPU the hypervisor took over it (``stolen``, /proc/stat):
on these virtual machines a spell of steal moved a p99 from 4 ms to over a second, so a step
with a few % stolen measured the neighbours, not the peer.

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
    # every figure of issue 15 in one run, about 15 minutes:
    REDIS_URL=redis://127.0.0.1:6379/0 .venv/bin/python bench/edge_cps.py --latency-seconds 60 \
        --pauses --rss-after --cpu-levels 100,1000,10000 --edges 2 --budget 600
    # the same with three rounds of searches and of CPU levels, their medians (35 minutes):
    REDIS_URL=redis://127.0.0.1:6379/0 .venv/bin/python bench/edge_cps.py --latency-seconds 60 \
        --pauses --rss-after --cpu-levels 100,1000,10000 --edges 2 --rounds 3 --budget 1500
Needs sipp (Debian sip-tester) and kamailio (Debian kamailio); shared/peers is looked for
beside the repository (../shared/peers), or give --peers DIR.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import math
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from tempfile import mkdtemp
from typing import Any

import orjson

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from edge import native, snapshot_wire  # noqa: E402
from edge.tests import sipp_harness as h  # noqa: E402
from edge.tests.factories import (  # noqa: E402
    big_snapshot_doc,
    gateway_doc,
    snapshot_doc,
    trunk_doc,
)

CALLEE = "14155550100"  # the R-URI user of the built-in uac (-s); +14155550100 once normalised
RSS_RATE = 500  # calls/s that fill the edge with long calls (memory, CPU levels)
RSS_HOLD_MS = 60_000
STEP_OVERHEAD_S = 1.5  # start and stop of a proxy, a UAS and a UAC, roughly
# A finished call's transactions linger up to 32 s (64 x T1, RFC 3261 17) to absorb
# retransmissions; whatever they hold is freed when the last one ends.
LINGER_S = 34.0
LATER_EVERY_S = 15.0  # --rss-later: one more reading this often
PROBE_EVERY_S = 0.005  # --pauses: one OPTIONS every 5 ms
CPU_WINDOW_S = 10.0  # --pauses: the edge's CPU also read this often over the soak
PROBE_TIMEOUT_S = 2.0  # an OPTIONS unanswered this long counts as this long
# --cpu-levels: the edge's CPU holding the calls, before the short calls. One interval of the
# call checkpoint's rewrite (edge/runtime/checkpoint.py, every 5 s, O(calls held)): a 3 s window
# saw one rewrite or none, so the holding cost, and the net figure, depended on the phase.
IDLE_WINDOW_S = 5.0
FIRST_SCALE_OUT_IP = 11  # --edges N: edge i listens on 127.0.0.(11 + i)
MEMTRACE_ENV = "EDGE_CPS_MEMTRACE"  # the edge's memory before and after a busy spell


# --- peers ------------------------------------------------------------------------------------


@dataclass
class Proxy:
    addresses: list[tuple[str, int]]  # one SIPp UAC each
    stop: Callable[[], None]
    edges: list[h.EdgeProcess] = field(default_factory=list)
    pids: Callable[[], list[int]] = list  # the processes whose memory counts

    @property
    def address(self) -> tuple[str, int]:
        return self.addresses[0]

    @property
    def edge(self) -> h.EdgeProcess | None:
        return self.edges[0] if self.edges else None


class Peer:
    name = ""
    uac_ip = h.EDGE_IP
    uas_ip = h.EDGE_IP

    @property
    def key(self) -> str:
        """The peer's name on the command line (``--known-rate edge-x2=1200``)."""
        return self.name.replace(" ", "-")

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
        assert proxy.process is not None
        group = proxy.process.pid  # run in a session of its own: its workers share the group
        return Proxy([proxy.sip_address], proxy.stop, pids=lambda: process_group(group))


class EdgePeer(Peer):
    uac_ip = h.PBX_IP  # in the trunk's ACL
    uas_ip = h.CARRIER_IP  # the carrier gateway

    def __init__(
        self,
        extra_args: list[str],
        *,
        media: bool = False,
        count: int = 1,
        redis_url: str | None = None,
    ) -> None:
        self.extra_args = extra_args
        self.media = media
        self.count = count
        self.redis_url = redis_url
        self.name = "edge" if count == 1 else f"edge x{count}"
        self.core: str | None = None  # "compiled" or "interpreted (why)", from its /health

    def start(self, workdir: Path, uas_port: int, rtpengine: h.Rtpengine | None = None) -> Proxy:
        """One edge on 127.0.0.1, or `count` edges on 127.0.0.11, .12, ... sharing their
        limits through Redis (each its own node name, journal and control port)."""
        edges: list[h.EdgeProcess] = []
        try:
            for index in range(self.count):
                edges.append(self._start_one(workdir, uas_port, index, rtpengine))
        except BaseException:
            for edge in edges:
                edge.stop(grace=2)
            raise
        if self.core is None:
            self.core = str(edges[0].health().get("core"))
            print(f"  (edge core: {self.core})", flush=True)

        def stop() -> None:
            for edge in edges:
                code = edge.stop(grace=30)  # ending thousands of held calls takes a while
                if code not in (0, None):
                    print(f"  (the edge exited {code})\n{edge.explain()}", file=sys.stderr)

        return Proxy(
            [edge.sip_address for edge in edges],
            stop,
            edges,
            pids=lambda: [edge.pid for edge in edges if edge.running],
        )

    def _start_one(
        self, workdir: Path, uas_port: int, index: int, rtpengine: h.Rtpengine | None
    ) -> h.EdgeProcess:
        extra = ["--log-level", "WARNING", *self.extra_args]
        if rtpengine is not None:
            extra += ["--rtpengine", rtpengine.spec]
        if self.redis_url is not None:
            # Shared limits only: CDRs stay in the journal, as for the single edge.
            extra += ["--redis-url", self.redis_url, "--cdr-ship", "0"]
        single = self.count == 1
        return h.EdgeProcess(
            workdir if single else workdir / f"edge-{index + 1}",
            bench_snapshot(uas_port, media=self.media),
            node="bench-edge" if single else f"bench-edge-{index + 1}",
            ip=h.EDGE_IP if single else f"127.0.0.{FIRST_SCALE_OUT_IP + index}",
            drain_timeout=1,
            launcher=[sys.executable, str(Path(__file__).resolve()), "--serve-edge"],
            extra_args=extra,
        ).start()


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


def big_bench_snapshot(gateway_port: int, *, version: int, lines: bool = True) -> tuple[bytes, int]:
    """The benchmark's trunk, number and gateway inside a production-sized snapshot
    (`big_snapshot_doc`: 10,000 trunks, 100,000 more numbers): (the encoded document, as
    snapshot lines or one JSON document, the number of numbers). Its other trunks' addresses
    and numbers are none of the load's."""
    small = bench_snapshot(gateway_port)
    big = big_snapshot_doc()
    trunks = [*small["trunks"], *(t for t in big["trunks"] if t["id"] != small["trunks"][0]["id"])]
    numbers = [*small["numbers"], *big["numbers"]]
    gateways = [{**g, "carrier": c["id"]} for c in small["carriers"] for g in c["gateways"]]
    doc = snapshot_doc(
        customers=big["customers"],
        trunks=trunks,
        numbers=numbers,
        gateways=gateways,
        version=version,
    )
    return (snapshot_wire.encode_lines(doc) if lines else orjson.dumps(doc)), len(numbers)


def process_group(group: int) -> list[int]:
    """The processes of a process group (Kamailio and the workers it forked)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == group:  # after the state: ppid, pgrp
            pids.append(int(entry.name))
    return pids


def memory_kib(pids: list[int]) -> tuple[int, int] | None:
    """(RSS, PSS) summed over `pids`, in KiB, from /proc/PID/smaps_rollup. PSS splits each
    shared page between the processes that map it, so the sum over Kamailio's processes
    counts its shared memory (where it keeps dialogs) once; RSS summed counts it per process."""
    rss = pss = 0
    for pid in pids:
        try:
            text = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            continue
        for name, value in re.findall(r"^(Rss|Pss):\s+(\d+) kB", text, re.MULTILINE):
            if name == "Rss":
                rss += int(value)
            else:
                pss += int(value)
    return (rss, pss) if rss else None


def serve_edge(argv: list[str]) -> int:
    """``python -m edge`` with a live-event sink: each batch is encoded, counted, dropped."""
    from edge.options import build_parser, options_from_namespace
    from edge.runtime.events import BatchingSink
    from edge.runtime.main import run

    parser = build_parser()
    options = options_from_namespace(parser.parse_args(argv))
    published = {"batches": 0, "bytes": 0}
    if os.environ.get(MEMTRACE_ENV):
        _trace_memory(Path(os.environ[MEMTRACE_ENV]))

    def publish(batch: bytes) -> None:
        published["batches"] += 1
        published["bytes"] += len(batch)

    return run(options, events=BatchingSink(publish, node=options.node))


def _trace_memory(out: Path) -> None:
    """``EDGE_CPS_MEMTRACE=DIR``: what a busy spell leaves allocated (gc_policy.py's docstring).

    Writes to DIR, 1 s after start-up ("idle", when the bench reads idle), right after each
    memory release ("release-N") and when the edge stops ("exit-after-N-releases"): the VmRSS,
    /proc/self/smaps, pymalloc's arena statistics (``sys._debugmallocstats``) and, with
    ``EDGE_CPS_MEMTRACE_FRAMES=N`` (tracemalloc from start-up, N frames: it slows the edge,
    and pymalloc's statistics are then not printed), a snapshot to compare by site
    (``Snapshot.load(b).compare_to(Snapshot.load(a), "traceback")``)."""
    import tracemalloc

    from edge.runtime import gc_policy

    out.mkdir(parents=True, exist_ok=True)
    frames = int(os.environ.get(MEMTRACE_ENV + "_FRAMES", "0"))
    if frames:
        tracemalloc.start(frames)

    def dump(name: str) -> None:
        status = Path("/proc/self/status").read_text()
        rss = next(line for line in status.splitlines() if line.startswith("VmRSS"))
        saved = os.dup(2)
        with open(out / f"{name}.mallocstats", "w") as stats:
            os.dup2(stats.fileno(), 2)
            try:
                sys._debugmallocstats()
            finally:
                os.dup2(saved, 2)
                os.close(saved)
        (out / f"{name}.smaps").write_text(Path("/proc/self/smaps").read_text())
        (out / f"{name}.rss").write_text(rss + "\n")
        if frames:
            tracemalloc.take_snapshot().dump(str(out / f"{name}.snap"))

    install, release = gc_policy.GcPolicy.install, gc_policy.GcPolicy.release_memory

    def traced_install(self: gc_policy.GcPolicy, loop: Any) -> None:
        install(self, loop)
        loop.call_later(1.0, dump, "idle")

    def traced_release(self: gc_policy.GcPolicy) -> None:
        release(self)
        dump(f"release-{self.releases}")

    uninstall = gc_policy.GcPolicy.uninstall

    def traced_uninstall(self: gc_policy.GcPolicy) -> None:
        dump(f"exit-after-{self.releases}-releases")
        uninstall(self)

    gc_policy.GcPolicy.uninstall = traced_uninstall  # type: ignore[method-assign]
    gc_policy.GcPolicy.install = traced_install  # type: ignore[method-assign]
    gc_policy.GcPolicy.release_memory = traced_release  # type: ignore[method-assign]


def serve_probe(argv: list[str]) -> int:
    """``--serve-probe HOST:PORT FILE``: `h.OptionsProbe` in a process of its own (this one's
    GIL and CPU never delay it) until SIGTERM, then its samples to FILE, one
    ``sent;delay`` line each (time.monotonic seconds: one clock for every process)."""
    host, port = argv[0].rsplit(":", 1)
    out = Path(argv[1])
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    probe = h.OptionsProbe((host, int(port)), every=PROBE_EVERY_S, timeout=PROBE_TIMEOUT_S)
    probe.start()
    while not stopping.wait(0.1):
        pass
    probe.stop()
    out.write_text("".join(f"{sent:.6f};{delay:.6f}\n" for sent, delay in probe.samples))
    return 0


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
    started_at: float = 0.0  # time.monotonic() when the UAC started
    sessions_left: int | None = None  # --media: what the step's rtpengine still held
    stolen: float | None = None  # share of the machine's CPU time the hypervisor took

    def line(self) -> str:
        verdict = "pass" if self.passed else "FAIL"
        left = "" if self.sessions_left is None else f"  {self.sessions_left} sessions left"
        stolen = "" if self.stolen is None else f"  stolen {100 * self.stolen:4.1f} %"
        return (
            f"  {self.peer:9} {self.rate:6d} calls/s  {self.successful:7d}/{self.calls:<7d} ok"
            f"  {self.failed:6d} failed  {self.elapsed:5.1f} s  exit {self.returncode}  {verdict}"
            f"{stolen}{left}"
        )


def machine_cpu_times() -> tuple[int, int] | None:
    """(stolen, all) CPU time of the whole machine so far, in clock ticks (/proc/stat).

    On a virtual machine the hypervisor runs other guests on the same physical CPUs and
    charges the time it took from this one as "steal". Measured here: quiet minutes with none,
    then spells where it took a quarter of the machine and a peer's p99 went from 4 ms to
    50-1,600 ms. Each step prints its share ("stolen"), so such a step is told from a slow
    peer."""
    try:
        with open("/proc/stat", encoding="ascii") as stat:
            fields = stat.readline().split()
    except OSError:
        return None
    # cpu user nice system idle iowait irq softirq steal guest guest_nice
    if len(fields) < 9 or fields[0] != "cpu":
        return None
    ticks = [int(value) for value in fields[1:9]]
    return ticks[7], sum(ticks)


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
    watch: PauseWatch | None = None,
    media: bool = False,
    wire: WireCapture | None = None,
) -> Step:
    """`rate` calls/s for `seconds` through the peer: one UAC per proxy address (several
    edges: the rate and the calls split evenly between them), one UAS behind them all."""
    workdir.mkdir(parents=True, exist_ok=True)
    calls = max(1, round(rate * seconds))
    uas = _uas(peer, workdir, wall_timeout=seconds + 120)
    uas.start().wait_listening()
    proxy = None
    uacs: list[h.Sipp] = []
    results: list[h.SippResult] = []
    started = elapsed = 0.0
    stolen = None
    rtpengine = None
    sessions_left = None
    try:
        if media:
            # 4 ports per call in flight (RTP and RTCP on both legs): 5,000 calls at once.
            rtpengine = h.Rtpengine(workdir / "rtpengine", ports=(10000, 29999)).start()
        proxy = peer.start(workdir, uas.local_port, rtpengine)
        count = len(proxy.addresses)
        for index, address in enumerate(proxy.addresses):
            share = calls // count + (1 if index < calls % count else 0)
            uacs.append(
                h.Sipp(
                    workdir,
                    "uac" if count == 1 else f"uac{index + 1}",
                    builtin="uac",
                    local_ip=peer.uac_ip,
                    remote=address,
                    calls=share,
                    rate=rate / count,
                    limit=max(100, rate // count),  # a second's worth of calls in flight
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
            )
        if watch is not None:
            watch.start(proxy, uas.local_port)
        if wire is not None:
            wire.start(proxy.address)
        started = time.monotonic()
        cpu_before = machine_cpu_times()
        for uac in uacs:
            uac.start()
        results = [uac.wait() for uac in uacs]
        elapsed = time.monotonic() - started
        cpu_after = machine_cpu_times()
        if cpu_before is not None and cpu_after is not None and cpu_after[1] > cpu_before[1]:
            stolen = (cpu_after[0] - cpu_before[0]) / (cpu_after[1] - cpu_before[1])
    finally:
        for uac in uacs:
            if uac.running:
                uac.stop()
        if wire is not None:
            wire.stop()
        if watch is not None:
            watch.stop()
        uas.stop()
        if proxy is not None:
            proxy.stop()
        if rtpengine is not None:
            with contextlib.suppress(OSError):  # no answer to `list`: unknown
                sessions_left = len(rtpengine.sessions())
            rtpengine.stop()
    successful = sum(r.successful for r in results)
    failed = sum(r.failed for r in results)
    returncode = next((r.returncode for r in results if r.returncode != 0), 0)
    # SIPp throttles when calls pile up (-l): a run that overran did not carry the rate.
    on_time = elapsed <= seconds * 1.1 + 0.5
    passed = (
        all(r.returncode == 0 and not r.timed_out for r in results)
        and failed == 0
        and successful == calls
        and on_time
    )
    return Step(
        peer.name,
        rate,
        calls,
        successful,
        failed,
        returncode,
        elapsed,
        passed,
        workdir,
        started,
        sessions_left,
        stolen,
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
            peer, rate, seconds, workdir / f"{peer.key}-{rate}-{len(steps)}", media=media
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


def median(values: list[float]) -> float:
    """The middle value (the lower middle of an even count: a figure some round measured)."""
    return sorted(values)[(len(values) - 1) // 2]


def median_search(searches: list[Search]) -> Search:
    """The round's search whose rate is the median of the rounds'."""
    best = median([search.best for search in searches])
    return next(search for search in searches if search.best == best)


# --- latency and pauses -----------------------------------------------------------------------


@dataclass
class Latency:
    rate: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    calls: int
    passed: bool
    # (time.monotonic() when SIPp recorded it, INVITE->200 in ms), one per call
    samples: list[tuple[float, float]] = field(default_factory=list)
    started_at: float = 0.0
    elapsed: float = 0.0
    wire: WireCapture | None = None
    stolen: float | None = None  # Step.stolen

    def stolen_note(self) -> str:
        return "" if self.stolen is None else f"; {100 * self.stolen:.1f} % of the CPU stolen"


def measure_latency(
    peer: Peer,
    rate: int,
    seconds: float,
    workdir: Path,
    *,
    watch: PauseWatch | None = None,
    media: bool = False,
    wire: bool = False,
) -> Latency | None:
    if rate <= 0:
        return None
    capture = WireCapture(workdir) if wire else None
    step = run_step(
        peer, rate, seconds, workdir, trace_rtt=True, watch=watch, media=media, wire=capture
    )
    print(step.line() + "  (latency)", flush=True)
    samples = []
    for path in workdir.glob("*_rtt.csv"):
        for line in path.read_text().splitlines()[1:]:
            fields = line.split(";")
            if len(fields) >= 3 and fields[2].strip() == "1":
                try:
                    # Date_ms counts from SIPp's start, a few ms after the harness's clock
                    samples.append((step.started_at + float(fields[0]) / 1000, float(fields[1])))
                except ValueError:
                    continue
    if not samples:
        return None
    times = [ms for _, ms in samples]
    return Latency(
        rate,
        percentile(times, 50),
        percentile(times, 99),
        max(times),
        len(times),
        step.passed,
        samples,
        step.started_at,
        step.elapsed,
        capture,
        step.stolen,
    )


class WireCapture:
    """INVITE->200 timed on the wire for the latency soak (``--wire``).

    SIPp times INVITE->200 in whole milliseconds, and on these machines in steps of 4 ms (its
    rtt files hold 0, 4, 8 ...), so its p99 reads "<1 ms" while under 1 % of calls cross a step
    and "4 ms" above that: one peer's p99 can read four times another's when their true
    figures are close. tcpdump on loopback, from the UAC's start to its end, keeps every
    INVITE and every 200 to or from the proxy's port (a filter on the payload's first bytes),
    time-stamped by the kernel to the microsecond; a call's time is from its INVITE reaching
    the proxy's port to the 200 leaving it for the UAC, the interval SIPp times, read off the
    datagrams. Needs tcpdump (Debian's package) and the right to capture (root).
    """

    SNAP = 640  # bytes of each datagram kept: the start line, CSeq and Call-ID come early

    def __init__(self, workdir: Path) -> None:
        self.path = workdir / "wire.pcap"
        self.port = 0
        self.dropped: int | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @staticmethod
    def tcpdump() -> str:
        """tcpdump's path; exits saying what is missing (checked before the searches too)."""
        path = shutil.which("tcpdump")
        if path is None:
            raise SystemExit("--wire needs tcpdump (apt-get install tcpdump) and root")
        return path

    def start(self, address: tuple[str, int]) -> None:
        tcpdump = self.tcpdump()
        self.port = address[1]
        # The payload's first four bytes: "INVI", or "200 " after "SIP/2.0 " (a response).
        bpf = f"udp port {self.port} and (udp[8:4] = 0x494e5649 or udp[16:4] = 0x32303020)"
        self._process = subprocess.Popen(
            [tcpdump, "-i", "lo", "-n", "-s", str(self.SNAP), "-B", "16384", "-w",
             str(self.path), bpf],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        assert self._process.stderr is not None
        line = self._process.stderr.readline()  # "listening on lo ..." once it captures
        if b"listening" not in line:
            raise SystemExit(f"tcpdump: {line.decode(errors='replace').strip()}")

    def stop(self) -> None:
        process = self._process
        if process is None:
            return
        process.send_signal(signal.SIGINT)
        try:
            _, err = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            _, err = process.communicate()
        found = re.search(rb"(\d+) packets dropped by kernel", err or b"")
        self.dropped = int(found.group(1)) if found else None
        self._process = None

    def times_ms(self) -> list[float]:
        """Each call's INVITE->200, in ms, from the capture."""
        invites: dict[bytes, float] = {}
        answers: dict[bytes, float] = {}
        for stamp, source, destination, payload in _pcap_udp(self.path):
            found = _CALL_ID.search(payload)
            if found is None:
                continue
            call_id = found.group(1).strip()
            if destination == self.port and payload.startswith(b"INVITE "):
                invites.setdefault(call_id, stamp)
            elif (
                source == self.port
                and payload.startswith(b"SIP/2.0 200")
                and _INVITE_CSEQ.search(payload)
            ):
                answers.setdefault(call_id, stamp)
        return [
            (answers[call_id] - sent) * 1000
            for call_id, sent in invites.items()
            if call_id in answers
        ]


_CALL_ID = re.compile(rb"\r\n(?:call-id|i)[ \t]*:([^\r\n]+)", re.IGNORECASE)
_INVITE_CSEQ = re.compile(rb"\r\ncseq[ \t]*:[ \t]*\d+[ \t]+INVITE\b", re.IGNORECASE)


def _pcap_udp(path: Path) -> list[tuple[float, int, int, bytes]]:
    """(time, source port, destination port, payload) of each IPv4 UDP datagram in a pcap
    file as tcpdump writes it on Linux's loopback (Ethernet framing, micro- or nanosecond
    stamps)."""
    data = path.read_bytes()
    if len(data) < 24:
        return []
    nano = data[:4] == b"\x4d\x3c\xb2\xa1"
    linktype = int.from_bytes(data[20:24], "little")
    skip = {1: 14, 113: 16, 276: 20}.get(linktype, 0)  # Ethernet, Linux cooked v1, v2
    packets = []
    offset = 24
    while offset + 16 <= len(data):
        seconds, fraction, length, _ = struct.unpack_from("<IIII", data, offset)
        offset += 16
        ip = data[offset + skip : offset + length]
        offset += length
        if len(ip) < 28 or ip[0] >> 4 != 4 or ip[9] != 17:
            continue
        header = (ip[0] & 15) * 4
        source, destination = struct.unpack_from(">HH", ip, header)
        stamp = seconds + fraction / (1e9 if nano else 1e6)
        packets.append((stamp, source, destination, ip[header + 8 :]))
    return packets


def _ms(value: float) -> str:
    """SIPp times whole milliseconds: 0 means under one."""
    return "<1 ms" if value < 1 else f"{value:.0f} ms"


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    rank = max(0, math.ceil(pct / 100 * len(ordered)) - 1)
    return ordered[rank]


class PauseWatch:
    """What the edge's latency soak also measures with ``--pauses``.

    - An `h.OptionsProbe` in a process of its own (``--serve-probe``) sends the edge an
      OPTIONS every 5 ms from the PBX's address and records how long each answer takes: a
      request that arrives while the edge's event loop is paused (a garbage collection, a
      config swap, a long callback) waits out the pause, so the longest delay bounds the
      longest pause from above (it also holds the kernel's loopback and the probe's own
      scheduling on these shared cores; with 5 ms between probes a pause shows at least
      its length minus 5 ms).
    - Half-way through the soak, one full snapshot of 100,000 numbers and 10,000 trunks (the
      load's trunk among them, `big_bench_snapshot`) is POSTed to the control API, the worst
      case of a config change (a delta carries only what changed): the window from the
      request to its answer (decoded, compiled, swapped and saved) splits the figures into
      before, during and after.
    - At the end, the edge's own longest garbage collection (/metrics) for comparison.
    """

    def __init__(
        self, workdir: Path, *, apply_after: float, apply: bool = True, lines: bool = True
    ) -> None:
        self.workdir = workdir
        self.apply_after = apply_after
        self.apply = apply
        self.lines = lines
        self.samples: list[tuple[float, float]] = []
        self.window: tuple[float, float] | None = None
        self.applied: tuple[int, Any] | None = None
        self.snapshot_mb = 0.0
        self.numbers = 0
        self.gc_longest_s: dict[str, float] = {}  # by generation
        self.gc_totals: dict[str, tuple[float, float]] = {}  # by generation: count, seconds
        self.gc_collected = 0.0  # cyclic garbage the collections found
        self.loop_watch: dict[str, float] = {}  # trunkline_edge_loop_* from /metrics
        # The edge's VmRSS before the soak and at its end, and its VmHWM (peak), in KiB: a
        # soak of short calls holds 32 s of finished calls whose transactions linger.
        self.rss_kib: tuple[int | None, int | None, int | None] = (None, None, None)
        # (time.monotonic(), the edge's CPU seconds): at start, around the apply, at the end;
        # how much of a core the edge used in each window says how close to full it ran.
        self.cpu_marks: list[tuple[float, float]] = []
        # The same every CPU_WINDOW_S from the start: the apply is not the soak's only change
        # of pace. From 32 s on the first calls' transactions stop lingering and each call also
        # pays for an older one's ending (memory last touched 32 s before), and the apply is
        # half-way, at 30 s of a 60 s soak: without these windows the two look like one.
        self.cpu_series: list[tuple[float, float]] = []
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._sampler: threading.Thread | None = None
        self._probe: subprocess.Popen[bytes] | None = None
        self._edge: h.EdgeProcess | None = None

    @property
    def out_path(self) -> Path:
        return self.workdir / "probe.csv"

    def start(self, proxy: Proxy, uas_port: int) -> None:
        edge = proxy.edge
        assert edge is not None, "the pause watch is for an edge"
        self._edge = edge
        self.rss_kib = (edge.rss_kib(), None, None)
        self.cpu_marks = [(time.monotonic(), edge.cpu_seconds())]
        self.cpu_series = self.cpu_marks[:1]
        self._sampler = threading.Thread(target=self._sample_cpu, args=(edge,), daemon=True)
        self._sampler.start()
        body = b""
        if self.apply:  # built before the soak starts: the bench's own CPU stays out of it
            body, self.numbers = big_bench_snapshot(uas_port, version=2, lines=self.lines)
            self.snapshot_mb = len(body) / 1e6
        host, port = edge.sip_address
        self._probe = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--serve-probe", f"{host}:{port}",
             str(self.out_path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=(self.workdir / "probe.stderr.log").open("wb"),
            start_new_session=True,
        )  # fmt: skip
        if self.apply:
            self._thread = threading.Thread(target=self._apply, args=(edge, body), daemon=True)
            self._thread.start()

    def _apply(self, edge: h.EdgeProcess, body: bytes) -> None:
        if self._stopping.wait(self.apply_after):
            return
        began = time.monotonic()
        self.cpu_marks.append((began, edge.cpu_seconds()))
        try:
            self.applied = edge.api("POST", "/config", body, timeout=120)
        except OSError as error:
            self.applied = (0, str(error))
        self.window = (began, time.monotonic())
        self.cpu_marks.append((self.window[1], edge.cpu_seconds()))

    def _sample_cpu(self, edge: h.EdgeProcess) -> None:
        while not self._stopping.wait(CPU_WINDOW_S):
            with contextlib.suppress(OSError):  # the edge gone: the soak is ending
                self.cpu_series.append((time.monotonic(), edge.cpu_seconds()))

    def stop(self) -> None:
        """Before the edge stops: end the apply, read the edge's GC pause, stop the probe."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(125)
        if self._sampler is not None:
            self._sampler.join(5)
        if self._edge is not None and self._edge.running:
            self.rss_kib = (self.rss_kib[0], self._edge.rss_kib(), self._edge.peak_rss_kib())
            self.cpu_marks.append((time.monotonic(), self._edge.cpu_seconds()))
            with contextlib.suppress(h.EdgeError, OSError):
                metrics = self._edge.metrics()
                self.gc_longest_s = {
                    dict(labels).get("generation", "?"): value
                    for (name, labels), value in metrics.items()
                    if name == "trunkline_edge_gc_longest_pause_seconds"
                }
                self.gc_totals = {
                    dict(labels).get("generation", "?"): (
                        metrics.get(("trunkline_edge_gc_collections_total", labels), 0.0),
                        value,
                    )
                    for (name, labels), value in metrics.items()
                    if name == "trunkline_edge_gc_seconds_total"
                }
                self.gc_collected = metrics.get(
                    ("trunkline_edge_gc_collected_objects_total", frozenset()), 0.0
                )
                self.loop_watch = {
                    name: value
                    for (name, _), value in metrics.items()
                    if name.startswith("trunkline_edge_loop_")
                }
        if self._probe is not None:
            h._terminate(self._probe, 5)
            self._probe = None
        try:
            lines = self.out_path.read_text().splitlines()
        except OSError:
            lines = []
        for line in lines:
            sent, delay = line.split(";")
            self.samples.append((float(sent), float(delay)))

    def memory_line(self, latency: Latency) -> str | None:
        """The edge's RSS over the soak: its short calls' lingering transactions (32 s of
        finished calls) are what a steady load of short calls costs in memory."""
        before, end, peak = self.rss_kib
        if before is None or end is None or peak is None:
            return None
        # RFC 3261 17: Timers D, J, L and M, 32 s on UDP (a shorter soak holds fewer)
        lingering = latency.rate * min(32.0, latency.elapsed)
        return (
            f"edge      RSS over the soak: {before / 1024:.1f} MiB before, {end / 1024:.1f} MiB at "
            f"its end, peak {peak / 1024:.1f} MiB (about {lingering:,.0f} finished calls lingering "
            f"at {latency.rate} calls/s: {(end - before) / lingering:.1f} KiB each)"
        )

    def cpu_line(self) -> str | None:
        """How much of a core the edge process used (all its threads, /proc) from its start to
        the apply, during it and after it, or over the whole soak without one."""
        marks = self.cpu_marks
        if len(marks) < 2:
            return None
        if len(marks) == 4:  # start, the apply's start and end, stop
            windows = zip(("to the apply", "during it", "after it"), marks, marks[1:], strict=False)
        else:  # no apply, or one still running at the stop
            windows = zip(("over it",), marks[:1], marks[-1:], strict=True)
        parts = [
            f"{name} {(c1 - c0) / (t1 - t0) * 100:.0f} %"
            for name, (t0, c0), (t1, c1) in windows
            if t1 > t0
        ]
        line = "edge      CPU of the edge process over the soak, of one core: " + ", ".join(parts)
        series = self.cpu_series
        if len(series) > 2:
            shares = [
                f"{(c1 - c0) / (t1 - t0) * 100:.0f}"
                for (t0, c0), (t1, c1) in itertools.pairwise(series)
                if t1 > t0
            ]
            line += (
                f"; by {CPU_WINDOW_S:.0f} s from the start: {', '.join(shares)} % (the first calls'"
                " transactions stop lingering at 32 s)"
            )
        return line

    def report(self, latency: Latency | None) -> list[str]:
        """The summary lines: pauses over the soak, then before/during/after the apply."""
        if latency is None:
            return ["edge      pauses: no data (the latency run had none)"]
        soak = (latency.started_at, latency.started_at + latency.elapsed)
        probes = [(t, d * 1000) for t, d in self.samples if soak[0] <= t <= soak[1]]
        if not probes:
            return ["edge      pauses: no data (the probe recorded nothing)"]
        delays = [d for _, d in probes]
        unanswered = sum(1 for d in delays if d >= PROBE_TIMEOUT_S * 1000)
        gc_note = ""
        if self.gc_longest_s:
            by_generation = ", ".join(
                f"{value * 1000:.1f}" for _, value in sorted(self.gc_longest_s.items())
            )
            gc_note = f"; the edge's longest GC pause by generation (/metrics) {by_generation} ms"
        if self.gc_totals:
            gc_note += (
                " (collections, total ms: "
                + ", ".join(
                    f"{count:.0f}, {seconds * 1000:.0f}"
                    for _, (count, seconds) in sorted(self.gc_totals.items())
                )
                + f"; {self.gc_collected:.0f} objects found unreachable; since the edge started)"
            )
        lines = [
            f"edge      pauses over the {latency.elapsed:.0f} s soak at {latency.rate} calls/s: "
            f"OPTIONS answered in max {max(delays):.1f} ms, p99 {percentile(delays, 99):.1f} ms "
            f"({len(delays)} probes, one every {PROBE_EVERY_S * 1000:g} ms from another "
            f"process, {unanswered} unanswered in {PROBE_TIMEOUT_S:g} s; target: no pause over "
            f"20 ms){gc_note}"
        ]
        watch = self.loop_watch
        if watch:
            lag = watch.get("trunkline_edge_loop_lag_longest_seconds", 0.0) * 1000
            busy = watch.get("trunkline_edge_loop_lag_longest_busy_seconds", 0.0) * 1000
            most = watch.get("trunkline_edge_loop_busy_longest_seconds", 0.0) * 1000
            stalls = watch.get("trunkline_edge_loop_stalls_total", 0.0)
            when = ""
            at = watch.get("trunkline_edge_loop_lag_longest_timestamp_seconds", 0.0)
            if at:  # a Unix time; the soak's bounds are monotonic
                since = at - (time.time() - time.monotonic()) - soak[0]
                when = f" ({since:.1f} s into the soak)" if 0 <= since <= latency.elapsed else ""
            lines.append(
                f"edge      loop watch (/metrics, since the edge started): longest lag {lag:.1f} "
                f"ms{when}, the loop's own CPU in it {busy:.1f} ms (the rest it waited for the "
                f"GIL or a CPU); most loop CPU between two 5 ms ticks {most:.1f} ms; "
                f"{stalls:.0f} lags over 20 ms"
            )
        memory = self.memory_line(latency)
        if memory is not None:
            lines.append(memory)
        cpu = self.cpu_line()
        if cpu is not None:
            lines.append(cpu)
        if not self.apply:
            return lines
        if self.window is None or self.applied is None:
            lines.append("edge      snapshot apply: not reached within the soak")
            return lines
        began, ended = self.window
        status, body = self.applied
        version = body.get("applied_version") if isinstance(body, dict) else body
        lines.append(
            f"edge      snapshot of {self.numbers:,} numbers ({self.snapshot_mb:.1f} MB as "
            f"{'lines' if self.lines else 'one JSON document'}) applied "
            f"{began - soak[0]:.0f} s into the soak: {ended - began:.2f} s to its answer "
            f"({status}, applied version {version})"
        )
        windows = {
            "before": (soak[0], began),
            "during": (began, ended),
            "after": (ended, soak[1]),
        }
        for label, values in (
            ("OPTIONS answer", probes),
            ("INVITE->200", latency.samples),
        ):
            parts = []
            for name, (low, high) in windows.items():
                inside = [v for t, v in values if low <= t < high]
                if inside:
                    parts.append(
                        f"{name} p99 {percentile(inside, 99):.1f} max {max(inside):.1f} ms "
                        f"({len(inside)})"
                    )
                else:
                    parts.append(f"{name} -")
            lines.append(f"edge      {label:14} " + "; ".join(parts))
        return lines


# --- memory -----------------------------------------------------------------------------------


@dataclass
class Memory:
    peer: str
    idle_kib: int | None
    loaded_kib: int | None
    active_calls: int
    wanted: int
    # --rss-after: (RSS, PSS) summed over the peer's processes, in KiB
    idle: tuple[int, int] | None = None
    loaded: tuple[int, int] | None = None
    ended: tuple[int, int] | None = None  # once the calls have ended
    settled: tuple[int, int] | None = None  # LINGER_S later
    ended_active: int | None = None
    later: list[tuple[float, tuple[int, int]]] = field(default_factory=list)  # --rss-later
    spells: list[tuple[int, int]] = field(default_factory=list)  # --rss-spells: 2nd, 3rd...

    def per_call(self, which: int) -> float | None:
        """KiB per concurrent call: RSS (0) or PSS (1), loaded minus idle."""
        if self.idle is None or self.loaded is None or not self.active_calls:
            return None
        return (self.loaded[which] - self.idle[which]) / self.active_calls


def _current_calls(uac: h.Sipp) -> int:
    """Calls the UAC has in progress (its statistics, written every second)."""
    stats = h.read_sipp_stats(uac.stats_path)
    return 0 if stats is None else stats.count("CurrentCall")


def measure_rss(
    peer: Peer,
    calls: int,
    workdir: Path,
    *,
    after: bool = False,
    rate: int = RSS_RATE,
    later: float = 0.0,
    spells: int = 1,
) -> Memory:
    """The peer's memory idle and holding `calls` concurrent calls (VmRSS of the edge process,
    as before). With `after`, the calls are held just long enough to be read, then SIPp ends
    them (BYE) and the memory is read again when they are gone and `LINGER_S` later (then every
    `LATER_EVERY_S` until `later` s after they were gone; with `spells`, the same `calls` fill
    and end that many times, each read); and every reading is also the sum of RSS and of PSS
    over the peer's processes (Kamailio has several)."""
    workdir.mkdir(parents=True, exist_ok=True)
    fill_s = calls / rate
    hold_ms = round((fill_s + 15) * 1000) if after else RSS_HOLD_MS
    uas = _uas(peer, workdir, wall_timeout=600)
    uas.start().wait_listening()
    proxy = None
    uacs: list[h.Sipp] = []
    memory = Memory(peer.name, None, None, 0, calls)
    try:
        proxy = peer.start(workdir, uas.local_port)
        edge = proxy.edge
        time.sleep(1.0)  # settled after start-up
        memory.idle_kib = edge.rss_kib() if edge is not None else None
        memory.idle = memory_kib(proxy.pids())
        for spell in range(spells if after else 1):
            _rss_spell(
                memory, spell, peer, proxy, workdir, calls, rate, hold_ms, fill_s, after, uacs
            )
        if after:
            gone = time.monotonic() - LINGER_S
            while (since := time.monotonic() - gone) + LATER_EVERY_S <= later + 0.5:
                time.sleep(LATER_EVERY_S)
                reading = memory_kib(proxy.pids())
                if reading is not None:  # None: the peer's processes are gone
                    memory.later.append((since + LATER_EVERY_S, reading))
    finally:
        for uac in uacs:
            uac.stop()
        if proxy is not None:
            proxy.stop()
        uas.stop()
    return memory


def _rss_spell(
    memory: Memory,
    spell: int,
    peer: Peer,
    proxy: Any,
    workdir: Path,
    calls: int,
    rate: int,
    hold_ms: int,
    fill_s: float,
    after: bool,
    uacs: list[h.Sipp],
) -> None:
    """One busy spell of `measure_rss`: fill `calls`, read, and with `after` end them and read
    again once gone and `LINGER_S` later (the first spell into `memory.ended`/`settled`, the
    next ones appended to `memory.spells`). Its UAC goes into `uacs`, for the caller to stop."""
    edge = proxy.edge
    uac = h.Sipp(
        workdir,
        "uac" if not spell else f"uac-{spell + 1}",
        builtin="uac",
        local_ip=peer.uac_ip,
        remote=proxy.address,
        calls=calls,
        rate=rate,
        limit=calls,
        duration_ms=hold_ms,
        service=CALLEE,
        recv_timeout_ms=None,
        trace_messages=False,
        trace_errors=False,
        wall_timeout=hold_ms / 1000 + 60,
    )
    uacs.append(uac)
    uac.start()

    def active() -> int:
        if edge is not None:
            return int(edge.health().get("active_calls", 0))
        return _current_calls(uac)  # Kamailio: the UAC's calls in progress

    deadline = time.monotonic() + fill_s + 20
    while time.monotonic() < deadline and active() < calls:
        time.sleep(0.25)
    time.sleep(1.0 if edge is None else 0.5)  # the last answers (SIPp's stats: each second)
    if not spell:
        memory.loaded_kib = edge.rss_kib() if edge is not None else None
        memory.loaded = memory_kib(proxy.pids())
        memory.active_calls = active()
    if after:
        uac.wait()  # every call BYE'd by the UAC at the end of its hold
        deadline = time.monotonic() + 30
        while (left := active()) and time.monotonic() < deadline:
            time.sleep(0.25)
        time.sleep(2.0)
        ended = memory_kib(proxy.pids())
        time.sleep(LINGER_S)
        settled = memory_kib(proxy.pids())
        if not spell:
            memory.ended_active, memory.ended, memory.settled = left, ended, settled
        elif settled is not None:
            memory.spells.append(settled)


def memory_lines(memory: Memory) -> list[str]:
    """--rss-after: per call, then after the calls, for one peer."""
    if memory.idle is None or memory.loaded is None:
        return [f"{memory.peer:9} memory: no data"]
    rss, pss = memory.per_call(0), memory.per_call(1)
    if rss is None or pss is None:
        return [f"{memory.peer:9} memory: no call was held"]
    lines = [
        f"{memory.peer:9} memory holding {memory.active_calls} calls (wanted {memory.wanted}): "
        f"{pss:.1f} KiB per call by PSS, {rss:.1f} by RSS, summed over its "
        f"{'process' if memory.peer.startswith('edge') else 'processes'} "
        f"(idle PSS {memory.idle[1] / 1024:.1f} MiB, loaded {memory.loaded[1] / 1024:.1f} MiB)"
    ]
    if memory.ended is not None and memory.settled is not None:
        rss_idle, pss_idle = memory.idle
        lines.append(
            f"{memory.peer:9} after the calls ended ({memory.ended_active} active): RSS "
            f"{memory.ended[0] / 1024:.1f} MiB ({memory.ended[0] / rss_idle:.2f} x idle), "
            f"{LINGER_S:.0f} s later {memory.settled[0] / 1024:.1f} MiB "
            f"({memory.settled[0] / rss_idle:.2f} x idle; target <= 1.10); PSS then "
            f"{memory.settled[1] / 1024:.1f} MiB ({memory.settled[1] / pss_idle:.2f} x idle)"
        )
    if memory.spells and memory.idle is not None and memory.settled is not None:
        rss_idle = memory.idle[0]
        lines.append(
            f"{memory.peer:9} RSS {LINGER_S:.0f} s after each busy spell of {memory.wanted} calls: "
            + ", ".join(f"{kib[0] / rss_idle:.2f}" for kib in [memory.settled, *memory.spells])
            + " x idle"
        )
    if memory.later and memory.idle is not None:
        rss_idle = memory.idle[0]
        lines.append(
            f"{memory.peer:9} RSS later (s after the calls were gone: x idle): "
            + ", ".join(f"{at:.0f}: {kib[0] / rss_idle:.2f}" for at, kib in memory.later)
        )
    return lines


# --- CPU per call while holding many ------------------------------------------------------------


@dataclass
class CpuLevel:
    held: int  # concurrent long calls wanted
    fill_rate: int
    rate: int  # short calls/s wanted
    active: tuple[int, int]  # calls the edge reported when the window started, ended
    idle_us_per_s: float  # the edge's CPU holding them, before the short calls
    calls: int  # short calls attempted inside the window (the edge's counter)
    cpu_s: float  # the edge's CPU over the window
    window_s: float
    short_failed: int

    @property
    def us_per_call(self) -> float:
        return self.cpu_s * 1e6 / self.calls if self.calls else math.nan

    @property
    def achieved(self) -> float:
        return self.calls / self.window_s if self.window_s else 0.0

    def line(self) -> str:
        net = self.us_per_call - self.idle_us_per_s / self.achieved if self.calls else math.nan
        warnings = []
        if self.achieved < 0.9 * self.rate:
            warnings.append(f"the edge took {self.achieved:.0f} of the {self.rate} calls/s")
        if min(self.active) < self.held:
            warnings.append(f"holding {self.active[0]}/{self.active[1]} at the window's ends")
        if self.short_failed:
            warnings.append(f"{self.short_failed} short calls failed")
        warning = f" (NOT STEADY: {'; '.join(warnings)})" if warnings else ""
        return (
            f"edge      holding {self.held:6d} calls: {self.us_per_call:6.0f} us CPU per call "
            f"({self.calls} short calls over {self.window_s:.0f} s at {self.rate}/s); holding "
            f"them idle costs {self.idle_us_per_s:.0f} us/s, so {net:.0f} us per call net"
            f"{warning}"
        )


def _attempts(edge: h.EdgeProcess) -> float:
    return edge.metric("trunkline_edge_call_attempts_total")


def _active(edge: h.EdgeProcess) -> int:
    return int(edge.health().get("active_calls", 0))


def measure_cpu_level(
    peer: EdgePeer, held: int, rate: int, seconds: float, workdir: Path, *, fill_rate: int
) -> CpuLevel:
    """The edge's CPU per call (utime + stime of its process, all threads) while it holds
    `held` long calls: one UAC fills it at `fill_rate` calls/s and holds them; a second UAC
    then sends short calls at `rate`; the window of `seconds` starts `LINGER_S` after the short
    calls do, when as many of their lingering transactions end each second as start (steady
    state), and after the fill's have ended. Calls in the window: the edge's own attempt
    counter (/metrics, read outside the CPU readings)."""
    workdir.mkdir(parents=True, exist_ok=True)
    fill_s = held / fill_rate
    hold_s = fill_s + 2 + IDLE_WINDOW_S + LINGER_S + seconds + 40
    short_s = LINGER_S + seconds + 5
    uas = _uas(peer, workdir, wall_timeout=hold_s + 120)
    uas.start().wait_listening()
    proxy = None
    sipps: list[h.Sipp] = []
    try:
        proxy = peer.start(workdir, uas.local_port)
        edge = proxy.edge
        assert edge is not None
        holder = h.Sipp(
            workdir, "hold", builtin="uac", local_ip=peer.uac_ip, remote=proxy.address,
            calls=held, rate=fill_rate, limit=held, duration_ms=round(hold_s * 1000),
            service=CALLEE, recv_timeout_ms=None, trace_messages=False, trace_errors=False,
            wall_timeout=hold_s + 60,
        )  # fmt: skip
        sipps.append(holder.start())
        deadline = time.monotonic() + fill_s + 20
        while _active(edge) < held and time.monotonic() < deadline:
            time.sleep(0.25)
        time.sleep(2.0)  # the fill's ACKs and last answers
        idle_started, idle_cpu = time.monotonic(), edge.cpu_seconds()
        time.sleep(IDLE_WINDOW_S)
        idle_us_per_s = (edge.cpu_seconds() - idle_cpu) * 1e6 / (time.monotonic() - idle_started)
        short = h.Sipp(
            workdir, "short", builtin="uac", local_ip=peer.uac_ip, remote=proxy.address,
            calls=round(rate * short_s), rate=rate, limit=max(100, rate), duration_ms=0,
            service=CALLEE, recv_timeout_ms=5_000, trace_messages=False, trace_errors=False,
            wall_timeout=short_s + 30,
        )  # fmt: skip
        sipps.append(short.start())
        time.sleep(LINGER_S)
        active_before = _active(edge)
        attempts_before = _attempts(edge)
        window_started, cpu_before = time.monotonic(), edge.cpu_seconds()
        time.sleep(seconds)
        cpu_after, window_ended = edge.cpu_seconds(), time.monotonic()
        attempts_after = _attempts(edge)
        active_after = _active(edge)
        result = short.wait()
        return CpuLevel(
            held=held,
            fill_rate=fill_rate,
            rate=rate,
            active=(active_before, active_after),
            idle_us_per_s=idle_us_per_s,
            calls=round(attempts_after - attempts_before),
            cpu_s=cpu_after - cpu_before,
            window_s=window_ended - window_started,
            short_failed=result.failed,
        )
    finally:
        for sipp in sipps:
            if sipp.running:
                sipp.stop()
        if proxy is not None:
            proxy.stop()
        uas.stop()


def cpu_level_lines(levels: list[CpuLevel], held: list[int]) -> list[str]:
    """Each level's line; with --rounds, each level's median and each round's ratio too."""
    lines = [level.line() for level in levels]
    if len(held) < 2:
        return lines
    per_round = [levels[i : i + len(held)] for i in range(0, len(levels), len(held))]
    rounds = len(per_round)
    ratios = [
        each[-1].us_per_call / each[0].us_per_call
        for each in per_round
        if len(each) == len(held) and each[0].calls and each[-1].calls
    ]
    if rounds > 1:
        medians = [
            median([level.us_per_call for level in levels[i :: len(held)] if level.calls])
            for i in range(len(held))
        ]
        lines.append(
            "edge      CPU per call, median of "
            f"{rounds} rounds: "
            + " / ".join(f"{us:.0f}" for us in medians)
            + f" us holding {' / '.join(str(n) for n in held)}"
        )
        lines.append(
            f"edge      CPU per call holding {held[-1]} / holding {held[0]}, each round: "
            + ", ".join(f"{ratio:.2f}" for ratio in ratios)
        )
    if ratios:
        which = f"median of {len(ratios)} rounds; " if rounds > 1 else ""
        lines.append(
            f"edge      CPU per call holding {held[-1]} / holding {held[0]}: "
            f"{median(ratios):.2f} ({which}target: flat, 1.0)"
        )
    return lines


def round_line(found: dict[str, Search]) -> str:
    """One round's rates, and each edge's ratio to Kamailio's in that round."""
    kamailio = found["kamailio"].best if "kamailio" in found else 0
    parts = []
    for name, search in found.items():
        ratio = f" ({search.best / kamailio:.2f}x)" if kamailio and name != "kamailio" else ""
        parts.append(f"{name} {search.best}{ratio}")
    return ", ".join(parts)


def ratio_text(rounds: list[dict[str, Search]], name: str) -> str:
    """The median over the rounds of `name`'s rate over Kamailio's in the same round."""
    ratios = [
        each[name].best / each["kamailio"].best
        for each in rounds
        if name in each and "kamailio" in each and each["kamailio"].best
    ]
    return f"{median(ratios):.2f}" if ratios else "nan"


# --- main -------------------------------------------------------------------------------------


def _known_rates(values: list[str], parser: argparse.ArgumentParser) -> dict[str, int]:
    rates = {}
    for value in values:
        name, _, rate = value.partition("=")
        if not rate.isdigit() or name not in ("kamailio", "edge", "edge-x2"):
            parser.error(f"--known-rate {value!r}: kamailio=N, edge=N or edge-x2=N")
        rates[name] = int(rate)
    return rates


def _levels(value: str) -> list[int]:
    try:
        levels = [int(part) for part in value.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of call counts: {value!r}") from None
    if not levels or min(levels) < 1:
        raise argparse.ArgumentTypeError(f"not a list of call counts: {value!r}")
    return levels


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
    parser.add_argument(
        "--pauses",
        action="store_true",
        help="during the edge's latency run: an OPTIONS probe every 5 ms (answer delays: the "
        "longest pause) and a 100,000-number snapshot applied half-way",
    )
    parser.add_argument(
        "--wire",
        action="store_true",
        help="the latency runs also timed on the wire: tcpdump on loopback, INVITE->200 to the "
        "microsecond (SIPp's own times come in 4 ms steps here); p50/p90/p99 for each peer and "
        "the edge/kamailio ratio of the p99s (needs tcpdump and root)",
    )
    parser.add_argument(
        "--no-apply",
        action="store_true",
        help="with --pauses: the probe only, no snapshot applied",
    )
    parser.add_argument(
        "--apply-json",
        action="store_true",
        help="with --pauses: POST the snapshot as one JSON document instead of snapshot lines "
        "(what the control plane sends)",
    )
    parser.add_argument("--start-rate", type=int, help="first rate (default 100; quick 400)")
    parser.add_argument("--max-rate", type=int, default=20_000, help="never try above this")
    parser.add_argument("--budget", type=float, help="seconds for the searches (default 360)")
    parser.add_argument(
        "--known-rate",
        action="append",
        default=[],
        metavar="PEER=N",
        help="skip PEER's search (kamailio, edge, edge-x2): N calls/s is taken as found "
        "(repeatable); its latency run is at N/2",
    )
    parser.add_argument("--rss-calls", type=int, help="concurrent calls for RSS (5000; quick 1000)")
    parser.add_argument("--no-rss", action="store_true", help="skip the memory measurement")
    parser.add_argument(
        "--rss-after",
        action="store_true",
        help="memory also after the calls end (BYE'd by SIPp) and once their lingering "
        "transactions are gone, and Kamailio's KiB per dialog measured the same way",
    )
    parser.add_argument(
        "--rss-rate",
        type=int,
        default=RSS_RATE,
        help=f"calls/s that fill the edge for the memory run (default {RSS_RATE}; lower for an "
        "edge slowed by EDGE_CPS_MEMTRACE_FRAMES)",
    )
    parser.add_argument(
        "--rss-only",
        action="store_true",
        help="the memory run of --rss-after alone: no search, no latency run (about 70 s a peer)",
    )
    parser.add_argument(
        "--rss-later",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="with --rss-after: the edge's memory also read every 15 s after the 34 s reading, "
        "until SECONDS after its calls were gone",
    )
    parser.add_argument(
        "--rss-spells",
        type=int,
        default=1,
        metavar="N",
        help="with --rss-after: the edge goes through N busy spells of --rss-calls, one after "
        "the other, its memory read after each (is what a spell leaves reused by the next?)",
    )
    parser.add_argument(
        "--cpu-levels",
        type=_levels,
        metavar="N,N,...",
        help="the edge's CPU per short call while it holds N long calls, e.g. 100,1000,10000",
    )
    parser.add_argument(
        "--cpu-rate",
        type=int,
        help="short calls/s of --cpu-levels (default: 200, or a quarter of the edge's rate "
        "found if that is less)",
    )
    parser.add_argument(
        "--fill-rate",
        type=int,
        help="calls/s that fill the edge with long calls for --cpu-levels (default: 500, or "
        "half the edge's rate found if that is less)",
    )
    parser.add_argument(
        "--cpu-seconds", type=float, default=10.0, help="CPU window of --cpu-levels (10 s)"
    )
    parser.add_argument(
        "--edges",
        type=int,
        default=1,
        help="also search N edge processes together (127.0.0.11, .12, ...; one UAC each, one "
        "UAS), sharing limits through Redis (--redis-url)",
    )
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("REDIS_URL"),
        help="the Redis of --edges N's shared limits (default: $REDIS_URL)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        metavar="N",
        help="search every peer N times, in turn (and run --cpu-levels N times): each round's "
        "ratio, and the median (the machines here are noisy; --budget is shared by the rounds)",
    )
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
    args.known_rate = _known_rates(args.known_rate, parser)
    if args.rss_only:
        if args.no_rss or args.cpu_levels or args.edges > 1 or args.media:
            parser.error(
                "--rss-only: the memory run alone (no --no-rss, --cpu-levels, --edges, --media)"
            )
        args.rss_after = True
    if args.edges < 1:
        parser.error("--edges: 1 or more")
    if args.rounds < 1:
        parser.error("--rounds: 1 or more")
    if args.wire:
        WireCapture.tcpdump()  # now, not after the searches
    if args.edges > 1 and not args.redis_url:
        parser.error("--edges N shares limits through Redis: give --redis-url or REDIS_URL")
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
    edge_peer = None
    if args.only in (None, "edge"):
        edge_peer = EdgePeer(edge_args, media=args.media)
        peers.append(edge_peer)
        if args.edges > 1:
            peers.append(
                EdgePeer(edge_args, media=args.media, count=args.edges, redis_url=args.redis_url)
            )
    soaked = [p for p in peers if not (isinstance(p, EdgePeer) and p.count > 1)]

    began = time.monotonic()
    # The searches share most of the budget; latency and memory runs take the rest.
    latency_seconds = args.latency_seconds or seconds
    extras = (latency_seconds + STEP_OVERHEAD_S) * len(soaked)  # one latency run per peer
    if edge_peer is not None and not args.no_rss:
        extras += rss_calls / RSS_RATE + 8
    searched = [p for p in peers if p.key not in args.known_rate]
    search_budget = max(seconds * 2, (budget - extras) / max(1, len(searched) * args.rounds))
    print(
        f"edge_cps: {seconds:g} s steps from {start_rate} calls/s, {search_budget:.0f} s of "
        f"search per peer{' a round' if args.rounds > 1 else ''}, files in {workdir}",
        flush=True,
    )

    # The searches, round after round (--rounds: each peer once a round, in the same order,
    # so each round's ratio compares peers measured minutes apart, not a whole run apart).
    rounds: list[dict[str, Search]] = []
    for number in range(0 if args.rss_only else args.rounds):
        if args.rounds > 1:
            print(f"round {number + 1} of {args.rounds}:", flush=True)
        found_now: dict[str, Search] = {}
        for peer in peers:
            print(f"{peer.name}:", flush=True)
            if peer.key in args.known_rate:
                found_now[peer.name] = Search(args.known_rate[peer.key], None, [], False)
                print(f"  {peer.name:9} {args.known_rate[peer.key]:6d} calls/s given "
                      "(--known-rate), not searched")  # fmt: skip
                continue
            found_now[peer.name] = find_max_rate(
                peer,
                workdir / (f"round{number + 1}" if args.rounds > 1 else ""),
                start=start_rate,
                ceiling=args.max_rate,
                seconds=seconds,
                resolution=resolution,
                budget=search_budget,
                media=args.media,
            )
        rounds.append(found_now)
    found = (
        {name: median_search([each[name] for each in rounds]) for name in rounds[0]}
        if rounds
        else {}
    )

    latencies: dict[str, Latency | None] = {}
    watch: PauseWatch | None = None
    for peer in soaked if found else []:
        if args.pauses and peer is edge_peer:
            watch = PauseWatch(
                workdir / f"{peer.key}-latency",
                apply_after=latency_seconds / 2,
                apply=not args.no_apply,
                lines=not args.apply_json,
            )
        latencies[peer.name] = measure_latency(
            peer,
            found[peer.name].best // 2,
            latency_seconds,
            workdir / f"{peer.key}-latency",
            watch=watch if peer is edge_peer else None,
            media=args.media,
            wire=args.wire,
        )

    memory = None
    memories: list[Memory] = []
    if edge_peer is not None and not args.no_rss:
        more = " until they end" if args.rss_after else ""
        print(f"edge memory with {rss_calls} concurrent calls{more}:", flush=True)
        memory = measure_rss(
            edge_peer,
            rss_calls,
            workdir / "edge-rss",
            after=args.rss_after,
            rate=args.rss_rate,
            later=args.rss_later,
            spells=args.rss_spells,
        )
        memories.append(memory)
        kamailio = next((p for p in peers if isinstance(p, KamailioPeer)), None)
        if args.rss_after and kamailio is not None:
            print(f"kamailio memory with {rss_calls} concurrent dialogs until they end:")
            memories.append(measure_rss(kamailio, rss_calls, workdir / "kamailio-rss", after=True))

    levels: list[CpuLevel] = []
    if edge_peer is not None and args.cpu_levels:
        # Below what the edge carries here, so that every window is steady (a busy machine
        # carries less: rates that overload the edge would measure its backlog instead).
        edge_rate = found["edge"].best or RSS_RATE
        cpu_rate = args.cpu_rate or max(10, min(200, edge_rate // 4))
        fill_rate = args.fill_rate or max(10, min(RSS_RATE, edge_rate // 2))
        for number in range(args.rounds):
            for held in args.cpu_levels:
                of_round = f"; round {number + 1} of {args.rounds}" if args.rounds > 1 else ""
                print(
                    f"edge CPU per call holding {held} calls (filled at {fill_rate}/s; short "
                    f"calls at {cpu_rate}/s{of_round}):",
                    flush=True,
                )
                level = measure_cpu_level(
                    edge_peer, held, cpu_rate, args.cpu_seconds,
                    workdir / f"edge-cpu-{held}" / f"round{number + 1}",
                    fill_rate=fill_rate,
                )  # fmt: skip
                print(level.line(), flush=True)
                levels.append(level)

    print()
    for name, search in found.items():
        note = ""
        if search.first_failure is not None:
            note = f" (failed at {search.first_failure})"
        if search.out_of_time:
            note += " (time budget reached)"
        if not search.steps:
            note += " (given with --known-rate)"
        if name.startswith("edge") and edge_peer is not None:
            note += f" (core: {edge_peer.core})"
        if name != "edge" and name.startswith("edge"):
            note += f" ({args.edges} processes together, limits shared through Redis)"
        if len(rounds) > 1 and search.steps:
            note += f" (the median of {len(rounds)} rounds)"
        print(f"{name:9} {search.best:6d} calls/s without a failed call{note}")
    for name, latency in latencies.items():
        if latency is None:
            print(f"{name:9} latency: no data")
            continue
        flag = "" if latency.passed else " (that run had failures)"
        print(
            f"{name:9} INVITE->200 at {latency.rate} calls/s: p50 {_ms(latency.p50_ms)}, "
            f"p99 {_ms(latency.p99_ms)}, max {_ms(latency.max_ms)} "
            f"({latency.calls} calls over {latency_seconds:g} s; SIPp -trace_rtt, whole ms"
            f"{latency.stolen_note()}){flag}"
        )
    wire_p99: dict[str, float] = {}
    for name, latency in latencies.items():
        if latency is None or latency.wire is None:
            continue
        times = latency.wire.times_ms()
        if not times:
            print(f"{name:9} INVITE->200 on the wire: no calls in the capture")
            continue
        wire_p99[name] = percentile(times, 99)
        dropped = latency.wire.dropped
        lost = "" if not dropped else f"; {dropped} datagrams dropped by the capture"
        print(
            f"{name:9} INVITE->200 on the wire at {latency.rate} calls/s: "
            f"p50 {percentile(times, 50):.2f} ms, p90 {percentile(times, 90):.2f} ms, "
            f"p99 {wire_p99[name]:.2f} ms, max {max(times):.2f} ms "
            f"({len(times)} calls; tcpdump, µs{lost}{latency.stolen_note()})"
        )
    if "edge" in wire_p99 and "kamailio" in wire_p99:
        print(
            f"latency   p99 INVITE->200 on the wire, edge / kamailio, each at half its rate: "
            f"{wire_p99['edge'] / wire_p99['kamailio']:.2f} (target: <= 1.0)"
        )
    if watch is not None:
        for line in watch.report(latencies.get("edge")):
            print(line)
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
    if args.rss_after:
        for each in memories:
            for line in memory_lines(each):
                print(line)
        if len(memories) == 2:
            edge_kib, kamailio_kib = memories[0].per_call(1), memories[1].per_call(1)
            if edge_kib and kamailio_kib:
                print(f"memory    edge KiB per call / kamailio's per dialog (PSS): "
                      f"{edge_kib / kamailio_kib:.2f}")  # fmt: skip
    for line in cpu_level_lines(levels, args.cpu_levels or []):
        print(line)
    print(f"total {time.monotonic() - began:.0f} s")
    if len(rounds) > 1 and searched:
        for number, found_in_round in enumerate(rounds, 1):
            print(f"round {number}: {round_line(found_in_round)}")
    scaled = next((n for n in found if n.startswith("edge x")), None)
    if scaled is not None:
        print(f"edge_x{args.edges}_cps_ratio_vs_kamailio={ratio_text(rounds, scaled)}")
    name = "edge_media_cps_ratio_vs_kamailio" if args.media else "edge_cps_ratio_vs_kamailio"
    print(f"{name}={ratio_text(rounds, 'edge')}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--serve-edge":
        raise SystemExit(serve_edge(sys.argv[2:]))
    if len(sys.argv) > 1 and sys.argv[1] == "--serve-probe":
        raise SystemExit(serve_probe(sys.argv[2:]))
    raise SystemExit(main())
