"""Digest challenges the b2bua is waiting on: an INVITE answered 407 whose retry may come.

The retry (same Call-ID, with credentials) continues the attempt; if none comes within the
timeout, the attempt ends as one CDR (reason `auth_required`). This module only keeps the book:
which Call-IDs were challenged, since when and until when. The b2bua answers, verifies and
schedules (each `PendingChallenge` reports its deadline through `next_timer`).

No I/O and no clock: time is the `now` argument (monotonic seconds).
"""

from __future__ import annotations

from edge.calls import Address
from edge.sip.message import Request

__all__ = ["Challenges", "PendingChallenge"]


class PendingChallenge:
    """An INVITE we answered 407: the same Call-ID coming back with credentials continues it."""

    __slots__ = ("deadline", "request", "source", "wall")

    def __init__(self, request: Request, source: Address, deadline: float, wall: float) -> None:
        self.request = request
        self.source = source
        self.deadline: float | None = deadline
        self.wall = wall  # when the attempt began: its CDR's setup time

    def next_timer(self) -> float | None:
        return self.deadline


class Challenges:
    __slots__ = ("_pending", "timeout")

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._pending: dict[str, PendingChallenge] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def challenged(
        self, request: Request, source: Address, now: float, wall: float
    ) -> PendingChallenge:
        """Note a 407 sent for `request`: a first one, or a new one for a retry (the timeout
        restarts; the attempt keeps its first request and start time)."""
        pending = self._pending.get(request.call_id)
        if pending is None:
            pending = PendingChallenge(request, source, now + self.timeout, wall)
            self._pending[request.call_id] = pending
        else:
            pending.deadline = now + self.timeout
        return pending

    def settle(self, call_id: str) -> None:
        """The retry came with credentials (right or wrong): the attempt goes on without us."""
        pending = self._pending.pop(call_id, None)
        if pending is not None:
            pending.deadline = None

    def expire(self, pending: PendingChallenge) -> bool:
        """Its deadline passed (or the edge stops): whether it was still waiting, in which case
        the caller writes its CDR. False for one settled meanwhile."""
        pending.deadline = None
        return self._pending.pop(pending.request.call_id, None) is pending

    def waiting(self) -> list[PendingChallenge]:
        return list(self._pending.values())
