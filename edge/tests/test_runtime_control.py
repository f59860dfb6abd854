"""The control API over real HTTP: uvicorn on the test's loop, urllib in a thread, a fake core."""

from __future__ import annotations

import asyncio
import functools
import gc
import signal
import threading
import time
import urllib.error
import urllib.request

import orjson
import pytest

from edge import native
from edge.b2bua import Stats, Transmit
from edge.config import EdgeConfig
from edge.runtime import allocator
from edge.runtime.control import (
    SNAPSHOT_FILE,
    ControlApp,
    bind_control_socket,
    compile_snapshot,
    compile_snapshot_steps,
    run_in_slices,
    save_snapshot,
    start_control_server,
)
from edge.tests.factories import (
    big_snapshot_doc,
    compiled,
    customer_doc,
    snapshot_doc,
    trunk_doc,
)

TOKEN = "s3cret-token"


def run_async(test):
    @functools.wraps(test)
    def wrapper(*args, **kwargs):
        return asyncio.run(asyncio.wait_for(test(*args, **kwargs), 30))

    return wrapper


class FakeCore:
    def __init__(self) -> None:
        self.node = "edge-test"
        self.config = compiled(version=3, trunks=[trunk_doc(), trunk_doc(id=2)])
        self.draining = False
        self.stats = Stats(attempts_total=12, answers_total=9, auth_failures_total=2)
        self.stats.responses_total.update({200: 9, 486: 1, 503: 2})
        self.stats.refusals_total.update({"channel_limit": 2})
        self.stats.ends_total.update({"normal_clearing": 7, "no_answer": 1})
        self.stats.active.update({1: 2})  # the two calls below
        self.hangups: list[tuple[str, str]] = []
        self._calls = {
            "abc": {"call_id": "abc", "trunk_id": 1, "state": "answered"},
            "def": {"call_id": "def", "trunk_id": 1, "state": "ringing"},
        }
        self.applied: list[int] = []

    @property
    def active_calls(self) -> int:
        return len(self._calls)

    def apply_config(self, config):
        self.config = config
        self.applied.append(config.version)

    def drain(self):
        self.draining = True

    def calls(self):
        return list(self._calls.values())

    def hangup(self, call_id, now, wall, reason="operator_hangup"):
        if self._calls.pop(call_id, None) is None:
            return None
        self.hangups.append((call_id, reason))
        return [Transmit(b"BYE", ("127.0.0.1", 5062, "udp"))]


class Control:
    """The app served on a free port, and a blocking client for it."""

    async def start(self, state_dir=None) -> Control:
        self.core = FakeCore()
        self.dispatched: list = []
        self.app = ControlApp(
            core=self.core, token=TOKEN, dispatch=self.dispatched.extend, state_dir=state_dir
        )
        sock = bind_control_socket("127.0.0.1", 0)
        self.port = sock.getsockname()[1]
        self.server, self.task = await start_control_server(self.app, sock)
        return self

    async def stop(self) -> None:
        self.server.should_exit = True
        await asyncio.wait_for(self.task, 10)

    async def request(self, method, path, body=None, token=TOKEN, content_type=None):
        def call():
            headers = {} if token is None else {"Authorization": f"Bearer {token}"}
            if content_type:
                headers["Content-Type"] = content_type
            request = urllib.request.Request(
                f"http://127.0.0.1:{self.port}{path}", data=body, method=method, headers=headers
            )
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    return response.status, dict(response.headers), response.read()
            except urllib.error.HTTPError as error:
                return error.code, dict(error.headers), error.read()

        return await asyncio.to_thread(call)


def json_of(body: bytes):
    return orjson.loads(body)


@run_async
async def test_every_route_needs_the_token_but_health_says_little_without_it():
    control = await Control().start()
    for method, path in [
        ("GET", "/metrics"),
        ("GET", "/calls"),
        ("POST", "/config"),
        ("POST", "/drain"),
        ("DELETE", "/calls/abc"),
        ("GET", "/nothing"),
    ]:
        for token in (None, "wrong", TOKEN + "x"):
            status, headers, body = await control.request(method, path, token=token, body=b"")
            assert status == 401, (method, path, token)
            assert headers["www-authenticate"] == "Bearer"
    status, _, body = await control.request("GET", "/health", token=None)
    assert (status, json_of(body)) == (200, {"status": "ok"})
    status, _, body = await control.request("GET", "/health")
    assert json_of(body) == {
        "status": "ok",
        "node": "edge-test",
        "config_version": 3,
        "active_calls": 2,
        "core": native.status(),
        "allocator": allocator.running(),
    }
    assert not control.core.draining  # nothing happened without the token
    await control.stop()


@run_async
async def test_metrics_read_the_core_counters():
    control = await Control().start()
    status, headers, body = await control.request("GET", "/metrics")
    assert status == 200
    assert headers["content-type"].startswith("text/plain; version=")
    text = body.decode()
    for line in [
        'trunkline_edge_active_calls{trunk="1"} 2.0',
        'trunkline_edge_active_calls{trunk="2"} 0.0',
        "trunkline_edge_call_attempts_total 12.0",
        "trunkline_edge_answers_total 9.0",
        'trunkline_edge_responses_total{code="486"} 1.0',
        'trunkline_edge_refusals_total{reason="channel_limit"} 2.0',
        'trunkline_edge_call_ends_total{reason="no_answer"} 1.0',
        "trunkline_edge_auth_failures_total 2.0",
        "trunkline_edge_config_version 3.0",
        "trunkline_edge_draining 0.0",
    ]:
        assert line in text
    control.core.stats.attempts_total += 1  # read at scrape time, nothing cached
    _, _, body = await control.request("GET", "/metrics")
    assert "trunkline_edge_call_attempts_total 13.0" in body.decode()
    await control.stop()


@run_async
async def test_the_answer_to_a_snapshot_lists_what_it_left_out(tmp_path):
    doc = snapshot_doc(version=5)
    doc["trunks"][0]["origination_uris"] = [{"uri": "sips:pbx.example;transport=udp"}]
    control = await Control().start(state_dir=tmp_path)
    status, _, body = await control.request(
        "POST", "/config", orjson.dumps(doc), content_type="application/json"
    )
    answer = json_of(body)
    assert (status, answer["applied_version"]) == (200, 5)
    (refusal,) = answer["refusals"]
    assert refusal["kind"] == "origination_uri" and refusal["field"] == "origination_uris"
    assert refusal["id"] == doc["trunks"][0]["id"] and "transport" in refusal["reason"]
    await control.stop()


@run_async
async def test_a_snapshot_is_compiled_applied_and_saved(tmp_path):
    control = await Control().start(state_dir=tmp_path)
    data = orjson.dumps(snapshot_doc(version=4))
    status, _, body = await control.request(
        "POST", "/config", data, content_type="application/json"
    )
    assert (status, json_of(body)) == (200, {"applied_version": 4, "refusals": []})
    assert control.core.applied == [4]
    assert (tmp_path / SNAPSHOT_FILE).read_bytes() == data
    assert (tmp_path / SNAPSHOT_FILE).stat().st_mode & 0o077 == 0  # it holds HA1 digests
    assert list(tmp_path.iterdir()) == [tmp_path / SNAPSHOT_FILE]  # no temp file left
    _, _, body = await control.request("GET", "/health")
    assert json_of(body)["config_version"] == 4
    await control.stop()


@pytest.mark.parametrize(
    "body, error",
    [
        (b"{not json", "not JSON"),
        (b"[]", "expected an object"),
        (orjson.dumps({**snapshot_doc(version=9), "schema": 2}), "schema"),
        (
            orjson.dumps(snapshot_doc(version=9, customers=[customer_doc(1), customer_doc(1)])),
            "duplicate customer id",
        ),
    ],
)
@run_async
async def test_a_bad_snapshot_is_refused_and_the_old_config_stays(tmp_path, body, error):
    control = await Control().start(state_dir=tmp_path)
    before = control.core.config
    status, _, answer = await control.request("POST", "/config", body)
    assert status == 400
    assert error in json_of(answer)["error"]
    assert control.core.config is before and control.core.applied == []
    assert not (tmp_path / SNAPSHOT_FILE).exists()
    await control.stop()


@run_async
async def test_an_older_snapshot_is_refused_with_409():
    control = await Control().start()
    status, _, body = await control.request(
        "POST", "/config", orjson.dumps(snapshot_doc(version=2))
    )
    assert status == 409
    assert json_of(body)["applied_version"] == 3
    status, _, body = await control.request(
        "POST", "/config", orjson.dumps(snapshot_doc(version=3))
    )
    # The same version again is fine.
    assert (status, json_of(body)) == (200, {"applied_version": 3, "refusals": []})
    await control.stop()


@run_async
async def test_a_body_over_the_limit_is_413():
    control = await Control().start()
    control.app.max_body = 100
    status, _, _ = await control.request("POST", "/config", b"x" * 1000)
    assert status == 413
    await control.stop()


@run_async
async def test_drain_calls_and_hangup():
    control = await Control().start()
    status, _, body = await control.request("GET", "/calls")
    assert status == 200
    assert [c["call_id"] for c in json_of(body)["calls"]] == ["abc", "def"]
    status, _, body = await control.request("DELETE", "/calls/abc")
    assert (status, body) == (204, b"")
    assert control.dispatched == [Transmit(b"BYE", ("127.0.0.1", 5062, "udp"))]
    status, _, body = await control.request("DELETE", "/calls/abc")
    assert status == 404 and "abc" in json_of(body)["error"]
    status, _, body = await control.request("POST", "/drain")
    assert (status, json_of(body)) == (202, {"status": "draining", "active_calls": 1})
    _, _, body = await control.request("GET", "/health", token=None)
    assert json_of(body) == {"status": "draining"}
    await control.stop()


@run_async
async def test_hangup_passes_an_allowed_reason_and_refuses_others():
    control = await Control().start()
    status, _, body = await control.request("DELETE", "/calls/abc?reason=shutdown")
    assert status == 400 and "no_credit" in json_of(body)["error"]
    assert control.core.hangups == [] and control.dispatched == []
    status, _, _ = await control.request("DELETE", "/calls/abc?reason=no_credit")
    assert status == 204
    status, _, _ = await control.request("DELETE", "/calls/def")
    assert status == 204
    assert control.core.hangups == [("abc", "no_credit"), ("def", "operator_hangup")]
    await control.stop()


@run_async
async def test_unknown_routes_and_methods():
    control = await Control().start()
    status, _, _ = await control.request("GET", "/nothing")
    assert status == 404
    status, headers, _ = await control.request("GET", "/config")
    assert status == 405 and headers["allow"] == "POST"
    status, headers, _ = await control.request("POST", "/calls/abc")
    assert status == 405 and headers["allow"] == "DELETE"
    await control.stop()


@run_async
async def test_uvicorn_leaves_the_signal_handlers_alone():
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    control = await Control().start()
    assert {sig: signal.getsignal(sig) for sig in before} == before
    await control.stop()
    assert {sig: signal.getsignal(sig) for sig in before} == before


def test_save_snapshot_replaces_atomically(tmp_path):
    save_snapshot(tmp_path, b"one")
    save_snapshot(tmp_path, b"two")
    assert (tmp_path / SNAPSHOT_FILE).read_bytes() == b"two"
    assert sorted(p.name for p in tmp_path.iterdir()) == [SNAPSHOT_FILE]


def _delta(base: int, version: int, **changes) -> bytes:
    from edge.snapshot_wire import encode_delta

    return encode_delta(
        {
            "base_version": base,
            "version": version,
            "content_hash": f"hash-{version}",
            "generated_at": None,
            "replace": changes.pop("replace", {}),
            "trunks": changes.pop("trunks", []),
            "deleted_trunks": changes.pop("deleted_trunks", []),
        }
    )


@run_async
async def test_a_delta_on_the_applied_version_is_applied_and_saved_whole(tmp_path):
    from edge.snapshot_wire import decode

    control = await Control().start(state_dir=tmp_path)
    before = control.core.config
    data = _delta(3, 4, trunks=[trunk_doc(id=1, max_channels=7)], deleted_trunks=[2])
    status, _, body = await control.request("POST", "/config", data)
    assert (status, json_of(body)) == (200, {"applied_version": 4, "refusals": []})
    config = control.core.config
    assert config.trunks[1].max_channels == 7 and 2 not in config.trunks
    assert config.customers == before.customers
    # A restart must not need the base it no longer has: what is saved is the whole document.
    saved = decode((tmp_path / SNAPSHOT_FILE).read_bytes())
    assert [t["id"] for t in saved["trunks"]] == [1] and saved["version"] == 4
    assert saved["customers"] == before.source["customers"]
    await control.stop()


@run_async
async def test_a_delta_on_another_version_is_412_and_changes_nothing():
    control = await Control().start()
    before = control.core.config
    status, _, body = await control.request("POST", "/config", _delta(2, 4, deleted_trunks=[1]))
    assert status == 412
    assert json_of(body)["applied_version"] == 3
    assert control.core.config is before and control.core.applied == []
    await control.stop()


def test_a_compiled_snapshot_leaves_nothing_young_for_the_collector():
    """The compile's million objects must not be walked by the first collections after it
    (on the event loop: hundreds of milliseconds with 100,000 numbers)."""
    data = orjson.dumps(big_snapshot_doc(trunks=2_000, numbers=20_000, customers=200))
    gc.collect()
    try:
        config = compile_snapshot(data)
        young = len(gc.get_objects(generation=0)) + len(gc.get_objects(generation=1))
        assert len(config.trunks) == 2_000
        assert young < 5_000, young
    finally:
        gc.unfreeze()


@run_async
async def test_a_snapshot_compiles_on_the_loop_with_the_loop_running_between_slices(monkeypatch):
    """A worker thread beside a busy loop takes the GIL from it half the time (SIP waits);
    the compile runs on the loop itself, in slices, with everything ready run in between."""
    from edge.runtime import control as control_module

    control = await Control().start()
    loop_thread = threading.get_ident()
    threads: set[int] = set()
    turns = {"ticker": 0, "between_steps": 0}
    last_seen = [0]

    def watched(data, previous=None):
        steps = compile_snapshot_steps(data, previous)
        while True:
            threads.add(threading.get_ident())
            if turns["ticker"] != last_seen[0]:  # the loop ran something since the last step
                turns["between_steps"] += 1
                last_seen[0] = turns["ticker"]
            try:
                next(steps)
            except StopIteration as done:
                return done.value
            yield

    monkeypatch.setattr(control_module, "compile_snapshot_steps", watched)
    stop = asyncio.Event()

    async def ticker():
        while not stop.is_set():
            turns["ticker"] += 1
            await asyncio.sleep(0)

    ticking = asyncio.ensure_future(ticker())
    doc = big_snapshot_doc(trunks=2_000, numbers=20_000, customers=200)
    doc["version"] = 4
    data = orjson.dumps(doc)
    status, _, body = await control.request("POST", "/config", data)
    stop.set()
    await ticking
    gc.unfreeze()
    assert status == 200, body
    assert len(control.core.config.trunks) == 2_000
    assert threads == {loop_thread}
    assert turns["between_steps"] >= 2, turns
    await control.stop()


def test_a_compile_yields_every_few_trunks_and_numbers():
    doc = big_snapshot_doc(trunks=100, numbers=5_000, customers=10)
    steps = compile_snapshot_steps(orjson.dumps(doc))
    count = 0
    try:
        while True:
            next(steps)
            count += 1
    except StopIteration as done:
        config = done.value
    finally:
        gc.unfreeze()
    assert len(config.trunks) == 100 and config.number(doc["numbers"][-1][0]) is not None
    assert count >= 100 // 4 + 5_000 // 256, count


@run_async
async def test_a_sliced_job_cancelled_half_way_is_closed_and_the_collector_back_on():
    """The compile pauses the collector; an apply abandoned half-way must not leave it off."""
    assert gc.isenabled()
    doc = big_snapshot_doc(trunks=2_000, numbers=20_000, customers=200)
    job = asyncio.ensure_future(
        run_in_slices(compile_snapshot_steps(orjson.dumps(doc)), slice_seconds=0.0001)
    )
    for _ in range(5):
        await asyncio.sleep(0)
    assert not gc.isenabled()  # half-way
    job.cancel()
    with pytest.raises(asyncio.CancelledError):
        await job
    gc.unfreeze()
    assert gc.isenabled()


@run_async
async def test_run_in_slices_returns_the_result_and_raises_what_the_steps_raise():
    def steps(fail: bool):
        for _ in range(10):
            yield
        if fail:
            raise ValueError("bad line")
        return 42

    assert await run_in_slices(steps(False)) == 42
    with pytest.raises(ValueError, match="bad line"):
        await run_in_slices(steps(True))


@run_async
async def test_the_loop_turns_again_between_slices_while_it_has_work_waiting():
    """One turn of the loop reads at most 32 datagrams a socket: while turns come back busy
    (SIP was waiting), the loop turns again before the next slice, up to `yields` turns; when a
    turn comes back at once, the compile goes on."""
    slice_seconds, yields = 0.002, 4
    busy = {"turns": 12}
    turns = [0]
    gaps: list[int] = []

    def steps():
        seen = 0
        for _ in range(12):
            gaps.append(turns[0] - seen)
            seen = turns[0]
            until = time.perf_counter() + slice_seconds  # a step takes the whole slice
            while time.perf_counter() < until:
                pass
            yield
        return None

    async def other_work():  # a turn of SIP: busy (a backlog) for the first turns, then light
        while True:
            turns[0] += 1
            if busy["turns"] > 0:
                busy["turns"] -= 1
                until = time.perf_counter() + slice_seconds / 2
                while time.perf_counter() < until:
                    pass
            await asyncio.sleep(0)

    worker = asyncio.ensure_future(other_work())
    try:
        await run_in_slices(steps(), slice_seconds=slice_seconds, yields=yields)
    finally:
        worker.cancel()
    # Slices 2-4 follow the busy turns (4 each at most, 12 in all), then one turn a slice.
    assert gaps[1:4] == [yields, yields, yields]
    assert sorted(gaps[5:])[len(gaps[5:]) // 2] == 1


class Freed:
    """Notes the thread that dropped its last reference."""

    def __init__(self, threads: list[int]) -> None:
        self.threads = threads

    def __del__(self) -> None:
        self.threads.append(threading.get_ident())


def numbers_doc(count: int, **kwargs):
    """A snapshot with `count` more numbers of trunk 1 (more than a container freed whole)."""
    doc = snapshot_doc(**kwargs)
    doc["numbers"] = [*doc["numbers"], *([f"+1212{n:07d}", 1, 1] for n in range(count))]
    return doc


@run_async
async def test_the_replaced_config_is_freed_off_the_loop():
    """Freeing a 100,000-number config is a million deallocations: on the loop, a SIP stall."""
    control = await Control().start()
    threads: list[int] = []
    doc = numbers_doc(1_000, version=3)
    doc["numbers"].append(Freed(threads))  # a refused row: the config's source still holds it
    control.core.config = EdgeConfig.compile(doc)
    del doc
    status, _, _ = await control.request("POST", "/config", orjson.dumps(snapshot_doc(version=4)))
    assert status == 200 and control.core.config.version == 4
    assert len(threads) == 1 and threads[0] != threading.get_ident()
    await control.stop()


@run_async
async def test_what_the_new_config_shares_with_the_replaced_one_is_left_whole():
    """A trunk changed, the numbers not: the new config reuses the old one's number tables,
    which freeing the old one must leave alone."""
    control = await Control().start()
    control.core.config = EdgeConfig.compile(numbers_doc(1_000, version=3))
    numbers = id(control.core.config._numbers)
    data = orjson.dumps(numbers_doc(1_000, version=4, trunks=[trunk_doc(max_channels=7)]))
    status, _, _ = await control.request("POST", "/config", data)
    assert status == 200
    config = control.core.config
    assert id(config._numbers) == numbers  # reused, so this checks what it should
    assert config.trunks[1].max_channels == 7
    assert config.number("+12120000999") is not None and config.number("+14155550100")
    assert len(config.customer_numbers(1)) == 1_001
    await control.stop()


@run_async
async def test_a_scrape_builds_the_trunks_series_off_the_loop(monkeypatch):
    """A series per trunk: with 10,000 trunks building and writing them out took ~100 ms,
    every scrape a SIP stall if done on the loop."""
    from prometheus_client.core import GaugeMetricFamily

    threads: set[int] = set()
    add_metric = GaugeMetricFamily.add_metric

    def recorded(self, *args, **kwargs):
        if self.name == "trunkline_edge_active_calls":
            threads.add(threading.get_ident())
        return add_metric(self, *args, **kwargs)

    monkeypatch.setattr(GaugeMetricFamily, "add_metric", recorded)
    control = await Control().start()
    status, _, body = await control.request("GET", "/metrics")
    assert status == 200 and b'trunkline_edge_active_calls{trunk="2"} 0.0' in body
    assert threads and threading.get_ident() not in threads
    await control.stop()
