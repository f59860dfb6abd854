"""The CDR pipeline's faults, with real processes: a journal writer that ships as the edge does
(`journal_writer.py`), a Celery worker (with beat) consuming the stream, a Redis server of the
test's own for the stream, PostgreSQL (directly or through a TCP proxy the test closes).

- the stream's Redis stopped for 30 s while records flow, then back empty: every record
  arrives once;
- PostgreSQL unreachable for 30 s: nothing lost, nothing doubled;
- the writer SIGKILLed mid-flow: after a restart every journalled record is stored once, and
  the torn last line the crash left is quarantined as such, not fatal;
- a worker SIGKILLed mid-batch: the batch is claimed by the next worker and stored once.

Needs PostgreSQL (the worker must see the test database) and Redis (the broker); CI has both.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
import redis
from django.conf import settings
from django.db import connection

from billing.models import Cdr, CdrQuarantine
from billing.tests.cdr_harness import RedisServer, TcpProxy
from config.celery import app as celery_app
from edge.runtime.cdr_shipper import GROUP, STREAM
from edge.runtime.journal import journal_files
from edge.tests.sipp_harness import REPO
from trunking.models import EdgeNode

pytestmark = [
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(not settings.REDIS_URL, reason="needs REDIS_URL (a real Celery broker)"),
]

OUTAGE = 30.0  # seconds, as the issue asks
SETTLE = 90.0  # after the fault, time allowed for everything to arrive


@pytest.fixture
def stream_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path).start()
    yield server
    server.stop()


@pytest.fixture
def node(db) -> str:
    EdgeNode.objects.create(name="writer-1", control_url="http://127.0.0.1:9")
    return "writer-1"


def _db_url(port: int | None = None) -> str:
    db = connection.settings_dict
    host, real_port = db["HOST"] or "127.0.0.1", db["PORT"] or 5432
    return f"postgres://{db['USER']}@{host}:{port or real_port}/{db['NAME']}"


@pytest.fixture
def worker_env(stream_redis: RedisServer) -> dict[str, str]:
    if connection.vendor != "postgresql":
        pytest.skip("other processes cannot share an SQLite test database")
    env = dict(os.environ)
    env.update(
        DATABASE_URL=_db_url(),
        REDIS_URL=settings.REDIS_URL,
        CDR_STREAM_REDIS_URL=stream_redis.url,
        SECRET_KEY=settings.SECRET_KEY,
        DEBUG="0",
        CELERY_TASK_ALWAYS_EAGER="0",
        CDR_CONSUME_INTERVAL="0.5",
        CDR_CONSUME_BUDGET="2",
        CDR_CLAIM_IDLE_SECONDS="3",
        EDGE_RECONCILE_SECONDS="3600",
        PYTHONUNBUFFERED="1",
    )
    return env


def _stop(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(5)


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start a process in its own group, logging to tmp_path; all stopped at the end."""
    celery_app.control.purge()
    processes: list[subprocess.Popen[bytes]] = []

    def run(name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        with open(tmp_path / f"{name}-{len(processes)}.log", "wb") as log:
            process = subprocess.Popen(
                [sys.executable, *args], cwd=REPO, env=env, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        processes.append(process)
        return process

    yield run
    for process in processes:
        _stop(process)


def _worker(start: Callable[..., subprocess.Popen[bytes]], env: dict[str, str], tmp_path: Path,
            name: str = "w") -> subprocess.Popen[bytes]:  # fmt: skip
    return start(name, ["-m", "celery", "-A", "config", "worker", "-B", "--pool", "solo",
                        "--loglevel", "INFO", "--hostname", f"{name}@%h",
                        "--schedule", str(tmp_path / f"beat-{name}")], env)  # fmt: skip


def _writer(start: Callable[..., subprocess.Popen[bytes]], tmp_path: Path, node: str,
            redis_url: str, count: int, rate: float) -> subprocess.Popen[bytes]:  # fmt: skip
    return start("writer", ["-m", "billing.tests.journal_writer", str(tmp_path), node,
                            redis_url, str(count), str(rate)], dict(os.environ))  # fmt: skip


def _journalled(tmp_path: Path) -> list[str]:
    path = tmp_path / "journalled.txt"
    return path.read_text().split() if path.exists() else []


def _stored(node: str) -> list[str]:
    return list(Cdr.objects.filter(edge=node).values_list("call_id", flat=True))


def _wait(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.25)


def _assert_all_once(tmp_path: Path, node: str, expected: int, *, killed: bool = False) -> None:
    journalled = _journalled(tmp_path)
    assert len(journalled) == expected
    _wait(lambda: len(_stored(node)) >= expected, SETTLE, "every record stored")
    stored = _stored(node)
    if killed:
        # A writer killed between a journal flush and noting its ids: that batch (at most 10
        # records) is journalled and stored without being in the list.
        assert set(journalled) <= set(stored) and len(stored) - len(journalled) <= 10
        assert len(stored) == len(set(stored))
    else:
        assert sorted(stored) == sorted(journalled)  # each once, none missing, none extra
    # Files committed whole are gone; the newest one is kept while the journal may append.
    _wait(lambda: len(journal_files(tmp_path / "journal")) == 1, SETTLE, "committed files removed")


def test_stream_redis_down_30s_then_back_empty(tmp_path, node, stream_redis, worker_env, start):
    _worker(start, worker_env, tmp_path)
    _writer(start, tmp_path, node, stream_redis.url, count=1500, rate=30)
    _wait(lambda: len(_stored(node)) >= 100, 60, "records flowing")
    stream_redis.stop()
    during = len(_journalled(tmp_path))
    time.sleep(OUTAGE)
    assert len(_journalled(tmp_path)) > during  # the edge journalled on through the outage
    stream_redis.start()  # empty: the edge must send again all it has not seen confirmed
    _wait(lambda: "written" in (tmp_path / "writer-1.log").read_text(), 120, "writer done")
    _assert_all_once(tmp_path, node, 1500)


def test_postgresql_unreachable_30s(tmp_path, node, stream_redis, worker_env, start):
    proxy = TcpProxy(("127.0.0.1", int(connection.settings_dict["PORT"] or 5432))).open()
    try:
        _worker(start, {**worker_env, "DATABASE_URL": _db_url(proxy.port)}, tmp_path)
        _writer(start, tmp_path, node, stream_redis.url, count=1500, rate=30)
        _wait(lambda: len(_stored(node)) >= 100, 60, "records flowing")
        proxy.close()
        time.sleep(OUTAGE)
        stalled = len(_stored(node))
        assert stalled < len(_journalled(tmp_path))  # they waited, in the stream and journal
        proxy.open()
        _wait(lambda: "written" in (tmp_path / "writer-1.log").read_text(), 120, "writer done")
        _assert_all_once(tmp_path, node, 1500)
    finally:
        proxy.close()


def test_writer_sigkilled_then_restarted(tmp_path, node, stream_redis, worker_env, start):
    _worker(start, worker_env, tmp_path)
    writer = _writer(start, tmp_path, node, stream_redis.url, count=100_000, rate=300)
    _wait(lambda: len(_journalled(tmp_path)) >= 600, 60, "records journalled")
    _stop(writer, signal.SIGKILL)
    # What a crash in the middle of a write leaves: the newest file ends in half a line.
    newest = journal_files(tmp_path / "journal")[-1]
    with newest.open("ab") as file:
        file.write(b'{"edge": "writer-1", "call_id": "dead')
    journalled = len(_journalled(tmp_path))
    _writer(start, tmp_path, node, stream_redis.url, count=200, rate=200)
    _wait(lambda: "written" in (tmp_path / "writer-2.log").read_text(), 60, "writer done")
    _assert_all_once(tmp_path, node, journalled + 200, killed=True)
    torn = CdrQuarantine.objects.get(edge=node)
    assert torn.reason == "torn_line" and torn.line.startswith('{"edge": "writer-1"')
    assert "torn line" in (tmp_path / "writer-2.log").read_text()


def test_worker_sigkilled_mid_batch(tmp_path, node, stream_redis, worker_env, start):
    client = redis.Redis.from_url(stream_redis.url)
    _writer(start, tmp_path, node, stream_redis.url, count=3000, rate=3000)
    _wait(lambda: "written" in (tmp_path / "writer-0.log").read_text(), 60, "writer done")
    _wait(lambda: client.exists(STREAM) and client.xlen(STREAM) > 0, 30, "batches in the stream")
    # The CDR table locked, the worker blocks in its first store with the batch read and not
    # acknowledged, however fast it is: "mid-batch" for as long as the test needs (polled
    # instead, a fast machine read, stored and acknowledged everything between two looks).
    table_lock = psycopg.connect(_db_url())
    try:
        table_lock.execute(f'LOCK TABLE "{Cdr._meta.db_table}" IN ACCESS EXCLUSIVE MODE')
        worker = _worker(start, worker_env, tmp_path, name="doomed")

        def mid_batch() -> bool:
            with contextlib.suppress(redis.ResponseError):
                return client.xpending(STREAM, GROUP)["pending"] > 0
            return False

        _wait(mid_batch, 60, "the worker to take a batch")
        _stop(worker, signal.SIGKILL)  # read, not acknowledged: the batch is in its hands
        assert client.xpending(STREAM, GROUP)["pending"] > 0
    finally:
        table_lock.rollback()
        table_lock.close()
    _worker(start, worker_env, tmp_path, name="heir")
    _assert_all_once(tmp_path, node, 3000)
    _wait(lambda: client.xpending(STREAM, GROUP)["pending"] == 0, 30, "all acknowledged")
    client.close()
