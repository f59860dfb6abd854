"""SIP dialogs (RFC 3261 section 12): the state two user agents share across transactions.

A `Dialog` is created from the request that opened it and a response carrying a To tag, as
the UAC (12.1.2) or the UAS (12.1.1). It keeps the dialog id, the route set, the remote target
and both CSeq counters; builds in-dialog requests (12.2.1.1, loose and strict routing);
checks incoming requests' CSeq order (12.2.2); and follows early -> confirmed -> terminated
through an explicit transition table. `AnswerRetransmitter` resends a UAS's 2xx to INVITE
until the ACK comes (13.3.1.4), the TU's job since RFC 6026.

No I/O and no clock here: time is the `now` argument; the caller routes messages to dialogs
by `DialogId`.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterable
from dataclasses import dataclass

from edge.sip.errors import LocalProtocolError, RemoteProtocolError
from edge.sip.message import Request, Response, Via, make_request
from edge.sip.timers import TimerConfig
from edge.sip.transaction import Address, SendMessage
from edge.sip.uri import Parameters, parse_name_addr

__all__ = ["AnswerRetransmitter", "Dialog", "DialogId", "DialogState"]

# Requests whose Contact replaces the remote target (RFC 3261 12.2, RFC 3311).
_TARGET_REFRESH_METHODS = frozenset({"INVITE", "UPDATE"})
# Requests that reuse a CSeq number instead of taking the next one (RFC 3261 12.2.1.1).
_CSEQ_REUSING_METHODS = frozenset({"ACK", "CANCEL"})
# Responses after which the UAC terminates the dialog (RFC 3261 12.2.1.2).
_DIALOG_ENDING_STATUSES = frozenset({408, 481})
_INITIAL_LOCAL_CSEQ = 1  # any value below 2**31 will do (8.1.1.5)


class DialogState(enum.Enum):
    __hash__ = object.__hash__  # identity hashing in C, as Timer's (edge/sip/timers.py)
    EARLY = "early"
    CONFIRMED = "confirmed"
    TERMINATED = "terminated"


class _Input(enum.Enum):
    __hash__ = object.__hash__  # identity hashing in C, as Timer's (edge/sip/timers.py)
    PROVISIONAL = "provisional"  # a 101-199 to the INVITE that created the dialog
    ANSWERED = "answered"  # a 2xx to an INVITE
    REJECTED = "rejected"  # a non-2xx final to the INVITE that created the dialog
    ENDING_RESPONSE = "ending_response"  # 408 or 481 to a request we sent
    BYE = "bye"  # sent or received
    OTHER = "other"  # any other in-dialog request or response


_D = DialogState
_TRANSITIONS: dict[tuple[DialogState, _Input], DialogState] = {
    (_D.EARLY, _Input.PROVISIONAL): _D.EARLY,
    (_D.EARLY, _Input.ANSWERED): _D.CONFIRMED,
    (_D.EARLY, _Input.REJECTED): _D.TERMINATED,
    (_D.EARLY, _Input.ENDING_RESPONSE): _D.TERMINATED,
    (_D.EARLY, _Input.BYE): _D.TERMINATED,
    (_D.EARLY, _Input.OTHER): _D.EARLY,
    (_D.CONFIRMED, _Input.ANSWERED): _D.CONFIRMED,  # a re-INVITE's 2xx, or a retransmission
    (_D.CONFIRMED, _Input.ENDING_RESPONSE): _D.TERMINATED,
    (_D.CONFIRMED, _Input.BYE): _D.TERMINATED,
    (_D.CONFIRMED, _Input.OTHER): _D.CONFIRMED,
    # Responses still arrive after a BYE (its own 200, a crossing re-INVITE's answer).
    (_D.TERMINATED, _Input.ANSWERED): _D.TERMINATED,
    (_D.TERMINATED, _Input.ENDING_RESPONSE): _D.TERMINATED,
    (_D.TERMINATED, _Input.OTHER): _D.TERMINATED,
}


@dataclass(slots=True, init=False, eq=False)  # __eq__, __hash__ below
class DialogId:
    """Call-ID plus both tags, seen from our side. The remote tag is None only for an RFC 2543
    peer that sent no From tag."""

    call_id: str
    local_tag: str
    remote_tag: str | None

    def __init__(self, call_id: str, local_tag: str, remote_tag: str | None) -> None:
        self.call_id = call_id
        self.local_tag = local_tag
        self.remote_tag = remote_tag

    # Written out so that they are compiled (a dataclass-made one runs interpreted): dialogs
    # are looked up by id for every message inside one.
    def __eq__(self, other: object) -> bool:
        if not isinstance(other, DialogId):
            return NotImplemented
        return (
            self.call_id == other.call_id
            and self.local_tag == other.local_tag
            and self.remote_tag == other.remote_tag
        )

    def __hash__(self) -> int:
        return hash((self.call_id, self.local_tag, self.remote_tag))

    @classmethod
    def of_received_request(cls, request: Request) -> DialogId:
        """The id of the dialog a request from the peer belongs to (we own its To tag)."""
        local_tag = request.to_tag
        if local_tag is None:
            raise LocalProtocolError("a request without To tag is outside any dialog")
        return cls(request.call_id, local_tag, request.from_tag)

    @classmethod
    def of_received_response(cls, response: Response) -> DialogId:
        """The id of the dialog a response to one of our requests belongs to."""
        local_tag = response.from_tag
        if local_tag is None:
            raise RemoteProtocolError("response without From tag")
        return cls(response.call_id, local_tag, response.to_tag)


def _contact_uri(message: Request | Response) -> str | None:
    contacts = message.contact
    return str(contacts[0].uri) if contacts else None


class Dialog:
    """One dialog, as the UAC or the UAS. Build it with `as_uac` or `as_uas`."""

    __slots__ = (
        "_invite_cseq",
        "call_id",
        "is_uac",
        "local_party",
        "local_seq",
        "local_tag",
        "local_target",
        "remote_party",
        "remote_seq",
        "remote_tag",
        "remote_target",
        "route_set",
        "state",
    )

    def __init__(
        self,
        *,
        is_uac: bool,
        state: DialogState,
        call_id: str,
        local_tag: str,
        remote_tag: str | None,
        local_party: str,
        remote_party: str,
        local_seq: int | None,
        remote_seq: int | None,
        local_target: str | None,
        remote_target: str,
        route_set: Iterable[str],
        invite_cseq: int | None,
    ) -> None:
        self.is_uac = is_uac
        self.state = state
        self.call_id = call_id
        self.local_tag = local_tag
        self.remote_tag = remote_tag
        # From and To values of our in-dialog requests, tags included, kept as written.
        self.local_party = local_party
        self.remote_party = remote_party
        self.local_seq = local_seq
        self.remote_seq = remote_seq
        self.local_target = local_target  # our Contact, repeated in target refresh requests
        self.remote_target = remote_target
        self.route_set = tuple(route_set)
        self._invite_cseq = invite_cseq  # CSeq number of our last INVITE: its ACK reuses it

    @classmethod
    def as_uac(
        cls, request: Request, response: Response, *, local_target: str | None = None
    ) -> Dialog:
        """The dialog a response (101-299 with a To tag) to our `request` creates (12.1.2).

        `local_target`: the URI of the Contact the caller wrote into `request` itself, which
        spares parsing it back (about 12,000 instructions a call, compiled)."""
        if not 101 <= response.status <= 299:
            raise LocalProtocolError("only a 101-299 response creates a dialog")
        remote_tag = response.to_tag
        local_tag = request.from_tag
        if remote_tag is None:
            raise RemoteProtocolError("a dialog-creating response needs a To tag")
        if local_tag is None:
            raise LocalProtocolError("our request has no From tag")
        to = response.headers.get("To")
        from_ = request.headers.get("From")
        if to is None or from_ is None:
            raise LocalProtocolError("request or response lacks From or To")
        cseq, method = request.cseq
        # Dialog(...), not cls(...): a call the compiled core makes directly, where cls(...)
        # with keywords goes through the interpreter's generic call (some 14,000 instructions).
        return Dialog(
            is_uac=True,
            state=DialogState.EARLY if response.status < 200 else DialogState.CONFIRMED,
            call_id=request.call_id,
            local_tag=local_tag,
            remote_tag=remote_tag,
            local_party=from_,
            remote_party=to,
            local_seq=cseq,
            remote_seq=None,
            local_target=_contact_uri(request) if local_target is None else local_target,
            remote_target=_contact_uri(response) or request.uri,
            route_set=reversed(response.headers.get_all("Record-Route")),
            invite_cseq=cseq if method == "INVITE" else None,
        )

    @classmethod
    def as_uas(cls, request: Request, response: Response) -> Dialog:
        """The dialog our `response` (101-299, with our To tag) to `request` creates (12.1.1)."""
        if not 101 <= response.status <= 299:
            raise LocalProtocolError("only a 101-299 response creates a dialog")
        local_tag = response.to_tag
        if local_tag is None:
            raise LocalProtocolError("a dialog-creating response needs our To tag")
        to = response.headers.get("To")
        if to is None:
            raise LocalProtocolError("request or response lacks From or To")
        return Dialog.answering(
            request,
            status=response.status,
            local_tag=local_tag,
            local_party=to,
            local_target=_contact_uri(response),
        )

    @classmethod
    def answering(
        cls,
        request: Request,
        *,
        status: int,
        local_tag: str,
        local_party: str,
        local_target: str | None,
    ) -> Dialog:
        """`as_uas` for a response the caller wrote itself, from what it wrote into it: our
        tag, our To value (`local_party`, tag included) and our Contact's URI. The response is
        not read back: a B2BUA relays its 2xx as prerendered bytes (edge/b2bua.py), and
        reading its To and Contact again would parse it whole (about 60,000 instructions a
        call, compiled, with `as_uas`)."""
        if not 101 <= status <= 299:
            raise LocalProtocolError("only a 101-299 response creates a dialog")
        remote_target = _contact_uri(request)
        if remote_target is None:
            raise RemoteProtocolError("a dialog-creating request needs a Contact")
        from_ = request.headers.get("From")
        if from_ is None:
            raise LocalProtocolError("request or response lacks From or To")
        return Dialog(
            is_uac=False,
            state=DialogState.EARLY if status < 200 else DialogState.CONFIRMED,
            call_id=request.call_id,
            local_tag=local_tag,
            remote_tag=request.from_tag,
            local_party=local_party,
            remote_party=from_,
            local_seq=None,
            remote_seq=request.cseq[0],
            local_target=local_target,
            remote_target=remote_target,
            route_set=request.headers.get_all("Record-Route"),
            invite_cseq=None,
        )

    @property
    def id(self) -> DialogId:
        return DialogId(self.call_id, self.local_tag, self.remote_tag)

    def __repr__(self) -> str:
        role = "UAC" if self.is_uac else "UAS"
        return f"<Dialog {role} {self.state.value} {self.call_id} {self.local_tag}>"

    def _apply(self, what: _Input) -> None:
        next_state = _TRANSITIONS.get((self.state, what))
        if next_state is None:
            raise LocalProtocolError(f"{what.value} is not allowed in a {self.state.value} dialog")
        self.state = next_state

    def matches(self, request: Request) -> bool:
        """Whether `request`, from the peer, belongs to this dialog: its Call-ID, our tag in
        To and the peer's in From (12.2.2). Never raises: an unreadable tag is no match."""
        try:
            return (
                request.call_id == self.call_id
                and request.to_tag == self.local_tag
                and request.from_tag == self.remote_tag
            )
        except RemoteProtocolError:
            return False

    @property
    def can_acknowledge(self) -> bool:
        """Whether an INVITE of ours in this dialog can be acknowledged (`create_request("ACK")`
        raises otherwise)."""
        return self._invite_cseq is not None

    def create_request(
        self,
        method: str,
        *,
        via: Via | str,
        headers: Iterable[tuple[str, str]] | None = None,
        body: bytes = b"",
        content_type: str | None = None,
    ) -> Request:
        """An in-dialog request (12.2.1.1). `via` is our Via with a fresh branch. An ACK (to
        the 2xx of our last INVITE) reuses that INVITE's CSeq number; a BYE ends the dialog.
        A CANCEL is not built here: it copies the INVITE (`transaction.make_cancel`)."""
        if method == "CANCEL":
            raise LocalProtocolError("build a CANCEL with transaction.make_cancel")
        if self.state is DialogState.TERMINATED and method != "ACK":
            raise LocalProtocolError(f"cannot send {method} in a terminated dialog")
        if method == "BYE" and not self.is_uac and self.state is DialogState.EARLY:
            raise LocalProtocolError("the UAS must not send BYE in an early dialog (RFC 3261 15)")
        if method == "ACK":
            if self._invite_cseq is None:
                raise LocalProtocolError("no INVITE of ours to acknowledge in this dialog")
            cseq = self._invite_cseq
        else:
            cseq = _INITIAL_LOCAL_CSEQ if self.local_seq is None else self.local_seq + 1
            self.local_seq = cseq
            if method == "INVITE":
                self._invite_cseq = cseq
        contact = None
        if method in _TARGET_REFRESH_METHODS:
            if self.local_target is None:
                raise LocalProtocolError(f"a {method} in a dialog needs our Contact")
            contact = f"<{self.local_target}>"
        uri, routes = self._request_uri_and_routes()
        request = make_request(
            method,
            uri,
            from_=self.local_party,
            to=self.remote_party,
            call_id=self.call_id,
            cseq=cseq,
            via=via,
            contact=contact,
            headers=[("Route", route) for route in routes] + list(headers or ()),
            body=body,
            content_type=content_type,
        )
        if method == "BYE":
            self._apply(_Input.BYE)
        return request

    def _request_uri_and_routes(self) -> tuple[str, list[str]]:
        """Loose routing sends to the remote target through the route set; a strict router as
        first hop takes the Request-URI and the remote target goes last in Route (12.2.1.1)."""
        routes = list(self.route_set)
        if not routes:
            return self.remote_target, routes
        first_hop = parse_name_addr(routes[0]).sip_uri
        if "lr" in first_hop.params:
            return self.remote_target, routes
        # A Request-URI may carry neither a method parameter nor headers (19.1.1).
        params = Parameters([(k, v) for k, v in first_hop.params.items() if k.lower() != "method"])
        request_uri = dataclasses.replace(first_hop, params=params, headers=[])
        return str(request_uri), [*routes[1:], f"<{self.remote_target}>"]

    def receive_request(self, request: Request) -> None:
        """Check and apply a request the peer sent in this dialog (12.2.2). A request older
        than the last one raises RemoteProtocolError with hint 500; one whose tags are not this
        dialog's, or that arrives in a terminated dialog, 481."""
        if DialogId.of_received_request(request) != self.id:
            # Same Call-ID, other tags (swapped, stale, forged): no such dialog (12.2.2).
            raise RemoteProtocolError("Call/Transaction Does Not Exist", 481)
        method = request.method
        if self.state is DialogState.TERMINATED:
            raise RemoteProtocolError("Call/Transaction Does Not Exist", 481)
        if method != "ACK":  # an ACK repeats its INVITE's number and may trail a later request
            cseq = request.cseq[0]
            if self.remote_seq is not None and cseq < self.remote_seq:
                raise RemoteProtocolError("CSeq lower than the dialog's last one", 500)
            self.remote_seq = cseq
        if method in _TARGET_REFRESH_METHODS:
            self.remote_target = _contact_uri(request) or self.remote_target
        self._apply(_Input.BYE if method == "BYE" else _Input.OTHER)

    def update_from_response(self, response: Response) -> None:
        """Apply a response to a request of this dialog, whichever side sent the response.

        2xx to INVITE confirms an early dialog; as the UAC of an early dialog, its
        Record-Route becomes the route set (13.2.2.4); a 2xx to our re-INVITE or UPDATE
        refreshes the remote target. A non-2xx final to the dialog's first INVITE ends an
        early dialog, and 408 or 481 to any request of ours ends the dialog.
        """
        ours = response.from_tag == self.local_tag  # it answers a request we sent
        remote_tag = response.to_tag if ours else response.from_tag
        if response.call_id != self.call_id or remote_tag != self.remote_tag:
            raise LocalProtocolError("response of another dialog")
        status = response.status
        method = response.cseq[1]
        if ours and status in _DIALOG_ENDING_STATUSES:
            self._apply(_Input.ENDING_RESPONSE)
            return
        creating_invite = method == "INVITE" and self.state is DialogState.EARLY
        if 200 <= status <= 299:
            if ours and method in _TARGET_REFRESH_METHODS:
                self.remote_target = _contact_uri(response) or self.remote_target
                if creating_invite:
                    self.route_set = tuple(reversed(response.headers.get_all("Record-Route")))
            self._apply(_Input.ANSWERED if method == "INVITE" else _Input.OTHER)
        elif creating_invite:
            self._apply(_Input.PROVISIONAL if status < 200 else _Input.REJECTED)
        else:
            self._apply(_Input.OTHER)


class AnswerRetransmitter:
    """Resends a UAS's 2xx to INVITE at T1, 2*T1, ... capped at T2 until its ACK arrives,
    giving up after 64*T1 (RFC 3261 13.3.1.4; RFC 6026 leaves this to the TU). Put it in the
    runtime's `TimerQueue`. Once it gives up, `timed_out` is true: the TU should confirm the
    dialog and send BYE."""

    __slots__ = (
        "_config",
        "_deadline",
        "_give_up_at",
        "_interval",
        "addr",
        "response",
        "timed_out",
    )

    def __init__(
        self,
        response: Response,
        addr: Address,
        now: float,
        config: TimerConfig | None = None,
        *,
        method: str | None = None,
    ) -> None:
        # `method`: the CSeq method, from a caller that wrote the response itself (its bytes
        # only, edge/b2bua.py): reading it from the response would parse the response whole.
        if method is None:
            method = response.cseq[1]
        if method != "INVITE" or not 200 <= response.status <= 299:
            raise LocalProtocolError("only a 2xx to INVITE is retransmitted by the TU")
        self.response = response
        self.addr = addr
        self.timed_out = False
        self._config = TimerConfig() if config is None else config
        self._interval = self._config.t1
        self._give_up_at = now + 64 * self._config.t1
        self._deadline: float | None = now + self._interval

    def acknowledged(self) -> None:
        """The ACK came: stop."""
        self._deadline = None

    def next_timer(self) -> float | None:
        return self._deadline

    def on_timer(self, now: float) -> list[SendMessage]:
        """The retransmission due at `now`, if any."""
        deadline = self._deadline
        if deadline is None or now < deadline:
            return []
        if now >= self._give_up_at:
            self._deadline = None
            self.timed_out = True
            return []
        self._interval = min(2 * self._interval, self._config.t2)
        self._deadline = min(now + self._interval, self._give_up_at)
        return [SendMessage(self.response, self.addr)]
