"""The config push pipeline with real processes: the web app, a Celery worker (with beat) on
Redis, and two edge processes, all on the test database.

- a change through the API reaches both edges, which report the new version;
- a worker killed around a push: once a worker runs again, the edges converge;
- a stopped edge misses pushes; restarted, it pulls the latest version before serving.

Needs PostgreSQL (the other processes must see the test database) and Redis; CI has both.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection

from config.celery import app as celery_app
from edge.tests.sipp_harness import REPO, EdgeProcess, free_tcp_port
from trunking.models import ConfigRevision, EdgeNode, Trunk
from trunking.tokens import edge_node_token

pytestmark = [
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
    pytest.mark.needs("redis", "postgres"),
    pytest.mark.skipif(not settings.REDIS_URL, reason="needs REDIS_URL (a real Celery broker)"),
]

CONVERGE_TIMEOUT = 20.0


@pytest.fixture
def process_env() -> dict[str, str]:
    """The environment of the web and worker processes: the test database, the same secrets."""
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
        EDGE_RECONCILE_SECONDS="1",
        PYTHONUNBUFFERED="1",
    )
    return env


def _wait_http(url: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"{url} did not answer within {timeout} s")


def _stop(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    """Signal the process's whole group (a worker started with -B has a beat child that
    outlives a killed parent), then wait; SIGKILL the group if it does not go."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(5)


@pytest.fixture
def web(process_env: dict[str, str], tmp_path: Path) -> Iterator[str]:
    port = free_tcp_port()
    log = open(tmp_path / "web.log", "wb")  # noqa: SIM115
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "config.asgi:application", "--host", "127.0.0.1",
         "--port", str(port), "--lifespan", "off", "--no-access-log"],
        cwd=REPO, env=process_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_http(f"{base}/healthz")
        yield base
    finally:
        _stop(process)
        log.close()


@pytest.fixture
def start_worker(
    process_env: dict[str, str], tmp_path: Path
) -> Iterator[Callable[[], subprocess.Popen[bytes]]]:
    celery_app.control.purge()  # pushes queued by earlier tests belong to other databases
    workers: list[subprocess.Popen[bytes]] = []

    def start() -> subprocess.Popen[bytes]:
        n = len(workers)
        with open(tmp_path / f"worker-{n}.log", "wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "config", "worker", "-B", "--pool", "solo",
                 "--loglevel", "INFO", "--hostname", f"e2e{n}@%h",
                 "--schedule", str(tmp_path / f"beat-{n}")],
                cwd=REPO, env=process_env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        workers.append(process)
        return process

    yield start
    for process in workers:
        _stop(process)


def _edge(tmp_path: Path, node: EdgeNode, web: str) -> EdgeProcess:
    port = int(node.control_url.rsplit(":", 1)[1])
    return EdgeProcess(
        tmp_path / node.name,
        None,
        node=node.name,
        control_port=port,
        token=edge_node_token(node),
        snapshot_url=f"{web}/internal/edge/snapshot",
        drain_timeout=1,
    )


def _wait_converged(
    edges: list[EdgeProcess], above: int = 0, timeout: float = CONVERGE_TIMEOUT
) -> int:
    """Wait until every edge reports the current version, newer than `above`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        latest = ConfigRevision.objects.order_by("-id").values_list("id", flat=True).first()
        versions = {edge.health()["config_version"] for edge in edges}
        if versions == {latest} and latest > above:
            return latest
        time.sleep(0.1)
    raise AssertionError(f"edges at {versions}, current version {latest}")


def test_push_pipeline(web, start_worker, tmp_path, trunk, api_as) -> None:
    nodes = [
        EdgeNode.objects.create(name=name, control_url=f"http://127.0.0.1:{free_tcp_port()}")
        for name in ("edge-a", "edge-b")
    ]
    edges = [_edge(tmp_path, node, web) for node in nodes]
    try:
        for edge in edges:
            edge.start()
        worker = start_worker()
        client = api_as("owner")
        start_version = _wait_converged(edges)

        # A change through the API reaches both edges; the database records what they applied.
        assert client.patch(f"/api/v1/trunks/{trunk.pk}/", {"max_channels": 7}).status_code == 200
        version = _wait_converged(edges, above=start_version)
        # The worker records each edge's answer once it has it: a moment after the edge applied.
        deadline = time.monotonic() + CONVERGE_TIMEOUT
        while set(EdgeNode.objects.values_list("applied_version", flat=True)) != {version}:
            assert time.monotonic() < deadline, "the applied versions were not recorded"
            time.sleep(0.05)

        # No worker: a change waits. A worker started again (its beat reconciles) converges.
        _stop(worker, signal.SIGKILL)
        client.patch(f"/api/v1/trunks/{trunk.pk}/", {"max_channels": 8})
        time.sleep(1.5)
        assert {edge.health()["config_version"] for edge in edges} == {version}
        start_worker()
        version = _wait_converged(edges, above=version)
        assert Trunk.objects.get(pk=trunk.pk).max_channels == 8

        # A stopped edge misses a push (recorded on its node); restarted, it pulls the latest.
        edges[1].stop(grace=5)
        client.patch(f"/api/v1/trunks/{trunk.pk}/", {"max_channels": 9})
        version = _wait_converged(edges[:1], above=version)
        deadline = time.monotonic() + CONVERGE_TIMEOUT
        while not EdgeNode.objects.get(name="edge-b").last_push_error:
            assert time.monotonic() < deadline, "the failed push was not recorded"
            time.sleep(0.1)
        assert EdgeNode.objects.get(name="edge-b").health == "unreachable"
        edges[1] = _edge(tmp_path, nodes[1], web).start()
        (ready,) = [line for line in edges[1].stdout_lines if "edge ready" in line]
        assert f"config_version={version}" in ready  # pulled at start, before serving
    finally:
        for edge in edges:
            edge.stop(grace=5)
