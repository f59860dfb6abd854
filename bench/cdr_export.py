"""CSV export of 1,000,000 CDRs through the API, as a ratio to a raw ``COPY ... TO STDOUT``.

One bench customer holds ``--rows`` CDRs (1,000,000 by default) spread over November 2026.
``GET /api/v1/cdrs/export/?format=csv`` for that month is fetched with the customer's key from a
real uvicorn server (one process, on a free loopback port) and read to the end; the peer is
psycopg on one connection running ``COPY (SELECT <the same columns> FROM billing_cdr WHERE
<the same customer and period> ORDER BY setup_at, id) TO STDOUT (FORMAT csv, HEADER)`` and
reading every byte. The API's rows are formatted as the export promises (ISO 8601 UTC times,
empty text unquoted), the raw ones as PostgreSQL prints them. Runs alternate API / raw
``--repeat`` times; medians are compared. Printed:

- seconds, rows and MB per run of each; rows/s;
- ``cdr_export_ratio`` = raw median seconds / API median seconds (1.0: the API streams as fast
  as the raw COPY; the target is >= 0.5); the raw side reads with psycopg's ``Copy.read()``;
- ``cdr_export_ratio_vs_libpq_loop``: the same against a raw side that reads straight from
  libpq's buffer, as the export itself does (a stricter peer; also run alternately);
- the web process's CPU seconds per export (from /proc, steadier than wall time when the
  machine is busy);
- the web process's peak resident memory (VmHWM of the uvicorn process, which serves nothing
  else), before and after the exports (target < 150 MB).

Figures on a shared machine are noisy; the ratio is taken within one run to cancel most of it.

Usage (the database is created, migrated and filled if needed; the fill is skipped next time):

    .venv/bin/python bench/cdr_export.py [--rows N] [--repeat N]

``DATABASE_URL`` (PostgreSQL) defaults to ``postgres://postgres@127.0.0.1:5432/trunkline_bench_g2``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import os
import signal
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.api_list import (  # noqa: E402
    HOST,
    configure_environment,
    ensure_database,
    free_port,
    libpq_url,
    migrate,
    start_server,
    stop_server,
)

DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/trunkline_bench_g2"
CUSTOMER_PREFIX = "bench-cdr-export-"
KEY_NAME = "bench-cdr-export"
MONTH_START = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
MONTH_SECONDS = 30 * 86_400
PERIOD = "since=2026-11-01T00:00:00Z&until=2026-12-01T00:00:00Z"
READ_BYTES = 1 << 20


def fill(database_url: str, rows: int) -> int:
    """The bench customer's id, with exactly ``rows`` CDRs in November 2026 (COPY)."""
    import psycopg

    from billing.exports import EXPORT_COLUMNS

    name = f"{CUSTOMER_PREFIX}{rows}"
    with psycopg.connect(libpq_url(database_url)) as conn:
        found = conn.execute("SELECT id FROM accounts_customer WHERE name = %s", [name]).fetchone()
        if found:
            (count,) = conn.execute(
                "SELECT count(*) FROM billing_cdr WHERE customer_id = %s", [found[0]]
            ).fetchone()
            if count == rows:
                print(f"# data present: {rows} CDRs of customer {name}; fill skipped")
                return int(found[0])
        started = time.perf_counter()
        now = dt.datetime.now(dt.UTC)
        with conn.transaction():
            if found:
                conn.execute("DELETE FROM billing_cdr WHERE customer_id = %s", [found[0]])
                customer_id = found[0]
            else:
                customer_id = conn.execute(
                    "INSERT INTO accounts_customer (name, status, billing_mode, credit_limit,"
                    " currency, created_at, updated_at) VALUES (%s, 'active', 'postpaid', 0,"
                    " 'USD', %s, %s) RETURNING id",
                    [name, now, now],
                ).fetchone()[0]
            trunk_id = conn.execute(
                "INSERT INTO trunking_trunk (customer_id, name, status, max_channels, max_cps,"
                " allowed_destinations, blocked_prefixes, caller_id_policy, failover_stop_codes,"
                " registration_allowed, default_country, max_call_duration, created_at,"
                " updated_at) VALUES (%s, %s, 'active', 30, 10, '[]', '[]', 'customer_numbers',"
                " '[404, 486, 600, 603]', false, 'US', 14400, %s, %s)"
                " ON CONFLICT DO NOTHING RETURNING id",
                [customer_id, f"bench-{rows}", now, now],
            ).fetchone()
            trunk_id = trunk_id[0] if trunk_id else None
            columns = [c for c in EXPORT_COLUMNS if c not in ("id", "ingested_at")]
            with conn.cursor().copy(f"COPY billing_cdr ({', '.join(columns)}) FROM STDIN") as copy:
                step = MONTH_SECONDS / rows
                for i in range(rows):
                    setup = MONTH_START + dt.timedelta(seconds=i * step)
                    answered = i % 3 != 0
                    answer = setup + dt.timedelta(seconds=4) if answered else None
                    end = setup + dt.timedelta(seconds=65 if answered else 2)
                    values = {
                        "edge": "edge-1",
                        "call_id": f"{rows:08d}{i:024x}",
                        "a_call_id": f"a{i}@pbx.bench.test",
                        "b_call_id": f"b{i}@edge-1" if answered else "",
                        "customer_id": customer_id,
                        "trunk_id": trunk_id,
                        "direction": "outbound" if i % 2 else "inbound",
                        "caller_e164": f"+1415555{i % 10000:04d}",
                        "callee_e164": f"+4420794{i % 100000:05d}",
                        "caller_raw": f"415555{i % 10000:04d}",
                        "callee_raw": f"01144207946{i % 10000:04d}",
                        "source_ip": "192.0.2.10",
                        "source_port": 5060,
                        "routes": '[{"target": "sip:198.51.100.8:5060", "kind": "gateway",'
                        ' "status": 200, "reason": "answered"}]'
                        if answered
                        else "[]",
                        "answered_by": "sip:198.51.100.8:5060" if answered else "",
                        "setup_at": setup,
                        "ringing_at": setup + dt.timedelta(seconds=1) if answered else None,
                        "answer_at": answer,
                        "end_at": end,
                        "duration_ms": 61_000 if answered else 0,
                        "billable_seconds": 61 if answered else 0,
                        "final_code": 200 if answered else 486,
                        "reason": "normal_clearing" if answered else "busy",
                        "hangup_side": "caller" if answered else "callee",
                        "codecs": '["PCMU"]' if answered else "[]",
                        "config_version": 1,
                    }
                    copy.write_row([values[c] for c in columns])
        conn.commit()
        conn.autocommit = True
        conn.execute("VACUUM (ANALYZE) billing_cdr")
        print(f"# filled {rows} CDRs in {time.perf_counter() - started:.1f} s (COPY)")
        return int(customer_id)


def issue_key(customer_id: int) -> str:
    from accounts.models import ApiKey, Customer
    from accounts.services import api_key_create
    from core.tenancy import SYSTEM

    ApiKey.objects.filter(name=KEY_NAME).delete()
    return api_key_create(
        actor=SYSTEM, customer=Customer.objects.get(pk=customer_id), name=KEY_NAME
    ).secret


def api_export(port: int, key: str) -> tuple[float, int, int]:
    """(seconds, bytes, lines) of one export through the server, read to the end."""
    started = time.perf_counter()
    conn = http.client.HTTPConnection(HOST, port, timeout=600)
    conn.request(
        "GET",
        f"/api/v1/cdrs/export/?{PERIOD}&format=csv",
        headers={"Authorization": f"Api-Key {key}"},
    )
    response = conn.getresponse()
    if response.status != 200:
        raise RuntimeError(f"HTTP {response.status}: {response.read(500)!r}")
    size = lines = 0
    while block := response.read(READ_BYTES):
        size += len(block)
        lines += block.count(b"\n")
    conn.close()
    return time.perf_counter() - started, size, lines


def raw_export(pg: object, customer_id: int, libpq_loop: bool = False) -> tuple[float, int, int]:
    """(seconds, bytes, lines) of the raw COPY of the same rows and columns, read with
    psycopg's ``Copy.read()``, or (``libpq_loop``) straight from libpq as the export does."""
    from billing.exports import DEFAULT_EXPORT_COLUMNS

    sql = (
        f"COPY (SELECT {', '.join(DEFAULT_EXPORT_COLUMNS)} FROM billing_cdr"
        " WHERE customer_id = %s AND setup_at >= %s AND setup_at < %s"
        " ORDER BY setup_at, id) TO STDOUT (FORMAT csv, HEADER)"
    )
    until = MONTH_START + dt.timedelta(days=30)
    started = time.perf_counter()
    size = lines = 0
    with pg.cursor() as cursor, cursor.copy(sql, [customer_id, MONTH_START, until]) as copy:  # type: ignore[attr-defined]
        if not libpq_loop:
            while data := copy.read():
                size += len(data)
                lines += 1
        else:
            import select

            from billing.exports import _finish_copy_out

            pgconn = pg.pgconn  # type: ignore[attr-defined]
            while True:
                nbytes, data = pgconn.get_copy_data(1)
                if nbytes > 0:
                    size += nbytes
                    lines += 1
                elif nbytes == 0:
                    select.select([pgconn.socket], [], [])
                    pgconn.consume_input()
                else:
                    break
            _finish_copy_out(pgconn)
    return time.perf_counter() - started, size, lines


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident set (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="CDRs exported (1,000,000)")
    parser.add_argument("--repeat", type=int, default=3, help="API and raw runs each (3)")
    args = parser.parse_args()

    database_url = os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL
    if not database_url.startswith(("postgres://", "postgresql://", "pgsql://")):
        print("DATABASE_URL must point at PostgreSQL", file=sys.stderr)
        return 2
    env = configure_environment(database_url)
    env["CDR_EXPORT_JOB_THRESHOLD_ROWS"] = str(max(args.rows, 1_000_000))
    os.environ["CDR_EXPORT_JOB_THRESHOLD_ROWS"] = env["CDR_EXPORT_JOB_THRESHOLD_ROWS"]
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))

    print("# bench/cdr_export.py: CSV export through the API vs a raw COPY TO STDOUT")
    print("# API: GET /api/v1/cdrs/export/?format=csv (16 default columns, one month), uvicorn")
    print("#      (1 process, loopback), one http.client connection reading to the end.")
    print("# raw: psycopg COPY (SELECT same columns, customer, period, order) TO STDOUT (CSV),")
    print("#      every byte read (Copy.read(); 'loop': straight from libpq); runs alternate;")
    print("#      ratio = raw median / API median.")
    print(f"# database: {database_url}")
    ensure_database(database_url)
    migrate(env)

    import django

    django.setup()
    import psycopg

    customer_id = fill(database_url, args.rows)
    key = issue_key(customer_id)
    from django.db import connections

    connections.close_all()

    port = free_port()
    server = start_server(env, port)
    api_runs: list[tuple[float, int, int]] = []
    raw_runs: list[tuple[float, int, int]] = []
    loop_runs: list[tuple[float, int, int]] = []
    web_cpu: list[float] = []
    try:
        rss_idle = peak_rss_mb(server.pid)
        with psycopg.connect(libpq_url(database_url), autocommit=True) as pg:
            for _ in range(args.repeat):
                cpu_before = cpu_seconds(server.pid)
                api_runs.append(api_export(port, key))
                web_cpu.append(cpu_seconds(server.pid) - cpu_before)
                raw_runs.append(raw_export(pg, customer_id))
                loop_runs.append(raw_export(pg, customer_id, libpq_loop=True))
        rss_peak = peak_rss_mb(server.pid)
    finally:
        stop_server(server)

    print()
    header = (
        "run",
        "API s",
        "web CPU",
        "API MB",
        "API rows",
        "raw s",
        "raw MB",
        "raw rows",
        "loop s",
    )
    print(f"{header[0]:<5}" + "".join(f"{h:>9}" for h in header[1:]))
    for n, (api, cpu, raw, loop) in enumerate(
        zip(api_runs, web_cpu, raw_runs, loop_runs, strict=True), start=1
    ):
        print(
            f"{n:<5}{api[0]:>9.2f}{cpu:>9.2f}{api[1] / 1e6:>9.1f}{api[2] - 1:>9}"
            f"{raw[0]:>9.2f}{raw[1] / 1e6:>9.1f}{raw[2] - 1:>9}{loop[0]:>9.2f}"
        )
    api_s = statistics.median(r[0] for r in api_runs)
    raw_s = statistics.median(r[0] for r in raw_runs)
    loop_s = statistics.median(r[0] for r in loop_runs)
    rows_ok = all(r[2] - 1 == args.rows for r in api_runs + raw_runs + loop_runs)
    print()
    print(
        f"rows per export: {args.rows} ({'all runs complete' if rows_ok else 'ROW COUNT MISMATCH'})"
    )
    print(
        f"API median {api_s:.2f} s ({args.rows / api_s:,.0f} rows/s); raw median {raw_s:.2f} s"
        f" ({args.rows / raw_s:,.0f} rows/s)"
    )
    print(
        f"web process peak RSS: {rss_idle:.1f} MB after start, {rss_peak:.1f} MB after the exports"
        f" (target < 150 MB)"
    )
    print(
        f"web process CPU per export: {statistics.median(web_cpu):.2f} s (median);"
        f" raw read straight from libpq (as the export does) median {loop_s:.2f} s"
    )
    print(f"cdr_export_peak_rss_mb={rss_peak:.1f}")
    print(f"cdr_export_ratio_vs_libpq_loop={loop_s / api_s:.2f}")
    print(f"cdr_export_ratio={raw_s / api_s:.2f}")
    return 0 if rows_ok else 1


if __name__ == "__main__":
    sys.exit(main())
