"""Run the whole platform on one machine: what `make run` starts.

One event loop serves the web app (uvicorn: admin, API, WebSockets) and the SIP edge (the
embedded default of DESIGN.md). The edge reads the same EDGE_* variables as ``runedge`` and
``python -m edge`` (`edge.options`); it is the `EdgeNode` named ``EDGE_NODE_NAME`` (default
"embedded"), created on first start; it pulls its snapshot from this web app and receives
config pushes on its control API like any other edge.

- Without ``REDIS_URL`` tasks run in-process, so this command also runs the periodic edge
  reconcile and the prepaid calls check (every ``PREPAID_CHECK_SECONDS``) that Celery beat
  runs in production.
- With ``REDIS_URL`` it starts a Celery worker (with beat) as a child process.

In production each of these is its own process (see docker-compose.yml).
"""

import asyncio
import contextlib
import dataclasses
import logging
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import uvicorn
from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.management.base import BaseCommand

from billing.services import cdr_batches_ingest_in_process
from billing.tasks import cdr_partitions_ensure, check_prepaid_calls
from edge.options import EdgeOptions, UsageError, options_from_environment
from edge.runtime.control import ControlServer
from edge.runtime.events import BatchingSink
from edge.runtime.main import EdgeRuntime, StartupError
from trunking.live import deliver_batch
from trunking.models import EdgeNode
from trunking.tasks import reconcile_edges
from trunking.tokens import edge_node_token

logger = logging.getLogger(__name__)


def _address(address: tuple[str, int]) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Command(BaseCommand):
    help = "Serve the web app and the SIP edge on one event loop (the embedded platform)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument("--no-edge", action="store_true", help="Serve the web app only.")

    def handle(self, *args: Any, host: str, port: int, no_edge: bool, **options: Any) -> None:
        worker = self._start_worker() if settings.REDIS_URL else None
        try:
            asyncio.run(self._serve(host, port, edge=not no_edge))
        finally:
            if worker is not None:
                worker.terminate()
                worker.wait(timeout=30)

    def _start_worker(self) -> subprocess.Popen[bytes]:
        self.stdout.write("Celery worker (with beat) started against REDIS_URL.")
        schedule = Path(settings.VAR_DIR) / "celerybeat-schedule"
        command = [sys.executable, "-m", "celery", "-A", "config", "worker", "-B"]
        return subprocess.Popen([*command, "--loglevel", "INFO", "--schedule", str(schedule)])

    def _edge_options(self, port: int) -> EdgeOptions:
        """The edge's options as runedge and ``python -m edge`` read them (`edge.options`:
        the same EDGE_* variables), over this process's defaults; the token is the node's."""
        options = options_from_environment(
            defaults={
                "node": "embedded",
                "token": "-",  # replaced by the node's own below
                "snapshot_url": f"http://127.0.0.1:{port}/internal/edge/snapshot",
                "journal_dir": str(Path(settings.VAR_DIR) / "cdr"),
                "state_dir": str(Path(settings.VAR_DIR) / "edge"),
                "redis_url": settings.REDIS_URL,
                "limit_share": max(EdgeNode.objects.filter(enabled=True).count(), 1),
            }
        )
        node, _ = EdgeNode.objects.get_or_create(
            name=options.node,
            defaults={
                "control_url": f"http://{_address(options.control)}",
                "sip_addresses": [_address(options.sip)],
            },
        )
        return dataclasses.replace(options, token=edge_node_token(node))

    async def _serve(self, host: str, port: int, *, edge: bool) -> None:
        loop = asyncio.get_running_loop()
        config = uvicorn.Config(
            "config.asgi:application", host=host, port=port, lifespan="off", log_level="info"
        )
        web = ControlServer(config)  # uvicorn without its own signal handling: ours stop both
        stopping = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stopping.set)
        web_task = asyncio.create_task(web.serve())
        while not web.started:
            if web_task.done():
                return  # uvicorn could not bind; it said why
            await asyncio.sleep(0.05)
        self.stdout.write(
            f"Trunkline on http://{host}:{port}/ (admin /admin/, API /api/v1/, docs /api/docs/)"
        )
        runtime = None
        if edge:
            # Without Redis, CDRs go from the journal into the database in-process; live call
            # events go straight to the channel layer on this loop (trunking/live.py).
            try:
                options = await sync_to_async(self._edge_options)(port)
                runtime = EdgeRuntime(
                    options,
                    events=BatchingSink(deliver_batch, node=options.node),
                    cdr_ingest=cdr_batches_ingest_in_process,
                )
                await runtime.start()
                self.stdout.write(runtime.ready_line())
            except (StartupError, UsageError) as error:
                self.stderr.write(f"The SIP edge did not start: {error}")
                runtime = None
        periodic: list[asyncio.Task[None]] = []
        if not settings.REDIS_URL:
            periodic.append(asyncio.create_task(self._reconcile_forever()))
            periodic.append(asyncio.create_task(self._prepaid_check_forever()))
        await stopping.wait()
        self.stdout.write("Stopping: draining calls, then the web app.")
        if runtime is not None:
            runtime.stop()
            await runtime.shutdown()
        for task in periodic:
            task.cancel()
        web.should_exit = True
        await web_task

    async def _reconcile_forever(self) -> None:
        """What Celery beat does in production: keep every edge on the current version (and
        the CDR table's monthly partitions made ahead, on PostgreSQL)."""
        with contextlib.suppress(Exception):  # rows without a partition wait in the default one
            await sync_to_async(cdr_partitions_ensure, thread_sensitive=False)()
        while True:
            await asyncio.sleep(settings.CELERY_BEAT_SCHEDULE["reconcile-edges"]["schedule"])
            with contextlib.suppress(Exception):  # logged by the task; try again next round
                await sync_to_async(reconcile_edges, thread_sensitive=False)()

    async def _prepaid_check_forever(self) -> None:
        """What Celery beat does in production: end prepaid customers' calls that would
        outrun their balance (`billing.tasks.check_prepaid_calls`)."""
        while True:
            await asyncio.sleep(settings.PREPAID_CHECK_SECONDS)
            try:
                await sync_to_async(check_prepaid_calls, thread_sensitive=False)()
            except Exception:  # an edge or the database away: try again next round
                logger.exception("prepaid calls check failed")
