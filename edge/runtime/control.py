"""The edge's control API: a plain ASGI app served by uvicorn on the edge's own event loop.

Every route needs ``Authorization: Bearer <token>`` (compared with `hmac.compare_digest`),
except that ``GET /health`` without a token answers only ``{"status": ...}`` so a load
balancer or container health check can probe it; with the token it says more.

    GET    /health            200 {"status": "ok"|"draining", "node", "config_version",
                                   "active_calls", "core": "compiled"|"interpreted (why)",
                                   "allocator": "malloc"|"pymalloc"}
                                   (no token: {"status"} only)
    GET    /metrics           200 Prometheus text (private registry, read from core.stats)
    POST   /config            body: a snapshot document (JSON, docs/snapshot.md) or a delta
                              on the applied version (edge/snapshot_wire.py)
                              200 {"applied_version": N}; 400 {"error"} if it does not compile
                              (the old config stays); 409 {"error", "applied_version"} if it
                              is older than the applied one; 412 {"error", "applied_version"}
                              for a delta on another version (send the whole snapshot);
                              413 if larger than the limit
    POST   /drain             202 {"status": "draining", "active_calls": N}
    GET    /calls             200 {"calls": [...]}  (core.calls())
    DELETE /calls/{call_id}   204, or 404 {"error"}; ``?reason=no_credit`` (or the default
                              ``operator_hangup``: `edge.calls.HANGUP_REASONS`) goes on the
                              CDR, any other reason is 400 {"error"}
    anything else             401 without the token, then 404 / 405 {"error"}

A snapshot is decoded and compiled on the event loop a slice of about a millisecond at a time
(`run_in_slices`; 100,000 numbers take longer than the loop may wait, and a worker thread would
take the GIL from a busy loop half the time), then swapped in with one `apply_config` call:
calls in progress keep the trunk objects they started with. The replaced config is freed on a
worker thread (`release_config`), and /metrics is built and written out on one
(`EdgeCollector`). The accepted bytes are saved to ``<state-dir>/snapshot.json`` (temp file,
fsync, `os.replace`) for a restart that cannot reach the control plane.

This module must never decide anything about calls, never read or write SIP, and never touch
Django: it translates HTTP into calls of the core and of the runtime.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hmac
import logging
import os
import socket
import sys
import tempfile
import time
import urllib.parse
from collections import Counter
from collections.abc import Awaitable, Callable, Generator, Iterable, MutableMapping, Sequence
from concurrent.futures import Executor
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import orjson
import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector, CollectorRegistry

from edge import native, snapshot_wire
from edge.calls import HANGUP_REASONS
from edge.config import ConfigError, EdgeConfig
from edge.runtime import allocator
from edge.slices import Steps, run_to_end

if TYPE_CHECKING:
    from edge.b2bua import Output

__all__ = [
    "BaseVersionMismatch",
    "ControlApp",
    "ControlServer",
    "ControlledCore",
    "EdgeCollector",
    "bind_control_socket",
    "compile_snapshot",
    "compile_snapshot_steps",
    "release_config",
    "run_in_slices",
    "save_snapshot",
    "start_control_server",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

SNAPSHOT_FILE = "snapshot.json"
DEFAULT_MAX_BODY = 64 * 1024 * 1024

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class CoreStats(Protocol):
    """The counters the metrics collector reads (`edge.b2bua.Stats`)."""

    attempts_total: int
    answers_total: int
    auth_failures_total: int
    responses_total: dict[int, int]
    refusals_total: dict[str, int]


class ControlledCore(Protocol):
    """What the control API needs of the B2BUA (`edge.b2bua.B2bua`)."""

    node: str
    config: EdgeConfig
    draining: bool

    @property
    def stats(self) -> CoreStats: ...

    @property
    def active_calls(self) -> int: ...

    def apply_config(self, config: EdgeConfig) -> None: ...

    def drain(self) -> None: ...

    def calls(self) -> list[dict[str, object]]: ...

    def hangup(
        self, call_id: str, now: float, wall: float, reason: str = ...
    ) -> Sequence[Output] | None: ...


# --- snapshots --------------------------------------------------------------------------------


# While a worker thread frees a replaced config, the event loop gets the GIL back at least
# this often (Python's default, 5 ms, lets a SIP answer wait several of those).
RELEASE_SWITCH_INTERVAL = 0.0005

# The event loop decodes and compiles a snapshot in slices this long (`run_in_slices`),
# handling everything ready in between: up to APPLY_YIELDS turns of the loop while each turn
# still takes a quarter of a slice or more (SIP was waiting).
APPLY_SLICE = 0.001
APPLY_YIELDS = 8


@contextlib.contextmanager
def _loop_first() -> Generator[None, None, None]:
    """A short GIL switch interval while a worker thread does bulk work, so the event loop
    waits at most that long for the GIL between the worker's steps."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(RELEASE_SWITCH_INTERVAL)
    try:
        yield
    finally:
        sys.setswitchinterval(interval)


@contextlib.contextmanager
def _collector_paused() -> Generator[None, None, None]:
    """No cyclic garbage collection while a snapshot is decoded and compiled.

    That work allocates about a million objects (100,000 numbers); each allocation burst lets
    the collector run, and its full collections walk the whole heap, a stall of the event
    loop of 100-200 ms. The new tables hold no reference cycles, so there is nothing to
    collect; the pause ends with the work. Measured on big_snapshot_doc(): longest loop stall
    220 ms -> 41 ms (when the compile ran on a worker thread).
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        # The million new objects are all young now: the first collection after this would
        # walk them (measured: a 233 ms young collection, then a 121 ms middle one, on the
        # loop). Moved out of the collector's reach first, as `settle_config_objects` does
        # after the swap; reference counting still frees them.
        gc.freeze()
        if was_enabled:
            gc.enable()


class BaseVersionMismatch(Exception):
    """A delta for a version this edge does not hold: it needs the whole snapshot."""


def compile_snapshot(data: bytes, previous: EdgeConfig | None = None) -> EdgeConfig:
    """Decode and compile a snapshot document or a delta on `previous` (reusing what
    `previous` has unchanged); ConfigError if it is not one, BaseVersionMismatch if it is a
    delta on another version than `previous`'s. At once: `compile_snapshot_steps` in steps."""
    return run_to_end(compile_snapshot_steps(data, previous))


def compile_snapshot_steps(data: bytes, previous: EdgeConfig | None = None) -> Steps[EdgeConfig]:
    """`compile_snapshot` in steps of a line, a few trunks or a few hundred numbers, for
    `run_in_slices` (edge/slices.py)."""
    with _collector_paused():
        try:
            doc = yield from snapshot_wire.decode_steps(data)
            if isinstance(doc, snapshot_wire.Delta):
                if previous is None or previous.version != doc.base_version:
                    held = None if previous is None else previous.version
                    raise BaseVersionMismatch(
                        f"delta on version {doc.base_version}; this edge holds {held}"
                    )
                doc = snapshot_wire.apply_delta(previous.source, doc)
        except snapshot_wire.SnapshotFormatError as error:
            raise ConfigError(f"snapshot: {error}") from None
        config: EdgeConfig = yield from EdgeConfig.compile_steps(doc, previous)
        return config


async def run_in_slices(
    steps: Steps[T], slice_seconds: float = APPLY_SLICE, yields: int = APPLY_YIELDS
) -> T:
    """Run `steps` on the event loop about `slice_seconds` at a time, letting everything
    ready on the loop (SIP above all) run between two slices.

    Not a worker thread: beside a busy loop a thread takes the GIL half the time, so for as
    long as a 100,000-number compile lasts the loop carries half its calls (measured at half
    the edge's rate: INVITE->200 p99 48 ms and OPTIONS answered in up to 49 ms during the
    apply, 4 ms before and after). Here the loop answers what came in before each slice.

    One turn of the loop reads at most 32 datagrams a socket (libuv's batch): at half the
    edge's rate about as many arrive during a slice and its turn, and with one turn a slice the
    loop fell behind now and then (measured at 2,100 calls/s during a 100,000-number apply:
    OPTIONS answered in up to 6.2-6.5 ms in three soaks and 65.6 ms in a fourth, INVITE->200
    p99 8-120 ms, with no lag of the loop's own). So the loop turns again while a turn still
    takes a quarter of a slice or more, up to `yields` turns: SIP first, and the compile goes
    on by at least a slice per `yields` turns however busy the edge is (the same soak, three
    runs: OPTIONS up to 2.9-4.4 ms, INVITE->200 p99 4 ms, the apply as long)."""
    clock = time.perf_counter
    busy_turn = slice_seconds / 4
    try:
        while True:
            deadline = clock() + slice_seconds
            try:
                while clock() < deadline:
                    next(steps)
            except StopIteration as done:
                result: T = done.value
                return result
            for _ in range(yields):
                turned = clock()
                await asyncio.sleep(0)
                if clock() - turned < busy_turn:
                    break
    finally:
        steps.close()


# A container with more items than this is taken apart item by item (`release_config`).
_RELEASE_WHOLE = 256
_CONTAINERS = (dict, list, set, tuple, frozenset, MappingProxyType)


def release_config(holder: list[EdgeConfig]) -> None:
    """Free the replaced config held in `holder` (emptied) on the calling worker thread,
    in pieces the event loop can interleave with.

    Freeing is reference counting: dropping the last reference to a 100,000-number config
    frees about a million objects in one C call chain that holds the GIL throughout (measured:
    60-75 ms of loop CPU when the swap dropped it). Moved to a thread as one drop, the loop
    would wait as long for the GIL, so the config's containers are taken apart here item by
    item: between items the interpreter hands the GIL over. Containers the new config shares
    (its unchanged tables) are referenced from there too and are left whole, as is a config
    something else still holds (it is freed where that lets go of it).
    """
    config = holder.pop()
    if sys.getrefcount(config) > 2:  # this frame and getrefcount's argument
        return
    with _loop_first():
        parts: list[object] = [getattr(config, name, None) for name in EdgeConfig.__slots__]
        del config  # its slots now live in `parts` alone (or also in the new config)
        _free_in_pieces(parts)


def _free_in_pieces(stack: list[object]) -> None:
    """Drop `stack`'s items, taking apart those that nothing else holds (and their large
    items in turn) one item at a time rather than in one deallocation."""
    while stack:
        item = stack.pop()
        if type(item) is MappingProxyType:  # a read-only view of a dict it alone holds
            (inner,) = gc.get_referents(item)
            del item
            item = inner
            del inner
        # This frame and getrefcount's argument: nothing else holds it.
        if sys.getrefcount(item) > 2:
            continue
        if type(item) is tuple or type(item) is frozenset:
            stack.extend(item)  # freed when `item` is rebound: its items are on the stack
        elif type(item) is dict:
            while item:
                _, value = item.popitem()
                if _large(value):
                    stack.append(value)
                del value
        elif type(item) is list or type(item) is set:
            pop = item.pop
            while item:
                value = pop()
                if _large(value):
                    stack.append(value)
                del value


def _large(value: object) -> bool:
    return (
        type(value) in _CONTAINERS
        and len(value) > _RELEASE_WHOLE  # type: ignore[arg-type]
        and sys.getrefcount(value) <= 3  # the caller's name, its argument here, getrefcount's
    )


def settle_config_objects() -> None:
    """After a swap: move what is alive now (the new tables above all) out of the collector's
    reach, so later collections do not walk 10^6 long-lived objects on the event loop.
    Frozen objects are still freed by reference counting when the config is replaced."""
    gc.freeze()


def save_snapshot(state_dir: Path, data: bytes) -> Path:
    """Write ``data`` to ``<state_dir>/snapshot.json`` atomically and durably (mode 0600:
    it holds HA1 digests)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    target = state_dir / SNAPSHOT_FILE
    fd, temp = tempfile.mkstemp(prefix=".snapshot-", suffix=".tmp", dir=state_dir)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    directory = os.open(state_dir, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    return target


# --- metrics ----------------------------------------------------------------------------------


class EdgeCollector:
    """Reads the core's plain counters at scrape time; nothing is counted twice.

    A scrape is two steps: `read` copies what /metrics says from the core as it is now (a few
    dicts of counters and the applied config, which is never modified: cheap, on the loop),
    and `families` builds the metric families from that copy alone, so it may run on a worker
    thread. With 10,000 trunks (a series each) building them took 21-38 ms and their text
    another 60 ms: on the loop, every scrape stalled SIP by about 100 ms (measured).
    """

    def __init__(
        self,
        core: ControlledCore,
        runtime_metrics: Callable[[], Iterable[Metric]] | None = None,
    ) -> None:
        self.core = core
        self.runtime_metrics = runtime_metrics

    def collect(self) -> Iterable[Metric]:
        return self.families(self.read())

    def read(self) -> dict[str, Any]:
        """What /metrics says, copied from the core (on the loop)."""
        core = self.core
        stats = core.stats
        by_trunk = getattr(stats, "active_by_trunk", None)
        if callable(by_trunk):
            active: dict[int, int] = dict(by_trunk())
        else:  # the core keeps no per-trunk count: derive it from the call list
            active = dict(Counter(call["trunk_id"] for call in core.calls()))  # type: ignore[misc]
        ends = getattr(stats, "ends_total", None)
        malformed = getattr(stats, "malformed_total", None)
        dropped = getattr(stats, "dropped_total", None)
        return {
            "active": active,
            "config": core.config,
            "attempts": stats.attempts_total,
            "answers": stats.answers_total,
            "responses": dict(stats.responses_total),
            "refusals": dict(stats.refusals_total),
            "auth_failures": stats.auth_failures_total,
            "ends": dict(ends) if isinstance(ends, dict) else None,
            "malformed": malformed if isinstance(malformed, int) else None,
            "dropped": dropped if isinstance(dropped, int) else None,
            "draining": core.draining,
            "runtime": [] if self.runtime_metrics is None else list(self.runtime_metrics()),
        }

    @staticmethod
    def families(reading: dict[str, Any]) -> list[Metric]:
        """The metric families of a `read` (on any thread: it touches nothing else)."""
        config: EdgeConfig = reading["config"]
        counts: dict[int, int] = reading["active"]
        # Every configured trunk has a series, so an idle trunk reads 0 rather than a gap.
        for trunk_id in config.trunks:
            counts.setdefault(trunk_id, 0)
        active = _by_label(
            GaugeMetricFamily(
                "trunkline_edge_active_calls",
                "Calls in progress on this edge, by trunk",
                labels=["trunk"],
            ),
            counts,
        )
        responses = _by_label(
            CounterMetricFamily(
                "trunkline_edge_responses",
                "Final responses to call attempts, by code",
                labels=["code"],
            ),
            reading["responses"],
        )
        refusals = _by_label(
            CounterMetricFamily(
                "trunkline_edge_refusals", "Refused call attempts, by reason", labels=["reason"]
            ),
            reading["refusals"],
        )
        families: list[Metric] = [
            active,
            CounterMetricFamily(
                "trunkline_edge_call_attempts",
                "Call attempts (INVITEs starting a call)",
                value=reading["attempts"],
            ),
            CounterMetricFamily(
                "trunkline_edge_answers", "Call attempts answered", value=reading["answers"]
            ),
            responses,
            refusals,
            CounterMetricFamily(
                "trunkline_edge_auth_failures",
                "Failed digest authentications",
                value=reading["auth_failures"],
            ),
        ]
        if reading["ends"] is not None:
            families.append(
                _by_label(
                    CounterMetricFamily(
                        "trunkline_edge_call_ends",
                        "Admitted calls ended, by reason (edge.calls.ENDINGS)",
                        labels=["reason"],
                    ),
                    reading["ends"],
                )
            )
        if reading["malformed"] is not None:
            families.append(
                CounterMetricFamily(
                    "trunkline_edge_malformed_messages",
                    "Messages that could not be parsed",
                    value=reading["malformed"],
                )
            )
        if reading["dropped"] is not None:
            families.append(
                CounterMetricFamily(
                    "trunkline_edge_dropped",
                    "Requests dropped unanswered: scanners, banned or flooding sources",
                    value=reading["dropped"],
                )
            )
        families.append(
            GaugeMetricFamily(
                "trunkline_edge_config_version",
                "Version of the applied config snapshot",
                value=config.version,
            )
        )
        families.append(
            GaugeMetricFamily(
                "trunkline_edge_draining",
                "1 while the edge refuses new calls",
                value=int(reading["draining"]),
            )
        )
        families.extend(reading["runtime"])
        return families


def _by_label(
    family: GaugeMetricFamily | CounterMetricFamily, counts: dict[Any, int]
) -> GaugeMetricFamily | CounterMetricFamily:
    """`family` with a sample per key of `counts` (its one label), in key order."""
    for key, count in sorted(counts.items()):
        family.add_metric([str(key)], count)
    return family


class _Families(Collector):
    """Families already built, as a registry wants them."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return self._families


def render_metrics(reading: dict[str, Any]) -> bytes:
    """The Prometheus text of an `EdgeCollector.read` (on a worker thread)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(EdgeCollector.families(reading)))
    return generate_latest(registry)


# --- the ASGI app -----------------------------------------------------------------------------


class _HttpError(Exception):
    def __init__(self, status: int, message: str, **extra: object) -> None:
        super().__init__(message)
        self.status = status
        self.body = {"error": message, **extra}


class ControlApp:
    """The control API as one ASGI callable (http only; lifespan is off)."""

    def __init__(
        self,
        *,
        core: ControlledCore,
        token: str,
        dispatch: Callable[[Sequence[Output]], None],
        apply_config: Callable[[EdgeConfig], None] | None = None,
        state_dir: Path | None = None,
        executor: Executor | None = None,
        max_body: int = DEFAULT_MAX_BODY,
        runtime_metrics: Callable[[], Iterable[Metric]] | None = None,
    ) -> None:
        if not token:
            raise ValueError("the control API needs a token")
        self.core = core
        self._token = f"Bearer {token}".encode()
        self._dispatch = dispatch
        self._apply_config = apply_config or core.apply_config
        self.state_dir = state_dir
        self._executor = executor
        self.max_body = max_body
        self.collector = EdgeCollector(core, runtime_metrics)
        # One snapshot at a time: two pushes racing must not apply out of order.
        self._config_lock = asyncio.Lock()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return  # no websockets here; lifespan is off
        method: str = scope["method"]
        path: str = scope["path"]
        authorized = self._authorized(scope)
        try:
            if not authorized:
                if method in ("GET", "HEAD") and path == "/health":
                    await _json(send, 200, {"status": self._status()})
                    return
                raise _HttpError(401, "missing or invalid bearer token")
            query: bytes = scope.get("query_string", b"")
            status, body, content_type = await self._route(method, path, query, receive)
        except _HttpError as error:
            headers = [(b"www-authenticate", b"Bearer")] if error.status == 401 else []
            if error.status == 405:
                headers.append((b"allow", str(error.body.pop("allow")).encode()))
            await _json(send, error.status, error.body, headers)
            return
        except Exception:
            logger.exception("control API: %s %s failed", method, path)
            await _json(send, 500, {"error": "internal error"})
            return
        if content_type is None:
            await _json(send, status, body)
        else:
            await _raw(send, status, body, content_type)

    def _authorized(self, scope: Scope) -> bool:
        for name, value in scope["headers"]:
            if name == b"authorization":
                return hmac.compare_digest(value, self._token)
        return False

    def _status(self) -> str:
        return "draining" if self.core.draining else "ok"

    async def _route(
        self, method: str, path: str, query: bytes, receive: Receive
    ) -> tuple[int, Any, str | None]:
        if path == "/health":
            _allow(method, "GET", "HEAD")
            return 200, self.health(), None
        if path == "/metrics":
            _allow(method, "GET", "HEAD")
            # Read on the loop, built and written out on a worker (`EdgeCollector`).
            reading = self.collector.read()
            loop = asyncio.get_running_loop()
            text = await loop.run_in_executor(self._executor, render_metrics, reading)
            return 200, text, CONTENT_TYPE_LATEST
        if path == "/config":
            _allow(method, "POST")
            return 200, await self.apply_snapshot(await self._body(receive)), None
        if path == "/drain":
            _allow(method, "POST")
            self.core.drain()
            return 202, {"status": "draining", "active_calls": self.core.active_calls}, None
        if path == "/calls":
            _allow(method, "GET", "HEAD")
            return 200, {"calls": self.core.calls()}, None
        if path.startswith("/calls/") and len(path) > len("/calls/"):
            _allow(method, "DELETE")
            return self.hangup(path[len("/calls/") :], _hangup_reason(query)), None, None
        raise _HttpError(404, "no such route")

    def health(self) -> dict[str, object]:
        core = self.core
        return {
            "status": self._status(),
            "node": core.node,
            "config_version": core.config.version,
            "active_calls": core.active_calls,
            "core": native.status(),
            "allocator": allocator.running(),
        }

    def hangup(self, call_id: str, reason: str = "operator_hangup") -> int:
        loop = asyncio.get_running_loop()
        outputs = self.core.hangup(call_id, loop.time(), time.time(), reason)
        if outputs is None:
            raise _HttpError(404, f"no call {call_id!r}")
        self._dispatch(outputs)
        return 204

    async def apply_snapshot(self, data: bytes) -> dict[str, object]:
        """Compile on the loop a slice at a time, swap, free the old config off the loop, then
        save for restarts."""
        loop = asyncio.get_running_loop()
        async with self._config_lock:
            try:
                config = await run_in_slices(compile_snapshot_steps(data, self.core.config))
            except ConfigError as error:
                logger.warning("config snapshot refused: %s", error)
                raise _HttpError(400, str(error)) from None
            except BaseVersionMismatch as error:
                current = self.core.config.version
                raise _HttpError(412, str(error), applied_version=current) from None
            current = self.core.config.version
            if config.version < current:
                raise _HttpError(
                    409,
                    f"snapshot version {config.version} is older than the applied {current}",
                    applied_version=current,
                )
            replaced = [self.core.config]
            self._apply_config(config)
            settle_config_objects()
            logger.info("config version %d applied", config.version)
            # The replaced config is freed off the loop (`release_config`).
            await loop.run_in_executor(self._executor, release_config, replaced)
            if self.state_dir is not None:
                if data.startswith(snapshot_wire.DELTA_MAGIC):  # a restart needs it whole
                    data = await loop.run_in_executor(
                        self._executor, snapshot_wire.encode_lines, config.source
                    )
                try:
                    await loop.run_in_executor(self._executor, save_snapshot, self.state_dir, data)
                except OSError as error:
                    logger.error("applied snapshot not saved to %s: %s", self.state_dir, error)
        # What this version left out (the rest applied): the pusher sees it in the answer.
        refusals = [refusal.as_dict() for refusal in config.refusals]
        return {"applied_version": config.version, "refusals": refusals}

    async def _body(self, receive: Receive) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _HttpError(400, "client went away")
            chunk: bytes = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                raise _HttpError(413, f"body larger than {self.max_body} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


def _hangup_reason(query: bytes) -> str:
    """The ``reason`` of a hang-up's query string: one of `HANGUP_REASONS`, else 400."""
    values = urllib.parse.parse_qs(query.decode("latin-1")).get("reason", ["operator_hangup"])
    reason = values[-1]
    if reason not in HANGUP_REASONS:
        allowed = ", ".join(sorted(HANGUP_REASONS))
        raise _HttpError(400, f"reason {reason!r} is not one of: {allowed}")
    return reason


def _allow(method: str, *allowed: str) -> None:
    if method not in allowed:
        raise _HttpError(405, f"{method} not allowed", allow=", ".join(allowed))


async def _raw(
    send: Send,
    status: int,
    body: bytes,
    content_type: str,
    headers: Iterable[tuple[bytes, bytes]] = (),
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type.encode()),
                (b"content-length", str(len(body)).encode()),
                (b"cache-control", b"no-store"),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _json(
    send: Send, status: int, payload: Any, headers: Iterable[tuple[bytes, bytes]] = ()
) -> None:
    body = b"" if status == 204 else orjson.dumps(payload)
    await _raw(send, status, body, "application/json", headers)


# --- serving it on our loop -------------------------------------------------------------------


class ControlServer(uvicorn.Server):
    """uvicorn's server without its signal handling: SIGTERM/SIGINT belong to the edge."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield

    def install_signal_handlers(self) -> None:  # uvicorn before 0.29 called this instead
        return None


def bind_control_socket(host: str, port: int) -> socket.socket:
    """Bind the control API's listening socket (ours, so a bind error is ours to report)."""
    family, _, _, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.create_server(address[:2], family=family, reuse_port=False)
    sock.set_inheritable(False)
    return sock


async def start_control_server(
    app: ControlApp, sock: socket.socket, *, graceful_timeout: float = 5.0
) -> tuple[ControlServer, asyncio.Task[None]]:
    """Serve ``app`` on ``sock`` on the running loop; returns once it accepts connections."""
    config = uvicorn.Config(
        app,
        lifespan="off",
        log_level="warning",
        log_config=None,
        access_log=False,
        ws="none",
        server_header=False,
        timeout_graceful_shutdown=int(graceful_timeout),
    )
    server = ControlServer(config)
    task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()  # raises what stopped it
            raise RuntimeError("the control API server stopped during start-up")
        await asyncio.sleep(0.01)
    return server, task
