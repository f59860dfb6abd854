"""Live-event sinks: batching by time, orjson encoding, a slow publisher costs events only."""

from __future__ import annotations

import asyncio
import functools

import orjson

from edge.b2bua import CallEvent
from edge.runtime.events import BatchingSink, MemorySink, NullSink, encode_batch
from edge.tests.virtual_time import VirtualTimeLoop


def run_async(test):
    """Run on a fake clock: the sink's batching timers fire exactly when their interval says,
    and waiting for them takes no real time (edge/tests/virtual_time.py)."""

    @functools.wraps(test)
    def wrapper(*args, **kwargs):
        with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
            return runner.run(asyncio.wait_for(test(*args, **kwargs), 20))

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
