"""Live call events: where the runtime hands the core's `CallEvent`s (the live board's feed).

The dispatcher calls `EventSink.publish(events)` once per input with the events that input
produced, on the event loop thread; a sink must return at once. `BatchingSink` collects them and
hands one orjson-encoded batch to a callback at most every ``interval`` seconds (one
``loop.call_later`` handle, never a task or timer per event); the live-board publisher
(Channels / Redis) plugs in as that callback. A slow or failing publisher costs events, never
calls: past ``max_pending`` the oldest events are dropped and counted, and so are the events of
a batch whose publisher failed (``trunkline_edge_events_dropped_total``).

Where the batches go (`live_events_sink`):

- a standalone edge with a Redis URL (``runedge`` in production) appends each batch to the Redis
  stream ``LIVE_EVENTS_STREAM`` (`RedisStreamPublisher`); the web side's relay
  (trunking/live.py) reads it with a consumer group and forwards it to the channel layer. Not
  channels_redis' ``group_send`` from here: that would tie the edge to channels_redis' private
  wire format (msgpack envelopes, group sorted sets, per-channel capacities) and to Django's
  settings; a stream is a public Redis type, bounded (``MAXLEN ~``), and its consumer group
  hands each batch to exactly one relay however many web processes run one.
- the embedded platform (``runplatform``) passes its own callback, which hands each batch to the
  in-memory channel layer on the same loop.
- otherwise a `NullSink`.

Besides the core's `CallEvent`s the runtime publishes `NodeEvent`s about the edge itself
(``node_started``, ``config_applied``): the web side re-reads that edge's calls on them, so an
edge that restarted leaves no ghost calls on the board.

Batch format (what the callback receives, UTF-8 JSON)::

    {"node": "edge-1", "events": [{"kind": "answered", "call_id": "...", "trunk_id": 7,
      "customer_id": 1, "direction": "outbound", "caller": "+1...", "callee": "+44...",
      "at": 1764000000.123, "reason": null, "final_code": null},
      {"kind": "config_applied", "at": 1764000000.2, "config_version": 43}, ...]}

This module never decides anything about calls and never blocks the loop: no I/O of its own.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import orjson

__all__ = [
    "LIVE_EVENTS_STREAM",
    "BatchCallback",
    "BatchingSink",
    "EventSink",
    "LiveEvent",
    "MemorySink",
    "NodeEvent",
    "NullSink",
    "RedisStreamPublisher",
    "encode_batch",
    "live_events_sink",
]

logger = logging.getLogger(__name__)

# The Redis stream standalone edges append their batches to (read by trunking/live.py).
LIVE_EVENTS_STREAM = "trunkline:live-events"
# Batches the stream keeps (approximately): ~100 s of one edge (10 batches a second, ~50 KB
# each at 500 calls/s), bounding Redis' memory when no relay reads; older batches are of no use
# to a live board, which skips them and resyncs from the edges' control APIs anyway.
LIVE_EVENTS_STREAM_MAXLEN = 1_000
# A Redis that does not answer within this costs the batch (counted), never a call.
PUBLISH_TIMEOUT = 0.5

# Called with one encoded batch; may be a plain function or a coroutine function.
BatchCallback = Callable[[bytes], Awaitable[None] | None]


class LiveEvent(Protocol):
    """What a sink carries: the core's `CallEvent` or the runtime's `NodeEvent`."""

    def as_dict(self) -> dict[str, object]: ...


@dataclass(frozen=True, slots=True)
class NodeEvent:
    """Something about the edge itself: ``node_started``, ``config_applied``."""

    kind: str
    at: float
    fields: dict[str, object] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return {"kind": self.kind, "at": self.at, **self.fields}


class EventSink(Protocol):
    """Receives the call events of one input; must not block."""

    def publish(self, events: Sequence[LiveEvent]) -> None: ...


def encode_batch(node: str, events: Sequence[LiveEvent]) -> bytes:
    """One batch as JSON: {"node": ..., "events": [each event's fields]}."""
    return orjson.dumps({"node": node, "events": [event.as_dict() for event in events]})


class NullSink:
    """Discards events: an edge without a live board."""

    def publish(self, events: Sequence[LiveEvent]) -> None:
        return None


class MemorySink:
    """Keeps the last ``maxlen`` events in memory (tests, debugging)."""

    def __init__(self, maxlen: int = 1000) -> None:
        self.events: deque[LiveEvent] = deque(maxlen=maxlen)

    def publish(self, events: Sequence[LiveEvent]) -> None:
        self.events.extend(events)


class BatchingSink:
    """Collects events and hands them to ``callback`` as one encoded batch per ``interval``.

    The first event after a quiet spell arms one ``call_later(interval)``; when it fires, every
    event collected so far goes out in one call. A coroutine callback runs as one task per
    batch with at most one in flight: events arriving meanwhile wait for the next batch.
    """

    def __init__(
        self,
        callback: BatchCallback,
        *,
        node: str,
        loop: asyncio.AbstractEventLoop | None = None,
        interval: float = 0.1,
        max_pending: int = 10_000,
    ) -> None:
        if interval <= 0 or max_pending < 1:
            raise ValueError("interval and max_pending must be positive")
        self._callback = callback
        self._node = node
        # None: the loop `publish` is first called on (so a sink can be built before it runs).
        self._given_loop = loop
        self.interval = interval
        self._pending: deque[LiveEvent] = deque(maxlen=max_pending)
        self._timer: asyncio.TimerHandle | None = None
        self._oldest = 0.0  # loop time the oldest pending event arrived
        self._in_flight: asyncio.Future[None] | None = None
        self._closed = False
        # Events lost: to a full buffer (a publisher that cannot keep up) or a failed batch.
        self.dropped = 0
        self.batches = 0  # batches handed to the callback
        self.failures = 0  # batches whose callback raised

    @property
    def _loop(self) -> asyncio.AbstractEventLoop:
        if self._given_loop is None:
            self._given_loop = asyncio.get_running_loop()
        return self._given_loop

    @property
    def pending(self) -> int:
        return len(self._pending)

    def publish(self, events: Sequence[LiveEvent]) -> None:
        if self._closed or not events:
            return
        pending = self._pending
        if not pending:
            self._oldest = self._loop.time()
        overflow = len(pending) + len(events) - (pending.maxlen or 0)
        if overflow > 0:
            self.dropped += overflow  # the deque drops the oldest itself
        pending.extend(events)
        if self._timer is None and self._in_flight is None:
            self._timer = self._loop.call_later(self.interval, self._on_timer)

    async def aclose(self) -> None:
        """Send what is collected, wait for the publisher, and accept no more events."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._in_flight is not None:
            await asyncio.wait([self._in_flight])
        if self._pending:
            self._send()
            if self._in_flight is not None:
                await asyncio.wait([self._in_flight])
        closer = getattr(self._callback, "aclose", None)
        if closer is not None:
            await closer()

    def _on_timer(self) -> None:
        self._timer = None
        if self._in_flight is None and self._pending:
            self._send()

    def _send(self) -> None:
        events = list(self._pending)
        self._pending.clear()
        self.batches += 1
        try:
            result = self._callback(encode_batch(self._node, events))
        except Exception:
            self.failures += 1
            self.dropped += len(events)
            logger.exception("live events publisher failed; %d events lost", len(events))
            return
        if inspect.isawaitable(result):
            self._in_flight = asyncio.ensure_future(result, loop=self._loop)
            self._in_flight.add_done_callback(functools.partial(self._on_published, len(events)))

    def _on_published(self, count: int, task: asyncio.Future[None]) -> None:
        self._in_flight = None
        if task.cancelled() or task.exception() is not None:
            self.failures += 1
            self.dropped += count
            if self.failures in (1, 10, 100) or self.failures % 1000 == 0:  # not per batch
                logger.error(
                    "live events publisher failed (%d batches so far): %s",
                    self.failures,
                    "cancelled" if task.cancelled() else task.exception(),
                )
        if self._pending and not self._closed and self._timer is None:
            # Events that waited for this publish go out one interval after the oldest came,
            # not one interval after the publish ended (a slow Redis would add its delay).
            delay = max(0.0, self._oldest + self.interval - self._loop.time())
            self._timer = self._loop.call_later(delay, self._on_timer)


class RedisStreamPublisher:
    """A `BatchCallback` that appends each batch to the Redis stream ``LIVE_EVENTS_STREAM``.

    One XADD per batch (about ten a second), capped by ``MAXLEN ~``. Every command gives up
    after ``timeout`` seconds and redis-py does not retry: a slow or absent Redis fails the
    batch (the sink counts its events as dropped) and the next batch tries again.
    """

    def __init__(
        self,
        url: str,
        *,
        stream: str = LIVE_EVENTS_STREAM,
        maxlen: int = LIVE_EVENTS_STREAM_MAXLEN,
        timeout: float = PUBLISH_TIMEOUT,
    ) -> None:
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        self.stream = stream
        self.maxlen = maxlen
        self._timeout = timeout
        self._redis = aioredis.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
        )

    async def __call__(self, batch: bytes) -> None:
        await asyncio.wait_for(
            self._redis.xadd(self.stream, {"batch": batch}, maxlen=self.maxlen, approximate=True),
            self._timeout * 2,
        )

    async def aclose(self) -> None:
        await self._redis.aclose()


def live_events_sink(*, node: str, redis_url: str | None, enabled: bool = True) -> EventSink:
    """The sink of a standalone edge: batches to Redis when it has a URL, else nowhere."""
    if not enabled or not redis_url:
        return NullSink()
    return BatchingSink(RedisStreamPublisher(redis_url), node=node)
