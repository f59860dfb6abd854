"""CDR ingest through the real pipeline, as a ratio to a raw psycopg COPY of the same rows.

Journal files of ``--rows`` CDRs (default 1,000,000) are written first (not timed), as an edge
writes them. Then, timed:

1. **pipeline**: a `JournalShipper` (the edge's, with its Redis transport) ships the files to
   the stream of a Redis server started here; ``--workers`` real Celery workers (``--pool
   solo``, one of them with beat) consume it with `billing.cdr_stream` (XREADGROUP, decode and
   validate every line, quarantine checks, rating, COPY straight into the table in a savepoint
   (a re-sent batch would go through a temporary table and INSERT ... ON CONFLICT DO
   NOTHING), commit, committed marks, XACK). The clock stops when every row is committed
   (counted from `CdrIngestProgress`, which the ingest updates in the same transaction);
2. **raw COPY**, two ways: the table is emptied and the same rows (decoded and rated, not
   timed) are COPYed by psycopg straight into ``billing_cdr`` in one transaction, as the COPY
   text the pipeline sends (``copy.write``: the database's share of the work alone) and as
   Python values (``copy.write_row``). The faster of the two is the peer.

Between the two, unless ``--lag-seconds 0``: the shipping lag (call end -> row committed)
p50/p99 at ``--lag-rate`` (500) calls/s for ``--lag-seconds`` (20) through an edge: SIPp calls
through ``python -m edge`` (the compiled core if built and current; the run says which), whose
own shipper sends its journal to the stream, and the same workers consume (`_lag`).

All write into the same partitioned table with the same indexes. Printed: rows/s of each, the
time from the first ship to the last commit, the workers' CPU a row (less noisy than the
times), and last the line ``cdr_ingest_ratio=<x>``: the peer's seconds / pipeline seconds (1.0
means the pipeline costs nothing over COPY; target >= 0.5). The machine is shared and noisy:
compare ratios, not absolute figures.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/trunkline_bench_cdr \\
        .venv/bin/python bench/cdr_ingest.py [--rows N] [--workers N] [--lag-seconds S]

Needs redis-server and, for the lag, sipp (Debian sip-tester).

The database is created and migrated if needed; its CDR rows are deleted before and after.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edge.cdr import CallDetailRecord

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/trunkline_bench_cdr"
NODE = "bench-edge"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, default=2, help="Celery worker processes")
    parser.add_argument("--timeout", type=float, default=1800, help="give up after (s)")
    parser.add_argument(
        "--lag-seconds", type=float, default=20, help="shipping-lag phase at --lag-rate (0: skip)"
    )
    parser.add_argument("--lag-rate", type=float, default=500, help="calls per second")
    args = parser.parse_args()

    database_url = os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL
    work = Path(tempfile.mkdtemp(prefix="bench-cdr-ingest-"))
    from billing.tests.cdr_harness import RedisServer

    redis_server = RedisServer(work).start()
    env = dict(os.environ)
    env.update(
        DATABASE_URL=database_url,
        REDIS_URL=redis_server.url,
        CDR_STREAM_REDIS_URL=redis_server.url,
        SECRET_KEY="bench-cdr-ingest-not-a-secret",
        DEBUG="0",
        CELERY_TASK_ALWAYS_EAGER="0",
        CDR_CONSUME_INTERVAL="0.2",
        CDR_CONSUME_BUDGET="30",
        CDR_CONSUME_ENTRIES="10",  # ~2 MB a transaction: the workers share the stream evenly
        EDGE_RECONCILE_SECONDS="3600",
        LOG_LEVEL="WARNING",
    )
    os.environ.update(env)
    _ensure_database(database_url)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    workers: list[subprocess.Popen[bytes]] = []
    try:
        return _run(args, work, env, redis_server.url, workers)
    finally:
        for process in workers:
            try:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(20)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(process.pid, signal.SIGKILL)
        redis_server.stop()
        _empty()
        shutil.rmtree(work, ignore_errors=True)


def _ensure_database(url: str) -> None:
    import psycopg

    base, _, name = url.rpartition("/")
    with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
            conn.execute(f'CREATE DATABASE "{name}"')


def _empty() -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE billing_cdr, billing_cdringestprogress, billing_cdrquarantine")


def bench_records(first: int, count: int) -> Iterator[CallDetailRecord]:
    """The benchmark's records ``first`` to ``first + count - 1``: an answered call each, a
    millisecond apart, its id from its number. One object, changed and yielded again: use each
    (journal or encode it) before taking the next."""
    from edge.cdr import iso_utc
    from edge.tests.test_cdr import make_cdr

    template = make_cdr(edge=NODE, customer_id=None, trunk_id=None)
    base = time.time() - 3600
    for n in range(first, first + count):
        template.call_id = f"{n:032x}"
        setup = base + n * 0.001
        template.setup_at = iso_utc(setup)
        template.ringing_at = iso_utc(setup + 1.5)
        template.answer_at = iso_utc(setup + 4)
        template.end_at = iso_utc(setup + 65.2)
        yield template


def _write_journal(directory: Path, rows: int) -> None:
    from edge.runtime.journal import CdrJournal

    journal = CdrJournal(directory, node=NODE, batch_size=1000)
    for record in bench_records(0, rows):
        journal.append(record, now=0.0)
        if journal.pending >= 1000:
            journal.flush()
    journal.close()


def _run(
    args: argparse.Namespace,
    work: Path,
    env: dict[str, str],
    redis_url: str,
    workers: list[subprocess.Popen[bytes]],
) -> int:
    from billing.models import Cdr, CdrIngestProgress
    from edge.runtime.cdr_shipper import JournalShipper, RedisShipTransport, ShipperThread
    from trunking.models import EdgeNode

    _empty()
    EdgeNode.objects.get_or_create(name=NODE, defaults={"control_url": "http://127.0.0.1:9"})
    journal_dir = work / "journal"
    started = time.monotonic()
    _write_journal(journal_dir, args.rows)
    size = sum(p.stat().st_size for p in journal_dir.iterdir())
    print(f"journal: {args.rows} records, {size / 1e6:.0f} MB, written in "
          f"{time.monotonic() - started:.1f} s (not timed)", flush=True)  # fmt: skip

    for n in range(args.workers):
        beat = ["-B", "--schedule", str(work / "beat")] if n == 0 else []
        command = [sys.executable, "-m", "celery", "-A", "config", "worker", "--pool", "solo",
                   "--loglevel", "WARNING", "--hostname", f"bench{n}@%h", *beat]  # fmt: skip
        with open(work / f"w{n}.log", "wb") as log:
            workers.append(
                subprocess.Popen(
                    command,
                    cwd=REPO,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
    # Not timed: the workers start (Django, Celery) before the first batch is shipped.
    from config.celery import app as celery_app

    while len(celery_app.control.ping(timeout=1.0) or []) < args.workers:
        time.sleep(0.5)

    shipper = ShipperThread(
        JournalShipper(journal_dir, node=NODE, transport=RedisShipTransport(redis_url, node=NODE)),
        interval=0.05,
    )
    cpu_before = sum(_cpu_seconds(process.pid) for process in workers)
    started = time.monotonic()
    shipper.start()
    deadline = started + args.timeout
    committed = 0
    while committed < args.rows:
        if time.monotonic() > deadline:
            print(f"timed out: {committed} of {args.rows} committed", flush=True)
            return 1
        time.sleep(0.1)
        committed = sum(CdrIngestProgress.objects.values_list("committed", flat=True))
    pipeline_seconds = time.monotonic() - started
    shipper.stop()
    stored = Cdr.objects.count()
    assert stored == args.rows, f"{stored} rows stored, {args.rows} journalled"
    cpu = sum(_cpu_seconds(process.pid) for process in workers) - cpu_before
    print(
        f"pipeline (journal -> stream -> {args.workers} Celery workers -> COPY -> commit): "
        f"{pipeline_seconds:.2f} s, {args.rows / pipeline_seconds:,.0f} rows/s; the workers' "
        f"CPU {cpu:.1f} s, {cpu / args.rows * 1e6:.1f} us a row",
        flush=True,
    )

    if args.lag_seconds > 0:
        _lag(work / "lag", redis_url, args.lag_rate, args.lag_seconds, min(args.timeout, 120))
    text_seconds, row_seconds = _raw_copy(work, args.rows)
    for how, seconds in (("COPY text", text_seconds), ("write_row values", row_seconds)):
        print(f"raw psycopg COPY of the same rows into billing_cdr ({how}): {seconds:.2f} s, "
              f"{args.rows / seconds:,.0f} rows/s", flush=True)  # fmt: skip
    # The faster peer is the one to measure against.
    print(f"cdr_ingest_ratio={min(text_seconds, row_seconds) / pipeline_seconds:.3f}")
    return 0


def _cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process (a less noisy figure than wall time here)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _lag(work: Path, redis_url: str, rate: float, seconds: float, timeout: float) -> None:
    """Call end -> row committed, at ``rate`` calls/s through an edge: SIPp's built-in UAC
    (from the trunk's address) calls through ``python -m edge`` (its journal shipped to this
    run's Redis by its own shipper, as in production) to SIPp's built-in UAS; the Celery
    workers consume. Calls last no time (answer, then BYE), so a call ends about when it
    starts. A row counts as committed when a separate connection sees it: polled every
    ``LAG_POLL`` s, so each lag is overstated by up to that much (half of it on average)."""
    from django.db import connection

    from accounts.models import Customer
    from edge.tests import sipp_harness as h
    from edge.tests.factories import customer_doc, gateway_doc, snapshot_doc, trunk_doc
    from trunking.models import EdgeNode, Trunk

    _empty()
    node = "bench-lag"
    EdgeNode.objects.get_or_create(name=node, defaults={"control_url": "http://127.0.0.1:9"})
    customer, _ = Customer.objects.get_or_create(name="bench-lag")
    trunk, _ = Trunk.objects.get_or_create(customer=customer, name="bench-lag-pbx")
    work.mkdir(parents=True, exist_ok=True)
    calls = max(1, round(rate * seconds))
    uas = h.Sipp(
        work, "uas", builtin="uas", local_ip=h.CARRIER_IP, calls=None, recv_timeout_ms=None,
        trace_messages=False, trace_errors=False, wall_timeout=seconds + timeout,
    ).start().wait_listening()  # fmt: skip
    snapshot = snapshot_doc(
        customers=[customer_doc(id=customer.pk)],
        trunks=[
            trunk_doc(
                id=trunk.pk, customer=customer.pk, acl=[f"{h.PBX_IP}/32"],
                allowed_destinations=["+1"], caller_id_policy="pass_through",
                max_channels=100_000, max_cps=100_000, origination_uris=[],
            )
        ],
        numbers=[],
        gateways=[gateway_doc(id=1, host=h.CARRIER_IP, port=uas.local_port, prefixes=["+1"])],
    )  # fmt: skip
    edge = h.EdgeProcess(
        work, snapshot, node=node, drain_timeout=1,
        extra_args=["--redis-url", redis_url, "--log-level", "WARNING"],
    ).start()  # fmt: skip
    try:
        print(f"shipping lag: {calls} calls at {rate:.0f} calls/s through an edge "
              f"(core: {edge.health().get('core')})", flush=True)  # fmt: skip
        uac = h.Sipp(
            work, "uac", builtin="uac", local_ip=h.PBX_IP, remote=edge.sip_address, calls=calls,
            rate=rate, limit=max(100, round(rate)), duration_ms=0, service="14155550100",
            recv_timeout_ms=5_000, trace_messages=False, trace_errors=False,
            wall_timeout=seconds + 60,
        ).start()  # fmt: skip
        seen = _watch_commits(node, calls, seconds + timeout)
        result = uac.wait(timeout=60)
    finally:
        edge.stop(grace=5)
        uas.stop()
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT call_id, extract(epoch FROM end_at) FROM billing_cdr WHERE edge = %s", [node]
        )
        ends = dict(cursor.fetchall())
    lags = sorted(seen[call_id] - float(end) for call_id, end in ends.items() if call_id in seen)
    print(f"  SIPp: {result.successful} calls ok, {result.failed} failed; {len(ends)} CDRs "
          f"committed, {len(lags)} seen arrive", flush=True)  # fmt: skip
    if not lags:
        return
    p50, p99 = (lags[min(len(lags) - 1, int(q * len(lags)))] for q in (0.5, 0.99))
    print(f"shipping lag (call end -> row committed) at {rate:.0f} calls/s through an edge "
          f"for {seconds:.0f} s: p50 {p50:.2f} s, p99 {p99:.2f} s, max {lags[-1]:.2f} s",
          flush=True)  # fmt: skip


LAG_POLL = 0.02


def _watch_commits(node: str, calls: int, timeout: float) -> dict[str, float]:
    """The wall time at which each of ``node``'s first ``calls`` CDRs was seen committed."""
    import psycopg

    seen: dict[str, float] = {}
    last_id = 0
    deadline = time.monotonic() + timeout
    with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as conn:
        while len(seen) < calls and time.monotonic() < deadline:
            rows = conn.execute(
                "SELECT id, call_id FROM billing_cdr WHERE edge = %s AND id > %s",
                [node, last_id],
            ).fetchall()
            now = time.time()
            for row_id, call_id in rows:
                seen.setdefault(call_id, now)
                last_id = max(last_id, row_id)
            time.sleep(LAG_POLL)
    return seen


def _raw_copy(work: Path, rows: int) -> tuple[float, float]:
    """The peer, two ways: the same rows, decoded and rated beforehand (not timed), COPYed by
    psycopg straight into the table in one transaction, (1) as the COPY text the pipeline
    sends (`copy.write`: the database's share of the work alone) and (2) as Python values
    (`copy.write_row`, psycopg formatting each value, as the pipeline did before it wrote its
    own text). Their seconds."""
    from django.db import connection
    from psycopg.types.json import Jsonb

    from billing.selectors import RatingBook
    from billing.services import CDR_COLUMNS, COPY_COLUMNS, _column_values, _copy_line
    from edge.cdr import CallDetailRecord

    # The pipeline removed its files once committed: write the same records again.
    _write_journal(work / "again", rows)
    book = RatingBook()  # the same rows as the pipeline's, rating columns included
    records = []
    for path in sorted((work / "again").iterdir()):
        with path.open("rb") as file:
            records.extend(CallDetailRecord.from_json(line) for line in file)
    connection.ensure_connection()
    raw = connection.connection

    def timed_copy(
        columns: tuple[str, ...], write: Callable[[Any], None], items: list[Any]
    ) -> float:
        _empty()
        started = time.monotonic()
        with (
            raw.transaction(),
            raw.cursor() as cursor,
            cursor.copy(f"COPY billing_cdr ({', '.join(columns)}) FROM STDIN") as copy,
        ):
            for item in items:
                write(copy, item)
        return time.monotonic() - started

    chunks = [
        "".join(_copy_line(record, book)[0] for record in records[n : n + 1000])
        for n in range(0, len(records), 1000)
    ]
    text_seconds = timed_copy(COPY_COLUMNS, lambda copy, chunk: copy.write(chunk), chunks)
    del chunks
    values = []
    for record in records:
        row = _column_values(record, book)
        for column in ("routes", "codecs", "media"):
            if row[column] is not None:
                row[column] = Jsonb(row[column])
        values.append([row[column] for column in CDR_COLUMNS])
    del records
    row_seconds = timed_copy(CDR_COLUMNS, lambda copy, row: copy.write_row(row), values)
    return text_seconds, row_seconds


if __name__ == "__main__":
    sys.exit(main())
