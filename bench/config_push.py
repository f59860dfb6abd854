"""How fast a configuration change reaches every edge, and what applying it costs a live edge.

With 10,000 trunks and 100,000 numbers in PostgreSQL (the data set of bench/api_list.py), a
web server, a Celery worker on Redis and two edge processes:

- build: `build_snapshot()` in this process (p50 of several builds);
- apply: `POST /config` of that snapshot to one edge, until it answers with the applied version
  (decode + compile off the event loop + swap), p50;
- propagation: a PATCH of a trunk through the API, from its response (the change is committed)
  until both edges report the new version on /health, p50 and p99 over --changes changes;
- stall: a probe sends OPTIONS to one edge every 5 ms and measures each answer's delay while
  snapshots are applied, with SIPp calls running through that edge when SIPp is installed;
  the longest delay during applies, next to the longest without.

Targets: p99 propagation under 250 ms (issue 9: a change is read, encoded and sent as what
changed, a delta), a full build under 2 s, no stall over 50 ms.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/trunkline_bench \\
    REDIS_URL=redis://127.0.0.1:6379/0 .venv/bin/python bench/config_push.py \\
    [--changes 50] [--applies 10]

Last line: ``config_push_p99_s=<x>``. Everything runs on loopback and stops by itself.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from tempfile import mkdtemp

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.api_list import (  # noqa: E402
    DEFAULT_DATABASE_URL,
    configure_environment,
    ensure_database,
    fill,
    migrate,
    quantile,
    start_server,
    stop_server,
)
from edge.tests.sipp_harness import (  # noqa: E402
    CARRIER_IP,
    PBX_IP,
    EdgeProcess,
    OptionsProbe,
    Sipp,
    free_tcp_port,
    free_udp_port,
    sipp_binary,
)

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
LOAD_CPS = 50


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def health_version(edge: EdgeProcess) -> int:
    return int(edge.health()["config_version"])


def api(conn: http.client.HTTPConnection, key: str, method: str, path: str, body: dict) -> int:
    conn.request(
        method, path, json.dumps(body),
        {"Authorization": f"Api-Key {key}", "Content-Type": "application/json"},
    )  # fmt: skip
    response = conn.getresponse()
    response.read()
    return response.status


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--changes", type=int, default=50)
    parser.add_argument("--applies", type=int, default=10, help="snapshot applies under load")
    args = parser.parse_args()
    database_url = os.environ.get("DATABASE_URL", DEFAULT_DATABASE_URL)
    redis_url = os.environ.get("REDIS_URL", DEFAULT_REDIS_URL)
    env = configure_environment(database_url)
    env.update(REDIS_URL=redis_url, CELERY_TASK_ALWAYS_EAGER="0", EDGE_RECONCILE_SECONDS="3600")
    os.environ.update(env)
    ensure_database(database_url)
    migrate(env)

    import django

    django.setup()
    fill(database_url)
    from accounts import services as account_services
    from accounts.models import Customer
    from core.tenancy import SYSTEM
    from trunking.models import Carrier, CarrierGateway, EdgeNode, IpAclEntry, Trunk
    from trunking.snapshot import build_snapshot, encode
    from trunking.tokens import edge_node_token

    work = Path(mkdtemp(prefix="config-push-"))
    EdgeNode.objects.filter(name__startswith="bench-push-").delete()
    nodes = [
        EdgeNode.objects.create(name=f"bench-push-{x}", control_url=f"http://127.0.0.1:{free_tcp_port()}")
        for x in "ab"
    ]  # fmt: skip
    # The calls of the stall measurement: a trunk of the PBX, a carrier at 127.0.0.3, under a
    # customer of this benchmark's own (bench/api_list.py owns and checks its data set).
    customer, _ = Customer.objects.get_or_create(name="bench-config-push")
    load_trunk, _ = Trunk.objects.update_or_create(
        customer=customer, name="bench-push-load",
        defaults={"max_channels": 10_000, "max_cps": 10_000, "caller_id_policy": "pass_through"},
    )  # fmt: skip
    IpAclEntry.objects.get_or_create(trunk=load_trunk, cidr=f"{PBX_IP}/32")
    carrier, _ = Carrier.objects.get_or_create(name="bench-push-carrier")
    uas_port = free_udp_port(CARRIER_IP)
    CarrierGateway.objects.filter(carrier=carrier).delete()
    CarrierGateway.objects.create(carrier=carrier, host=CARRIER_IP, port=uas_port)
    key = account_services.api_key_create(
        actor=SYSTEM, customer=load_trunk.customer, name=f"bench-push-{uuid.uuid4().hex[:6]}"
    ).secret

    web_port = free_tcp_port()
    processes: list[subprocess.Popen[bytes]] = []
    edges: list[EdgeProcess] = []
    load: Sipp | None = None
    uas: Sipp | None = None
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        processes.append(start_server(env, web_port))
        processes.append(subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "config", "worker", "--pool", "solo",
             "--loglevel", "WARNING"],
            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        ))  # fmt: skip
        snapshot_url = f"http://127.0.0.1:{web_port}/internal/edge/snapshot"
        for node in nodes:
            edge = EdgeProcess(
                work / node.name, None, node=node.name,
                control_port=int(node.control_url.rsplit(":", 1)[1]),
                token=edge_node_token(node), snapshot_url=snapshot_url,
                drain_timeout=1, env={"EDGE_LOG_LEVEL": "WARNING"},
            )  # fmt: skip
            edges.append(edge.start(timeout=60))

        print("# bench/config_push.py: from an API write to every edge applying it")
        print(f"# data: {Trunk.objects.count()} trunks; two edges; worker: Celery (solo) on Redis")

        builds = []
        for _ in range(5):
            started = time.perf_counter()
            snapshot = build_snapshot()
            builds.append(time.perf_counter() - started)
        body = encode(snapshot)
        print(f"snapshot: version {snapshot['version']}, {len(body) / 1e6:.1f} MB, "
              f"{len(snapshot['numbers'])} numbers")  # fmt: skip
        print(f"build p50 {ms(quantile(builds, 0.5))}  (max {ms(max(builds))})")

        # Applies and stalls are measured on a third edge that no push reaches: each apply
        # there carries a newer version than the last (an edge refuses older ones).
        solo = EdgeProcess(work / "bench-push-solo", snapshot, node="bench-push-solo",
                           drain_timeout=1, env={"EDGE_LOG_LEVEL": "WARNING"})  # fmt: skip
        edges.append(solo.start(timeout=60))
        next_version = iter(range(snapshot["version"] + 1, 1 << 62))

        def apply_to_solo() -> float:
            data = encode({**snapshot, "version": next(next_version)})
            request = urllib.request.Request(
                f"http://127.0.0.1:{solo.control_port}/config", data=data, method="POST",
                headers={"Authorization": f"Bearer {solo.token}"},
            )  # fmt: skip
            started = time.perf_counter()
            with urllib.request.urlopen(request, timeout=30) as response:
                response.read()
            return time.perf_counter() - started

        applies = [apply_to_solo() for _ in range(5)]
        print(f"apply p50 {ms(quantile(applies, 0.5))}  (max {ms(max(applies))})")

        pushed = edges[:2]
        conn = http.client.HTTPConnection("127.0.0.1", web_port, timeout=30)
        version = max(health_version(e) for e in pushed)
        delays = []
        for change in range(args.changes):
            status = api(conn, key, "PATCH", f"/api/v1/trunks/{load_trunk.pk}/",
                         {"max_channels": 10_000 + change % 2 + 1})  # fmt: skip
            committed = time.monotonic()
            assert status == 200, status
            deadline = committed + 30
            while min(health_version(e) for e in pushed) <= version:
                if time.monotonic() > deadline:
                    raise RuntimeError("an edge did not apply the change within 30 s")
                time.sleep(0.002)
            delays.append(time.monotonic() - committed)
            version = min(health_version(e) for e in pushed)
        p50, p99 = quantile(delays, 0.5), quantile(delays, 0.99)
        print(f"propagation over {len(delays)} changes: p50 {ms(p50)}  p99 {ms(p99)}  "
              f"max {ms(max(delays))}")  # fmt: skip

        probe = OptionsProbe(solo.sip_address)
        if sipp_binary():
            uas = Sipp(
                work,
                "uas",
                builtin="uas",
                local_ip=CARRIER_IP,
                local_port=uas_port,
                calls=None,
                wall_timeout=600,
                trace_messages=False,
                trace_errors=False,
            )
            uas.start()
            load = Sipp(work, "uac", builtin="uac", local_ip=PBX_IP,
                        remote=solo.sip_address, calls=LOAD_CPS * 600, rate=LOAD_CPS,
                        duration_ms=1000, service="14155550123", wall_timeout=600,
                        trace_messages=False, trace_errors=False)  # fmt: skip
            load.start()
        probe.start()
        time.sleep(2)
        windows = []
        for _ in range(args.applies):
            started = time.monotonic()
            apply_to_solo()
            windows.append((started, time.monotonic()))
            time.sleep(1)
        probe.stop()
        during, outside = probe.worst(windows, True), probe.worst(windows, False)
        under = f"with SIPp at {LOAD_CPS} calls/s" if load else "without SIPp (not installed)"
        print(f"stall while applying ({args.applies} applies, {under}): longest answer "
              f"{ms(during)}; longest outside applies {ms(outside)}")  # fmt: skip
        print(f"config_push_p99_s={p99:.3f}")
        return 0
    finally:
        for sipp in (load, uas):
            if sipp is not None:
                sipp.stop()
        for edge in edges:
            edge.stop(grace=5)
        for process in processes:
            stop_server(process)
        EdgeNode.objects.filter(name__startswith="bench-push-").delete()


if __name__ == "__main__":
    sys.exit(main())
