"""`manage.py runedge`: run a SIP edge node with defaults taken from Django settings.

The options are those of ``python -m edge`` (`edge.runtime.main`), parsed by the same code;
command line > EDGE_* environment variables > the settings below > built-in defaults:

- node name: ``EDGE_NODE_NAME``, else this machine's hostname;
- ``--sip`` / ``--control``: ``EDGE_SIP_ADDRESS`` / ``EDGE_CONTROL_ADDRESS``;
- TLS: ``EDGE_TLS_CERT`` + ``EDGE_TLS_KEY`` turn it on, on ``EDGE_TLS_ADDRESS`` (default: the
  SIP host, port 5061);
- ``--token``: the registered edge node's own token (derived from SECRET_KEY, read from the
  database), else ``EDGE_CONTROL_TOKEN``; ``--snapshot-url``: this web app's internal endpoint;
- ``--journal-dir``: ``EDGE_JOURNAL_DIR`` (``VAR_DIR/cdr``); ``--state-dir``: ``VAR_DIR/edge``;
- ``--redis-url``: ``REDIS_URL`` (limits counted across edges). Set ``EDGE_LIMIT_SHARE`` to
  the number of edges, the share of each limit an edge keeps to while Redis is unreachable;
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

from edge.runtime.main import ENVIRONMENT, UsageError, add_arguments, options_from_namespace, run
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
    sip = settings.EDGE_SIP_ADDRESS
    cert, key = settings.EDGE_TLS_CERT, settings.EDGE_TLS_KEY
    tls = settings.EDGE_TLS_ADDRESS
    if cert and key and not tls:
        tls = f"{sip.rpartition(':')[0]}:5061"
    node = os.environ.get("EDGE_NODE") or settings.EDGE_NODE_NAME or socket.gethostname()
    defaults: dict[str, object] = {
        "node": node,
        "sip": sip,
        "tls": tls if cert and key else "",
        "cert": cert,
        "key": key,
        "control": settings.EDGE_CONTROL_ADDRESS,
        "token": _node_token(node) or settings.EDGE_CONTROL_TOKEN,
        "snapshot_url": DEFAULT_SNAPSHOT_URL,
        "journal_dir": str(settings.EDGE_JOURNAL_DIR),
        "state_dir": str(settings.VAR_DIR / "edge"),
        "redis_url": settings.REDIS_URL,
        "rtpengine": settings.EDGE_RTPENGINE,
    }
    for dest, name in (
        ("cdr_batch_size", "EDGE_CDR_BATCH_SIZE"),
        ("cdr_flush_interval", "EDGE_CDR_FLUSH_INTERVAL"),
        ("gc_full_interval", "EDGE_GC_FULL_INTERVAL"),
    ):
        if hasattr(settings, name):
            defaults[dest] = getattr(settings, name)
    return defaults


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
        code = run(edge_options, configure_logging=False)
        if code:
            raise CommandError(f"the edge stopped with exit code {code}", returncode=code)
