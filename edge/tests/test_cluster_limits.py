"""ClusterLimits against a real Redis: a redis-server of this module's own (edge/tests/
redis_server.py), not the machine's.

Each test uses its own key prefix and deletes its keys afterwards. Outages are real: a closed
port, or a small TCP proxy in front of Redis that the test stops and restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis
import redis.asyncio as aioredis

from edge.config import TrunkPolicy
from edge.runtime.cluster_limits import ClusterLimits
from edge.tests.factories import compiled, trunk_doc
from edge.tests.redis_server import redis_server

REDIS_URL = ""  # this module's own server, set by `own_redis`
pytestmark = pytest.mark.needs("redis")


@pytest.fixture(scope="module", autouse=True)
def own_redis() -> Iterator[str]:
    global REDIS_URL
    with redis_server() as url:
        REDIS_URL = url
        yield url


LOGGER = "edge.runtime.cluster_limits"


def trunk(**limits: int) -> TrunkPolicy:
    return compiled(trunks=[trunk_doc(**limits)]).trunks[1]


@pytest.fixture
def prefix() -> Iterator[str]:
    value = f"tltest:{uuid.uuid4().hex}:"
    yield value
    client = redis.Redis.from_url(REDIS_URL)
    try:
        keys = list(client.scan_iter(match=value + "*"))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


class Edge:
    """A ClusterLimits and the decisions it reported."""

    def __init__(self, url: str, node: str, prefix: str, **options: Any) -> None:
        self.decided: dict[str, tuple[bool, str | None]] = {}
        self.limits = ClusterLimits(
            url,
            node=node,
            loop=asyncio.get_running_loop(),
            on_decided=self._on_decided,
            key_prefix=prefix,
            **options,
        )

    def _on_decided(self, call_id: str, granted: bool, reason: str | None) -> None:
        assert call_id not in self.decided, "decided twice"
        self.decided[call_id] = (granted, reason)

    def granted(self) -> list[str]:
        return [c for c, (ok, _) in self.decided.items() if ok]


async def until(predicate: Callable[[], bool], timeout: float = 3.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def members(prefix: str, trunk_id: int) -> set[str]:
    client = aioredis.Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        return {str(m) for m in await client.zrange(f"{prefix}trunk:{trunk_id}:calls", 0, -1)}
    finally:
        await client.aclose()


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), 15))


def test_two_edges_admit_exactly_the_limit(prefix: str) -> None:
    policy = trunk(max_channels=10, max_cps=1000)

    async def test() -> None:
        a = Edge(REDIS_URL, "a", prefix)
        b = Edge(REDIS_URL, "b", prefix)
        await a.limits.start()
        await b.limits.start()
        assert a.limits.shared and b.limits.shared
        now = asyncio.get_running_loop().time()
        for i in range(30):
            edge = a if i % 2 else b
            assert edge.limits.acquire(policy, f"c{i}", now, count_cps=i % 3 == 0) is None
            if i % 4 == 3:
                await asyncio.sleep(0)  # both writers busy at once, several batches each
        await until(lambda: len(a.decided) + len(b.decided) == 30)
        granted = a.granted() + b.granted()
        assert len(granted) == 10
        refusals = [r for e in (a, b) for ok, r in e.decided.values() if not ok]
        assert refusals == ["channel_limit"] * 20
        assert await members(prefix, policy.id) == {
            f"{node}:{c}" for node, e in (("a", a), ("b", b)) for c in e.granted()
        }
        # Each edge knows its own calls: usage and active_calls count them.
        for edge in (a, b):
            assert edge.limits.active_calls(policy.id) == len(edge.granted())
            assert edge.limits.usage(policy, now).active_calls == len(edge.granted())
        holder = a if len(a.granted()) >= 3 else b
        assert holder.limits.acquire(policy, holder.granted()[0], now) is True  # held already

        # Releases free slots for either edge.
        for call_id in holder.granted()[:3]:
            holder.limits.release(policy.id, call_id)
            holder.limits.release(policy.id, call_id)  # twice: harmless
        await until_members(prefix, policy.id, 7)
        for i in range(30, 35):
            assert b.limits.acquire(policy, f"c{i}", now, count_cps=False) is None
        await until(lambda: len(b.decided) + len(a.decided) == 35)
        assert [b.decided[f"c{i}"][0] for i in range(30, 35)].count(True) == 3
        await a.limits.close()
        await b.limits.close()

    run(test)


async def until_members(prefix: str, trunk_id: int, count: int) -> None:
    for _ in range(300):
        if len(await members(prefix, trunk_id)) == count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never {count} members")


def test_a_dead_edges_slots_expire_and_renewed_ones_do_not(
    prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    policy = trunk(max_channels=2, max_cps=100)

    async def test() -> None:
        dead = Edge(REDIS_URL, "dead", prefix, lease_seconds=1, renew_every=60)
        alive = Edge(REDIS_URL, "alive", prefix, lease_seconds=1, renew_every=0.25)
        other = Edge(REDIS_URL, "other", prefix)
        for edge in (dead, alive, other):
            await edge.limits.start()
        now = asyncio.get_running_loop().time()
        dead.limits.acquire(policy, "d1", now)
        await until(lambda: "d1" in dead.decided)
        alive.limits.acquire(policy, "l1", now)
        await until(lambda: "l1" in alive.decided)
        assert dead.decided["d1"] == (True, None) and alive.decided["l1"] == (True, None)
        other.limits.acquire(policy, "o1", now)
        await until(lambda: "o1" in other.decided)
        assert other.decided["o1"] == (False, "channel_limit")

        await asyncio.sleep(1.2)  # "dead" never renews; "alive" renewed four times
        other.limits.acquire(policy, "o2", now)
        other.limits.acquire(policy, "o3", now)
        await until(lambda: len(other.decided) == 3)
        assert other.decided["o2"] == (True, None)
        assert other.decided["o3"] == (False, "channel_limit")
        assert await members(prefix, policy.id) == {"alive:l1", "other:o2"}

        # The "dead" edge was only stalled: its next renewal counts its call again, even over
        # the limit (the call is real), and says so.
        with caplog.at_level(logging.WARNING, logger=LOGGER):
            dead.limits._renew_tick()
            await until_members(prefix, policy.id, 3)
        assert "1 call slots had expired in Redis" in caplog.text
        for edge in (dead, alive, other):
            await edge.limits.close()

    run(test)


def test_cps_is_shared_and_inbound_calls_take_no_token(prefix: str) -> None:
    policy = trunk(max_channels=100, max_cps=5)

    async def test() -> None:
        a = Edge(REDIS_URL, "a", prefix)
        b = Edge(REDIS_URL, "b", prefix)
        await a.limits.start()
        await b.limits.start()
        now = asyncio.get_running_loop().time()
        for i in range(20):
            (a if i % 2 else b).limits.acquire(policy, f"c{i}", now, count_cps=True)
        await until(lambda: len(a.decided) + len(b.decided) == 20)
        decisions = [*a.decided.values(), *b.decided.values()]
        granted = sum(ok for ok, _ in decisions)
        assert 5 <= granted <= 6  # the burst, plus at most one token refilled meanwhile
        assert {r for ok, r in decisions if not ok} == {"cps_limit"}
        # A CPS refusal took no channel; an inbound call needs no token.
        assert len(await members(prefix, policy.id)) == granted
        a.limits.acquire(policy, "in", now, count_cps=False)
        await until(lambda: "in" in a.decided)
        assert a.decided["in"] == (True, None)
        await a.limits.close()
        await b.limits.close()

    run(test)


def test_release_while_waiting_gives_the_slot_back(prefix: str) -> None:
    policy = trunk(max_channels=1, max_cps=10)

    async def test() -> None:
        a = Edge(REDIS_URL, "a", prefix)
        await a.limits.start()
        now = asyncio.get_running_loop().time()
        assert a.limits.acquire(policy, "c1", now) is None
        a.limits.release(policy.id, "c1")  # the caller cancelled before the answer
        a.limits.acquire(policy, "c2", now)
        await until(lambda: "c2" in a.decided)
        await until_members(prefix, policy.id, 0)
        assert "c1" not in a.decided  # nobody waits for it any more
        assert a.decided["c2"] == (False, "channel_limit")  # c1 held it for a moment
        a.limits.acquire(policy, "c3", now)
        await until(lambda: "c3" in a.decided)
        assert a.decided["c3"] == (True, None)
        assert a.limits.active_calls(policy.id) == 1
        await a.limits.close()

    run(test)


def test_forgotten_scripts_are_loaded_again(prefix: str) -> None:
    policy = trunk(max_channels=3, max_cps=10)

    async def test() -> None:
        a = Edge(REDIS_URL, "a", prefix)
        await a.limits.start()
        a.limits._acquire_sha = "0" * 40  # as after a Redis restart: NOSCRIPT
        a.limits.acquire(policy, "c1", asyncio.get_running_loop().time())
        await until(lambda: "c1" in a.decided)
        assert a.decided["c1"] == (True, None)
        assert a.limits.shared
        await a.limits.close()

    run(test)


def test_close_sends_queued_releases_and_leaves_held_slots(prefix: str) -> None:
    policy = trunk(max_channels=5, max_cps=10)

    async def test() -> None:
        a = Edge(REDIS_URL, "a", prefix)
        await a.limits.start()
        now = asyncio.get_running_loop().time()
        a.limits.acquire(policy, "c1", now)
        a.limits.acquire(policy, "c2", now)
        await until(lambda: len(a.decided) == 2)
        a.limits.release(policy.id, "c1")
        await a.limits.close()
        assert await members(prefix, policy.id) == {"a:c2"}  # expires with its lease

    run(test)


def test_unreachable_redis_counts_the_local_share(
    prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    policy = trunk(max_channels=10, max_cps=10)

    async def test() -> None:
        a = Edge("redis://127.0.0.1:1/15", "a", prefix, share=2, probe_every=0.1)
        with caplog.at_level(logging.INFO, logger=LOGGER):
            await a.limits.start()
            assert not a.limits.shared
            now = asyncio.get_running_loop().time()
            answers = [a.limits.acquire(policy, f"c{i}", now, count_cps=False) for i in range(8)]
            assert answers == [True] * 5 + [False] * 3  # 10 / 2
            usage = a.limits.usage(policy, now)
            assert usage.active_calls >= policy.max_channels  # the policy says channel_limit
            a.limits.release(policy.id, "c0")
            assert a.limits.usage(policy, now).active_calls == 4
            # CPS: 5 tokens of 10.
            later = now + 100
            cps = [a.limits.acquire(policy, f"o{i}", later) for i in range(3)]
            assert cps == [True, False, False]  # one channel left
            await asyncio.sleep(0.35)  # a few failed probes: no further warning
            await a.limits.close()
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1
        assert "counting locally with 1/2 of each limit" in warnings[0].getMessage()
        assert not a.decided  # all answered synchronously

    run(test)


def test_fallback_cps_share(prefix: str) -> None:
    policy = trunk(max_channels=100, max_cps=10)

    async def test() -> None:
        a = Edge("redis://127.0.0.1:1/15", "a", prefix, share=3)
        await a.limits.start()
        now = asyncio.get_running_loop().time()
        answers = [a.limits.acquire(policy, f"c{i}", now) for i in range(6)]
        assert answers == [True] * 3 + [False] * 3  # 10 // 3
        assert not a.limits.usage(policy, now).cps_available
        assert a.limits.usage(policy, now + 1).cps_available
        await a.limits.close()

    run(test)


class Proxy:
    """TCP proxy to Redis that can be stopped (connections cut) and started again."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = 0
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(
            self._handle, "127.0.0.1", self.port, reuse_address=True
        )
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in list(self.writers):
            writer.transport.abort()
        self.writers.clear()
        await self.server.wait_closed()
        self.server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self.writers |= {writer, up_writer}

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.IncompleteReadError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.transport.abort()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))


def test_outage_falls_back_and_recovers(prefix: str, caplog: pytest.LogCaptureFixture) -> None:
    policy = trunk(max_channels=4, max_cps=100)
    target = urlsplit(REDIS_URL)

    async def test() -> None:
        proxy = Proxy(target.hostname or "127.0.0.1", target.port or 6379)
        await proxy.start()
        url = target._replace(
            netloc=f"{target.netloc.rpartition('@')[0]}@127.0.0.1:{proxy.port}"
            if "@" in target.netloc
            else f"127.0.0.1:{proxy.port}"
        ).geturl()
        a = Edge(url, "a", prefix, share=2, probe_every=0.1)
        loop = asyncio.get_running_loop()
        with caplog.at_level(logging.INFO, logger=LOGGER):
            await a.limits.start()
            assert a.limits.shared
            for call_id in ("r1", "r2"):
                a.limits.acquire(policy, call_id, loop.time())
            await until(lambda: len(a.decided) == 2)
            assert a.granted() == ["r1", "r2"]

            await proxy.stop()
            # Waiting when Redis went away: answered from the local share (2 of 4, both
            # held already by r1 and r2).
            assert a.limits.acquire(policy, "w1", loop.time()) is None
            await until(lambda: "w1" in a.decided)
            assert a.decided["w1"] == (False, "channel_limit")
            assert not a.limits.shared
            a.limits.release(policy.id, "r1")  # ended during the outage
            assert a.limits.acquire(policy, "f1", loop.time()) is True  # synchronous
            assert a.limits.acquire(policy, "f2", loop.time()) is False

            await proxy.start()  # same port
            await until(lambda: a.limits.shared)
            # Re-registered: the call admitted in fallback counts in Redis now; r1 is gone.
            assert await members(prefix, policy.id) == {"a:r2", "a:f1"}
            assert a.limits.acquire(policy, "s1", loop.time()) is None
            await until(lambda: "s1" in a.decided)
            assert a.decided["s1"] == (True, None)
            await a.limits.close()
        await proxy.stop()
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "1/2 of each limit" in warnings[0]
        infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
        assert any("back to shared counting" in m for m in infos)

    run(test)
