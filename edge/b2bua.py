"""The B2BUA: every call as two legs, decided from the config snapshot, ending in one CDR.

This is the edge's transaction user. It sits on one `TransactionLayer` (edge/sip), identifies
who is calling (trunk ACL, digest credentials, or a carrier gateway), asks `edge.policy` whether
the call may proceed, picks routes with `edge.routing`, and relays between an A leg (the caller)
and a B leg (the callee) that share nothing on the wire: each leg has its own Call-ID, tags, Via
and Contact, and only a short list of end-to-end headers crosses over. SDP passes through.

Sans-IO like the SIP core: bytes and (monotonic `now`, wall-clock `wall`) in; `Transmit`,
`CdrReady` and `CallEvent` out. It never touches sockets, the clock, asyncio or Django; the
runtime (edge/runtime) carries its outputs out and calls `on_timer` at `next_timer()`.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TypeAlias

from edge import cdr, numbering, routing, salvage
from edge.cdr import CallDetailRecord, RouteAttempt, iso_utc
from edge.config import Credential, EdgeConfig, TrunkPolicy
from edge.limits import Limits
from edge.policy import (
    Admit,
    OutboundCall,
    Reject,
    Usage,
    admit_inbound,
    admit_outbound,
    admit_register,
    reject,
)
from edge.registrar import MIN_EXPIRES, Registrar, granted_expires
from edge.security import AbuseGuard, SecurityEvent, Verdict
from edge.sip.dialog import AnswerRetransmitter, Dialog, DialogState
from edge.sip.digest import DigestOutcome, DigestServer, parse_authorization
from edge.sip.errors import RemoteProtocolError
from edge.sip.message import (
    Request,
    Response,
    crossing_headers,
    make_request,
    make_response,
    new_branch,
    new_call_id,
    new_tag,
    to_tag_or_none,
    unsupported_extensions,
    validate_for_proxy,
)
from edge.sip.parser import FramingError, parse_message
from edge.sip.sdp import SessionDescription
from edge.sip.timers import TimerConfig, TimerQueue
from edge.sip.transaction import (
    ClientTransaction,
    DeliverToTU,
    SendMessage,
    ServerInviteTransaction,
    ServerTransaction,
    Terminated,
    Timeout,
    TransactionEvent,
    TransactionLayer,
    TransportError,
    make_cancel,
)
from edge.sip.uri import bracket_host, parse_name_addr

__all__ = [
    "Address",
    "B2bua",
    "B2buaSettings",
    "CallEvent",
    "CdrReady",
    "Output",
    "Stats",
    "Transmit",
]

Address: TypeAlias = tuple[str, int, str]  # (host, port, transport: "udp" | "tcp" | "tls")


@dataclass(frozen=True, slots=True)
class Transmit:
    """Put `data` on the wire to `addr`."""

    data: bytes
    addr: Address


@dataclass(frozen=True, slots=True)
class CdrReady:
    """A call attempt ended: journal its record."""

    record: CallDetailRecord


@dataclass(frozen=True, slots=True)
class CallEvent:
    """A change of a call's state, for the live board."""

    kind: str  # "started" | "ringing" | "answered" | "ended"
    call_id: str
    trunk_id: int | None
    customer_id: int | None
    direction: str
    caller: str | None
    callee: str | None
    at: float
    reason: str | None = None
    final_code: int | None = None

    def as_dict(self) -> dict[str, object]:
        """The fields, for JSON. Not orjson's own dataclass support: it reads the instance's
        memory layout directly and crashes on a class compiled by mypyc (edge/native.py)."""
        return {
            "kind": self.kind,
            "call_id": self.call_id,
            "trunk_id": self.trunk_id,
            "customer_id": self.customer_id,
            "direction": self.direction,
            "caller": self.caller,
            "callee": self.callee,
            "at": self.at,
            "reason": self.reason,
            "final_code": self.final_code,
        }


Output: TypeAlias = Transmit | CdrReady | CallEvent | SecurityEvent

ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, UPDATE, INFO, REGISTER"
# Headers that cross from one leg to the other; everything else (Via, Route, Record-Route,
# Contact, addresses in vendor headers) stays on its own side.
END_TO_END_HEADERS = ("Allow", "Supported", "Accept", "Privacy", "Reason", "Info-Package")
# Extensions we implement (Require / Proxy-Require of anything else is refused with 420).
SUPPORTED_EXTENSIONS: frozenset[str] = frozenset()
LOOP_DETECTED = Reject(482, "loop_detected", "Loop Detected")  # not a policy decision
_NO_USAGE = Usage(active_calls=0, cps_available=True)  # for a refusal decided before limits


@dataclass(slots=True)
class B2buaSettings:
    timers: TimerConfig = field(default_factory=TimerConfig)
    # An INVITE answered 407 whose authenticated retry never comes ends (as one CDR) then.
    challenge_timeout: float = 32.0
    # Region assumed for a carrier's national-format called numbers.
    inbound_default_region: str = "US"
    # Digest challenges offered, most preferred first (RFC 8760: SHA-256). Some deployed
    # clients read only the first challenge and know only MD5: for them, put MD5 first.
    challenge_algorithms: tuple[str, ...] = ("SHA-256", "MD5")


@dataclass(slots=True)
class Stats:
    """Plain counters the runtime's metrics collector reads; cheap to bump on the hot path."""

    attempts_total: int = 0
    answers_total: int = 0
    auth_failures_total: int = 0
    responses_total: dict[int, int] = field(default_factory=dict)
    refusals_total: dict[str, int] = field(default_factory=dict)
    malformed_total: int = 0
    dropped_total: int = 0  # requests not answered: scanners, banned or flooding sources
    active: dict[int, int] = field(default_factory=dict)  # calls in progress, by trunk id

    def active_by_trunk(self) -> dict[int, int]:
        return self.active


class _Auth(enum.Enum):
    """What a request's digest credentials amount to."""

    OK = "ok"
    MISSING = "missing"  # none, malformed, or not for our nonce: challenge
    STALE = "stale"  # right answer to an expired nonce: challenge with stale=true
    FAILED = "failed"  # wrong password or unknown user (indistinguishable to the caller)


class _Leg:
    """One side of a call: its dialog and where its messages go."""

    __slots__ = ("addr", "call_id", "dialog", "local_tag")

    def __init__(self, call_id: str, local_tag: str, addr: Address) -> None:
        self.call_id = call_id
        self.local_tag = local_tag
        self.addr = addr
        self.dialog: Dialog | None = None


class _Call:
    """A call attempt from INVITE to its CDR."""

    __slots__ = (
        "a",
        "a_invite",
        "a_retransmitter",
        "a_txn",
        "answer_at",
        "answered_by",
        "b",
        "b_ack",
        "b_cancel_sent",
        "b_cseq",
        "b_invite",
        "b_txn",
        "callee_e164",
        "caller_e164",
        "cancel_wanted",
        "codecs",
        "customer_id",
        "deadline",
        "direction",
        "ended",
        "id",
        "ringing_at",
        "routes",
        "setup_at",
        "source",
        "targets",
        "trunk",
    )

    def __init__(
        self,
        *,
        a_invite: Request,
        a_txn: ServerInviteTransaction,
        source: Address,
        direction: str,
        trunk: TrunkPolicy,
        caller_e164: str | None,
        callee_e164: str,
        wall: float,
    ) -> None:
        self.id = cdr.new_call_id()
        self.a_invite = a_invite
        self.a_txn = a_txn
        self.source = source
        self.direction = direction
        self.trunk = trunk
        self.customer_id = trunk.customer_id
        self.caller_e164 = caller_e164
        self.callee_e164 = callee_e164
        self.setup_at = wall
        self.ringing_at: float | None = None
        self.answer_at: float | None = None
        self.a = _Leg(a_invite.call_id, new_tag(), source)
        self.b: _Leg | None = None
        self.b_invite: Request | None = None
        self.b_txn: ClientTransaction | None = None
        self.b_ack: Request | None = None
        self.b_cseq = 0
        self.targets: list[routing.Target] = []
        self.routes: list[RouteAttempt] = []
        self.answered_by: str | None = None
        self.a_retransmitter: _Retransmitter | None = None
        # The caller cancelled: CANCEL the B leg once it has had a provisional (RFC 3261 9.1).
        self.cancel_wanted = False
        self.b_cancel_sent = False
        self.codecs: list[str] = []
        self.deadline: float | None = None  # monotonic time the call is cut (max duration)
        self.ended = False

    def next_timer(self) -> float | None:
        return None if self.ended else self.deadline


class _PendingChallenge:
    """An INVITE we answered 407: the same Call-ID coming back with credentials continues it."""

    __slots__ = ("deadline", "request", "source", "wall")

    def __init__(self, request: Request, source: Address, deadline: float, wall: float) -> None:
        self.request = request
        self.source = source
        self.deadline: float | None = deadline
        self.wall = wall

    def next_timer(self) -> float | None:
        return self.deadline


class _Relay:
    """An in-dialog request relayed to the other leg, awaiting the answer to send back."""

    __slots__ = ("call", "server_txn", "to_leg")

    def __init__(self, call: _Call, server_txn: ServerTransaction, to_leg: _Leg) -> None:
        self.call = call
        self.server_txn = server_txn
        self.to_leg = to_leg


class _Retransmitter:
    """The 2xx we sent on a leg, resent until that leg's ACK arrives."""

    __slots__ = ("call", "inner")

    def __init__(self, call: _Call, inner: AnswerRetransmitter) -> None:
        self.call = call
        self.inner = inner

    def next_timer(self) -> float | None:
        return self.inner.next_timer()


_Scheduled: TypeAlias = _Call | _PendingChallenge | _Retransmitter


class B2bua:
    """The edge's call engine. One instance per edge process; not thread-safe by design."""

    def __init__(
        self,
        *,
        node: str,
        config: EdgeConfig,
        limits: Limits,
        local: dict[str, Address],
        digest_secret: bytes,
        rng: random.Random | None = None,
        registrar: Registrar | None = None,
        settings: B2buaSettings | None = None,
        guard: AbuseGuard | None = None,
    ) -> None:
        self.node = node
        self.config = config
        self.limits = limits
        self.local = local
        self.settings = settings or B2buaSettings()
        self.rng = rng or random.Random()
        self.registrar = registrar or Registrar()
        self.guard = guard or AbuseGuard()
        self._digest_secret = digest_secret
        self.digest = DigestServer(digest_secret, config.realm)
        # 100 Trying is ours to send, once a call is admitted: a refusal needs one datagram.
        self.layer = TransactionLayer(self.settings.timers, send_trying=False)
        self.stats = Stats()
        self.draining = False
        self._timers: TimerQueue[_Scheduled] = TimerQueue()
        self._calls: dict[str, _Call] = {}
        # Where requests of an established call arrive: the A leg by (Call-ID, our tag), the
        # B leg by its Call-ID, which we made and which is unique.
        self._by_a_dialog: dict[tuple[str, str], _Call] = {}
        self._by_b_call_id: dict[str, _Call] = {}
        self._by_a_txn: dict[ServerInviteTransaction, _Call] = {}
        self._relays: dict[ClientTransaction, _Relay] = {}
        self._b_invites: dict[ClientTransaction, _Call] = {}
        self._challenges: dict[str, _PendingChallenge] = {}
        self._admitting: dict[str, _Call] = {}  # waiting for the cluster counters' answer
        self._out: list[Output] = []

    # --- the runtime's interface ------------------------------------------------------------

    @property
    def active_calls(self) -> int:
        return len(self._calls)

    def apply_config(self, config: EdgeConfig) -> None:
        """Use `config` for new calls; calls in progress keep the trunk they started with."""
        if config.realm != self.config.realm:
            self.digest = DigestServer(self._digest_secret, config.realm)
        self.config = config

    def drain(self) -> None:
        """Refuse new calls (503, reason `draining`); calls in progress carry on."""
        self.draining = True

    def datagram_received(
        self, data: bytes, addr: Address, now: float, wall: float
    ) -> list[Output]:
        """One UDP datagram. Malformed input is answered 400 when it can be, never raised."""
        if not data.strip():
            return []  # CRLF keep-alive (RFC 5626)
        try:
            message = parse_message(data)
        except RemoteProtocolError as error:
            self.stats.malformed_total += 1
            return self._answer_unparsable(data, error, addr)
        return self.message_received(message, addr, now, wall)

    def message_received(
        self, message: Request | Response, addr: Address, now: float, wall: float
    ) -> list[Output]:
        """One message, parsed by the datagram path or framed on a stream."""
        out = self._out = []
        if (
            type(message) is Request
            and to_tag_or_none(message) is None
            and message.method != "ACK"
            and not self._screened(message, addr[0], now)
        ):
            return out
        try:
            validate_for_proxy(message)
            if isinstance(message, Request) and addr[2] == "udp":
                self._note_rport(message, addr)
            events = self.layer.receive(message, addr, now)
        except RemoteProtocolError as error:
            self.stats.malformed_total += 1
            if isinstance(message, Request) and message.method != "ACK":
                self._send_stateless(message, error.status_hint, error.reason, addr)
            return out
        self._handle_events(events, now, wall)
        return out

    def _screened(self, request: Request, ip: str, now: float) -> bool:
        """Whether to handle a new request (not in a dialog) at all: sources a trunk ACL or a
        carrier vouches for always are; others go through the abuse guard (edge.security)."""
        config = self.config
        if config.trunk_for_source(ip) is not None or config.is_carrier_source(ip):
            return True
        try:
            user_agent = request.headers.get("User-Agent")
        except RemoteProtocolError:
            user_agent = None
        verdict, event = self.guard.unauthenticated(ip, user_agent, now)
        if event is not None:
            self._out.append(event)
        if verdict is Verdict.DROP:
            self.stats.dropped_total += 1
            return False
        return True

    def stream_error(
        self, addr: Address, error: RemoteProtocolError, now: float, wall: float
    ) -> list[Output]:
        """A message on a stream could not be read: answered like a datagram (edge/salvage.py)
        when its header block came with the error; the runtime closes a stream it lost."""
        self.stats.malformed_total += 1
        if isinstance(error, FramingError):
            return self._answer_unparsable(error.head, error, addr)
        return []

    def next_timer(self) -> float | None:
        mine = self._timers.next_deadline()
        theirs = self.layer.next_timer()
        if mine is None:
            return theirs
        return mine if theirs is None else min(mine, theirs)

    def on_timer(self, now: float, wall: float) -> list[Output]:
        out = self._out = []
        self._handle_events(self.layer.on_timer(now), now, wall)
        for item in self._timers.pop_due(now):
            if isinstance(item, _Retransmitter):
                for send in item.inner.on_timer(now):
                    self._transmit(send.message, send.addr)
                if item.inner.timed_out and not item.call.ended:
                    self._hang_up(item.call, now, wall, reason="ack_timeout", side="edge")
                self._timers.update(item)
            elif isinstance(item, _PendingChallenge):
                self._challenge_expired(item)
            elif item.deadline is not None and now >= item.deadline:
                self._hang_up(item, now, wall, reason="max_duration", side="edge")
        return out

    def calls(self) -> list[dict[str, object]]:
        return [
            {
                "call_id": c.id,
                "trunk_id": c.trunk.id,
                "customer_id": c.customer_id,
                "direction": c.direction,
                "caller": c.caller_e164,
                "callee": c.callee_e164,
                "state": "answered" if c.answer_at else "ringing" if c.ringing_at else "setup",
                "setup_at": iso_utc(c.setup_at),
                "answer_at": iso_utc(c.answer_at),
            }
            for c in self._calls.values()
        ]

    def hangup(self, call_id: str, now: float, wall: float) -> list[Output] | None:
        """End a call on the operator's request; None if there is no such call."""
        call = self._calls.get(call_id)
        if call is None:
            return None
        out = self._out = []
        if call.answer_at is None:
            self._fail_a(call, 480, "Temporarily Unavailable", now)
            self._cancel_b(call, now)
            self._finish(call, wall, final_code=480, reason="operator_hangup", side="edge")
        else:
            self._hang_up(call, now, wall, reason="operator_hangup", side="edge")
        return out

    def close(self, now: float, wall: float) -> list[Output]:
        """At shutdown: end what is still open, so every attempt has its CDR."""
        out = self._out = []
        for call in list(self._calls.values()):
            if call.answer_at is None:
                self._fail_a(call, 503, "Service Unavailable", now)
                self._cancel_b(call, now)
                self._finish(call, wall, final_code=503, reason="shutdown", side="edge")
            else:
                self._hang_up(call, now, wall, reason="shutdown", side="edge")
        for pending in list(self._challenges.values()):
            self._challenge_expired(pending)
        return out

    # --- plumbing ---------------------------------------------------------------------------

    def _transmit(self, message: Request | Response, addr: Address) -> None:
        self._out.append(Transmit(message.to_bytes(), addr))

    def _handle_events(self, events: Iterable[TransactionEvent], now: float, wall: float) -> None:
        for event in events:
            if isinstance(event, SendMessage):
                self._transmit(event.message, event.addr)
            elif isinstance(event, DeliverToTU):
                try:
                    if isinstance(event.message, Request):
                        self._on_request(event, now, wall)
                    else:
                        self._on_response(event, event.message, now, wall)
                except RemoteProtocolError as error:
                    self._reject_event(event, error, now)
            elif isinstance(event, Timeout | TransportError):
                self._on_client_failure(event.transaction, now, wall)
            elif isinstance(event, Terminated):
                self._forget(event.transaction)

    def _send_events(self, events: Iterable[TransactionEvent]) -> None:
        """Events of our own sends: only messages to put on the wire and transactions ending."""
        for event in events:
            if isinstance(event, SendMessage):
                self._transmit(event.message, event.addr)
            elif isinstance(event, Terminated):
                self._forget(event.transaction)

    def _reject_event(self, event: DeliverToTU, error: RemoteProtocolError, now: float) -> None:
        """A request the TU found malformed (a bad header it had to read) gets 4xx."""
        request = event.message
        self.stats.malformed_total += 1
        txn = event.transaction
        if (
            isinstance(request, Request)
            and isinstance(txn, ServerTransaction)
            and txn.state.value in ("trying", "proceeding")
        ):
            self._respond(txn, request, error.status_hint, error.reason, now, to_tag=new_tag())

    def _forget(self, transaction: object) -> None:
        if isinstance(transaction, ClientTransaction):
            self._relays.pop(transaction, None)
            call = self._b_invites.pop(transaction, None)
            if call is not None and call.ended and call.b is not None and call.b_txn is transaction:
                # Nothing of this call's B leg can arrive any more.
                self._by_b_call_id.pop(call.b.call_id, None)
        elif isinstance(transaction, ServerInviteTransaction):
            self._by_a_txn.pop(transaction, None)

    def _respond(
        self,
        txn: ServerTransaction,
        request: Request,
        status: int,
        reason: str | None,
        now: float,
        *,
        to_tag: str | None = None,
        headers: Iterable[tuple[str, str]] | None = None,
        body: bytes = b"",
    ) -> None:
        response = make_response(request, status, reason, to_tag=to_tag, headers=headers, body=body)
        self._count_response(request, status)
        self._send_events(self.layer.send_response(txn, response, now))

    def _count_response(self, request: Request, status: int) -> None:
        if status >= 200:
            codes = self.stats.responses_total
            codes[status] = codes.get(status, 0) + 1

    def _send_stateless(self, request: Request, status: int, reason: str, addr: Address) -> None:
        self._count_response(request, status)
        self._transmit(make_response(request, status, reason, to_tag=new_tag()), addr)

    def _answer_unparsable(
        self, data: bytes, error: RemoteProtocolError, addr: Address
    ) -> list[Output]:
        """A request we could not parse whole still gets its 4xx/505 (edge/salvage.py)."""
        answer = salvage.answer_unparsable(data, error)
        if answer is None:
            return []
        codes = self.stats.responses_total
        codes[answer.status] = codes.get(answer.status, 0) + 1
        return [Transmit(answer.data, addr)]

    @staticmethod
    def _note_rport(request: Request, addr: Address) -> None:
        """RFC 3581/3261 18.2.1: record where the request really came from in its top Via, so
        responses go back through the same NAT binding."""
        via = request.top_via
        if via.host == addr[0] and "rport" not in via.params:
            return
        values = request.headers.get_all("Via")
        first = values[0]
        if via.host != addr[0] and "received" not in via.params:
            first += f";received={addr[0]}"
        if "rport" in via.params and via.params.get("rport") in (None, ""):
            first = first.replace(";rport", f";rport={addr[1]}", 1)
        if first != values[0]:
            # Rewritten value by value: the top Via may share its header line with others.
            request.headers.set("Via", first)
            for value in values[1:]:
                request.headers.add("Via", value)

    # --- requests ---------------------------------------------------------------------------

    def _on_request(self, event: DeliverToTU, now: float, wall: float) -> None:
        request = event.message
        assert isinstance(request, Request)
        method = request.method
        txn = event.transaction
        if method == "ACK":
            self._on_ack(request, now)
            return
        assert isinstance(txn, ServerTransaction)
        if method != "CANCEL" and self._refused_extensions(request, txn, now):
            return
        if method == "CANCEL":
            self._on_cancel(request, txn, event.cancelled, now, wall)
        elif request.to_tag is not None:
            self._on_in_dialog(request, txn, now, wall)
        elif method == "INVITE":
            assert isinstance(txn, ServerInviteTransaction)
            self._on_invite(request, txn, event.addr, now, wall)
        elif method == "OPTIONS":
            self._respond(
                txn, request, 200, None, now, to_tag=new_tag(), headers=[("Allow", ALLOW)]
            )
        elif method == "REGISTER":
            self._on_register(request, txn, event.addr, now, wall)
        elif method == "BYE":
            self._respond(txn, request, 481, None, now, to_tag=new_tag())
        else:
            self._respond(
                txn, request, 405, None, now, to_tag=new_tag(), headers=[("Allow", ALLOW)]
            )

    def _refused_extensions(self, request: Request, txn: ServerTransaction, now: float) -> bool:
        """Answer 420 to a request that requires an extension we lack; whether it was."""
        unsupported = unsupported_extensions(request, SUPPORTED_EXTENSIONS)
        if unsupported:
            headers = [("Unsupported", ", ".join(unsupported))]
            self._respond(txn, request, 420, None, now, to_tag=new_tag(), headers=headers)
        return bool(unsupported)

    def _on_invite(
        self,
        request: Request,
        txn: ServerInviteTransaction,
        source: Address,
        now: float,
        wall: float,
    ) -> None:
        uri = request.parsed_uri
        if uri.scheme not in ("sip", "sips", "tel"):
            self._respond(txn, request, 416, None, now, to_tag=new_tag())
            return
        if request.call_id in self._by_b_call_id:  # one of our own B legs came back to us
            self._refuse(request, txn, source, None, now, wall, LOOP_DETECTED)
            return
        if (request.max_forwards if request.max_forwards is not None else 70) <= 0:
            self._refuse(request, txn, source, None, now, wall, reject("too_many_hops"))
            return
        if self.draining:
            self._refuse(request, txn, source, None, now, wall, reject("draining"))
            return
        config = self.config
        ip = source[0]
        if config.is_carrier_source(ip):
            self._inbound(request, txn, source, now, wall)
            return
        trunk = config.trunk_for_source(ip)
        if trunk is None and not config.has_credentials:
            # No trunk authenticates by digest: a challenge could only ever fail.
            self._refuse(request, txn, source, None, now, wall, reject("acl_denied"))
            return
        if trunk is None:
            trunk = self._authenticate(request, txn, source, now, wall)
            if trunk is None:
                return
        self._outbound(request, txn, source, trunk, now, wall)

    def _authenticate(
        self,
        request: Request,
        txn: ServerInviteTransaction,
        source: Address,
        now: float,
        wall: float,
    ) -> TrunkPolicy | None:
        """The trunk whose credentials the INVITE proves, or None once it has been answered
        (407 challenge, or 403 for wrong credentials: the same for unknown users)."""
        outcome, credential = self._check_digest(request, "Proxy-Authorization", source, now, wall)
        if outcome is _Auth.OK and credential is not None:
            self._challenges.pop(request.call_id, None)
            return self.config.trunk(credential.trunk_id)
        if outcome is _Auth.FAILED:
            self._challenges.pop(request.call_id, None)
            self._refuse(request, txn, source, None, now, wall, reject("auth_failed"))
        else:
            self._challenge(request, txn, source, now, wall, stale=outcome is _Auth.STALE)
        return None

    def _check_digest(
        self, request: Request, header: str, source: Address, now: float, wall: float
    ) -> tuple[_Auth, Credential | None]:
        """What the request's digest credentials prove. Only a wrong answer to one of our own
        nonces is a failure (counted, and fed to the abuse guard); missing, malformed or
        foreign-nonce credentials just earn a (new) challenge."""
        value = request.headers.get(header)
        if value is None:
            return _Auth.MISSING, None
        try:
            creds = parse_authorization(value)
        except RemoteProtocolError:
            return _Auth.MISSING, None
        credential = self.config.credential(creds.username)

        def ha1_lookup(username: str, algorithm: str) -> str | None:
            if credential is None:
                return None
            return credential.ha1_sha256 if algorithm == "SHA-256" else credential.ha1_md5

        result = self.digest.verify(creds, method=request.method, ha1_lookup=ha1_lookup, now=wall)
        if result.accepted and credential is not None:
            self.guard.authenticated(source[0], now)
            return _Auth.OK, credential
        if result.stale:
            return _Auth.STALE, None
        if result.outcome is DigestOutcome.BAD_NONCE:
            return _Auth.MISSING, None
        self.stats.auth_failures_total += 1
        self._out.extend(self.guard.auth_failed(source[0], creds.username, now))
        return _Auth.FAILED, None

    def _challenge(
        self,
        request: Request,
        txn: ServerInviteTransaction,
        source: Address,
        now: float,
        wall: float,
        *,
        stale: bool,
    ) -> None:
        headers = [
            ("Proxy-Authenticate", value)
            for value in self.digest.challenge(
                wall, algorithms=self.settings.challenge_algorithms, stale=stale
            )
        ]
        self._respond(txn, request, 407, None, now, to_tag=new_tag(), headers=headers)
        call_id = request.call_id
        pending = self._challenges.get(call_id)
        if pending is None:
            pending = _PendingChallenge(
                request, source, now + self.settings.challenge_timeout, wall
            )
            self._challenges[call_id] = pending
        else:
            pending.deadline = now + self.settings.challenge_timeout
        self._timers.update(pending)

    def _challenge_expired(self, pending: _PendingChallenge) -> None:
        """No authenticated retry came: the attempt ends as refused for lack of credentials."""
        pending.deadline = None
        request = pending.request
        if self._challenges.pop(request.call_id, None) is None:
            return
        self.stats.attempts_total += 1
        self._bump_refusal("auth_required")
        self._out.append(
            CdrReady(
                self._cdr_of_refusal(
                    request,
                    pending.source,
                    None,
                    pending.wall,
                    407,
                    "auth_required",
                    direction="outbound",
                )
            )
        )

    def _callee_user(self, request: Request) -> str:
        user = request.parsed_uri.unescaped_user
        if user:
            return user
        return request.to.sip_uri.unescaped_user or ""

    def _caller_user(self, request: Request) -> str:
        identity = request.headers.get("P-Asserted-Identity")
        if identity is not None:
            try:
                user = parse_name_addr(identity).sip_uri.unescaped_user
                if user:
                    return user
            except RemoteProtocolError:
                pass
        return request.from_.sip_uri.unescaped_user or ""

    def _outbound(
        self,
        request: Request,
        txn: ServerInviteTransaction,
        source: Address,
        trunk: TrunkPolicy,
        now: float,
        wall: float,
    ) -> None:
        callee_raw = self._callee_user(request)
        callee = numbering.to_e164(callee_raw, trunk.default_country)
        caller = numbering.to_e164(self._caller_user(request), trunk.default_country)
        decision = admit_outbound(
            OutboundCall(
                callee_e164=callee,
                caller_e164=caller,
                callee_region=numbering.region_of(callee)
                if callee and trunk.allowed_countries
                else None,
            ),
            trunk,
            self.config.customer_of(trunk),
            self.limits.usage(trunk, now),
            self.config.customer_numbers(trunk.customer_id),
        )
        if not isinstance(decision, Admit):
            self._refuse(
                request,
                txn,
                source,
                trunk,
                now,
                wall,
                decision,
            )
            return
        assert callee is not None
        targets = routing.outbound_targets(self.config.gateways_for(callee), callee, self.rng)
        self._start(request, txn, source, trunk, "outbound", caller, callee, targets, now, wall)

    def _inbound(
        self,
        request: Request,
        txn: ServerInviteTransaction,
        source: Address,
        now: float,
        wall: float,
    ) -> None:
        region = self.settings.inbound_default_region
        callee_raw = self._callee_user(request)
        callee = numbering.to_e164(callee_raw, region)
        if callee is None and callee_raw.isdigit():
            callee = numbering.to_e164("+" + callee_raw, region)  # international without "+"
        caller = numbering.to_e164(self._caller_user(request), region)
        number = self.config.number(callee) if callee else None
        trunk = self.config.trunk(number.trunk_id) if number and number.trunk_id else None
        customer = self.config.customer(number.customer_id) if number else None
        usage = self.limits.usage(trunk, now) if trunk else _NO_USAGE
        decision = admit_inbound(number, trunk, customer, usage)
        if not isinstance(decision, Admit):
            self._refuse(
                request,
                txn,
                source,
                trunk,
                now,
                wall,
                decision,
                direction="inbound",
            )
            return
        assert trunk is not None and callee is not None
        contacts = self.registrar.contacts(trunk.id, now)
        targets = routing.inbound_targets(trunk, callee, contacts, self.rng)
        self._start(request, txn, source, trunk, "inbound", caller, callee, targets, now, wall)

    def _refuse(
        self,
        request: Request,
        txn: ServerInviteTransaction,
        source: Address,
        trunk: TrunkPolicy | None,
        now: float,
        wall: float,
        refusal: Reject,
        *,
        direction: str = "outbound",
    ) -> None:
        """Answer a call attempt we will not carry, and write its one CDR."""
        code, reason = refusal.code, refusal.reason
        self.stats.attempts_total += 1
        self._bump_refusal(reason)
        headers = [("Retry-After", "1")] if code == 503 else None
        self._respond(txn, request, code, refusal.phrase, now, to_tag=new_tag(), headers=headers)
        self._out.append(
            CdrReady(
                self._cdr_of_refusal(
                    request, source, trunk, wall, code, reason, direction=direction
                )
            )
        )

    def _bump_refusal(self, reason: str) -> None:
        refusals = self.stats.refusals_total
        refusals[reason] = refusals.get(reason, 0) + 1

    def _cdr_of_refusal(
        self,
        request: Request,
        source: Address,
        trunk: TrunkPolicy | None,
        wall: float,
        code: int,
        reason: str,
        *,
        direction: str,
    ) -> CallDetailRecord:
        region = trunk.default_country if trunk else self.settings.inbound_default_region
        callee_raw = self._safe(lambda: self._callee_user(request))
        caller_raw = self._safe(lambda: self._caller_user(request))
        return CallDetailRecord(
            edge=self.node,
            call_id=cdr.new_call_id(),
            a_call_id=request.call_id,
            b_call_id=None,
            customer_id=trunk.customer_id if trunk else None,
            trunk_id=trunk.id if trunk else None,
            direction=direction,
            caller_e164=numbering.to_e164(caller_raw, region) if caller_raw else None,
            callee_e164=numbering.to_e164(callee_raw, region) if callee_raw else None,
            caller_raw=caller_raw,
            callee_raw=callee_raw,
            source_ip=source[0],
            source_port=source[1],
            routes=[],
            answered_by=None,
            setup_at=iso_utc(wall),
            ringing_at=None,
            answer_at=None,
            end_at=iso_utc(wall),
            duration_ms=0,
            billable_seconds=0,
            final_code=code,
            reason=reason,
            hangup_side=None,
            codecs=[],
            config_version=self.config.version,
        )

    @staticmethod
    def _safe(read: Callable[[], str]) -> str:
        """A header-derived value for the CDR; a malformed header must not cost the record."""
        try:
            return read()
        except RemoteProtocolError:
            return ""

    # --- call set-up --------------------------------------------------------------------------

    def _start(
        self,
        request: Request,
        txn: ServerInviteTransaction,
        source: Address,
        trunk: TrunkPolicy,
        direction: str,
        caller: str | None,
        callee: str,
        targets: list[routing.Target],
        now: float,
        wall: float,
    ) -> None:
        call = _Call(
            a_invite=request,
            a_txn=txn,
            source=source,
            direction=direction,
            trunk=trunk,
            caller_e164=caller,
            callee_e164=callee,
            wall=wall,
        )
        if not targets:
            reason = "no_route" if direction == "inbound" else "no_gateway"
            self._refuse(
                request,
                txn,
                source,
                trunk,
                now,
                wall,
                reject(reason),
                direction=direction,
            )
            return
        call.targets = targets
        # Inbound calls take a channel but no CPS token (see edge.policy.admit_inbound).
        granted = self.limits.acquire(trunk, call.id, now, count_cps=direction == "outbound")
        if granted is None:  # the cluster counters answer later, through limit_decided
            self._admitting[call.id] = call
            self._by_a_txn[txn] = call
            self._respond(txn, request, 100, None, now)
        elif granted:
            self._proceed(call, now, wall, say_trying=True)
        else:
            # usage() admitted it a moment ago; the last slot went meanwhile.
            self._refuse_call(call, "channel_limit", now, wall)

    def limit_decided(
        self, call_id: str, granted: bool, reason: str | None, now: float, wall: float
    ) -> list[Output]:
        """The cluster counters' answer for a call `acquire` left pending. `reason` says which
        limit refused it (`channel_limit` or `cps_limit`)."""
        out = self._out = []
        call = self._admitting.pop(call_id, None)
        if call is None:
            return out  # cancelled meanwhile: _on_cancel already released the slot
        if granted:
            self._proceed(call, now, wall, say_trying=False)  # said while it waited
        else:
            self._by_a_txn.pop(call.a_txn, None)
            self._refuse_call(call, reason or "channel_limit", now, wall)
        return out

    def _refuse_call(self, call: _Call, reason: str, now: float, wall: float) -> None:
        self._refuse(
            call.a_invite, call.a_txn, call.source, call.trunk, now, wall, reject(reason),
            direction=call.direction,
        )  # fmt: skip

    def _proceed(self, call: _Call, now: float, wall: float, *, say_trying: bool) -> None:
        """The call holds its slot: say 100 Trying and try the first target."""
        request, txn = call.a_invite, call.a_txn
        self.stats.attempts_total += 1
        if say_trying:
            self._respond(txn, request, 100, None, now)
        call.codecs = _codecs(request)
        self._calls[call.id] = call
        active = self.stats.active
        active[call.trunk.id] = active.get(call.trunk.id, 0) + 1
        self._by_a_txn[txn] = call
        self._emit(call, "started", wall)
        self._try_next_target(call, now, wall)

    def _local(self, transport: str) -> Address:
        """Our address as written in Via, Contact, From and Call-ID (IPv6 in brackets)."""
        host, port, name = self.local.get(transport) or self.local["udp"]
        return (bracket_host(host), port, name)

    def _via(self, transport: str) -> str:
        host, port, _ = self._local(transport)
        return f"SIP/2.0/{transport.upper()} {host}:{port};branch={new_branch()};rport"

    def _contact(self, transport: str) -> str:
        host, port, _ = self._local(transport)
        suffix = "" if transport == "udp" else f";transport={transport}"
        return f"<sip:{host}:{port}{suffix}>"

    def _try_next_target(self, call: _Call, now: float, wall: float) -> None:
        """Send the B-leg INVITE to the next target; the caller's leg stays as it is."""
        target = call.targets.pop(0)
        host = self._local(target.transport)[0]
        a_invite = call.a_invite
        if call.b is None:
            call.b = _Leg(
                new_call_id(host), new_tag(), (target.host, target.port, target.transport)
            )
        else:
            call.b.addr = (target.host, target.port, target.transport)
            call.b.dialog = None  # the previous target's early dialog, if any, is over
        call.b_cseq += 1
        caller_user = call.caller_e164 or self._caller_user(a_invite) or "anonymous"
        headers = crossing_headers(a_invite, END_TO_END_HEADERS)
        content_type = a_invite.headers.get("Content-Type")
        invite = make_request(
            "INVITE",
            target.request_uri,
            from_=f"<sip:{caller_user}@{host}>;tag={call.b.local_tag}",
            to=f"<{target.request_uri}>",
            call_id=call.b.call_id,
            cseq=call.b_cseq,
            via=self._via(target.transport),
            max_forwards=max((a_invite.max_forwards or 70) - 1, 0),
            contact=self._contact(target.transport),
            headers=headers,
            body=a_invite.body,
            content_type=content_type,
        )
        call.b_invite = invite
        call.routes.append(
            {"target": target.ref, "kind": target.kind, "status": None, "reason": "pending"}
        )
        self._by_b_call_id[call.b.call_id] = call
        client, events = self.layer.send_request(invite, call.b.addr, now)
        call.b_txn = client
        self._b_invites[client] = call
        self._send_events(events)

    # --- responses ----------------------------------------------------------------------------

    def _on_response(self, event: DeliverToTU, response: Response, now: float, wall: float) -> None:
        txn = event.transaction
        call = self._b_invites.get(txn) if isinstance(txn, ClientTransaction) else None
        if call is not None:
            self._on_b_invite_response(call, response, now, wall)
            return
        relay = self._relays.get(txn) if isinstance(txn, ClientTransaction) else None
        if relay is not None:
            self._on_relay_response(relay, response, now)
        # Responses to our BYEs and CANCELs need nothing more.

    def _on_b_invite_response(
        self, call: _Call, response: Response, now: float, wall: float
    ) -> None:
        status = response.status
        b = call.b
        assert b is not None and call.b_invite is not None
        if status == 100:
            if call.cancel_wanted:
                self._cancel_b(call, now)
            return
        if call.ended:
            if status < 200:
                if call.cancel_wanted:
                    self._cancel_b(call, now)
            elif status < 300:  # answered after the caller gave up, or a retransmitted 2xx
                self._ack_and_bye_stray(call, response, now)
            return
        if status < 200:
            if response.to_tag is not None:
                self._ensure_b_dialog(call, response)
            if status in (180, 183) and call.ringing_at is None:
                call.ringing_at = wall
                self._emit(call, "ringing", wall)
            self._relay_to_a(call, response, now)
            return
        route = call.routes[-1]
        route["status"] = status
        if status < 300:
            self._on_answer(call, response, now, wall)
            return
        route["reason"] = "rejected"
        if call.targets and routing.should_fail_over(status, call.trunk.failover_stop_codes):
            route["reason"] = "failover"
            self._try_next_target(call, now, wall)
            return
        self._fail_a(call, status, response.reason, now)
        self._finish(call, wall, final_code=status, reason="callee_rejected", side="callee")

    def _on_client_failure(self, txn: object, now: float, wall: float) -> None:
        """Timer B/F fired or the transport failed: a timed-out route (or a relay that dies)."""
        call = self._b_invites.get(txn) if isinstance(txn, ClientTransaction) else None
        if call is not None and not call.ended and call.answer_at is None:
            route = call.routes[-1]
            route["status"] = None
            route["reason"] = "timeout"
            if call.targets:
                route["reason"] = "failover"
                self._try_next_target(call, now, wall)
            else:
                self._fail_a(call, 408, "Request Timeout", now)
                self._finish(call, wall, final_code=408, reason="timeout", side="edge")
            return
        relay = self._relays.pop(txn, None) if isinstance(txn, ClientTransaction) else None
        if relay is not None:
            request = relay.server_txn.request
            self._respond(relay.server_txn, request, 408, None, now)

    def _ensure_b_dialog(self, call: _Call, response: Response) -> None:
        b = call.b
        assert b is not None and call.b_invite is not None
        if b.dialog is None or b.dialog.remote_tag != response.to_tag:
            b.dialog = Dialog.as_uac(call.b_invite, response)
        else:
            b.dialog.update_from_response(response)

    def _a_headers(self, call: _Call, response: Response) -> list[tuple[str, str]]:
        headers = [("Contact", self._contact(call.source[2]))]
        headers += crossing_headers(response, END_TO_END_HEADERS)
        content_type = response.headers.get("Content-Type")
        if content_type and response.body:
            headers.append(("Content-Type", content_type))
        return headers

    def _relay_to_a(self, call: _Call, response: Response, now: float) -> Response:
        a_response = make_response(
            call.a_invite,
            response.status,
            response.reason,
            to_tag=call.a.local_tag,
            headers=self._a_headers(call, response),
            body=response.body,
        )
        self._count_response(call.a_invite, response.status)
        self._send_events(self.layer.send_response(call.a_txn, a_response, now))
        return a_response

    def _on_answer(self, call: _Call, response: Response, now: float, wall: float) -> None:
        self._ensure_b_dialog(call, response)
        call.answer_at = wall
        call.routes[-1]["reason"] = "answered"
        call.answered_by = call.routes[-1]["target"]
        if response.body:
            call.codecs = call.codecs or _codecs(response)
        a_response = self._relay_to_a(call, response, now)
        call.a.dialog = Dialog.as_uas(call.a_invite, a_response)
        self._by_a_dialog[(call.a.call_id, call.a.local_tag)] = call
        retransmitter = _Retransmitter(
            call, AnswerRetransmitter(a_response, call.source, now, self.settings.timers)
        )
        if call.a_txn.reliable:
            retransmitter.inner.acknowledged()
        else:
            self._timers.update(retransmitter)
        call.a_retransmitter = retransmitter
        call.deadline = now + call.trunk.max_call_duration
        self._timers.update(call)
        self.stats.answers_total += 1
        self._emit(call, "answered", wall)

    def _ack_b(self, call: _Call, body: bytes = b"", content_type: str | None = None) -> None:
        b = call.b
        assert b is not None and b.dialog is not None
        if call.b_ack is None:
            call.b_ack = b.dialog.create_request(
                "ACK", via=self._via(b.addr[2]), body=body, content_type=content_type
            )
        self._transmit(call.b_ack, b.addr)

    def _ack_and_bye_stray(self, call: _Call, response: Response, now: float) -> None:
        """A 2xx for a call already over (a retransmission, or a late answer): ACK it again,
        and if it opened a dialog we never used, close that dialog."""
        b = call.b
        if b is None or call.b_invite is None:
            return
        if b.dialog is not None and b.dialog.remote_tag == response.to_tag and call.b_ack:
            self._transmit(call.b_ack, b.addr)
            return
        dialog = Dialog.as_uac(call.b_invite, response)
        self._transmit(dialog.create_request("ACK", via=self._via(b.addr[2])), b.addr)
        bye = dialog.create_request("BYE", via=self._via(b.addr[2]))
        _, events = self.layer.send_request(bye, b.addr, now)
        self._send_events(events)

    def _on_ack(self, ack: Request, now: float) -> None:
        """An ACK for a 2xx we sent: stop resending that 2xx, and acknowledge the other leg."""
        call = self._call_of_request(ack)
        if call is None or call.ended:
            return
        leg, other = self._legs(call, ack)
        if leg.dialog is not None and not leg.dialog.matches(ack):
            return  # same Call-ID, tags of no dialog: an ACK is never answered
        if leg is call.a and ack.cseq[0] == call.a_invite.cseq[0]:
            if call.a_retransmitter is not None:
                call.a_retransmitter.inner.acknowledged()
                self._timers.update(call.a_retransmitter)
            if call.b_ack is None:  # a retransmitted ACK is absorbed here
                self._ack_b(call, ack.body, ack.headers.get("Content-Type"))
        elif other.dialog is not None and other.dialog.can_acknowledge:  # relayed re-INVITE
            content_type = ack.headers.get("Content-Type") if ack.body else None
            relayed = other.dialog.create_request(
                "ACK", via=self._via(other.addr[2]), body=ack.body, content_type=content_type
            )
            self._transmit(relayed, other.addr)

    def _call_of_request(self, request: Request) -> _Call | None:
        call = self._by_b_call_id.get(request.call_id)
        if call is not None:
            return call
        to_tag = request.to_tag
        return self._by_a_dialog.get((request.call_id, to_tag)) if to_tag else None

    def _legs(self, call: _Call, request: Request) -> tuple[_Leg, _Leg]:
        """(the leg `request` came on, the other leg) of an answered call."""
        b = call.b
        assert b is not None
        return (b, call.a) if request.call_id == b.call_id else (call.a, b)

    # --- cancel, bye and in-dialog requests ---------------------------------------------------

    def _on_cancel(
        self,
        cancel: Request,
        txn: ServerTransaction,
        cancelled: ServerInviteTransaction | None,
        now: float,
        wall: float,
    ) -> None:
        call = self._by_a_txn.get(cancelled) if cancelled is not None else None
        if call is None:
            self._respond(txn, cancel, 481, None, now)
            return
        self._respond(txn, cancel, 200, None, now)
        if self._admitting.pop(call.id, None) is not None:
            # Cancelled before the counters answered: _finish gives back any slot they grant.
            self._fail_a(call, 487, "Request Terminated", now)
            self.stats.attempts_total += 1
            self._finish(call, wall, final_code=487, reason="cancelled", side="caller")
            return
        if call.answer_at is not None or call.ended:
            return  # too late: the caller will get the 2xx and must BYE
        self._fail_a(call, 487, "Request Terminated", now)
        call.routes[-1]["reason"] = "cancelled"
        self._cancel_b(call, now)
        # The B leg's 487 (or a 2xx crossing the CANCEL, which we then ACK and BYE) may
        # still come; for the caller the attempt is over now.
        self._finish(call, wall, final_code=487, reason="cancelled", side="caller")

    def _cancel_b(self, call: _Call, now: float) -> None:
        """CANCEL the pending B-leg INVITE, once it has had a provisional (RFC 3261 9.1)."""
        txn = call.b_txn
        b = call.b
        if txn is None or b is None or call.b_invite is None or call.b_cancel_sent:
            return
        state = txn.state.value
        if state == "calling":
            call.cancel_wanted = True  # sent when the first provisional arrives
        elif state == "proceeding":
            call.b_cancel_sent = True
            _, events = self.layer.send_request(make_cancel(call.b_invite), b.addr, now)
            self._send_events(events)

    def _fail_a(self, call: _Call, status: int, reason: str | None, now: float) -> None:
        """Answer the caller's INVITE with a final error, if it is still unanswered."""
        if call.a_txn.state.value in ("trying", "proceeding"):
            self._respond(call.a_txn, call.a_invite, status, reason, now, to_tag=call.a.local_tag)

    def _on_in_dialog(
        self, request: Request, txn: ServerTransaction, now: float, wall: float
    ) -> None:
        call = self._call_of_request(request)
        if call is None or call.ended or call.b is None:
            self._respond(txn, request, 481, None, now)
            return
        leg, other = self._legs(call, request)
        if leg.dialog is None or other.dialog is None:
            self._respond(txn, request, 481, None, now)
            return
        leg.dialog.receive_request(request)
        if request.method == "BYE":
            self._respond(txn, request, 200, None, now)
            self._bye(call, other, now)
            side = "caller" if leg is call.a else "callee"
            self._finish(call, wall, final_code=200, reason="normal_clearing", side=side)
            return
        content_type = request.headers.get("Content-Type")
        headers = crossing_headers(request, END_TO_END_HEADERS)
        relayed = other.dialog.create_request(
            request.method,
            via=self._via(other.addr[2]),
            headers=headers,
            body=request.body,
            content_type=content_type if request.body else None,
        )
        if request.method == "INVITE":
            self._respond(txn, request, 100, None, now)
        client, events = self.layer.send_request(relayed, other.addr, now)
        self._relays[client] = _Relay(call, txn, leg)
        self._handle_events(events, now, wall)

    def _on_relay_response(self, relay: _Relay, response: Response, now: float) -> None:
        call = relay.call
        other = call.b if relay.to_leg is call.a else call.a
        if other is not None and other.dialog is not None:
            other.dialog.update_from_response(response)
        if response.status == 100:
            return
        request = relay.server_txn.request
        headers = [("Contact", self._contact(relay.to_leg.addr[2]))]
        content_type = response.headers.get("Content-Type")
        if content_type and response.body:
            headers.append(("Content-Type", content_type))
        answer = make_response(
            request, response.status, response.reason, headers=headers, body=response.body
        )
        self._count_response(request, response.status)
        self._send_events(self.layer.send_response(relay.server_txn, answer, now))

    def _bye(self, call: _Call, leg: _Leg | None, now: float) -> None:
        if leg is None or leg.dialog is None or leg.dialog.state is DialogState.TERMINATED:
            return
        if leg.dialog.state is DialogState.EARLY:
            return
        bye = leg.dialog.create_request("BYE", via=self._via(leg.addr[2]))
        _, events = self.layer.send_request(bye, leg.addr, now)
        self._send_events(events)

    def _hang_up(self, call: _Call, now: float, wall: float, *, reason: str, side: str) -> None:
        """End an answered call from the edge: BYE on both legs."""
        self._bye(call, call.a, now)
        self._bye(call, call.b, now)
        self._finish(call, wall, final_code=200, reason=reason, side=side)

    # --- registration -------------------------------------------------------------------------

    def _on_register(
        self, request: Request, txn: ServerTransaction, source: Address, now: float, wall: float
    ) -> None:
        outcome, credential = self._check_digest(request, "Authorization", source, now, wall)
        if outcome is _Auth.FAILED:
            self._respond(txn, request, 403, None, now, to_tag=new_tag())
            return
        if credential is None:
            stale = outcome is _Auth.STALE
            headers = [
                ("WWW-Authenticate", v)
                for v in self.digest.challenge(
                    wall, algorithms=self.settings.challenge_algorithms, stale=stale
                )
            ]
            self._respond(txn, request, 401, None, now, to_tag=new_tag(), headers=headers)
            return
        trunk = self.config.trunk(credential.trunk_id)
        assert trunk is not None  # a compiled config has no credential without its trunk
        decision = admit_register(trunk, self.config.customer_of(trunk))
        if not isinstance(decision, Admit):
            self._bump_refusal(decision.reason)
            self._respond(txn, request, decision.code, decision.phrase, now, to_tag=new_tag())
            return
        default_expires = _int_or(request.headers.get("Expires"))
        granted: list[tuple[str, int]] = []
        for contact in request.contact:
            requested = _int_or(contact.params.get("expires"))
            expires = granted_expires(default_expires if requested is None else requested)
            if expires is None:
                self._respond(
                    txn,
                    request,
                    423,
                    None,
                    now,
                    to_tag=new_tag(),
                    headers=[("Min-Expires", str(MIN_EXPIRES))],
                )
                return
            granted.append((str(contact.uri), expires))
        for uri, expires in granted:
            self.registrar.register(
                trunk.id, uri, expires, now, source=(source[0], source[1]), transport=source[2]
            )
        headers = [("Contact", f"<{uri}>;expires={expires}") for uri, expires in granted if expires]
        self._respond(txn, request, 200, None, now, to_tag=new_tag(), headers=headers)

    # --- the end ------------------------------------------------------------------------------

    def _emit(
        self,
        call: _Call,
        kind: str,
        wall: float,
        *,
        reason: str | None = None,
        final_code: int | None = None,
    ) -> None:
        self._out.append(
            CallEvent(
                kind=kind,
                call_id=call.id,
                trunk_id=call.trunk.id,
                customer_id=call.customer_id,
                direction=call.direction,
                caller=call.caller_e164,
                callee=call.callee_e164,
                at=wall,
                reason=reason,
                final_code=final_code,
            )
        )

    def _record(
        self, call: _Call, wall: float, final_code: int, reason: str, side: str | None
    ) -> CallDetailRecord:
        """The call's CDR as if it ended at `wall`."""
        answered = call.answer_at is not None
        # Clamped: a wall clock stepping back mid-call must not make the record unstorable.
        duration_ms = max(0, round((wall - call.answer_at) * 1000)) if call.answer_at else 0
        return CallDetailRecord(
            edge=self.node,
            call_id=call.id,
            a_call_id=call.a.call_id,
            b_call_id=call.b.call_id if call.b else None,
            customer_id=call.customer_id,
            trunk_id=call.trunk.id,
            direction=call.direction,
            caller_e164=call.caller_e164,
            callee_e164=call.callee_e164,
            caller_raw=self._safe(lambda: self._caller_user(call.a_invite)),
            callee_raw=self._safe(lambda: self._callee_user(call.a_invite)),
            source_ip=call.source[0],
            source_port=call.source[1],
            routes=list(call.routes),
            answered_by=call.answered_by,
            setup_at=iso_utc(call.setup_at),
            ringing_at=iso_utc(call.ringing_at),
            answer_at=iso_utc(call.answer_at),
            end_at=iso_utc(wall),
            duration_ms=duration_ms,
            billable_seconds=-(-duration_ms // 1000) if answered else 0,
            final_code=final_code,
            reason=reason,
            hangup_side=side,
            codecs=call.codecs,
            config_version=self.config.version,
        )

    def record_so_far(self, call_id: str, wall: float) -> CallDetailRecord | None:
        """The CDR so far of an answered call still up, as if the edge died at `wall` (reason
        `edge_restart`), for edge/runtime/checkpoint.py; None for any other call."""
        call = self._calls.get(call_id)
        if call is None or call.answer_at is None or call.ended:
            return None
        return self._record(call, wall, 200, "edge_restart", "edge")

    def _finish(
        self, call: _Call, wall: float, *, final_code: int, reason: str, side: str | None
    ) -> None:
        """The call attempt is over: free its slot, forget it, and write its one CDR."""
        if call.ended:
            return
        call.ended = True
        if self._calls.pop(call.id, None) is not None:
            self.stats.active[call.trunk.id] -= 1
        self._by_a_dialog.pop((call.a.call_id, call.a.local_tag), None)
        self.limits.release(call.trunk.id, call.id)
        self._timers.update(call)
        self._out.append(CdrReady(self._record(call, wall, final_code, reason, side)))
        self._emit(call, "ended", wall, reason=reason, final_code=final_code)
        # The call stays reachable while its transactions linger (up to 32 s), only to absorb
        # strays: a resend needs a message's bytes, not its parse.
        call.a_invite.forget_parsed()
        for message in (call.b_invite, call.b_ack):
            if message is not None:
                message.forget_parsed()
        if call.a_retransmitter is not None:
            call.a_retransmitter.inner.response.forget_parsed()
            # It refers back to the call (and stays in the timer queue until acknowledged or
            # timed out); the cycle would leave every finished call to the cyclic garbage
            # collector rather than to reference counting.
            call.a_retransmitter = None
        # The B leg's Call-ID stays known while its transactions may still answer; it is
        # dropped with them (see _forget) — but a finished call need not be found again.
        if call.b is not None and (call.b_txn is None or call.b_txn.state.value == "terminated"):
            self._by_b_call_id.pop(call.b.call_id, None)


def _codecs(message: Request | Response) -> list[str]:
    if not message.body or "sdp" not in (message.headers.get("Content-Type") or "").lower():
        return []
    try:
        description = SessionDescription.parse(message.body)
    except RemoteProtocolError:
        return []
    names: list[str] = []
    for media in description.media:
        for codec in media.codecs:
            if codec.name not in names:
                names.append(codec.name)
    return names


def _int_or(text: str | None) -> int | None:
    """An expiry as given, or None when absent or not a number (the default then applies)."""
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None
