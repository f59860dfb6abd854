"""The CDR consumer's store step alone: CPU instructions a record, counted by callgrind.

A profiling aid for the ingest (bench/cdr_ingest.py is the throughput benchmark): on the shared
machine seconds and even CPU seconds move with the neighbours' load, the instructions a record
costs do not. What is counted is what a Celery worker does with the batches it read from the
stream: `billing.services.cdr_batches_ingest` (decode and validate every line, quarantine
checks, rating, COPY text, the COPY's client side, progress, commit), on ``--rows`` records of
bench/cdr_ingest.py's journal (250 lines a batch, 10 batches a transaction, as its workers
take them), after one warm-up transaction. The PostgreSQL server's work is not counted (another
process); building the batches is not either: collection runs only inside `operator.call`,
which nothing else in the run calls.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/<db> .venv/bin/python bench/cdr_store.py

The database is created and migrated if needed; its CDR rows are deleted before and after.
Needs valgrind.
"""

from __future__ import annotations

import argparse
import gc
import operator
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from cdr_ingest import NODE, bench_records  # noqa: E402  (bench/: the same records)

BATCH_LINES = 250
TRANSACTION_BATCHES = 10


def _batches(first: int, count: int) -> list[object]:
    from edge.runtime.cdr_shipper import ShipBatch

    batches = []
    offset = 0
    for start in range(first, first + count, BATCH_LINES):
        size = min(BATCH_LINES, first + count - start)
        lines = [record.to_json() + b"\n" for record in bench_records(start, size)]
        data = b"".join(lines)
        batches.append(ShipBatch(NODE, 1, offset, offset + len(data), data))
        offset += len(data)
    return batches


def _run(rows: int) -> None:
    """The callgrind child: store ``rows`` records inside operator.call."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()
    from django.db import connection

    from billing.services import cdr_batches_ingest
    from trunking.models import EdgeNode

    def empty() -> None:
        with connection.cursor() as cursor:
            cursor.execute("TRUNCATE billing_cdr, billing_cdringestprogress, billing_cdrquarantine")

    EdgeNode.objects.get_or_create(name=NODE, defaults={"control_url": "http://127.0.0.1:9"})
    empty()
    warm = _batches(0, BATCH_LINES * TRANSACTION_BATCHES)
    work = _batches(len(warm) * BATCH_LINES, rows)
    gc.disable()  # as the consumer stores (billing.cdr_stream._automatic_gc_paused)
    cdr_batches_ingest(batches=warm)  # the connection's first COPY into the partitioned table

    def store() -> None:
        for n in range(0, len(work), TRANSACTION_BATCHES):
            cdr_batches_ingest(batches=work[n : n + TRANSACTION_BATCHES])

    operator.call(store)
    empty()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--run", type=int, help=argparse.SUPPRESS)  # the callgrind child
    args = parser.parse_args()
    if args.run is not None:
        _run(args.run)
        return 0
    os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/trunkline_bench_cdr")
    from bench.cdr_ingest import _ensure_database

    _ensure_database(os.environ["DATABASE_URL"])
    subprocess.run(
        [sys.executable, str(REPO / "manage.py"), "migrate", "-v0"], check=True, cwd=REPO
    )
    with tempfile.TemporaryDirectory() as directory:
        out = Path(directory) / "callgrind.out"
        command = ["valgrind", "--tool=callgrind", "--toggle-collect=_operator_call*",
                   f"--callgrind-out-file={out}", sys.executable, __file__,
                   "--run", str(args.rows)]  # fmt: skip
        subprocess.run(command, check=True, capture_output=True, cwd=REPO)
        summary = subprocess.run(
            ["callgrind_annotate", str(out)], check=True, capture_output=True, text=True
        ).stdout
    line = next(line for line in summary.splitlines() if "PROGRAM TOTALS" in line)
    total = int(line.split()[0].replace(",", ""))
    print(f"CDR store step (worker side, {args.rows} records): {total / args.rows:,.0f} "
          f"instructions a record (callgrind)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
