"""Requests the B2BUA must answer, not raise on: tags of no dialog, unknown Require, unreadable
To or From. On the B2BUA with a fake clock (the same scenes on the wire, against a running
edge: test_wire_conformance.py). Kept apart from test_b2bua.py, which the call state machine
rewrite owns."""

from __future__ import annotations

from edge.sip.message import make_request, new_branch
from edge.tests.test_b2bua import (
    GATEWAY,
    PBX,
    SDP,
    Edge,
    connect_outbound,
    finals,
    in_dialog,
    invite,
    reverse_request,
)


def swapped(method: str, request_from: str, request_to: str, call_id: str, source) -> object:
    host, port, _ = source
    return make_request(
        method,
        f"sip:edge@{host}",
        from_=request_to,
        to=request_from,
        call_id=call_id,
        cseq=7,
        via=f"SIP/2.0/UDP {host}:{port};branch={new_branch()}",
    )


def test_a_bye_whose_tags_match_no_dialog_gets_481_and_the_call_goes_on():
    edge = Edge()
    a_invite, a_ok, b_invite, b_ok = connect_outbound(edge)
    # The callee's BYE with From and To swapped: its Call-ID is the B leg's, its tags are not.
    callee_bye = reverse_request("BYE", b_invite, b_ok, GATEWAY, cseq=1)
    wrong = swapped(
        "BYE",
        callee_bye.headers.get("From"),
        callee_bye.headers.get("To"),
        b_invite.call_id,
        GATEWAY,
    )
    edge.send(wrong, GATEWAY)
    assert finals(edge.take(GATEWAY)) == [481]
    # The same from the caller's side.
    caller_bye = in_dialog("BYE", a_ok, a_invite, PBX, cseq=2)
    wrong = swapped(
        "BYE", caller_bye.headers.get("From"), caller_bye.headers.get("To"), a_invite.call_id, PBX
    )
    edge.send(wrong, PBX)
    assert finals(edge.take(PBX)) == [481]
    assert edge.take(GATEWAY) == [] and edge.cdrs == []
    # Requests of no dialog that are not answered (ACK) or that carry a body are no
    # different: nothing raises, nothing is relayed.
    for method in ("ACK", "INFO", "INVITE"):
        edge.send(
            swapped(
                method,
                callee_bye.headers.get("From"),
                callee_bye.headers.get("To"),
                b_invite.call_id,
                GATEWAY,
            ),
            GATEWAY,
        )
    assert set(finals(edge.take(GATEWAY))) <= {481}
    assert edge.take(PBX) == [] and edge.cdrs == []
    assert edge.core.active_calls == 1
    # The real BYE still ends the call, in one CDR.
    edge.send(caller_bye, PBX)
    assert finals(edge.take(PBX)) == [200]
    (cdr,) = edge.cdrs
    assert cdr.reason == "normal_clearing"


def test_unknown_require_is_420_on_options_and_invite():
    edge = Edge()
    for method in ("OPTIONS", "INVITE"):
        host, port, _ = PBX
        request = make_request(
            method,
            f"sip:+14155550123@{host}",
            from_=f"<sip:+14155550100@{host}>;tag=a1",
            to=f"<sip:+14155550123@{host}>",
            call_id=f"require-{method}",
            cseq=1,
            via=f"SIP/2.0/UDP {host}:{port};branch={new_branch()}",
            contact=f"<sip:+14155550100@{host}:{port}>",
            headers=[("Require", "x-nothing-we-know")],
        )
        edge.send(request, PBX)
        (response,) = [m for m in edge.take(PBX) if getattr(m, "status", 0) >= 200]
        assert response.status == 420
        assert response.headers.get("Unsupported") == "x-nothing-we-know"
    assert edge.take(GATEWAY) == []
    assert edge.core.active_calls == 0


def test_a_request_with_an_unreadable_to_or_no_from_is_400():
    edge = Edge()
    host, port, _ = PBX
    for broken in (b'To: "unterminated <sip:x@y>\r\n', b"From: sip:a@b;tag=1\r\n"):
        lines = [
            b"OPTIONS sip:edge@127.0.0.1 SIP/2.0",
            f"Via: SIP/2.0/UDP {host}:{port};branch={new_branch()}".encode(),
            b"From: sip:a@b;tag=1",
            b"To: sip:edge@127.0.0.1",
            b"Call-ID: broken",
            b"CSeq: 1 OPTIONS",
            b"Content-Length: 0",
        ]
        # Replace the header (an unreadable To) or drop it (no From).
        name = broken.split(b":", 1)[0]
        lines = [line for line in lines if not line.startswith(name + b":")]
        if name == b"To":
            lines.insert(2, broken.rstrip())
        data = b"\r\n".join(lines) + b"\r\n\r\n"
        edge._keep(edge.core.datagram_received(data, PBX, edge.now, edge.wall))
        assert finals(edge.take(PBX)) == [400]


def test_only_well_formed_end_to_end_headers_reach_the_callee():
    edge = Edge()
    a_invite = invite(
        PBX,
        Supported="timer, not a token, replaces",
        Allow="INVITE, ACK, BYE, " + "X" * 5000,
    )
    edge.send(a_invite, PBX)
    (b_invite,) = edge.take(GATEWAY)
    assert b_invite.headers.get_all("Supported") == ["timer", "replaces"]
    assert b_invite.headers.get_all("Allow") == ["INVITE", "ACK", "BYE"]
    assert b"X" * 100 not in b_invite.to_bytes()


def test_an_oversized_content_type_is_refused_and_nothing_reaches_the_callee():
    edge = Edge()
    a_invite = invite(PBX)
    a_invite.headers.set("Content-Type", "application/sdp;x=" + "y" * 8000)
    edge.send(a_invite, PBX)
    assert finals(edge.take(PBX)) == [400]
    assert edge.take(GATEWAY) == []


def test_a_b_leg_invite_too_large_for_udp_is_not_sent_and_the_call_fails_with_one_cdr():
    edge = Edge()
    # An SDP of ~2 KB: the B-leg INVITE would exceed RFC 3261 18.1.1's 1300 bytes over UDP.
    big_sdp = SDP + b"".join(b"a=x-filler:%04d %s\r\n" % (i, b"f" * 40) for i in range(40))
    a_invite = invite(PBX)
    a_invite.body = big_sdp
    edge.send(a_invite, PBX)
    edge.advance(1)
    assert edge.take(GATEWAY) == []
    assert set(finals(edge.take(PBX))) == {408}  # (retransmitted: the test never ACKs)
    (cdr,) = edge.cdrs
    assert cdr.final_code == 408
    assert edge.core.active_calls == 0
