"""Getting the configuration to the edges: push a snapshot to an edge's control API, probe its
health, and queue one coalesced push after every change that matters to edges.

The HTTP calls here run in Celery workers (or in-process in the embedded default), never in
the web request that made the change: a change only queues a push, after its commit.
"""

import json
import logging
import urllib.error
import urllib.request
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Case, Value, When
from django.utils import timezone

from edge import snapshot_wire

from .choices import EdgeHealth
from .models import EdgeNode
from .tokens import edge_node_token

logger = logging.getLogger(__name__)

PUSH_TIMEOUT = 5.0  # seconds; a 100,000-number snapshot is ~9 MB on loopback or a LAN
PROBE_TIMEOUT = 2.0
PENDING_KEY = "tl:config-push:pending"


class EdgePushError(Exception):
    """The edge did not apply the snapshot: unreachable, or it answered an error."""

    def __init__(self, message: str, *, reachable: bool = False) -> None:
        super().__init__(message)
        self.reachable = reachable


def _request(node: EdgeNode, method: str, path: str, body: bytes | None, timeout: float) -> Any:
    request = urllib.request.Request(
        node.control_url.rstrip("/") + path,
        data=body,
        method=method,
        headers={
            "Authorization": f"Bearer {edge_node_token(node)}",
            "Content-Type": snapshot_wire.MEDIA_TYPE if body else "application/json",
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        body = exc.read()
        if exc.code == 409:  # the edge already runs a newer version (a later push overtook)
            return json.loads(body)
        detail = body[:500].decode("utf-8", "replace")
        raise EdgePushError(f"{node.name}: HTTP {exc.code} {detail}", reachable=True) from exc
    except (OSError, ValueError) as exc:  # refused, timed out, reset, not JSON
        raise EdgePushError(f"{node.name}: {exc}") from exc


def edge_push(*, node: EdgeNode, body: bytes) -> int:
    """Send the encoded snapshot to ``node``; record and return the version it applied."""
    now = timezone.now()
    try:
        answer = _request(node, "POST", "/config", body, PUSH_TIMEOUT)
        version = int(answer["applied_version"])
    except (EdgePushError, KeyError, TypeError, ValueError) as exc:
        error = str(exc) if isinstance(exc, EdgePushError) else f"{node.name}: bad answer {exc!r}"
        reachable = not isinstance(exc, EdgePushError) or exc.reachable
        EdgeNode.objects.filter(pk=node.pk).update(
            last_push_at=now,
            last_push_error=error[:2000],
            # It answered but did not apply: failing, with the reason in last_push_error.
            health=EdgeHealth.FAILING if reachable else EdgeHealth.UNREACHABLE,
            **({"last_seen": now} if reachable else {}),
        )
        raise EdgePushError(error, reachable=reachable) from exc
    EdgeNode.objects.filter(pk=node.pk).update(
        applied_version=version,
        last_push_at=now,
        last_push_error="",
        last_seen=now,
        health=EdgeHealth.OK,
    )
    return version


def edge_probe(*, node: EdgeNode) -> dict[str, Any] | None:
    """The edge's /health answer (recording what it says), or None if it is unreachable."""
    try:
        health = _request(node, "GET", "/health", None, PROBE_TIMEOUT)
    except EdgePushError as exc:
        EdgeNode.objects.filter(pk=node.pk).update(
            health=EdgeHealth.UNREACHABLE, last_push_error=str(exc)[:2000]
        )
        return None
    status = EdgeHealth.DRAINING if health.get("status") == "draining" else EdgeHealth.OK
    EdgeNode.objects.filter(pk=node.pk).update(
        # Answering is not enough: an edge that refused the last push stays failing until
        # a push succeeds.
        health=Case(
            When(health=EdgeHealth.FAILING, then=Value(EdgeHealth.FAILING)), default=Value(status)
        ),
        last_seen=timezone.now(),
        applied_version=health.get("config_version"),
    )
    return health


def _enqueue_push() -> None:
    from .tasks import push_config

    if not settings.REDIS_URL:
        push_config.delay()  # eager: runs here, after the commit
        return
    import redis

    client = redis.Redis.from_url(settings.REDIS_URL)
    # One queued push covers every change until it starts (it clears the key first).
    if client.set(PENDING_KEY, "1", nx=True, px=settings.CONFIG_PUSH_PENDING_TTL_MS):
        push_config.apply_async(countdown=settings.CONFIG_PUSH_COALESCE_SECONDS)


def request_config_push(using: str | None = None) -> None:
    """Queue one push after the current transaction commits (once, however many changes)."""
    connection = transaction.get_connection(using)
    if connection.in_atomic_block and any(
        callback is _enqueue_push for _, callback, _ in connection.run_on_commit
    ):
        return
    transaction.on_commit(_enqueue_push, using=using)


def clear_push_request() -> None:
    """Called by the push as it starts: changes from now on need a push of their own."""
    if settings.REDIS_URL:
        import redis

        redis.Redis.from_url(settings.REDIS_URL).delete(PENDING_KEY)
