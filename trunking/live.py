"""The live board's plumbing on the web side: from edge event batches to channel-layer groups.

A batch (edge/runtime/events.py's format) is split by tenant and sent to groups:

- ``live.staff``: every call event (operators see all);
- ``live.customer.<id>``: the call events of that customer's calls;
- ``live.nodes``: events about an edge itself (``node_started``, ``config_applied``): every
  board re-reads that edge's calls then, so a restarted edge leaves no ghost calls.

Two ways in, one `deliver_batch`:

- the embedded platform (``runplatform``) gives its in-process edge `deliver_batch` as the
  callback of its `BatchingSink`: batches reach the (in-memory or Redis) layer on the same loop;
- standalone edges append batches to the Redis stream ``LIVE_EVENTS_STREAM``; the web process
  that first serves a board starts `relay_forever`, which reads the stream through a consumer
  group (each batch goes to one relay however many web processes run) and delivers it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from typing import Any

import orjson
from channels.layers import BaseChannelLayer, get_channel_layer
from django.conf import settings

from edge.runtime.events import LIVE_EVENTS_STREAM

logger = logging.getLogger(__name__)

STAFF_GROUP = "live.staff"
NODES_GROUP = "live.nodes"
RELAY_GROUP = "live-board"  # the stream's consumer group
# A batch older than this when the relay reads it (a relay that was down) is of no use live.
STALE_BATCH_SECONDS = 10.0
NODE_EVENTS = frozenset({"node_started", "config_applied"})


def customer_group(customer_id: int) -> str:
    return f"live.customer.{customer_id}"


async def deliver_batch(data: bytes, layer: BaseChannelLayer | None = None) -> None:
    """Send one encoded batch to the groups of the boards that may see each event."""
    layer = layer or get_channel_layer()
    if layer is None:
        return
    batch = orjson.loads(data)
    node = str(batch.get("node", ""))
    calls: list[dict[str, Any]] = []
    by_customer: dict[int, list[dict[str, Any]]] = {}
    for event in batch.get("events", ()):
        if event.get("kind") in NODE_EVENTS:
            await layer.group_send(NODES_GROUP, {"type": "live.node", "node": node, "event": event})
            continue
        calls.append(event)
        customer = event.get("customer_id")
        if isinstance(customer, int):
            by_customer.setdefault(customer, []).append(event)
    if calls:
        await layer.group_send(STAFF_GROUP, {"type": "live.events", "node": node, "events": calls})
    for customer, events in by_customer.items():
        await layer.group_send(
            customer_group(customer), {"type": "live.events", "node": node, "events": events}
        )


# --- the relay from the Redis stream ------------------------------------------------------------

_relay: asyncio.Task[None] | None = None


def ensure_relay() -> None:
    """Start this process's relay once (with REDIS_URL only; the embedded edge needs none)."""
    global _relay
    if not settings.REDIS_URL or (_relay is not None and not _relay.done()):
        return
    _relay = asyncio.get_running_loop().create_task(relay_forever(settings.REDIS_URL))


async def relay_forever(url: str, *, stream: str = LIVE_EVENTS_STREAM) -> None:
    """Read the edges' batches from ``stream`` and deliver them; survives Redis outages."""
    import redis.asyncio as aioredis
    from redis.exceptions import RedisError, ResponseError

    consumer = f"{socket.gethostname()}-{os.getpid()}"
    client = aioredis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5)
    try:
        while True:
            try:
                try:
                    await client.xgroup_create(stream, RELAY_GROUP, id="$", mkstream=True)
                except ResponseError as exc:  # BUSYGROUP: another relay made it
                    if "BUSYGROUP" not in str(exc):
                        raise
                while True:
                    answer = await client.xreadgroup(
                        RELAY_GROUP, consumer, {stream: ">"}, count=100, block=1000, noack=True
                    )
                    await _deliver_entries(answer)
            except (RedisError, OSError) as exc:
                logger.warning("live events relay: %s; retrying in 1 s", exc)
                await asyncio.sleep(1)
    finally:
        await client.aclose()


async def _deliver_entries(answer: Any) -> None:
    now_ms = time.time() * 1000
    for _stream, entries in answer or ():
        for entry_id, fields in entries:
            stamp = int(entry_id.split(b"-")[0]) if isinstance(entry_id, bytes) else 0
            if now_ms - stamp > STALE_BATCH_SECONDS * 1000:
                continue
            data = fields.get(b"batch")
            if data:
                try:
                    await deliver_batch(data)
                except (ValueError, TypeError) as exc:
                    logger.warning("live events relay: bad batch %s: %s", entry_id, exc)
