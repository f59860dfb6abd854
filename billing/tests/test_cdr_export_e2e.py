"""CDR exports with real processes: the web app under uvicorn and a Celery worker on Redis, on
the test database.

- ``GET /cdrs/export/`` streams through a real ASGI server, whole and in order;
- ``POST /cdr-exports/`` queues a job that the worker runs: polling its resource shows the
  progress move, then a download URL whose file is the streamed export, byte for byte.

Needs PostgreSQL (the other processes must see the test database) and Redis; CI has both.
"""

from __future__ import annotations

import json
import os
import time
import urllib.request
from typing import Any

import pytest
from django.conf import settings
from django.db import connection

from accounts import services as account_services
from billing.services import cdrs_ingest
from billing.tests.conftest import DAY
from core.tenancy import SYSTEM
from edge.cdr import iso_utc
from edge.tests.test_cdr import SETUP, make_cdr
from trunking.tests.test_config_push_e2e import start_worker, web  # noqa: F401 (fixtures)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(not settings.REDIS_URL, reason="needs REDIS_URL (a real Celery broker)"),
]

ROWS = 100_000


@pytest.fixture
def process_env(tmp_path) -> dict[str, str]:
    """The web and worker processes' environment: the test database, a job directory, and
    progress recorded often (so that a poll sees it between the first and the last row)."""
    if connection.vendor != "postgresql":
        pytest.skip("other processes cannot share an SQLite test database")
    db = connection.settings_dict
    env = dict(os.environ)
    host, port = db["HOST"] or "127.0.0.1", db["PORT"] or 5432
    env.update(
        DATABASE_URL=f"postgres://{db['USER']}@{host}:{port}/{db['NAME']}",
        REDIS_URL=settings.REDIS_URL,
        SECRET_KEY=settings.SECRET_KEY,
        DEBUG="0",
        ALLOWED_HOSTS="127.0.0.1,localhost",
        CELERY_TASK_ALWAYS_EAGER="0",
        CDR_EXPORT_DIR=str(tmp_path / "exports"),
        CDR_EXPORT_PROGRESS_SECONDS="0.02",
        PYTHONUNBUFFERED="1",
    )
    return env


def _call(url: str, key: str, body: dict[str, Any] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(
        url,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Api-Key {key}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return response.status, response.read()


def test_export_job_runs_on_a_worker_and_streams_through_uvicorn(
    web,  # noqa: F811 (the fixture imported above)
    start_worker,  # noqa: F811
    customer,
    trunk,
):
    cdrs_ingest(
        records=(
            make_cdr(customer_id=customer.pk, trunk_id=trunk.pk, setup_at=iso_utc(SETUP + i / 4))
            for i in range(ROWS)
        )
    )
    key = account_services.api_key_create(actor=SYSTEM, customer=customer, name="e2e").secret
    status, streamed = _call(f"{web}/api/v1/cdrs/export/?{DAY}&columns=id,setup_at", key)
    assert status == 200
    lines = streamed.splitlines()
    assert lines[0] == b"id,setup_at" and len(lines) == ROWS + 1
    assert lines[1].endswith(b",2026-11-29T08:00:00.123Z")

    start_worker()
    body = {"since": "2026-11-29T00:00:00Z", "until": "2026-11-30T00:00:00Z"}
    status, created = _call(f"{web}/api/v1/cdr-exports/", key, body | {"columns": "id,setup_at"})
    assert status == 201
    job_url = f"{web}/api/v1/cdr-exports/{json.loads(created)['id']}/"
    seen: list[tuple[str, int]] = []
    deadline = time.monotonic() + 120
    while True:
        job = json.loads(_call(job_url, key)[1])
        if not seen or seen[-1] != (job["status"], job["rows_written"]):
            seen.append((job["status"], job["rows_written"]))
        if job["status"] in ("done", "failed"):
            break
        assert time.monotonic() < deadline, f"the job did not finish: {seen}"
        time.sleep(0.01)
    assert job["status"] == "done", job
    assert job["rows_total"] == job["rows_written"] == ROWS
    assert any(0 < rows < ROWS for _, rows in seen), f"no progress seen between: {seen}"
    written = [rows for _, rows in seen]
    assert written == sorted(written)
    status, downloaded = _call(job["download_url"], key)
    assert status == 200 and downloaded == streamed
