"""Sockets for the sans-IO core: UDP, TCP and TLS in, the core's outputs out, one timer.

`UdpTransport` and `StreamConnection` translate: bytes from a socket become one call of the
core (`datagram_received`, or `message_received` per message a `StreamParser` framed), with
``now = loop.time()`` and ``wall = time.time()``. The outputs go to the one `Dispatcher`:

- `Transmit` → the UDP socket (queued, and sent back to back once the loop has run what was
  ready: `UdpTransport.sendto`), or the stream connection to that peer (opened on demand);
- `CdrReady` → the CDR journal (`JournalFlusher.append`: batched, one write+fsync per batch);
- `CallEvent` → the `EventSink` (one `publish` per input, with that input's events), plus a
  ``refused`` event for each CDR of an attempt refused before it became a call (the core emits
  no event for those; the live board counts refusals by reason).

After every input the dispatcher re-arms ONE ``loop.call_at`` handle for
``core.next_timer()``, and only when the deadline moved earlier than the armed one or the armed
one fired: the core keeps its own timer wheel, the loop holds one handle. No task or future is
created per message; the only tasks here are one per outbound connection being opened and one
per hostname being resolved.

Hostnames in a `Transmit` (origination URIs, gateways configured by name) are resolved off the
loop (``loop.getaddrinfo``) and cached for ``ttl``; bytes for a name being resolved wait for it.
A failed outbound connection or lookup drops what waited for it: the core has no hook for
transport failures, so its client transaction times out (Timer B/F) and it fails over as on
a 408. If the core grows ``transport_error(addr, now, wall) -> list[Output]``, it is called.

This module must never decide anything about calls: no parsing beyond stream framing, no
routing, policy, limits or CDR content, and no logging per message at INFO level.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import socket
import ssl
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol, cast

from edge.b2bua import CallEvent, CdrReady, Transmit
from edge.limits import AcquireSlot, ReleaseSlot
from edge.security import SecurityEvent
from edge.sip.errors import RemoteProtocolError
from edge.sip.parser import DEFAULT_MAX_SIZE, FramingError, StreamParser

if TYPE_CHECKING:
    from edge.b2bua import Address, Output
    from edge.cdr import CallDetailRecord
    from edge.runtime.events import EventSink
    from edge.sip.message import Request, Response

__all__ = [
    "CdrSink",
    "Dispatcher",
    "HostResolver",
    "SipCore",
    "StreamConnection",
    "StreamTransports",
    "UdpTransport",
    "open_udp",
]

logger = logging.getLogger(__name__)
# One fixed-format line per abuse event, for fail2ban (edge.security.SecurityEvent.log_line).
security_logger = logging.getLogger("edge.security")

STREAM_TRANSPORTS = ("tcp", "tls")
# A peer that does not read what we write is cut off past this many buffered bytes.
DEFAULT_WRITE_LIMIT = 1024 * 1024
# Bytes waiting for an outbound connection to open (or a hostname to resolve), per peer.
DEFAULT_QUEUE_LIMIT = 256 * 1024
DEFAULT_MAX_CONNECTIONS = 10_000
DEFAULT_CONNECT_TIMEOUT = 10.0
# UDP datagrams the kernel could not take yet are buffered by asyncio up to this, then dropped.
UDP_WRITE_LIMIT = 4 * 1024 * 1024
UDP_SOCKET_BUFFER = 4 * 1024 * 1024
# Datagrams queued before they are sent without waiting for the loop (UdpTransport.sendto).
UDP_BATCH = 64
# ... or once the oldest has waited this long (seconds), before the next datagram read is
# handled (UdpTransport.datagram_received). A wake-up that read 10-26 datagrams (after the edge
# waited for a CPU) is 1-2.5 ms of work; without the limit every answer of it left at its end.
UDP_SEND_WAIT = 0.0002


class SipCore(Protocol):
    """What the transports need of the B2BUA (`edge.b2bua.B2bua`)."""

    def datagram_received(
        self, data: bytes, addr: Address, now: float, wall: float
    ) -> Sequence[Output]: ...

    def message_received(
        self, message: Request | Response, addr: Address, now: float, wall: float
    ) -> Sequence[Output]: ...

    def stream_error(
        self, addr: Address, error: RemoteProtocolError, now: float, wall: float
    ) -> Sequence[Output]: ...

    def next_timer(self) -> float | None: ...

    def on_timer(self, now: float, wall: float) -> Sequence[Output]: ...


class CdrSink(Protocol):
    """Where finished CDRs go (`edge.runtime.journal.JournalFlusher`)."""

    def append(self, cdr: CallDetailRecord) -> None: ...


class Throttled:
    """A warning at most once per ``interval`` per kind, with how many were held back, to
    `log` (this module's logger by default)."""

    def __init__(self, interval: float = 10.0, log: logging.Logger | None = None) -> None:
        self.interval = interval
        self.log = logger if log is None else log
        self.clock: Callable[[], float] = time.monotonic
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def __call__(
        self, kind: str, level: int, message: str, *args: object, exc_info: bool = False
    ) -> None:
        now = self.clock()
        if now - self._last.get(kind, -math.inf) < self.interval:
            self._held[kind] = self._held.get(kind, 0) + 1
            return
        self._last[kind] = now
        held = self._held.pop(kind, 0)
        if held:
            message += " (%d similar messages suppressed)"
            args = (*args, held)
        self.log.log(level, message, *args, exc_info=exc_info)


def _is_ip_literal(host: str) -> bool:
    # Cheap on purpose (it runs per Transmit): IPv6 has a colon, dotted IPv4 only digits.
    return ":" in host or host.replace(".", "").isdigit()


class HostResolver:
    """Hostnames → one IP address, resolved off the loop and cached for ``ttl`` seconds.

    Failures are remembered for ``negative_ttl`` so a dead name does not cost a lookup per
    message. One lookup (one task) per name at a time, however many messages wait for it.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        *,
        ttl: float = 300.0,
        negative_ttl: float = 30.0,
        family: int = socket.AF_UNSPEC,
    ) -> None:
        self._loop = loop
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self.family = family
        self._cache: dict[str, tuple[str | None, float]] = {}
        self._waiting: dict[str, list[Callable[[str | None], None]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def cached(self, host: str) -> str | None:
        """The fresh cached address of ``host``, or None (unknown, failed or expired)."""
        entry = self._cache.get(host)
        if entry is not None and entry[1] > self._loop.time():
            return entry[0]
        return None

    def resolve(self, host: str, callback: Callable[[str | None], None]) -> None:
        """Call ``callback`` with the address of ``host`` (None if it does not resolve)."""
        entry = self._cache.get(host)
        if entry is not None and entry[1] > self._loop.time():
            callback(entry[0])
            return
        waiting = self._waiting.get(host)
        if waiting is not None:
            waiting.append(callback)
            return
        self._waiting[host] = [callback]
        task = self._loop.create_task(self._lookup(host))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def addresses(self, host: str) -> list[str]:
        """Every address of ``host`` (for carrier source matching); raises OSError."""
        infos = await self._loop.getaddrinfo(host, None, type=socket.SOCK_DGRAM)
        return list(dict.fromkeys(str(info[4][0]) for info in infos))

    async def _lookup(self, host: str) -> None:
        address: str | None = None
        try:
            infos = await self._loop.getaddrinfo(
                host, None, family=self.family, type=socket.SOCK_DGRAM
            )
            address = str(infos[0][4][0]) if infos else None
        except OSError as error:
            logger.warning("cannot resolve %s: %s", host, error)
        ttl = self.ttl if address is not None else self.negative_ttl
        self._cache[host] = (address, self._loop.time() + ttl)
        for callback in self._waiting.pop(host, []):
            try:
                callback(address)
            except Exception:
                logger.exception("sending to %s after resolving it failed", host)

    def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        self._waiting.clear()


def _with_refusals(
    events: list[CallEvent] | None, records: list[CallDetailRecord]
) -> list[CallEvent] | None:
    """A CDR without a call event of its own and without a route tried is an attempt refused
    before it became a call (channel_limit, cps_limit, acl_denied, ...): it goes to the live
    board as a "refused" event made from the record, so refusals by reason show at once."""
    seen = {event.call_id for event in events} if events else ()
    for record in records:
        if record.call_id in seen or record.routes or record.answer_at is not None:
            continue  # a call the core reported itself, or one that got as far as a route
        if events is None:
            events = []
        events.append(
            CallEvent(
                kind="refused",
                call_id=record.call_id,
                trunk_id=record.trunk_id,
                customer_id=record.customer_id,
                direction=record.direction,
                caller=record.caller_e164,
                callee=record.callee_e164,
                at=time.time(),
                reason=record.reason,
                final_code=record.final_code,
            )
        )
    return events


class Dispatcher:
    """Applies the core's outputs and keeps the core's one loop timer armed."""

    def __init__(
        self,
        core: SipCore,
        *,
        loop: asyncio.AbstractEventLoop,
        journal: CdrSink,
        events: EventSink,
        resolver: HostResolver | None = None,
    ) -> None:
        self.core = core
        self.loop = loop
        self.journal = journal
        self.events = events
        self.resolver = resolver or HostResolver(loop)
        self.udp: UdpTransport | None = None
        self.streams: StreamTransports | None = None
        # Where the core's AcquireSlot / ReleaseSlot go (the runtime's limits; edge.limits).
        self.slots: Callable[[AcquireSlot | ReleaseSlot], None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf
        self._timer_stopped = False
        self.log_throttled = Throttled()
        # Plain counters for the metrics endpoint.
        self.transmits_dropped = 0
        self.cdr_failures = 0
        self.core_errors = 0
        self.timer_runs = 0

    # --- outputs ---------------------------------------------------------------------------

    def dispatch(self, outputs: Sequence[Output]) -> None:
        """Carry out the outputs of one input, then re-arm the timer."""
        events: list[CallEvent] | None = None
        records: list[CallDetailRecord] | None = None
        for out in outputs:
            kind = type(out)
            if kind is Transmit:
                self.send(out.data, out.addr)  # type: ignore[union-attr]
            elif kind is CdrReady:
                self._journal(out.record)  # type: ignore[union-attr]
                if records is None:
                    records = []
                records.append(out.record)  # type: ignore[union-attr]
            elif kind is CallEvent:
                if events is None:
                    events = []
                events.append(out)  # type: ignore[arg-type]
            elif kind is SecurityEvent:
                security_logger.warning("%s", out.log_line())  # type: ignore[union-attr]
            elif (kind is AcquireSlot or kind is ReleaseSlot) and self.slots is not None:
                self.slots(out)  # type: ignore[arg-type]
            else:
                self.log_throttled("output", logging.ERROR, "unknown core output %r dropped", out)
        if records is not None:
            events = _with_refusals(events, records)
        if events is not None:
            try:
                self.events.publish(events)
            except Exception:
                logger.exception("event sink failed; %d events lost", len(events))
        self.arm_timer()

    def core_failed(self, where: str) -> None:
        """The core raised on an input: a bug. Keep serving; log at most every few seconds."""
        self.core_errors += 1
        self.log_throttled(
            "core:" + where, logging.ERROR, "core raised in %s", where, exc_info=True
        )
        self.arm_timer()

    def send(self, data: bytes, addr: Address) -> None:
        host, port, transport = addr
        if host[:1] == "[":  # an IPv6 reference from a URI: the socket wants the bare address
            host = host[1:-1]
        if _is_ip_literal(host):
            self._send_to(data, host, port, transport, None)
            return
        address = self.resolver.cached(host)
        if address is not None:
            self._send_to(data, address, port, transport, host)
        else:
            self.resolver.resolve(host, partial(self._send_resolved, data, host, port, transport))

    def _send_resolved(
        self, data: bytes, host: str, port: int, transport: str, address: str | None
    ) -> None:
        if address is None:
            self.transmits_dropped += 1
        else:
            self._send_to(data, address, port, transport, host)

    def _send_to(
        self, data: bytes, ip: str, port: int, transport: str, server_hostname: str | None
    ) -> None:
        if transport == "udp":
            if self.udp is not None and self.udp.sendto(data, (ip, port)):
                return
        elif transport in STREAM_TRANSPORTS and self.streams is not None:
            if self.streams.send(data, (ip, port, transport), server_hostname):
                return
        else:
            self.log_throttled(
                "transport", logging.WARNING, "no %s transport: message dropped", transport
            )
        self.transmits_dropped += 1

    def _journal(self, record: CallDetailRecord) -> None:
        try:
            self.journal.append(record)
        except Exception:
            # Never expected: the journal is closed only after every input has stopped. The
            # log then is the record's last copy, so it goes there whole.
            self.cdr_failures += 1
            try:
                line: object = record.to_json().decode()
            except Exception:
                line = record
            logger.exception("CDR not journalled, kept here: %s", line)

    # --- the one timer ---------------------------------------------------------------------

    def arm_timer(self) -> None:
        if self._timer_stopped:
            return
        try:
            deadline = self.core.next_timer()
        except Exception:
            self.core_errors += 1
            logger.exception("core.next_timer raised")
            return
        if deadline is None or deadline >= self._timer_at:
            return  # the armed handle fires first; a handle that finds nothing due is harmless
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = deadline
        self._timer = self.loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        # The loop may run a handle up to its clock resolution early: never tell the core
        # that it is earlier than the deadline it asked for.
        now = max(self.loop.time(), self._timer_at)
        self._timer = None
        self._timer_at = math.inf
        self.timer_runs += 1
        try:
            outputs = self.core.on_timer(now, time.time())
        except Exception:
            self.core_failed("on_timer")
            return
        self.dispatch(outputs)

    def stop_timer(self) -> None:
        """At shutdown, after the core's last outputs: no more timer callbacks."""
        self._timer_stopped = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = math.inf

    @property
    def timer_deadline(self) -> float | None:
        """When the armed handle fires (loop clock), None if none is armed."""
        return None if self._timer is None else self._timer_at

    def transport_failed(self, addr: Address) -> None:
        """An outbound connection failed: tell the core if it has a hook for that."""
        hook: Callable[[Address, float, float], Sequence[Output]] | None = getattr(
            self.core, "transport_error", None
        )
        if hook is None:
            return
        try:
            outputs = hook(addr, self.loop.time(), time.time())
        except Exception:
            self.core_failed("transport_error")
            return
        self.dispatch(outputs)


class UdpTransport(asyncio.DatagramProtocol):
    """One UDP socket: each datagram is one call of the core, its outputs dispatched."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        self._dispatcher = dispatcher
        self._core = dispatcher.core
        self._loop = dispatcher.loop
        self.transport: asyncio.DatagramTransport | None = None
        self.errors = 0
        self._pending: list[tuple[bytes, tuple[str, int]]] = []
        self._pending_since = 0.0  # time.monotonic() when the first of `_pending` was queued

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # asyncio's own selector transport does not subclass DatagramTransport on 3.11.
        self.transport = transport = cast(asyncio.DatagramTransport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                # The kernel's cap (net.core.rmem_max) applies; a refusal is not fatal.
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, option, UDP_SOCKET_BUFFER)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        if self._pending and time.monotonic() - self._pending_since >= UDP_SEND_WAIT:
            self.flush()  # the answers to earlier datagrams of this wake-up have waited enough
        try:
            outputs = self._core.datagram_received(
                data, (addr[0], addr[1], "udp"), self._loop.time(), time.time()
            )
        except Exception:
            self._dispatcher.core_failed("datagram_received")
            return
        self._dispatcher.dispatch(outputs)

    def error_received(self, exc: Exception) -> None:
        # ICMP unreachable from an earlier send, or a send that failed; the core's
        # transactions time out as they would on a lost datagram.
        self.errors += 1
        self._dispatcher.log_throttled("udp", logging.DEBUG, "UDP error: %s", exc)

    def sendto(self, data: bytes, addr: tuple[str, int]) -> bool:
        """Queue a datagram; the queue goes out once the loop has run every callback that
        is ready (the datagrams one wake-up read, a timer), at `UDP_BATCH`, or before the next
        datagram read is handled once the oldest has waited `UDP_SEND_WAIT`.

        Sent one by one, each datagram woke its receiver on its own: the edge paid a
        cross-CPU wake-up in `sendto` for most of them, and a SIPp peer a context switch.
        Sent back to back, a receiver already awake takes the rest of the batch. Measured
        (issue 15, interpreted core at 1,200 calls/s): half the context switches on the
        machine, the edge's CPU 8 % lower and the peers' 15 %.

        A datagram waits at most `UDP_SEND_WAIT` and one datagram's work. Unbounded, it waited
        for the rest of its wake-up, and after the edge had waited for a CPU on a busy machine
        one wake-up read 10 to 26 datagrams (1 to 2.5 ms of work). Measured on the wire
        (``bench/edge_cps.py --only edge --wire``, compiled core at 675 calls/s, half its
        rate, 20 s soaks alternated, those with little CPU stolen by the hypervisor):
        INVITE->200 p50 2.0-2.1 ms and p99 4.6-4.8 ms unbounded; p50 1.7-2.0 and p99
        3.8-4.1 ms bounded at 0.1-0.3 ms; p99 4.6 ms at 1 ms, and 4.6-4.7 ms at 0 (a flush
        before every datagram read, so more wake-ups). At 800 calls/s (six alternated pairs of
        30 s soaks) p99 5.2 ms against 7.7-14.3 ms, and the edge's CPU 72.8 % of a core against
        73.3 %: a flush mid-way costs a wake-up of its receivers, a few µs, no more.
        """
        transport = self.transport
        if transport is None or transport.is_closing():
            return False
        # Both asyncio's and uvloop's datagram transports have it; typeshed does not say so.
        if transport.get_write_buffer_size() > UDP_WRITE_LIMIT:  # type: ignore[attr-defined]
            self._dispatcher.log_throttled(
                "udp-full", logging.WARNING, "UDP send buffer full: dropping"
            )
            return False
        pending = self._pending
        if not pending:
            self._loop.call_soon(self.flush)
            self._pending_since = time.monotonic()
        pending.append((data, addr))
        if len(pending) >= UDP_BATCH:
            self.flush()
        return True

    def flush(self) -> None:
        """Send the queued datagrams now (in order); none are queued after."""
        pending = self._pending
        if not pending:
            return
        self._pending = []
        transport = self.transport
        if transport is None or transport.is_closing():
            self._dispatcher.transmits_dropped += len(pending)
            return
        for data, addr in pending:
            transport.sendto(data, addr)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def close(self) -> None:
        if self.transport is not None:
            self.flush()  # the core's last words (BYEs, 503s) were queued just before
            self.transport.close()


async def open_udp(dispatcher: Dispatcher, sock: socket.socket) -> UdpTransport:
    """Serve SIP over UDP on the bound ``sock``: make it the dispatcher's UDP transport."""
    _, protocol = await dispatcher.loop.create_datagram_endpoint(
        lambda: UdpTransport(dispatcher), sock=sock
    )
    dispatcher.udp = protocol
    # Hostnames resolve to the family the socket can send to (IPv4 or IPv6).
    dispatcher.resolver.family = sock.family
    return protocol


class StreamConnection(asyncio.Protocol):
    """One TCP or TLS connection, inbound or outbound; frames messages with a StreamParser.

    An outbound connection exists (in the table, queuing bytes) from the first `Transmit` to
    its peer; its bytes go out once it is connected.
    """

    def __init__(self, streams: StreamTransports, transport: str, peer: Address | None) -> None:
        self._streams = streams
        self._dispatcher = streams.dispatcher
        self.transport_name = transport
        self.outbound = peer is not None
        self.key: Address = peer if peer is not None else ("", 0, transport)
        self.transport: asyncio.Transport | None = None
        self._parser = StreamParser(max_size=streams.max_message_size)
        self._queue: list[bytes] = []
        self._queued = 0
        self.closed = False

    # --- asyncio callbacks -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)
        if self.outbound and self.closed:  # closed (shutdown) while connecting
            transport.close()
            return
        if not self.outbound:
            peer = transport.get_extra_info("peername")
            self.key = (str(peer[0]), int(peer[1]), self.transport_name)
            if not self._streams.register(self):
                self.closed = True
                transport.abort()
                return
        if self._queue:
            transport.write(b"".join(self._queue))
            self._queue.clear()
            self._queued = 0

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        dispatcher = self._dispatcher
        core = dispatcher.core
        now = dispatcher.loop.time()
        wall = time.time()
        items = self._parser.feed(data)
        if not items:
            return
        lost = False
        try:
            if len(items) == 1 and type(items[0]) is not FramingError:
                outputs = core.message_received(items[0], self.key, now, wall)  # type: ignore[arg-type]
            else:
                outputs = []
                for item in items:
                    if isinstance(item, FramingError):
                        # Answered if it can be (a 400 is written before any close).
                        outputs.extend(core.stream_error(self.key, item, now, wall))
                        lost = item.fatal
                    else:
                        outputs.extend(core.message_received(item, self.key, now, wall))
        except Exception:
            dispatcher.core_failed("message_received")
        else:
            dispatcher.dispatch(outputs)
        if lost:
            self.close()

    def eof_received(self) -> bool | None:
        return None  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.transport = None
        self._streams.forget(self)

    # --- the dispatcher's side -------------------------------------------------------------

    def send(self, data: bytes) -> bool:
        if self.closed:
            return False
        transport = self.transport
        if transport is None:  # still connecting
            if self._queued + len(data) > self._streams.queue_limit:
                return False
            self._queue.append(data)
            self._queued += len(data)
            return True
        if transport.get_write_buffer_size() > self._streams.write_limit:
            self._dispatcher.log_throttled(
                "write-limit",
                logging.WARNING,
                "%s peer %s:%s does not read: closing",
                self.transport_name,
                self.key[0],
                self.key[1],
            )
            self.closed = True
            transport.abort()
            return False
        transport.write(data)
        return True

    def close(self) -> None:
        """Close after what is buffered is written."""
        self.closed = True
        if self.transport is not None:
            self.transport.close()
        else:
            self._streams.forget(self)

    def failed(self) -> None:
        """The outbound connection could not be opened: drop what was queued."""
        self.closed = True
        self._queue.clear()
        self._queued = 0


class StreamTransports:
    """The TCP/TLS listeners and the table of connections, keyed by (host, port, transport).

    A `Transmit` to a peer with a connection in the table is written to it (responses to a
    stream request go back on its connection, as RFC 3261 18.2.2 asks); otherwise a
    connection is opened to that address and the bytes wait for it.
    """

    def __init__(
        self,
        dispatcher: Dispatcher,
        *,
        client_ssl: ssl.SSLContext | None = None,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        write_limit: int = DEFAULT_WRITE_LIMIT,
        queue_limit: int = DEFAULT_QUEUE_LIMIT,
        max_message_size: int = DEFAULT_MAX_SIZE,
    ) -> None:
        self.dispatcher = dispatcher
        self.loop = dispatcher.loop
        self.client_ssl = client_ssl
        self.max_connections = max_connections
        self.connect_timeout = connect_timeout
        self.write_limit = write_limit
        self.queue_limit = queue_limit
        # The StreamParser's limit is also the per-connection read buffer's: a peer cannot
        # make it hold more than one message's worth (plus one read) before it is an error.
        self.max_message_size = max_message_size
        self.connections: dict[Address, StreamConnection] = {}
        self.servers: list[asyncio.Server] = []
        self._connecting: set[asyncio.Task[None]] = set()
        self.connect_failures = 0
        self.refused_connections = 0
        dispatcher.streams = self

    async def listen(
        self, sock: socket.socket, *, transport: str = "tcp", ssl: ssl.SSLContext | None = None
    ) -> asyncio.Server:
        """Accept SIP connections on the bound, listening-ready ``sock``."""
        if transport not in STREAM_TRANSPORTS:
            raise ValueError(f"not a stream transport: {transport!r}")
        server = await self.loop.create_server(
            lambda: StreamConnection(self, transport, None), sock=sock, ssl=ssl
        )
        self.servers.append(server)
        return server

    def register(self, connection: StreamConnection) -> bool:
        """An inbound connection is up; False if there are too many."""
        if len(self.connections) >= self.max_connections:
            self.refused_connections += 1
            self.dispatcher.log_throttled(
                "max-connections",
                logging.WARNING,
                "%d stream connections open: refusing more",
                len(self.connections),
            )
            return False
        self.connections[connection.key] = connection
        return True

    def forget(self, connection: StreamConnection) -> None:
        if self.connections.get(connection.key) is connection:
            del self.connections[connection.key]

    def send(self, data: bytes, addr: Address, server_hostname: str | None = None) -> bool:
        connection = self.connections.get(addr)
        if connection is not None and not connection.closed:
            return connection.send(data)
        if addr[2] == "tls" and self.client_ssl is None:
            return False
        if len(self.connections) >= self.max_connections:
            self.refused_connections += 1
            return False
        connection = StreamConnection(self, addr[2], addr)
        self.connections[addr] = connection
        connection.send(data)
        task = self.loop.create_task(self._connect(connection, server_hostname))
        self._connecting.add(task)
        task.add_done_callback(self._connecting.discard)
        return True

    async def _connect(self, connection: StreamConnection, server_hostname: str | None) -> None:
        host, port, transport = connection.key
        tls = transport == "tls"
        try:
            await asyncio.wait_for(
                self.loop.create_connection(
                    lambda: connection,
                    host,
                    port,
                    ssl=self.client_ssl if tls else None,
                    server_hostname=(server_hostname or host) if tls else None,
                ),
                self.connect_timeout,
            )
        except (OSError, TimeoutError, ssl.SSLError) as error:
            self.connect_failures += 1
            self.forget(connection)
            connection.failed()
            self.dispatcher.log_throttled(
                "connect",
                logging.WARNING,
                "cannot connect to %s:%s over %s: %s",
                host,
                port,
                transport,
                error or type(error).__name__,
            )
            self.dispatcher.transport_failed(connection.key)

    def stop_listening(self) -> None:
        for server in self.servers:
            server.close()

    def close(self) -> None:
        """Close every connection (buffered writes are flushed first) and every listener."""
        self.stop_listening()
        for task in self._connecting:
            task.cancel()
        for connection in list(self.connections.values()):
            connection.close()
