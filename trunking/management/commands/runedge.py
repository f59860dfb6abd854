"""`manage.py runedge`: run a SIP edge node with the defaults only Django knows.

The options, their environment variables and their checks are those of ``python -m edge``
(`edge.options`, one parser for runedge, ``python -m edge`` and runplatform); command line >
environment > the defaults below > built-in defaults:

- ``--token``: the registered edge node's own token (derived from SECRET_KEY, read from the
  database), else ``EDGE_CONTROL_TOKEN``; ``--snapshot-url``: this web app's internal endpoint;
- node name: this machine's hostname;
- ``--journal-dir``: ``VAR_DIR/cdr``; ``--state-dir``: ``VAR_DIR/edge``;
- ``--redis-url``: ``REDIS_URL`` (limits counted across edges, the live board's events, and the
  CDR stream the journal is shipped to; without it the journal is shipped in-process into the
  database). Set
  ``EDGE_LIMIT_SHARE`` to the number of edges, the share of each limit an edge keeps to while
  Redis is unreachable.
- ``--rtpengine``: ``EDGE_RTPENGINE`` (media anchoring, docs/media.md).

The edge itself never touches the ORM: this command only computes defaults, then hands over.
"""

import argparse
import logging
import os
import socket
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError

from billing.services import cdr_batches_ingest_in_process
from edge.options import ENVIRONMENT, UsageError, add_arguments, options_from_namespace
from edge.runtime.main import run
from trunking.models import EdgeNode
from trunking.tokens import edge_node_token

DEFAULT_SNAPSHOT_URL = "http://127.0.0.1:8000/internal/edge/snapshot"


def _node_token(name: str) -> str | None:
    """The registered edge node's own control token (pushes come with it), derived as the
    control plane derives it; None if the node is not registered or the database is out of
    reach (then EDGE_CONTROL_TOKEN, or --token, is used)."""
    try:
        node = EdgeNode.objects.filter(name=name).first()
    except DatabaseError:
        return None
    return edge_node_token(node) if node is not None else None


def settings_defaults() -> dict[str, object]:
    node = os.environ.get(ENVIRONMENT["node"]) or socket.gethostname()
    return {
        "node": node,
        "token": _node_token(node) or settings.EDGE_CONTROL_TOKEN,
        "snapshot_url": DEFAULT_SNAPSHOT_URL,
        "journal_dir": str(settings.VAR_DIR / "cdr"),
        "state_dir": str(settings.VAR_DIR / "edge"),
        "redis_url": settings.REDIS_URL,
    }


class Command(BaseCommand):
    help = "Run a SIP edge node (UDP/TCP/TLS, control API) until SIGTERM; drains gracefully."
    # The edge reads no model and serves no URL: the web app's checks are not its business.
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        add_arguments(parser, defaults=settings_defaults())

    def handle(self, *args: Any, **options: Any) -> None:
        namespace = argparse.Namespace(**{dest: options.get(dest) for dest in ENVIRONMENT})
        try:
            edge_options = options_from_namespace(namespace)
        except UsageError as error:
            raise CommandError(str(error)) from None
        # Django's LOGGING already configured the handlers; only the edge's level is ours.
        logging.getLogger("edge").setLevel(edge_options.log_level)
        # Without Redis the journal is shipped in-process into this database (billing).
        code = run(edge_options, configure_logging=False, cdr_ingest=cdr_batches_ingest_in_process)
        if code:
            raise CommandError(f"the edge stopped with exit code {code}", returncode=code)
