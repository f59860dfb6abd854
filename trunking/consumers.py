"""The live board's WebSocket (``/ws/live/``): current state first, then changes, per tenant.

Authentication: the browser session (staff, or a member of a customer), or an API key given as
the ``Authorization: Api-Key …`` header, as the subprotocol ``api-key.<key>`` (what a browser
script can set; the server answers with subprotocol ``trunkline.live``). Not in the query
string: servers log request paths, and a key must never reach a log.
Anyone else is refused at the handshake (HTTP 403).

Messages to the client (JSON):

- ``{"type": "snapshot", "me": {...}, "trunks": [...], "edges": [...], "calls": [...],
  "history": [...]}``: on connect and every ``RESYNC_SECONDS``; the calls are asked of every
  edge's ``GET /calls`` (selectors.active_calls), so they replace whatever the client held;
  ``history`` is the last 15 minutes of CDRs per minute and reason (the chart's start);
- ``{"type": "events", "node": "edge-1", "events": [...]}``: call events as the edges batch
  them (about every 100 ms), only of the caller's own calls unless staff;
- ``{"type": "edge_calls", "edge": "edge-1", "calls": [...], "edges": [...]}``: after that edge
  restarted or applied a config, its calls as it now lists them (replacing its earlier ones).

The client may send ``{"type": "resync"}`` to get a snapshot at once.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from asgiref.sync import sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.db import close_old_connections

from accounts.authentication import api_key_for
from core.tenancy import Caller, caller_for_api_key, caller_for_user

from . import live, selectors

RESYNC_SECONDS = 15.0
SUBPROTOCOL = "trunkline.live"
KEY_SUBPROTOCOL_PREFIX = "api-key."


def _caller_from_scope(scope: dict[str, Any]) -> Caller | None:
    """The caller of a WebSocket handshake: API key (header or subprotocol) or session."""
    supplied = None
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            scheme, _, rest = value.decode("latin-1").partition(" ")
            if scheme.lower() == "api-key":
                supplied = rest
    for protocol in scope.get("subprotocols", ()):
        if protocol.startswith(KEY_SUBPROTOCOL_PREFIX):
            supplied = protocol[len(KEY_SUBPROTOCOL_PREFIX) :]
    if supplied is not None:
        key = api_key_for(supplied)
        return None if key is None else caller_for_api_key(key)
    user = scope.get("user")
    return None if user is None else caller_for_user(user)


def _in_thread(function: Any) -> Any:
    """Run ``function`` off the loop (it asks edges over HTTP: not on the one sync thread)."""

    def call(*args: Any, **kwargs: Any) -> Any:
        close_old_connections()
        try:
            return function(*args, **kwargs)
        finally:
            close_old_connections()

    return sync_to_async(call, thread_sensitive=False)


def board_snapshot(caller: Caller) -> dict[str, Any]:
    """Everything a board shows at connect, scoped to ``caller``."""
    answers = selectors.edges_calls()
    calls = selectors.active_calls(caller=caller, answers=answers).calls
    return {
        "type": "snapshot",
        "me": {
            "staff": caller.is_staff,
            "customer": None if caller.customer is None else caller.customer.name,
            "can_hang_up": caller.can_write,
        },
        "trunks": selectors.board_trunks(caller),
        "edges": selectors.board_edges(answers) if caller.is_staff else [],
        "calls": calls,
        "history": selectors.board_history(caller),
    }


def edge_snapshot(caller: Caller, edge: str) -> dict[str, Any] | None:
    """One edge's calls now (after it restarted or applied a config)."""
    from .models import EdgeNode

    node = EdgeNode.objects.filter(name=edge, enabled=True).first()
    if node is None:
        return None
    answers = [selectors.edge_calls(node)]
    return {
        "type": "edge_calls",
        "edge": edge,
        "reachable": answers[0].error is None,
        "calls": selectors.active_calls(caller=caller, answers=answers).calls,
        "edges": selectors.board_edges(answers) if caller.is_staff else [],
    }


class LiveBoardConsumer(AsyncJsonWebsocketConsumer):
    caller: Caller
    groups_joined: list[str]

    async def connect(self) -> None:
        self.groups_joined = []
        self._resync: asyncio.Task[None] | None = None
        caller = await _in_thread(_caller_from_scope)(self.scope)
        if caller is None:
            await self.close()  # before accept: the handshake is refused (403)
            return
        self.caller = caller
        wanted = [live.NODES_GROUP]
        if caller.is_staff:
            wanted.append(live.STAFF_GROUP)
        elif caller.customer is not None:
            wanted.append(live.customer_group(caller.customer.pk))
        for group in wanted:
            await self.channel_layer.group_add(group, self.channel_name)
            self.groups_joined.append(group)
        await self.accept(subprotocol=SUBPROTOCOL if self.scope.get("subprotocols") else None)
        live.ensure_relay()
        await self.send_snapshot()
        self._resync = asyncio.get_running_loop().create_task(self._resync_forever())

    async def disconnect(self, code: int) -> None:
        if self._resync is not None:
            self._resync.cancel()
        for group in self.groups_joined:
            await self.channel_layer.group_discard(group, self.channel_name)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        if isinstance(content, dict) and content.get("type") == "resync":
            await self.send_snapshot()

    async def send_snapshot(self) -> None:
        await self.send_json(await _in_thread(board_snapshot)(self.caller))

    async def _resync_forever(self) -> None:
        """Calls whose end we missed (an edge gone, a dropped batch) leave at the next resync."""
        while True:
            await asyncio.sleep(RESYNC_SECONDS)
            with contextlib.suppress(Exception):
                await self.send_snapshot()

    # --- channel-layer messages -------------------------------------------------------------

    async def live_events(self, message: dict[str, Any]) -> None:
        caller = self.caller
        events = [
            e for e in message["events"] if selectors.visible_to(caller, e.get("customer_id"))
        ]
        if events:
            await self.send_json({"type": "events", "node": message["node"], "events": events})

    async def live_node(self, message: dict[str, Any]) -> None:
        update = await _in_thread(edge_snapshot)(self.caller, message["node"])
        if update is not None:
            await self.send_json(update)
