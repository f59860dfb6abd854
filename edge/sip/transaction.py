"""SIP transactions (RFC 3261 section 17, with the RFC 6026 fixes), sans-IO.

Four state machines, each an explicit transition table `(state, input) -> (action, next
state)`: `ClientInviteTransaction`, `ClientNonInviteTransaction`, `ServerInviteTransaction`,
`ServerNonInviteTransaction`. Inputs are messages from the peer, responses from the
transaction user (TU), timers and transport errors; outputs are small event objects
(`SendMessage`, `DeliverToTU`, `Timeout`, `TransportError`, `Terminated`) that the runtime
carries out. `TransactionLayer` owns every transaction of one SIP element: it matches incoming
messages to transactions (17.1.3, 17.2.3, and the RFC 2543 fallback) and keeps all their
deadlines in one `TimerQueue`, so the runtime arms a single timer.

How the runtime drives a layer:

    events = layer.receive(message, addr, now)         # every parsed message from the wire
    txn, events = layer.send_request(request, addr, now)   # a request of our TU
    events = layer.send_response(txn, response, now)   # the TU answers a server transaction
    events = layer.on_timer(now)                       # when now >= layer.next_timer()
    events = layer.transport_error(txn, now)           # a SendMessage of txn failed

Reliability comes from the top Via: a transaction whose Via transport is not UDP runs as on a
reliable transport (no retransmissions, no lingering). Addresses are opaque tuples, passed
through untouched; responses go back to the address the request came from (symmetric
response, RFC 3581). The 2xx to an INVITE is retransmitted by the TU (RFC 6026) and its ACK is
a request of its own, delivered to the TU without a transaction.

Nothing here does I/O, reads a clock or starts a task: time is the `now` argument (seconds).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ClassVar, TypeAlias

from edge.sip.errors import LocalProtocolError, RemoteProtocolError
from edge.sip.message import BRANCH_MAGIC_COOKIE, Request, Response, make_request, make_response
from edge.sip.tables import ShardedDict
from edge.sip.timers import Timer, TimerConfig, TimerQueue

__all__ = [
    "MAX_TIMERS",
    "Address",
    "ClientInviteTransaction",
    "ClientNonInviteTransaction",
    "ClientTransaction",
    "DeliverToTU",
    "SendMessage",
    "ServerInviteTransaction",
    "ServerNonInviteTransaction",
    "ServerTransaction",
    "Terminated",
    "Timeout",
    "Transaction",
    "TransactionEvent",
    "TransactionInput",
    "TransactionLayer",
    "TransactionState",
    "TransportError",
    "make_cancel",
]

# The most timers one transaction runs at once (its `TIMERS` per state: a retransmission
# timer and a timeout); Transaction keeps them in two pairs of slots.
MAX_TIMERS = 2

Address: TypeAlias = tuple[Any, ...]
TransactionKey: TypeAlias = tuple[object, ...]


class TransactionState(enum.Enum):
    # Members are singletons, so identity hashing (in C) is right for them; Enum's own
    # __hash__ is Python code, and states, inputs and timers key dict lookups dozens of
    # times per call.
    __hash__ = object.__hash__

    CALLING = "calling"
    TRYING = "trying"
    PROCEEDING = "proceeding"
    COMPLETED = "completed"
    CONFIRMED = "confirmed"
    ACCEPTED = "accepted"  # RFC 6026: after a 2xx to INVITE
    TERMINATED = "terminated"


class TransactionInput(enum.Enum):
    __hash__ = object.__hash__  # as TransactionState's

    RECV_REQUEST = "recv_request"  # a retransmission of the request of a server transaction
    RECV_ACK = "recv_ack"
    RECV_1XX = "recv_1xx"
    RECV_2XX = "recv_2xx"
    RECV_FINAL = "recv_final"  # 300-699
    SEND_1XX = "send_1xx"
    SEND_2XX = "send_2xx"
    SEND_FINAL = "send_final"  # 300-699
    TRANSPORT_ERROR = "transport_error"


_S = TransactionState
_I = TransactionInput
_PEER_INPUTS = frozenset({_I.RECV_REQUEST, _I.RECV_ACK, _I.RECV_1XX, _I.RECV_2XX, _I.RECV_FINAL})
# Status code // 100 -> input, for responses received and responses the TU sends.
_RECEIVED = {1: _I.RECV_1XX, 2: _I.RECV_2XX, **dict.fromkeys((3, 4, 5, 6), _I.RECV_FINAL)}
_SENT = {1: _I.SEND_1XX, 2: _I.SEND_2XX, **dict.fromkeys((3, 4, 5, 6), _I.SEND_FINAL)}


# --- events -------------------------------------------------------------------------------


@dataclass(slots=True, init=False, unsafe_hash=True)
class SendMessage:
    """Put `message` on the wire to `addr`."""

    message: Request | Response
    addr: Address
    transaction: Transaction | None = None

    def __init__(
        self,
        message: Request | Response,
        addr: Address,
        transaction: Transaction | None = None,
    ) -> None:
        self.message = message
        self.addr = addr
        self.transaction = transaction


@dataclass(slots=True, init=False, unsafe_hash=True)
class DeliverToTU:
    """Hand `message` to the transaction user.

    `addr` is the peer: where a request came from, or where the request a response answers
    was sent. `transaction` is None only for an ACK that matched no transaction (the ACK of a
    2xx, which the TU matches to its dialog). For a CANCEL, `cancelled` is the server INVITE
    transaction it matches, or None when there is none (the TU then answers the CANCEL 481).
    """

    message: Request | Response
    addr: Address
    transaction: Transaction | None
    cancelled: ServerInviteTransaction | None = None

    def __init__(
        self,
        message: Request | Response,
        addr: Address,
        transaction: Transaction | None,
        cancelled: ServerInviteTransaction | None = None,
    ) -> None:
        self.message = message
        self.addr = addr
        self.transaction = transaction
        self.cancelled = cancelled


@dataclass(slots=True, init=False, unsafe_hash=True)
class Timeout:
    """Timer B or F (no final response: treat as 408) or H (the ACK never came) fired."""

    transaction: Transaction

    def __init__(self, transaction: Transaction) -> None:
        self.transaction = transaction


@dataclass(slots=True, init=False, unsafe_hash=True)
class TransportError:
    """The transport could not deliver a message of `transaction`, which is now terminated."""

    transaction: Transaction

    def __init__(self, transaction: Transaction) -> None:
        self.transaction = transaction


@dataclass(slots=True, init=False, unsafe_hash=True)
class Terminated:
    """`transaction` is over; the layer has forgotten it."""

    transaction: Transaction

    def __init__(self, transaction: Transaction) -> None:
        self.transaction = transaction


TransactionEvent: TypeAlias = SendMessage | DeliverToTU | Timeout | TransportError | Terminated


# --- transactions -------------------------------------------------------------------------

# An action gets the transaction, the message of the input (None for timers and transport
# errors), `now`, and the list it appends its events to.
Action: TypeAlias = Callable[
    ["Transaction", Request | Response | None, float, list[TransactionEvent]], None
]
Table: TypeAlias = Mapping[
    tuple[TransactionState, TransactionInput | Timer], tuple[Action, TransactionState]
]


class Transaction:
    """What the four transaction kinds share: identity, timers and the table-driven step.

    A subclass supplies `TABLE` (every allowed transition), `TIMERS` (the timers that run in
    each state: entering a state starts those not yet running and stops the others),
    `RETRANSMIT_TIMER` (its retransmission timer, whose interval backs off) and `ABSORBING`
    (the states in which it only absorbs retransmissions until a timer ends it).
    """

    TABLE: ClassVar[Table]
    TIMERS: ClassVar[Mapping[TransactionState, tuple[Timer, ...]]]
    INITIAL_STATE: ClassVar[TransactionState]
    RETRANSMIT_TIMER: ClassVar[Timer | None]
    # In these states the TU is done with the transaction's messages and a resend needs only
    # their bytes (cached by to_bytes), so their parse is dropped: a finished transaction
    # lingers for up to 32 s, and its URIs, dicts and lists would linger (and be walked by the
    # garbage collector) with it. A later read parses again.
    ABSORBING: ClassVar[frozenset[TransactionState]] = frozenset()
    # Whether an ABSORBING state still needs the request itself. A non-INVITE transaction's
    # Completed state answers a retransmission from `_last_sent` (server) or absorbs a
    # response (client), so its request goes there, bytes and all (the caller's BYE for the
    # 32 s its transaction lingers); `request` then raises. INVITE transactions keep it: the
    # TU builds from it (an ACK of a non-2xx, a CANCEL, a late fork's dialog).
    KEEPS_REQUEST: ClassVar[bool] = True

    # The running timers, at most two (`MAX_TIMERS`), in the order they were started: a
    # timer and its deadline per pair of slots (`_timer0` None: none runs; `_timer1` is set
    # only with `_timer0`). Not a dict: every transaction lingers up to 32 s after its call,
    # and a dict of one or two deadlines was about 420 bytes and an object for the garbage
    # collector to walk, where two slots and two floats are 32 bytes compiled (floats in a
    # compiled class are stored unboxed). Issue 15: memory per held call.
    __slots__ = (
        "_ack",
        "_at0",
        "_at1",
        "_config",
        "_durations",
        "_interval",
        "_last_sent",
        "_request",
        "_timer0",
        "_timer1",
        "addr",
        "key",
        "reliable",
        "state",
    )

    def __init__(
        self,
        request: Request,
        addr: Address,
        now: float,
        *,
        key: TransactionKey,
        config: TimerConfig,
        reliable: bool,
    ) -> None:
        self._request: Request | None = request
        self.addr = addr
        self.key = key
        self.reliable = reliable
        self._config = config
        self._durations = config.durations(reliable=reliable)
        self._timer0: Timer | None = None
        self._at0 = 0.0
        self._timer1: Timer | None = None
        self._at1 = 0.0
        self._interval = 0.0  # current interval of RETRANSMIT_TIMER
        # What a retransmission resends: the request (client) or the last response (server).
        self._last_sent: Request | Response | None = None
        self._ack: Request | None = None  # client INVITE: the ACK of a non-2xx final
        self.state = self.INITIAL_STATE
        self._enter(self.INITIAL_STATE, now)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.state.value} {self.key}>"

    @property
    def request(self) -> Request:
        """The request this transaction is for; gone once it only absorbs (`KEEPS_REQUEST`)."""
        request = self._request
        if request is None:
            raise LocalProtocolError(
                f"{type(self).__name__} in state {self.state.value} let its request go"
            )
        return request

    @property
    def timers(self) -> Mapping[Timer, float]:
        """The running timers and their deadlines, in the order they were started (a
        read-only snapshot)."""
        running: dict[Timer, float] = {}
        if self._timer0 is not None:
            running[self._timer0] = self._at0
            if self._timer1 is not None:
                running[self._timer1] = self._at1
        return MappingProxyType(running)

    def next_timer(self) -> float | None:
        """The earliest deadline of this transaction's running timers."""
        if self._timer0 is None:
            return None
        if self._timer1 is not None and self._at1 < self._at0:
            return self._at1
        return self._at0

    def _start_timer(self, timer: Timer, deadline: float) -> None:
        """Run `timer` until `deadline`: a running one keeps its place, a new one goes last."""
        first = self._timer0
        if first is None or first is timer:
            self._timer0 = timer
            self._at0 = deadline
        elif self._timer1 is None or self._timer1 is timer:
            self._timer1 = timer
            self._at1 = deadline
        else:
            raise LocalProtocolError(f"more than {MAX_TIMERS} timers for a {type(self).__name__}")

    def _stop_timer(self, timer: Timer) -> None:
        if self._timer0 is timer:
            self._timer0 = self._timer1
            self._at0 = self._at1
            self._timer1 = None
        elif self._timer1 is timer:
            self._timer1 = None

    def _only_timer(self, timer: Timer, deadline: float) -> None:
        """Stop every timer, then run `timer` until `deadline`."""
        self._timer0 = None
        self._timer1 = None
        self._start_timer(timer, deadline)

    def on_timer(self, now: float) -> list[TransactionEvent]:
        """Fire every timer due at `now`."""
        out: list[TransactionEvent] = []
        self._fire_due(now, out)
        return out

    def transport_error(self, now: float) -> list[TransactionEvent]:
        """The transport failed to send one of this transaction's messages."""
        return self._run(TransactionInput.TRANSPORT_ERROR, None, now)

    def _run(
        self, what: TransactionInput, message: Request | Response | None, now: float
    ) -> list[TransactionEvent]:
        out: list[TransactionEvent] = []
        self._step(what, message, now, out)
        self._fire_due(now, out)  # reliable transports start D, I, J and K at zero
        return out

    def _step(
        self,
        what: TransactionInput | Timer,
        message: Request | Response | None,
        now: float,
        out: list[TransactionEvent],
    ) -> None:
        transition = self.TABLE.get((self.state, what))
        if transition is None:
            raise self._refusal(what)
        action, next_state = transition
        action(self, message, now, out)
        if next_state is not self.state:
            self._enter(next_state, now)
            if next_state is TransactionState.TERMINATED:
                out.append(Terminated(self))

    def _refusal(self, what: TransactionInput | Timer) -> Exception:
        name = f"{type(self).__name__} in state {self.state.value}"
        if what in _PEER_INPUTS and self.state is not TransactionState.TERMINATED:
            return RemoteProtocolError(f"{what.value} is not expected by a {name}")
        return LocalProtocolError(f"{what.value} is not allowed for a {name}")

    def _enter(self, state: TransactionState, now: float) -> None:
        self.state = state
        wanted = self.TIMERS[state]
        second = self._timer1
        if second is not None and second not in wanted:
            self._timer1 = None
        first = self._timer0
        if first is not None and first not in wanted:
            self._stop_timer(first)
        for timer in wanted:
            if timer is self._timer0 or timer is self._timer1:
                continue  # already running: it keeps its deadline
            duration = self._durations.get(timer)
            if duration is not None:
                self._start_timer(timer, now + duration)
                if timer is self.RETRANSMIT_TIMER:
                    self._interval = duration
        if state in self.ABSORBING:
            request = self._request
            if not self.KEEPS_REQUEST:
                self._request = None
                if self._last_sent is request:  # a client's: never resent from here on
                    self._last_sent = None
            elif request is not None:
                request.forget_parsed()
            last = self._last_sent
            if last is not None:
                # A final response goes on the wire right after this step: serialised now
                # (to_bytes keeps the bytes, so sending it costs nothing more), its parse can
                # go whole instead of staying with its lines for the 32 s it lingers.
                last.to_bytes()
                last.forget_parsed()

    def _fire_due(self, now: float, out: list[TransactionEvent]) -> None:
        """Fire the timers due at `now`, earliest first (of two due at once, the one started
        first); a timer's step may start others, due at once too on reliable transports."""
        while self._timer0 is not None:
            timer = self._timer0
            deadline = self._at0
            second = self._timer1
            if second is not None and self._at1 < deadline:
                timer = second
                deadline = self._at1
            if deadline > now:
                return
            self._stop_timer(timer)
            self._step(timer, None, now, out)

    def _rearm_retransmission(self, interval: float, now: float) -> None:
        timer = self.RETRANSMIT_TIMER
        if timer is None:
            raise LocalProtocolError(f"{type(self).__name__} has no retransmission timer")
        self._interval = interval
        self._start_timer(timer, now + interval)


class ClientTransaction(Transaction):
    """A transaction that sent `request` to `addr` and receives its responses."""

    __slots__ = ()

    def __init__(
        self,
        request: Request,
        addr: Address,
        now: float,
        *,
        key: TransactionKey,
        config: TimerConfig,
        reliable: bool,
    ) -> None:
        super().__init__(request, addr, now, key=key, config=config, reliable=reliable)
        self._last_sent = request

    def receive(self, response: Response, now: float) -> list[TransactionEvent]:
        """A response matched to this transaction."""
        what = _RECEIVED.get(response.status // 100)
        if what is None:
            raise RemoteProtocolError(f"status {response.status} is out of range")
        return self._run(what, response, now)


class ServerTransaction(Transaction):
    """A transaction that received `request` from `addr` and sends the TU's responses."""

    __slots__ = ()

    def receive(self, request: Request, now: float) -> list[TransactionEvent]:
        """A retransmission of the request, or the ACK of a non-2xx final to an INVITE."""
        what = (
            TransactionInput.RECV_ACK if request.method == "ACK" else TransactionInput.RECV_REQUEST
        )
        return self._run(what, request, now)

    def send(self, response: Response, now: float) -> list[TransactionEvent]:
        """A response from the TU."""
        what = _SENT.get(response.status // 100)
        if what is None:
            raise LocalProtocolError(f"status {response.status} is out of range")
        return self._run(what, response, now)

    @property
    def last_response(self) -> Response | None:
        last = self._last_sent
        return last if isinstance(last, Response) else None


# --- actions ------------------------------------------------------------------------------


def _nothing(
    txn: Transaction, message: Request | Response | None, now: float, out: list[TransactionEvent]
) -> None:
    """Absorb the input: a retransmission already answered, or a timer that only ends a wait."""


def _deliver(
    txn: Transaction, message: Request | Response | None, now: float, out: list[TransactionEvent]
) -> None:
    if message is None:
        raise LocalProtocolError("nothing to deliver")
    out.append(DeliverToTU(message, txn.addr, txn))


def _deliver_and_ack(
    txn: Transaction, message: Request | Response | None, now: float, out: list[TransactionEvent]
) -> None:
    """Client INVITE, non-2xx final: the transaction itself acknowledges it (17.1.1.3)."""
    if not isinstance(message, Response):
        raise LocalProtocolError("only a response is acknowledged")
    to = message.headers.get("To")
    if to is None:
        raise RemoteProtocolError("final response without To")
    txn._ack = _derived_request(txn.request, "ACK", to=to)
    out.append(SendMessage(txn._ack, txn.addr, txn))
    out.append(DeliverToTU(message, txn.addr, txn))


def _resend_ack(
    txn: Transaction, message: Request | Response | None, now: float, out: list[TransactionEvent]
) -> None:
    if txn._ack is None:
        raise LocalProtocolError("no ACK was sent")
    out.append(SendMessage(txn._ack, txn.addr, txn))


def _send_response(
    txn: Transaction, message: Request | Response | None, now: float, out: list[TransactionEvent]
) -> None:
    if not isinstance(message, Response):
        raise LocalProtocolError("a server transaction sends responses")
    txn._last_sent = message
    out.append(SendMessage(message, txn.addr, txn))


def _resend_last(
    txn: Transaction, message: Request | Response | None, now: float, out: list[TransactionEvent]
) -> None:
    """Answer a request retransmission with the last response sent, if any was."""
    if txn._last_sent is not None:
        out.append(SendMessage(txn._last_sent, txn.addr, txn))


def _retransmit_doubling(
    txn: Transaction, message: Request | Response | None, now: float, out: list[TransactionEvent]
) -> None:
    """Timer A: the INVITE's interval doubles without a cap; Timer B ends the attempts."""
    _resend_last(txn, message, now, out)
    txn._rearm_retransmission(2 * txn._interval, now)


def _retransmit_capped(
    txn: Transaction, message: Request | Response | None, now: float, out: list[TransactionEvent]
) -> None:
    """Timers E (Trying) and G: the interval doubles up to T2."""
    _resend_last(txn, message, now, out)
    txn._rearm_retransmission(min(2 * txn._interval, txn._config.t2), now)


def _retransmit_at_t2(
    txn: Transaction, message: Request | Response | None, now: float, out: list[TransactionEvent]
) -> None:
    """Timer E in Proceeding: a provisional came, so retransmit every T2 (17.1.2.2)."""
    _resend_last(txn, message, now, out)
    txn._rearm_retransmission(txn._config.t2, now)


def _time_out(
    txn: Transaction, message: Request | Response | None, now: float, out: list[TransactionEvent]
) -> None:
    out.append(Timeout(txn))


def _report_transport_error(
    txn: Transaction, message: Request | Response | None, now: float, out: list[TransactionEvent]
) -> None:
    out.append(TransportError(txn))


def _derived_request(original: Request, method: str, *, to: str) -> Request:
    """A request sharing our `original`'s Request-URI, top Via, From, Call-ID, CSeq number
    and Route set, as the ACK of a non-2xx final (17.1.1.3) and a CANCEL (9.1) must."""
    headers = original.headers
    from_ = headers.get("From")
    vias = headers.get_all("Via")
    if from_ is None or not vias:
        raise LocalProtocolError("our request lacks From or Via")
    return make_request(
        method,
        original.uri,
        from_=from_,
        to=to,
        call_id=original.call_id,
        cseq=original.cseq[0],
        via=vias[0],
        headers=[("Route", route) for route in headers.get_all("Route")],
    )


def make_cancel(invite: Request) -> Request:
    """The CANCEL of `invite` (RFC 3261 9.1); send it once a provisional response came."""
    to = invite.headers.get("To")
    if invite.method != "INVITE" or to is None:
        raise LocalProtocolError("only an INVITE with a To header is cancelled")
    return _derived_request(invite, "CANCEL", to=to)


# --- tables -------------------------------------------------------------------------------

_ERROR_ENDS_IT = (_report_transport_error, _S.TERMINATED)


class ClientInviteTransaction(ClientTransaction):
    """RFC 3261 17.1.1 with RFC 6026 figure 5: a 2xx leads to Accepted, not Terminated."""

    __slots__ = ()
    INITIAL_STATE = _S.CALLING
    RETRANSMIT_TIMER = Timer.A
    ABSORBING = frozenset({_S.COMPLETED})
    TIMERS = {
        _S.CALLING: (Timer.A, Timer.B),
        _S.PROCEEDING: (),
        _S.COMPLETED: (Timer.D,),
        _S.ACCEPTED: (Timer.M,),
        _S.TERMINATED: (),
    }
    TABLE = {
        (_S.CALLING, Timer.A): (_retransmit_doubling, _S.CALLING),
        (_S.CALLING, Timer.B): (_time_out, _S.TERMINATED),
        (_S.CALLING, _I.RECV_1XX): (_deliver, _S.PROCEEDING),
        (_S.CALLING, _I.RECV_2XX): (_deliver, _S.ACCEPTED),
        (_S.CALLING, _I.RECV_FINAL): (_deliver_and_ack, _S.COMPLETED),
        (_S.CALLING, _I.TRANSPORT_ERROR): _ERROR_ENDS_IT,
        (_S.PROCEEDING, _I.RECV_1XX): (_deliver, _S.PROCEEDING),
        (_S.PROCEEDING, _I.RECV_2XX): (_deliver, _S.ACCEPTED),
        (_S.PROCEEDING, _I.RECV_FINAL): (_deliver_and_ack, _S.COMPLETED),
        (_S.PROCEEDING, _I.TRANSPORT_ERROR): _ERROR_ENDS_IT,
        (_S.COMPLETED, _I.RECV_1XX): (_nothing, _S.COMPLETED),  # reordered, stale
        (_S.COMPLETED, _I.RECV_FINAL): (_resend_ack, _S.COMPLETED),
        (_S.COMPLETED, Timer.D): (_nothing, _S.TERMINATED),
        (_S.COMPLETED, _I.TRANSPORT_ERROR): _ERROR_ENDS_IT,
        (_S.ACCEPTED, _I.RECV_1XX): (_nothing, _S.ACCEPTED),  # reordered, stale
        (_S.ACCEPTED, _I.RECV_2XX): (_deliver, _S.ACCEPTED),  # retransmission or other fork
        (_S.ACCEPTED, Timer.M): (_nothing, _S.TERMINATED),
        (_S.ACCEPTED, _I.TRANSPORT_ERROR): _ERROR_ENDS_IT,
    }


class ClientNonInviteTransaction(ClientTransaction):
    """RFC 3261 17.1.2."""

    __slots__ = ()
    INITIAL_STATE = _S.TRYING
    RETRANSMIT_TIMER = Timer.E
    ABSORBING = frozenset({_S.COMPLETED})
    KEEPS_REQUEST = False
    TIMERS = {
        _S.TRYING: (Timer.E, Timer.F),
        _S.PROCEEDING: (Timer.E, Timer.F),  # still running from Trying, not restarted
        _S.COMPLETED: (Timer.K,),
        _S.TERMINATED: (),
    }
    TABLE = {
        (_S.TRYING, Timer.E): (_retransmit_capped, _S.TRYING),
        (_S.TRYING, Timer.F): (_time_out, _S.TERMINATED),
        (_S.TRYING, _I.RECV_1XX): (_deliver, _S.PROCEEDING),
        (_S.TRYING, _I.RECV_2XX): (_deliver, _S.COMPLETED),
        (_S.TRYING, _I.RECV_FINAL): (_deliver, _S.COMPLETED),
        (_S.TRYING, _I.TRANSPORT_ERROR): _ERROR_ENDS_IT,
        (_S.PROCEEDING, Timer.E): (_retransmit_at_t2, _S.PROCEEDING),
        (_S.PROCEEDING, Timer.F): (_time_out, _S.TERMINATED),
        (_S.PROCEEDING, _I.RECV_1XX): (_deliver, _S.PROCEEDING),
        (_S.PROCEEDING, _I.RECV_2XX): (_deliver, _S.COMPLETED),
        (_S.PROCEEDING, _I.RECV_FINAL): (_deliver, _S.COMPLETED),
        (_S.PROCEEDING, _I.TRANSPORT_ERROR): _ERROR_ENDS_IT,
        (_S.COMPLETED, _I.RECV_1XX): (_nothing, _S.COMPLETED),
        (_S.COMPLETED, _I.RECV_2XX): (_nothing, _S.COMPLETED),
        (_S.COMPLETED, _I.RECV_FINAL): (_nothing, _S.COMPLETED),
        (_S.COMPLETED, Timer.K): (_nothing, _S.TERMINATED),
        (_S.COMPLETED, _I.TRANSPORT_ERROR): _ERROR_ENDS_IT,
    }


class ServerInviteTransaction(ServerTransaction):
    """RFC 3261 17.2.1 with RFC 6026 figure 7: a 2xx leads to Accepted, whose ACKs (only an
    RFC 2543 peer's 2xx ACK can match) go to the TU."""

    __slots__ = ()
    INITIAL_STATE = _S.PROCEEDING
    RETRANSMIT_TIMER = Timer.G
    ABSORBING = frozenset({_S.CONFIRMED})
    TIMERS = {
        _S.PROCEEDING: (),
        _S.COMPLETED: (Timer.G, Timer.H),
        _S.CONFIRMED: (Timer.I,),
        _S.ACCEPTED: (Timer.L,),
        _S.TERMINATED: (),
    }
    TABLE = {
        (_S.PROCEEDING, _I.RECV_REQUEST): (_resend_last, _S.PROCEEDING),
        (_S.PROCEEDING, _I.SEND_1XX): (_send_response, _S.PROCEEDING),
        (_S.PROCEEDING, _I.SEND_2XX): (_send_response, _S.ACCEPTED),
        (_S.PROCEEDING, _I.SEND_FINAL): (_send_response, _S.COMPLETED),
        (_S.PROCEEDING, _I.TRANSPORT_ERROR): _ERROR_ENDS_IT,
        (_S.COMPLETED, _I.RECV_REQUEST): (_resend_last, _S.COMPLETED),
        (_S.COMPLETED, _I.RECV_ACK): (_nothing, _S.CONFIRMED),
        (_S.COMPLETED, Timer.G): (_retransmit_capped, _S.COMPLETED),
        (_S.COMPLETED, Timer.H): (_time_out, _S.TERMINATED),
        (_S.COMPLETED, _I.TRANSPORT_ERROR): _ERROR_ENDS_IT,
        (_S.CONFIRMED, _I.RECV_REQUEST): (_nothing, _S.CONFIRMED),
        (_S.CONFIRMED, _I.RECV_ACK): (_nothing, _S.CONFIRMED),
        (_S.CONFIRMED, Timer.I): (_nothing, _S.TERMINATED),
        (_S.CONFIRMED, _I.TRANSPORT_ERROR): _ERROR_ENDS_IT,
        (_S.ACCEPTED, _I.RECV_REQUEST): (_nothing, _S.ACCEPTED),  # the TU resends the 2xx
        (_S.ACCEPTED, _I.RECV_ACK): (_deliver, _S.ACCEPTED),
        (_S.ACCEPTED, _I.SEND_2XX): (_send_response, _S.ACCEPTED),
        (_S.ACCEPTED, Timer.L): (_nothing, _S.TERMINATED),
        (_S.ACCEPTED, _I.TRANSPORT_ERROR): _ERROR_ENDS_IT,
    }

    def answer_done(self) -> None:
        """The TU resends its 2xx no more (the ACK came, or the call is over). In Accepted the
        transaction itself never sends it (a retransmitted INVITE is absorbed: RFC 6026 7.1),
        so the response goes now instead of staying with the transaction, which the B2BUA's
        call refers to until it ends: about 0.6 KiB of every answered call (issue 15). A 2xx
        the TU sends again after all is kept again as usual."""
        if self.state is TransactionState.ACCEPTED:
            self._last_sent = None


class ServerNonInviteTransaction(ServerTransaction):
    """RFC 3261 17.2.2."""

    __slots__ = ()
    INITIAL_STATE = _S.TRYING
    RETRANSMIT_TIMER = None
    ABSORBING = frozenset({_S.COMPLETED})
    KEEPS_REQUEST = False
    TIMERS = {
        _S.TRYING: (),
        _S.PROCEEDING: (),
        _S.COMPLETED: (Timer.J,),
        _S.TERMINATED: (),
    }
    TABLE = {
        (_S.TRYING, _I.RECV_REQUEST): (_nothing, _S.TRYING),  # no response to resend yet
        (_S.TRYING, _I.SEND_1XX): (_send_response, _S.PROCEEDING),
        (_S.TRYING, _I.SEND_2XX): (_send_response, _S.COMPLETED),
        (_S.TRYING, _I.SEND_FINAL): (_send_response, _S.COMPLETED),
        (_S.TRYING, _I.TRANSPORT_ERROR): _ERROR_ENDS_IT,
        (_S.PROCEEDING, _I.RECV_REQUEST): (_resend_last, _S.PROCEEDING),
        (_S.PROCEEDING, _I.SEND_1XX): (_send_response, _S.PROCEEDING),
        (_S.PROCEEDING, _I.SEND_2XX): (_send_response, _S.COMPLETED),
        (_S.PROCEEDING, _I.SEND_FINAL): (_send_response, _S.COMPLETED),
        (_S.PROCEEDING, _I.TRANSPORT_ERROR): _ERROR_ENDS_IT,
        (_S.COMPLETED, _I.RECV_REQUEST): (_resend_last, _S.COMPLETED),
        (_S.COMPLETED, Timer.J): (_nothing, _S.TERMINATED),
        (_S.COMPLETED, _I.TRANSPORT_ERROR): _ERROR_ENDS_IT,
    }


# --- the layer ----------------------------------------------------------------------------


def _is_rfc3261_branch(branch: str | None) -> bool:
    return branch is not None and branch.startswith(BRANCH_MAGIC_COOKIE)


def _server_key(request: Request, method: str, *, untagged: bool = False) -> TransactionKey:
    """RFC 3261 17.2.3: top Via branch, sent-by and method. For a branch without the magic
    cookie (an RFC 2543 peer): Request-URI, tags, Call-ID, CSeq and top Via instead, the To
    tag taken as absent when `untagged`."""
    via = request.top_via
    branch = via.branch
    if _is_rfc3261_branch(branch):
        return (branch, via.host.lower(), via.port, method)
    return (
        request.uri,
        request.from_tag,
        None if untagged else request.to_tag,
        request.call_id,
        request.cseq[0],
        method,
        via.transport,
        via.host.lower(),
        via.port,
        branch,
    )


# RFC 3261 18.1.1: a request larger than this, path MTU unknown, must not go over UDP.
UDP_REQUEST_LIMIT = 1300


class TransactionLayer:
    """Every transaction of one SIP element, matched by key, with one aggregate timer.

    `send_trying`: answer each new INVITE with 100 Trying at once (17.2.1 allows leaving it
    to the TU when the TU answers within 200 ms; a B2BUA whose next hop may take longer
    wants it immediately).
    """

    def __init__(
        self,
        config: TimerConfig | None = None,
        *,
        send_trying: bool = True,
        udp_request_limit: int = UDP_REQUEST_LIMIT,
    ) -> None:
        self.config = TimerConfig() if config is None else config
        self.send_trying = send_trying
        self.udp_request_limit = udp_request_limit
        # Sharded (edge.sip.tables): they hold every lingering transaction, 32 R at R calls/s.
        self._servers: ShardedDict[TransactionKey, ServerTransaction] = ShardedDict()
        self._clients: ShardedDict[TransactionKey, ClientTransaction] = ShardedDict()
        self._timers: TimerQueue[Transaction] = TimerQueue()

    def __len__(self) -> int:
        return len(self._servers) + len(self._clients)

    def release_memory(self) -> None:
        """Rebuild the tables, which keep the size of their busiest moment (`TimerQueue.shrink`):
        O(transactions), for a quiet moment."""
        self._servers.compact()
        self._clients.compact()
        self._timers.shrink()

    def receive(
        self, message: Request | Response, addr: Address, now: float
    ) -> list[TransactionEvent]:
        """A message from `addr`. Raises RemoteProtocolError for one that is malformed or
        unexpected in its transaction's state (answer a request with the status hint; drop a
        response). A response matching no transaction is dropped: RFC 6026 keeps a client INVITE
        transaction alive for the 2xx retransmissions, so none is lost."""
        if isinstance(message, Response):
            client = self._clients.get((message.top_via.branch, message.cseq[1]))
            if client is None:
                return []
            return self._settled(client, client.receive(message, now))
        method = message.method
        if method == "ACK":
            return self._receive_ack(message, addr, now)
        server = self._servers.get(_server_key(message, method))
        if server is not None:
            return self._settled(server, server.receive(message, now))
        return self._create_server(message, addr, now)

    def _receive_ack(self, ack: Request, addr: Address, now: float) -> list[TransactionEvent]:
        server = self._servers.get(_server_key(ack, "INVITE"))
        if server is None and not _is_rfc3261_branch(ack.top_via.branch):
            # An RFC 2543 ACK carries the tag of our response while the INVITE may have had none.
            server = self._servers.get(_server_key(ack, "INVITE", untagged=True))
            response = None if server is None else server.last_response
            if response is None or response.to_tag != ack.to_tag:
                server = None
        if server is None:
            return [DeliverToTU(ack, addr, None)]
        return self._settled(server, server.receive(ack, now))

    def _create_server(self, request: Request, addr: Address, now: float) -> list[TransactionEvent]:
        method = request.method
        key = _server_key(request, method)
        reliable = request.top_via.transport != "UDP"
        kind = ServerInviteTransaction if method == "INVITE" else ServerNonInviteTransaction
        server = kind(request, addr, now, key=key, config=self.config, reliable=reliable)
        self._servers[key] = server
        events: list[TransactionEvent] = []
        if method == "INVITE" and self.send_trying:
            events += server.send(make_response(request, 100), now)
        cancelled = None
        if method == "CANCEL":
            invite = self._servers.get(_server_key(request, "INVITE"))
            if isinstance(invite, ServerInviteTransaction):
                cancelled = invite
        events.append(DeliverToTU(request, addr, server, cancelled))
        return self._settled(server, events)

    def send_request(
        self,
        request: Request,
        addr: Address,
        now: float,
        *,
        via: tuple[str, str] | None = None,
    ) -> tuple[ClientTransaction, list[TransactionEvent]]:
        """Start a client transaction for `request` (its top Via carries our fresh branch).
        An ACK has no transaction: send it with a `SendMessage` of your own. A request for
        UDP larger than `udp_request_limit` is not sent: its transaction times out on the
        next `on_timer` (RFC 3261 18.1.1 would have it go over TCP; the target is UDP).

        `via`: (branch, transport in upper case) of the top Via, from a TU that wrote that Via
        itself; it spares parsing the Via back (about 18,000 instructions a request,
        compiled)."""
        method = request.method
        if method == "ACK":
            raise LocalProtocolError("an ACK is sent without a client transaction")
        branch: str | None
        if via is None:
            try:
                top_via = request.top_via
            except RemoteProtocolError as error:
                raise LocalProtocolError(f"our request has no usable Via: {error.reason}") from None
            branch, transport = top_via.branch, top_via.transport
        else:
            branch, transport = via
        if branch is None or not _is_rfc3261_branch(branch):
            raise LocalProtocolError("our requests need an RFC 3261 branch (new_branch())")
        key = (branch, method)
        if key in self._clients:
            raise LocalProtocolError(f"branch {branch} is already in use for {method}")
        kind = ClientInviteTransaction if method == "INVITE" else ClientNonInviteTransaction
        reliable = transport != "UDP"
        client = kind(request, addr, now, key=key, config=self.config, reliable=reliable)
        self._clients[key] = client
        if not reliable and len(request.to_bytes()) > self.udp_request_limit:
            # RFC 3261 18.1.1: too large for UDP. It is not sent: the transaction times out
            # at once (Timer B or F), as after a transport failure, and the TU fails over.
            client._only_timer(Timer.B if method == "INVITE" else Timer.F, now)
            return client, self._settled(client, [])
        return client, self._settled(client, [SendMessage(request, addr, client)])

    def send_response(
        self, transaction: Transaction, response: Response, now: float
    ) -> list[TransactionEvent]:
        """Send the TU's `response` through the server `transaction` it answers."""
        if not isinstance(transaction, ServerTransaction):
            raise LocalProtocolError("responses are sent through server transactions")
        return self._settled(transaction, transaction.send(response, now))

    def transport_error(self, transaction: Transaction, now: float) -> list[TransactionEvent]:
        """A `SendMessage` of `transaction` failed. Nothing happens if it already ended."""
        if transaction.state is TransactionState.TERMINATED:
            return []
        return self._settled(transaction, transaction.transport_error(now))

    def next_timer(self) -> float | None:
        """The earliest deadline of all transactions: call `on_timer` then."""
        return self._timers.next_deadline()

    def on_timer(self, now: float) -> list[TransactionEvent]:
        events: list[TransactionEvent] = []
        for transaction in self._timers.pop_due(now):
            events += self._settled(transaction, transaction.on_timer(now))
        return events

    def _settled(
        self, transaction: Transaction, events: list[TransactionEvent]
    ) -> list[TransactionEvent]:
        """Reschedule `transaction` after it changed, or forget it once it terminated."""
        if transaction.state is TransactionState.TERMINATED:
            key = transaction.key
            if self._clients.get(key) is transaction:
                self._clients.pop(key)
            elif self._servers.get(key) is transaction:
                self._servers.pop(key)
        self._timers.update(transaction, transaction.next_timer())
        return events
