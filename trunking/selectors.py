"""Reads of the trunking app that are more than a filter: the calls in progress on the edges.

Active calls live on the edges, not in the database: they are asked of every enabled edge's
control API (``GET /calls``), in parallel, each within ``EDGE_CALLS_TIMEOUT`` seconds. An edge
that does not answer contributes no calls and is reported as unreachable, so the board never
shows calls it cannot vouch for (no ghosts of a dead edge). Every read is scoped to the caller.
"""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.db.models import Count, Q
from django.db.models.functions import TruncMinute
from django.utils import timezone

from accounts.models import Customer
from core.tenancy import Caller

from .models import ConfigRevision, EdgeNode, Trunk
from .push import EdgePushError, _request

EDGE_CALLS_TIMEOUT = 2.0  # seconds an edge gets to list its calls

# The fields of one active call, as the REST API, the WebSocket and the page show it.
CALL_FIELDS = (
    "call_id", "edge", "trunk_id", "trunk", "customer_id", "customer", "direction", "caller",
    "callee", "state", "setup_at", "answer_at",
)  # fmt: skip


@dataclass
class EdgeCalls:
    """One edge's answer: its calls (raw, as the edge lists them) or why there are none."""

    node: EdgeNode
    calls: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    health: dict[str, Any] = field(default_factory=dict)  # its GET /health answer


def edge_calls(node: EdgeNode) -> EdgeCalls:
    """The calls in progress on ``node`` (its control API's ``GET /calls``) and its health
    (``GET /health``: the config version it runs, draining or not)."""
    try:
        answer = _request(node, "GET", "/calls", None, EDGE_CALLS_TIMEOUT)
        calls = answer["calls"]
        if not isinstance(calls, list):
            raise TypeError("calls is not a list")
        health = _request(node, "GET", "/health", None, EDGE_CALLS_TIMEOUT)
    except (EdgePushError, KeyError, TypeError) as exc:
        return EdgeCalls(node, error=str(exc) or type(exc).__name__)
    return EdgeCalls(
        node,
        calls=[call for call in calls if isinstance(call, dict)],
        health=health if isinstance(health, dict) else {},
    )


def edges_calls(nodes: Iterable[EdgeNode] | None = None) -> list[EdgeCalls]:
    """Every enabled edge's calls, asked in parallel."""
    nodes = list(EdgeNode.objects.filter(enabled=True) if nodes is None else nodes)
    if len(nodes) <= 1:
        return [edge_calls(node) for node in nodes]
    with ThreadPoolExecutor(max_workers=min(len(nodes), 16)) as pool:
        return list(pool.map(edge_calls, nodes))


class Names:
    """Trunk and customer names by id, loaded once per request (not per call)."""

    def __init__(self, caller: Caller) -> None:
        trunks = caller.scope(Trunk.objects.select_related("customer"))
        self.trunks = {t.pk: t for t in trunks}
        self.customers = {t.customer_id: t.customer.name for t in self.trunks.values()}
        if caller.is_staff:
            self.customers |= dict(Customer.objects.values_list("pk", "name"))

    def trunk(self, trunk_id: object) -> str | None:
        trunk = self.trunks.get(trunk_id)  # type: ignore[call-overload]
        return None if trunk is None else trunk.name

    def customer(self, customer_id: object) -> str | None:
        return self.customers.get(customer_id)  # type: ignore[call-overload]


def call_row(raw: dict[str, Any], edge: str, names: Names) -> dict[str, Any]:
    """An edge's call in the shape of CALL_FIELDS."""
    return {
        "call_id": str(raw.get("call_id", "")),
        "edge": edge,
        "trunk_id": raw.get("trunk_id"),
        "trunk": names.trunk(raw.get("trunk_id")),
        "customer_id": raw.get("customer_id"),
        "customer": names.customer(raw.get("customer_id")),
        "direction": raw.get("direction"),
        "caller": raw.get("caller"),
        "callee": raw.get("callee"),
        "state": raw.get("state"),
        "setup_at": raw.get("setup_at"),
        "answer_at": raw.get("answer_at"),
    }


def visible_to(caller: Caller, customer_id: object) -> bool:
    """May ``caller`` see a call (or an event) of ``customer_id``?"""
    if caller.is_staff:
        return True
    return caller.customer is not None and customer_id == caller.customer.pk


def _matches(row: dict[str, Any], search: str) -> bool:
    needle = search.lower()
    return any(
        needle in str(row[name]).lower()
        for name in ("call_id", "caller", "callee", "trunk", "customer", "edge")
        if row[name] is not None
    )


@dataclass
class ActiveCalls:
    calls: list[dict[str, Any]]
    edges: list[EdgeCalls]


def active_calls(
    *,
    caller: Caller,
    customer_id: int | None = None,
    trunk_id: int | None = None,
    edge: str | None = None,
    search: str | None = None,
    answers: list[EdgeCalls] | None = None,
) -> ActiveCalls:
    """The calls in progress on every edge that ``caller`` may see, filtered, oldest first."""
    answers = edges_calls() if answers is None else answers
    names = Names(caller)
    rows = []
    for answer in answers:
        for raw in answer.calls:
            if not visible_to(caller, raw.get("customer_id")):
                continue
            row = call_row(raw, answer.node.name, names)
            if customer_id is not None and row["customer_id"] != customer_id:
                continue
            if trunk_id is not None and row["trunk_id"] != trunk_id:
                continue
            if edge is not None and row["edge"] != edge:
                continue
            if search and not _matches(row, search):
                continue
            rows.append(row)
    rows.sort(key=lambda row: (row["setup_at"] or "", row["call_id"]))
    return ActiveCalls(calls=rows, edges=answers)


def find_active_call(*, caller: Caller, call_id: str) -> tuple[EdgeNode, dict[str, Any]] | None:
    """The edge carrying ``call_id`` and the call, if ``caller`` may see it; else None."""
    for answer in edges_calls():
        for raw in answer.calls:
            if str(raw.get("call_id")) == call_id and visible_to(caller, raw.get("customer_id")):
                return answer.node, call_row(raw, answer.node.name, Names(caller))
    return None


def board_trunks(caller: Caller) -> list[dict[str, Any]]:
    """The trunks on the board, with their limits (the gauges' full scale)."""
    trunks = caller.scope(Trunk.objects.select_related("customer")).order_by(
        "customer__name", "name"
    )
    return [
        {
            "id": t.pk,
            "name": t.name,
            "customer_id": t.customer_id,
            "customer": t.customer.name,
            "status": t.status,
            "max_channels": t.max_channels,
            "max_cps": t.max_cps,
        }
        for t in trunks
    ]


def board_edges(answers: list[EdgeCalls]) -> list[dict[str, Any]]:
    """The edges just asked: the config version each runs (its /health), its lag behind the
    current version, and its health; an edge that did not answer is "unreachable"."""
    current = ConfigRevision.objects.values_list("pk", flat=True).first()
    rows = []
    for answer in sorted(answers, key=lambda a: a.node.name):
        node = answer.node
        applied = answer.health.get("config_version", node.applied_version)
        if answer.error is not None:
            health = "unreachable"
        else:
            health = "draining" if answer.health.get("status") == "draining" else "ok"
        lag = None
        if isinstance(current, int) and isinstance(applied, int):
            lag = max(current - applied, 0)
        rows.append(
            {
                "name": node.name,
                "applied_version": applied,
                "config_version": current,
                "lag": lag,
                "health": health,
                "active_calls": answer.health.get("active_calls"),
                "error": answer.error,
            }
        )
    return rows


HISTORY_MINUTES = 15


def board_history(caller: Caller, *, now: datetime | None = None) -> list[dict[str, Any]]:
    """The last 15 minutes of call attempts from the CDRs loaded so far, per minute and
    reason: what the board's chart starts from (live events add to it). CDRs reach the
    database a little after the calls end, so the last minute is usually incomplete."""
    from billing.models import Cdr

    now = now or timezone.now()
    since = (now - timedelta(minutes=HISTORY_MINUTES)).replace(second=0, microsecond=0)
    rows = (
        caller.scope(Cdr.objects.filter(setup_at__gte=since))
        .annotate(minute=TruncMinute("setup_at"))
        .values("minute", "reason")
        .annotate(attempts=Count("id"), answers=Count("id", filter=Q(answer_at__isnull=False)))
        .order_by("minute", "reason")
    )
    return [
        {
            "minute": row["minute"].isoformat(),
            "reason": row["reason"],
            "attempts": row["attempts"],
            "answers": row["answers"],
        }
        for row in rows
    ]
