"""Getting the configuration to the edges: push a snapshot to an edge's control API, probe its
health, and queue one coalesced push after every change that matters to edges.

The HTTP calls here run in Celery workers (or in-process in the embedded default), never in
the web request that made the change: a change only queues a push, after its commit.
"""

import json
import logging
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Case, Value, When
from django.utils import timezone

from edge import snapshot_wire

from .choices import EdgeHealth
from .models import EdgeNode
from .snapshot import Changes
from .tokens import edge_node_token

logger = logging.getLogger(__name__)

PUSH_TIMEOUT = 5.0  # seconds; a 100,000-number snapshot is ~9 MB on loopback or a LAN
PROBE_TIMEOUT = 2.0
PENDING_KEY = "tl:config-push:pending"
CHANGES_KEY = "tl:config-push:changes"


class EdgePushError(Exception):
    """The edge did not apply the snapshot: unreachable, or it answered an error."""

    def __init__(self, message: str, *, reachable: bool = False, status: int = 0) -> None:
        super().__init__(message)
        self.reachable = reachable
        self.status = status  # the HTTP status the edge answered, 0 if none


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
        raise EdgePushError(
            f"{node.name}: HTTP {exc.code} {detail}", reachable=True, status=exc.code
        ) from exc
    except (OSError, ValueError) as exc:  # refused, timed out, reset, not JSON
        raise EdgePushError(f"{node.name}: {exc}") from exc


def edge_push(*, node: EdgeNode, body: bytes, full: bytes | None = None) -> int:
    """Send the encoded snapshot (or a delta, with the whole snapshot as ``full`` for an edge
    that does not hold the delta's base) to ``node``; record and return the version it
    applied."""
    return record_push(node=node, outcome=send_config(node=node, body=body, full=full))


def send_config(
    *, node: EdgeNode, body: bytes, full: bytes | Callable[[], bytes] | None = None
) -> int | EdgePushError:
    """The HTTP half of `edge_push`: the version the edge applied, or why not. It touches no
    database, so a push to many edges runs these in threads and records in its own. ``full``
    may be a callable: the whole snapshot is then encoded only if an edge asks for it."""
    try:
        try:
            answer = _request(node, "POST", "/config", body, PUSH_TIMEOUT)
        except EdgePushError as exc:
            if full is None or exc.status != 412:
                raise
            whole = full() if callable(full) else full
            answer = _request(node, "POST", "/config", whole, PUSH_TIMEOUT)
        return int(answer["applied_version"])
    except EdgePushError as exc:
        return exc
    except (KeyError, TypeError, ValueError) as exc:
        return EdgePushError(f"{node.name}: bad answer {exc!r}", reachable=True)


def record_push(*, node: EdgeNode, outcome: int | EdgePushError) -> int:
    """The database half of `edge_push`: the node's version or error; raises the error."""
    now = timezone.now()
    if isinstance(outcome, EdgePushError):
        EdgeNode.objects.filter(pk=node.pk).update(
            last_push_at=now,
            last_push_error=str(outcome)[:2000],
            # It answered but did not apply: failing, with the reason in last_push_error.
            health=EdgeHealth.FAILING if outcome.reachable else EdgeHealth.UNREACHABLE,
            **({"last_seen": now} if outcome.reachable else {}),
        )
        raise outcome
    EdgeNode.objects.filter(pk=node.pk).update(
        applied_version=outcome,
        last_push_at=now,
        last_push_error="",
        last_seen=now,
        health=EdgeHealth.OK,
    )
    return outcome


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


# What changed since the last push (`trunking.snapshot.Changes` keys): in Redis for the workers,
# in this process when tasks run here.
_local_changes: set[str] = set()
_local_changes_lock = threading.Lock()


def _redis() -> Any:
    import redis

    return redis.Redis.from_url(settings.REDIS_URL)


def _record_changes(keys: set[str]) -> None:
    if not keys:
        return
    if settings.REDIS_URL:
        _redis().sadd(CHANGES_KEY, *keys)
    else:
        with _local_changes_lock:
            _local_changes.update(keys)


def take_changes() -> Changes:
    """What changed since the last push, forgotten here (`restore_changes` if the push fails)."""
    if settings.REDIS_URL:
        pipe = _redis().pipeline(transaction=True)
        pipe.smembers(CHANGES_KEY)
        pipe.delete(CHANGES_KEY)
        members, _ = pipe.execute()
        keys = {member.decode() for member in members}
    else:
        with _local_changes_lock:
            keys = set(_local_changes)
            _local_changes.clear()
    return Changes.from_keys(keys)


def restore_changes(changes: Changes) -> None:
    """Give back what `take_changes` took, for the next push."""
    if changes.everything:
        _record_changes({Changes.EVERYTHING_KEY})
    else:
        _record_changes({*changes.sections, *(f"trunk:{pk}" for pk in changes.trunks)})


def _enqueue_push(keys: set[str]) -> None:
    from .tasks import push_config

    _record_changes(keys)
    if not settings.REDIS_URL:
        push_config.delay()  # eager: runs here, after the commit
        return
    # One queued push covers every change until it starts (it clears the key first).
    if _redis().set(PENDING_KEY, "1", nx=True, px=settings.CONFIG_PUSH_PENDING_TTL_MS):
        push_config.apply_async(countdown=settings.CONFIG_PUSH_COALESCE_SECONDS)


def request_config_push(using: str | None = None, keys: Iterable[str] = ()) -> None:
    """Queue one push after the current transaction commits (once, however many changes).

    ``keys`` say what changed (`trunking.snapshot.change_keys`), so that the push reads only
    that again; without keys (a bulk write) it reads everything.
    """
    keys = set(keys) or {Changes.EVERYTHING_KEY}
    connection = transaction.get_connection(using)
    if connection.in_atomic_block:
        for _, callback, _ in connection.run_on_commit:
            if isinstance(callback, _PushAfterCommit):
                callback.keys |= keys
                return
    transaction.on_commit(_PushAfterCommit(keys), using=using)


class _PushAfterCommit:
    """The one on-commit callback of a transaction; it gathers the keys of every change."""

    def __init__(self, keys: set[str]) -> None:
        self.keys = keys

    def __call__(self) -> None:
        _enqueue_push(self.keys)


def clear_push_request() -> None:
    """Called by the push as it starts: changes from now on need a push of their own."""
    if settings.REDIS_URL:
        _redis().delete(PENDING_KEY)
