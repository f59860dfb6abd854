"""The edge's garbage-collector policy (edge/runtime/gc_policy.py) and the fact it rests on:
a call through the core leaves no cyclic garbage, so reference counting frees all of it."""

from __future__ import annotations

import asyncio
import gc
import subprocess
import sys
import time

import pytest

from edge import cdr, numbering, validators
from edge.runtime.gc_policy import (
    FULL_DEFER_LIMIT,
    QUIET_CHECK_INTERVAL,
    QUIET_HELD,
    RELEASE_AFTER,
    YOUNG_THRESHOLD,
    GcPolicy,
)
from edge.sip import message, uri
from edge.sip.message import make_response
from edge.tests.test_b2bua import GATEWAY, PBX, Edge, connect_outbound, in_dialog
from edge.tests.virtual_time import VirtualTimeLoop


@pytest.fixture
def policy():
    """A policy installed on a fresh loop on a fake clock (its interval timer fires exactly
    on time, taking no real time); the process's collector is restored afterwards."""
    threshold, was_enabled = gc.get_threshold(), gc.isenabled()
    loop = VirtualTimeLoop()
    made: list[GcPolicy] = []

    def install(**kwargs: float) -> tuple[GcPolicy, asyncio.AbstractEventLoop]:
        policy = GcPolicy(**kwargs)
        policy.install(loop)
        made.append(policy)
        return policy, loop

    gc.enable()
    yield install
    for policy in made:
        policy.uninstall()
    loop.close()
    gc.unfreeze()
    gc.set_threshold(*threshold)
    if not was_enabled:
        gc.disable()


def test_install_sets_the_thresholds_and_uninstall_restores_them(policy):
    before = gc.get_threshold()
    gc_policy, _ = policy(full_interval=0)
    young, middle, old = gc.get_threshold()
    assert young == YOUNG_THRESHOLD
    assert middle >= 2**31 - 1  # no middle collection
    assert old >= 2**31 - 1  # no automatic full collection
    assert gc.get_freeze_count() > 0  # start-up objects are out of every collection
    assert gc_policy._on_gc in gc.callbacks
    gc_policy.uninstall()
    assert gc.get_threshold() == before
    assert gc_policy._on_gc not in gc.callbacks


def test_collections_are_timed_by_generation(policy):
    gc_policy, _ = policy(full_interval=0)
    gc.collect(0)
    gc.collect(1)
    assert gc_policy.collections[0] >= 1 and gc_policy.collections[1] >= 1
    assert gc_policy.seconds[0] > 0 and gc_policy.longest[1] > 0
    assert gc_policy.longest[0] <= gc_policy.seconds[0]


def test_a_wait_inside_a_collection_is_not_counted_as_collecting(policy):
    """The collector calls Python callbacks, where its thread may wait for the GIL (another
    thread's long C call): that wait is not the collector's, and /metrics must not say it is.
    A callback that sleeps stands for the wait."""
    gc_policy, _ = policy(full_interval=0)
    gc.callbacks.append(_sleep_on_start)
    try:
        gc.collect(0)
    finally:
        gc.callbacks.remove(_sleep_on_start)
    assert gc_policy.collections[0] == 1
    assert gc_policy.longest[0] < 0.1  # a young collection of a test's heap, not the 0.2 s wait


def _sleep_on_start(phase: str, info: dict[str, int]) -> None:
    if phase == "start":
        time.sleep(0.2)


def test_frees_of_older_objects_do_not_hold_off_young_collections(policy):
    """Every object freed lowers CPython's allocation count, frozen ones too: one free per new
    object keeps it flat, so only the timer collects the new ones while they are few."""
    gc_policy, loop = policy(full_interval=0)
    old = [[i] for i in range(60_000)]
    gc.freeze()  # as an apply freezes the calls in progress
    kept = []

    async def churn() -> None:
        for _ in range(60):  # 0.6 s on the fake clock
            for _ in range(1_000):
                old.pop()
                kept.append([0])
            await asyncio.sleep(0.01)

    loop.run_until_complete(churn())
    assert gc_policy.collections[0] >= 5
    assert len(gc.get_objects(generation=0)) < 20_000  # without the timer: all 60,000


def test_the_timer_leaves_a_compile_in_progress_alone(policy):
    """A snapshot compiles with the collector disabled; its objects are frozen at the end,
    not walked on the loop every 0.1 s meanwhile."""
    gc_policy, loop = policy(full_interval=0)
    gc.disable()
    try:
        loop.run_until_complete(asyncio.sleep(1))
    finally:
        gc.enable()
    assert gc_policy.collections[0] == gc_policy.collections[1] == 0
    loop.run_until_complete(asyncio.sleep(1))
    assert gc_policy.collections[0] >= 5


def test_allocation_runs_young_collections_only(policy):
    """What survives a young collection is never walked again by the collections the
    allocations or the timer trigger (only by a full one): a held call costs them nothing."""
    gc_policy, loop = policy(full_interval=0)
    kept = []
    for i in range(600_000):  # a third of it survives: about 100 young collections' worth
        item = [i]
        if i % 3 == 0:
            kept.append(item)
    loop.run_until_complete(asyncio.sleep(60))  # 600 young timers
    assert gc_policy.collections[0] > 600
    assert gc_policy.collections[1] == gc_policy.collections[2] == 0
    assert len(kept) == 200_000
    survivors = {id(item) for item in gc.get_objects(generation=1)}
    assert all(id(item) in survivors for item in kept[::1000])


def test_full_collections_run_on_the_interval(policy):
    gc_policy, loop = policy(full_interval=60)
    loop.run_until_complete(asyncio.sleep(59))
    assert gc_policy.collections[2] == 0
    loop.run_until_complete(asyncio.sleep(600))  # 60, 120, ... 600, 660 s on the fake clock
    assert gc_policy.collections[2] == 10
    assert gc_policy.last_full > 0


def test_a_full_collection_due_while_busy_waits_for_a_quiet_moment(policy):
    """It walks everything held: due at 1,800 calls/s it would stop the loop for a second. It
    runs at the first quiet check instead, and busy only a day late."""
    load = {"held": QUIET_HELD * 100}
    gc_policy, loop = policy(full_interval=60, held=lambda: load["held"])

    def run(seconds: float) -> None:
        loop.run_until_complete(asyncio.sleep(seconds))

    run(600)
    assert gc_policy.collections[2] == 0  # due since 60 s, busy all along
    load["held"] = QUIET_HELD
    run(QUIET_CHECK_INTERVAL)
    assert gc_policy.collections[2] == 1 and gc_policy.full_forced == 0
    run(600)  # quiet: on the interval again
    assert gc_policy.collections[2] == 11
    load["held"] = QUIET_HELD * 100
    run(FULL_DEFER_LIMIT)  # busy for a day
    assert gc_policy.collections[2] == 11
    run(120)  # the day is up: once, busy, then due again
    assert gc_policy.collections[2] == 12 and gc_policy.full_forced == 1
    families = {family.name: family for family in gc_policy.metrics()}
    assert families["trunkline_edge_gc_full_forced"].samples[0].value == 1


def test_no_interval_means_no_full_collection(policy):
    gc_policy, loop = policy(full_interval=0)
    loop.run_until_complete(asyncio.sleep(8_640))  # a tenth of a day: 86,400 young timers
    assert gc_policy.collections[2] == 0


def test_memory_is_released_once_the_edge_goes_quiet_after_a_busy_spell(policy):
    """Issue 15: after thousands of calls end, the core's tables are rebuilt, a full collection
    empties CPython's free lists and glibc trims its heaps; once per busy spell, and never
    while calls are held (a full collection walks everything held)."""
    load = {"held": 0}
    released: list[float] = []
    trims: list[int] = []
    gc_policy, loop = policy(
        full_interval=0, held=lambda: load["held"], release=lambda: released.append(loop.time())
    )
    assert gc_policy._trim is not None  # glibc here
    gc_policy._trim = lambda: trims.append(0)

    def run(seconds: float) -> None:
        loop.run_until_complete(asyncio.sleep(seconds))

    run(60)
    assert released == []  # never busy: nothing to give back
    load["held"] = RELEASE_AFTER * 5
    run(60)
    load["held"] = QUIET_HELD * 4  # calmer, not quiet
    run(60)
    assert released == [] and gc_policy.collections[2] == 0
    load["held"] = QUIET_HELD
    run(QUIET_CHECK_INTERVAL)
    assert len(released) == 1 and trims == [0]
    assert gc_policy.collections[2] == 1  # the full collection that empties the free lists
    run(600)
    assert len(released) == 1  # once per busy spell
    load["held"] = RELEASE_AFTER
    run(QUIET_CHECK_INTERVAL)
    load["held"] = 0
    run(QUIET_CHECK_INTERVAL)
    assert len(released) == gc_policy.releases == 2
    families = {family.name: family for family in gc_policy.metrics()}
    assert families["trunkline_edge_memory_releases"].samples[0].value == 2


def test_without_a_load_probe_memory_is_never_released(policy):
    gc_policy, loop = policy(full_interval=0)
    loop.run_until_complete(asyncio.sleep(600))
    assert gc_policy.releases == 0 and gc_policy.collections[2] == 0


def test_metrics_say_counts_seconds_and_the_longest_pause(policy):
    gc_policy, _ = policy(full_interval=0)
    gc.collect(0)
    families = {family.name: family for family in gc_policy.metrics()}
    assert set(families) == {
        "trunkline_edge_gc_collections",
        "trunkline_edge_gc_seconds",
        "trunkline_edge_gc_longest_pause_seconds",
        "trunkline_edge_gc_collected_objects",
        "trunkline_edge_gc_full_forced",
        "trunkline_edge_memory_releases",
        "trunkline_edge_memory_returned_bytes",
    }
    young = {
        s.labels.get("generation"): s.value
        for s in families["trunkline_edge_gc_collections"].samples
        if s.name.endswith("_total")
    }
    assert young["0"] >= 1 and set(young) == {"0", "1", "2"}


def test_negative_interval_is_refused():
    with pytest.raises(ValueError):
        GcPolicy(full_interval=-1)


def _calls(edge: Edge, count: int) -> None:
    for _ in range(count):
        edge.advance(1)  # within the trunk's calls per second
        a_invite, a_ok, _b_invite, _b_ok = connect_outbound(edge)
        edge.send(in_dialog("BYE", a_ok, a_invite, PBX, cseq=2), PBX)
        (b_bye,) = [m for m in edge.take(GATEWAY) if m.method == "BYE"]
        edge.send(make_response(b_bye, 200), GATEWAY)
        edge.take(PBX)
    edge.advance(64)  # every lingering transaction ends


def test_a_call_leaves_no_cyclic_garbage():
    """What the policy rests on: calls are freed by reference counting alone."""
    edge = Edge()
    _calls(edge, 5)  # warm up: caches, interned strings
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        _calls(edge, 200)
        found = gc.collect()
    finally:
        if was_enabled:
            gc.enable()
    assert len(edge.cdrs) == 205
    assert edge.core.active_calls == 0
    # A cycle per call would leave hundreds of objects; a few may come from elsewhere.
    assert found < 50, found


def _known_values() -> dict[str, int]:
    return {
        "uri texts": len(uri._VALID_URI_TEXTS),
        "hosts": len(uri._HOSTS_SEEN),
        "request-uri texts": len(message._VALID_REQUEST_URI_TEXTS),
        "cdr addresses": len(cdr._VALID_IPS),
        "cdr routes": len(cdr._VALID_ROUTES),
        "e164 forms": numbering._parse.cache_info().currsize,
        "regions": numbering.region_of.cache_info().currsize,
        "acl keys": validators.address_key.cache_info().currsize,
    }


def test_the_quiet_release_empties_the_caches_a_busy_spell_filled(policy):
    """What calls put in the known-value caches outlives them, scattered among their objects,
    each pinning a pymalloc arena (gc_policy.py); the release empties them."""
    edge = Edge()
    numbering.to_e164("2025550123", "US")  # numbering's caches, whatever path a call takes
    numbering.region_of("+12025550123")
    _calls(edge, 3)
    filled = _known_values()
    assert all(filled.values()), filled  # the call filled each
    gc_policy, _ = policy(full_interval=0, held=lambda: 0, release=edge.core.release_memory)
    gc_policy.release_memory()
    assert set(_known_values().values()) == {0}
    _calls(edge, 1)  # and they fill again from what comes next
    assert _known_values()["uri texts"] and _known_values()["cdr routes"]


def test_prepare_regions_loads_their_numbering_metadata_before_any_call():
    """A region's metadata (a module, hundreds of objects, its regular expressions) loaded at
    the first number dialled there lands among the first busy spell's objects; loaded at
    start-up, it does not. In a fresh interpreter: other tests load regions too."""
    code = (
        "from phonenumbers.phonemetadata import PhoneMetadata as M\n"
        "from edge.numbering import prepare_regions\n"
        "assert 'NZ' not in M._region_metadata\n"
        "prepare_regions(['NZ', 'ZZ'])\n"  # an unknown region is left alone
        "assert 'NZ' in M._region_metadata\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
