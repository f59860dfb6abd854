"""Rating: what a call costs, from a rate deck. Pure arithmetic and lookups; no Django, no I/O.

The rules (DESIGN.md "Billing"), written once here and used by ingest, re-rating and the
benchmarks:

- the rate is the row with the longest prefix of the called number that is in effect at the
  call's answer time (``effective_from <= t < effective_to``);
- billable seconds: the call's duration rounded up to whole seconds; nothing if that is zero;
  the first block if the call is shorter; else the first block plus the rest rounded up to the
  increment;
- cost = connect fee + rate per minute x billable seconds / 60, computed exactly in `Decimal`
  and rounded ONCE per call (to `COST_PLACES`, half up), never per increment;
- an unanswered attempt costs nothing (and is still recorded); an answered call with no rate
  is *unrated* with a reason, never silently free.

A `RateTable` is built once per deck version (a dict per prefix length, rows per prefix sorted by
start), so rating a record is at most one dict probe per digit of the number.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from enum import StrEnum

__all__ = [
    "COST_PLACES",
    "Rate",
    "RateTable",
    "Rated",
    "Unrated",
    "UnratedReason",
    "billable_seconds",
    "call_cost",
    "rate_call",
]

# Costs are kept to 1/10,000 of the currency unit (as balances and credit limits are) and
# rounded half up once per call; invoices round their totals to the currency's minor unit.
COST_PLACES = Decimal("0.0001")
_SIXTY = Decimal(60)
_ZERO = Decimal(0)


@dataclass(frozen=True, slots=True)
class Rate:
    """One row of a rate deck."""

    id: int
    prefix: str  # digits of the E.164 number without "+"
    destination: str
    rate_per_minute: Decimal
    connect_fee: Decimal
    first_block: int  # seconds, >= 1
    increment: int  # seconds, >= 1
    effective_from: datetime
    effective_to: datetime | None = None  # exclusive; None: open-ended

    def in_effect(self, at: datetime) -> bool:
        return self.effective_from <= at and (self.effective_to is None or at < self.effective_to)


class UnratedReason(StrEnum):
    """Why an answered call has no cost: the operator's list of calls to look at."""

    NO_DECK = "no_deck"  # no deck assigned to the customer (or trunk) at the call's time
    NO_RATE = "no_rate"  # the deck has no prefix of the number in effect then
    NO_NUMBER = "no_number"  # the called number is not E.164
    CURRENCY_MISMATCH = "currency_mismatch"  # the deck's currency is not the customer's


# Results are plain slotted classes, not frozen ones: a frozen dataclass costs a
# object.__setattr__ per field, and one is made per rated call.
@dataclass(slots=True)
class Rated:
    rate: Rate
    billable_seconds: int
    cost: Decimal


@dataclass(slots=True)
class Unrated:
    reason: UnratedReason


def billable_seconds(duration_ms: int, first_block: int, increment: int) -> int:
    """Seconds to charge for a call that lasted `duration_ms` (answer to end)."""
    if duration_ms <= 0:
        return 0
    seconds = -(-duration_ms // 1000)
    if seconds <= first_block:
        return first_block
    rest = seconds - first_block
    return first_block + -(-rest // increment) * increment


def call_cost(rate: Rate, billable: int) -> Decimal:
    """Connect fee plus the per-minute rate for `billable` seconds, rounded once."""
    if billable <= 0:
        return _ZERO.quantize(COST_PLACES)
    exact = rate.connect_fee + rate.rate_per_minute * billable / _SIXTY
    return exact.quantize(COST_PLACES, rounding=ROUND_HALF_UP)


class RateTable:
    """The rows of one deck version, indexed for longest-prefix lookups at a point in time."""

    __slots__ = ("_by_prefix", "_lengths")

    def __init__(self, rates: list[Rate]) -> None:
        by_prefix: dict[str, list[Rate]] = {}
        for rate in rates:
            by_prefix.setdefault(rate.prefix, []).append(rate)
        for rows in by_prefix.values():
            rows.sort(key=lambda r: r.effective_from)
        self._by_prefix = by_prefix
        # The prefix lengths present, longest first: a number is probed only at those.
        self._lengths = sorted({len(p) for p in by_prefix}, reverse=True)

    def __len__(self) -> int:
        return sum(len(rows) for rows in self._by_prefix.values())

    def lookup(self, digits: str, at: datetime) -> Rate | None:
        """The longest-prefix row in effect at `at` for `digits` (an E.164 number without +)."""
        get = self._by_prefix.get
        size = len(digits)
        for length in self._lengths:
            if length > size:
                continue
            rows = get(digits[:length])
            if rows is not None:
                rate = _in_effect(rows, at)
                if rate is not None:
                    return rate
        return None


def _in_effect(rows: list[Rate], at: datetime) -> Rate | None:
    """The row of one prefix in effect at `at`; rows are sorted by start and do not overlap."""
    if len(rows) == 1:
        row = rows[0]
        return row if row.in_effect(at) else None
    index = bisect.bisect_right(rows, at, key=lambda r: r.effective_from) - 1
    if index < 0:
        return None
    row = rows[index]
    return row if row.in_effect(at) else None


def rate_call(
    table: RateTable | None, number_e164: str, answered_at: datetime | None, duration_ms: int
) -> Rated | Unrated | None:
    """The cost of one call; None for an unanswered attempt (it costs nothing, needs no rate)."""
    if answered_at is None:
        return None
    if table is None:
        return Unrated(UnratedReason.NO_DECK)
    if not number_e164.startswith("+") or not number_e164[1:].isdigit():
        return Unrated(UnratedReason.NO_NUMBER)
    rate = table.lookup(number_e164[1:], answered_at)
    if rate is None:
        return Unrated(UnratedReason.NO_RATE)
    billable = billable_seconds(duration_ms, rate.first_block, rate.increment)
    return Rated(rate=rate, billable_seconds=billable, cost=call_cost(rate, billable))
