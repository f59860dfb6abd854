"""Live call events: where the runtime hands the core's `CallEvent`s (the live board's feed).

The dispatcher calls `EventSink.publish(events)` once per input with the events that input
produced, on the event loop thread; a sink must return at once. `BatchingSink` collects them and
hands one orjson-encoded batch to a callback at most every ``interval`` seconds (one
``loop.call_later`` handle, never a task or timer per event); the live-board publisher
(Channels / Redis) plugs in as that callback. A slow or failing publisher costs events, never
calls: past ``max_pending`` the oldest events are dropped and counted.

Batch format (what the callback receives, UTF-8 JSON)::

    {"node": "edge-1", "events": [{"kind": "answered", "call_id": "...", "trunk_id": 7,
      "customer_id": 1, "direction": "outbound", "caller": "+1...", "callee": "+44...",
      "at": 1764000000.123, "reason": null, "final_code": null}, ...]}

This module never decides anything about calls and never blocks the loop: no I/O of its own.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Protocol

import orjson

if TYPE_CHECKING:
    from edge.b2bua import CallEvent

__all__ = ["BatchCallback", "BatchingSink", "EventSink", "MemorySink", "NullSink", "encode_batch"]

logger = logging.getLogger(__name__)

# Called with one encoded batch; may be a plain function or a coroutine function.
BatchCallback = Callable[[bytes], Awaitable[None] | None]


class EventSink(Protocol):
    """Receives the call events of one input; must not block."""

    def publish(self, events: list[CallEvent]) -> None: ...


def encode_batch(node: str, events: list[CallEvent]) -> bytes:
    """One batch as JSON: {"node": ..., "events": [each event's fields]}."""
    return orjson.dumps({"node": node, "events": [event.as_dict() for event in events]})


class NullSink:
    """Discards events: an edge without a live board."""

    def publish(self, events: list[CallEvent]) -> None:
        return None


class MemorySink:
    """Keeps the last ``maxlen`` events in memory (tests, debugging)."""

    def __init__(self, maxlen: int = 1000) -> None:
        self.events: deque[CallEvent] = deque(maxlen=maxlen)

    def publish(self, events: list[CallEvent]) -> None:
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
        self._pending: deque[CallEvent] = deque(maxlen=max_pending)
        self._timer: asyncio.TimerHandle | None = None
        self._in_flight: asyncio.Future[None] | None = None
        self._closed = False
        self.dropped = 0  # events lost to a full buffer (a publisher that cannot keep up)
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

    def publish(self, events: list[CallEvent]) -> None:
        if self._closed or not events:
            return
        pending = self._pending
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
            logger.exception("live events publisher failed; %d events lost", len(events))
            return
        if inspect.isawaitable(result):
            self._in_flight = asyncio.ensure_future(result, loop=self._loop)
            self._in_flight.add_done_callback(self._on_published)

    def _on_published(self, task: asyncio.Future[None]) -> None:
        self._in_flight = None
        if not task.cancelled() and task.exception() is not None:
            self.failures += 1
            logger.error("live events publisher failed: %s", task.exception())
        if self._pending and not self._closed and self._timer is None:
            self._timer = self._loop.call_later(self.interval, self._on_timer)
