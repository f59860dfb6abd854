"""CDR ingest through the real pipeline, as a ratio to a raw psycopg COPY of the same rows.

Journal files of ``--rows`` CDRs (default 1,000,000) are written first (not timed), as an edge
writes them. Then, timed:

1. **pipeline**: a `JournalShipper` (the edge's, with its Redis transport) ships the files to
   the stream of a Redis server started here; ``--workers`` real Celery workers (``--pool
   solo``, one of them with beat) consume it with `billing.cdr_stream` (XREADGROUP, decode,
   quarantine checks, COPY into a temporary table, INSERT ... ON CONFLICT DO NOTHING, commit,
   committed marks, XACK). The clock stops when every row is committed (counted from
   `CdrIngestProgress`, which the ingest updates in the same transaction);
2. **raw COPY**: the table is emptied and the same rows (decoded, rated and written as the
   COPY text the pipeline sends, not timed) are COPYed by psycopg straight into
   ``billing_cdr`` in one transaction: the database's share of the work alone.

Between the two, unless ``--lag-seconds 0``: the shipping lag (call end -> row committed)
p50/p99 at ``--lag-rate`` (500) CDRs/s for ``--lag-seconds`` (20), journalled as the edge
journals, shipped and consumed by the same path (a journal writer, not calls through an edge).

Both write into the same partitioned table with the same indexes. Printed: rows/s of each, the
time from the first ship to the last commit, and last the line ``cdr_ingest_ratio=<x>``: raw
COPY seconds / pipeline seconds (1.0 means the pipeline costs nothing over COPY; target >= 0.5).
The machine is shared and noisy: compare ratios, not absolute figures.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/trunkline_bench_cdr \\
        .venv/bin/python bench/cdr_ingest.py [--rows N] [--workers N]

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
from pathlib import Path

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
    parser.add_argument("--lag-rate", type=float, default=500, help="CDRs per second")
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


def _write_journal(directory: Path, rows: int) -> None:
    from edge.cdr import iso_utc
    from edge.runtime.journal import CdrJournal
    from edge.tests.test_cdr import make_cdr

    journal = CdrJournal(directory, node=NODE, batch_size=1000)
    template = make_cdr(edge=NODE, customer_id=None, trunk_id=None)
    base = time.time() - 3600
    for n in range(rows):
        template.call_id = f"{n:032x}"
        setup = base + n * 0.001
        template.setup_at = iso_utc(setup)
        template.ringing_at = iso_utc(setup + 1.5)
        template.answer_at = iso_utc(setup + 4)
        template.end_at = iso_utc(setup + 65.2)
        journal.append(template, now=0.0)
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
    print(
        f"pipeline (journal -> stream -> {args.workers} Celery workers -> COPY -> commit): "
        f"{pipeline_seconds:.2f} s, {args.rows / pipeline_seconds:,.0f} rows/s",
        flush=True,
    )

    if args.lag_seconds > 0:
        _lag(work / "lag", redis_url, args.lag_rate, args.lag_seconds, args.timeout)
    copy_seconds = _raw_copy(journal_dir, work, args.rows)
    print(f"raw psycopg COPY of the same rows into billing_cdr: {copy_seconds:.2f} s, "
          f"{args.rows / copy_seconds:,.0f} rows/s", flush=True)  # fmt: skip
    print(f"cdr_ingest_ratio={copy_seconds / pipeline_seconds:.3f}")
    return 0


def _lag(directory: Path, redis_url: str, rate: float, seconds: float, timeout: float) -> None:
    """Call end -> row committed, at ``rate`` CDRs/s: records are journalled as the edge does
    (batches of 64 or every 50 ms, fsynced) with their end time = now, shipped by the edge's
    shipper, consumed by the same workers. The commit time is the row's ``ingested_at``
    (the ingest transaction's start, so the lag is understated by that transaction's length)."""
    from django.db import connection

    from billing.models import CdrIngestProgress
    from edge.cdr import iso_utc
    from edge.runtime.cdr_shipper import JournalShipper, RedisShipTransport, ShipperThread
    from edge.runtime.journal import CdrJournal
    from edge.tests.test_cdr import make_cdr

    _empty()
    node = "bench-lag"
    from trunking.models import EdgeNode

    EdgeNode.objects.get_or_create(name=node, defaults={"control_url": "http://127.0.0.1:9"})
    journal = CdrJournal(directory, node=node)
    shipper = ShipperThread(
        JournalShipper(directory, node=node, transport=RedisShipTransport(redis_url, node=node))
    )
    shipper.start()
    total = int(rate * seconds)
    started = time.monotonic()
    for n in range(total):
        wall = time.time()
        journal.append(
            make_cdr(
                edge=node,
                customer_id=None,
                trunk_id=None,
                setup_at=iso_utc(wall - 70),
                ringing_at=iso_utc(wall - 68),
                answer_at=iso_utc(wall - 66),
                end_at=iso_utc(wall),
            ),
            now=time.monotonic(),
        )
        if journal.should_flush(time.monotonic()):
            journal.flush()
        delay = started + (n + 1) / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    journal.close()
    deadline = time.monotonic() + timeout
    while sum(CdrIngestProgress.objects.values_list("committed", flat=True)) < total:
        if time.monotonic() > deadline:
            print("lag phase timed out", flush=True)
            return
        time.sleep(0.2)
    shipper.stop()
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP"
            " (ORDER BY extract(epoch FROM ingested_at - end_at)) FROM billing_cdr"
        )
        p50, p99 = cursor.fetchone()[0]
    print(f"shipping lag (call end -> row committed) at {rate:.0f} CDRs/s for {seconds:.0f} s "
          f"(journal writer, not SIPp through an edge): p50 {p50:.2f} s, p99 {p99:.2f} s",
          flush=True)  # fmt: skip


def _raw_copy(journal_dir: Path, work: Path, rows: int) -> float:
    """The peer: the same rows, decoded, rated and written as COPY text beforehand (the very
    text the pipeline sends), COPYed by psycopg straight into the table in one transaction."""
    from django.db import connection

    from billing.selectors import RatingBook
    from billing.services import COPY_COLUMNS, _copy_line
    from edge.cdr import CallDetailRecord

    # The pipeline removed its files once committed: write the same records again.
    _write_journal(work / "again", rows)
    book = RatingBook()  # the same rows as the pipeline's, rating columns included
    chunks: list[str] = []
    lines: list[str] = []
    for path in sorted((work / "again").iterdir()):
        with path.open("rb") as file:
            for line in file:
                lines.append(_copy_line(CallDetailRecord.from_json(line), book)[0])
                if len(lines) == 1000:
                    chunks.append("".join(lines))
                    lines = []
    chunks.append("".join(lines))
    _empty()
    columns = ", ".join(COPY_COLUMNS)
    connection.ensure_connection()
    raw = connection.connection
    started = time.monotonic()
    with (
        raw.transaction(),
        raw.cursor() as cursor,
        cursor.copy(f"COPY billing_cdr ({columns}) FROM STDIN") as copy,
    ):
        for chunk in chunks:
            copy.write(chunk)
    return time.monotonic() - started


if __name__ == "__main__":
    sys.exit(main())
