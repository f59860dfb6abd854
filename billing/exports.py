"""CDR exports: CSV and JSON Lines, streamed in constant memory, and export jobs for large ones.

`export_chunks` turns a filtered `Cdr` queryset into the bytes of the file, a chunk of about
``CHUNK_BYTES`` at a time, never holding the result: on PostgreSQL the server writes the file
itself (``COPY (SELECT ...) TO STDOUT``, the rows formatted in SQL), elsewhere (SQLite, the
embedded default) rows come through a chunked ORM iterator and Python's csv/orjson. Both give
the same columns and values: times in ISO 8601 UTC (``2026-11-24T08:00:00.123Z``, the fraction of a
second without trailing zeros),
empty text as an empty CSV field, JSON columns (``routes``, ``codecs``) as JSON.

`streaming_response` serves those chunks; under ASGI (uvicorn) as an async iterator that pulls
each chunk in the request's thread (``sync_to_async``), because Django buffers a sync iterator
whole before sending it from an async server.

An export of more than ``CDR_EXPORT_JOB_THRESHOLD_ROWS`` rows runs as an `ExportJob`
(`cdr_export_job_create`, then the Celery task `billing.tasks.run_cdr_export`) that writes the
file under ``CDR_EXPORT_DIR``; `cdr_export_jobs_expire` deletes files past their age.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import secrets
import select
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import psycopg
from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.handlers.asgi import ASGIRequest
from django.db import connection, models, transaction
from django.http import HttpRequest, StreamingHttpResponse
from django.utils import timezone
from psycopg import pq

from accounts import audit
from accounts.choices import AuditAction
from core.tenancy import Caller

from .choices import ExportFormat, ExportStatus
from .filtersets import filter_cdrs
from .models import Cdr, ExportJob

logger = logging.getLogger(__name__)

# Bytes handed to the server per write: large enough that the per-chunk cost (a thread hop
# under ASGI, a send) vanishes, small enough to be nothing in the web process's memory.
CHUNK_BYTES = 256 * 1024
# Rows fetched per round trip where there is no COPY (SQLite).
ITERATOR_CHUNK_ROWS = 2000

CONTENT_TYPES = {
    ExportFormat.CSV: "text/csv; charset=utf-8",
    ExportFormat.JSONL: "application/jsonl",
}


def _kind(field: models.Field[Any, Any]) -> str:
    if isinstance(field, models.DateTimeField):
        return "time"
    if isinstance(field, models.JSONField):
        return "json"
    if isinstance(field, models.GenericIPAddressField):
        return "ip"
    if isinstance(field, models.CharField):
        return "text"
    return "number"


# Every column a caller may choose, by name (the model's column names), and how it is written.
EXPORT_COLUMNS: dict[str, str] = {
    field.attname: _kind(field) for field in Cdr._meta.concrete_fields
}
DEFAULT_EXPORT_COLUMNS = (
    "id",
    "setup_at",
    "answer_at",
    "end_at",
    "direction",
    "customer_id",
    "trunk_id",
    "caller_e164",
    "callee_e164",
    "final_code",
    "reason",
    "duration_ms",
    "billable_seconds",
    "hangup_side",
    "edge",
    "call_id",
)


def parse_columns(text: str | None) -> list[str]:
    """The columns named in ``text`` ("id,setup_at,..."), in order; the defaults if empty.

    ValueError naming the unknown ones.
    """
    if not text or not text.strip():
        return list(DEFAULT_EXPORT_COLUMNS)
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in EXPORT_COLUMNS]
    if unknown:
        raise ValueError(
            f"Unknown column(s): {', '.join(unknown)}. Known: {', '.join(EXPORT_COLUMNS)}."
        )
    if len(set(names)) != len(names):
        raise ValueError("A column is named twice.")
    return names


def iso_utc_text(value: datetime | None) -> str | None:
    """``2026-11-24T08:00:00.123Z``: UTC, the fraction of a second without trailing zeros (none
    for a whole second), exactly as the PostgreSQL export writes it."""
    if value is None:
        return None
    text = value.astimezone(UTC).replace(tzinfo=None).isoformat()
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text + "Z"


# --- the rows, as bytes --------------------------------------------------------------------


def export_chunks(
    queryset: models.QuerySet[Cdr],
    *,
    fmt: str,
    columns: list[str],
    on_progress: Callable[[int], None] | None = None,
    pg_connection: Any = None,
) -> Iterator[bytes]:
    """The export file of ``queryset`` (oldest call first), in chunks of about CHUNK_BYTES.

    ``on_progress(rows)`` is called with the number of rows written so far after each chunk.
    On PostgreSQL the COPY runs on ``pg_connection`` (a psycopg connection) if given, else on
    Django's connection, which is then busy until the iterator is exhausted or closed.
    """
    if connection.vendor == "postgresql":
        return _copy_chunks(queryset, fmt, columns, on_progress, pg_connection)
    return _python_chunks(queryset, fmt, columns, on_progress)


def _sql_expression(name: str, fmt: str) -> str:
    column = f't."{name}"'
    kind = EXPORT_COLUMNS[name]
    if kind == "time":
        # PostgreSQL's own timestamp text, made ISO 8601: twice as cheap as to_char(), which
        # cost the export a tenth of its speed (bench/cdr_export.py).
        value = f"""replace(({column} AT TIME ZONE 'UTC')::text, ' ', 'T') || 'Z'"""
    elif kind == "ip":
        value = f"host({column})"
    elif kind == "json":
        value = f"{column}::text" if fmt == ExportFormat.CSV else column
    elif kind == "text" and fmt == ExportFormat.CSV:
        value = f"NULLIF({column}, '')"  # written unquoted, like a missing value
    else:
        value = column
    return f'{value} AS "{name}"'


def copy_statement(
    queryset: models.QuerySet[Cdr], fmt: str, columns: list[str]
) -> tuple[str, tuple[Any, ...]]:
    """The ``COPY (SELECT ...) TO STDOUT`` of the export and its parameters (PostgreSQL)."""
    needed = list(dict.fromkeys([*columns, "setup_at", "id"]))
    inner, params = queryset.order_by().values(*needed).query.sql_with_params()
    select = (
        f"SELECT {', '.join(_sql_expression(name, fmt) for name in columns)} "
        f'FROM ({inner}) AS t ORDER BY t."setup_at", t."id"'
    )
    if fmt == ExportFormat.CSV:
        return f"COPY ({select}) TO STDOUT WITH (FORMAT csv, HEADER)", params
    # One JSON object per row. CSV mode with control characters as delimiter and quote (JSON
    # escapes every control character, so neither can occur) writes each object verbatim,
    # where text mode would double its backslashes.
    return (
        f"COPY (SELECT row_to_json(r) FROM ({select}) AS r) TO STDOUT "
        f"WITH (FORMAT csv, DELIMITER E'\\x01', QUOTE E'\\x02')",
        params,
    )


def _copy_chunks(
    queryset: models.QuerySet[Cdr],
    fmt: str,
    columns: list[str],
    on_progress: Callable[[int], None] | None,
    pg_connection: Any,
) -> Iterator[bytes]:
    sql, params = copy_statement(queryset, fmt, columns)
    if pg_connection is None:
        connection.ensure_connection()
        pg_connection = connection.connection
    rows = -1 if fmt == ExportFormat.CSV else 0  # the header is a message too
    # Closed early (the client went away), psycopg ends the COPY and the connection stays usable.
    with pg_connection.cursor() as cursor, cursor.copy(sql, params):
        # psycopg's Copy.read() runs a generator and a wait per row: a million-row export
        # spent most of its web-process CPU there. This loop takes every row libpq has
        # buffered and waits on the socket (select, which releases the GIL) only when there is
        # none. Left early (the client went away), psycopg's Copy cancels the COPY and drains it.
        pgconn = pg_connection.pgconn
        get_copy_data = pgconn.get_copy_data
        fileno = pgconn.socket
        parts: list[Any] = []
        size = 0
        while True:
            nbytes, data = get_copy_data(1)
            if nbytes > 0:
                parts.append(data)
                size += nbytes
                if size >= CHUNK_BYTES:
                    rows += len(parts)
                    yield b"".join(parts)
                    parts = []
                    size = 0
                    if on_progress is not None:
                        on_progress(rows)
            elif nbytes == 0:  # nothing buffered: wait for the server
                select.select([fileno], [], [])
                pgconn.consume_input()
            elif nbytes == -1:  # the end of the data
                break
            else:
                raise psycopg.OperationalError(pgconn.error_message.decode(errors="replace"))
        _finish_copy_out(pgconn)
        rows += len(parts)
        if parts:
            yield b"".join(parts)
    if on_progress is not None:
        on_progress(max(rows, 0))


def _finish_copy_out(pgconn: Any) -> None:
    """Read the final result of a COPY TO whose data has all been read; raise if it failed."""
    while True:
        while pgconn.is_busy():
            select.select([pgconn.socket], [], [])
            pgconn.consume_input()
        result = pgconn.get_result()
        if result is None:
            return
        if result.status != pq.ExecStatus.COMMAND_OK:
            raise psycopg.DatabaseError(result.error_message.decode(errors="replace"))


def _python_chunks(
    queryset: models.QuerySet[Cdr],
    fmt: str,
    columns: list[str],
    on_progress: Callable[[int], None] | None,
) -> Iterator[bytes]:
    kinds = [EXPORT_COLUMNS[name] for name in columns]
    rows_iter = (
        queryset.order_by("setup_at", "id")
        .values_list(*columns)
        .iterator(chunk_size=ITERATOR_CHUNK_ROWS)
    )
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n") if fmt == ExportFormat.CSV else None
    if writer is not None:
        writer.writerow(columns)
    rows = 0
    for row in rows_iter:
        if writer is not None:
            writer.writerow(
                [_csv_value(value, kind) for value, kind in zip(row, kinds, strict=True)]
            )
        else:
            record = {
                name: iso_utc_text(value) if kind == "time" else value
                for name, kind, value in zip(columns, kinds, row, strict=True)
            }
            buffer.write(orjson.dumps(record).decode())
            buffer.write("\n")
        rows += 1
        if buffer.tell() >= CHUNK_BYTES:
            yield buffer.getvalue().encode()
            buffer.seek(0)
            buffer.truncate()
            if on_progress is not None:
                on_progress(rows)
    if buffer.tell():
        yield buffer.getvalue().encode()
    if on_progress is not None:
        on_progress(rows)


def _csv_value(value: Any, kind: str) -> Any:
    if value is None:
        return ""
    if kind == "time":
        return iso_utc_text(value)
    if kind == "json":
        return orjson.dumps(value).decode()
    return value


# --- HTTP ----------------------------------------------------------------------------------


async def _async_chunks(chunks: Iterator[bytes]) -> AsyncIterator[bytes]:
    """``chunks`` pulled one at a time in the request's sync thread (where its database
    connection lives), so an ASGI server sends each as it comes."""
    pull = sync_to_async(next, thread_sensitive=True)
    try:
        while (chunk := await pull(chunks, None)) is not None:
            yield chunk
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            await sync_to_async(close, thread_sensitive=True)()


def streaming_response(
    request: HttpRequest, chunks: Iterator[bytes], *, content_type: str, filename: str
) -> StreamingHttpResponse:
    """A download of ``chunks``: an async iterator under ASGI, the plain one under WSGI."""
    content: Iterator[bytes] | AsyncIterator[bytes] = (
        _async_chunks(chunks) if isinstance(request, ASGIRequest) else chunks
    )
    response = StreamingHttpResponse(content, content_type=content_type)
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    response["X-Content-Type-Options"] = "nosniff"
    return response


def export_filename(fmt: str, *, stem: str = "cdrs") -> str:
    return f"{stem}-{timezone.now():%Y%m%dT%H%M%SZ}.{fmt}"


def export_response(
    request: HttpRequest, queryset: models.QuerySet[Cdr], *, fmt: str, columns: list[str]
) -> StreamingHttpResponse:
    """The export of ``queryset`` as a streamed download."""
    return streaming_response(
        request,
        export_chunks(queryset, fmt=fmt, columns=columns),
        content_type=CONTENT_TYPES[ExportFormat(fmt)],
        filename=export_filename(fmt),
    )


def file_chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as handle:
        while block := handle.read(CHUNK_BYTES):
            yield block


# --- export jobs ---------------------------------------------------------------------------


def cdrs_for_tenant(customer_id: int | None) -> models.QuerySet[Cdr]:
    """Every CDR a job of this tenant may read (staff jobs: all)."""
    queryset = Cdr.objects.all()
    return queryset if customer_id is None else queryset.filter(customer_id=customer_id)


def export_too_large_message(rows: int) -> str:
    limit = settings.CDR_EXPORT_JOB_THRESHOLD_ROWS
    return (
        f"{rows:,} rows match; a streamed export stops at {limit:,}. Run it as a job: POST the "
        "same parameters to /api/v1/cdr-exports/ (in the admin, the export page does it)."
    )


@transaction.atomic
def cdr_export_job_create(
    *,
    actor: Caller,
    fmt: str,
    columns: list[str],
    filters: Mapping[str, Any],
    require_period: bool = True,
) -> ExportJob:
    """Queue an export of the CDRs ``filters`` select within the actor's tenant.

    ValidationError (naming the fields) if the filters are bad; nothing is stored then. The
    API requires a period; the admin's export may go without (its list has none either).
    """
    plain = {str(k): str(v) for k, v in filters.items() if v not in (None, "")}
    customer = None if actor.is_staff else actor.customer
    queryset = filter_cdrs(
        cdrs_for_tenant(customer.pk if customer else None), plain, require_period=require_period
    )
    job = ExportJob.objects.create(
        customer=customer,
        created_by=actor.user if actor.user is not None and actor.user.pk else None,
        api_key=actor.api_key,
        format=ExportFormat(fmt),
        columns=columns,
        filters=plain,
        rows_total=queryset.count(),
    )
    audit.record(actor=actor, obj=job, action=AuditAction.CREATE)
    from .tasks import run_cdr_export

    transaction.on_commit(lambda: run_cdr_export.delay(job.pk))
    return job


def export_dir() -> Path:
    path = Path(settings.CDR_EXPORT_DIR)
    path.mkdir(parents=True, exist_ok=True)
    return path


def cdr_export_job_run(*, job_id: int) -> ExportJob | None:
    """Write the job's file, recording progress as it goes. None if the job is not runnable.

    A job redelivered after its worker died (acks_late) is run again from the start.
    """
    now = timezone.now()
    claimed = ExportJob.objects.filter(
        pk=job_id, status__in=[ExportStatus.QUEUED, ExportStatus.RUNNING]
    ).update(status=ExportStatus.RUNNING, started_at=now, rows_written=0)
    if not claimed:
        return None
    job = ExportJob.objects.get(pk=job_id)
    name = f"cdr-export-{job.pk}-{secrets.token_hex(8)}.{job.format}"
    final = export_dir() / name
    partial = final.with_suffix(final.suffix + ".part")
    last_report = time.monotonic()

    def report(rows: int) -> None:
        nonlocal last_report
        if time.monotonic() - last_report >= settings.CDR_EXPORT_PROGRESS_SECONDS:
            last_report = time.monotonic()
            ExportJob.objects.filter(pk=job.pk).update(rows_written=rows)

    rows_done = 0

    def count(rows: int) -> None:
        nonlocal rows_done
        rows_done = rows
        report(rows)

    pg = None
    try:
        # The filters were checked when the job was created, the period's presence included.
        queryset = filter_cdrs(cdrs_for_tenant(job.customer_id), job.filters, require_period=False)
        if connection.vendor == "postgresql":
            # The COPY gets a connection of its own: progress is written on Django's meanwhile.
            pg = connection.get_new_connection(connection.get_connection_params())
            pg.autocommit = True
        with partial.open("wb") as handle:
            for chunk in export_chunks(
                queryset,
                fmt=job.format,
                columns=list(job.columns),
                on_progress=count,
                pg_connection=pg,
            ):
                handle.write(chunk)
            handle.flush()
            os.fsync(handle.fileno())
        partial.rename(final)
    except Exception as exc:
        partial.unlink(missing_ok=True)
        logger.exception("CDR export %s failed", job.pk)
        ExportJob.objects.filter(pk=job.pk).update(
            status=ExportStatus.FAILED, error=str(exc)[:2000], finished_at=timezone.now()
        )
        job.refresh_from_db()
        return job
    finally:
        if pg is not None:
            pg.close()
    finished = timezone.now()
    ExportJob.objects.filter(pk=job.pk).update(
        status=ExportStatus.DONE,
        rows_written=rows_done,
        file_name=name,
        size_bytes=final.stat().st_size,
        finished_at=finished,
        expires_at=finished + timedelta(hours=settings.CDR_EXPORT_FILE_TTL_HOURS),
    )
    job.refresh_from_db()
    return job


def export_job_path(job: ExportJob) -> Path | None:
    """The finished file of ``job``, or None if there is none (not done, expired, deleted)."""
    if job.status != ExportStatus.DONE or not job.file_name:
        return None
    path = Path(settings.CDR_EXPORT_DIR) / job.file_name
    return path if path.is_file() else None


def cdr_export_jobs_expire(*, now: datetime | None = None) -> int:
    """Delete the files of jobs past their expiry; the number expired. Rows stay, as a record."""
    now = now or timezone.now()
    expired = 0
    for job in ExportJob.objects.filter(status=ExportStatus.DONE, expires_at__lte=now):
        if job.file_name:
            (Path(settings.CDR_EXPORT_DIR) / job.file_name).unlink(missing_ok=True)
        ExportJob.objects.filter(pk=job.pk, status=ExportStatus.DONE).update(
            status=ExportStatus.EXPIRED, file_name=""
        )
        expired += 1
    return expired
