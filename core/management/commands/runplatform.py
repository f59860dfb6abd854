"""Run the whole platform on one machine: what `make run` starts.

One event loop serves the web app (uvicorn: admin, API, WebSockets) and the SIP edge (the
embedded default of DESIGN.md). The edge is the `EdgeNode` named ``EDGE_NODE_NAME`` (default
"embedded"), created on first start; it pulls its snapshot from this web app and receives
config pushes on its control API like any other edge.

- Without ``REDIS_URL`` tasks run in-process, so this command also runs the periodic edge
  reconcile that Celery beat runs in production.
- With ``REDIS_URL`` it starts a Celery worker (with beat) as a child process.

In production each of these is its own process (see docker-compose.yml).
"""

import asyncio
import contextlib
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

from edge.runtime.control import ControlServer
from edge.runtime.main import EdgeOptions, EdgeRuntime, StartupError
from edge.runtime.rtpengine import parse_engines
from trunking.models import EdgeNode
from trunking.tasks import reconcile_edges
from trunking.tokens import edge_node_token

logger = logging.getLogger(__name__)


def _host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


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
        node, _ = EdgeNode.objects.get_or_create(
            name=settings.EDGE_NODE_NAME or "embedded",
            defaults={
                "control_url": f"http://{settings.EDGE_CONTROL_ADDRESS}",
                "sip_addresses": [settings.EDGE_SIP_ADDRESS],
            },
        )
        return EdgeOptions(
            node=node.name,
            sip=_host_port(settings.EDGE_SIP_ADDRESS),
            control=_host_port(settings.EDGE_CONTROL_ADDRESS),
            token=edge_node_token(node),
            journal_dir=Path(settings.EDGE_JOURNAL_DIR),
            snapshot_url=f"http://127.0.0.1:{port}/internal/edge/snapshot",
            state_dir=Path(settings.VAR_DIR) / "edge",
            cdr_batch_size=settings.EDGE_CDR_BATCH_SIZE,
            cdr_flush_interval=settings.EDGE_CDR_FLUSH_INTERVAL,
            redis_url=settings.REDIS_URL or None,
            limit_share=max(EdgeNode.objects.filter(enabled=True).count(), 1),
            # Media anchoring (docs/media.md): none unless EDGE_RTPENGINE names rtpengines.
            rtpengine=tuple(parse_engines(settings.EDGE_RTPENGINE)),
        )

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
            options = await sync_to_async(self._edge_options)(port)
            runtime = EdgeRuntime(options)
            try:
                await runtime.start()
                self.stdout.write(runtime.ready_line())
            except StartupError as error:
                self.stderr.write(f"The SIP edge did not start: {error}")
                runtime = None
        reconcile = None
        if not settings.REDIS_URL:
            reconcile = asyncio.create_task(self._reconcile_forever())
        await stopping.wait()
        self.stdout.write("Stopping: draining calls, then the web app.")
        if runtime is not None:
            runtime.stop()
            await runtime.shutdown()
        if reconcile is not None:
            reconcile.cancel()
        web.should_exit = True
        await web_task

    async def _reconcile_forever(self) -> None:
        """What Celery beat does in production: keep every edge on the current version."""
        while True:
            await asyncio.sleep(settings.CELERY_BEAT_SCHEDULE["reconcile-edges"]["schedule"])
            with contextlib.suppress(Exception):  # logged by the task; try again next round
                await sync_to_async(reconcile_edges, thread_sensitive=False)()
