"""A fake datagram network and fake clock joining sans-IO SIP cores, for tests.

Every message crosses as bytes (serialised by the sender, parsed by the receiver), so two cores
meet only on the wire, exactly as the runtime will join them. Rules can drop, duplicate or
delay the datagrams they match. Time moves only when `run` says so; nothing sleeps.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from edge.sip.dialog import AnswerRetransmitter
from edge.sip.message import Request, Response, new_branch
from edge.sip.parser import parse_message
from edge.sip.timers import TimerConfig, TimerQueue
from edge.sip.transaction import (
    Address,
    ClientTransaction,
    DeliverToTU,
    SendMessage,
    Transaction,
    TransactionEvent,
    TransactionLayer,
)

Message = Request | Response
Predicate = Callable[[Message], bool]


@dataclass
class _Rule:
    matches: Predicate
    times: int  # how many more datagrams it applies to
    extra_delay: float = 0.0
    copies: int = 1  # 0 drops, 2 duplicates


@dataclass(frozen=True)
class Wire:
    """One datagram as sent: when, who to whom, and what."""

    at: float
    src: Address
    dst: Address
    message: Message


@dataclass
class Peer:
    """One SIP element: a TransactionLayer plus a scriptable TU that records what it gets."""

    network: FakeNetwork
    addr: Address
    layer: TransactionLayer
    delivered: list[DeliverToTU] = field(default_factory=list)
    events: list[TransactionEvent] = field(
        default_factory=list
    )  # every event, SendMessage included
    answers: TimerQueue[AnswerRetransmitter] = field(default_factory=TimerQueue)
    # TU behaviour run for each delivery, e.g. "ACK every 2xx"; scripted tests leave it None.
    on_deliver: Callable[[Peer, DeliverToTU], None] | None = None

    def via(self, transport: str = "UDP") -> str:
        host, port = self.addr
        return f"SIP/2.0/{transport} {host}:{port};branch={new_branch()}"

    def send_request(self, request: Request, dst: Address) -> ClientTransaction:
        transaction, events = self.layer.send_request(request, dst, self.network.now)
        self.handle(events)
        return transaction

    def send_response(self, transaction: Transaction, response: Response) -> None:
        self.handle(self.layer.send_response(transaction, response, self.network.now))

    def send_stateless(self, message: Message, dst: Address) -> None:
        self.handle([SendMessage(message, dst)])

    def answer_invite(self, transaction: Transaction, response: Response) -> AnswerRetransmitter:
        """Send a 2xx to INVITE through its transaction, then keep resending it ourselves
        until `acknowledged()` (RFC 6026: the TU, not the transaction, retransmits it)."""
        self.send_response(transaction, response)
        answer = AnswerRetransmitter(
            response, transaction.addr, self.network.now, self.layer.config
        )
        self.answers.update(answer, answer.next_timer())
        return answer

    def acknowledged(self, answer: AnswerRetransmitter) -> None:
        answer.acknowledged()
        self.answers.update(answer, answer.next_timer())

    def next_timer(self) -> float | None:
        deadlines = [self.layer.next_timer(), self.answers.next_deadline()]
        return min((d for d in deadlines if d is not None), default=None)

    def on_timer(self, now: float) -> None:
        self.handle(self.layer.on_timer(now))
        for answer in self.answers.pop_due(now):
            self.handle(answer.on_timer(now))
            self.answers.update(answer, answer.next_timer())

    def receive(self, data: bytes, src: Address) -> None:
        self.handle(self.layer.receive(parse_message(data), src, self.network.now))

    def handle(self, events: Iterable[TransactionEvent]) -> None:
        for event in events:
            self.events.append(event)
            if isinstance(event, SendMessage):
                self.network.transmit(self.addr, event.addr, event.message)
            elif isinstance(event, DeliverToTU):
                self.delivered.append(event)
                if self.on_deliver is not None:
                    self.on_deliver(self, event)

    def requests(self, method: str) -> list[DeliverToTU]:
        return [
            d
            for d in self.delivered
            if isinstance(d.message, Request) and d.message.method == method
        ]

    def responses(self, status: int | None = None) -> list[DeliverToTU]:
        return [
            d
            for d in self.delivered
            if isinstance(d.message, Response) and status in (None, d.message.status)
        ]


class FakeNetwork:
    """Datagrams in flight between peers, delivered in time order with the peers' timers."""

    def __init__(self, latency: float = 0.01) -> None:
        self.now = 0.0
        self.latency = latency
        self.wire: list[Wire] = []  # every datagram put on the network, dropped ones included
        self._in_flight: list[tuple[float, int, Address, Address, bytes]] = []
        self._order = itertools.count()
        self._peers: dict[Address, Peer] = {}
        self._rules: list[_Rule] = []

    def peer(
        self, addr: Address, *, config: TimerConfig | None = None, send_trying: bool = True
    ) -> Peer:
        peer = Peer(self, addr, TransactionLayer(config, send_trying=send_trying))
        self._peers[addr] = peer
        return peer

    def drop(self, matches: Predicate, times: int = 1) -> None:
        self._rules.append(_Rule(matches, times, copies=0))

    def duplicate(self, matches: Predicate, times: int = 1) -> None:
        self._rules.append(_Rule(matches, times, copies=2))

    def delay(self, matches: Predicate, extra: float, times: int = 1) -> None:
        self._rules.append(_Rule(matches, times, extra_delay=extra))

    def transmit(self, src: Address, dst: Address, message: Message) -> None:
        self.wire.append(Wire(self.now, src, dst, message))
        copies, delay = 1, self.latency
        for rule in self._rules:
            if rule.times > 0 and rule.matches(message):
                rule.times -= 1
                copies, delay = rule.copies, delay + rule.extra_delay
                break
        data = bytes(message)
        for _ in range(copies):
            heapq.heappush(self._in_flight, (self.now + delay, next(self._order), dst, src, data))

    def sent(self, src: Address, predicate: Predicate = lambda m: True) -> list[Wire]:
        return [w for w in self.wire if w.src == src and predicate(w.message)]

    def run(self, until: float) -> None:
        """Deliver datagrams and fire timers in time order up to `until`, then stop there."""
        while True:
            arrival = self._in_flight[0][0] if self._in_flight else math.inf
            peer = min(self._peers.values(), key=_deadline, default=None)
            deadline = math.inf if peer is None else _deadline(peer)
            if min(arrival, deadline) > until:
                break
            if arrival <= deadline:
                self.now = max(self.now, arrival)
                _, _, dst, src, data = heapq.heappop(self._in_flight)
                if dst in self._peers:
                    self._peers[dst].receive(data, src)
            elif peer is not None:
                self.now = max(self.now, deadline)
                peer.on_timer(self.now)
        self.now = max(self.now, until)


def _deadline(peer: Peer) -> float:
    deadline = peer.next_timer()
    return math.inf if deadline is None else deadline
