"""Per-trunk limits counted across all edges, in Redis; local shares when Redis is down.

`ClusterLimits` implements `edge.limits.Limits` for the asyncio runtime:

- **Shared counting** (Redis healthy). `acquire()` returns None and queues the admission; one
  writer task sends everything queued since its last round trip (admissions, releases, lease
  renewals) as one pipeline, and reports each admission through `on_decided(call_id, granted,
  reason)`. The runtime turns that into `core.slot_decided(SlotGranted | SlotRefused)` and
  dispatches the outputs (`edge.limits`: the core asks with `AcquireSlot`).
  Each admission is one atomic Lua script (`_ACQUIRE`), so N edges together never hold more
  than `max_channels` slots of a trunk, nor take more than `max_cps` tokens a second.
- **Leases.** A slot is a member `"{node}:{call_id}"` of the trunk's sorted set, scored with its
  lease expiry in milliseconds of Redis' own clock (`TIME` inside the scripts, one clock for all
  edges). This edge re-registers all its slots every `renew_every` seconds with a fresh lease;
  the scripts drop expired members first, so the slots of a dead edge free themselves after
  `lease_seconds` at most.
- **Fallback** (Redis unreachable, or any Redis error). One WARNING, then every decision is
  local and synchronous: `acquire()` answers True/False against this edge's share of each limit
  (the limit divided by `share`, rounded down, at least 1), counting the calls this edge already
  holds. Admissions waiting for Redis when it failed are answered from the same local share.
  Every `probe_every` seconds the writer tries again; when Redis answers, it re-registers all of
  this edge's slots (those admitted during the outage included), removes the ones released
  meanwhile, logs at INFO and returns to shared counting.

`usage()` never waits for Redis: while shared it reports the calls this edge holds (a lower
bound of the trunk's total, so the policy refuses what is surely over the limit) with CPS
available, and leaves the final word to the script; in fallback it reports the local share,
scaled so that the policy's comparison against the trunk's full limit gives the local answer.

`close()` flushes the releases already queued (after a drain, those of every call) and leaves
any slot still held to expire with its lease: a call the drain did not end may still be up at
both ends, and counting it a little longer errs on the safe side.

Everything except the writer coroutine runs synchronously on the event loop's thread: no task
or future per call or per message, one task for the whole object.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError

from edge.config import TrunkPolicy
from edge.limits import LocalLimits
from edge.policy import Usage

__all__ = ["ClusterLimits"]

log = logging.getLogger(__name__)

# Replies of _ACQUIRE.
_REFUSED_CHANNEL = 0
_GRANTED = 1
_REFUSED_CPS = 2
_REASONS = {_REFUSED_CHANNEL: "channel_limit", _REFUSED_CPS: "cps_limit"}

# Idle CPS buckets expire: with burst == rate an idle bucket is full again after one second, so
# a bucket key that vanished after two idle seconds is the same as a full one.
_BUCKET_TTL_MS = 2000
# Members per renewal script call (Lua's unpack() has a stack limit near 8,000 values).
_RENEW_CHUNK = 1000

# KEYS[1] the trunk's slots (sorted set: member -> lease expiry, ms of Redis' clock)
# KEYS[2] the trunk's CPS bucket (hash: tokens, last)
# ARGV member, max_channels, max_cps, count_cps ("1"/"0"), lease_ms
# Returns 1 granted, 0 channel limit, 2 CPS limit. A refusal changes nothing.
_ACQUIRE = f"""
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[5])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
    return 0
  end
  if ARGV[4] == '1' then
    local rate = tonumber(ARGV[3])
    local b = redis.call('HMGET', KEYS[2], 'tokens', 'last')
    local tokens = tonumber(b[1])
    local last = tonumber(b[2])
    if tokens == nil or last == nil then
      tokens = rate
      last = now
    elseif now > last then
      tokens = math.min(rate, tokens + (now - last) * rate / 1000)
      last = now
    end
    if tokens < 1 then
      return 2
    end
    redis.call('HSET', KEYS[2], 'tokens', tokens - 1, 'last', last)
    redis.call('PEXPIRE', KEYS[2], {_BUCKET_TTL_MS})
  end
end
redis.call('ZADD', KEYS[1], now + lease, ARGV[1])
if redis.call('PTTL', KEYS[1]) < lease then
  redis.call('PEXPIRE', KEYS[1], lease)
end
return 1
"""

# KEYS[1] the trunk's slots; ARGV lease_ms, member...
# (Re-)registers the members with a fresh lease; returns how many were missing.
_RENEW = """
local t = redis.call('TIME')
local lease = tonumber(ARGV[1])
local expiry = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + lease
local args = {}
for i = 2, #ARGV do
  args[#args + 1] = expiry
  args[#args + 1] = ARGV[i]
end
local added = redis.call('ZADD', KEYS[1], unpack(args))
if redis.call('PTTL', KEYS[1]) < lease then
  redis.call('PEXPIRE', KEYS[1], lease)
end
return added
"""

# What makes us count locally. OSError (TimeoutError included) covers what redis-py does not wrap.
_FAILURES = (RedisError, OSError)


class _Counters(LocalLimits):
    """LocalLimits that can also take in a slot granted elsewhere (by Redis), without checking
    a limit, so that the local share counts every call this edge holds."""

    __slots__ = ()

    def adopt(self, trunk: TrunkPolicy, call_id: str) -> None:
        self._counters(trunk).calls.add(call_id)


class _Pending:
    """An admission waiting for Redis."""

    __slots__ = ("call_id", "count_cps", "released", "trunk")

    def __init__(self, trunk: TrunkPolicy, call_id: str, count_cps: bool) -> None:
        self.trunk = trunk
        self.call_id = call_id
        self.count_cps = count_cps
        self.released = False  # the call ended before the answer: give back a granted slot


class ClusterLimits:
    """`Limits` shared by all edges through Redis; see the module docstring."""

    def __init__(
        self,
        redis_url: str,
        *,
        node: str,
        loop: asyncio.AbstractEventLoop,
        on_decided: Callable[[str, bool, str | None], None],
        share: int = 1,
        lease_seconds: float = 30,
        renew_every: float = 10,
        key_prefix: str = "tl:",
        socket_timeout: float = 0.2,
        probe_every: float = 1.0,
    ) -> None:
        if share < 1:
            raise ValueError("share must be at least 1")
        self.node = node
        self.share = share
        self._url = redis_url
        self._loop = loop
        self._on_decided = on_decided
        self._lease_ms = max(1, round(lease_seconds * 1000))
        self._renew_every = renew_every
        self._prefix = key_prefix
        self._socket_timeout = socket_timeout
        self._probe_every = probe_every

        self._redis: aioredis.Redis | None = None
        self._acquire_sha = ""
        self._renew_sha = ""
        self._shared = False  # counting in Redis (False before start() and in fallback)
        self._warned = False  # the outage WARNING was logged
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._renew_timer: asyncio.TimerHandle | None = None
        self._wake = asyncio.Event()

        self._local = _Counters()  # every slot this edge holds, and the fallback CPS buckets
        self._held: dict[str, int] = {}  # call id -> trunk id, every slot this edge holds
        self._local_only: set[str] = set()  # held slots Redis does not know of yet
        self._pending: dict[str, _Pending] = {}  # call id -> admission waiting for Redis
        self._queue: list[_Pending] = []  # admissions not yet sent
        self._releases: list[tuple[int, str]] = []  # (trunk id, call id) to ZREM
        self._renew_due = False
        # trunk id -> (max_channels, max_cps, the policy with this edge's share of them)
        self._scaled: dict[int, tuple[int, int, TrunkPolicy]] = {}

        # Plain counters for the metrics endpoint.
        self.outages = 0
        self.decided_locally = 0  # admissions answered from the local share

    # --- lifecycle ---------------------------------------------------------------------------

    @property
    def shared(self) -> bool:
        """Whether decisions are being taken in Redis (False: local shares)."""
        return self._shared

    async def start(self) -> None:
        """Connect and load the scripts; if Redis is unreachable, count locally and retry in
        the background. Never raises for a Redis outage."""
        self._redis = aioredis.Redis.from_url(
            self._url,
            socket_timeout=self._socket_timeout,
            socket_connect_timeout=self._socket_timeout,
            retry=Retry(NoBackoff(), 0),  # a failure means fallback at once, not retries
            max_connections=4,
        )
        try:
            await self._load_scripts()
        except _FAILURES as exc:
            self._enter_fallback(exc, [])
        else:
            self._shared = True
        self._task = self._loop.create_task(self._run(), name="cluster-limits")
        self._renew_timer = self._loop.call_later(self._renew_every, self._renew_tick)

    async def close(self, timeout: float = 1.0) -> None:
        """Send the releases already queued, then disconnect. Slots still held are left to
        expire with their lease; admissions still waiting are dropped unanswered (the core
        ended those calls when it closed)."""
        self._closing = True
        if self._renew_timer is not None:
            self._renew_timer.cancel()
            self._renew_timer = None
        for pending in self._queue:
            self._pending.pop(pending.call_id, None)
        self._queue = []
        self._renew_due = False
        task, self._task = self._task, None
        if task is not None:
            if self._shared:
                self._wake.set()  # the writer sends the queued releases and returns
            else:
                task.cancel()  # probing: nothing to send
            try:
                await asyncio.wait_for(task, timeout)
            except (TimeoutError, asyncio.CancelledError):
                pass
            except Exception:  # already logged by _run; closing must go on
                log.debug("cluster limits writer failed at close", exc_info=True)
        if self._redis is not None:
            with contextlib.suppress(*_FAILURES):
                await self._redis.aclose()
            self._redis = None
        self._shared = False

    # --- Limits ------------------------------------------------------------------------------

    def usage(self, trunk: TrunkPolicy, now: float) -> Usage:
        if self._shared:
            # This edge's own calls: the trunk's total is at least that. CPS: the script's call.
            return Usage(self._local.active_calls(trunk.id), True)
        scaled = self._share_of(trunk)
        usage = self._local.usage(scaled, now)
        if usage.active_calls >= scaled.max_channels:
            # Full for this edge: say so in terms of the trunk's limit, which the policy uses.
            return Usage(max(usage.active_calls, trunk.max_channels), usage.cps_available)
        return usage

    def acquire(
        self, trunk: TrunkPolicy, call_id: str, now: float, *, count_cps: bool = True
    ) -> bool | None:
        if call_id in self._held:
            return True
        if call_id in self._pending:
            return None
        if not self._shared:
            return self._acquire_locally(trunk, call_id, now, count_cps)[0]
        pending = _Pending(trunk, call_id, count_cps)
        self._pending[call_id] = pending
        self._queue.append(pending)
        self._wake.set()
        return None

    def release(self, trunk_id: int, call_id: str) -> None:
        pending = self._pending.get(call_id)
        if pending is not None:
            pending.released = True  # given back as soon as Redis grants it
            return
        if self._held.pop(call_id, None) is None:
            return  # never held (refused), or released already
        self._local.release(trunk_id, call_id)
        if call_id in self._local_only:
            self._local_only.discard(call_id)  # Redis never knew it
            return
        self._releases.append((trunk_id, call_id))  # sent now, or when Redis is back
        if self._shared:
            self._wake.set()

    def active_calls(self, trunk_id: int) -> int:
        """The calls this edge holds on the trunk (not the cluster's total)."""
        return self._local.active_calls(trunk_id)

    # --- local decisions ---------------------------------------------------------------------

    def _share_of(self, trunk: TrunkPolicy) -> TrunkPolicy:
        cached = self._scaled.get(trunk.id)
        if cached is not None and cached[0] == trunk.max_channels and cached[1] == trunk.max_cps:
            return cached[2]
        scaled = replace(
            trunk,
            max_channels=self._split(trunk.max_channels),
            max_cps=self._split(trunk.max_cps),
        )
        self._scaled[trunk.id] = (trunk.max_channels, trunk.max_cps, scaled)
        return scaled

    def _split(self, limit: int) -> int:
        """This edge's share of a limit: floor, at least 1 (a limit of 0 stays 0)."""
        return max(1, limit // self.share) if limit > 0 else 0

    def _acquire_locally(
        self, trunk: TrunkPolicy, call_id: str, now: float, count_cps: bool
    ) -> tuple[bool, str | None]:
        self.decided_locally += 1
        scaled = self._share_of(trunk)
        usage = self._local.usage(scaled, now)
        if usage.active_calls >= scaled.max_channels:
            return False, "channel_limit"
        if not self._local.acquire(scaled, call_id, now, count_cps=count_cps):
            return False, "cps_limit"
        self._held[call_id] = trunk.id
        self._local_only.add(call_id)
        return True, None

    # --- the writer --------------------------------------------------------------------------

    def _renew_tick(self) -> None:
        self._renew_due = True
        self._wake.set()
        if not self._closing:
            self._renew_timer = self._loop.call_later(self._renew_every, self._renew_tick)

    async def _run(self) -> None:
        while True:
            try:
                if self._closing:
                    if self._shared and self._releases:
                        await self._flush(recovering=False)
                    return
                if self._shared:
                    await self._wake.wait()
                    self._wake.clear()
                    await self._flush(recovering=False)
                else:
                    await asyncio.sleep(self._probe_every)
                    await self._flush(recovering=True)
            except asyncio.CancelledError:
                raise
            except Exception:
                # A bug, not an outage: keep counting rather than lose the writer.
                log.exception("cluster limits writer failed; continuing")
                await asyncio.sleep(self._probe_every)

    async def _flush(self, *, recovering: bool) -> None:
        """One round trip: releases, then renewals (all held slots), then admissions."""
        acquires, self._queue = self._queue, []
        releases, self._releases = self._releases, []
        renew = self._renew_due or recovering
        self._renew_due = False
        if not (acquires or releases or renew):
            return
        held = dict(self._held) if renew else None
        try:
            if recovering:
                await self._load_scripts()
            zrems, results = await self._execute(acquires, releases, held)
        except _FAILURES as exc:
            self._releases[:0] = releases
            if recovering:
                log.debug("Redis still unreachable: %s", _describe(exc))
                return
            self._enter_fallback(exc, acquires)
            return
        answers = len(results) - len(acquires)
        if held is not None:
            self._renewed(held, results[zrems:answers], recovering=recovering)
        if recovering:
            self._shared = True
            self._warned = False
            log.info(
                "Redis is back: back to shared counting (%d slots re-registered)",
                len(held or ()),
            )
            if self._local_only:  # admitted locally during the round trip
                self._renew_due = True
            if self._queue or self._releases or self._renew_due:
                self._wake.set()
        self._deliver(acquires, results[answers:])

    async def _execute(
        self,
        acquires: Sequence[_Pending],
        releases: Sequence[tuple[int, str]],
        held: dict[str, int] | None,
    ) -> tuple[int, list[Any]]:
        """Run the batch as one pipeline; reload the scripts once if Redis forgot them (every
        command of a batch is idempotent, so the batch is simply sent again).

        Returns the number of ZREM commands and the results: the ZREMs (one per trunk among
        `releases`), the renewals (one per chunk of a trunk's held slots), the admissions."""
        zrems, results = await self._pipeline(acquires, releases, held)
        if any(isinstance(r, NoScriptError) for r in results):
            await self._load_scripts()  # Redis restarted or flushed its scripts
            zrems, results = await self._pipeline(acquires, releases, held)
        for result in results:
            if isinstance(result, Exception):
                raise result
        return zrems, results

    async def _pipeline(
        self,
        acquires: Sequence[_Pending],
        releases: Sequence[tuple[int, str]],
        held: dict[str, int] | None,
    ) -> tuple[int, list[Any]]:
        client = self._redis
        if client is None:
            raise ConnectionError("not connected")
        pipe = client.pipeline(transaction=False)
        by_trunk: dict[int, list[str]] = {}
        for trunk_id, call_id in releases:
            by_trunk.setdefault(trunk_id, []).append(call_id)
        for trunk_id, call_ids in by_trunk.items():
            pipe.zrem(self._calls_key(trunk_id), *map(self._member, call_ids))
        zrems = len(by_trunk)
        if held is not None:
            by_trunk = {}
            for call_id, trunk_id in held.items():
                by_trunk.setdefault(trunk_id, []).append(call_id)
            for trunk_id, call_ids in by_trunk.items():
                key = self._calls_key(trunk_id)
                for i in range(0, len(call_ids), _RENEW_CHUNK):
                    members = map(self._member, call_ids[i : i + _RENEW_CHUNK])
                    pipe.evalsha(self._renew_sha, 1, key, self._lease_ms, *members)
        for p in acquires:
            trunk = p.trunk
            pipe.evalsha(
                self._acquire_sha,
                2,
                self._calls_key(trunk.id),
                self._cps_key(trunk.id),
                self._member(p.call_id),
                trunk.max_channels,
                trunk.max_cps,
                1 if p.count_cps else 0,
                self._lease_ms,
            )
        results: list[Any] = await pipe.execute(raise_on_error=False)
        return zrems, results

    def _renewed(self, held: dict[str, int], results: Sequence[Any], *, recovering: bool) -> None:
        """After re-registering `held`: Redis knows those slots now; any of them released
        during the round trip is removed again."""
        fresh = len(self._local_only.intersection(held))  # admitted locally: new to Redis
        self._local_only.difference_update(held)
        gone = [(t, c) for c, t in held.items() if c not in self._held]
        if gone:
            self._releases.extend(gone)
            self._wake.set()
        if not recovering:
            expired = sum(r for r in results if isinstance(r, int)) - fresh
            if expired > 0:
                # This edge stalled past a lease and another edge may have taken the slots;
                # the calls are real, so they count again (the trunk may be over its limit
                # until enough of them end).
                log.warning("%d call slots had expired in Redis and were re-registered", expired)

    def _deliver(self, acquires: Sequence[_Pending], results: Sequence[Any]) -> None:
        for pending, result in zip(acquires, results, strict=True):
            call_id = pending.call_id
            self._pending.pop(call_id, None)
            trunk = pending.trunk
            if result == _GRANTED:
                if pending.released:
                    self._releases.append((trunk.id, call_id))
                    self._wake.set()
                    continue
                self._held[call_id] = trunk.id
                self._local.adopt(self._share_of(trunk), call_id)
                self._decided(call_id, True, None)
            elif not pending.released:
                self._decided(call_id, False, _REASONS.get(int(result), "channel_limit"))

    def _decided(self, call_id: str, granted: bool, reason: str | None) -> None:
        try:
            self._on_decided(call_id, granted, reason)
        except Exception:
            log.exception("on_decided failed for call %s", call_id)

    def _enter_fallback(self, exc: BaseException, sent: Sequence[_Pending]) -> None:
        """Count locally from now on; answer every admission still waiting."""
        self._shared = False
        self._renew_due = True
        self.outages += 1
        if not self._warned:
            self._warned = True
            log.warning(
                "Redis unreachable (%s): counting locally with 1/%d of each limit",
                _describe(exc),
                self.share,
            )
        # The scripts of the batch that failed may have run: give back what they may have
        # taken unless the call holds it now. (Harmless ZREMs otherwise.)
        sent_ids = {p.call_id for p in sent}
        waiting = [*sent, *self._queue]
        self._queue = []
        now = self._loop.time()
        for pending in waiting:
            call_id = pending.call_id
            self._pending.pop(call_id, None)
            trunk = pending.trunk
            if pending.released:
                granted, reason = False, None
            else:
                granted, reason = self._acquire_locally(trunk, call_id, now, pending.count_cps)
            if not granted and call_id in sent_ids:
                self._releases.append((trunk.id, call_id))
            if not pending.released:
                self._decided(call_id, granted, reason)

    async def _load_scripts(self) -> None:
        client = self._redis
        if client is None:
            raise ConnectionError("not connected")
        self._acquire_sha = await client.script_load(_ACQUIRE)
        self._renew_sha = await client.script_load(_RENEW)

    # --- keys --------------------------------------------------------------------------------

    def _calls_key(self, trunk_id: int) -> str:
        return f"{self._prefix}trunk:{trunk_id}:calls"

    def _cps_key(self, trunk_id: int) -> str:
        return f"{self._prefix}trunk:{trunk_id}:cps"

    def _member(self, call_id: str) -> str:
        return f"{self.node}:{call_id}"


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
