"""Load CDR journal files into the CDR table: ``manage.py load_cdrs PATH [PATH ...]``.

Until the billing issue ships records through Redis, this is how the edges' journals reach the
database. A PATH is a journal file or a directory of them (``*.jsonl``). Records go in batches,
each in its own transaction, and loading is idempotent: a file loaded twice inserts nothing the
second time, so a crash mid-load is mended by running the command again.

Every bad line is reported as ``file:line: error`` and the command then exits non-zero, after
loading all the good lines. A torn last line is reported but is not an error: it is what a
crash in the middle of a write leaves behind (that record was never durably journalled), or a
line an edge is writing right now, which a later run will load.
"""

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from billing.services import cdrs_ingest
from edge.cdr import CallDetailRecord
from edge.runtime.journal import TornLineError, read_journal

DEFAULT_BATCH_SIZE = 5000


class Command(BaseCommand):
    help = "Load CDR journal files (or directories of *.jsonl) into the CDR table, idempotently."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("paths", nargs="+", type=Path, metavar="PATH")
        parser.add_argument(
            "--batch-size",
            type=int,
            default=DEFAULT_BATCH_SIZE,
            help=f"Records per transaction (default {DEFAULT_BATCH_SIZE}).",
        )

    def handle(self, *args: Any, paths: list[Path], batch_size: int, **options: Any) -> None:
        if batch_size < 1:
            raise CommandError("--batch-size must be positive.")
        files = _journal_files(paths)
        read = inserted = bad = torn = 0
        batch: list[CallDetailRecord] = []
        for path in files:
            for number, item in read_journal(path):
                if isinstance(item, CallDetailRecord):
                    read += 1
                    batch.append(item)
                    if len(batch) >= batch_size:
                        inserted += cdrs_ingest(records=batch)
                        batch = []
                    continue
                if isinstance(item, TornLineError):
                    torn += 1
                else:
                    bad += 1
                self.stderr.write(f"{path}:{number}: {item}")
        if batch:
            inserted += cdrs_ingest(records=batch)
        self.stdout.write(
            f"{len(files)} file(s), {read} record(s) read: {inserted} inserted, "
            f"{read - inserted} already present, {bad} bad line(s), {torn} torn last line(s)."
        )
        if bad:
            raise CommandError(f"{bad} bad line(s), listed above; every good line was loaded.")


def _journal_files(paths: list[Path]) -> list[Path]:
    files = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(path.glob("*.jsonl")))
        elif path.is_file():
            files.append(path)
        else:
            raise CommandError(f"{path}: no such file or directory.")
    return files
