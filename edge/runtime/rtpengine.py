"""rtpengine's ng protocol: the edge's media operations carried to one or more rtpengines.

`NgClient` is one UDP datagram endpoint that speaks to every configured rtpengine: each request
is `<cookie> <dict>`, its answer comes back with the same cookie. The dict is JSON, which the ng
protocol accepts beside bencode and answers in kind: orjson reads the delete answer (a
kilobyte or two of statistics) several times faster than any bencode decoder written in Python
(edge/bencode.py), and writes a request in a microsecond or two. An SDP that is not UTF-8 cannot
travel in JSON: that request goes bencoded, its bytes as they are. Answers reach the callbacks
as JSON would decode them (str keys and strings; a bencoded answer is converted).

Pending requests are a dict of cookies to callbacks, resent on a timeout from one loop timer (no
asyncio task or future per message): `timeout` seconds per try, `retries` resends, then the
callback gets a failure. rtpengine caches its answer per cookie, so a resend never runs a
command twice.

Engines are pinged every `health_interval` seconds; an engine that misses two pings or lets a
request time out is down until it answers again. A call's first offer goes to the next engine
that is up (round robin; failover for new calls: an offer that times out moves to the next
one); the call's later operations go to the engine that holds its session.

`MediaRelay` carries the core's outputs (edge.media: `MediaOffer`, `MediaAnswer`,
`MediaDelete`) to the client and its answers back to the core (`media_decided`,
`media_deleted`). A delete names the caller's tag, so that rtpengine answers with the
session's statistics (the CDR's media summary), and asks no delete delay (the session is gone
at once, and rtpengine's `list` says so).
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import os
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import orjson
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from edge import bencode
from edge.media import (
    MediaAnswer,
    MediaDelete,
    MediaFailed,
    MediaOffer,
    MediaReady,
    MediaStats,
    summary_from_query,
)
from edge.runtime.transports import Dispatcher

__all__ = [
    "Engine",
    "Media",
    "MediaDispatcher",
    "MediaRelay",
    "NgClient",
    "attach_media",
    "parse_engines",
]

logger = logging.getLogger(__name__)

Answer = dict[str, Any]
# (answer or None, failure reason or None): exactly one of them is set.
Callback = Callable[[Answer | None, str | None], None]


def parse_engines(text: str) -> list[tuple[str, int]]:
    """`udp:127.0.0.1:22222,udp:10.0.0.2:22222` -> [(host, port), ...]; ValueError says why
    not. The `udp:` prefix is optional (rtpengine's ng protocol is UDP here)."""
    engines: list[tuple[str, int]] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        address = item.removeprefix("udp:")
        host, colon, port = address.rpartition(":")
        host = host.removeprefix("[").removesuffix("]")
        if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"rtpengine {item!r}: expected udp:HOST:PORT")
        engines.append((host, int(port)))
    return engines


@dataclass(eq=False)
class Engine:
    """One rtpengine's ng address and what the edge knows of its health."""

    host: str
    port: int
    address: str = ""  # `host` resolved (NgClient.start)
    up: bool = True  # optimistic until a ping or a request says otherwise
    missed_pings: int = 0  # in a row
    requests_total: int = 0
    timeouts_total: int = 0

    @property
    def name(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(eq=False, slots=True)
class _Pending:
    cookie: bytes
    engine: Engine
    data: bytes
    callback: Callback
    call_id: str | None
    deadline: float
    retries: int
    tries: int = 1
    done: bool = False


class NgClient(asyncio.DatagramProtocol):
    """Requests to rtpengines over one UDP socket, answered through callbacks."""

    def __init__(
        self,
        engines: Sequence[tuple[str, int]],
        *,
        loop: asyncio.AbstractEventLoop,
        timeout: float = 0.5,
        retries: int = 2,
        health_interval: float = 1.0,
    ) -> None:
        self.engines = [Engine(host, port) for host, port in engines]
        self.loop = loop
        self.timeout = timeout
        self.retries = retries
        self.health_interval = health_interval
        self.transport: asyncio.DatagramTransport | None = None
        self._pending: dict[bytes, _Pending] = {}
        # Sends in order of their deadlines (all tries wait `timeout`): the timer's queue.
        self._queue: collections.deque[_Pending] = collections.deque()
        self._timer: asyncio.TimerHandle | None = None
        self._health: asyncio.TimerHandle | None = None
        self._cookies = itertools.count(1)
        self._prefix = os.urandom(4).hex()
        self._next = 0

    async def start(self) -> None:
        # Names (a compose service, say) are resolved once, here: sendto wants addresses.
        for engine in self.engines:
            infos = await self.loop.getaddrinfo(engine.host, engine.port, type=socket.SOCK_DGRAM)
            engine.address = str(infos[0][4][0])
        family_host = self.engines[0].address if self.engines else "127.0.0.1"
        local = ("::", 0) if ":" in family_host else ("0.0.0.0", 0)
        await self.loop.create_datagram_endpoint(lambda: self, local_addr=local)
        self._check_health()

    def close(self) -> None:
        for handle in (self._timer, self._health):
            if handle is not None:
                handle.cancel()
        self._timer = self._health = None
        if self.transport is not None:
            self.transport.close()
            self.transport = None
        pending = list(self._pending.values())
        self._pending.clear()
        self._queue.clear()
        for item in pending:
            self._finish(item, None, "edge stopping")

    # --- asyncio -------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's UDP transport is not an asyncio.DatagramTransport subclass, only alike.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        cookie, _, body = data.partition(b" ")
        item = self._pending.pop(cookie, None)
        if item is None:
            return  # a late answer to a resent or abandoned request
        engine = item.engine
        engine.up = True
        engine.missed_pings = 0
        try:
            answer = decode_answer(body)
        except ValueError as error:  # orjson.JSONDecodeError, bencode.BencodeError
            self._finish(item, None, f"{engine.name}: malformed answer ({error})")
            return
        if not isinstance(answer, dict):
            self._finish(item, None, f"{engine.name}: malformed answer")
            return
        if answer.get("result") == "error":
            self._finish(item, None, f"{engine.name}: {answer.get('error-reason', 'error')}")
            return
        self._finish(item, answer, None)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable on Linux: an engine is not listening. The timeout handles it.
        logger.debug("rtpengine socket error: %s", exc)

    # --- requests --------------------------------------------------------------------------

    def pick(self) -> Engine | None:
        """The engine for a new call's session: the next one that is up, round robin."""
        count = len(self.engines)
        for step in range(count):
            engine = self.engines[(self._next + step) % count]
            if engine.up:
                self._next = (self._next + step + 1) % count
                return engine
        return None

    def request(
        self,
        engine: Engine,
        command: dict[str, Any],
        callback: Callback,
        *,
        call_id: str | None = None,
        retries: int | None = None,
    ) -> None:
        if self.transport is None:
            callback(None, "rtpengine client not running")
            return
        cookie = f"{self._prefix}{next(self._cookies):x}".encode()
        data = cookie + b" " + encode_request(command)
        item = _Pending(
            cookie,
            engine,
            data,
            callback,
            call_id,
            self.loop.time() + self.timeout,
            self.retries if retries is None else retries,
        )
        engine.requests_total += 1
        self._pending[cookie] = item
        self._queue.append(item)
        self.transport.sendto(data, (engine.address or engine.host, engine.port))
        if self._timer is None:
            self._timer = self.loop.call_at(item.deadline, self._on_timer)

    def forget_call(self, call_id: str) -> None:
        """Stop resending the call's requests (it is over); their callbacks are not called."""
        for cookie, item in list(self._pending.items()):
            if item.call_id == call_id:
                item.done = True
                del self._pending[cookie]

    def _finish(self, item: _Pending, answer: Answer | None, reason: str | None) -> None:
        if item.done:
            return
        item.done = True
        try:
            item.callback(answer, reason)
        except Exception:
            logger.exception("rtpengine answer handler failed")

    def _on_timer(self) -> None:
        self._timer = None
        now = self.loop.time()
        queue = self._queue
        while queue and (queue[0].done or queue[0].deadline <= now):
            item = queue.popleft()
            if item.done or item.cookie not in self._pending:
                continue
            if item.tries <= item.retries and self.transport is not None:
                item.tries += 1
                item.deadline = now + self.timeout
                queue.append(item)
                engine = item.engine
                self.transport.sendto(item.data, (engine.address or engine.host, engine.port))
                continue
            del self._pending[item.cookie]
            item.engine.timeouts_total += 1
            item.engine.up = False
            self._finish(item, None, f"{item.engine.name}: no answer")
        while queue and queue[0].done:
            queue.popleft()
        if queue:
            self._timer = self.loop.call_at(queue[0].deadline, self._on_timer)

    # --- health ----------------------------------------------------------------------------

    def _check_health(self) -> None:
        self._health = self.loop.call_later(self.health_interval, self._check_health)
        for engine in self.engines:
            self.request(engine, {"command": "ping"}, self._ping_answer(engine), retries=0)

    def _ping_answer(self, engine: Engine) -> Callback:
        def answered(answer: Answer | None, reason: str | None) -> None:
            if answer is not None:
                if not engine.up:
                    logger.warning("rtpengine %s is back", engine.name)
                engine.up = True
                engine.missed_pings = 0
                return
            engine.missed_pings += 1
            if engine.missed_pings == 1:
                logger.error("rtpengine %s is down: %s", engine.name, reason)
            engine.up = False

        return answered


class MediaRelay:
    """Carries the core's media outputs to rtpengine and its answers back to the core."""

    def __init__(
        self,
        client: NgClient,
        *,
        decided: Callable[[MediaReady | MediaFailed], None],
        deleted: Callable[[MediaStats], None],
    ) -> None:
        self.client = client
        self._decided = decided
        self._deleted = deleted
        self._sessions: dict[str, Engine] = {}  # call id -> the engine holding its session
        self.failures_total = 0
        self.closing = False

    @property
    def sessions(self) -> int:
        return len(self._sessions)

    def handle(self, out: MediaOffer | MediaAnswer | MediaDelete) -> None:
        if type(out) is MediaDelete:
            if self.closing:
                self.delete_now(out.call_id)
            else:
                self._delete(out.call_id)
            return
        assert isinstance(out, MediaOffer | MediaAnswer)
        engine = self._sessions.get(out.call_id)
        if engine is None:
            if out.op != 1 or type(out) is not MediaOffer:
                self._fail(out, "the call has no media session")
                return
            engine = self.client.pick()
            if engine is None:
                self._fail(out, "no rtpengine reachable")
                return
            self._sessions[out.call_id] = engine
        other = "b" if out.leg == "a" else "a"
        command: dict[str, Any] = dict(out.params)
        command["call-id"] = out.call_id
        command["sdp"] = _sdp_text(out.sdp)
        if type(out) is MediaOffer:
            command["command"] = "offer"
            command["from-tag"] = out.leg
            if out.op > 1:
                command["to-tag"] = other
        else:
            command["command"] = "answer"
            command["from-tag"] = other
            command["to-tag"] = out.leg
        self._send(engine, out, command, failover=out.op == 1 and type(out) is MediaOffer)

    def _send(
        self,
        engine: Engine,
        out: MediaOffer | MediaAnswer,
        command: dict[str, Any],
        *,
        failover: bool,
    ) -> None:
        def answered(answer: Answer | None, reason: str | None) -> None:
            sdp = None if answer is None else answer.get("sdp")
            if isinstance(sdp, str):
                payload = sdp.encode("utf-8", "surrogateescape")  # the bytes a bencoded SDP had
                self._decided(MediaReady(out.call_id, out.op, payload, engine.name))
                return
            if answer is not None:
                reason = f"{engine.name}: answer without SDP"
            if failover and not engine.up and self._sessions.get(out.call_id) is engine:
                # A new call's offer to an engine that went silent: the next one takes it.
                following = self.client.pick()
                if following is not None and following is not engine:
                    logger.warning("rtpengine %s: offer moved to %s", engine.name, following.name)
                    self._sessions[out.call_id] = following
                    self._send(following, out, command, failover=True)
                    return
            self._fail(out, reason or "rtpengine failed")

        self.client.request(engine, command, answered, call_id=out.call_id)

    def _fail(self, out: MediaOffer | MediaAnswer, reason: str) -> None:
        self.failures_total += 1
        if out.op == 1:
            self._sessions.pop(out.call_id, None)  # no session was made
        logger.warning("media for call %s: %s", out.call_id, reason)
        self._decided(MediaFailed(out.call_id, out.op, reason))

    def _delete(self, call_id: str) -> None:
        engine = self._sessions.pop(call_id, None)
        if engine is None:
            self._deleted(MediaStats(call_id, None))
            return
        self.client.forget_call(call_id)

        def deleted(answer: Answer | None, reason: str | None) -> None:
            if answer is None:
                logger.warning("media session of call %s not deleted: %s", call_id, reason)
            summary = summary_from_query(answer, engine.name) if answer else None
            self._deleted(MediaStats(call_id, summary))

        self.client.request(engine, _delete_command(call_id), deleted)

    def delete_now(self, call_id: str) -> None:
        """At shutdown: delete the session without waiting for anything."""
        engine = self._sessions.pop(call_id, None)
        if engine is not None:
            self.client.forget_call(call_id)
            self.client.request(
                engine, _delete_command(call_id), lambda answer, reason: None, retries=0
            )


def encode_request(command: dict[str, Any]) -> bytes:
    """The request's dict as JSON; bencoded if a value is bytes (an SDP that is not UTF-8)."""
    try:
        return orjson.dumps(command)
    except TypeError:  # orjson.JSONEncodeError: bytes
        return bencode.encode(command)


def decode_answer(body: bytes) -> Any:
    """An answer as JSON would decode it, whichever of the two formats it came in (rtpengine
    answers in the request's). ValueError if it is neither."""
    if body[:1] == b"{":
        return orjson.loads(body)
    return _text(bencode.decode(body))


def _text(value: Any) -> Any:
    """A bencoded value with its byte strings as str (undecodable bytes kept as surrogates, so
    an SDP encodes back to the same bytes)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    if isinstance(value, list):
        return [_text(item) for item in value]
    if isinstance(value, dict):
        return {_text(key): _text(item) for key, item in value.items()}
    return value


def _sdp_text(sdp: bytes) -> str | bytes:
    """An SDP as JSON can carry it (str), or as it is when it is not UTF-8 (bencode then)."""
    try:
        return sdp.decode()
    except UnicodeDecodeError:
        return sdp


def _delete_command(call_id: str) -> dict[str, Any]:
    """Delete the whole session at once. Naming the caller's tag makes rtpengine answer with
    the session's statistics (by call-id alone it deletes without them)."""
    return {"command": "delete", "call-id": call_id, "from-tag": "a", "delete-delay": 0}


class MediaDispatcher:
    """Routes the core's media outputs to a `MediaRelay` and the rest to the dispatcher.

    Wraps `Dispatcher.dispatch` (edge/runtime/transports.py) rather than changing it: the
    outputs of one input are carried out in order, the media operations last (an answer that
    comes at once, such as "no rtpengine reachable", is a new input of the core and must not
    overtake the outputs before it).
    """

    def __init__(self, dispatch: Callable[[Sequence[Any]], None], relay: MediaRelay) -> None:
        self._dispatch = dispatch
        self.relay = relay

    def __call__(self, outputs: Sequence[Any]) -> None:
        media = None
        for out in outputs:
            if type(out) in _MEDIA_OUTPUTS:
                media = [o for o in outputs if type(o) in _MEDIA_OUTPUTS]
                outputs = [o for o in outputs if type(o) not in _MEDIA_OUTPUTS]
                break
        self._dispatch(outputs)
        if media is not None:
            for out in media:
                self.relay.handle(out)


_MEDIA_OUTPUTS = frozenset({MediaOffer, MediaAnswer, MediaDelete})


class Media:
    """The edge's media anchoring, as the runtime holds it: `attach_media` builds it."""

    def __init__(self, client: NgClient, relay: MediaRelay) -> None:
        self.client = client
        self.relay = relay

    def closing(self) -> None:
        """From now on a MediaDelete deletes at once (shutdown: nobody waits for stats)."""
        self.relay.closing = True

    def close(self) -> None:
        self.client.close()

    def metrics(self) -> Iterable[Metric]:
        up = GaugeMetricFamily(
            "trunkline_edge_rtpengine_up", "Whether each rtpengine answers", labels=["engine"]
        )
        timeouts = CounterMetricFamily(
            "trunkline_edge_rtpengine_timeouts",
            "ng requests an rtpengine never answered",
            labels=["engine"],
        )
        for engine in self.client.engines:
            up.add_metric([engine.name], 1 if engine.up else 0)
            timeouts.add_metric([engine.name], engine.timeouts_total)
        yield up
        yield timeouts
        yield GaugeMetricFamily(
            "trunkline_edge_media_sessions", "Calls with a media session", value=self.relay.sessions
        )
        yield CounterMetricFamily(
            "trunkline_edge_media_failures",
            "Media operations that failed (no rtpengine, timeout, error)",
            value=self.relay.failures_total,
        )


async def attach_media(
    dispatcher: Dispatcher, core: Any, engines: Sequence[tuple[str, int]]
) -> Media:
    """Start the ng client and route the core's media outputs through it.

    Always attached, even with no engine configured: a trunk in media mode `anchor` then gets
    its calls refused `media_unavailable` at once rather than stuck waiting.
    """
    loop = dispatcher.loop
    client = NgClient(engines, loop=loop)
    if engines:
        await client.start()

    def decided(decision: MediaReady | MediaFailed) -> None:
        try:
            outputs = core.media_decided(decision, loop.time(), time.time())
        except Exception:
            dispatcher.core_failed("media_decided")
            return
        dispatcher.dispatch(outputs)

    def deleted(stats: MediaStats) -> None:
        try:
            outputs = core.media_deleted(stats, loop.time(), time.time())
        except Exception:
            dispatcher.core_failed("media_deleted")
            return
        dispatcher.dispatch(outputs)

    relay = MediaRelay(client, decided=decided, deleted=deleted)
    # Every caller of `dispatcher.dispatch` (transports, timer, control API) goes through the
    # media router: an instance attribute in front of the class's method.
    dispatcher.dispatch = MediaDispatcher(  # type: ignore[method-assign]
        Dispatcher.dispatch.__get__(dispatcher), relay
    )
    if engines:
        logger.info("media anchoring: rtpengine %s", ", ".join(e.name for e in client.engines))
    return Media(client, relay)
