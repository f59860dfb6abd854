"""Live board latency: a SIP event at the edge to its message in a WebSocket client, and what
publishing costs the edge. Figures are ratios to peers measured in the same run.

The production path, every piece a real process on loopback:

    SIPp uac -> edge (python -m edge --redis-url, --live-events on) -> SIPp uas
                  | batches (~100 ms) XADD to the Redis stream
                  v
    web (uvicorn config.asgi, REDIS_URL: channels_redis layer) relay -> group_send
                  | consumer
                  v
    this script's WebSocket client (an operator API key as subprotocol)

Redis is a redis-server of this script's own (free port, nothing saved); the web app runs on
an SQLite file in a temporary directory holding one operator API key and the edge node.

1. Bare channel layer: ``group_send`` -> ``receive`` on the same channels_redis layer and Redis,
   from this process, ``--bare-samples`` times: the floor any live message pays.
2. Latency at 100 and 500 calls/s (``--seconds`` each; SIPp's built-in uac/uas, zero-length
   calls): each event carries ``at``, the edge's wall clock when the core emitted it; the client
   notes its wall clock on receipt (same machine, same clock). p50 and p99 over every event, and
   their ratios to the bare round trip. Most of the figure is the edge's batching interval
   (0.1 s): an event waits for its batch.
3. Publishing cost: the edge at ``--cost-rate`` calls/s with ``--live-events on`` and ``off``,
   alternately (the order swapped every round: the machine's load drifts), ``--cost-rounds``
   times each; the edge's CPU time (utime+stime of its process) per call, best round of each.
   on/off - 1 is the share of CPU capacity publishing takes, so the fall in the edge's highest
   calls/s it implies (the issue's target: at most 5 %). Not a maximum-rate search
   (bench/edge_cps.py does that, minutes per figure). On a shared machine this difference is
   within the noise, so the publisher's own work (publish + encode of a call's 4 events,
   in-process, no XADD) is printed too: the steady part of the cost.

Last line: ``live_p99_ms=<p99 at 500 calls/s>``. The machine is shared and noisy: compare
ratios, and runs with each other, rather than absolute milliseconds.

Usage:
    .venv/bin/python bench/live_latency.py               # about 2 minutes
    .venv/bin/python bench/live_latency.py --seconds 4 --cost-rounds 1   # a quick look
Needs sipp (Debian sip-tester) and redis-server.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from tempfile import mkdtemp
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.edge_cps import CALLEE, bench_snapshot, percentile  # noqa: E402
from edge.tests import sipp_harness as h  # noqa: E402

SECRET_KEY = "bench-live-latency-secret"
NODE = "bench-edge"

SEED = """
import json
from accounts import services
from core.tenancy import SYSTEM
from trunking.models import EdgeNode
from trunking.tokens import edge_node_token
node = EdgeNode.objects.create(name={node!r}, control_url={control!r})
key = services.api_key_create(actor=SYSTEM, customer=None, name="bench", role="admin")
print(json.dumps({{"key": key.secret, "token": edge_node_token(node)}}))
"""


# --- processes --------------------------------------------------------------------------------


def start_redis(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("redis-server is not installed")
    port = h.free_tcp_port("127.0.0.1")
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    import redis

    deadline = time.monotonic() + 10
    while True:
        try:
            if redis.Redis.from_url(url, socket_timeout=0.2).ping():
                return process, url
        except redis.RedisError:
            if time.monotonic() > deadline:
                sys.exit("redis-server did not start")
            time.sleep(0.05)


def web_env(workdir: Path, redis_url: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        TRUNKLINE_VAR_DIR=str(workdir / "var"),
        DATABASE_URL=f"sqlite:///{workdir / 'web.sqlite3'}",
        REDIS_URL=redis_url,
        CELERY_TASK_ALWAYS_EAGER="1",
        SECRET_KEY=SECRET_KEY,
        DEBUG="0",
        ALLOWED_HOSTS="127.0.0.1,localhost",
        PYTHONUNBUFFERED="1",
    )
    return env


def start_web(workdir: Path, env: dict[str, str], control_port: int) -> tuple[Any, str, dict]:
    manage = [sys.executable, str(REPO / "manage.py")]
    subprocess.run([*manage, "migrate", "-v", "0"], env=env, cwd=REPO, check=True)
    seed = SEED.format(node=NODE, control=f"http://127.0.0.1:{control_port}")
    out = subprocess.run(
        [*manage, "shell", "-c", seed], env=env, cwd=REPO, check=True, capture_output=True
    ).stdout.decode()
    secrets = json.loads(out.strip().splitlines()[-1])
    port = h.free_tcp_port("127.0.0.1")
    log = open(workdir / "web.log", "wb")  # noqa: SIM115
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "config.asgi:application", "--host", "127.0.0.1",
         "--port", str(port), "--lifespan", "off", "--no-access-log", "--log-level", "warning"],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(f"{base}/healthz", timeout=1):
                break
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                sys.exit("the web app did not start: " + (workdir / "web.log").read_text())
            time.sleep(0.1)
    return process, base, secrets


def start_edge(
    workdir: Path, uas_port: int, *, token: str, control_port: int, redis_url: str, live: bool
) -> h.EdgeProcess:
    return h.EdgeProcess(
        workdir,
        bench_snapshot(uas_port),
        node=NODE,
        token=token,
        control_port=control_port,
        drain_timeout=1,
        extra_args=[
            "--log-level", "WARNING", "--redis-url", redis_url,
            "--live-events", "on" if live else "off",
        ],
    ).start()  # fmt: skip


def load(workdir: Path, edge: h.EdgeProcess, rate: int, seconds: float) -> h.SippResult:
    calls = max(1, round(rate * seconds))
    uac = h.Sipp(
        workdir, f"uac-{rate}-{time.monotonic_ns()}", builtin="uac", local_ip=h.PBX_IP,
        remote=edge.sip_address, calls=calls, rate=rate, limit=max(100, rate), duration_ms=0,
        service=CALLEE, recv_timeout_ms=5_000, trace_messages=False, trace_errors=False,
        wall_timeout=seconds + 30,
    )  # fmt: skip
    return uac.run()


def uas(workdir: Path) -> h.Sipp:
    return h.Sipp(
        workdir, "uas", builtin="uas", local_ip=h.CARRIER_IP, calls=None, recv_timeout_ms=None,
        trace_messages=False, trace_errors=False, wall_timeout=3600,
    ).start().wait_listening()  # fmt: skip


# --- measurements -----------------------------------------------------------------------------


async def bare_round_trip(redis_url: str, samples: int) -> list[float]:
    """group_send -> receive through channels_redis on the same Redis, in seconds."""
    from channels_redis.core import RedisChannelLayer

    layer = RedisChannelLayer(hosts=[redis_url])
    channel = await layer.new_channel()
    await layer.group_add("bench.bare", channel)
    out = []
    for _ in range(samples):
        started = time.perf_counter()
        await layer.group_send("bench.bare", {"type": "x", "sent": time.time()})
        await layer.receive(channel)
        out.append(time.perf_counter() - started)
    await layer.flush()
    return out


async def live_latency(
    base: str,
    key: str,
    redis_url: str,
    workdir: Path,
    edge: h.EdgeProcess,
    rate: int,
    seconds: float,
) -> tuple[list[float], list[float], h.SippResult]:
    """Event -> WebSocket client latencies, and event -> Redis stream (the edge's share)."""
    import redis.asyncio as aioredis
    import websockets

    from edge.runtime.events import LIVE_EVENTS_STREAM

    url = base.replace("http://", "ws://") + "/ws/live/"
    latencies: list[float] = []
    in_stream: list[float] = []
    reader = aioredis.Redis.from_url(redis_url)

    async def read_stream() -> None:
        last = "$"
        while True:
            answer = await reader.xread({LIVE_EVENTS_STREAM: last}, block=1000, count=100)
            now = time.time()
            for _stream, entries in answer or ():
                for entry_id, fields in entries:
                    last = entry_id
                    in_stream.extend(now - e["at"] for e in json.loads(fields[b"batch"])["events"])

    async with websockets.connect(url, subprotocols=["trunkline.live", f"api-key.{key}"]) as ws:
        first = json.loads(await ws.recv())
        assert first["type"] == "snapshot", first

        async def collect() -> None:
            async for raw in ws:
                now = time.time()
                message = json.loads(raw)
                if message.get("type") == "events":
                    latencies.extend(now - e["at"] for e in message["events"])

        tasks = [asyncio.create_task(collect()), asyncio.create_task(read_stream())]
        result = await asyncio.to_thread(load, workdir, edge, rate, seconds)
        await asyncio.sleep(1.0)  # the last batches
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    await reader.aclose()
    return latencies, in_stream, result


def publisher_work_per_call(calls: int = 50_000) -> float:
    """Seconds of CPU the sink and the encoding take per call (4 events), without the XADD:
    the steady part of the cost, free of the other processes' noise."""
    from edge.b2bua import CallEvent
    from edge.runtime.events import BatchingSink, encode_batch

    def one(kind: str) -> CallEvent:
        return CallEvent(kind, "0123456789abcdef" * 2, 1, 1, "outbound", "+14155550100",
                         "+14155550123", time.time())  # fmt: skip

    kinds = [[one(kind)] for kind in ("started", "ringing", "answered", "ended")]

    async def run() -> float:
        sink = BatchingSink(lambda batch: None, node="bench", interval=3600, max_pending=10**7)
        started = time.process_time()
        for _ in range(calls):
            for events in kinds:
                sink.publish(events)
        encode_batch("bench", list(sink._pending))
        return (time.process_time() - started) / calls

    return asyncio.run(run())


def ms(value: float) -> str:
    return f"{value * 1000:.1f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="load per latency run")
    parser.add_argument("--rates", default="100,500", help="calls/s of the latency runs")
    parser.add_argument("--bare-samples", type=int, default=1000)
    parser.add_argument("--cost-rate", type=int, default=500)
    parser.add_argument("--cost-seconds", type=float, default=8.0)
    parser.add_argument("--cost-rounds", type=int, default=2)
    args = parser.parse_args(argv)
    if h.sipp_binary() is None:
        sys.exit("sipp is not installed (apt-get install sip-tester)")
    workdir = Path(mkdtemp(prefix="live-latency-"))
    redis_process, redis_url = start_redis(workdir)
    control_port = h.free_tcp_port()
    web = None
    far_end = None
    p99_500 = float("nan")
    try:
        web, base, secrets = start_web(workdir, web_env(workdir, redis_url), control_port)
        far_end = uas(workdir)

        bare = asyncio.run(bare_round_trip(redis_url, args.bare_samples))
        bare_p50, bare_p99 = percentile(bare, 50), percentile(bare, 99)
        print(f"bare channel layer round trip: p50 {ms(bare_p50)} ms  p99 {ms(bare_p99)} ms")

        edge = start_edge(
            workdir / "edge-live", far_end.local_port, token=secrets["token"],
            control_port=control_port, redis_url=redis_url, live=True,
        )  # fmt: skip
        try:
            for rate in [int(r) for r in args.rates.split(",")]:
                latencies, in_stream, result = asyncio.run(
                    live_latency(base, secrets["key"], redis_url, workdir, edge, rate, args.seconds)
                )
                if not latencies:
                    print(f"{rate} calls/s: no events reached the client\n{result.explain()}")
                    continue
                p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
                print(
                    f"{rate:4d} calls/s: {len(latencies)} events, {result.successful} calls ok, "
                    f"{result.failed} failed; event -> WebSocket p50 {ms(p50)} ms p99 {ms(p99)} ms"
                    f"  (x{p50 / bare_p50:.0f} / x{p99 / bare_p99:.0f} the bare round trip)"
                )
                if in_stream:
                    print(
                        f"      of which event -> Redis stream (the edge's batching and XADD): "
                        f"p50 {ms(percentile(in_stream, 50))} ms "
                        f"p99 {ms(percentile(in_stream, 99))} ms"
                    )
                if rate == 500:
                    p99_500 = p99
            dropped = edge.metric("trunkline_edge_events_dropped_total")
            print(f"events dropped by the edge's publisher: {dropped:.0f}")
        finally:
            edge.stop(grace=5)

        cost: dict[bool, list[float]] = {True: [], False: []}
        for round_ in range(args.cost_rounds):
            # Alternate which goes first: the machine's load drifts during a run.
            for live in (True, False) if round_ % 2 == 0 else (False, True):
                edge = start_edge(
                    workdir / f"edge-cost-{round_}-{live}", far_end.local_port,
                    token=secrets["token"], control_port=control_port, redis_url=redis_url,
                    live=live,
                )  # fmt: skip
                try:
                    before = edge.cpu_seconds()
                    result = load(workdir, edge, args.cost_rate, args.cost_seconds)
                    used = edge.cpu_seconds() - before
                finally:
                    edge.stop(grace=5)
                per_call = used / max(result.successful, 1)
                cost[live].append(per_call)
                print(
                    f"publisher {'on ' if live else 'off'}: {result.successful} calls ok, "
                    f"{result.failed} failed at {args.cost_rate}/s; edge CPU "
                    f"{per_call * 1e6:.0f} us/call"
                )
        if args.cost_rounds > 0:
            on, off = min(cost[True]), min(cost[False])
            print(
                f"publishing costs {100 * (on / off - 1):+.1f} % of the edge's CPU per call "
                f"(best of {args.cost_rounds}: {on * 1e6:.0f} vs {off * 1e6:.0f} us/call; "
                f"implied calls/s on/off {off / on:.3f})"
            )
    finally:
        if far_end is not None:
            far_end.stop()
        if web is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(web.pid, 15)
            web.wait(10)
        redis_process.kill()
        redis_process.wait(5)
        shutil.rmtree(workdir, ignore_errors=True)
    own = publisher_work_per_call()
    print(
        f"the publisher's own work in-process (4 events a call: publish + encode): "
        f"{own * 1e6:.1f} us/call"
    )
    print(f"live_p99_ms={p99_500 * 1000:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
