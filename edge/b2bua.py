"""The B2BUA: every call as two legs, decided from the config snapshot, ending in one CDR.

This is the edge's transaction user. It sits on one `TransactionLayer` (edge/sip), identifies
who is calling (trunk ACL, digest credentials, or a carrier gateway), asks `edge.policy` whether
the call may proceed, asks for a slot of the trunk's limits, picks routes with `edge.routing`,
and relays between an A leg (the caller) and a B leg (the callee) that share nothing on the
wire: each leg has its own Call-ID, tags, Via and Contact, and only a short list of end-to-end
headers crosses over. SDP passes through.

Each admitted call is a state machine (edge/calls.py): `_step` is the only place a call changes
state, through the table `CALL` at the end of this module; `_end` is the one way into
`CallState.ENDED` and emits the call's one `CdrReady` and its `ReleaseSlot`.

Sans-IO like the SIP core: bytes and (monotonic `now`, wall-clock `wall`) in; `Transmit`,
`CdrReady`, `CallEvent`, `SecurityEvent`, `AcquireSlot` and `ReleaseSlot` out; the answer to an
`AcquireSlot` comes back through `slot_decided`. It never touches sockets, the clock, asyncio,
counters kept elsewhere or Django; the runtime (edge/runtime) carries its outputs out and calls
`on_timer` at `next_timer()`.

What it writes it does not read back (issue 15): the responses relayed to the caller's INVITE
are put together from a per-call template of the headers they share (`_relay_to_a`); the
caller's dialog is built from what that 2xx was given (`Dialog.answering`) and the callee's
from our own Contact (`Dialog.as_uac(local_target=...)`), not from our messages parsed back;
and the transaction layer gets the branch of each Via we write (`send_request(via=...)`).
Measured with bench/edge_core.py (callgrind, one INVITE-180-200-ACK-BYE call): 1.65 -> 1.52 M
instructions per call compiled, 4.37 -> 4.16 M interpreted; 16.0 objects and 8.0 -> 7.9 KiB
per held call.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TypeAlias

from edge import cdr, numbering, routing, salvage
from edge.call_events import CallEvent, call_event
from edge.calls import (
    ENDINGS,
    HANGUP_REASONS,
    Address,
    Call,
    CallInput,
    CallState,
    Incoming,
    Leg,
    Retransmitter,
    callee_user,
    caller_user,
    peer_text,
)
from edge.cdr import CallDetailRecord
from edge.challenges import Challenges, PendingChallenge
from edge.config import Credential, EdgeConfig, TrunkPolicy
from edge.limits import AcquireSlot, ReleaseSlot, SlotDecision, SlotGranted
from edge.media import (
    MediaAnswer,
    MediaDecision,
    MediaDelete,
    MediaOffer,
    MediaReady,
    MediaStats,
    anchors,
    answer_params,
    media_address,
    offer_params,
    offers_srtp,
)
from edge.policy import (
    Admit,
    OutboundCall,
    Reject,
    admit_inbound,
    admit_outbound,
    admit_register,
    reason_header,
    reject,
)
from edge.registrar import MIN_EXPIRES, PURGE_INTERVAL, Registrar, granted_expires
from edge.security import AbuseGuard, SecurityEvent, Verdict
from edge.sip.dialog import AnswerRetransmitter, Dialog, DialogState
from edge.sip.digest import (
    DEFAULT_CHALLENGE_ORDER,
    DigestOutcome,
    DigestServer,
    parse_authorization,
)
from edge.sip.errors import RemoteProtocolError
from edge.sip.message import (
    Request,
    Response,
    answered_to,
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
from edge.sip.tables import ShardedDict
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
    TransactionState,
    TransportError,
    make_cancel,
)
from edge.sip.uri import bracket_host

__all__ = [
    "CALL",
    "Address",
    "B2bua",
    "B2buaSettings",
    "CallEvent",
    "CdrReady",
    "Output",
    "Stats",
    "Transmit",
]


@dataclass(slots=True, init=False, unsafe_hash=True)
class Transmit:
    """Put `data` on the wire to `addr`."""

    data: bytes
    addr: Address

    def __init__(self, data: bytes, addr: Address) -> None:
        self.data = data
        self.addr = addr


@dataclass(slots=True, init=False, unsafe_hash=True)
class CdrReady:
    """A call attempt ended: journal its record."""

    record: CallDetailRecord

    def __init__(self, record: CallDetailRecord) -> None:
        self.record = record


Output: TypeAlias = (
    Transmit
    | CdrReady
    | CallEvent
    | SecurityEvent
    | AcquireSlot
    | ReleaseSlot
    | MediaOffer
    | MediaAnswer
    | MediaDelete
)

ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, UPDATE, INFO, REGISTER"
# Headers that cross from one leg to the other; everything else (Via, Route, Record-Route,
# Contact, addresses in vendor headers) stays on its own side.
END_TO_END_HEADERS = ("Allow", "Supported", "Accept", "Privacy", "Reason", "Info-Package")
# Extensions we implement (Require / Proxy-Require of anything else is refused with 420).
SUPPORTED_EXTENSIONS: frozenset[str] = frozenset()
LOOP_DETECTED = Reject(482, "loop_detected", "Loop Detected")  # not a policy decision


@dataclass(slots=True)
class B2buaSettings:
    timers: TimerConfig = field(default_factory=TimerConfig)
    # An INVITE answered 407 whose authenticated retry never comes ends (as one CDR) then.
    challenge_timeout: float = 32.0
    # A call no target has answered this long after it started ends (`no_answer`, 408): RFC
    # 3261's Timer C (more than 3 minutes); without it a callee that rings forever holds the
    # call, its slot and its memory forever.
    ring_timeout: float = 180.0
    # Region assumed for a carrier's national-format called numbers.
    inbound_default_region: str = "US"
    # Digest challenges offered, most preferred first (RFC 8760: SHA-256). Some deployed
    # clients read only the first challenge and know only MD5: for them, put MD5 first.
    challenge_algorithms: tuple[str, ...] = DEFAULT_CHALLENGE_ORDER
    # Whether the runtime has rtpengine instances configured: trunks in media mode `auto`
    # anchor their calls then, and pass SDP through otherwise (edge.media.anchors).
    media_engines: bool = False


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
    ends_total: dict[str, int] = field(default_factory=dict)  # admitted calls, by end reason
    active: dict[int, int] = field(default_factory=dict)  # calls in progress, by trunk id

    def active_by_trunk(self) -> dict[int, int]:
        return self.active


class _Auth(enum.Enum):
    """What a request's digest credentials amount to."""

    __hash__ = object.__hash__  # identity hashing in C, as Timer's (edge/sip/timers.py)
    OK = "ok"
    MISSING = "missing"  # none, malformed, or not for our nonce: challenge
    STALE = "stale"  # right answer to an expired nonce: challenge with stale=true
    FAILED = "failed"  # wrong password or unknown user (indistinguishable to the caller)


class _Relay:
    """An in-dialog request relayed to the other leg, awaiting the answer to send back."""

    __slots__ = ("call", "server_txn", "to_leg")

    def __init__(self, call: Call, server_txn: ServerTransaction, to_leg: Leg) -> None:
        self.call = call
        self.server_txn = server_txn
        self.to_leg = to_leg


class _Reoffer:
    """A re-INVITE or UPDATE with SDP on an anchored call, relayed once rtpengine has
    rewritten its offer."""

    __slots__ = ("leg", "request", "txn")

    def __init__(self, request: Request, txn: ServerTransaction, leg: Leg) -> None:
        self.request = request
        self.txn = txn
        self.leg = leg


class _RegistrarSweep:
    """When to next drop expired registrations; idle (no deadline) while nothing is registered."""

    __slots__ = ("deadline",)

    def __init__(self) -> None:
        self.deadline: float | None = None

    def next_timer(self) -> float | None:
        return self.deadline


_Scheduled: TypeAlias = Call | PendingChallenge | Retransmitter | _RegistrarSweep
# What a call's transition gets besides the call: the message that moved it, or the reason a
# slot was refused.
_Payload: TypeAlias = Request | Response | str | bytes | None
# How a transition into ENDED ended the call: (reason, final SIP code, hangup side).
_Ended: TypeAlias = tuple[str, int, str | None]
_Action: TypeAlias = Callable[["B2bua", Call, CallInput, _Payload, float, float], "_Ended | None"]
# A server transaction that may still send a final response.
_AWAITING_FINAL = frozenset({TransactionState.TRYING, TransactionState.PROCEEDING})
# A client INVITE transaction with no final answer yet.
_UNANSWERED_CLIENT = frozenset({TransactionState.CALLING, TransactionState.PROCEEDING})
# What a call's deadline means in each state.
_DEADLINE_INPUT = {
    CallState.ADMITTING: CallInput.NO_ANSWER,  # not armed while admitting
    CallState.OFFERING: CallInput.NO_ANSWER,
    CallState.CALLING: CallInput.NO_ANSWER,
    CallState.EARLY: CallInput.NO_ANSWER,
    CallState.CONNECTING: CallInput.NO_ANSWER,
    CallState.ANSWERED: CallInput.MAX_DURATION,
    CallState.ENDED: CallInput.B_ABANDONED,
}


class B2bua:
    """The edge's call engine. One instance per edge process; not thread-safe by design."""

    def __init__(
        self,
        *,
        node: str,
        config: EdgeConfig,
        local: dict[str, Address],
        digest_secret: bytes,
        rng: random.Random | None = None,
        registrar: Registrar | None = None,
        settings: B2buaSettings | None = None,
        guard: AbuseGuard | None = None,
    ) -> None:
        self.node = node
        self.config = config
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
        self._calls: dict[str, Call] = {}  # in progress: granted a slot, not ended
        self._admitting: dict[str, Call] = {}  # waiting for their slot (AcquireSlot sent)
        # Where requests of an established call arrive: the A leg by (Call-ID, our tag), the
        # B leg by its Call-ID, which we made and which is unique.
        self._by_a_dialog: dict[tuple[str, str], Call] = {}
        # These three keep a finished call for the 32 s its transactions linger (32 R entries
        # at R calls/s): sharded (edge.sip.tables).
        self._by_b_call_id: ShardedDict[str, Call] = ShardedDict()
        self._by_a_txn: ShardedDict[ServerInviteTransaction, Call] = ShardedDict()
        self._relays: dict[ClientTransaction, _Relay] = {}
        self._b_invites: ShardedDict[ClientTransaction, Call] = ShardedDict()
        self._challenges = Challenges(self.settings.challenge_timeout)
        self._sweep = _RegistrarSweep()
        # Ended anchored calls whose CDR waits for their media session's statistics.
        self._media_ending: dict[str, tuple[CallDetailRecord, bool]] = {}
        self._out: list[Output] = []

    # --- the runtime's interface ------------------------------------------------------------

    @property
    def active_calls(self) -> int:
        return len(self._calls)

    def held(self) -> int:
        """Calls and transactions in memory: what an edge that has gone quiet has few of."""
        return len(self._calls) + len(self._admitting) + len(self.layer)

    def release_memory(self) -> None:
        """Rebuild the tables of calls and transactions at their present size. A CPython dict
        keeps the table of its busiest moment when its entries go (a few MiB in all after 5,000
        calls, issue 15); the runtime calls this when the edge has gone quiet
        (edge/runtime/gc_policy.py), where it costs O(what is held), which is little."""
        self._calls = dict(self._calls)
        self._admitting = dict(self._admitting)
        self._by_a_dialog = dict(self._by_a_dialog)
        self._by_b_call_id.compact()
        self._by_a_txn.compact()
        self._relays = dict(self._relays)
        self._b_invites.compact()
        self._media_ending = dict(self._media_ending)
        self._timers.shrink()
        self.layer.release_memory()

    def apply_config(self, config: EdgeConfig) -> None:
        """Use `config` for new calls; calls in progress keep the trunk they started with.

        Registrations of trunks that may no longer register (deleted, suspended, registration
        no longer allowed, customer suspended) go at once: no call is routed to them again.
        """
        if config.realm != self.config.realm:
            self.digest = DigestServer(self._digest_secret, config.realm)
        self.config = config
        self.registrar.retain(lambda trunk_id: _may_register(config, trunk_id))

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
            if message.body and message.headers.get("Content-Type") is None:
                # RFC 3261 20.15: a body needs its type; nothing could relay it.
                raise RemoteProtocolError("Missing Content-Type", status_hint=400)
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

    def slot_decided(self, decision: SlotDecision, now: float, wall: float) -> list[Output]:
        """The answer to an `AcquireSlot`: at once from this edge's counters, or later from
        the cluster's. For a call that ended meanwhile it changes nothing: its `ReleaseSlot`
        went out when it ended, and gives back a slot granted after it."""
        out = self._out = []
        call = self._admitting.get(decision.call_id)
        if call is not None:
            if isinstance(decision, SlotGranted):
                granted = (
                    CallInput.SLOT_GRANTED_ANCHORED if call.anchored else CallInput.SLOT_GRANTED
                )
                self._step(call, granted, None, now, wall)
            else:
                self._step(call, CallInput.SLOT_REFUSED, decision.reason, now, wall)
        return out

    def media_decided(self, decision: MediaDecision, now: float, wall: float) -> list[Output]:
        """rtpengine's answer to a `MediaOffer` or `MediaAnswer`. One the call no longer waits
        for (overtaken, or the call is over) changes nothing."""
        out = self._out = []
        call = self._calls.get(decision.call_id)
        if call is not None and call.media_held is not None and decision.op == call.media_op:
            if isinstance(decision, MediaReady):
                call.media_engine = decision.engine
                self._step(call, CallInput.MEDIA_READY, decision.sdp, now, wall)
            else:
                self._step(call, CallInput.MEDIA_FAILED, decision.reason, now, wall)
        return out

    def media_deleted(self, stats: MediaStats, now: float, wall: float) -> list[Output]:
        """The answer to a `MediaDelete`: the ended call's CDR goes out, with the session's
        statistics when rtpengine gave them."""
        out = self._out = []
        ending = self._media_ending.pop(stats.call_id, None)
        if ending is not None:
            record, srtp = ending
            if stats.summary is not None:
                summary = dict(stats.summary)
                summary["mode"] = "srtp" if srtp else "rtp"
                record.media = cdr.clean_media(summary)
            out.append(CdrReady(record))
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
            if isinstance(item, Retransmitter):
                for send in item.inner.on_timer(now):
                    self._transmit(send.message, send.addr)
                if item.inner.timed_out:
                    self._step(item.call, CallInput.ACK_TIMEOUT, None, now, wall)
                self._timers.update(item, item.next_timer())
            elif isinstance(item, PendingChallenge):
                self._challenge_expired(item)
            elif isinstance(item, _RegistrarSweep):
                self.registrar.purge(now)
                item.deadline = now + PURGE_INTERVAL if len(self.registrar) else None
                self._timers.update(item, item.next_timer())
            elif item.deadline is not None and now >= item.deadline:
                item.deadline = None
                self._step(item, _DEADLINE_INPUT[item.state], None, now, wall)
                self._timers.update(item, item.next_timer())
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
                "setup_at": cdr.iso_utc(c.setup_at),
                "answer_at": cdr.iso_utc(c.answer_at),
                "media": {
                    "mode": "anchor" if c.anchored else "passthrough",
                    "engine": c.media_engine,
                    # leg -> the address that side was told to send its media to
                    "addresses": dict(c.media_addresses),
                    "srtp": c.customer_srtp,
                },
            }
            for c in self._calls.values()
        ]

    def hangup(
        self, call_id: str, now: float, wall: float, reason: str = "operator_hangup"
    ) -> list[Output] | None:
        """End a call on the control plane's request, for `reason` (a key of
        `edge.calls.HANGUP_REASONS`: the operator's, or `no_credit`); None if there is no such
        call."""
        event = HANGUP_REASONS[reason]
        call = self._calls.get(call_id)
        if call is None:
            return None
        out = self._out = []
        self._step(call, event, None, now, wall)
        return out

    def close(self, now: float, wall: float) -> list[Output]:
        """At shutdown: end what is still open, so every attempt has its CDR."""
        out = self._out = []
        for call in [*self._admitting.values(), *self._calls.values()]:
            self._step(call, CallInput.SHUTDOWN, None, now, wall)
        for pending in self._challenges.waiting():
            self._challenge_expired(pending)
        # No statistics will be waited for at shutdown: every CDR goes now.
        for record, _ in self._media_ending.values():
            out.append(CdrReady(record))
        self._media_ending.clear()
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
            and txn.state in _AWAITING_FINAL
        ):
            self._respond(txn, request, error.status_hint, error.reason, now, to_tag=new_tag())

    def _forget(self, transaction: object) -> None:
        if isinstance(transaction, ClientTransaction):
            self._relays.pop(transaction, None)
            call = self._b_invites.pop(transaction)
            if (
                call is not None
                and call.state is CallState.ENDED
                and call.b is not None
                and call.b_txn is transaction
            ):
                # Nothing of this call's B leg can arrive any more.
                self._by_b_call_id.pop(call.b.call_id)
        elif isinstance(transaction, ServerInviteTransaction):
            self._by_a_txn.pop(transaction)

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
        config = self.config
        ip = source[0]
        carrier = config.is_carrier_source(ip)
        trunk = None if carrier else config.trunk_for_source(ip)
        incoming = Incoming(request, txn, source, carrier or trunk is not None)
        if request.call_id in self._by_b_call_id:  # one of our own B legs came back to us
            self._refuse(incoming, None, LOOP_DETECTED, now, wall)
            return
        if (request.max_forwards if request.max_forwards is not None else 70) <= 0:
            self._refuse(incoming, None, reject("too_many_hops"), now, wall)
            return
        if self.draining:
            self._refuse(incoming, None, reject("draining"), now, wall)
            return
        if carrier:
            self._inbound(incoming, now, wall)
            return
        if trunk is None and not config.has_credentials:
            # No trunk authenticates by digest: a challenge could only ever fail.
            self._refuse(incoming, None, reject("acl_denied"), now, wall)
            return
        if trunk is None:
            trunk = self._authenticate(incoming, now, wall)
            if trunk is None:
                return
            incoming.identified = True
        self._outbound(incoming, trunk, now, wall)

    def _authenticate(self, incoming: Incoming, now: float, wall: float) -> TrunkPolicy | None:
        """The trunk whose credentials the INVITE proves, or None once it has been answered
        (407 challenge, or 403 for wrong credentials: the same for unknown users)."""
        request = incoming.request
        outcome, credential = self._check_digest(
            request, "Proxy-Authorization", incoming.source, now, wall
        )
        if outcome is _Auth.OK and credential is not None:
            self._challenges.settle(request.call_id)
            return self.config.trunk(credential.trunk_id)
        if outcome is _Auth.FAILED:
            self._challenges.settle(request.call_id)
            self._refuse(incoming, None, reject("auth_failed"), now, wall)
        else:
            self._challenge(incoming, now, wall, stale=outcome is _Auth.STALE)
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

    def _challenge(self, incoming: Incoming, now: float, wall: float, *, stale: bool) -> None:
        headers = [
            ("Proxy-Authenticate", value)
            for value in self.digest.challenge(
                wall, algorithms=self.settings.challenge_algorithms, stale=stale
            )
        ]
        request = incoming.request
        self._respond(incoming.txn, request, 407, None, now, to_tag=new_tag(), headers=headers)
        pending = self._challenges.challenged(request, incoming.source, now, wall)
        self._timers.update(pending, pending.next_timer())

    def _challenge_expired(self, pending: PendingChallenge) -> None:
        """No authenticated retry came: the attempt ends as refused for lack of credentials."""
        if not self._challenges.expire(pending):
            return
        self.stats.attempts_total += 1
        self._bump_refusal("auth_required")
        self._out.append(
            CdrReady(
                self._refusal_record(
                    pending.request, pending.source, None, pending.wall, 407, "auth_required",
                    direction="outbound",
                )
            )
        )  # fmt: skip

    def _outbound(self, incoming: Incoming, trunk: TrunkPolicy, now: float, wall: float) -> None:
        request = incoming.request
        callee_raw = callee_user(request)
        caller_raw = caller_user(request)
        callee = numbering.to_e164(callee_raw, trunk.default_country)
        caller = numbering.to_e164(caller_raw, trunk.default_country)
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
            self.config.customer_numbers(trunk.customer_id),
        )
        if not isinstance(decision, Admit):
            self._refuse(incoming, trunk, decision, now, wall)
            return
        if (
            trunk.srtp == "required"
            and self._anchors(trunk, request)
            and not offers_srtp(request.body)
        ):
            self._refuse(incoming, trunk, reject("srtp_required"), now, wall)
            return
        assert callee is not None
        targets = routing.outbound_targets(self.config.gateways_for(callee), callee, self.rng)
        self._start(
            incoming, trunk, "outbound", caller, callee, caller_raw, callee_raw, targets, now, wall
        )

    def _inbound(self, incoming: Incoming, now: float, wall: float) -> None:
        request = incoming.request
        region = self.settings.inbound_default_region
        callee_raw = callee_user(request)
        caller_raw = caller_user(request)
        callee = numbering.to_e164(callee_raw, region)
        if callee is None and callee_raw.isdigit():
            callee = numbering.to_e164("+" + callee_raw, region)  # international without "+"
        caller = numbering.to_e164(caller_raw, region)
        number = self.config.number(callee) if callee else None
        trunk = self.config.trunk(number.trunk_id) if number and number.trunk_id else None
        customer = self.config.customer(number.customer_id) if number else None
        decision = admit_inbound(number, trunk, customer)
        if not isinstance(decision, Admit):
            self._refuse(incoming, trunk, decision, now, wall, direction="inbound")
            return
        assert trunk is not None and callee is not None
        contacts = self.registrar.contacts(trunk.id, now)
        targets = routing.inbound_targets(trunk, callee, contacts, self.rng)
        self._start(
            incoming, trunk, "inbound", caller, callee, caller_raw, callee_raw, targets, now, wall
        )

    def _refuse(
        self,
        incoming: Incoming,
        trunk: TrunkPolicy | None,
        refusal: Reject,
        now: float,
        wall: float,
        *,
        direction: str = "outbound",
    ) -> None:
        """Answer a call attempt we will not carry, and write its one CDR."""
        self._answer_refusal(incoming, refusal, now)
        self._out.append(
            CdrReady(
                self._refusal_record(
                    incoming.request, incoming.source, trunk, wall, refusal.code, refusal.reason,
                    direction=direction,
                )
            )
        )  # fmt: skip

    def _answer_refusal(self, incoming: Incoming, refusal: Reject, now: float) -> None:
        """The final answer of a refused attempt: identified callers learn the reason (RFC 3326
        `Reason`); unidentified sources only the status."""
        self.stats.attempts_total += 1
        self._bump_refusal(refusal.reason)
        headers = [("Retry-After", "1")] if refusal.code == 503 else []
        if incoming.identified:
            headers.append(reason_header(refusal))
        txn, request = incoming.txn, incoming.request
        if txn.state in _AWAITING_FINAL:
            self._respond(
                txn, request, refusal.code, refusal.phrase, now, to_tag=new_tag(), headers=headers
            )

    def _bump_refusal(self, reason: str) -> None:
        refusals = self.stats.refusals_total
        refusals[reason] = refusals.get(reason, 0) + 1

    def _refusal_record(
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
        callee_raw = peer_text(request, callee=True)
        caller_raw = peer_text(request, callee=False)
        return cdr.refusal_record(
            edge=self.node,
            a_call_id=request.call_id,
            source=source,
            trunk_id=trunk.id if trunk else None,
            customer_id=trunk.customer_id if trunk else None,
            direction=direction,
            caller_e164=numbering.to_e164(caller_raw, region) if caller_raw else None,
            callee_e164=numbering.to_e164(callee_raw, region) if callee_raw else None,
            caller_raw=caller_raw,
            callee_raw=callee_raw,
            wall=wall,
            final_code=code,
            reason=reason,
            config_version=self.config.version,
        )

    # --- call set-up --------------------------------------------------------------------------

    def _start(
        self,
        incoming: Incoming,
        trunk: TrunkPolicy,
        direction: str,
        caller: str | None,
        callee: str,
        caller_raw: str,
        callee_raw: str,
        targets: list[routing.Target],
        now: float,
        wall: float,
    ) -> None:
        """An admitted attempt with somewhere to go becomes a call and asks for its slot."""
        if not targets:
            reason = "no_route" if direction == "inbound" else "no_gateway"
            self._refuse(incoming, trunk, reject(reason), now, wall, direction=direction)
            return
        call = Call(
            incoming=incoming,
            direction=direction,
            trunk=trunk,
            caller_e164=caller,
            callee_e164=callee,
            caller_raw=caller_raw,
            callee_raw=callee_raw,
            targets=targets,
            wall=wall,
        )
        call.anchored = self._anchors(trunk, incoming.request)
        self._admitting[call.id] = call
        self._by_a_txn[incoming.txn] = call
        self._respond(incoming.txn, incoming.request, 100, None, now)
        # Inbound calls take a channel but no CPS token (see edge.policy.admit_inbound).
        self._out.append(AcquireSlot(call.id, trunk, direction == "outbound"))

    def _anchors(self, trunk: TrunkPolicy, invite: Request) -> bool:
        """Whether the call's media goes through rtpengine. An INVITE without SDP (a delayed
        offer) is carried with its SDP untouched: see docs/media.md."""
        return bool(invite.body) and anchors(trunk, self.settings.media_engines)

    def _customer_leg(self, call: Call) -> str:
        return "a" if call.direction == "outbound" else "b"

    def _ask_media(
        self,
        call: Call,
        kind: type[MediaOffer | MediaAnswer],
        leg: str,
        sdp: bytes,
        params: dict[str, object],
        held: object,
    ) -> None:
        call.media_op += 1
        call.media_held = held
        self._out.append(kind(call.id, call.media_op, leg, sdp, params))

    def _local(self, transport: str) -> Address:
        """Our address as written in Via, Contact, From and Call-ID (IPv6 in brackets)."""
        host, port, name = self.local.get(transport) or self.local["udp"]
        return (bracket_host(host), port, name)

    def _via(self, transport: str) -> str:
        return self._via_of(transport)[0]

    def _via_of(self, transport: str) -> tuple[str, tuple[str, str]]:
        """Our Via with a fresh branch, and (branch, transport) for `TransactionLayer.
        send_request`, which then need not parse back the Via we just wrote."""
        host, port, _ = self._local(transport)
        branch = new_branch()
        sent = transport.upper()
        return f"SIP/2.0/{sent} {host}:{port};branch={branch};rport", (branch, sent)

    def _contact(self, transport: str) -> str:
        return f"<{self._contact_uri(transport)}>"

    def _contact_uri(self, transport: str) -> str:
        """The URI of our Contact, as a dialog keeps it (given to the dialogs we build, which
        would otherwise parse it back out of the message we wrote it into)."""
        host, port, _ = self._local(transport)
        suffix = "" if transport == "udp" else f";transport={transport}"
        return f"sip:{host}:{port}{suffix}"

    def _try_next_target(self, call: Call, now: float, wall: float) -> None:
        """Send the B-leg INVITE to the next target; the caller's leg stays as it is."""
        target = call.targets.pop(0)
        host = self._local(target.transport)[0]
        a_invite = call.a_invite
        if call.b is None:
            call.b = Leg(new_call_id(host), new_tag(), (target.host, target.port, target.transport))
        else:
            call.b.addr = (target.host, target.port, target.transport)
            call.b.dialog = None  # the previous target's early dialog, if any, is over
        call.b_cseq += 1
        from_user = call.caller_e164 or call.caller_raw or "anonymous"
        headers = crossing_headers(a_invite, END_TO_END_HEADERS)
        content_type = a_invite.headers.get("Content-Type")
        via, sent_via = self._via_of(target.transport)
        invite = make_request(
            "INVITE",
            target.request_uri,
            from_=f"<sip:{from_user}@{host}>;tag={call.b.local_tag}",
            to=f"<{target.request_uri}>",
            call_id=call.b.call_id,
            cseq=call.b_cseq,
            via=via,
            max_forwards=max((a_invite.max_forwards or 70) - 1, 0),
            contact=self._contact(target.transport),
            headers=headers,
            body=call.media_sdp if call.anchored and call.media_sdp else a_invite.body,
            content_type=content_type,
        )
        call.b_invite = invite
        call.routes.append(
            {"target": target.ref, "kind": target.kind, "status": None, "reason": "pending"}
        )
        self._by_b_call_id[call.b.call_id] = call
        client, events = self.layer.send_request(invite, call.b.addr, now, via=sent_via)
        call.b_txn = client
        self._b_invites[client] = call
        self._send_events(events)

    # --- responses ----------------------------------------------------------------------------

    def _on_response(self, event: DeliverToTU, response: Response, now: float, wall: float) -> None:
        txn = event.transaction
        if not isinstance(txn, ClientTransaction):
            return
        call = self._b_invites.get(txn)
        if call is not None:
            status = response.status
            if status < 200:
                step = CallInput.B_PROVISIONAL
            elif status < 300:
                anchored = call.anchored and response.body
                step = CallInput.B_ANSWER_ANCHORED if anchored else CallInput.B_ANSWER
            elif call.targets and routing.should_fail_over(status, call.trunk.failover_stop_codes):
                step = CallInput.B_FAILOVER
            else:
                step = CallInput.B_REJECTED
            self._step(call, step, response, now, wall)
            return
        relay = self._relays.get(txn)
        if relay is not None:
            self._on_relay_response(relay, response, now)
        # Responses to our BYEs and CANCELs need nothing more.

    def _on_client_failure(self, txn: object, now: float, wall: float) -> None:
        """Timer B/F fired or the transport failed: a timed-out route (or a relay that dies)."""
        if not isinstance(txn, ClientTransaction):
            return
        call = self._b_invites.get(txn)
        if call is not None:
            if call.b_txn is txn:  # not the INVITE of a target already given up
                step = CallInput.B_FAILOVER if call.targets else CallInput.B_TIMED_OUT
                self._step(call, step, None, now, wall)
            return
        relay = self._relays.pop(txn, None)
        if relay is not None:
            request = relay.server_txn.request
            self._respond(relay.server_txn, request, 408, None, now)

    # --- acknowledgements ---------------------------------------------------------------------

    def _on_ack(self, ack: Request, now: float) -> None:
        """An ACK for a 2xx we sent: stop resending that 2xx, and acknowledge the other leg."""
        call = self._call_of_request(ack)
        if call is None or call.state is not CallState.ANSWERED:
            return
        leg, other = self._legs(call, ack)
        if leg.dialog is not None and not leg.dialog.matches(ack):
            return  # same Call-ID, tags of no dialog: an ACK is never answered
        if leg is call.a and ack.cseq[0] == call.a_cseq:
            retransmitter = call.a_retransmitter
            if retransmitter is not None:
                retransmitter.inner.acknowledged()
                self._timers.update(retransmitter, retransmitter.next_timer())
            if call.b_ack is None:  # a retransmitted ACK is absorbed here
                self._ack_b(call, ack.body, ack.headers.get("Content-Type"))
            if retransmitter is not None:
                self._settle(call)
        elif other.dialog is not None and other.dialog.can_acknowledge:  # relayed re-INVITE
            content_type = ack.headers.get("Content-Type") if ack.body else None
            relayed = other.dialog.create_request(
                "ACK", via=self._via(other.addr[2]), body=ack.body, content_type=content_type
            )
            self._transmit(relayed, other.addr)

    def _settle(self, call: Call) -> None:
        """The answered call is acknowledged on both legs: from now to its BYE (minutes, for
        thousands of calls) it needs its dialogs, not the messages that set it up. Their parse
        goes (their bytes stay, for the resends its lingering transactions may still make; a
        later read parses again) and so does the 2xx resender, which refers back to the call."""
        call.a_invite.forget_parsed()
        for message in (call.b_invite, call.b_ack):
            if message is not None:
                message.forget_parsed()
        call.a_head = None
        retransmitter = call.a_retransmitter
        if retransmitter is not None:
            retransmitter.inner.response.forget_parsed()
            call.a_retransmitter = None
        call.a_txn.answer_done()  # nor does the A leg's INVITE transaction need the 2xx

    def _ensure_b_dialog(self, call: Call, response: Response) -> None:
        b = call.b
        assert b is not None and call.b_invite is not None
        if b.dialog is None or b.dialog.remote_tag != response.to_tag:
            local_target = self._contact_uri(b.addr[2])
            b.dialog = Dialog.as_uac(call.b_invite, response, local_target=local_target)
        else:
            b.dialog.update_from_response(response)

    def _relay_to_a(
        self, call: Call, response: Response, now: float, body: bytes | None = None
    ) -> Response:
        """Relay a B-leg response to the caller's INVITE.

        What RFC 3261 8.2.6 copies from the INVITE (every Via, From, To with our tag, Call-ID,
        CSeq) and our Contact are the same in every response of the call: the first relayed
        response is built by `make_response` and its bytes, from after the status line to
        before the headers that vary, kept as the call's template (`Call.a_head`); later ones
        (a 180 after a 183, the 200) are status line + template + the B response's crossing
        headers and Content-Type + Content-Length + body, the same bytes `make_response` would
        give, without building its header list or serialising it. The Response handed to the
        transaction is read from those bytes only if something reads its headers, which the
        answer path does not (`Dialog.answering`). Figures: this module's docstring.
        """
        status = response.status
        reason = response.reason
        if body is None:
            body = response.body
        extra = crossing_headers(response, END_TO_END_HEADERS)
        content_type = response.headers.get("Content-Type")
        if content_type and body:
            extra.append(("Content-Type", content_type))
        tail = "".join([f"{name}: {value}\r\n" for name, value in extra])
        tail += f"Content-Length: {len(body)}\r\n\r\n"
        tail_bytes = tail.encode("utf-8", "surrogateescape") + body
        head = call.a_head
        if head is not None:
            start = f"SIP/2.0 {status} {reason}\r\n".encode("utf-8", "surrogateescape")
            a_response = Response(status, reason, body=body, raw=start + head + tail_bytes)
            a_response.forget_parsed()  # parsed from its bytes only if read
        else:
            contact = ("Contact", self._contact(call.source[2]))
            a_response = make_response(
                call.a_invite,
                status,
                reason,
                to_tag=call.a.local_tag,
                headers=[contact, *extra],
                body=body,
            )
            data = a_response.to_bytes()
            if data.endswith(tail_bytes):  # always, unless make_response changes its layout
                call.a_head = data[data.index(b"\r\n") + 2 : len(data) - len(tail_bytes)]
        self._count_response(call.a_invite, status)
        self._send_events(self.layer.send_response(call.a_txn, a_response, now))
        return a_response

    def _ack_b(self, call: Call, body: bytes = b"", content_type: str | None = None) -> None:
        b = call.b
        assert b is not None and b.dialog is not None
        if call.b_ack is None:
            call.b_ack = b.dialog.create_request(
                "ACK", via=self._via(b.addr[2]), body=body, content_type=content_type
            )
        self._transmit(call.b_ack, b.addr)

    def _ack_and_bye_stray(self, call: Call, response: Response, now: float) -> None:
        """A 2xx for a call already over (a retransmission, or a late answer): ACK it again,
        and if it opened a dialog we never used, close that dialog."""
        b = call.b
        if b is None or call.b_invite is None:
            return
        # The answer we acknowledged (an ACK is built only in its dialog, which a call over
        # has let go: `_end` kept its remote tag).
        acknowledged = b.dialog.remote_tag if b.dialog is not None else b.remote_tag
        if call.b_ack is not None and response.to_tag == acknowledged:
            self._transmit(call.b_ack, b.addr)
            return
        dialog = Dialog.as_uac(call.b_invite, response)
        self._transmit(dialog.create_request("ACK", via=self._via(b.addr[2])), b.addr)
        bye = dialog.create_request("BYE", via=self._via(b.addr[2]))
        _, events = self.layer.send_request(bye, b.addr, now)
        self._send_events(events)

    def _call_of_request(self, request: Request) -> Call | None:
        call = self._by_b_call_id.get(request.call_id)
        if call is not None:
            return call
        to_tag = request.to_tag
        return self._by_a_dialog.get((request.call_id, to_tag)) if to_tag else None

    def _legs(self, call: Call, request: Request) -> tuple[Leg, Leg]:
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
        # Once answered it is too late (the table has no such transition): the caller gets the
        # 2xx and must BYE.
        self._step(call, CallInput.CALLER_CANCEL, None, now, wall)

    def _cancel_b(self, call: Call, now: float) -> None:
        """CANCEL the pending B-leg INVITE if it has had a provisional (RFC 3261 9.1); before
        that, the first provisional to arrive brings the call here again (ENDED, B_PROVISIONAL)."""
        txn = call.b_txn
        b = call.b
        if (
            txn is None
            or b is None
            or call.b_invite is None
            or call.b_cancel is not None
            or txn.state is not TransactionState.PROCEEDING
        ):
            return
        call.b_cancel, events = self.layer.send_request(make_cancel(call.b_invite), b.addr, now)
        self._send_events(events)

    def _fail_a(
        self,
        call: Call,
        status: int,
        reason: str | None,
        now: float,
        headers: Iterable[tuple[str, str]] | None = None,
    ) -> None:
        """Answer the caller's INVITE with a final error, if it is still unanswered."""
        if call.a_txn.state in _AWAITING_FINAL:
            self._respond(
                call.a_txn,
                call.a_invite,
                status,
                reason,
                now,
                to_tag=call.a.local_tag,
                headers=headers,
            )

    def _on_in_dialog(
        self, request: Request, txn: ServerTransaction, now: float, wall: float
    ) -> None:
        call = self._call_of_request(request)
        if call is None or call.state is not CallState.ANSWERED or call.b is None:
            self._respond(txn, request, 481, None, now)
            return
        leg, other = self._legs(call, request)
        if leg.dialog is None or other.dialog is None:
            self._respond(txn, request, 481, None, now)
            return
        leg.dialog.receive_request(request)
        if request.method == "BYE":
            self._respond(txn, request, 200, None, now)
            bye = CallInput.CALLER_BYE if leg is call.a else CallInput.CALLEE_BYE
            self._step(call, bye, request, now, wall)
            return
        if request.method == "INVITE":
            self._respond(txn, request, 100, None, now)
        if call.anchored and request.body and request.method in ("INVITE", "UPDATE"):
            if call.media_held is not None:  # one offer at a time (RFC 3261 14.2 glare)
                self._respond(txn, request, 491, None, now)
                return
            # Hold or resume: rtpengine rewrites the new offer before it is relayed.
            sender = "a" if leg is call.a else "b"
            receiver = "b" if sender == "a" else "a"
            customer = receiver == self._customer_leg(call)
            params = offer_params(
                call.trunk,
                to_customer=customer,
                customer_srtp=call.customer_srtp if customer else None,
            )
            self._ask_media(
                call, MediaOffer, sender, request.body, params, _Reoffer(request, txn, leg)
            )
            return
        self._relay_in_dialog(call, request, txn, leg, request.body, now, wall)

    def _relay_in_dialog(
        self,
        call: Call,
        request: Request,
        txn: ServerTransaction,
        leg: Leg,
        body: bytes,
        now: float,
        wall: float,
    ) -> None:
        other = call.b if leg is call.a else call.a
        assert other is not None and other.dialog is not None
        content_type = request.headers.get("Content-Type")
        headers = crossing_headers(request, END_TO_END_HEADERS)
        via, sent_via = self._via_of(other.addr[2])
        relayed = other.dialog.create_request(
            request.method,
            via=via,
            headers=headers,
            body=body,
            content_type=content_type if body else None,
        )
        client, events = self.layer.send_request(relayed, other.addr, now, via=sent_via)
        self._relays[client] = _Relay(call, txn, leg)
        self._handle_events(events, now, wall)

    def _on_relay_response(self, relay: _Relay, response: Response, now: float) -> None:
        call = relay.call
        other = call.b if relay.to_leg is call.a else call.a
        if other is not None and other.dialog is not None:
            other.dialog.update_from_response(response)
        if response.status == 100:
            return
        if (
            call.anchored
            and response.body
            and relay.server_txn.request.body  # the answer to an offer rtpengine rewrote
            and 200 <= response.status < 300
            and call.state is CallState.ANSWERED
            and call.media_held is None
        ):
            # The answer to a relayed offer: rtpengine rewrites it before it goes back.
            answerer = "a" if relay.to_leg is call.b else "b"
            self._ask_media(
                call, MediaAnswer, answerer, response.body, answer_params(), (relay, response)
            )
            return
        self._answer_relay(relay, response, response.body, now)

    def _answer_relay(self, relay: _Relay, response: Response, body: bytes, now: float) -> None:
        request = relay.server_txn.request
        headers = [("Contact", self._contact(relay.to_leg.addr[2]))]
        content_type = response.headers.get("Content-Type")
        if content_type and body:
            headers.append(("Content-Type", content_type))
        answer = make_response(
            request, response.status, response.reason, headers=headers, body=body
        )
        self._count_response(request, response.status)
        self._send_events(self.layer.send_response(relay.server_txn, answer, now))

    def _bye(self, call: Call, leg: Leg | None, now: float) -> None:
        if leg is None or leg.dialog is None or leg.dialog.state is DialogState.TERMINATED:
            return
        if leg.dialog.state is DialogState.EARLY:
            return
        via, sent_via = self._via_of(leg.addr[2])
        bye = leg.dialog.create_request("BYE", via=via)
        _, events = self.layer.send_request(bye, leg.addr, now, via=sent_via)
        self._send_events(events)

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
            self._respond(
                txn,
                request,
                decision.code,
                decision.phrase,
                now,
                to_tag=new_tag(),
                headers=[reason_header(decision)],  # authenticated: the trunk is known
            )
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
                    headers=[
                        ("Min-Expires", str(MIN_EXPIRES)),
                        reason_header(reject("interval_too_brief")),
                    ],
                )
                return
            granted.append((str(contact.uri), expires))
        for uri, expires in granted:
            self.registrar.register(
                trunk.id, uri, expires, now, source=(source[0], source[1]), transport=source[2]
            )
        if self._sweep.deadline is None and len(self.registrar):
            self._sweep.deadline = now + PURGE_INTERVAL
            self._timers.update(self._sweep, self._sweep.next_timer())
        headers = [("Contact", f"<{uri}>;expires={expires}") for uri, expires in granted if expires]
        self._respond(txn, request, 200, None, now, to_tag=new_tag(), headers=headers)

    # --- the end ------------------------------------------------------------------------------

    def _emit(
        self,
        call: Call,
        kind: str,
        wall: float,
        *,
        reason: str | None = None,
        final_code: int | None = None,
    ) -> None:
        self._out.append(call_event(call, kind, wall, reason=reason, final_code=final_code))

    # --- the call machine -----------------------------------------------------------------------

    def _step(
        self, call: Call, event: CallInput, payload: _Payload, now: float, wall: float
    ) -> None:
        """Feed one input to a call: the only place a call changes state (table `CALL`)."""
        transition = CALL.get((call.state, event))
        if transition is None:
            return  # nothing to do in this state: a retransmission, too late, or over already
        action, next_state = transition
        ended = action(self, call, event, payload, now, wall)
        if next_state is not CallState.ENDED:
            call.state = next_state
        elif call.state is not CallState.ENDED:
            assert ended is not None, (call.state, event)
            call.state = CallState.ENDED
            self._end(call, ended, now, wall)

    def record_so_far(self, call_id: str, wall: float) -> CallDetailRecord | None:
        """The CDR so far of an answered call still up, as if the edge died at `wall` (reason
        `edge_restart`), for edge/runtime/checkpoint.py; None for any other call."""
        call = self._calls.get(call_id)
        if call is None or call.state is not CallState.ANSWERED:
            return None
        return cdr.call_record(
            call,
            edge=self.node,
            end_wall=wall,
            final_code=ENDINGS["edge_restart"].code or 200,
            reason="edge_restart",
            side=ENDINGS["edge_restart"].side,
            config_version=self.config.version,
        )

    def _end(self, call: Call, ended: _Ended, now: float, wall: float) -> None:
        """The way into ENDED: give back the slot, forget the call, write its one CDR."""
        reason, final_code, side = ended
        b_txn = call.b_txn
        # A B-leg INVITE still unanswered (a CANCEL may be on its way) gets 64*T1 to end.
        pending = b_txn is not None and b_txn.state in _UNANSWERED_CLIENT
        call.deadline = now + 64 * self.settings.timers.t1 if pending else None
        started = self._calls.pop(call.id, None) is not None
        if started:
            self.stats.active[call.trunk.id] -= 1
        self._admitting.pop(call.id, None)
        self._by_a_dialog.pop((call.a.call_id, call.a.local_tag), None)
        self._timers.update(call, call.next_timer())
        ends = self.stats.ends_total
        ends[reason] = ends.get(reason, 0) + 1
        out = self._out
        out.append(ReleaseSlot(call.id, call.trunk.id))
        record = cdr.call_record(
            call,
            edge=self.node,
            end_wall=wall,
            final_code=final_code,
            reason=reason,
            side=side,
            config_version=self.config.version,
        )
        call.media_held = None
        if call.media_op:
            # The call has (or may have) a media session: delete it, and write the CDR with
            # its statistics when the answer comes (`media_deleted`; the runtime answers
            # every MediaDelete, with None statistics if rtpengine does not).
            self._media_ending[call.id] = (record, bool(call.customer_srtp))
            out.append(MediaDelete(call.id))
        else:
            out.append(CdrReady(record))
        if started:
            self._emit(call, "ended", wall, reason=reason, final_code=final_code)
        # The call stays reachable while its transactions linger (up to 32 s), only to absorb
        # strays: a resend needs a message's bytes, not its parse.
        call.a_invite.forget_parsed()
        call.a_head = None
        for message in (call.b_invite, call.b_ack):
            if message is not None:
                message.forget_parsed()
        if call.a_retransmitter is not None:
            call.a_retransmitter.inner.response.forget_parsed()
            # It refers back to the call (and stays in the timer queue until acknowledged or
            # timed out); the cycle would leave every finished call to the cyclic garbage
            # collector rather than to reference counting.
            call.a_retransmitter = None
        call.a_txn.answer_done()
        # Nor does it need its dialogs (with their URIs and route sets, about 0.5 KiB each):
        # the A leg's is never read again (its requests now get 481: `_by_a_dialog` forgot
        # it), and of the B leg's a stray 2xx is only compared with the remote tag
        # (`_ack_and_bye_stray`).
        call.a.dialog = None
        b = call.b
        if b is not None and b.dialog is not None:
            b.remote_tag = b.dialog.remote_tag
            b.dialog = None
        # The B leg's Call-ID stays known while its transactions may still answer; it is
        # dropped with them (see _forget) — but a finished call need not be found again.
        if call.b is not None and (b_txn is None or b_txn.state is TransactionState.TERMINATED):
            self._by_b_call_id.pop(call.b.call_id)

    # The actions of the table. Each gets (call, input, payload, now, wall); one that leads to
    # ENDED returns how the call ended, (reason, final code, hangup side).

    def _proceed(
        self, call: Call, event: CallInput, payload: _Payload, now: float, wall: float
    ) -> _Ended | None:
        """The call holds its slot: try the first target."""
        self._start_call(call, now, wall)
        self._try_next_target(call, now, wall)
        return None

    def _start_call(self, call: Call, now: float, wall: float) -> None:
        self._admitting.pop(call.id, None)
        self.stats.attempts_total += 1
        call.codecs = _codecs(call.a_invite)
        self._calls[call.id] = call
        active = self.stats.active
        active[call.trunk.id] = active.get(call.trunk.id, 0) + 1
        self._emit(call, "started", wall)
        call.deadline = now + self.settings.ring_timeout
        self._timers.update(call, call.next_timer())

    def _refuse_slot(
        self, call: Call, event: CallInput, payload: _Payload, now: float, wall: float
    ) -> _Ended | None:
        """No slot: the attempt is refused for the limit it broke."""
        refusal = reject(payload if isinstance(payload, str) else "channel_limit")
        self._by_a_txn.pop(call.a_txn)
        self._answer_refusal(call.incoming, refusal, now)
        return refusal.reason, refusal.code, None

    def _relay_provisional(
        self, call: Call, event: CallInput, payload: _Payload, now: float, wall: float
    ) -> _Ended | None:
        response = payload
        assert isinstance(response, Response)
        if response.status == 100:
            return None  # hop by hop: we said our own
        if response.to_tag is not None:
            self._ensure_b_dialog(call, response)
        if response.status in (180, 183) and call.ringing_at is None:
            call.ringing_at = wall
            self._emit(call, "ringing", wall)
        if call.anchored and response.body and response.to_tag is not None:
            # Early media: the caller gets this provisional once rtpengine has rewritten its
            # SDP (MEDIA_READY in EARLY); one overtaken by the next is never relayed.
            self._ask_media(call, MediaAnswer, "b", response.body, answer_params(), response)
            return None
        self._relay_to_a(call, response, now)
        return None

    def _answer(
        self, call: Call, event: CallInput, payload: _Payload, now: float, wall: float
    ) -> _Ended | None:
        response = payload
        assert isinstance(response, Response)
        self._ensure_b_dialog(call, response)
        self._connect(call, response, None, now, wall)
        return None

    def _connect(
        self, call: Call, response: Response, body: bytes | None, now: float, wall: float
    ) -> None:
        """Relay the 2xx (with `body` for its SDP if given) and start the answered call."""
        call.answer_at = wall
        route = call.routes[-1]
        route["status"] = response.status
        route["reason"] = "answered"
        call.answered_by = route["target"]
        if response.body:
            call.codecs = call.codecs or _codecs(response)
        a_response = self._relay_to_a(call, response, now, body)
        a_invite = call.a_invite
        # The dialog from what _relay_to_a wrote (make_response's To), without reading the
        # response back.
        call.a.dialog = Dialog.answering(
            a_invite,
            status=a_response.status,
            local_tag=call.a.local_tag,
            local_party=answered_to(a_invite, call.a.local_tag),
            local_target=self._contact_uri(call.source[2]),
        )
        self._by_a_dialog[(call.a.call_id, call.a.local_tag)] = call
        inner = AnswerRetransmitter(
            a_response, call.source, now, self.settings.timers, method="INVITE"
        )
        retransmitter = Retransmitter(call, inner)
        if call.a_txn.reliable:
            retransmitter.inner.acknowledged()
        else:
            self._timers.update(retransmitter, retransmitter.next_timer())
        call.a_retransmitter = retransmitter
        call.deadline = now + call.trunk.max_call_duration
        self._timers.update(call, call.next_timer())
        self.stats.answers_total += 1
        self._emit(call, "answered", wall)

    def _fail_over(
        self, call: Call, event: CallInput, payload: _Payload, now: float, wall: float
    ) -> _Ended | None:
        """The target failed (an error answer, or none) and another is left: try it."""
        route = call.routes[-1]
        route["status"] = payload.status if isinstance(payload, Response) else None
        route["reason"] = "failover"
        self._try_next_target(call, now, wall)
        return None

    def _relay_rejection(
        self, call: Call, event: CallInput, payload: _Payload, now: float, wall: float
    ) -> _Ended | None:
        response = payload
        assert isinstance(response, Response)
        route = call.routes[-1]
        route["status"] = response.status
        route["reason"] = "rejected"
        self._fail_a(call, response.status, response.reason, now)
        return "callee_rejected", response.status, ENDINGS["callee_rejected"].side

    def _time_out(
        self, call: Call, event: CallInput, payload: _Payload, now: float, wall: float
    ) -> _Ended | None:
        route = call.routes[-1]
        route["status"] = None
        route["reason"] = "timeout"
        return self._give_up(call, "timeout", now)

    def _cancel(
        self, call: Call, event: CallInput, payload: _Payload, now: float, wall: float
    ) -> _Ended | None:
        """The caller cancelled before the answer: 487 now, and CANCEL the B leg if placed. The
        B leg's 487 (or a 2xx crossing the CANCEL, which is then ACKed and BYEd) may still
        come; for the caller the attempt is over."""
        if call.routes:
            call.routes[-1]["reason"] = "cancelled"
        return self._give_up(call, "cancelled", now)

    def _abandon(
        self, call: Call, event: CallInput, payload: _Payload, now: float, wall: float
    ) -> _Ended | None:
        """The edge ends an unanswered call (operator, no credit, shutdown)."""
        return self._give_up(call, event.value, now)

    def _give_up(self, call: Call, reason: str, now: float) -> _Ended:
        if call.state is CallState.ADMITTING:
            self.stats.attempts_total += 1  # counted here: it never got to _proceed
        ending = ENDINGS[reason]
        assert ending.code is not None
        self._fail_a(call, ending.code, ending.phrase, now)
        self._cancel_b(call, now)
        return reason, ending.code, ending.side

    def _bye_other(
        self, call: Call, event: CallInput, payload: _Payload, now: float, wall: float
    ) -> _Ended | None:
        """One side sent BYE (already answered 200): BYE the other."""
        by_caller = event is CallInput.CALLER_BYE
        self._bye(call, call.b if by_caller else call.a, now)
        return "normal_clearing", 200, "caller" if by_caller else "callee"

    def _bye_both(
        self, call: Call, event: CallInput, payload: _Payload, now: float, wall: float
    ) -> _Ended | None:
        """The edge ends an answered call: BYE on both legs."""
        self._bye(call, call.a, now)
        self._bye(call, call.b, now)
        return event.value, 200, ENDINGS[event.value].side

    def _cancel_late(
        self, call: Call, event: CallInput, payload: _Payload, now: float, wall: float
    ) -> _Ended | None:
        """A provisional for a call over before its B leg had one: the CANCEL can go now."""
        self._cancel_b(call, now)
        return None

    def _drop_b_invite(
        self, call: Call, event: CallInput, payload: _Payload, now: float, wall: float
    ) -> _Ended | None:
        """RFC 3261 9.1: no final answer 64*T1 after the CANCEL: consider the INVITE
        transaction destroyed. The transaction layer has no input for a TU giving up; a
        transport error ends a transaction the same way, and no other part of the call
        listens any more."""
        b_txn = call.b_txn
        if b_txn is not None and b_txn.state in _UNANSWERED_CLIENT:
            self._handle_events(self.layer.transport_error(b_txn, now), now, wall)
        return None

    # --- media anchoring (edge.media) -----------------------------------------------------------

    def _offer_media(
        self, call: Call, event: CallInput, payload: _Payload, now: float, wall: float
    ) -> _Ended | None:
        """The call holds its slot and anchors media: rtpengine rewrites the caller's offer
        before the first target gets it."""
        self._start_call(call, now, wall)
        # Towards a carrier: SRTP if the first gateway asks for it (a failover to a gateway
        # that differs keeps this offer; see docs/media.md).
        first = call.targets[0] if call.targets else None
        params = offer_params(
            call.trunk,
            to_customer=self._customer_leg(call) == "b",
            customer_srtp=None,
            carrier_srtp=first is not None and first.kind == "gateway" and first.srtp,
        )
        self._ask_media(call, MediaOffer, "a", call.a_invite.body, params, call.a_invite)
        return None

    def _send_offered(
        self, call: Call, event: CallInput, payload: _Payload, now: float, wall: float
    ) -> _Ended | None:
        assert isinstance(payload, bytes)
        call.media_held = None
        call.media_sdp = payload
        self._note_address(call, "b", payload)
        self._try_next_target(call, now, wall)
        return None

    def _refuse_media(
        self, call: Call, event: CallInput, payload: _Payload, now: float, wall: float
    ) -> _Ended | None:
        """No rtpengine would take the call: refused rather than connected without audio."""
        refusal = reject("media_unavailable")
        self._bump_refusal(refusal.reason)
        self._fail_a(call, refusal.code, refusal.phrase, now, self._refusal_headers(call, refusal))
        return refusal.reason, refusal.code, "edge"

    def _early_media(
        self, call: Call, event: CallInput, payload: _Payload, now: float, wall: float
    ) -> _Ended | None:
        response = call.media_held
        assert isinstance(response, Response) and isinstance(payload, bytes)
        call.media_held = None
        self._note_address(call, "a", payload)
        self._relay_to_a(call, response, now, payload)
        return None

    def _answer_media(
        self, call: Call, event: CallInput, payload: _Payload, now: float, wall: float
    ) -> _Ended | None:
        """The callee answered with SDP: rtpengine rewrites it before the caller gets the 2xx."""
        response = payload
        assert isinstance(response, Response)
        self._ensure_b_dialog(call, response)
        route = call.routes[-1]
        route["status"] = response.status
        route["reason"] = "answered"
        self._ask_media(call, MediaAnswer, "b", response.body, answer_params(), response)
        return None

    def _connect_anchored(
        self, call: Call, event: CallInput, payload: _Payload, now: float, wall: float
    ) -> _Ended | None:
        response = call.media_held
        assert isinstance(response, Response) and isinstance(payload, bytes)
        call.media_held = None
        self._note_address(call, "a", payload)
        customer_sdp = payload if self._customer_leg(call) == "a" else response.body
        call.customer_srtp = offers_srtp(customer_sdp)
        self._connect(call, response, payload, now, wall)
        return None

    def _media_lost(
        self, call: Call, event: CallInput, payload: _Payload, now: float, wall: float
    ) -> _Ended | None:
        """rtpengine failed the answer's rewrite: the call cannot have audio. The callee's
        leg is cancelled or (answered) acknowledged and hung up; the caller gets 503."""
        if call.state is CallState.CONNECTING:
            self._drop_b_answer(call, now)
        refusal = reject("media_unavailable")
        self._fail_a(call, refusal.code, refusal.phrase, now, self._refusal_headers(call, refusal))
        self._cancel_b(call, now)
        return refusal.reason, refusal.code, "edge"

    def _abandon_connecting(
        self, call: Call, event: CallInput, payload: _Payload, now: float, wall: float
    ) -> _Ended | None:
        """The call ends (cancel, ring timeout, operator, shutdown) while rtpengine rewrites
        the callee's 2xx: the callee's leg is acknowledged and hung up."""
        self._drop_b_answer(call, now)
        reason = "cancelled" if event is CallInput.CALLER_CANCEL else event.value
        return self._give_up(call, reason, now)

    def _drop_b_answer(self, call: Call, now: float) -> None:
        b = call.b
        if b is None or b.dialog is None:
            return
        self._ack_b(call)
        bye = b.dialog.create_request("BYE", via=self._via(b.addr[2]))
        _, events = self.layer.send_request(bye, b.addr, now)
        self._send_events(events)

    def _renegotiated(
        self, call: Call, event: CallInput, payload: _Payload, now: float, wall: float
    ) -> _Ended | None:
        """rtpengine rewrote an in-dialog offer (hold, resume) or its answer: relay it."""
        held = call.media_held
        call.media_held = None
        assert isinstance(payload, bytes)
        if isinstance(held, _Reoffer):
            receiver = "b" if held.leg is call.a else "a"
            self._note_address(call, receiver, payload)
            self._relay_in_dialog(call, held.request, held.txn, held.leg, payload, now, wall)
        elif isinstance(held, tuple):
            relay, response = held
            self._note_address(call, "a" if relay.to_leg is call.a else "b", payload)
            self._answer_relay(relay, response, payload, now)
        return None

    def _renegotiation_failed(
        self, call: Call, event: CallInput, payload: _Payload, now: float, wall: float
    ) -> _Ended | None:
        """rtpengine failed an in-dialog offer or answer: the requester gets 503 and the
        call keeps the media it had."""
        held = call.media_held
        call.media_held = None
        txn = held.txn if isinstance(held, _Reoffer) else held[0].server_txn  # type: ignore[index]
        if txn.state in _AWAITING_FINAL:
            self._respond(txn, txn.request, 503, None, now)
        return None

    @staticmethod
    def _refusal_headers(call: Call, refusal: Reject) -> list[tuple[str, str]]:
        """As `_answer_refusal` writes them: Retry-After on 503, the reason if identified."""
        headers = [("Retry-After", "1")] if refusal.code == 503 else []
        if call.incoming.identified:
            headers.append(reason_header(refusal))
        return headers

    def _note_address(self, call: Call, leg: str, sdp: bytes) -> None:
        address = media_address(sdp)
        if address is not None:
            call.media_addresses[leg] = address

    def _take_down_stray(
        self, call: Call, event: CallInput, payload: _Payload, now: float, wall: float
    ) -> _Ended | None:
        assert isinstance(payload, Response)
        self._ack_and_bye_stray(call, payload, now)
        return None


_S = CallState
_I = CallInput
# (state, input) -> (action, next state): the only place a call changes state (`B2bua._step`).
# A pair missing here changes nothing: a provisional after the answer, a CANCEL crossing the
# 2xx, a BYE or timer for a call already over. docs/edge-policy.md draws it.
CALL: dict[tuple[CallState, CallInput], tuple[_Action, CallState]] = {
    (_S.ADMITTING, _I.SLOT_GRANTED): (B2bua._proceed, _S.CALLING),
    (_S.ADMITTING, _I.SLOT_REFUSED): (B2bua._refuse_slot, _S.ENDED),
    (_S.ADMITTING, _I.SLOT_GRANTED_ANCHORED): (B2bua._offer_media, _S.OFFERING),
    (_S.OFFERING, _I.MEDIA_READY): (B2bua._send_offered, _S.CALLING),
    (_S.OFFERING, _I.MEDIA_FAILED): (B2bua._refuse_media, _S.ENDED),
    (_S.OFFERING, _I.CALLER_CANCEL): (B2bua._cancel, _S.ENDED),
    (_S.OFFERING, _I.NO_ANSWER): (B2bua._abandon, _S.ENDED),
    (_S.OFFERING, _I.OPERATOR_HANGUP): (B2bua._abandon, _S.ENDED),
    (_S.OFFERING, _I.NO_CREDIT): (B2bua._abandon, _S.ENDED),
    (_S.OFFERING, _I.SHUTDOWN): (B2bua._abandon, _S.ENDED),
    (_S.ADMITTING, _I.CALLER_CANCEL): (B2bua._cancel, _S.ENDED),
    (_S.ADMITTING, _I.SHUTDOWN): (B2bua._abandon, _S.ENDED),
    (_S.CALLING, _I.B_PROVISIONAL): (B2bua._relay_provisional, _S.EARLY),
    (_S.CALLING, _I.B_ANSWER): (B2bua._answer, _S.ANSWERED),
    (_S.CALLING, _I.B_ANSWER_ANCHORED): (B2bua._answer_media, _S.CONNECTING),
    (_S.CALLING, _I.B_FAILOVER): (B2bua._fail_over, _S.CALLING),
    (_S.CALLING, _I.B_REJECTED): (B2bua._relay_rejection, _S.ENDED),
    (_S.CALLING, _I.B_TIMED_OUT): (B2bua._time_out, _S.ENDED),
    (_S.CALLING, _I.CALLER_CANCEL): (B2bua._cancel, _S.ENDED),
    (_S.CALLING, _I.NO_ANSWER): (B2bua._abandon, _S.ENDED),
    (_S.CALLING, _I.OPERATOR_HANGUP): (B2bua._abandon, _S.ENDED),
    (_S.CALLING, _I.NO_CREDIT): (B2bua._abandon, _S.ENDED),
    (_S.CALLING, _I.SHUTDOWN): (B2bua._abandon, _S.ENDED),
    (_S.EARLY, _I.B_PROVISIONAL): (B2bua._relay_provisional, _S.EARLY),
    (_S.EARLY, _I.B_ANSWER): (B2bua._answer, _S.ANSWERED),
    (_S.EARLY, _I.B_ANSWER_ANCHORED): (B2bua._answer_media, _S.CONNECTING),
    (_S.EARLY, _I.MEDIA_READY): (B2bua._early_media, _S.EARLY),
    (_S.EARLY, _I.MEDIA_FAILED): (B2bua._media_lost, _S.ENDED),
    (_S.CONNECTING, _I.MEDIA_READY): (B2bua._connect_anchored, _S.ANSWERED),
    (_S.CONNECTING, _I.MEDIA_FAILED): (B2bua._media_lost, _S.ENDED),
    (_S.CONNECTING, _I.CALLER_CANCEL): (B2bua._abandon_connecting, _S.ENDED),
    (_S.CONNECTING, _I.NO_ANSWER): (B2bua._abandon_connecting, _S.ENDED),
    (_S.CONNECTING, _I.OPERATOR_HANGUP): (B2bua._abandon_connecting, _S.ENDED),
    (_S.CONNECTING, _I.NO_CREDIT): (B2bua._abandon_connecting, _S.ENDED),
    (_S.CONNECTING, _I.SHUTDOWN): (B2bua._abandon_connecting, _S.ENDED),
    (_S.EARLY, _I.B_FAILOVER): (B2bua._fail_over, _S.CALLING),
    (_S.EARLY, _I.B_REJECTED): (B2bua._relay_rejection, _S.ENDED),
    (_S.EARLY, _I.B_TIMED_OUT): (B2bua._time_out, _S.ENDED),
    (_S.EARLY, _I.CALLER_CANCEL): (B2bua._cancel, _S.ENDED),
    (_S.EARLY, _I.NO_ANSWER): (B2bua._abandon, _S.ENDED),
    (_S.EARLY, _I.OPERATOR_HANGUP): (B2bua._abandon, _S.ENDED),
    (_S.EARLY, _I.NO_CREDIT): (B2bua._abandon, _S.ENDED),
    (_S.EARLY, _I.SHUTDOWN): (B2bua._abandon, _S.ENDED),
    (_S.ANSWERED, _I.B_ANSWER): (B2bua._take_down_stray, _S.ANSWERED),
    (_S.ANSWERED, _I.CALLER_BYE): (B2bua._bye_other, _S.ENDED),
    (_S.ANSWERED, _I.CALLEE_BYE): (B2bua._bye_other, _S.ENDED),
    (_S.ANSWERED, _I.ACK_TIMEOUT): (B2bua._bye_both, _S.ENDED),
    (_S.ANSWERED, _I.MAX_DURATION): (B2bua._bye_both, _S.ENDED),
    (_S.ANSWERED, _I.OPERATOR_HANGUP): (B2bua._bye_both, _S.ENDED),
    (_S.ANSWERED, _I.NO_CREDIT): (B2bua._bye_both, _S.ENDED),
    (_S.ANSWERED, _I.SHUTDOWN): (B2bua._bye_both, _S.ENDED),
    (_S.ANSWERED, _I.B_ANSWER_ANCHORED): (B2bua._take_down_stray, _S.ANSWERED),
    (_S.ANSWERED, _I.MEDIA_READY): (B2bua._renegotiated, _S.ANSWERED),
    (_S.ANSWERED, _I.MEDIA_FAILED): (B2bua._renegotiation_failed, _S.ANSWERED),
    (_S.ENDED, _I.B_PROVISIONAL): (B2bua._cancel_late, _S.ENDED),
    (_S.ENDED, _I.B_ANSWER): (B2bua._take_down_stray, _S.ENDED),
    (_S.ENDED, _I.B_ANSWER_ANCHORED): (B2bua._take_down_stray, _S.ENDED),
    (_S.ENDED, _I.B_ABANDONED): (B2bua._drop_b_invite, _S.ENDED),
}


def _may_register(config: EdgeConfig, trunk_id: int) -> bool:
    """Whether `config` still lets the trunk register (the same rule a REGISTER meets)."""
    trunk = config.trunk(trunk_id)
    return trunk is not None and isinstance(admit_register(trunk, config.customer_of(trunk)), Admit)


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
