"""Channel and CPS counters with a fake clock."""

from __future__ import annotations

from dataclasses import replace

import pytest

from edge.limits import (
    AcquireSlot,
    Limits,
    LocalLimits,
    SlotGranted,
    SlotRefused,
    TokenBucket,
    decide,
)
from edge.policy import Usage
from edge.tests.factories import compiled, trunk_doc

T0 = 1000.0
TRUNK = compiled(trunks=[trunk_doc(max_channels=3, max_cps=2)]).trunks[1]


def test_bucket_starts_full_and_refills_at_rate() -> None:
    bucket = TokenBucket(rate=2, burst=2)
    assert bucket.take(T0)
    assert bucket.take(T0)
    assert not bucket.take(T0)
    assert not bucket.take(T0 + 0.49)  # 0.98 of a token
    assert bucket.take(T0 + 0.5)
    assert not bucket.take(T0 + 0.5)
    assert bucket.tokens(T0 + 10) == 2  # never more than the burst
    assert bucket.take(T0 + 10) and bucket.take(T0 + 10) and not bucket.take(T0 + 10)


def test_bucket_sustains_its_rate() -> None:
    bucket = TokenBucket(rate=5, burst=5)
    # 128 attempts a second for 10 s (a binary fraction, so the arithmetic is exact).
    taken = sum(bucket.take(T0 + i / 128) for i in range(10 * 128 + 1))
    assert taken == 5 + 10 * 5  # the burst, then 5 per second


def test_bucket_available_takes_nothing() -> None:
    bucket = TokenBucket(rate=1, burst=1)
    assert bucket.available(T0)
    assert bucket.available(T0)
    assert bucket.take(T0)
    assert not bucket.available(T0)


def test_bucket_ignores_a_clock_going_backwards() -> None:
    bucket = TokenBucket(rate=1, burst=1)
    assert bucket.take(T0)
    assert not bucket.take(T0 - 5)
    assert not bucket.take(T0 + 0.5)
    assert bucket.take(T0 + 1)


def test_bucket_of_zero_never_gives() -> None:
    bucket = TokenBucket(rate=0, burst=0)
    assert not bucket.take(T0)
    assert not bucket.take(T0 + 3600)


def test_bucket_reconfigure_keeps_earned_tokens_up_to_new_burst() -> None:
    bucket = TokenBucket(rate=10, burst=10)
    bucket.reconfigure(rate=1, burst=1)
    assert bucket.take(T0)
    assert not bucket.take(T0)


def test_usage_reflects_calls_and_tokens() -> None:
    limits = LocalLimits()
    assert limits.usage(TRUNK, T0) == Usage(0, True)
    assert limits.acquire(TRUNK, "a", T0)
    assert limits.acquire(TRUNK, "b", T0)
    assert limits.usage(TRUNK, T0) == Usage(2, False)  # both tokens spent
    assert limits.usage(TRUNK, T0 + 0.5) == Usage(2, True)
    assert limits.active_calls(TRUNK.id) == 2
    assert limits.active_calls(99) == 0


def test_usage_takes_no_token() -> None:
    limits = LocalLimits()
    for _ in range(10):
        assert limits.usage(TRUNK, T0).cps_available
    assert limits.acquire(TRUNK, "a", T0)
    assert limits.acquire(TRUNK, "b", T0)


def test_channel_limit() -> None:
    limits = LocalLimits()
    assert limits.acquire(TRUNK, "a", T0)
    assert limits.acquire(TRUNK, "b", T0)
    assert limits.acquire(TRUNK, "c", T0 + 1)
    assert not limits.acquire(TRUNK, "d", T0 + 10)
    limits.release(TRUNK.id, "b")
    assert limits.acquire(TRUNK, "d", T0 + 10)
    assert limits.active_calls(TRUNK.id) == 3


def test_a_cps_refusal_keeps_no_channel() -> None:
    limits = LocalLimits()
    assert limits.acquire(TRUNK, "a", T0)
    assert limits.acquire(TRUNK, "b", T0)
    assert not limits.acquire(TRUNK, "c", T0)
    assert limits.active_calls(TRUNK.id) == 2


def test_a_channel_refusal_spends_no_token() -> None:
    trunk = replace(TRUNK, max_channels=1)
    limits = LocalLimits()
    assert limits.acquire(trunk, "a", T0)
    assert not limits.acquire(trunk, "b", T0)  # channels full: the second token stays
    limits.release(trunk.id, "a")
    assert limits.acquire(trunk, "b", T0)


def test_inbound_calls_take_channels_but_no_tokens() -> None:
    limits = LocalLimits()
    for call_id in ("a", "b", "c"):
        assert limits.acquire(TRUNK, call_id, T0, count_cps=False)
    assert not limits.acquire(TRUNK, "d", T0, count_cps=False)  # channels are shared
    assert limits.usage(TRUNK, T0) == Usage(3, True)  # tokens untouched


def test_acquire_twice_and_release_twice_are_harmless() -> None:
    limits = LocalLimits()
    assert limits.acquire(TRUNK, "a", T0)
    assert limits.acquire(TRUNK, "a", T0)  # already held: no second slot, no token
    assert limits.usage(TRUNK, T0) == Usage(1, True)
    limits.release(TRUNK.id, "a")
    limits.release(TRUNK.id, "a")
    limits.release(TRUNK.id, "never-acquired")
    limits.release(42, "a")
    assert limits.active_calls(TRUNK.id) == 0


def test_trunks_are_counted_separately() -> None:
    other = replace(TRUNK, id=2)
    limits = LocalLimits()
    for call_id in ("a", "b"):
        assert limits.acquire(TRUNK, call_id, T0)
    assert limits.acquire(other, "a", T0)  # same call id, other trunk
    assert limits.active_calls(TRUNK.id) == 2
    assert limits.active_calls(other.id) == 1


def test_the_bucket_survives_idle_periods() -> None:
    # Hanging up fast must not buy a fresh burst: the bucket is kept while no call runs.
    limits = LocalLimits()
    for call_id in ("a", "b"):
        assert limits.acquire(TRUNK, call_id, T0)
        limits.release(TRUNK.id, call_id)
    assert not limits.acquire(TRUNK, "c", T0 + 0.1)


@pytest.mark.parametrize("new_cps, allowed", [(4, 2), (1, 1)])
def test_a_new_max_cps_applies_to_the_existing_bucket(new_cps: int, allowed: int) -> None:
    limits = LocalLimits()
    assert limits.usage(TRUNK, T0).cps_available  # bucket made with max_cps 2
    changed = replace(TRUNK, max_cps=new_cps, max_channels=10)
    taken = sum(limits.acquire(changed, f"call-{i}", T0) for i in range(10))
    assert taken == allowed  # tokens earned so far are kept, capped at the new burst
    later = sum(limits.acquire(changed, f"later-{i}", T0 + 1) for i in range(10))
    assert later == new_cps  # then the new rate


def test_local_limits_is_a_limits() -> None:
    limits: Limits = LocalLimits()
    assert limits.active_calls(1) == 0


def test_decide_answers_for_the_core_naming_the_limit() -> None:
    limits = LocalLimits()
    # max_cps 2: two outbound calls take the burst, the third finds the bucket empty.
    assert decide(limits, AcquireSlot("a", TRUNK, True), T0) == SlotGranted("a")
    assert decide(limits, AcquireSlot("b", TRUNK, True), T0) == SlotGranted("b")
    assert decide(limits, AcquireSlot("c", TRUNK, True), T0) == SlotRefused("c", "cps_limit")
    # Inbound takes no token; max_channels 3: the fourth call finds them all taken.
    assert decide(limits, AcquireSlot("d", TRUNK, False), T0) == SlotGranted("d")
    assert decide(limits, AcquireSlot("e", TRUNK, False), T0) == SlotRefused("e", "channel_limit")
    assert decide(limits, AcquireSlot("f", TRUNK, True), T0 + 5) == SlotRefused(
        "f", "channel_limit"
    )
    assert limits.active_calls(TRUNK.id) == 3


def test_decide_leaves_a_later_answer_to_the_counters() -> None:
    class Later(LocalLimits):
        def acquire(self, trunk, call_id, now, *, count_cps=True):  # type: ignore[no-untyped-def]
            return None

    assert decide(Later(), AcquireSlot("a", TRUNK, True), T0) is None
