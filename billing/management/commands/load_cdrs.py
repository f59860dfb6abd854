"""Load CDR journal files into the CDR table by hand: ``manage.py load_cdrs PATH [PATH ...]``.

Edges ship their journals on their own (docs/cdr-pipeline.md); this loads journal files an edge
could not ship (no Redis, shipping off, files copied off a dead node). A PATH is a journal file
(``cdr-<node>-<stamp>-<seq>.jsonl``, as the edge names them: the name says which edge wrote it)
or a directory of them. The files go through `billing.services.cdr_batches_ingest`, the stream
consumer's own ingest, in batches of whole lines, each in its own transaction, so a line is
treated here exactly as when the edge ships it:

- a record of a registered edge is stored and rated, once: loading a file twice, or a file the
  edge has shipped already, inserts nothing the second time, so a crash mid-load is mended by
  running the command again;
- a line that does not decode, a record of an edge that is not registered, or one naming
  another edge than the file's is held in the CDR quarantine (admin "CDR quarantine") with its
  reason and text, keyed by its place in the file as the consumer keys it: never dropped, never
  stopping the lines behind it, never held twice. Each is printed as ``file:line: reason:
  detail``, and the command then exits non-zero, after loading every good line;
- a record naming a customer or trunk deleted since is stored and noted there;
- a last line without its newline is a write cut short by a crash. In a node's newest file it
  may be a write in progress, so it is reported and left for a later run (as the edge's shipper
  leaves it); in an older file it is held in quarantine as a torn line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from billing.services import IngestReport, cdr_batches_ingest
from edge.runtime.cdr_shipper import ShipBatch
from edge.runtime.journal import journal_file_name, journal_files

DEFAULT_BATCH_BYTES = 4 * 1024 * 1024
SHOWN_PER_FILE = 20  # bad lines printed per file (the quarantine holds them all)


@dataclass
class _Totals:
    records: int = 0
    inserted: int = 0
    held: int = 0
    noted: int = 0
    waiting: int = 0

    def add(self, report: IngestReport) -> None:
        self.records += report.records
        self.inserted += report.inserted
        self.held += report.quarantined
        self.noted += report.noted


class Command(BaseCommand):
    help = (
        "Load CDR journal files (or directories of them) into the CDR table, idempotently; "
        "bad lines go to the CDR quarantine."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("paths", nargs="+", type=Path, metavar="PATH")
        parser.add_argument(
            "--batch-bytes",
            type=int,
            default=DEFAULT_BATCH_BYTES,
            help=f"Journal bytes per transaction (default {DEFAULT_BATCH_BYTES}; whole lines).",
        )

    def handle(self, *args: Any, paths: list[Path], batch_bytes: int, **options: Any) -> None:
        if batch_bytes < 1:
            raise CommandError("--batch-bytes must be positive.")
        files = _journal_files(paths)
        totals = _Totals()
        for path, node, seq in files:
            self._load(path, node, seq, batch_bytes, totals)
        self.stdout.write(
            f"{len(files)} file(s), {totals.records} record(s) read: {totals.inserted} "
            f"inserted, {totals.records - totals.inserted} already present, {totals.held} bad "
            f"line(s) held in quarantine, {totals.noted} noted (customer or trunk deleted), "
            f"{totals.waiting} torn last line(s) left for a later run."
        )
        if totals.held:
            raise CommandError(
                f"{totals.held} bad line(s), listed above, are held in the CDR quarantine "
                "(admin: CDR quarantine); every good line was loaded."
            )

    def _load(self, path: Path, node: str, seq: int, batch_bytes: int, totals: _Totals) -> None:
        newest = journal_files(path.parent, node=node)[-1].samefile(path)
        start = 0  # byte offset of the next line to ship, and its line number
        number = 1
        pending = b""
        shown = 0
        with path.open("rb") as file:
            while True:
                chunk = file.read(batch_bytes)
                data = pending + chunk
                if not data:
                    break
                cut = data.rfind(b"\n") + 1
                if chunk and not cut:
                    pending = data  # a line longer than a batch: read on to its newline
                    continue
                torn = not chunk  # the end of the file, without a newline: a torn last line
                if torn and newest:
                    totals.waiting += 1
                    self.stderr.write(
                        f"{path}:{number}: torn last line ({len(data)} bytes) in the node's "
                        "newest file: a write cut short or in progress, left for a later run"
                    )
                    break
                if torn:
                    cut = len(data)
                batch = ShipBatch(node, seq, start, start + cut, data[:cut], torn=torn)
                report = cdr_batches_ingest(batches=[batch])
                totals.add(report)
                for entry in report.held:
                    shown += 1
                    if shown <= SHOWN_PER_FILE:
                        offset = int(entry.source.rpartition("@")[2]) - start
                        line = number + batch.data.count(b"\n", 0, offset)
                        self.stderr.write(f"{path}:{line}: {entry.reason}: {entry.detail}")
                number += batch.data.count(b"\n")
                start += cut
                pending = data[cut:]
                if torn:
                    break
        if shown > SHOWN_PER_FILE:
            self.stderr.write(f"{path}: {shown - SHOWN_PER_FILE} more bad line(s) held")


def _journal_files(paths: list[Path]) -> list[tuple[Path, str, int]]:
    """The files to load, with the node and sequence number their names give; a directory's
    in the order the edge wrote them."""
    files = []
    for path in paths:
        if path.is_dir():
            found = []
            for candidate in path.glob("*.jsonl"):
                found.append((candidate, *_name(candidate)))
            files.extend(sorted(found, key=lambda file: (file[1], file[2])))
        elif path.is_file():
            files.append((path, *_name(path)))
        else:
            raise CommandError(f"{path}: no such file or directory.")
    return files


def _name(path: Path) -> tuple[str, int]:
    name = journal_file_name(path.name)
    if name is None:
        raise CommandError(
            f"{path}: not named as an edge names its journal files "
            "(cdr-<node>-<yyyymmddTHHMMSS>-<seq>.jsonl), which says which edge wrote it and "
            "where each line is; nothing was loaded."
        )
    return name
