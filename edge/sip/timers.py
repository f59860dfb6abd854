"""SIP transaction timers as data, and the deadline queue a runtime fires them from.

`TimerConfig` turns T1, T2 and T4 into the initial value of every timer of RFC 3261 section 17
(table 4) plus RFC 6026's L and M, for reliable and unreliable transports. `TimerQueue` keeps
the deadlines of many objects in one heap so that the runtime arms one OS timer for all of
them. Deadlines are plain floats derived from the `now` the caller passes: no clock, no asyncio.
"""

from __future__ import annotations

import enum
import functools
import heapq
import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

from edge.sip.errors import LocalProtocolError
from edge.sip.tables import ShardedDict

__all__ = ["Timer", "TimerConfig", "TimerQueue"]


class Timer(enum.Enum):
    # Members are singletons, so identity hashing (in C) is right for them; Enum's own
    # __hash__ is Python code, and timers key the transactions' dict lookups.
    __hash__ = object.__hash__

    A = "A"  # client INVITE: retransmit the request (unreliable transports only)
    B = "B"  # client INVITE: give up waiting for any response
    D = "D"  # client INVITE: absorb retransmitted non-2xx finals, re-ACKing them
    E = "E"  # client non-INVITE: retransmit the request (unreliable transports only)
    F = "F"  # client non-INVITE: give up waiting for a final response
    G = "G"  # server INVITE: retransmit the non-2xx final (unreliable transports only)
    H = "H"  # server INVITE: give up waiting for the ACK of a non-2xx final
    I = "I"  # noqa: E741 (RFC 3261's name) server INVITE: absorb ACK retransmissions
    J = "J"  # server non-INVITE: absorb request retransmissions
    K = "K"  # client non-INVITE: absorb response retransmissions
    L = "L"  # server INVITE after 2xx (RFC 6026): absorb INVITE retransmissions
    M = "M"  # client INVITE after 2xx (RFC 6026): pass further 2xx to the TU


@dataclass(frozen=True, slots=True)
class TimerConfig:
    """RFC 3261 timer values, in seconds."""

    t1: float = 0.5  # round-trip time estimate
    t2: float = 4.0  # longest retransmission interval of non-INVITE requests and INVITE finals
    t4: float = 5.0  # longest time a message stays in the network
    timer_d: float = 32.0  # RFC 3261 asks for at least 32 s on unreliable transports

    def __post_init__(self) -> None:
        if not 0 < self.t1 <= self.t2 or self.t4 <= 0 or self.timer_d < 0:
            raise LocalProtocolError("timer values need 0 < t1 <= t2, t4 > 0, timer_d >= 0")

    def __hash__(self) -> int:
        # Written out so that it is compiled: the dataclass-made one runs interpreted, and each
        # new transaction looks its durations up by config (`_durations`' cache).
        return hash((self.t1, self.t2, self.t4, self.timer_d))

    def durations(self, *, reliable: bool) -> Mapping[Timer, float]:
        """The initial value of each timer on one kind of transport. A timer missing from the
        result never runs there: reliable transports do not retransmit (no A, E, G), and they
        linger for zero seconds (D, I, J, K = 0). The mapping is shared: do not modify it."""
        return _durations(self, reliable)


@functools.cache
def _durations(config: TimerConfig, reliable: bool) -> Mapping[Timer, float]:
    give_up = 64 * config.t1
    common = {timer: give_up for timer in (Timer.B, Timer.F, Timer.H, Timer.L, Timer.M)}
    if reliable:
        linger = {Timer.D: 0.0, Timer.I: 0.0, Timer.J: 0.0, Timer.K: 0.0}
        return {**common, **linger}
    unreliable = {
        Timer.A: config.t1,
        Timer.E: config.t1,
        Timer.G: config.t1,
        Timer.D: config.timer_d,
        Timer.I: config.t4,
        Timer.J: give_up,
        Timer.K: config.t4,
    }
    return {**common, **unreliable}


# Anything hashable by identity: calls, transactions, retransmitters.
ScheduledT = TypeVar("ScheduledT")


# Stale heap entries tolerated beyond twice the live ones before the heap is rebuilt. A stale
# entry may be an ended call's (it holds the call, its transactions and messages: about 10 KiB),
# so this is also how many ended calls a queue can keep alive once traffic stops; 1,024 kept
# about 10 MiB after 5,000 calls ended (issue 15). A rebuild costs O(live), so a small floor
# only makes rebuilds of small heaps more frequent, never the amortized cost per update higher.
COMPACT_MIN = 64


class TimerQueue(Generic[ScheduledT]):
    """The deadlines of many objects.

    Call `update(item, deadline)` after anything that may have moved an item's deadline (None:
    it has none). The caller reads the deadline (`item.next_timer()`) where it knows the item's
    class: through a protocol the compiled core would make a generic method call, about 2,000
    instructions, some 30 times a call. A moved deadline leaves its old heap entry behind;
    entries that no longer match their item's current deadline are skipped when they reach the
    top (lazy deletion), which keeps every update O(log n) without searching the heap. Stale
    entries still hold their item, and an answered call's (its maximum duration, hours away)
    would keep every call that ended before it in memory until then: when they outnumber the
    live ones (and `COMPACT_MIN`), the heap is rebuilt from the live deadlines, O(n) once per n
    updates; and when the last deadline goes, the heap is emptied, so that a queue whose
    traffic has stopped holds nothing.
    """

    __slots__ = ("_counter", "_deadlines", "_heap", "_live")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, ScheduledT]] = []
        # Every item's current deadline; sharded: it holds every lingering transaction
        # (edge.sip.tables).
        self._deadlines: ShardedDict[ScheduledT, float] = ShardedDict()
        self._live = 0  # len(self._deadlines), kept here: the shards' sum is 16 lookups
        self._counter = itertools.count()  # breaks ties so that items are never compared

    def update(self, item: ScheduledT, deadline: float | None) -> None:
        deadlines = self._deadlines
        if deadline is None:
            if deadlines.pop(item) is None:
                return
            self._live -= 1
            if not self._live:
                self._heap.clear()  # every entry left is stale
                return
        else:
            current = deadlines.get(item)
            if current == deadline:
                return
            if current is None:
                self._live += 1
            deadlines[item] = deadline
            heapq.heappush(self._heap, (deadline, next(self._counter), item))
        if len(self._heap) > 2 * self._live + COMPACT_MIN:
            self._compact()

    def _compact(self) -> None:
        """Drop the stale entries: one entry per item with a deadline, in heap order."""
        counter = self._counter
        heap = [(deadline, next(counter), item) for item, deadline in self._deadlines.items()]
        heapq.heapify(heap)
        self._heap = heap

    def shrink(self) -> None:
        """Give back what a queue that was large still holds: CPython's dicts and lists keep
        their largest table after their entries go (one sized for 20,000 deadlines is about
        1 MiB). O(live): for a quiet moment (`B2bua.release_memory`)."""
        self._deadlines.compact()  # sized for the live entries
        self._compact()

    def next_deadline(self) -> float | None:
        heap = self._heap
        deadlines = self._deadlines
        while heap:
            deadline, _, item = heap[0]
            if deadlines.get(item) == deadline:
                return deadline
            heapq.heappop(heap)
        return None

    def pop_due(self, now: float) -> list[ScheduledT]:
        """Remove and return, earliest first, the items whose deadline is at or before `now`."""
        heap = self._heap
        deadlines = self._deadlines
        due = []
        while heap and heap[0][0] <= now:
            deadline, _, item = heapq.heappop(heap)
            if deadlines.get(item) == deadline:
                deadlines.pop(item)
                due.append(item)
        self._live -= len(due)
        if not self._live:
            heap.clear()  # only stale entries are left (see `update`)
        return due

    def __len__(self) -> int:
        return self._live
