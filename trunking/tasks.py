"""Celery tasks of the trunking app: push the configuration to edges and keep them in line.

Tasks take ids, call the push services, and are safe to run twice (a push of an unchanged
snapshot is the same version; an edge applying it again is a no-op).
"""

import logging
from concurrent.futures import ThreadPoolExecutor

from celery import shared_task

from .models import EdgeNode
from .push import EdgePushError, clear_push_request, edge_probe, edge_push
from .snapshot import build_snapshot, encode, record_refusals

logger = logging.getLogger(__name__)

RETRY_BACKOFF_MAX = 60  # seconds between retries to an unreachable edge, at most
PUSH_PARALLELISM = 8


def _push_to(nodes: list[EdgeNode], body: bytes) -> list[int]:
    """Push to every node at once; the ids of those that failed."""

    def one(node: EdgeNode) -> int | None:
        try:
            edge_push(node=node, body=body)
        except EdgePushError as exc:
            logger.warning("config push failed: %s", exc)
            return node.pk
        return None

    with ThreadPoolExecutor(max_workers=min(PUSH_PARALLELISM, max(len(nodes), 1))) as pool:
        return [pk for pk in pool.map(one, nodes) if pk is not None]


def _retry_later(node_ids: list[int]) -> None:
    """A retrying task per failed edge. In-process (no broker) there is no later: the error is
    on the edge node, and the embedded platform's periodic reconcile tries again."""
    if push_config_to_edge.app.conf.task_always_eager:
        return
    for pk in node_ids:
        push_config_to_edge.apply_async((pk,), countdown=1)


@shared_task(acks_late=True)
def push_config() -> int:
    """Build the current snapshot and push it to every enabled edge not already on it.

    Returns the version. Edges that fail get a retrying task of their own.
    """
    clear_push_request()
    snapshot = build_snapshot()
    version = snapshot["version"]
    stale = [
        node for node in EdgeNode.objects.filter(enabled=True) if node.applied_version != version
    ]
    if stale:
        _retry_later(_push_to(stale, encode(snapshot)))
    return version


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
    """Push the current snapshot to one edge, retrying with exponential backoff."""
    node = EdgeNode.objects.filter(pk=node_id, enabled=True).first()
    if node is None:
        return None
    snapshot = build_snapshot()
    if node.applied_version == snapshot["version"]:
        return node.applied_version
    return edge_push(node=node, body=encode(snapshot))


@shared_task
def reconcile_edges() -> dict[str, list[str]]:
    """Periodic: probe every enabled edge; re-push to those whose version drifted.

    Building the snapshot here also catches changes made behind the ORM's back (bulk updates),
    since its version follows the content; checking it (once per version, off the push path)
    records what the edges leave out of it.
    """
    snapshot = build_snapshot()
    version = snapshot["version"]
    record_refusals(snapshot)
    drifted, unreachable = [], []
    for node in EdgeNode.objects.filter(enabled=True):
        health = edge_probe(node=node)
        if health is None:
            unreachable.append(node.name)
        elif health.get("config_version") != version:
            drifted.append(node)
    if drifted:
        _retry_later(_push_to(drifted, encode(snapshot)))
    return {"drifted": [n.name for n in drifted], "unreachable": unreachable}
