"""A call as a state machine: its states, the inputs that move it, and how it can end.

The b2bua (edge/b2bua.py) owns one `Call` per admitted call attempt. A call changes state in one
place only, `B2bua._step`, through its transition table `CALL` ((state, input) -> (action, next
state)); a pair missing from the table leaves the call as it is (a retransmission, a CANCEL
after the answer, a BYE for a call already over). Entering `CallState.ENDED` is one function
(`B2bua._end`), which frees the call's slot (`ReleaseSlot`) and emits its one `CdrReady`.

`ENDINGS` is the one table of the ways an admitted call ends (reason -> SIP code, phrase, hangup
side, description), as `edge.policy.REFUSALS` is for refusals: the CDR's `final_code`,
`reason` and `hangup_side`, the metrics' `trunkline_edge_call_ends_total{reason}` and
docs/edge-policy.md come from it.

Pure data and pure functions: no I/O, no clock.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from edge import cdr, routing
from edge.cdr import RouteAttempt
from edge.config import TrunkPolicy
from edge.sip.dialog import AnswerRetransmitter, Dialog
from edge.sip.errors import RemoteProtocolError
from edge.sip.message import Request, new_tag
from edge.sip.transaction import ClientTransaction, ServerInviteTransaction
from edge.sip.uri import parse_name_addr

__all__ = [
    "ENDINGS",
    "HANGUP_REASONS",
    "Address",
    "Call",
    "CallInput",
    "CallState",
    "Ending",
    "Incoming",
    "Leg",
    "Retransmitter",
    "callee_user",
    "caller_user",
    "peer_text",
]

Address = tuple[str, int, str]  # (host, port, transport: "udp" | "tcp" | "tls")


class CallState(enum.Enum):
    __hash__ = object.__hash__  # identity hashing in C, as Timer's (edge/sip/timers.py)
    ADMITTING = "admitting"  # asked for a slot (AcquireSlot), waiting for the answer
    OFFERING = "offering"  # anchored: rtpengine is rewriting the caller's offer (MediaOffer)
    CALLING = "calling"  # B-leg INVITE sent, nothing heard yet: a CANCEL must wait (RFC 3261 9.1)
    EARLY = "early"  # the B leg answered provisionally
    # anchored: the B leg answered 2xx; rtpengine is rewriting the answer (MediaAnswer) before
    # the caller gets it
    CONNECTING = "connecting"
    ANSWERED = "answered"  # a 2xx was relayed to the caller
    ENDED = "ended"  # its CDR is written; strays of its B leg are still absorbed


class CallInput(enum.Enum):
    __hash__ = object.__hash__  # identity hashing in C, as Timer's (edge/sip/timers.py)
    SLOT_GRANTED = "slot_granted"
    SLOT_GRANTED_ANCHORED = "slot_granted_anchored"  # granted, and the call's media is anchored
    SLOT_REFUSED = "slot_refused"
    B_PROVISIONAL = "b_provisional"  # 1xx to the B-leg INVITE (100 included)
    B_ANSWER = "b_answer"  # 2xx to the B-leg INVITE (the first, a retransmission or a fork's)
    B_ANSWER_ANCHORED = "b_answer_anchored"  # a 2xx with SDP on an anchored call
    B_FAILOVER = "b_failover"  # the target failed (error or timeout) and another one is left
    B_REJECTED = "b_rejected"  # the last target answered with an error
    B_TIMED_OUT = "b_timed_out"  # the last target never answered (timer B, transport error)
    CALLER_CANCEL = "caller_cancel"
    CALLER_BYE = "caller_bye"
    CALLEE_BYE = "callee_bye"
    NO_ANSWER = "no_answer"  # nobody answered within the ring timeout (Timer C)
    ACK_TIMEOUT = "ack_timeout"  # the caller never acknowledged our 2xx
    MAX_DURATION = "max_duration"
    OPERATOR_HANGUP = "operator_hangup"
    NO_CREDIT = "no_credit"  # the control plane ends a prepaid customer's call: money ran out
    SHUTDOWN = "shutdown"
    # Over, but its B-leg INVITE never got a final answer, even to our CANCEL (RFC 3261 9.1:
    # after 64*T1 the transaction is considered destroyed).
    B_ABANDONED = "b_abandoned"
    # rtpengine's answer to the call's pending media operation (edge.media): the rewritten SDP,
    # or a failure (none reachable, a timeout, an error).
    MEDIA_READY = "media_ready"
    MEDIA_FAILED = "media_failed"


@dataclass(frozen=True, slots=True)
class Ending:
    """How calls end for one reason.

    `code`/`phrase`: the final answer a caller still waiting gets (None: the callee's own, as
    relayed); an answered call's record says 200. `side`: who hung up (None: whoever sent the
    BYE, from the input).
    """

    code: int | None
    phrase: str | None
    side: str | None
    description: str


# reason -> how the call ends. Keep docs/edge-policy.md ("How every other attempt ends") in
# step: a test checks that it lists every entry.
ENDINGS: dict[str, Ending] = {
    "normal_clearing": Ending(
        200, None, None, "answered, then a BYE from either side (`hangup_side` says which)"
    ),
    "callee_rejected": Ending(
        None, None, "callee", "every target tried answered with an error; the last is relayed"
    ),
    "timeout": Ending(
        408, "Request Timeout", "edge", "the last target did not answer (timer B)"
    ),
    "no_answer": Ending(
        408, "Request Timeout", "edge",
        "no target answered within the ring timeout (180 s, RFC 3261 Timer C); CANCEL sent",
    ),
    "cancelled": Ending(
        487, "Request Terminated", "caller", "the caller sent CANCEL before the answer"
    ),
    "max_duration": Ending(
        200, None, "edge", "the trunk's `max_call_duration` ended an answered call (BYE to both)"
    ),
    "ack_timeout": Ending(
        200, None, "edge", "the caller never acknowledged our 2xx; the edge ends the call"
    ),
    "operator_hangup": Ending(
        480, "Temporarily Unavailable", "edge", "`DELETE /calls/{id}` on the control API"
    ),
    "no_credit": Ending(
        402, "Payment Required", "edge",
        "`DELETE /calls/{id}?reason=no_credit`: the prepaid customer's balance minus the running "
        "cost of its calls reached zero (docs/billing.md); an answered call gets BYE on both legs",
    ),
    "shutdown": Ending(
        503, "Service Unavailable", "edge", "the edge stopped while the call was up"
    ),
    # Never entered by the machine: the checkpoint (edge/runtime/checkpoint.py) writes it for
    # an answered call the edge died holding, when the edge starts again.
    "edge_restart": Ending(
        200, None, "edge",
        "the edge died (SIGKILL, crash, power) while the answered call was up; written when it "
        "starts again, ending at the last moment its checkpoint knew it alive (at most 5 s "
        "before the death)",
    ),
}  # fmt: skip
# What the control API's hang-up may give as the reason (`DELETE /calls/{id}?reason=...`): the
# input each one feeds the call. Anything else is the caller's error (400).
HANGUP_REASONS: dict[str, CallInput] = {
    "operator_hangup": CallInput.OPERATOR_HANGUP,
    "no_credit": CallInput.NO_CREDIT,
}
# A call whose slot is refused (`channel_limit`, `cps_limit`) ends as a refusal: its code and
# phrase are edge.policy.REFUSALS', not repeated here.


class Incoming:
    """A new request as the b2bua handles it: the message, its server transaction, its source.

    `identified` says whether the edge knows who sent it (a trunk's ACL or a carrier gateway; a
    digest-authenticated trunk sets it later): only those learn why they are refused.
    """

    __slots__ = ("identified", "request", "source", "txn")

    def __init__(
        self, request: Request, txn: ServerInviteTransaction, source: Address, identified: bool
    ) -> None:
        self.request = request
        self.txn = txn
        self.source = source
        self.identified = identified


class Leg:
    """One side of a call: its dialog and where its messages go."""

    __slots__ = ("addr", "call_id", "dialog", "local_tag", "remote_tag")

    def __init__(self, call_id: str, local_tag: str, addr: Address) -> None:
        self.call_id = call_id
        self.local_tag = local_tag
        self.addr = addr
        self.dialog: Dialog | None = None
        # The dialog's remote tag once the call is over and the dialog let go
        # (`B2bua._end`): all a stray 2xx is compared with.
        self.remote_tag: str | None = None


class Call:
    """A call attempt from its admission to its CDR. Only `B2bua._step` sets `state`."""

    __slots__ = (
        "a",
        "a_cseq",
        "a_head",
        "a_invite",
        "a_retransmitter",
        "a_txn",
        "anchored",
        "answer_at",
        "answered_by",
        "b",
        "b_ack",
        "b_cancel",
        "b_cseq",
        "b_invite",
        "b_txn",
        "callee_e164",
        "callee_raw",
        "caller_e164",
        "caller_raw",
        "codecs",
        "customer_id",
        "customer_srtp",
        "deadline",
        "direction",
        "id",
        "incoming",
        "media_addresses",
        "media_engine",
        "media_held",
        "media_op",
        "media_sdp",
        "ringing_at",
        "routes",
        "setup_at",
        "source",
        "state",
        "targets",
        "trunk",
    )

    def __init__(
        self,
        *,
        incoming: Incoming,
        direction: str,
        trunk: TrunkPolicy,
        caller_e164: str | None,
        callee_e164: str,
        caller_raw: str,
        callee_raw: str,
        targets: list[routing.Target],
        wall: float,
    ) -> None:
        self.id = cdr.new_call_id()
        self.state = CallState.ADMITTING
        self.incoming = incoming
        self.a_invite = incoming.request
        # The INVITE's CSeq number: its ACK has it (a re-INVITE's has another). Kept apart so
        # that matching an ACK never parses the INVITE again once its parse is dropped.
        self.a_cseq = incoming.request.cseq[0]
        self.a_txn = incoming.txn
        self.source = incoming.source
        self.direction = direction
        self.trunk = trunk
        self.customer_id = trunk.customer_id
        self.caller_e164 = caller_e164
        self.callee_e164 = callee_e164
        self.caller_raw = caller_raw
        self.callee_raw = callee_raw
        self.setup_at = wall
        self.ringing_at: float | None = None
        self.answer_at: float | None = None
        self.a = Leg(incoming.request.call_id, new_tag(), incoming.source)
        # The header block every response we relay to the INVITE shares (B2bua._relay_to_a),
        # from its first one until the call is answered and acknowledged.
        self.a_head: bytes | None = None
        self.b: Leg | None = None
        self.b_invite: Request | None = None
        self.b_txn: ClientTransaction | None = None
        self.b_cancel: ClientTransaction | None = None  # our CANCEL of the B-leg INVITE
        self.b_ack: Request | None = None
        self.b_cseq = 0
        self.targets = targets
        self.routes: list[RouteAttempt] = []
        self.answered_by: str | None = None
        self.a_retransmitter: Retransmitter | None = None
        self.codecs: list[str] = []
        # Monotonic time of the call's next timer: unanswered, the ring timeout; answered, its
        # maximum duration; ended, when to give up on its B-leg INVITE.
        self.deadline: float | None = None
        # Media anchoring (edge.media). `media_op` numbers the operations asked (0: none, so
        # no session to delete); `media_held` is what waits for the pending one's answer (a
        # response or request to relay once its SDP is rewritten), None when none is pending.
        self.anchored = False
        self.media_op = 0
        self.media_held: object | None = None
        self.media_sdp: bytes | None = None  # the caller's offer as rewritten for the B leg
        self.media_engine: str | None = None
        self.media_addresses: dict[str, str] = {}  # leg -> the address it was told to send to
        self.customer_srtp: bool | None = None

    def next_timer(self) -> float | None:
        return self.deadline


class Retransmitter:
    """The 2xx we sent on the A leg, resent until its ACK arrives (the b2bua's timer item)."""

    __slots__ = ("call", "inner")

    def __init__(self, call: Call, inner: AnswerRetransmitter) -> None:
        self.call = call
        self.inner = inner

    def next_timer(self) -> float | None:
        return self.inner.next_timer()


def callee_user(request: Request) -> str:
    """The number as dialled: the Request-URI's user, else the To URI's."""
    user = request.parsed_uri.unescaped_user
    if user:
        return user
    return request.to.sip_uri.unescaped_user or ""


def caller_user(request: Request) -> str:
    """The caller as given: P-Asserted-Identity's user if readable, else the From URI's."""
    identity = request.headers.get("P-Asserted-Identity")
    if identity is not None:
        try:
            user = parse_name_addr(identity).sip_uri.unescaped_user
            if user:
                return user
        except RemoteProtocolError:
            pass
    return request.from_.sip_uri.unescaped_user or ""


def peer_text(request: Request, *, callee: bool) -> str:
    """`callee_user` or `caller_user` for a record: a malformed header must not cost it."""
    try:
        return callee_user(request) if callee else caller_user(request)
    except RemoteProtocolError:
        return ""
