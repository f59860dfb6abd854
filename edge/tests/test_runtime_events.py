"""Live-event sinks: batching by time, orjson encoding, a slow publisher costs events only."""

from __future__ import annotations

import asyncio
import functools
import os
import shutil
import socket
import subprocess
import time

import orjson
import pytest
import redis
import redis.asyncio

from edge.b2bua import CallEvent
from edge.runtime.events import (
    LIVE_EVENTS_STREAM,
    BatchingSink,
    MemorySink,
    NodeEvent,
    NullSink,
    encode_batch,
    live_events_sink,
)
from edge.tests.virtual_time import VirtualTimeLoop


def run_async(test):
    """Run on a fake clock: the sink's batching timers fire exactly when their interval says,
    and waiting for them takes no real time (edge/tests/virtual_time.py)."""

    @functools.wraps(test)
    def wrapper(*args, **kwargs):
        with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
            return runner.run(asyncio.wait_for(test(*args, **kwargs), 20))

    return wrapper


def run_real_time(test):
    """Run on a real event loop: for a test that talks to a real Redis over the network."""

    @functools.wraps(test)
    def wrapper(*args, **kwargs):
        return asyncio.run(asyncio.wait_for(test(*args, **kwargs), 30))

    return wrapper


def event(kind: str, call_id: str = "c1", **fields) -> CallEvent:
    values = dict(
        trunk_id=7,
        customer_id=1,
        direction="outbound",
        caller="+14155550100",
        callee="+442071234567",
        at=1_790_000_000.25,
    )
    values.update(fields)
    return CallEvent(kind, call_id, **values)


def test_encoding_is_one_json_object_per_batch():
    decoded = orjson.loads(
        encode_batch("edge-1", [event("ended", reason="normal", final_code=200)])
    )
    assert decoded == {
        "node": "edge-1",
        "events": [
            {
                "kind": "ended",
                "call_id": "c1",
                "trunk_id": 7,
                "customer_id": 1,
                "direction": "outbound",
                "caller": "+14155550100",
                "callee": "+442071234567",
                "at": 1_790_000_000.25,
                "reason": "normal",
                "final_code": 200,
            }
        ],
    }


def test_memory_and_null_sinks():
    memory = MemorySink(maxlen=2)
    memory.publish([event("started"), event("ringing")])
    memory.publish([event("answered")])
    assert [e.kind for e in memory.events] == ["ringing", "answered"]
    NullSink().publish([event("started")])


@run_async
async def test_events_within_the_interval_go_out_as_one_batch():
    batches: list[bytes] = []
    sink = BatchingSink(
        batches.append, node="edge-1", loop=asyncio.get_running_loop(), interval=0.05
    )
    sink.publish([event("started")])
    sink.publish([event("ringing"), event("answered")])
    assert batches == []  # nothing before the interval
    await asyncio.sleep(0.049)
    assert batches == []  # still nothing just before it
    await asyncio.sleep(0.002)
    assert len(batches) == 1
    assert [e["kind"] for e in orjson.loads(batches[0])["events"]] == [
        "started",
        "ringing",
        "answered",
    ]
    sink.publish([event("ended")])
    await sink.aclose()  # closing sends what is left
    assert len(batches) == 2
    sink.publish([event("started", "late")])  # ignored once closed
    assert sink.pending == 0


@run_async
async def test_a_coroutine_publisher_has_one_batch_in_flight():
    sent: list[list[str]] = []
    release = asyncio.Event()

    async def publish(batch: bytes) -> None:
        sent.append([e["call_id"] for e in orjson.loads(batch)["events"]])
        await release.wait()

    sink = BatchingSink(publish, node="n", loop=asyncio.get_running_loop(), interval=0.02)
    sink.publish([event("started", "a")])
    await asyncio.sleep(0.05)
    sink.publish([event("started", "b")])
    sink.publish([event("started", "c")])
    await asyncio.sleep(0.05)
    assert sent == [["a"]]  # b and c wait for the publisher
    release.set()
    await asyncio.sleep(0.05)
    assert sent == [["a"], ["b", "c"]]
    await sink.aclose()


@run_async
async def test_a_publisher_that_cannot_keep_up_loses_the_oldest_events(caplog):
    batches: list[bytes] = []
    sink = BatchingSink(
        batches.append, node="n", loop=asyncio.get_running_loop(), interval=0.02, max_pending=3
    )
    sink.publish([event("started", str(i)) for i in range(5)])
    assert sink.dropped == 2
    await asyncio.sleep(0.05)
    assert [e["call_id"] for e in orjson.loads(batches[0])["events"]] == ["2", "3", "4"]

    def broken(batch: bytes) -> None:
        raise RuntimeError("redis is down")

    failing = BatchingSink(broken, node="n", loop=asyncio.get_running_loop(), interval=0.01)
    failing.publish([event("started")])
    await asyncio.sleep(0.05)
    assert failing.failures == 1
    assert "live events publisher failed" in caplog.text


@run_async
async def test_publishing_arms_one_timer_however_many_events():
    sink = BatchingSink(lambda b: None, node="n", loop=asyncio.get_running_loop(), interval=1)
    events = [event("started")]
    for _ in range(10_000):
        sink.publish(events)
    loop = asyncio.get_running_loop()
    ours = [h for h in loop._scheduled if h._callback == sink._on_timer]  # type: ignore[attr-defined]
    assert len(ours) == 1
    await sink.aclose()


# --- the Redis stream publisher, against a real redis-server of the test's own ----------------


@pytest.fixture
def redis_server(tmp_path):
    """A redis-server on a free port that the test may kill (an outage), and its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        if os.environ.get("REDIS_URL") or os.environ.get("CI"):
            pytest.fail("redis-server is not installed (CI has Redis)")
        pytest.skip("redis-server is not installed")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 10
    while True:
        try:
            if redis.Redis.from_url(url, socket_timeout=0.2).ping():
                break
        except redis.RedisError:
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)
    yield process, url
    process.kill()
    process.wait(5)


@run_real_time
async def test_batches_reach_the_redis_stream_and_an_outage_costs_counted_events(redis_server):
    process, url = redis_server
    sink = live_events_sink(node="edge-1", redis_url=url)
    assert isinstance(sink, BatchingSink)
    sink.interval = 0.02
    sink.publish([event("started"), event("answered")])
    reader = redis.asyncio.Redis.from_url(url)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while not await reader.xlen(LIVE_EVENTS_STREAM):
        assert loop.time() < deadline, "no batch in the stream"
        await asyncio.sleep(0.02)
    ((_, fields),) = await reader.xrange(LIVE_EVENTS_STREAM)
    batch = orjson.loads(fields[b"batch"])
    assert batch["node"] == "edge-1"
    assert [e["kind"] for e in batch["events"]] == ["started", "answered"]
    await reader.aclose()

    # Redis gone: publishing still returns at once, and the lost events are counted.
    process.kill()
    process.wait(5)
    started = time.perf_counter()
    for i in range(100):
        sink.publish([event("ringing", f"c{i}")])
    assert time.perf_counter() - started < 0.5  # never waits for Redis; generous bound
    deadline = loop.time() + 5
    while sink.dropped < 100:
        assert loop.time() < deadline, f"only {sink.dropped} events counted as dropped"
        await asyncio.sleep(0.05)
    assert sink.failures >= 1
    await sink.aclose()


def test_an_edge_without_redis_or_with_live_events_off_publishes_nowhere():
    assert isinstance(live_events_sink(node="n", redis_url=None), NullSink)
    assert isinstance(live_events_sink(node="n", redis_url="redis://x", enabled=False), NullSink)


def test_node_events_encode_with_their_fields():
    batch = orjson.loads(
        encode_batch("e", [NodeEvent("config_applied", 5.0, {"config_version": 9})])
    )
    assert batch["events"] == [{"kind": "config_applied", "at": 5.0, "config_version": 9}]


@run_async
async def test_events_that_waited_for_a_slow_publish_are_not_held_a_further_interval():
    loop = asyncio.get_running_loop()
    release = asyncio.Event()
    sent: list[bytes] = []

    async def slow(batch: bytes) -> None:
        sent.append(batch)
        await release.wait()

    sink = BatchingSink(slow, node="n", loop=loop, interval=0.05)
    sink.publish([event("started", "a")])
    await asyncio.sleep(0.08)  # "a" is in flight
    arrived = loop.time()
    sink.publish([event("started", "b")])  # waits for the publisher
    await asyncio.sleep(0.2)  # the publisher is slower than the interval
    released = loop.time()
    release.set()
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    (handle,) = [h for h in loop._scheduled if h._callback == sink._on_timer]  # type: ignore[attr-defined]
    # Due one interval after "b" came (already past: at once), not one after the publish ended.
    assert handle.when() <= max(arrived + sink.interval, released) + 1e-3
    await sink.aclose()
    assert len(sent) == 2
