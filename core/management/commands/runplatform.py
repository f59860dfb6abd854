"""Serve the platform through uvicorn (ASGI: admin, API, WebSockets).

This is what `make run` starts. In production each process is started on its own (see
docker-compose.yml); this command is the single-process form for one machine.
"""

from typing import Any

import uvicorn
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Serve the web app (ASGI) on HOST:PORT."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8000)

    def handle(self, *args: Any, host: str, port: int, **options: Any) -> None:
        self.stdout.write(
            f"Trunkline on http://{host}:{port}/ (admin /admin/, API /api/v1/, docs /api/docs/)"
        )
        uvicorn.run(
            "config.asgi:application", host=host, port=port, lifespan="off", log_level="info"
        )
