"""CDR exports: CSV and JSON Lines streamed through the API (WSGI and ASGI), export jobs with
their progress, download and expiry, and who may do what.

On PostgreSQL (DATABASE_URL) the file is written by ``COPY ... TO STDOUT``; on SQLite by the
chunked ORM iterator: the same assertions hold for both.
"""

import csv
import io
from datetime import timedelta

import orjson
import pytest
from asgiref.sync import async_to_sync
from django.db import connection
from django.test import AsyncClient

from billing import exports
from billing.choices import ExportStatus
from billing.models import ExportJob
from billing.services import cdrs_ingest
from billing.tests.conftest import DAY, READERS
from edge.cdr import iso_utc
from edge.tests.test_cdr import SETUP, make_cdr

pytestmark = pytest.mark.django_db


def _csv(response) -> list[dict[str, str]]:
    assert response.status_code == 200, response.content
    assert response.streaming
    return list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))


def _jsonl(response) -> list[dict]:
    assert response.status_code == 200, response.content
    body = b"".join(response.streaming_content)
    assert body.endswith(b"\n")
    return [orjson.loads(line) for line in body.splitlines()]


def test_csv_export_default_columns(reader_as, calls, customer, trunk):
    response = reader_as("owner").get(f"/api/v1/cdrs/export/?{DAY}&format=csv")
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"].startswith('attachment; filename="cdrs-')
    rows = _csv(response)
    assert list(rows[0]) == list(exports.DEFAULT_EXPORT_COLUMNS)
    # Oldest first; times ISO 8601 UTC with milliseconds; missing values empty.
    assert [row["id"] for row in rows] == [
        str(calls.answered.pk),
        str(calls.busy.pk),
        str(calls.refused.pk),
    ]
    assert rows[0] | {"call_id": ""} == {
        "id": str(calls.answered.pk),
        "setup_at": "2026-11-29T08:00:00.123Z",
        "answer_at": "2026-11-29T08:00:04.123Z",
        "end_at": "2026-11-29T08:01:05.323Z",
        "direction": "outbound",
        "customer_id": str(customer.pk),
        "trunk_id": str(trunk.pk),
        "caller_e164": "+14155550100",
        "callee_e164": "+442079460000",
        "final_code": "200",
        "reason": "normal_clearing",
        "duration_ms": "61200",
        "billable_seconds": "62",
        "hangup_side": "caller",
        "edge": "edge-1",
        "call_id": "",
    }
    assert rows[0]["call_id"] == calls.answered.call_id
    assert (rows[2]["answer_at"], rows[2]["hangup_side"]) == ("", "")


def test_csv_export_chosen_columns(reader_as, calls):
    columns = "setup_at,routes,source_ip,codecs,b_call_id,ringing_at"
    rows = _csv(reader_as("owner").get(f"/api/v1/cdrs/export/?{DAY}&columns={columns}"))
    assert list(rows[0]) == columns.split(",")
    assert orjson.loads(rows[0]["routes"]) == calls.answered.routes
    assert orjson.loads(rows[0]["codecs"]) == ["PCMU", "PCMA"]
    assert rows[0]["source_ip"] == "192.0.2.10"
    assert rows[0]["ringing_at"] == "2026-11-29T08:00:01.623Z"
    assert (rows[2]["b_call_id"], rows[2]["ringing_at"], rows[2]["routes"]) == ("", "", "[]")


def test_jsonl_export(reader_as, calls):
    columns = "id,setup_at,answer_at,routes,caller_e164,final_code,hangup_side"
    response = reader_as("owner").get(f"/api/v1/cdrs/export/?{DAY}&format=jsonl&columns={columns}")
    assert response["Content-Type"] == "application/jsonl"
    records = _jsonl(response)
    assert [list(r) for r in records] == [columns.split(",")] * 3
    assert records[0] == {
        "id": calls.answered.pk,
        "setup_at": "2026-11-29T08:00:00.123Z",
        "answer_at": "2026-11-29T08:00:04.123Z",
        "routes": calls.answered.routes,
        "caller_e164": "+14155550100",
        "final_code": 200,
        "hangup_side": "caller",
    }
    assert records[1]["answer_at"] is None
    assert records[2]["hangup_side"] == ""


def test_times_keep_their_fraction_without_trailing_zeros(reader_as, customer, trunk):
    whole = 1_795_939_260.0  # 2026-11-29T08:01:00Z
    cdrs_ingest(
        records=[
            make_cdr(
                customer_id=customer.pk,
                trunk_id=trunk.pk,
                setup_at=iso_utc(whole),
                ringing_at=iso_utc(whole + 0.1),
                answer_at=iso_utc(whole + 2.05),
                end_at=iso_utc(whole + 9),
            )
        ]
    )
    expected = {
        "setup_at": "2026-11-29T08:01:00Z",
        "ringing_at": "2026-11-29T08:01:00.1Z",
        "answer_at": "2026-11-29T08:01:02.05Z",
        "end_at": "2026-11-29T08:01:09Z",
    }
    query = f"{DAY}&columns={','.join(expected)}"
    assert _csv(reader_as("owner").get(f"/api/v1/cdrs/export/?{query}")) == [expected]
    assert _jsonl(reader_as("owner").get(f"/api/v1/cdrs/export/?{query}&format=jsonl")) == [
        expected
    ]


def test_export_takes_the_list_filters(reader_as, calls):
    rows = _csv(reader_as("owner").get(f"/api/v1/cdrs/export/?{DAY}&final_code=4xx&columns=id"))
    assert rows == [{"id": str(calls.busy.pk)}]


def test_text_that_needs_quoting_survives(reader_as, customer, trunk):
    odd = 'Bob, "the builder"\\n\n\t\x01é'
    cdrs_ingest(records=[make_cdr(customer_id=customer.pk, trunk_id=trunk.pk, caller_raw=odd)])
    rows = _csv(reader_as("owner").get(f"/api/v1/cdrs/export/?{DAY}&columns=caller_raw"))
    assert rows == [{"caller_raw": odd}]
    records = _jsonl(
        reader_as("owner").get(f"/api/v1/cdrs/export/?{DAY}&format=jsonl&columns=caller_raw")
    )
    assert records == [{"caller_raw": odd}]


@pytest.mark.parametrize("who", [*READERS, "other_customer", "staff", "anonymous"])
def test_export_access(who, reader_as, calls):
    response = reader_as(who).get(f"/api/v1/cdrs/export/?{DAY}&columns=id")
    if who == "anonymous":
        assert response.status_code == 401
        return
    ids = {int(row["id"]) for row in _csv(response)}
    expected = {
        "other_customer": {calls.theirs.pk},
        "staff": calls.mine_in_day | {calls.theirs.pk},
    }.get(who, calls.mine_in_day)
    assert ids == expected


@pytest.mark.parametrize(
    "query, field",
    [
        ("format=xlsx", "format"),
        ("columns=id,password", "columns"),
        ("columns=id,id", "columns"),
        ("number=nope", "number"),
    ],
)
def test_bad_export_parameters_are_400_in_json(query, field, reader_as, calls):
    response = reader_as("owner").get(f"/api/v1/cdrs/export/?{DAY}&{query}")
    assert response.status_code == 400
    assert response["Content-Type"] == "application/json"
    assert field in response.json()


def test_export_above_the_threshold_points_to_a_job(reader_as, calls, settings):
    settings.CDR_EXPORT_JOB_THRESHOLD_ROWS = 2
    response = reader_as("owner").get(f"/api/v1/cdrs/export/?{DAY}")
    assert response.status_code == 400
    assert "/api/v1/cdr-exports/" in response.json()["export"][0]
    assert (
        reader_as("owner").get(f"/api/v1/cdrs/export/?{DAY}&direction=inbound").status_code == 200
    )


@pytest.fixture
def many_calls(customer, trunk):
    records = [
        make_cdr(customer_id=customer.pk, trunk_id=trunk.pk, setup_at=iso_utc(SETUP + i / 10))
        for i in range(600)
    ]
    cdrs_ingest(records=records)
    return len(records)


def test_export_streams_in_bounded_chunks(reader_as, many_calls, monkeypatch):
    monkeypatch.setattr(exports, "CHUNK_BYTES", 4096)
    response = reader_as("owner").get(f"/api/v1/cdrs/export/?{DAY}")
    chunks = list(response.streaming_content)
    longest_row = max(len(line) for line in b"".join(chunks).splitlines()) + 1
    assert len(chunks) > 10
    assert all(len(chunk) < 4096 + longest_row for chunk in chunks)
    assert sum(chunk.count(b"\n") for chunk in chunks) == many_calls + 1


@pytest.mark.django_db(transaction=True)  # the view runs in another thread, on its connection
def test_export_under_asgi_is_an_async_stream(customer, many_calls, monkeypatch, reader_as):
    """Under an ASGI server the body is an async iterator (Django would otherwise read a sync
    one whole into memory before sending it), and the same bytes as under WSGI."""
    monkeypatch.setattr(exports, "CHUNK_BYTES", 4096)
    from accounts import services as account_services
    from core.tenancy import SYSTEM

    secret = account_services.api_key_create(actor=SYSTEM, customer=customer, name="asgi").secret
    url = f"/api/v1/cdrs/export/?{DAY}&format=jsonl"
    expected = b"".join(reader_as("owner").get(url).streaming_content)

    async def fetch() -> tuple[bool, list[bytes]]:
        response = await AsyncClient().get(url, headers={"Authorization": f"Api-Key {secret}"})
        assert response.status_code == 200, response.content
        return response.is_async, [chunk async for chunk in response.streaming_content]

    is_async, chunks = async_to_sync(fetch)()
    assert is_async
    assert len(chunks) > 10
    assert b"".join(chunks) == expected


@pytest.mark.django_db(transaction=True)  # as served: autocommit, request_finished signalled
def test_abandoned_stream_leaves_the_connection_usable(reader_as, many_calls, monkeypatch):
    monkeypatch.setattr(exports, "CHUNK_BYTES", 1024)
    response = reader_as("owner").get(f"/api/v1/cdrs/export/?{DAY}")
    iterator = iter(response.streaming_content)
    next(iterator)
    response.close()  # what the server does when the client goes away
    assert reader_as("owner").get(f"/api/v1/cdrs/?{DAY}&page_size=1").status_code == 200
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        assert cursor.fetchone() == (1,)


# --- export jobs -------------------------------------------------------------------------------


JOB_BODY = {
    "since": "2026-11-29T00:00:00Z",
    "until": "2026-11-30T00:00:00Z",
    "format": "csv",
    "columns": "id,setup_at,reason",
}


@pytest.mark.django_db(transaction=True)
def test_job_runs_and_its_file_matches_the_streamed_export(reader_as, calls, job_env):
    client = reader_as("billing")
    created = client.post("/api/v1/cdr-exports/", JOB_BODY)
    assert created.status_code == 201, created.content
    job_id = created.json()["id"]
    body = client.get(f"/api/v1/cdr-exports/{job_id}/").json()
    assert body["status"] == "done", body
    assert (body["rows_total"], body["rows_written"], body["progress"]) == (3, 3, 1.0)
    assert body["filters"] == {"since": JOB_BODY["since"], "until": JOB_BODY["until"]}
    assert body["download_url"].endswith(f"/api/v1/cdr-exports/{job_id}/download/")
    download = client.get(f"/api/v1/cdr-exports/{job_id}/download/")
    assert download.status_code == 200
    assert download["Content-Disposition"] == f'attachment; filename="cdr-export-{job_id}.csv"'
    streamed = client.get(f"/api/v1/cdrs/export/?{DAY}&columns=id,setup_at,reason")
    assert b"".join(download.streaming_content) == b"".join(streamed.streaming_content)
    assert [p.name for p in job_env.iterdir()] == [ExportJob.objects.get().file_name]


@pytest.mark.django_db(transaction=True)
def test_job_access(reader_as, calls, job_env):
    job_id = reader_as("owner").post("/api/v1/cdr-exports/", JOB_BODY).json()["id"]
    theirs = reader_as("other_customer").post("/api/v1/cdr-exports/", JOB_BODY).json()
    assert theirs["rows_total"] == 1  # their calls only
    for who, status in [
        ("owner", 200),
        ("read_only", 200),
        ("billing", 200),
        ("other_customer", 404),
        ("staff", 200),
        ("anonymous", 401),
    ]:
        client = reader_as(who)
        assert client.get(f"/api/v1/cdr-exports/{job_id}/").status_code == status, who
        assert client.get(f"/api/v1/cdr-exports/{job_id}/download/").status_code == status, who
        listed = client.get("/api/v1/cdr-exports/")
        if status != 401:
            ids = {row["id"] for row in listed.json()["results"]}
            assert (job_id in ids) == (status == 200), who
    for who in ("read_only", "billing"):  # starting an export is a read
        assert reader_as(who).post("/api/v1/cdr-exports/", JOB_BODY).status_code == 201
    assert reader_as("anonymous").post("/api/v1/cdr-exports/", JOB_BODY).status_code == 401
    for method in ("put", "patch", "delete"):
        response = getattr(reader_as("owner"), method)(f"/api/v1/cdr-exports/{job_id}/", {})
        assert response.status_code == 405


@pytest.mark.parametrize(
    "change, field",
    [
        ({"since": None}, "since"),
        ({"until": "2027-06-01T00:00:00Z"}, "until"),
        ({"format": "xml"}, "format"),
        ({"columns": "id,nope"}, "columns"),
        ({"number": "12"}, "number"),
    ],
)
def test_bad_job_requests_store_nothing(change, field, reader_as, calls, job_env):
    body = {k: v for k, v in (JOB_BODY | change).items() if v is not None}
    response = reader_as("owner").post("/api/v1/cdr-exports/", body)
    assert response.status_code == 400
    assert field in response.json()
    assert not ExportJob.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_job_progress_moves(reader_as, many_calls, job_env, monkeypatch, settings):
    """The job records its progress while it writes, so a browser polling it sees it move."""
    monkeypatch.setattr(exports, "CHUNK_BYTES", 2048)
    settings.CDR_EXPORT_PROGRESS_SECONDS = 0.0
    written: list[int] = []

    def spy(execute, sql, params, many, context):
        if sql.startswith('UPDATE "billing_exportjob" SET "rows_written"'):
            written.append(params[0])
        return execute(sql, params, many, context)

    with connection.execute_wrapper(spy):
        job_id = reader_as("owner").post("/api/v1/cdr-exports/", JOB_BODY).json()["id"]
    job = ExportJob.objects.get(pk=job_id)
    assert job.status == ExportStatus.DONE and job.rows_written == many_calls
    partial = [n for n in written if 0 < n < many_calls]
    assert len(partial) > 5
    assert partial == sorted(partial)


@pytest.mark.django_db(transaction=True)
def test_failed_job_says_why_and_leaves_no_file(reader_as, calls, job_env, monkeypatch):
    def broken(*args, **kwargs):
        yield b"id\n"
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(exports, "export_chunks", broken)
    job_id = reader_as("owner").post("/api/v1/cdr-exports/", JOB_BODY).json()["id"]
    body = reader_as("owner").get(f"/api/v1/cdr-exports/{job_id}/").json()
    assert (body["status"], body["error"], body["download_url"]) == ("failed", "disk on fire", None)
    assert list(job_env.iterdir()) == []
    assert reader_as("owner").get(f"/api/v1/cdr-exports/{job_id}/download/").status_code == 409


@pytest.mark.django_db(transaction=True)
def test_files_expire(reader_as, calls, job_env, settings):
    from billing.tasks import expire_cdr_exports

    settings.CDR_EXPORT_FILE_TTL_HOURS = 2
    job_id = reader_as("owner").post("/api/v1/cdr-exports/", JOB_BODY).json()["id"]
    job = ExportJob.objects.get(pk=job_id)
    assert timedelta(hours=2) - (job.expires_at - job.finished_at) < timedelta(seconds=1)
    assert expire_cdr_exports() == 0  # not yet
    assert exports.cdr_export_jobs_expire(now=job.expires_at - timedelta(seconds=1)) == 0
    assert len(list(job_env.iterdir())) == 1
    assert exports.cdr_export_jobs_expire(now=job.expires_at) == 1
    assert list(job_env.iterdir()) == []
    body = reader_as("owner").get(f"/api/v1/cdr-exports/{job_id}/").json()
    assert (body["status"], body["download_url"]) == ("expired", None)
    assert reader_as("owner").get(f"/api/v1/cdr-exports/{job_id}/download/").status_code == 410


@pytest.mark.django_db(transaction=True)
def test_job_creation_is_audited(reader_as, calls, job_env):
    from accounts.models import AuditEntry

    job_id = reader_as("owner").post("/api/v1/cdr-exports/", JOB_BODY).json()["id"]
    entry = AuditEntry.objects.get(content_type__model="exportjob")
    assert (entry.object_id, entry.action, entry.customer_id) == (
        str(job_id),
        "create",
        calls.answered.customer_id,
    )
