"""Dialogs: creation on both sides, in-dialog requests, CSeq order, state transitions."""

from __future__ import annotations

import pytest

from edge.sip.dialog import AnswerRetransmitter, Dialog, DialogId, DialogState
from edge.sip.errors import LocalProtocolError, RemoteProtocolError
from edge.sip.message import Request, Response, make_response
from edge.sip.parser import parse_message
from edge.sip.tests import samples
from edge.sip.timers import TimerConfig
from edge.sip.transaction import SendMessage

PBX_VIA = "SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKnew;rport"
EDGE_VIA = "SIP/2.0/UDP 198.51.100.5:5060;branch=z9hG4bKedge"


def sample_request(data: bytes) -> Request:
    message = parse_message(data)
    assert isinstance(message, Request)
    return message


def sample_response(data: bytes) -> Response:
    message = parse_message(data)
    assert isinstance(message, Response)
    return message


def pbx_dialog() -> Dialog:
    """The calling PBX's side of the sample call, once the 200 came."""
    return Dialog.as_uac(sample_request(samples.INVITE), sample_response(samples.INVITE_OK))


def edge_dialog() -> Dialog:
    """The edge's side of the sample call, having sent the 200."""
    return Dialog.as_uas(sample_request(samples.INVITE), sample_response(samples.INVITE_OK))


def test_uac_dialog_takes_ids_route_set_and_target_from_the_2xx() -> None:
    dialog = pbx_dialog()
    assert dialog.state is DialogState.CONFIRMED
    assert dialog.id == DialogId("7f3c2a9e41b84d0c@192.0.2.10", "1928301774", "a6c85cf")
    assert dialog.id == DialogId.of_received_response(sample_response(samples.INVITE_OK))
    assert dialog.route_set == ("<sip:198.51.100.5;lr;ftag=1928301774>",)
    assert dialog.remote_target == "sip:b2bua-4f2a@198.51.100.5:5060"
    assert (dialog.local_seq, dialog.remote_seq) == (314159, None)


def test_uac_builds_the_samples_ack_and_bye() -> None:
    dialog = pbx_dialog()
    expected_ack = sample_request(samples.ACK)
    expected_bye = sample_request(samples.BYE)
    ack = sample_request(bytes(dialog.create_request("ACK", via=PBX_VIA)))
    bye = sample_request(bytes(dialog.create_request("BYE", via=PBX_VIA)))
    for built, expected in ((ack, expected_ack), (bye, expected_bye)):
        assert (built.method, built.uri, built.cseq) == (
            expected.method,
            expected.uri,
            expected.cseq,
        )
        for name in ("From", "To", "Call-ID", "Route"):
            assert built.headers.get(name) == expected.headers.get(name)
    assert dialog.state is DialogState.TERMINATED  # sending BYE ends the dialog
    with pytest.raises(LocalProtocolError):
        dialog.create_request("INFO", via=PBX_VIA)


def test_uas_dialog_checks_cseq_order_and_ends_on_bye() -> None:
    dialog = edge_dialog()
    assert dialog.id == DialogId("7f3c2a9e41b84d0c@192.0.2.10", "a6c85cf", "1928301774")
    assert dialog.id == DialogId.of_received_request(sample_request(samples.BYE))
    assert dialog.route_set == ()
    assert dialog.remote_target == "sip:+14155550100@192.0.2.10:5060;transport=udp"
    dialog.receive_request(sample_request(samples.ACK))  # repeats the INVITE's CSeq: fine
    stale = sample_request(samples.BYE)
    stale.headers.set("CSeq", "314158 BYE")
    with pytest.raises(RemoteProtocolError) as caught:
        dialog.receive_request(stale)
    assert caught.value.status_hint == 500
    assert dialog.state is DialogState.CONFIRMED
    dialog.receive_request(sample_request(samples.BYE))
    assert dialog.state is DialogState.TERMINATED
    assert dialog.remote_seq == 314160
    with pytest.raises(RemoteProtocolError) as caught:
        dialog.receive_request(sample_request(samples.BYE))
    assert caught.value.status_hint == 481


def test_uas_requests_start_a_local_cseq_and_go_to_the_remote_target() -> None:
    dialog = edge_dialog()
    info = dialog.create_request("INFO", via=EDGE_VIA, body=b"x", content_type="text/plain")
    bye = dialog.create_request("BYE", via=EDGE_VIA)
    assert (info.cseq, bye.cseq) == ((1, "INFO"), (2, "BYE"))
    assert bye.uri == dialog.remote_target
    assert bye.headers.get("From") == sample_request(samples.BYE).headers.get("To")
    assert bye.to_tag == "1928301774"
    assert "Route" not in bye.headers


def test_request_of_another_dialog_is_our_mistake() -> None:
    with pytest.raises(LocalProtocolError):
        edge_dialog().receive_request(sample_request(samples.REGISTER_AUTHORIZED))


def _response(request: Request, status: int, *, tag: str, contact: str, rr: list[str]) -> Response:
    headers = [("Contact", contact), *(("Record-Route", r) for r in rr)]
    return make_response(request, status, to_tag=tag, headers=headers)


def test_early_dialog_is_confirmed_by_2xx_which_recomputes_the_route_set() -> None:
    invite = sample_request(samples.INVITE)
    ringing = sample_response(samples.RINGING)
    dialog = Dialog.as_uac(invite, ringing)
    assert dialog.state is DialogState.EARLY
    ok = _response(
        invite,
        200,
        tag="a6c85cf",
        contact="<sip:callee@203.0.113.9>",
        rr=["<sip:p2.example.com;lr>", "<sip:p1.example.com;lr>"],
    )
    dialog.update_from_response(ok)
    assert dialog.state is DialogState.CONFIRMED
    assert dialog.route_set == ("<sip:p1.example.com;lr>", "<sip:p2.example.com;lr>")
    assert dialog.remote_target == "sip:callee@203.0.113.9"


@pytest.mark.parametrize("as_uac", [True, False])
def test_early_dialog_ends_with_a_non_2xx_final(as_uac: bool) -> None:
    invite = sample_request(samples.INVITE)
    ringing = sample_response(samples.RINGING)
    dialog = Dialog.as_uac(invite, ringing) if as_uac else Dialog.as_uas(invite, ringing)
    dialog.update_from_response(_response(invite, 183, tag="a6c85cf", contact="<sip:x@y>", rr=[]))
    assert dialog.state is DialogState.EARLY
    dialog.update_from_response(make_response(invite, 486, to_tag="a6c85cf"))
    assert dialog.state is DialogState.TERMINATED


def test_uas_confirms_its_early_dialog_by_sending_the_2xx() -> None:
    invite = sample_request(samples.INVITE)
    dialog = Dialog.as_uas(invite, sample_response(samples.RINGING))
    with pytest.raises(LocalProtocolError):
        dialog.create_request("BYE", via=EDGE_VIA)  # RFC 3261 15: not in an early dialog
    dialog.update_from_response(sample_response(samples.INVITE_OK))
    assert dialog.state is DialogState.CONFIRMED
    assert dialog.remote_target == "sip:+14155550100@192.0.2.10:5060;transport=udp"


def test_reinvite_refreshes_the_target_and_its_ack_reuses_its_cseq() -> None:
    dialog = pbx_dialog()
    reinvite = dialog.create_request("INVITE", via=PBX_VIA)
    assert reinvite.cseq == (314160, "INVITE")
    assert reinvite.headers.get("Contact") == "<sip:+14155550100@192.0.2.10:5060;transport=udp>"
    ok = _response(
        reinvite, 200, tag="ignored", contact="<sip:moved@198.51.100.6>", rr=["<sip:new;lr>"]
    )
    dialog.update_from_response(ok)
    assert dialog.remote_target == "sip:moved@198.51.100.6"
    assert dialog.route_set == ("<sip:198.51.100.5;lr;ftag=1928301774>",)  # not a target refresh
    ack = dialog.create_request("ACK", via=PBX_VIA)
    assert ack.cseq == (314160, "ACK")
    assert ack.uri == "sip:moved@198.51.100.6"


def test_received_reinvite_and_update_refresh_the_remote_target() -> None:
    dialog = edge_dialog()
    for cseq, method in ((314160, "INVITE"), (314161, "UPDATE")):
        refresh = sample_request(samples.BYE)
        refresh.method = method
        refresh.headers.set("CSeq", f"{cseq} {method}")
        refresh.headers.set("Contact", f"<sip:pbx@192.0.2.{cseq % 100}>")
        dialog.receive_request(refresh)
        assert dialog.remote_target == f"sip:pbx@192.0.2.{cseq % 100}"
    assert dialog.state is DialogState.CONFIRMED


@pytest.mark.parametrize(("status", "ends"), [(481, True), (408, True), (486, False), (491, False)])
def test_481_or_408_to_our_request_ends_the_dialog(status: int, ends: bool) -> None:
    dialog = pbx_dialog()
    info = dialog.create_request("INFO", via=PBX_VIA)
    dialog.update_from_response(make_response(info, status))
    assert (dialog.state is DialogState.TERMINATED) is ends


def test_strict_router_takes_the_request_uri_and_the_target_goes_last() -> None:
    invite = sample_request(samples.INVITE)
    ok = _response(
        invite,
        200,
        tag="s1",
        contact="<sip:callee@203.0.113.9>",
        rr=["<sip:loose.example.com;lr>", "<sip:strict.example.com;method=INVITE;x=1>"],
    )
    dialog = Dialog.as_uac(invite, ok)
    bye = dialog.create_request("BYE", via=PBX_VIA)
    assert bye.uri == "sip:strict.example.com;x=1"
    assert bye.headers.get_all("Route") == [
        "<sip:loose.example.com;lr>",
        "<sip:callee@203.0.113.9>",
    ]


def test_creation_misuse_and_malformed_input() -> None:
    invite = sample_request(samples.INVITE)
    with pytest.raises(LocalProtocolError):
        Dialog.as_uac(invite, sample_response(samples.TRYING))  # 100 never creates a dialog
    untagged = make_response(invite, 180)
    with pytest.raises(RemoteProtocolError):
        Dialog.as_uac(invite, untagged)
    with pytest.raises(LocalProtocolError):
        Dialog.as_uas(invite, untagged)
    no_contact = sample_request(samples.INVITE)
    no_contact.headers.remove("Contact")
    with pytest.raises(RemoteProtocolError):
        Dialog.as_uas(no_contact, sample_response(samples.RINGING))
    dialog = edge_dialog()
    with pytest.raises(LocalProtocolError):
        dialog.create_request("ACK", via=EDGE_VIA)  # the edge sent no INVITE in this dialog
    with pytest.raises(LocalProtocolError):
        dialog.create_request("CANCEL", via=EDGE_VIA)
    with pytest.raises(LocalProtocolError):
        dialog.update_from_response(make_response(sample_request(samples.OPTIONS), 200))


def test_answer_retransmitter_backs_off_to_t2_and_gives_up_at_64_t1() -> None:
    ok = sample_response(samples.INVITE_OK)
    answer = AnswerRetransmitter(ok, ("192.0.2.10", 5060), 10.0, TimerConfig())
    sent_at = []
    while (deadline := answer.next_timer()) is not None:
        sent = answer.on_timer(deadline)
        assert sent in ([], [SendMessage(ok, ("192.0.2.10", 5060))])
        sent_at += [deadline - 10.0] * len(sent)
    assert sent_at == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert answer.timed_out


def test_answer_retransmitter_stops_on_ack() -> None:
    answer = AnswerRetransmitter(sample_response(samples.INVITE_OK), ("192.0.2.10", 5060), 0.0)
    assert len(answer.on_timer(0.5)) == 1
    assert answer.on_timer(0.6) == []  # not due yet
    answer.acknowledged()
    assert answer.next_timer() is None
    assert not answer.timed_out
    with pytest.raises(LocalProtocolError):
        AnswerRetransmitter(sample_response(samples.BYE_OK), ("192.0.2.10", 5060), 0.0)


def test_requests_built_in_a_dialog_parse_back() -> None:
    dialog = pbx_dialog()
    update = dialog.create_request(
        "UPDATE",
        via=PBX_VIA,
        headers=[("Session-Expires", "1800")],
        body=b"v=0\r\n",
        content_type="application/sdp",
    )
    again = sample_request(bytes(update))
    assert again.headers.get("Session-Expires") == "1800"
    assert again.body == b"v=0\r\n"
    assert again.content_type == "application/sdp"


def test_answering_builds_the_uas_dialog_from_what_we_wrote_without_reading_the_response() -> None:
    """A B2BUA that renders its 2xx as bytes gives the dialog our tag, To and Contact itself;
    the dialog is the one `as_uas` reads out of that 2xx."""
    invite = sample_request(samples.INVITE)
    ok = sample_response(samples.INVITE_OK)
    to, tag = ok.headers.get("To"), ok.to_tag
    assert to is not None and tag is not None
    ours = Dialog.answering(
        invite,
        status=200,
        local_tag=tag,
        local_party=to,
        local_target=str(ok.contact[0].uri),
    )
    read = edge_dialog()
    fields = ("is_uac", "state", "id", "local_party", "remote_party", "local_seq")
    fields += ("remote_seq", "local_target", "remote_target", "route_set", "can_acknowledge")
    for name in fields:
        assert getattr(ours, name) == getattr(read, name), name
    early = Dialog.answering(invite, status=183, local_tag=tag, local_party=to, local_target=None)
    assert early.state is DialogState.EARLY
    with pytest.raises(LocalProtocolError):
        Dialog.answering(invite, status=100, local_tag=tag, local_party=to, local_target=None)


def test_uac_dialog_takes_our_contact_as_given() -> None:
    invite = sample_request(samples.INVITE)
    dialog = Dialog.as_uac(
        invite, sample_response(samples.INVITE_OK), local_target="sip:given@192.0.2.10"
    )
    assert dialog.local_target == "sip:given@192.0.2.10"
    assert pbx_dialog().local_target == str(invite.contact[0].uri)  # read when not given


def test_answer_retransmitter_takes_the_method_from_a_caller_that_wrote_the_answer() -> None:
    ok = sample_response(samples.INVITE_OK)
    answer = AnswerRetransmitter(ok, ("192.0.2.10", 5060), 0.0, method="INVITE")
    assert answer.on_timer(0.5) == [SendMessage(ok, ("192.0.2.10", 5060))]
    with pytest.raises(LocalProtocolError):
        AnswerRetransmitter(ok, ("192.0.2.10", 5060), 0.0, method="BYE")
