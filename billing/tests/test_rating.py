"""The rating arithmetic (billing.rating): tables per increment pair, hand-computed examples,
and properties that hold for every duration and rate."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from billing.rating import (
    COST_PLACES,
    Rate,
    Rated,
    RateTable,
    Unrated,
    UnratedReason,
    billable_seconds,
    call_cost,
    rate_call,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def rate(prefix="1", per_minute="0.0100", connect="0", first=60, inc=60, start=T0, end=None, id=1):
    return Rate(
        id=id,
        prefix=prefix,
        destination=f"dest {prefix}",
        rate_per_minute=Decimal(per_minute),
        connect_fee=Decimal(connect),
        first_block=first,
        increment=inc,
        effective_from=start,
        effective_to=end,
    )


# (first block, increment) -> [(duration in ms, billable seconds)], worked by hand.
BILLABLE = {
    (60, 60): [(0, 0), (1, 60), (1_000, 60), (59_999, 60), (60_000, 60), (60_001, 120),
               (61_000, 120), (120_000, 120), (121_000, 180)],
    (60, 6): [(0, 0), (500, 60), (60_000, 60), (60_001, 66), (61_000, 66), (66_000, 66),
              (66_001, 72), (125_000, 126)],
    (30, 6): [(0, 0), (1_000, 30), (30_000, 30), (31_000, 36), (36_000, 36), (37_000, 42),
              (95_500, 96)],
    (6, 6): [(0, 0), (1, 6), (6_000, 6), (6_001, 12), (59_000, 60), (61_000, 66)],
    (1, 1): [(0, 0), (1, 1), (999, 1), (1_000, 1), (1_001, 2), (61_500, 62)],
}  # fmt: skip


@pytest.mark.parametrize(
    "first, inc, duration_ms, expected",
    [(f, i, d, b) for (f, i), rows in BILLABLE.items() for d, b in rows],
)
def test_billable_seconds_table(first, inc, duration_ms, expected):
    assert billable_seconds(duration_ms, first, inc) == expected


# Hand-computed costs: one per increment pair.
#  60/60 at 0.0100/min, 61 s: 120 s billable -> 2 min x 0.01 = 0.0200
#  60/6 at 0.0150/min + 0.0500 connect, 61 s: 66 s -> 0.05 + 0.015 x 1.1 = 0.0665
#  30/6 at 0.0333/min, 31 s: 36 s -> 0.0333 x 0.6 = 0.01998 -> 0.0200 (rounded once)
#  6/6 at 0.1000/min, 7 s: 12 s -> 0.1 x 0.2 = 0.0200
#  1/1 at 0.0070/min, 1 s: 1 s -> 0.007 / 60 = 0.000116666... -> 0.0001
COSTS = [
    (60, 60, "0.0100", "0", 61_000, "0.0200"),
    (60, 6, "0.0150", "0.0500", 61_000, "0.0665"),
    (30, 6, "0.0333", "0", 31_000, "0.0200"),
    (6, 6, "0.1000", "0", 7_000, "0.0200"),
    (1, 1, "0.0070", "0", 1_000, "0.0001"),
]


@pytest.mark.parametrize("first, inc, per_minute, connect, duration_ms, expected", COSTS)
def test_cost_hand_computed(first, inc, per_minute, connect, duration_ms, expected):
    row = rate(per_minute=per_minute, connect=connect, first=first, inc=inc)
    result = rate_call(RateTable([row]), "+14155550100", T0 + timedelta(hours=1), duration_ms)
    assert isinstance(result, Rated)
    assert result.cost == Decimal(expected)
    assert result.rate is row


def test_rounding_is_once_per_call_not_per_increment():
    # 1/1 at 0.0070/min for 100 s: 100 x 0.000116666 = 0.011666... -> 0.0117. Rounding each
    # second first would give 100 x 0.0001 = 0.0100.
    row = rate(per_minute="0.0070", first=1, inc=1)
    assert call_cost(row, 100) == Decimal("0.0117")


def test_longest_prefix_wins_and_time_matters():
    later = T0 + timedelta(days=30)
    table = RateTable(
        [
            rate(prefix="1", per_minute="0.0100", id=1),
            rate(prefix="1415", per_minute="0.0200", id=2, end=later),
            rate(prefix="1415", per_minute="0.0300", id=3, start=later),
            rate(prefix="14155", per_minute="0.0400", id=4, start=later),
        ]
    )
    assert table.lookup("14155550100", T0).id == 2
    assert table.lookup("14155550100", later).id == 4
    assert table.lookup("14160000000", later).id == 1  # only "1" matches 1416
    assert table.lookup("14150000000", later).id == 3
    assert table.lookup("4420", T0) is None
    assert table.lookup("14155550100", T0 - timedelta(seconds=1)) is None


def test_unanswered_costs_nothing_and_unrated_has_a_reason():
    table = RateTable([rate(prefix="44")])
    assert rate_call(table, "+14155550100", None, 0) is None
    assert rate_call(table, "+14155550100", T0, 5_000) == Unrated(UnratedReason.NO_RATE)
    assert rate_call(None, "+14155550100", T0, 5_000) == Unrated(UnratedReason.NO_DECK)
    assert rate_call(table, "4155550100", T0, 5_000) == Unrated(UnratedReason.NO_NUMBER)


blocks = st.sampled_from(list(BILLABLE)) | st.tuples(st.integers(1, 600), st.integers(1, 600))


@given(blocks, st.integers(0, 10 * 3600 * 1000))
def test_billable_properties(block, duration_ms):
    first, inc = block
    billed = billable_seconds(duration_ms, first, inc)
    seconds = -(-duration_ms // 1000)
    if duration_ms == 0:
        assert billed == 0
        return
    assert billed >= seconds  # never less than the call
    assert billed >= first  # at least the first block
    if billed > first:
        assert (billed - first) % inc == 0  # whole increments after the first block
        assert billed - seconds < inc  # and no more than one increment too many
    # Longer calls never cost fewer seconds.
    assert billable_seconds(duration_ms + 1000, first, inc) >= billed


@given(
    st.decimals(min_value=0, max_value=100, places=4),
    st.decimals(min_value=0, max_value=10, places=4),
    st.integers(0, 100_000),
)
def test_cost_is_exact_value_rounded_once(per_minute, connect, billable):
    row = rate(per_minute=str(per_minute), connect=str(connect))
    cost = call_cost(row, billable)
    assert cost == cost.quantize(COST_PLACES)
    if billable == 0:
        assert cost == 0
        return
    exact = Fraction(connect) + Fraction(per_minute) * billable / 60
    assert abs(Fraction(cost) - exact) <= Fraction(1, 20_000)  # half a unit of the last place
