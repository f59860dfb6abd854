"""Celery tasks of the trunking app: push the configuration to edges and keep them in line.

Tasks take ids, call the push services, and are safe to run twice (a push of an unchanged
snapshot is the same version; an edge applying it again is a no-op).
"""

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from celery import shared_task

from .models import ConfigRevision, EdgeNode
from .push import (
    EdgePushError,
    clear_push_request,
    edge_probe,
    record_push,
    restore_changes,
    send_config,
    take_changes,
)
from .snapshot import build_snapshot, record_refusals
from .snapshot_cache import Release, latest_release, publish

logger = logging.getLogger(__name__)

RETRY_BACKOFF_MAX = 60  # seconds between retries to an unreachable edge, at most
PUSH_PARALLELISM = 8
FULL_CHECK_SECONDS = 300.0  # the reconcile's full read, at most this often
_last_full_check = -FULL_CHECK_SECONDS  # the first reconcile of a process reads everything


def _bodies(node: EdgeNode, release: Release) -> tuple[bytes, Callable[[], bytes] | None]:
    """The delta to an edge on its base version (and, should it ask, the whole snapshot,
    encoded then), else the whole snapshot."""
    body = release.body_for(node.applied_version)
    is_delta = release.delta is not None and body is release.delta
    return body, ((lambda: release.full) if is_delta else None)


def _send(node: EdgeNode, release: Release) -> int:
    body, full = _bodies(node, release)
    return record_push(node=node, outcome=send_config(node=node, body=body, full=full))


def _push_to(nodes: list[EdgeNode], release: Release) -> list[int]:
    """Push to every node at once (HTTP in threads, the records here); the ids of those that
    failed."""

    def one(node: EdgeNode) -> int | EdgePushError:
        body, full = _bodies(node, release)
        return send_config(node=node, body=body, full=full)

    with ThreadPoolExecutor(max_workers=min(PUSH_PARALLELISM, max(len(nodes), 1))) as pool:
        outcomes = list(pool.map(one, nodes))
    failed = []
    for node, outcome in zip(nodes, outcomes, strict=True):
        try:
            record_push(node=node, outcome=outcome)
        except EdgePushError as exc:
            logger.warning("config push failed: %s", exc)
            failed.append(node.pk)
    return failed


def _retry_later(node_ids: list[int]) -> None:
    """A retrying task per failed edge. In-process (no broker) there is no later: the error is
    on the edge node, and the embedded platform's periodic reconcile tries again."""
    if push_config_to_edge.app.conf.task_always_eager:
        return
    for pk in node_ids:
        push_config_to_edge.apply_async((pk,), countdown=1)


@shared_task(acks_late=True)
def push_config() -> int:
    """Build the current snapshot from what changed and push it to every enabled edge not
    already on it (a delta to those on the version before). The whole snapshot is encoded
    only if an edge needs it, or later by `latest_release` (retries, reconcile, from this
    process's build): not between this push and the next.

    Returns the version. Edges that fail get a retrying task of their own.
    """
    clear_push_request()
    changes = take_changes()
    try:
        release = publish(changes)
    except BaseException:
        restore_changes(changes)
        raise
    stale = [
        node
        for node in EdgeNode.objects.filter(enabled=True)
        if node.applied_version != release.version
    ]
    if stale:
        _retry_later(_push_to(stale, release))
    return release.version


@shared_task(
    bind=True,
    acks_late=True,
    autoretry_for=(EdgePushError,),
    retry_backoff=1,
    retry_backoff_max=RETRY_BACKOFF_MAX,
    retry_jitter=True,
    max_retries=10,
)
def push_config_to_edge(self, node_id: int) -> int | None:
    """Push the latest version to one edge, retrying with exponential backoff (the encoded
    snapshot is reused, not built again)."""
    node = EdgeNode.objects.filter(pk=node_id, enabled=True).first()
    if node is None:
        return None
    release = latest_release()
    if node.applied_version == release.version:
        return node.applied_version
    return _send(node, release)


@shared_task
def reconcile_edges() -> dict[str, list[str]]:
    """Periodic: probe every enabled edge; re-push to those whose version drifted.

    It compares with the latest published version (one row) and re-sends its stored bytes: no
    rebuild. Changes reach that version through the push their commit queued; once every
    `FULL_CHECK_SECONDS` (per worker process) it reads everything instead, which catches what
    no commit announced (a write behind the signals, changes lost with a restarted Redis).
    Each version is also checked once with the edge's compiler, off the push path, and what it
    leaves out is recorded (`record_refusals`).
    """
    global _last_full_check
    if time.monotonic() - _last_full_check >= FULL_CHECK_SECONDS:
        release = publish()
        release.full  # noqa: B018 -- stored, for the reconciles until the next full check
        _last_full_check = time.monotonic()
    else:
        release = latest_release()
    if ConfigRevision.objects.filter(pk=release.version, refusal_count__isnull=True).exists():
        record_refusals(build_snapshot())
    drifted, unreachable = [], []
    for node in EdgeNode.objects.filter(enabled=True):
        health = edge_probe(node=node)
        if health is None:
            unreachable.append(node.name)
        elif health.get("config_version") != release.version:
            node.applied_version = health.get("config_version")
            drifted.append(node)
    if drifted:
        _retry_later(_push_to(drifted, release))
    return {"drifted": [n.name for n in drifted], "unreachable": unreachable}
