"""Per-trunk counters: concurrent calls (channels) and new calls per second (token bucket).

The b2bua's core never calls them: once policy has admitted a call it emits `AcquireSlot` and
waits; the runtime asks its `Limits` (`decide`) and feeds the answer back as `SlotGranted` or
`SlotRefused(reason)` (`B2bua.slot_decided`). `LocalLimits` counts on this edge only and answers
at once; the cluster-wide version (edge/runtime/cluster_limits.py, Redis) answers later through
its callback, falling back to local counting when Redis is unreachable. Each call is decided
once. When a call that asked for a slot ends, the core emits `ReleaseSlot` exactly once (a
release of a slot never granted, or still being decided, is harmless).

No I/O and no clock: time is the `now` argument (monotonic seconds).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, TypeAlias

from mypy_extensions import mypyc_attr

from edge.config import TrunkPolicy
from edge.policy import Usage, limit_refusal

__all__ = [
    "AcquireSlot",
    "Limits",
    "LocalLimits",
    "ReleaseSlot",
    "SlotDecision",
    "SlotGranted",
    "SlotRefused",
    "TokenBucket",
    "decide",
]


@dataclass(slots=True, init=False, unsafe_hash=True)
class AcquireSlot:
    """Core output: take one of `trunk`'s channels (and a CPS token if `count_cps`: outbound
    calls) for `call_id`, then answer `B2bua.slot_decided`."""

    call_id: str
    trunk: TrunkPolicy
    count_cps: bool

    def __init__(self, call_id: str, trunk: TrunkPolicy, count_cps: bool) -> None:
        self.call_id = call_id
        self.trunk = trunk
        self.count_cps = count_cps


@dataclass(slots=True, init=False, unsafe_hash=True)
class ReleaseSlot:
    """Core output: the call that asked for a slot is over; give the slot back."""

    call_id: str
    trunk_id: int

    def __init__(self, call_id: str, trunk_id: int) -> None:
        self.call_id = call_id
        self.trunk_id = trunk_id


@dataclass(slots=True, init=False, unsafe_hash=True)
class SlotGranted:
    """Core input: the call holds its slot."""

    call_id: str

    def __init__(self, call_id: str) -> None:
        self.call_id = call_id


@dataclass(slots=True, init=False, unsafe_hash=True)
class SlotRefused:
    """Core input: no slot; `reason` is the limit it broke (`channel_limit` or `cps_limit`)."""

    call_id: str
    reason: str

    def __init__(self, call_id: str, reason: str) -> None:
        self.call_id = call_id
        self.reason = reason


SlotDecision: TypeAlias = SlotGranted | SlotRefused


class TokenBucket:
    """`rate` tokens per second, holding at most `burst`; starts full."""

    __slots__ = ("_last", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._last: float | None = None

    def _refill(self, now: float) -> float:
        last = self._last
        # A clock that goes backwards (it should not: monotonic) refills nothing.
        if last is not None and now > last:
            self._tokens = min(self.burst, self._tokens + (now - last) * self.rate)
        if last is None or now > last:
            self._last = now
        return self._tokens

    def tokens(self, now: float) -> float:
        return self._refill(now)

    def available(self, now: float) -> bool:
        """Whether `take(now)` would succeed; takes nothing."""
        return self._refill(now) >= 1.0

    def take(self, now: float) -> bool:
        if self._refill(now) >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    def reconfigure(self, rate: float, burst: float) -> None:
        """New limits from a new config, keeping the tokens already earned (up to `burst`)."""
        self.rate = rate
        self.burst = burst
        self._tokens = min(self._tokens, float(burst))


class Limits(Protocol):
    """What the b2bua needs from counters, local or cluster-wide.

    `acquire` answers at once (True or False) or, for counters that live elsewhere (Redis),
    returns None: the decision comes later through the counters' own callback. `usage` only
    says which limit a refusal broke; it decides nothing.
    """

    def usage(self, trunk: TrunkPolicy, now: float) -> Usage: ...

    def acquire(
        self, trunk: TrunkPolicy, call_id: str, now: float, *, count_cps: bool = True
    ) -> bool | None: ...

    def release(self, trunk_id: int, call_id: str) -> None: ...

    def active_calls(self, trunk_id: int) -> int: ...


class _TrunkCounters:
    __slots__ = ("bucket", "calls")

    def __init__(self, max_cps: int) -> None:
        self.calls: set[str] = set()
        self.bucket = TokenBucket(max_cps, max_cps)


@mypyc_attr(allow_interpreted_subclasses=True)  # edge.runtime.cluster_limits extends it
class LocalLimits:
    """This edge's counters for every trunk.

    A trunk's bucket outlives its calls: dropping it when idle would hand out a fresh burst
    to whoever hangs up quickly and calls again. Memory is one small object per trunk seen.
    """

    __slots__ = ("_trunks",)

    def __init__(self) -> None:
        self._trunks: dict[int, _TrunkCounters] = {}

    def _counters(self, trunk: TrunkPolicy) -> _TrunkCounters:
        counters = self._trunks.get(trunk.id)
        if counters is None:
            counters = self._trunks[trunk.id] = _TrunkCounters(trunk.max_cps)
        elif counters.bucket.rate != trunk.max_cps:
            counters.bucket.reconfigure(trunk.max_cps, trunk.max_cps)
        return counters

    def usage(self, trunk: TrunkPolicy, now: float) -> Usage:
        counters = self._counters(trunk)
        return Usage(len(counters.calls), counters.bucket.available(now))

    def acquire(
        self, trunk: TrunkPolicy, call_id: str, now: float, *, count_cps: bool = True
    ) -> bool:
        """Take a channel and (if `count_cps`, for outbound calls) a CPS token, or neither.

        Acquiring a call that already holds a slot succeeds without taking anything.
        """
        counters = self._counters(trunk)
        calls = counters.calls
        if call_id in calls:
            return True
        if len(calls) >= trunk.max_channels:
            return False
        if count_cps and not counters.bucket.take(now):
            return False
        calls.add(call_id)
        return True

    def release(self, trunk_id: int, call_id: str) -> None:
        counters = self._trunks.get(trunk_id)
        if counters is not None:
            counters.calls.discard(call_id)

    def active_calls(self, trunk_id: int) -> int:
        counters = self._trunks.get(trunk_id)
        return 0 if counters is None else len(counters.calls)


def decide(limits: Limits, slot: AcquireSlot, now: float) -> SlotDecision | None:
    """Ask `limits` for the slot; the answer for the core, or None when it comes later."""
    granted = limits.acquire(slot.trunk, slot.call_id, now, count_cps=slot.count_cps)
    if granted is None:
        return None
    if granted:
        return SlotGranted(slot.call_id)
    refusal = limit_refusal(slot.trunk, limits.usage(slot.trunk, now), count_cps=slot.count_cps)
    # A refused acquire whose usage shows room (a CPS token taken meanwhile): the bucket.
    return SlotRefused(slot.call_id, refusal.reason if refusal is not None else "cps_limit")
