"""The asyncio transports and dispatcher on real sockets (127.0.0.1), driven by a fake core.

The fake core answers by rule (echo, "send ... to ...", CDRs, events, timers), so these tests
check only what the runtime owns: bytes in and out, stream framing and the connection table,
the one timer handle, and that no task or future is created per message.
"""

from __future__ import annotations

import asyncio
import functools
import socket
import threading
import time
from typing import Any

import pytest

from edge.b2bua import CallEvent, CdrReady, Transmit
from edge.runtime.events import MemorySink
from edge.runtime.main import _bind_sip
from edge.runtime.transports import Dispatcher, StreamTransports, open_udp


def run_async(test):
    @functools.wraps(test)
    def wrapper(*args, **kwargs):
        return asyncio.run(asyncio.wait_for(test(*args, **kwargs), 20))

    return wrapper


def sip(call_id: str, body: bytes = b"", *, length: bool = True) -> bytes:
    head = (
        "OPTIONS sip:edge@127.0.0.1 SIP/2.0\r\n"
        f"Via: SIP/2.0/TCP 127.0.0.1:5999;branch=z9hG4bK{call_id}\r\n"
        "From: <sip:a@example.test>;tag=1\r\nTo: <sip:b@example.test>\r\n"
        f"Call-ID: {call_id}\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n"
    )
    if length:
        head += f"Content-Length: {len(body)}\r\n"
    return (head + "\r\n").encode() + body


def event(kind: str, call_id: str = "c1") -> CallEvent:
    return CallEvent(kind, call_id, 1, 1, "outbound", "+1", "+2", time.time())


class FakeCore:
    """Answers by rule; records every input and timer."""

    def __init__(self) -> None:
        self.inputs: list[tuple[str, Any, tuple[str, int, str], float]] = []
        self.deadlines: list[float] = []
        self.fired: list[tuple[float, float]] = []
        self.transport_errors: list[tuple[str, int, str]] = []

    def datagram_received(self, data, addr, now, wall):
        self.inputs.append(("datagram", data, addr, now))
        word, _, rest = data.partition(b" ")
        if word == b"raise":
            raise RuntimeError("a bug in the core")
        if word == b"send":  # send HOST PORT TRANSPORT PAYLOAD
            host, port, transport, payload = rest.split(b" ", 3)
            return [Transmit(payload, (host.decode(), int(port), transport.decode()))]
        if word == b"cdr":
            return [CdrReady(record=rest.decode()), Transmit(b"journalled", addr)]  # type: ignore[arg-type]
        if word == b"events":
            return [event("started"), Transmit(b"evented", addr), event("ringing")]
        if word == b"timer":  # timer SECONDS: ask to be woken then
            self.deadlines.append(now + float(rest))
            return []
        return [Transmit(b"echo " + data, addr)]

    def message_received(self, message, addr, now, wall):
        self.inputs.append(("message", message.call_id, addr, now))
        return [Transmit(f"got {message.call_id}\n".encode(), addr)]

    def stream_error(self, addr, error, now, wall):
        self.inputs.append(("stream_error", error.status_hint, addr, now))
        return [Transmit(f"bad {error.status_hint}\n".encode(), addr)]

    def next_timer(self):
        return min(self.deadlines, default=None)

    def on_timer(self, now, wall):
        due = [d for d in self.deadlines if d <= now]
        self.deadlines = [d for d in self.deadlines if d > now]
        self.fired.extend((now, d) for d in due)
        return []

    def transport_error(self, addr, now, wall):
        self.transport_errors.append(addr)
        return []


class ListJournal:
    def __init__(self) -> None:
        self.records: list[Any] = []

    def append(self, cdr: Any) -> None:
        self.records.append(cdr)


class Harness:
    async def start(self, core: Any = None, **stream_options: Any) -> Harness:
        self.loop = asyncio.get_running_loop()
        self.core = core or FakeCore()
        self.journal = ListJournal()
        self.sink = MemorySink()
        self.dispatcher = Dispatcher(
            self.core, loop=self.loop, journal=self.journal, events=self.sink
        )
        # Bound as the edge binds them: UDP and TCP on one port.
        udp_sock, tcp_sock = _bind_sip("127.0.0.1", 0)
        self.udp = await open_udp(self.dispatcher, udp_sock)
        self.udp_port = self.udp.transport.get_extra_info("sockname")[1]
        self.streams = StreamTransports(self.dispatcher, **stream_options)
        server = await self.streams.listen(tcp_sock)
        self.tcp_port = server.sockets[0].getsockname()[1]
        return self

    def close(self) -> None:
        self.dispatcher.stop_timer()
        self.udp.close()
        self.streams.close()


class UdpClient(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.received: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data, addr):
        self.received.put_nowait(data)


async def udp_client(port: int) -> tuple[asyncio.DatagramTransport, UdpClient]:
    loop = asyncio.get_running_loop()
    return await loop.create_datagram_endpoint(UdpClient, remote_addr=("127.0.0.1", port))


async def read_until(reader: asyncio.StreamReader, count: int) -> list[bytes]:
    return [await asyncio.wait_for(reader.readline(), 5) for _ in range(count)]


# --- UDP ------------------------------------------------------------------------------------


@run_async
async def test_udp_datagram_goes_to_the_core_and_the_answer_back():
    edge = await Harness().start()
    transport, client = await udp_client(edge.udp_port)
    transport.sendto(b"hello")
    assert await asyncio.wait_for(client.received.get(), 5) == b"echo hello"
    ((kind, data, addr, now),) = edge.core.inputs
    client_port = transport.get_extra_info("sockname")[1]
    assert (kind, data, addr) == ("datagram", b"hello", ("127.0.0.1", client_port, "udp"))
    assert abs(now - edge.loop.time()) < 1
    transport.close()
    edge.close()


@run_async
async def test_cdrs_go_to_the_journal_and_events_to_the_sink_once_per_input():
    edge = await Harness().start()
    published = []
    edge.sink.publish = lambda events: published.append(list(events))  # type: ignore[method-assign]
    transport, client = await udp_client(edge.udp_port)
    transport.sendto(b"cdr record-1")
    assert await asyncio.wait_for(client.received.get(), 5) == b"journalled"
    transport.sendto(b"events")
    assert await asyncio.wait_for(client.received.get(), 5) == b"evented"
    assert edge.journal.records == ["record-1"]
    assert [[e.kind for e in batch] for batch in published] == [["started", "ringing"]]
    transport.close()
    edge.close()


@run_async
async def test_a_core_that_raises_is_logged_and_the_edge_keeps_serving(caplog):
    edge = await Harness().start()
    transport, client = await udp_client(edge.udp_port)
    transport.sendto(b"raise")
    transport.sendto(b"after")
    assert await asyncio.wait_for(client.received.get(), 5) == b"echo after"
    assert edge.dispatcher.core_errors == 1
    assert "core raised in datagram_received" in caplog.text
    transport.close()
    edge.close()


def udp_sink() -> tuple[socket.socket, tuple[str, int]]:
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    sink.setblocking(False)
    return sink, sink.getsockname()


def waiting(sink: socket.socket) -> list[bytes]:
    """The datagrams already delivered to `sink` (loopback delivers within sendto)."""
    received = []
    while True:
        try:
            received.append(sink.recv(2048))
        except BlockingIOError:
            return received


@run_async
async def test_udp_sends_go_out_together_once_the_ready_callbacks_have_run():
    from edge.runtime.transports import UDP_BATCH

    # The answers to what one wake-up read leave back to back, in order, after all of it:
    # their receiver is woken once for the batch, not once a datagram.
    edge = await Harness().start()
    sink, addr = udp_sink()
    assert edge.udp.sendto(b"one", addr) and edge.udp.sendto(b"two", addr)
    assert waiting(sink) == []
    await asyncio.sleep(0)  # the flush was scheduled before this task's wake-up
    assert waiting(sink) == [b"one", b"two"]
    # A full batch does not wait.
    for number in range(UDP_BATCH + 1):
        edge.udp.sendto(b"%d" % number, addr)
    assert waiting(sink) == [b"%d" % number for number in range(UDP_BATCH)]
    await asyncio.sleep(0)
    assert waiting(sink) == [b"%d" % UDP_BATCH]
    sink.close()
    edge.close()


@run_async
async def test_a_datagram_read_after_the_queue_waited_its_limit_sends_the_queue_first(
    monkeypatch,
):
    from edge.runtime import transports

    # One wake-up may read many datagrams: the answers to the first ones do not wait for the
    # last one's work, only up to UDP_SEND_WAIT. The limit is set here instead of waited for.
    edge = await Harness().start()
    sink, addr = udp_sink()
    monkeypatch.setattr(transports, "UDP_SEND_WAIT", 60.0)
    edge.udp.sendto(b"first answer", addr)
    edge.udp.datagram_received(b"soon", addr)  # the next datagram of the wake-up
    assert waiting(sink) == []
    monkeypatch.setattr(transports, "UDP_SEND_WAIT", 0.0)
    edge.udp.datagram_received(b"late", addr)
    # Sent before the core saw "late", so its own answer is still queued.
    assert waiting(sink) == [b"first answer", b"echo soon"]
    assert [data for kind, data, *_ in edge.core.inputs] == [b"soon", b"late"]
    await asyncio.sleep(0)
    assert waiting(sink) == [b"echo late"]
    sink.close()
    edge.close()


@run_async
async def test_what_is_queued_goes_out_on_close_or_is_counted_as_dropped():
    edge = await Harness().start()
    sink, addr = udp_sink()
    edge.udp.sendto(b"the last BYE", addr)
    edge.close()
    assert waiting(sink) == [b"the last BYE"]
    assert edge.dispatcher.transmits_dropped == 0
    # The socket closed under the queue (not through close()): nothing sent, all counted.
    other = await Harness().start()
    other.udp.sendto(b"one", addr)
    other.udp.sendto(b"two", addr)
    other.udp.transport.close()
    await asyncio.sleep(0)
    assert waiting(sink) == []
    assert other.dispatcher.transmits_dropped == 2
    assert not other.udp.sendto(b"three", addr)
    sink.close()
    other.close()


@run_async
async def test_transmit_to_a_hostname_is_resolved_off_the_loop():
    edge = await Harness().start()
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    sink.setblocking(False)
    port = sink.getsockname()[1]
    transport, _ = await udp_client(edge.udp_port)
    transport.sendto(f"send localhost {port} udp first".encode())
    transport.sendto(f"send localhost {port} udp second".encode())
    loop = asyncio.get_running_loop()
    got = [await asyncio.wait_for(loop.sock_recv(sink, 100), 5) for _ in range(2)]
    assert got == [b"first", b"second"]
    assert edge.dispatcher.resolver.cached("localhost") == "127.0.0.1"
    transport.close()
    sink.close()
    edge.close()


# --- the one timer --------------------------------------------------------------------------


@run_async
async def test_one_timer_handle_follows_the_earliest_deadline_and_never_fires_early():
    edge = await Harness().start()
    transport, _ = await udp_client(edge.udp_port)
    transport.sendto(b"timer 0.6")
    await asyncio.sleep(0.05)
    first = edge.dispatcher.timer_deadline
    assert first is not None
    transport.sendto(b"timer 5")  # later: the armed handle stays
    await asyncio.sleep(0.05)
    assert edge.dispatcher.timer_deadline == first
    transport.sendto(b"timer 0.2")  # earlier: the handle moves
    await asyncio.sleep(0.05)
    assert edge.dispatcher.timer_deadline < first
    await asyncio.sleep(0.8)
    fired = edge.core.fired
    assert len(fired) == 2
    assert all(now >= deadline for now, deadline in fired)
    # The 5 s deadline is still pending, armed as the only handle.
    assert edge.dispatcher.timer_deadline == edge.core.deadlines[0]
    scheduled = edge.loop._scheduled  # type: ignore[attr-defined]
    ours = [h for h in scheduled if not h.cancelled() and h._callback == edge.dispatcher._on_timer]
    assert len(ours) == 1
    transport.close()
    edge.close()


# --- TCP ------------------------------------------------------------------------------------


@run_async
async def test_tcp_messages_are_framed_and_answered_on_their_connection():
    edge = await Harness().start()
    reader, writer = await asyncio.open_connection("127.0.0.1", edge.tcp_port)
    writer.write(sip("a") + sip("b", b"body"))  # two in one segment
    whole = sip("c")
    writer.write(whole[:10])
    await writer.drain()
    await asyncio.sleep(0.05)
    writer.write(whole[10:])  # one split in two
    assert await read_until(reader, 3) == [b"got a\n", b"got b\n", b"got c\n"]
    client_port = writer.get_extra_info("sockname")[1]
    assert {addr for _, _, addr, _ in edge.core.inputs} == {("127.0.0.1", client_port, "tcp")}
    assert list(edge.streams.connections) == [("127.0.0.1", client_port, "tcp")]
    writer.close()
    await asyncio.sleep(0.05)
    assert edge.streams.connections == {}
    edge.close()


@run_async
async def test_framing_error_is_answered_then_the_connection_closed():
    edge = await Harness().start()
    reader, writer = await asyncio.open_connection("127.0.0.1", edge.tcp_port)
    writer.write(sip("x", length=False))  # Content-Length is mandatory on streams
    assert await asyncio.wait_for(reader.read(100), 5) == b"bad 400\n"
    assert await asyncio.wait_for(reader.read(100), 5) == b""  # closed by the edge
    assert [i[0] for i in edge.core.inputs] == ["stream_error"]
    writer.close()
    edge.close()


@run_async
async def test_oversized_stream_buffer_is_an_error_not_memory():
    edge = await Harness().start(max_message_size=2000)
    reader, writer = await asyncio.open_connection("127.0.0.1", edge.tcp_port)
    writer.write(b"OPTIONS sip:x SIP/2.0\r\nX-Filler: " + b"a" * 5000)
    assert await asyncio.wait_for(reader.read(100), 5) == b"bad 513\n"
    assert await asyncio.wait_for(reader.read(100), 5) == b""
    writer.close()
    edge.close()


@run_async
async def test_outbound_connection_is_opened_on_demand_and_reused():
    edge = await Harness().start()
    accepted = []
    received = asyncio.Queue()

    async def peer(reader, writer):
        accepted.append(writer.get_extra_info("peername"))
        while line := await reader.readline():
            await received.put(line)
            if line == b"reply\n":
                writer.write(sip("from-peer"))

    server = await asyncio.start_server(peer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    transport, _ = await udp_client(edge.udp_port)
    # Two sends while the connection opens: both queue, both arrive, in order.
    transport.sendto(f"send 127.0.0.1 {port} tcp one\n".encode())
    transport.sendto(f"send 127.0.0.1 {port} tcp two\n".encode())
    assert [await asyncio.wait_for(received.get(), 5) for _ in range(2)] == [b"one\n", b"two\n"]
    transport.sendto(f"send 127.0.0.1 {port} tcp reply\n".encode())
    assert await asyncio.wait_for(received.get(), 5) == b"reply\n"
    # The peer's message on that connection reaches the core with the peer's address...
    assert await asyncio.wait_for(received.get(), 5) == b"got from-peer\n"
    assert ("message", "from-peer", ("127.0.0.1", port, "tcp")) in [i[:3] for i in edge.core.inputs]
    assert len(accepted) == 1  # ... and the answer went back on the same one connection
    assert ("127.0.0.1", port, "tcp") in edge.streams.connections
    transport.close()
    server.close()
    edge.close()


@run_async
async def test_failed_outbound_connection_drops_its_bytes_and_tells_the_core(caplog):
    edge = await Harness().start()
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there
    transport, _ = await udp_client(edge.udp_port)
    transport.sendto(f"send 127.0.0.1 {port} tcp lost".encode())
    for _ in range(100):
        await asyncio.sleep(0.02)
        if edge.core.transport_errors:
            break
    assert edge.core.transport_errors == [("127.0.0.1", port, "tcp")]
    assert edge.streams.connect_failures == 1
    assert edge.streams.connections == {}
    assert "cannot connect to 127.0.0.1" in caplog.text
    transport.close()
    edge.close()


@run_async
async def test_connections_beyond_the_limit_are_refused():
    edge = await Harness().start(max_connections=1)
    _, first = await asyncio.open_connection("127.0.0.1", edge.tcp_port)
    await asyncio.sleep(0.05)
    reader, second = await asyncio.open_connection("127.0.0.1", edge.tcp_port)
    assert await asyncio.wait_for(reader.read(10), 5) == b""
    assert edge.streams.refused_connections == 1
    assert len(edge.streams.connections) == 1
    first.close()
    second.close()
    edge.close()


@run_async
async def test_tls_transmit_without_a_client_context_is_dropped_not_raised():
    edge = await Harness().start()
    edge.dispatcher.send(b"x", ("127.0.0.1", 5061, "tls"))
    edge.dispatcher.send(b"x", ("127.0.0.1", 5061, "sctp"))
    assert edge.dispatcher.transmits_dropped == 2
    edge.close()


# --- no task or future per message ----------------------------------------------------------


def _blocking_client(udp_port: int, tcp_port: int, count: int) -> tuple[int, int]:
    """Send `count` datagrams and `count` stream messages, wait for every answer."""
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.settimeout(5)
    udp.connect(("127.0.0.1", udp_port))
    tcp = socket.create_connection(("127.0.0.1", tcp_port), timeout=5)
    answers = 0
    for i in range(count):
        udp.send(b"ping %d" % i)
        udp.recv(100)
        answers += 1
    tcp.sendall(b"".join(sip(f"m{i}") for i in range(count)))
    buffer = b""
    while buffer.count(b"\n") < count:
        buffer += tcp.recv(65536)
    udp.close()
    tcp.close()
    return answers, buffer.count(b"\n")


def _count_tasks_and_futures(count: int) -> tuple[list[str], int, tuple[int, int]]:
    loop = asyncio.new_event_loop()  # the plain asyncio loop: its methods can be wrapped
    created = {"tasks": 0, "futures": 0}
    task_names: list[str] = []

    def task_factory(loop, coro, **kwargs):
        created["tasks"] += 1
        task_names.append(coro.__qualname__)
        return asyncio.Task(coro, loop=loop, **kwargs)

    plain_create_future = loop.create_future

    def create_future():
        created["futures"] += 1
        return plain_create_future()

    async def scenario() -> tuple[list[str], int, tuple[int, int]]:
        edge = await Harness().start()
        await asyncio.sleep(0)
        loop.set_task_factory(task_factory)
        loop.create_future = create_future  # type: ignore[method-assign]
        before = dict(created)
        # The loop serves while a thread plays the peer; the only wait is on that thread.
        result = await loop.run_in_executor(
            None, _blocking_client, edge.udp_port, edge.tcp_port, count
        )
        futures = created["futures"] - before["futures"]
        loop.set_task_factory(None)
        edge.close()
        return list(task_names), futures, result

    try:
        return loop.run_until_complete(scenario())
    finally:
        loop.close()


def test_no_task_or_future_is_created_per_message():
    tasks_few, futures_few, answers_few = _count_tasks_and_futures(2)
    tasks_many, futures_many, answers_many = _count_tasks_and_futures(300)
    assert answers_few == (2, 2) and answers_many == (300, 300)
    # The only task is asyncio's own, per accepted connection (the selector loop accepts in
    # a task); the only futures are the test's own run_in_executor wait. Neither grows with
    # the number of messages.
    assert tasks_few == tasks_many
    assert set(tasks_many) <= {"BaseSelectorEventLoop._accept_connection2"}
    assert futures_few == futures_many
    assert futures_many <= 2


def test_the_dispatcher_runs_only_on_the_loop_thread():
    # The transports never hand work to other threads: every core call is on the loop thread.
    threads = set()

    class ThreadCore(FakeCore):
        def datagram_received(self, data, addr, now, wall):
            threads.add(threading.get_ident())
            return super().datagram_received(data, addr, now, wall)

    async def scenario():
        edge = await Harness().start(ThreadCore())
        transport, client = await udp_client(edge.udp_port)
        for _ in range(5):
            transport.sendto(b"x")
        for _ in range(5):
            await asyncio.wait_for(client.received.get(), 5)
        transport.close()
        edge.close()
        return threading.get_ident()

    loop_thread = asyncio.run(scenario())
    assert threads == {loop_thread}


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "10.1.2.3"])
def test_ip_literals_need_no_lookup(host):
    from edge.runtime.transports import _is_ip_literal

    assert _is_ip_literal(host)
    assert not _is_ip_literal("gw.example.test")
