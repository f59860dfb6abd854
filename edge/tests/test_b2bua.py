"""The B2BUA core driven in the sans-IO style: scripted SIP peers, a fake clock, no sockets.

Each test plays a customer PBX, a carrier gateway or an origination target by building SIP
messages with edge.sip, feeds them to the core and reads what it puts on the wire, which CDR it
writes and which live events it emits.
"""

from __future__ import annotations

import gc
import random
import sys

import pytest

from edge.b2bua import B2bua, B2buaSettings, CallEvent, CdrReady, Transmit
from edge.calls import Call
from edge.cdr import CallDetailRecord
from edge.limits import (
    AcquireSlot,
    Limits,
    LocalLimits,
    ReleaseSlot,
    SlotGranted,
    SlotRefused,
    decide,
)
from edge.registrar import PURGE_INTERVAL
from edge.sip.digest import answer_challenge, parse_challenge
from edge.sip.message import Request, Response, make_request, make_response, new_branch, new_tag
from edge.sip.parser import parse_message
from edge.sip.timers import COMPACT_MIN
from edge.sip.transaction import (
    ClientInviteTransaction,
    ClientNonInviteTransaction,
    ServerInviteTransaction,
    ServerNonInviteTransaction,
    make_cancel,
)
from edge.tests.factories import (
    GATEWAY_HOST,
    GATEWAY_PORT,
    NUMBER,
    PASSWORD,
    compiled,
    customer_doc,
    gateway_doc,
    origination_doc,
    trunk_doc,
)

EDGE = ("127.0.0.10", 5060, "udp")
PBX = ("127.0.0.1", 5062, "udp")  # in trunk 1's ACL
STRANGER = ("127.0.0.99", 5062, "udp")  # in no ACL
GATEWAY = (GATEWAY_HOST, GATEWAY_PORT, "udp")
ORIGINATION = ("127.0.0.1", 5070, "udp")
# What a call is made of, that nothing should keep once it ended and its transactions did.
_PER_CALL_TYPES = (
    Call,
    Request,
    Response,
    ClientInviteTransaction,
    ClientNonInviteTransaction,
    ServerInviteTransaction,
    ServerNonInviteTransaction,
)
SDP = (
    b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    b"m=audio 40000 RTP/AVP 0 8\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n"
)


class Edge:
    """A B2BUA with a fake clock that records everything it outputs."""

    def __init__(self, **snapshot: object) -> None:
        self.now = 1000.0
        self.wall = 1_790_000_000.0
        self.limits: Limits = LocalLimits()
        self.acquired: list[str] = []  # AcquireSlot outputs, by call id
        self.released: list[str] = []  # ReleaseSlot outputs
        self.core = B2bua(
            node="edge-test",
            config=compiled(**snapshot),
            local={"udp": EDGE},
            digest_secret=b"test-secret",
            rng=random.Random(7),
            settings=B2buaSettings(challenge_timeout=5.0),
        )
        self.wire: list[Transmit] = []
        self.cdrs: list[CallDetailRecord] = []
        self.events: list[CallEvent] = []

    def _keep(self, outputs: list) -> None:
        for out in outputs:
            if isinstance(out, Transmit):
                self.wire.append(out)
            elif isinstance(out, CdrReady):
                self.cdrs.append(out.record)
            elif isinstance(out, AcquireSlot):
                # As the runtime does: counters that answer at once answer through the input.
                self.acquired.append(out.call_id)
                decision = decide(self.limits, out, self.now)
                if decision is not None:
                    self._keep(self.core.slot_decided(decision, self.now, self.wall))
            elif isinstance(out, ReleaseSlot):
                self.released.append(out.call_id)
                self.limits.release(out.trunk_id, out.call_id)
            else:
                self.events.append(out)

    def send(self, message: Request | Response, source: tuple[str, int, str]) -> None:
        self._keep(self.core.datagram_received(message.to_bytes(), source, self.now, self.wall))

    def advance(self, seconds: float) -> None:
        """Move the clocks, firing every timer due on the way."""
        end = self.now + seconds
        while (deadline := self.core.next_timer()) is not None and deadline <= end:
            self.wall += deadline - self.now
            self.now = deadline
            self._keep(self.core.on_timer(self.now, self.wall))
        self.wall += end - self.now
        self.now = end

    def take(self, addr: tuple[str, int, str]) -> list[Request | Response]:
        """Messages sent to `addr` since the last take."""
        mine = [parse_message(t.data) for t in self.wire if t.addr == addr]
        self.wire = [t for t in self.wire if t.addr != addr]
        return mine


def invite(source, callee: str = "+14155550123", caller: str = NUMBER, **headers: str) -> Request:
    host, port, _ = source
    return make_request(
        "INVITE",
        f"sip:{callee}@{EDGE[0]}",
        from_=f"<sip:{caller}@{host}>;tag={new_tag()}",
        to=f"<sip:{callee}@{EDGE[0]}>",
        call_id=f"{new_tag()}@{host}",
        cseq=1,
        via=f"SIP/2.0/UDP {host}:{port};branch={new_branch()}",
        contact=f"<sip:{caller}@{host}:{port}>",
        headers=list(headers.items()),
        body=SDP,
        content_type="application/sdp",
    )


def answer(request: Request, status: int, *, tag: str, peer: tuple[str, int, str]) -> Response:
    host, port, _ = peer
    headers = [("Contact", f"<sip:callee@{host}:{port}>")]
    body = b""
    if status == 200:
        headers.append(("Content-Type", "application/sdp"))
        body = SDP
    return make_response(request, status, to_tag=tag, headers=headers, body=body)


def in_dialog(method: str, after: Response, original: Request, source, *, cseq: int) -> Request:
    """A request of the side that sent `original`, in the dialog `after` established."""
    host, port, _ = source
    return make_request(
        method,
        after.contact[0].uri if after.contact else original.uri,
        from_=original.headers.get("From"),
        to=after.headers.get("To"),
        call_id=original.call_id,
        cseq=cseq,
        via=f"SIP/2.0/UDP {host}:{port};branch={new_branch()}",
    )


def reverse_request(
    method: str, received: Request, sent: Response, source, *, cseq: int
) -> Request:
    """A request of the side that received `received` and answered it with `sent`."""
    host, port, _ = source
    return make_request(
        method,
        received.contact[0].uri,
        from_=sent.headers.get("To"),
        to=received.headers.get("From"),
        call_id=received.call_id,
        cseq=cseq,
        via=f"SIP/2.0/UDP {host}:{port};branch={new_branch()}",
    )


def finals(messages) -> list[int]:
    return [m.status for m in messages if isinstance(m, Response) and m.status >= 200]


def connect_outbound(edge: Edge):
    """An outbound call answered by the gateway and ACKed: (a INVITE, a 200, b INVITE, b 200)."""
    a_invite = invite(PBX)
    edge.send(a_invite, PBX)
    assert [m.status for m in edge.take(PBX)] == [100]
    (b_invite,) = edge.take(GATEWAY)
    edge.send(answer(b_invite, 180, tag="gw", peer=GATEWAY), GATEWAY)
    b_ok = answer(b_invite, 200, tag="gw", peer=GATEWAY)
    edge.send(b_ok, GATEWAY)
    ringing, a_ok = edge.take(PBX)
    assert (ringing.status, a_ok.status) == (180, 200)
    ack = in_dialog("ACK", a_ok, a_invite, PBX, cseq=1)
    edge.send(ack, PBX)
    (b_ack,) = edge.take(GATEWAY)
    assert b_ack.method == "ACK" and b_ack.call_id == b_invite.call_id
    return a_invite, a_ok, b_invite, b_ok


def test_outbound_call_end_to_end():
    edge = Edge()
    a_invite, a_ok, b_invite, _b_ok = connect_outbound(edge)

    # Topology hiding: nothing of the PBX's side reaches the carrier, and vice versa.
    wire_b = b_invite.to_bytes()
    assert b"127.0.0.1:5062" not in wire_b and a_invite.call_id.encode() not in wire_b
    assert b_invite.uri.startswith("sip:+14155550123@127.1.0.1")
    assert [v.host for v in b_invite.vias] == [EDGE[0]]
    assert b_invite.body == SDP  # media goes end to end
    assert GATEWAY_HOST.encode() not in a_ok.to_bytes().split(b"\r\n\r\n")[0]
    assert edge.core.active_calls == 1

    edge.advance(30)
    edge.send(in_dialog("BYE", a_ok, a_invite, PBX, cseq=2), PBX)
    assert finals(edge.take(PBX)) == [200]
    (b_bye,) = edge.take(GATEWAY)
    assert b_bye.method == "BYE" and b_bye.call_id == b_invite.call_id
    edge.send(make_response(b_bye, 200), GATEWAY)

    (cdr,) = edge.cdrs
    assert (cdr.direction, cdr.trunk_id, cdr.customer_id) == ("outbound", 1, 1)
    assert (cdr.reason, cdr.final_code, cdr.hangup_side) == ("normal_clearing", 200, "caller")
    assert cdr.callee_e164 == "+14155550123" and cdr.caller_e164 == NUMBER
    assert cdr.a_call_id == a_invite.call_id and cdr.b_call_id == b_invite.call_id
    assert cdr.duration_ms == 30_000 and cdr.billable_seconds == 30
    assert cdr.answered_by == "1" and cdr.routes[0]["status"] == 200
    assert cdr.codecs == ["PCMU", "PCMA"]
    assert [e.kind for e in edge.events] == ["started", "ringing", "answered", "ended"]
    assert edge.core.active_calls == 0


def test_responses_relayed_to_the_caller_are_what_make_response_writes():
    """The 183, 180 and 200 relayed to the caller are put together from a per-call template
    (B2bua._relay_to_a): each must be byte for byte the response make_response builds, the
    INVITE's Via/From/To/Call-ID/CSeq with our tag, our Contact, the B response's crossing
    headers and Content-Type, its body; and the 2xx still opens the caller's dialog, resent
    until its ACK."""
    edge = Edge()
    a_invite = invite(PBX)
    edge.send(a_invite, PBX)
    edge.take(PBX)
    (b_invite,) = edge.take(GATEWAY)
    (call,) = edge.core._calls.values()
    early = answer(b_invite, 183, tag="gw", peer=GATEWAY)
    early.headers.add("Allow", "INVITE, ACK, BYE")
    ringing = answer(b_invite, 180, tag="gw", peer=GATEWAY)
    ok = answer(b_invite, 200, tag="gw", peer=GATEWAY)
    ok.headers.add("Supported", "timer, 100rel")
    for b_response in (early, ringing, ok):
        edge.send(b_response, GATEWAY)
        (sent,) = [t.data for t in edge.wire if t.addr == PBX]
        edge.wire = [t for t in edge.wire if t.addr != PBX]
        extra = [("Contact", f"<sip:{EDGE[0]}:{EDGE[1]}>")]
        extra += [
            (name, value)
            for name in ("Allow", "Supported")
            for value in b_response.headers.get_all(name)
        ]
        if b_response.body:
            extra.append(("Content-Type", "application/sdp"))
        expected = make_response(
            call.a_invite,
            b_response.status,
            b_response.reason,
            to_tag=call.a.local_tag,
            headers=extra,
            body=b_response.body,
        )
        assert sent == expected.to_bytes()
    a_ok = parse_message(sent)
    assert call.a.dialog is not None and call.a.dialog.local_party == a_ok.headers.get("To")
    assert call.a.dialog.local_target == f"sip:{EDGE[0]}:{EDGE[1]}"
    edge.advance(0.5)  # the 2xx is resent until the ACK comes
    assert [m.status for m in edge.take(PBX)] == [200]
    edge.send(in_dialog("ACK", a_ok, a_invite, PBX, cseq=1), PBX)
    assert [m.method for m in edge.take(GATEWAY)] == ["ACK"]
    edge.advance(0.5)
    assert edge.take(PBX) == []


def test_bye_from_the_callee():
    edge = Edge()
    a_invite, _a_ok, b_invite, b_ok = connect_outbound(edge)
    edge.send(reverse_request("BYE", b_invite, b_ok, GATEWAY, cseq=1), GATEWAY)
    assert finals(edge.take(GATEWAY)) == [200]
    (a_bye,) = edge.take(PBX)
    assert a_bye.method == "BYE" and a_bye.call_id == a_invite.call_id
    assert a_bye.to_tag == a_invite.from_tag
    (cdr,) = edge.cdrs
    assert cdr.hangup_side == "callee" and cdr.reason == "normal_clearing"


def test_reinvite_is_relayed_into_the_other_dialog():
    edge = Edge()
    a_invite, a_ok, b_invite, _b_ok = connect_outbound(edge)
    reinvite = in_dialog("INVITE", a_ok, a_invite, PBX, cseq=2)
    reinvite.body = SDP
    reinvite.headers.set("Content-Type", "application/sdp")
    edge.send(reinvite, PBX)
    relayed = [m for m in edge.take(GATEWAY) if isinstance(m, Request)]
    assert [m.method for m in relayed] == ["INVITE"] and relayed[0].call_id == b_invite.call_id
    edge.send(answer(relayed[0], 200, tag="gw", peer=GATEWAY), GATEWAY)
    assert finals(edge.take(PBX)) == [200]
    assert edge.core.active_calls == 1 and not edge.cdrs


@pytest.mark.parametrize(
    "trunk, callee, caller, code, reason",
    [
        ({"active": False}, "+14155550123", NUMBER, 403, "trunk_suspended"),
        ({}, "+19005550123", NUMBER, 403, "destination_blocked"),
        ({"allowed_destinations": ["+44"]}, "+14155550123", NUMBER, 403, "destination_not_allowed"),
        ({"allowed_destinations": ["GB"]}, "+442079460000", NUMBER, None, None),
        ({}, "+14155550123", "+14155559999", 403, "caller_id_denied"),
        ({"caller_id_policy": "pass_through"}, "+14155550123", "+14155559999", None, None),
        ({}, "not-a-number", NUMBER, 484, "invalid_number"),
    ],
)
def test_outbound_policy(trunk, callee, caller, code, reason):
    edge = Edge(trunks=[trunk_doc(**trunk)])
    edge.send(invite(PBX, callee=callee, caller=caller), PBX)
    if code is None:
        assert len(edge.take(GATEWAY)) == 1
        return
    assert finals(edge.take(PBX)) == [code]
    assert not edge.take(GATEWAY)
    (cdr,) = edge.cdrs
    assert (cdr.final_code, cdr.reason, cdr.trunk_id) == (code, reason, 1)
    assert edge.core.stats.refusals_total == {reason: 1}


def test_channel_limit():
    edge = Edge(trunks=[trunk_doc(max_channels=2, max_cps=100)])
    for _ in range(3):
        edge.send(invite(PBX), PBX)
    assert len(edge.take(GATEWAY)) == 2
    assert finals(edge.take(PBX)) == [503]
    (cdr,) = edge.cdrs
    assert cdr.reason == "channel_limit"


def test_cps_limit_refills_with_time():
    edge = Edge(trunks=[trunk_doc(max_cps=2)])
    for _ in range(3):
        edge.send(invite(PBX), PBX)
    assert finals(edge.take(PBX)) == [503]
    assert edge.cdrs[0].reason == "cps_limit"
    edge.advance(1.0)
    edge.send(invite(PBX), PBX)
    assert len({m.call_id for m in edge.take(GATEWAY)}) == 3  # (with timer A resends)


def test_suspended_or_out_of_credit_customer():
    edge = Edge(customers=[{"id": 1, "name": "Acme", "active": True, "out_of_credit": True}])
    edge.send(invite(PBX), PBX)
    assert finals(edge.take(PBX)) == [402]
    assert edge.cdrs[0].reason == "no_credit"


def test_failover_on_503_but_not_on_486():
    gateways = [gateway_doc(id=1, priority=10), gateway_doc(id=2, host="127.1.0.2", priority=20)]
    second = ("127.1.0.2", GATEWAY_PORT, "udp")
    edge = Edge(gateways=gateways)
    edge.send(invite(PBX), PBX)
    (first_invite,) = edge.take(GATEWAY)
    edge.send(answer(first_invite, 503, tag="g1", peer=GATEWAY), GATEWAY)
    (second_invite,) = [m for m in edge.take(second) if isinstance(m, Request)]
    assert second_invite.call_id == first_invite.call_id
    assert second_invite.cseq[0] == first_invite.cseq[0] + 1
    edge.send(answer(second_invite, 486, tag="g2", peer=second), second)
    assert finals(edge.take(PBX)) == [486]
    (cdr,) = edge.cdrs
    assert [(r["target"], r["status"], r["reason"]) for r in cdr.routes] == [
        ("1", 503, "failover"),
        ("2", 486, "rejected"),
    ]
    assert cdr.reason == "callee_rejected" and cdr.final_code == 486


def test_stop_code_ends_the_hunt():
    gateways = [gateway_doc(id=1, priority=10), gateway_doc(id=2, host="127.1.0.2", priority=20)]
    edge = Edge(gateways=gateways)
    edge.send(invite(PBX), PBX)
    (first_invite,) = edge.take(GATEWAY)
    edge.send(answer(first_invite, 486, tag="g1", peer=GATEWAY), GATEWAY)
    assert not edge.take(("127.1.0.2", GATEWAY_PORT, "udp"))
    assert finals(edge.take(PBX)) == [486]


def test_timeout_fails_over_then_answers_408():
    edge = Edge()
    edge.send(invite(PBX), PBX)
    edge.advance(40)  # timer B: no answer from the only gateway
    assert set(finals(edge.take(PBX))) == {408}  # resent until ACKed (timer G)
    (cdr,) = edge.cdrs
    assert cdr.reason == "timeout" and cdr.routes[0]["reason"] == "timeout"


def test_cancel_before_answer():
    edge = Edge()
    a_invite = invite(PBX)
    edge.send(a_invite, PBX)
    (b_invite,) = edge.take(GATEWAY)
    edge.send(answer(b_invite, 180, tag="gw", peer=GATEWAY), GATEWAY)
    edge.take(PBX)
    cancel = make_cancel(a_invite)
    edge.send(cancel, PBX)
    assert sorted(finals(edge.take(PBX))) == [200, 487]
    (b_cancel,) = edge.take(GATEWAY)
    assert b_cancel.method == "CANCEL" and b_cancel.call_id == b_invite.call_id
    edge.send(make_response(b_cancel, 200), GATEWAY)
    edge.send(answer(b_invite, 487, tag="gw", peer=GATEWAY), GATEWAY)
    (cdr,) = edge.cdrs
    assert (cdr.reason, cdr.final_code, cdr.hangup_side) == ("cancelled", 487, "caller")
    assert edge.core.active_calls == 0


def test_cancel_waits_for_a_provisional_and_a_crossing_200_is_taken_down():
    edge = Edge()
    a_invite = invite(PBX)
    edge.send(a_invite, PBX)
    (b_invite,) = edge.take(GATEWAY)
    cancel = make_cancel(a_invite)
    edge.send(cancel, PBX)
    assert not edge.take(GATEWAY)  # no provisional yet: no CANCEL (RFC 3261 9.1)
    edge.send(answer(b_invite, 200, tag="gw", peer=GATEWAY), GATEWAY)
    sent = [m.method for m in edge.take(GATEWAY)]
    assert sent == ["ACK", "BYE"]
    assert len(edge.cdrs) == 1 and edge.cdrs[0].reason == "cancelled"


def test_a_call_nobody_answers_ends_at_the_ring_timeout():
    edge = Edge()
    edge.send(invite(PBX), PBX)
    (b_invite,) = edge.take(GATEWAY)
    edge.send(answer(b_invite, 180, tag="gw", peer=GATEWAY), GATEWAY)
    edge.take(PBX)
    edge.advance(179)
    assert edge.core.active_calls == 1 and not edge.cdrs
    edge.advance(1)
    assert finals(edge.take(PBX)) == [408]
    assert [m.method for m in edge.take(GATEWAY)] == ["CANCEL"]
    (cdr,) = edge.cdrs
    assert (cdr.reason, cdr.final_code, cdr.hangup_side) == ("no_answer", 408, "edge")
    assert edge.released == edge.acquired and edge.core.active_calls == 0
    # The callee never answers the INVITE, not even 487 to the CANCEL: after 64*T1 the edge
    # gives the transaction up (RFC 3261 9.1) and keeps nothing of the call.
    edge.advance(33)
    assert not edge.core._b_invites and not edge.core._by_b_call_id


def test_max_call_duration_ends_both_legs():
    edge = Edge(trunks=[trunk_doc(max_call_duration=60)])
    connect_outbound(edge)
    edge.advance(61)  # (the peers do not answer the BYEs, which are resent: timer E)
    assert {m.method for m in edge.take(PBX) if isinstance(m, Request)} == {"BYE"}
    assert {m.method for m in edge.take(GATEWAY) if isinstance(m, Request)} == {"BYE"}
    (cdr,) = edge.cdrs
    assert (cdr.reason, cdr.hangup_side, cdr.billable_seconds) == ("max_duration", "edge", 60)


def test_inbound_call_to_a_did_reaches_the_origination_uri():
    uris = [origination_doc("sip:127.0.0.1:5070", priority=10)]
    edge = Edge(trunks=[trunk_doc(origination_uris=uris)])
    a_invite = invite(GATEWAY, callee="14155550100", caller="+442079460000")
    edge.send(a_invite, GATEWAY)
    (b_invite,) = edge.take(ORIGINATION)
    assert b_invite.uri == "sip:+14155550100@127.0.0.1:5070"
    edge.send(answer(b_invite, 200, tag="pbx", peer=ORIGINATION), ORIGINATION)
    assert finals(edge.take(GATEWAY)) == [200]
    assert edge.core.calls()[0]["direction"] == "inbound"


def test_unknown_number_is_404():
    edge = Edge()
    edge.send(invite(GATEWAY, callee="+14155550999"), GATEWAY)
    assert finals(edge.take(GATEWAY)) == [404]
    assert edge.cdrs[0].reason == "unknown_number" and edge.cdrs[0].direction == "inbound"


def test_digest_authenticated_call_and_wrong_password():
    edge = Edge()
    first = invite(STRANGER)
    edge.send(first, STRANGER)
    (challenge,) = edge.take(STRANGER)
    assert challenge.status == 407 and not edge.cdrs
    values = challenge.headers.get_all("Proxy-Authenticate")
    # MD5 first by default (edge.sip.digest.DEFAULT_CHALLENGE_ORDER); SHA-256 offered too.
    assert "MD5" in values[0] and "SHA-256" in values[1]

    def retry(password: str, cseq: int) -> Request:
        request = invite(STRANGER)
        request.headers.set("Call-ID", first.call_id)
        request.headers.set("CSeq", f"{cseq} INVITE")
        authorization = answer_challenge(
            parse_challenge(values[0]),
            method="INVITE",
            uri=request.uri,
            username="pbx1",
            password=password,
            cnonce="abc123",
        )
        request.headers.add("Proxy-Authorization", authorization)
        return request

    edge.send(retry(PASSWORD, 2), STRANGER)
    assert len(edge.take(GATEWAY)) == 1
    assert edge.core.calls()[0]["trunk_id"] == 1

    edge.send(retry("wrong", 3), STRANGER)
    assert finals(edge.take(STRANGER)) == [403]
    assert edge.cdrs[-1].reason == "auth_failed"
    assert edge.core.stats.auth_failures_total == 1


def digest_invite(edge: Edge, password: str = PASSWORD, **kwargs: str) -> Request:
    """An INVITE from STRANGER carrying trunk 1's credentials for the edge's challenge."""
    first = invite(STRANGER, **kwargs)
    edge.send(first, STRANGER)
    (challenge,) = edge.take(STRANGER)
    request = invite(STRANGER, **kwargs)
    request.headers.set("Call-ID", first.call_id)
    request.headers.set("CSeq", "2 INVITE")
    request.headers.add(
        "Proxy-Authorization",
        answer_challenge(
            parse_challenge(challenge.headers.get_all("Proxy-Authenticate")[0]),
            method="INVITE",
            uri=request.uri,
            username="pbx1",
            password=password,
            cnonce="c2",
        ),
    )
    return request


def hops_spent(request: Request) -> Request:
    request.headers.set("Max-Forwards", "0")
    return request


def _reason(response: Response) -> str | None:
    return response.headers.get("Reason")


@pytest.mark.parametrize(
    "name, snapshot, source, build, status, reason",
    [
        # Identified callers learn why (RFC 3326).
        ("acl_trunk", {}, PBX, lambda e: invite(PBX, callee="+19005550100"), 403,
         "destination_blocked"),
        ("acl_trunk_limit", {"trunks": [trunk_doc(max_channels=0)]}, PBX,
         lambda e: invite(PBX), 503, "channel_limit"),
        ("acl_trunk_draining", {}, PBX, "drain", 503, "draining"),
        ("digest_trunk", {}, STRANGER,
         lambda e: digest_invite(e, callee="+19005550100"), 403, "destination_blocked"),
        ("carrier", {}, GATEWAY, lambda e: invite(GATEWAY, callee="+14155550999"), 404,
         "unknown_number"),
        ("carrier_no_route", {"numbers": [[NUMBER, 1, None]]}, GATEWAY,
         lambda e: invite(GATEWAY, callee=NUMBER), 480, "no_route"),
        # Unidentified sources learn nothing more than the status.
        ("stranger_no_digest", {"trunks": [trunk_doc(credentials=[])]}, STRANGER,
         lambda e: invite(STRANGER), 403, None),
        ("stranger_wrong_password", {}, STRANGER,
         lambda e: digest_invite(e, password="wrong"), 403, None),
        ("stranger_draining", {}, STRANGER, "drain", 503, None),
        ("stranger_hops", {}, STRANGER, lambda e: hops_spent(invite(STRANGER)), 483, None),
        ("acl_trunk_hops", {}, PBX, lambda e: hops_spent(invite(PBX)), 483, "too_many_hops"),
    ],
)  # fmt: skip
def test_refusals_tell_identified_callers_why(name, snapshot, source, build, status, reason):
    edge = Edge(**snapshot)
    if build == "drain":
        edge.core.drain()
        request = invite(source)
    else:
        request = build(edge)
    edge.send(request, source)
    (final,) = [m for m in edge.take(source) if isinstance(m, Response) and m.status >= 200]
    assert final.status == status
    if reason is None:
        assert _reason(final) is None
    else:
        assert _reason(final) == f'SIP ;cause={status} ;text="{reason}"'
        assert edge.cdrs[-1].reason == reason


def test_unanswered_challenge_ends_in_one_cdr():
    edge = Edge()
    edge.send(invite(STRANGER), STRANGER)
    edge.advance(10)
    (cdr,) = edge.cdrs
    assert (cdr.reason, cdr.final_code, cdr.trunk_id) == ("auth_required", 407, None)


def test_malformed_request_is_answered_400_and_the_edge_carries_on():
    edge = Edge()
    bad = invite(PBX).to_bytes().replace(b"CSeq: 1 INVITE", b"CSeq: one INVITE")
    edge.core.datagram_received(bad, PBX, edge.now, edge.wall)
    edge._keep(edge.core.datagram_received(bad, PBX, edge.now, edge.wall))
    (reply,) = edge.take(PBX)
    assert reply.status == 400 and reply.reason
    edge._keep(edge.core.datagram_received(b"\x00garbage\r\n\r\n", PBX, edge.now, edge.wall))
    assert not edge.take(PBX)
    connect_outbound(edge)  # everyone else is still served


def test_draining_refuses_new_calls_and_keeps_current_ones():
    edge = Edge()
    a_invite, a_ok, *_ = connect_outbound(edge)
    edge.core.drain()
    edge.send(invite(PBX), PBX)
    assert finals(edge.take(PBX)) == [503]
    assert edge.cdrs[-1].reason == "draining"
    edge.send(in_dialog("BYE", a_ok, a_invite, PBX, cseq=2), PBX)
    assert finals(edge.take(PBX)) == [200] and edge.core.active_calls == 0


def test_operator_hangup_and_shutdown_write_cdrs():
    edge = Edge()
    connect_outbound(edge)
    call_id = edge.core.calls()[0]["call_id"]
    edge._keep(edge.core.hangup(call_id, edge.now, edge.wall))
    assert edge.cdrs[-1].reason == "operator_hangup"
    assert edge.core.hangup("nope", edge.now, edge.wall) is None
    edge.send(invite(PBX), PBX)
    edge._keep(edge.core.close(edge.now, edge.wall))
    assert [c.reason for c in edge.cdrs] == ["operator_hangup", "shutdown"]


def test_no_credit_hangup_byes_both_legs_and_records_200():
    edge = Edge()
    connect_outbound(edge)
    call_id = edge.core.calls()[0]["call_id"]
    edge._keep(edge.core.hangup(call_id, edge.now, edge.wall, "no_credit"))
    assert [m.method for m in edge.take(PBX)] == ["BYE"]
    assert [m.method for m in edge.take(GATEWAY)] == ["BYE"]
    (record,) = edge.cdrs
    assert (record.reason, record.final_code, record.hangup_side) == ("no_credit", 200, "edge")
    assert edge.core.stats.ends_total == {"no_credit": 1}


def test_no_credit_hangup_of_a_ringing_call_answers_402_and_cancels():
    edge = Edge()
    edge.send(invite(PBX), PBX)
    assert [m.status for m in edge.take(PBX)] == [100]
    (b_invite,) = edge.take(GATEWAY)
    edge.send(answer(b_invite, 180, tag="gw", peer=GATEWAY), GATEWAY)
    edge.take(PBX)
    call_id = edge.core.calls()[0]["call_id"]
    edge._keep(edge.core.hangup(call_id, edge.now, edge.wall, "no_credit"))
    (refusal,) = edge.take(PBX)
    assert (refusal.status, refusal.reason) == (402, "Payment Required")
    assert [m.method for m in edge.take(GATEWAY)] == ["CANCEL"]
    (record,) = edge.cdrs
    assert (record.reason, record.final_code) == ("no_credit", 402)


def test_a_hangup_reason_outside_the_table_is_a_bug_of_the_caller():
    edge = Edge()
    connect_outbound(edge)
    call_id = edge.core.calls()[0]["call_id"]
    with pytest.raises(KeyError):
        edge.core.hangup(call_id, edge.now, edge.wall, "normal_clearing")
    assert edge.core.active_calls == 1


def test_new_config_applies_to_new_calls_only():
    edge = Edge()
    connect_outbound(edge)
    edge.core.apply_config(compiled(trunks=[trunk_doc(active=False)], version=2))
    edge.send(invite(PBX), PBX)
    assert finals(edge.take(PBX)) == [403]
    assert edge.core.active_calls == 1  # the call in progress carries on
    assert edge.cdrs[-1].config_version == 2


def register_pbx(edge: Edge) -> None:
    """Trunk 1's PBX (at STRANGER, by digest) registers its contact for 120 s."""
    register = make_request(
        "REGISTER",
        f"sip:{EDGE[0]}",
        from_=f"<sip:pbx1@{EDGE[0]}>;tag={new_tag()}",
        to=f"<sip:pbx1@{EDGE[0]}>",
        call_id="reg-1",
        cseq=1,
        via=f"SIP/2.0/UDP {STRANGER[0]}:{STRANGER[1]};branch={new_branch()}",
        contact=f"<sip:pbx1@{STRANGER[0]}:{STRANGER[1]}>",
        headers=[("Expires", "120")],
    )
    edge.send(register, STRANGER)
    (challenge,) = edge.take(STRANGER)
    assert challenge.status == 401
    register.headers.set("CSeq", "2 REGISTER")
    register.headers.set("Via", f"SIP/2.0/UDP {STRANGER[0]}:{STRANGER[1]};branch={new_branch()}")
    register.headers.add(
        "Authorization",
        answer_challenge(
            parse_challenge(challenge.headers.get_all("WWW-Authenticate")[1]),
            method="REGISTER",
            uri=register.uri,
            username="pbx1",
            password=PASSWORD,
            cnonce="c1",
        ),
    )
    edge.send(register, STRANGER)
    (ok,) = edge.take(STRANGER)
    assert ok.status == 200 and "expires=120" in ok.headers.get("Contact")


def test_register_then_inbound_call_goes_to_the_contact():
    edge = Edge(trunks=[trunk_doc(registration_allowed=True)])
    register_pbx(edge)
    edge.send(invite(GATEWAY, callee=NUMBER), GATEWAY)
    (b_invite,) = edge.take(STRANGER)
    assert b_invite.method == "INVITE" and b_invite.uri.startswith("sip:pbx1@127.0.0.99")


@pytest.mark.parametrize(
    "change",
    [
        {"trunks": [trunk_doc(registration_allowed=False)]},
        {"trunks": [trunk_doc(registration_allowed=True, active=False)]},
        {
            "customers": [customer_doc(active=False)],
            "trunks": [trunk_doc(registration_allowed=True)],
        },
        {"trunks": [trunk_doc(2, registration_allowed=True)], "numbers": [[NUMBER, 1, 2]]},
    ],
    ids=["registration_disallowed", "trunk_suspended", "customer_suspended", "trunk_deleted"],
)
def test_registrations_go_when_the_trunk_may_no_longer_register(change):
    edge = Edge(trunks=[trunk_doc(registration_allowed=True)])
    register_pbx(edge)
    assert len(edge.core.registrar) == 1
    edge.core.apply_config(compiled(version=2, **change))
    assert len(edge.core.registrar) == 0
    edge.send(invite(GATEWAY, callee=NUMBER), GATEWAY)
    assert not edge.take(STRANGER)  # no call reaches the contact any more


def test_registrations_stay_when_the_trunk_still_may_register():
    edge = Edge(trunks=[trunk_doc(registration_allowed=True)])
    register_pbx(edge)
    edge.core.apply_config(compiled(version=2, trunks=[trunk_doc(registration_allowed=True)]))
    assert len(edge.core.registrar) == 1


def test_expired_registrations_are_purged_on_a_timer():
    edge = Edge(trunks=[trunk_doc(registration_allowed=True)])
    register_pbx(edge)
    edge.advance(119)
    assert len(edge.core.registrar) == 1
    edge.advance(PURGE_INTERVAL)  # expired at 120 s; the next sweep drops it without a read
    assert len(edge.core.registrar) == 0
    edge.advance(10 * PURGE_INTERVAL)
    assert edge.core.next_timer() is None  # nothing registered: no sweep armed


class DeferredLimits(LocalLimits):
    """Counters that answer later, like the cluster counters in Redis."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[str] = []

    def acquire(self, trunk, call_id, now, *, count_cps=True):
        self.asked.append(call_id)
        return None


def test_admission_decided_later():
    edge = Edge()
    limits = edge.limits = DeferredLimits()
    edge.send(invite(PBX), PBX)
    assert [m.status for m in edge.take(PBX)] == [100] and not edge.take(GATEWAY)
    edge._keep(edge.core.slot_decided(SlotGranted(limits.asked[0]), edge.now, edge.wall))
    assert len(edge.take(GATEWAY)) == 1 and edge.core.active_calls == 1

    edge.send(invite(PBX), PBX)
    edge.take(PBX)
    refused = SlotRefused(limits.asked[1], "cps_limit")
    edge._keep(edge.core.slot_decided(refused, edge.now, edge.wall))
    assert finals(edge.take(PBX)) == [503] and edge.cdrs[-1].reason == "cps_limit"
    assert edge.released == [limits.asked[1]]  # a refused slot is released too: harmless


def test_cancel_while_the_counters_decide():
    edge = Edge()
    limits = edge.limits = DeferredLimits()
    a_invite = invite(PBX)
    edge.send(a_invite, PBX)
    cancel = make_cancel(a_invite)
    edge.send(cancel, PBX)
    assert sorted(finals(edge.take(PBX))) == [200, 487]
    assert edge.cdrs[-1].reason == "cancelled" and edge.released == limits.asked
    edge._keep(edge.core.slot_decided(SlotGranted(limits.asked[0]), edge.now, edge.wall))
    assert not edge.take(GATEWAY) and edge.core.active_calls == 0


def test_shutdown_while_the_counters_decide_writes_the_cdr():
    edge = Edge()
    limits = edge.limits = DeferredLimits()
    edge.send(invite(PBX), PBX)
    edge._keep(edge.core.close(edge.now, edge.wall))
    assert finals(edge.take(PBX)) == [503]
    assert [c.reason for c in edge.cdrs] == ["shutdown"] and edge.released == limits.asked


def test_unknown_source_is_refused_when_no_trunk_uses_digest():
    edge = Edge(trunks=[trunk_doc(credentials=[])])
    edge.send(invite(STRANGER), STRANGER)
    assert finals(edge.take(STRANGER)) == [403]
    (cdr,) = edge.cdrs
    assert (cdr.reason, cdr.trunk_id, cdr.source_ip) == ("acl_denied", None, STRANGER[0])


def test_scanners_floods_and_brute_force_are_not_answered():
    from edge.security import AbuseGuard, AbuseSettings, SecurityEvent

    edge = Edge()
    edge.core.guard = AbuseGuard(
        AbuseSettings(unauthenticated_limit=3, answer_one_in=5, ban_after_unauthenticated=10,
                      ban_after_auth_failures=2)
    )  # fmt: skip
    security: list[SecurityEvent] = []

    def send(message, source):
        for out in edge.core.datagram_received(message.to_bytes(), source, edge.now, edge.wall):
            (security.append if isinstance(out, SecurityEvent) else edge._keep)(
                out if isinstance(out, SecurityEvent) else [out]
            )

    send(invite(STRANGER, **{"User-Agent": "friendly-scanner"}), STRANGER)
    assert not edge.take(STRANGER) and [e.kind for e in security] == ["scanner"]

    for _ in range(12):
        send(invite(STRANGER), STRANGER)
    answered = [m for m in edge.take(STRANGER) if m.status == 407]
    assert len(answered) == 3 + 1  # three in full, then one in five, then the ban
    assert [e.kind for e in security] == ["scanner", "flood", "banned"]

    # Trunk ACL sources are never screened; another stranger is unaffected.
    for _ in range(12):
        edge.send(invite(PBX), PBX)
    assert len({m.call_id for m in edge.take(PBX)}) == 12  # each answered (100 or 503)
    send(invite(("127.0.0.98", 5062, "udp")), ("127.0.0.98", 5062, "udp"))
    assert [m.status for m in edge.take(("127.0.0.98", 5062, "udp"))] == [407]


def test_repeated_wrong_passwords_ban_the_source():
    from edge.security import AbuseGuard, AbuseSettings, SecurityEvent

    edge = Edge()
    edge.core.guard = AbuseGuard(AbuseSettings(ban_after_auth_failures=2))
    first = invite(STRANGER)
    edge.send(first, STRANGER)
    (challenge,) = [m for m in edge.take(STRANGER) if m.status == 407]
    kinds = []
    for cseq in (2, 3, 4):
        request = invite(STRANGER)
        request.headers.set("CSeq", f"{cseq} INVITE")
        request.headers.add("Proxy-Authorization", answer_challenge(
            parse_challenge(challenge.headers.get_all("Proxy-Authenticate")[1]), method="INVITE",
            uri=request.uri, username="pbx1", password="guess", cnonce=f"c{cseq}",
        ))  # fmt: skip
        outputs = edge.core.datagram_received(request.to_bytes(), STRANGER, edge.now, edge.wall)
        kinds += [o.kind for o in outputs if isinstance(o, SecurityEvent)]
        edge._keep([o for o in outputs if not isinstance(o, SecurityEvent)])
    assert kinds == ["auth_failed", "auth_failed", "banned"]
    assert finals(edge.take(STRANGER)) == [403, 403]  # the third was dropped: banned
    assert edge.core.stats.dropped_total == 1


def test_active_calls_are_counted_by_trunk():
    edge = Edge()
    connect_outbound(edge)
    assert edge.core.stats.active_by_trunk() == {1: 1}
    call_id = edge.core.calls()[0]["call_id"]
    edge._keep(edge.core.hangup(call_id, edge.now, edge.wall))
    assert edge.core.stats.active_by_trunk() == {1: 0}


def test_received_and_rport_go_into_the_top_via_only():
    edge = Edge()
    request = invite(PBX)
    top = f"SIP/2.0/UDP 10.1.1.1:5062;branch={new_branch()};rport"
    request.headers.set("Via", f"{top}, SIP/2.0/UDP 10.9.9.9:5060;branch={new_branch()}")
    edge.send(request, PBX)
    (trying,) = edge.take(PBX)
    vias = trying.headers.get_all("Via")
    assert vias[0].startswith("SIP/2.0/UDP 10.1.1.1:5062;")
    assert "rport=5062" in vias[0] and "received=127.0.0.1" in vias[0]
    assert len(vias) == 2 and vias[1].startswith("SIP/2.0/UDP 10.9.9.9:5060")


def test_an_unparsable_request_is_answered_only_with_its_transaction_headers():
    edge = Edge()
    lines = invite(PBX).to_bytes().split(b"\r\n")
    unparsable = [lines[0], b"this line has no colon", *lines[1:]]
    edge._keep(edge.core.datagram_received(b"\r\n".join(unparsable), PBX, edge.now, edge.wall))
    (reply,) = edge.take(PBX)
    assert reply.status == 400 and reply.cseq == (1, "INVITE")
    without_cseq = [line for line in unparsable if not line.startswith(b"CSeq")]
    edge._keep(edge.core.datagram_received(b"\r\n".join(without_cseq), PBX, edge.now, edge.wall))
    assert not edge.take(PBX)  # a response it could not match is not worth sending


def test_endings_are_documented():
    from pathlib import Path

    from edge.calls import ENDINGS

    doc = (Path(__file__).resolve().parents[2] / "docs" / "edge-policy.md").read_text()
    for reason, ending in ENDINGS.items():
        code = "the callee's" if ending.code is None else str(ending.code)
        row = (
            f"| `{reason}` | {code} | {ending.phrase or '—'} | {ending.side or 'caller / callee'} |"
        )
        assert row in doc, reason


def test_ends_are_counted_by_reason():
    edge = Edge()
    connect_outbound(edge)
    edge.send(make_cancel(invite(PBX)), PBX)  # no such call: not counted
    edge._keep(edge.core.close(edge.now, edge.wall))
    assert edge.core.stats.ends_total == {"shutdown": 1}


def test_a_body_without_content_type_is_refused_not_relayed():
    edge = Edge()
    request = invite(PBX)
    request.headers.remove("Content-Type")
    edge.send(request, PBX)
    (refusal,) = edge.take(PBX)
    assert (refusal.status, refusal.reason) == (400, "Missing Content-Type")
    assert not edge.take(GATEWAY) and edge.core.active_calls == 0


def test_an_acknowledged_call_keeps_its_dialogs_not_the_parse_of_its_setup():
    """Thousands of answered calls sit for minutes between their ACK and their BYE: each keeps
    its dialogs and the bytes its lingering transactions may resend, not the parsed headers,
    URIs and parameter lists of the messages that set it up (about 100 GC-tracked objects a
    call before; issue 15's memory per call)."""
    edge = Edge(trunks=[trunk_doc(max_cps=1000, max_channels=1000)])
    connect_outbound(edge)  # warm-up: the first call parses what later ones share
    edge.wire.clear()
    gc.collect()
    before = len(gc.get_objects())
    calls = 200
    for _ in range(calls):
        connect_outbound(edge)
    edge.wire.clear()
    edge.events.clear()
    gc.collect()
    per_call = (len(gc.get_objects()) - before) / calls
    assert edge.core.active_calls == calls + 1
    assert per_call < 40, per_call
    # Its 2xx resender went with the parse (it refers back to the call).
    call = next(reversed(edge.core._calls.values()))
    assert call.a_retransmitter is None


def test_a_call_over_lets_its_dialogs_and_2xx_go_and_still_acknowledges_a_resent_2xx():
    """Issue 15: a finished call lingers up to 32 s with its transactions. Its dialogs (URIs,
    route sets) and the 2xx its A leg's INVITE transaction kept are no longer read then, and
    go (about 1.7 KiB a call); a 2xx the carrier sends again still gets the same ACK, and one
    with another tag (a fork answering late) still gets its own ACK and a BYE."""
    edge = Edge()
    a_invite = invite(PBX)
    edge.send(a_invite, PBX)
    (b_invite,) = edge.take(GATEWAY)
    b_ok = answer(b_invite, 200, tag="gw", peer=GATEWAY)
    edge.send(b_ok, GATEWAY)
    (a_ok,) = [m for m in edge.take(PBX) if isinstance(m, Response) and m.status == 200]
    call = next(iter(edge.core._calls.values()))
    assert call.a_txn.last_response is not None  # resent by the TU until the ACK
    edge.send(in_dialog("ACK", a_ok, a_invite, PBX, cseq=1), PBX)
    (b_ack,) = edge.take(GATEWAY)
    assert call.a_txn.last_response is None  # acknowledged: nothing resends it any more
    assert call.a.dialog is not None and call.b is not None and call.b.dialog is not None

    edge.send(in_dialog("BYE", a_ok, a_invite, PBX, cseq=2), PBX)
    (b_bye,) = edge.take(GATEWAY)
    edge.send(make_response(b_bye, 200), GATEWAY)
    assert len(edge.cdrs) == 1 and not edge.core._calls
    assert call.a.dialog is None and call.b.dialog is None and call.b.remote_tag == "gw"

    edge.send(b_ok, GATEWAY)  # the carrier missed our ACK
    (again,) = edge.take(GATEWAY)
    assert again.method == "ACK" and again.headers.get("Via") == b_ack.headers.get("Via")
    assert again.to_tag == "gw" and again.cseq == b_ack.cseq

    forked = answer(b_invite, 200, tag="fork2", peer=GATEWAY)
    edge.send(forked, GATEWAY)
    ack, bye = edge.take(GATEWAY)
    assert (ack.method, ack.to_tag, bye.method, bye.to_tag) == ("ACK", "fork2", "BYE", "fork2")
    assert len(edge.cdrs) == 1


def test_calls_that_ended_are_let_go_while_another_call_goes_on():
    """Issue 15: the memory of calls that ended returns. An answered call's deadline (its
    maximum duration, hours away) stays in the timer heap as a stale entry when the call ends,
    holding the call, its transactions and messages. Behind a call still in progress (its
    deadline earlier) up to 1,024 such entries stayed: through SIPp, about 1,000 calls (~10 MiB)
    were still alive long after 5,000 had ended. Now at most `COMPACT_MIN`, and none once the
    runtime has the core release its memory at a quiet moment (`B2bua.release_memory`)."""
    edge = Edge(trunks=[trunk_doc(max_cps=10_000, max_channels=10_000)])
    connect_outbound(edge)  # goes on throughout; its deadline comes before the others'
    calls = 300  # held at once, as the bench's 5,000 are
    answered = [connect_outbound(edge) for _ in range(calls)]
    edge.wire.clear()
    for cseq, (a_invite, a_ok, _b_invite, _b_ok) in enumerate(answered, start=2):
        edge.send(in_dialog("BYE", a_ok, a_invite, PBX, cseq=cseq), PBX)
        for b_bye in edge.take(GATEWAY):
            edge.send(make_response(b_bye, 200), GATEWAY)
    del answered, a_invite, a_ok, _b_invite, _b_ok, b_bye
    edge.wire.clear()
    edge.advance(64)  # every lingering transaction ends; then nothing happens
    assert edge.core.active_calls == 1 and len(edge.cdrs) == calls
    assert edge.core.held() == 1  # the call; its transactions ended
    gc.collect()
    assert COMPACT_MIN <= 64 and _count(Call) - 1 <= COMPACT_MIN  # all 300 with 1,024
    sizes = [sys.getsizeof(table) for table in (edge.core._calls, edge.core.layer._clients)]
    edge.core.release_memory()
    gc.collect()
    assert _count(Call) == 1 and edge.core.active_calls == 1  # the call going on
    kept = [type(o).__name__ for o in gc.get_objects() if type(o) in _PER_CALL_TYPES]
    assert len(kept) <= 8, kept  # that call's own transactions and messages (7)
    # Its tables are sized for what they hold, not for the 301 calls they held.
    assert sys.getsizeof(edge.core._calls) < sizes[0] / 4
    assert sys.getsizeof(edge.core.layer._clients) < sizes[1] / 4


def _count(kind: type) -> int:
    return sum(type(o) is kind for o in gc.get_objects())
