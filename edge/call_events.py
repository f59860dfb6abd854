"""Live events of a call for the board: started, ringing, answered, ended.

The b2bua emits one `CallEvent` per change a viewer cares about (`call_event` builds it from a
call); the runtime's publisher (edge/runtime/events.py) batches and encodes them. Pure data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edge.calls import Call

__all__ = ["CallEvent", "call_event"]


@dataclass(slots=True, init=False, unsafe_hash=True)
class CallEvent:
    """A change of a call's state, for the live board."""

    kind: str  # "started" | "ringing" | "answered" | "ended"
    call_id: str
    trunk_id: int | None
    customer_id: int | None
    direction: str
    caller: str | None
    callee: str | None
    at: float
    reason: str | None = None
    final_code: int | None = None

    def __init__(
        self,
        kind: str,
        call_id: str,
        trunk_id: int | None,
        customer_id: int | None,
        direction: str,
        caller: str | None,
        callee: str | None,
        at: float,
        reason: str | None = None,
        final_code: int | None = None,
    ) -> None:
        self.kind = kind
        self.call_id = call_id
        self.trunk_id = trunk_id
        self.customer_id = customer_id
        self.direction = direction
        self.caller = caller
        self.callee = callee
        self.at = at
        self.reason = reason
        self.final_code = final_code

    def as_dict(self) -> dict[str, object]:
        """The fields, for JSON. Not orjson's own dataclass support: it reads the instance's
        memory layout directly and crashes on a class compiled by mypyc (edge/native.py)."""
        return {
            "kind": self.kind,
            "call_id": self.call_id,
            "trunk_id": self.trunk_id,
            "customer_id": self.customer_id,
            "direction": self.direction,
            "caller": self.caller,
            "callee": self.callee,
            "at": self.at,
            "reason": self.reason,
            "final_code": self.final_code,
        }


def call_event(
    call: Call, kind: str, wall: float, *, reason: str | None = None, final_code: int | None = None
) -> CallEvent:
    """The event of `kind` for `call` at wall-clock time `wall`."""
    return CallEvent(
        kind=kind,
        call_id=call.id,
        trunk_id=call.trunk.id,
        customer_id=call.customer_id,
        direction=call.direction,
        caller=call.caller_e164,
        callee=call.callee_e164,
        at=wall,
        reason=reason,
        final_code=final_code,
    )
