"""Transactions driven through their timers with a fake clock, and the layer's matching."""

from __future__ import annotations

import gc
import math
import weakref

import pytest

from edge.sip.errors import LocalProtocolError, RemoteProtocolError
from edge.sip.message import Request, Response, make_request, make_response, new_branch
from edge.sip.parser import parse_message
from edge.sip.timers import COMPACT_MIN, Timer, TimerConfig, TimerQueue
from edge.sip.transaction import (
    MAX_TIMERS,
    ClientInviteTransaction,
    ClientNonInviteTransaction,
    DeliverToTU,
    SendMessage,
    ServerInviteTransaction,
    ServerNonInviteTransaction,
    Terminated,
    Timeout,
    TransactionEvent,
    TransactionLayer,
    TransactionState,
    TransportError,
    make_cancel,
)

TRANSACTION_KINDS = (
    ClientInviteTransaction,
    ClientNonInviteTransaction,
    ServerInviteTransaction,
    ServerNonInviteTransaction,
)
UAC = ("192.0.2.10", 5060)
UAS = ("198.51.100.5", 5060)


def request(
    method: str = "INVITE",
    *,
    transport: str = "UDP",
    branch: str | None = None,
    cseq: int = 1,
    routes: tuple[str, ...] = (),
    to_tag: str | None = None,
) -> Request:
    to = "<sip:+14155550123@198.51.100.5>" + (f";tag={to_tag}" if to_tag else "")
    return make_request(
        method,
        "sip:+14155550123@198.51.100.5",
        from_='"Alice" <sip:alice@192.0.2.10>;tag=a1',
        to=to,
        call_id="call-1@192.0.2.10",
        cseq=cseq,
        via=f"SIP/2.0/{transport} 192.0.2.10:5060;branch={branch or new_branch()}",
        contact="<sip:alice@192.0.2.10>",
        headers=[("Route", route) for route in routes],
    )


def wire(message: Request | Response) -> Request | Response:
    """The message as the other side parses it."""
    return parse_message(bytes(message))


def run_timers(
    layer: TransactionLayer, until: float = math.inf
) -> list[tuple[float, TransactionEvent]]:
    """Fire every deadline up to `until`, returning each event with the time it happened."""
    happened = []
    while (deadline := layer.next_timer()) is not None and deadline <= until:
        happened += [(deadline, event) for event in layer.on_timer(deadline)]
    return happened


def send_times(happened: list[tuple[float, TransactionEvent]]) -> list[float]:
    return [at for at, event in happened if isinstance(event, SendMessage)]


def test_timer_durations_follow_rfc3261_table_4() -> None:
    config = TimerConfig(t1=0.5, t2=4.0, t4=5.0)
    unreliable = config.durations(reliable=False)
    reliable = config.durations(reliable=True)
    assert unreliable == {
        Timer.A: 0.5,
        Timer.B: 32.0,
        Timer.D: 32.0,
        Timer.E: 0.5,
        Timer.F: 32.0,
        Timer.G: 0.5,
        Timer.H: 32.0,
        Timer.I: 5.0,
        Timer.J: 32.0,
        Timer.K: 5.0,
        Timer.L: 32.0,
        Timer.M: 32.0,
    }
    assert set(unreliable) - set(reliable) == {Timer.A, Timer.E, Timer.G}
    assert all(reliable[t] == 0 for t in (Timer.D, Timer.I, Timer.J, Timer.K))
    assert TimerConfig(t1=0.1).durations(reliable=False)[Timer.B] == pytest.approx(6.4)
    with pytest.raises(LocalProtocolError):
        TimerConfig(t1=5.0, t2=4.0)


class _Item:
    """A timer queue's item: its deadline, as a call or transaction would report it."""

    def __init__(self, deadline: float | None) -> None:
        self.deadline = deadline


def test_timer_queue_skips_superseded_deadlines() -> None:
    queue: TimerQueue[_Item] = TimerQueue()
    early, late = _Item(1.0), _Item(5.0)
    queue.update(early, early.deadline)
    queue.update(late, late.deadline)
    early.deadline = 9.0  # moved: its entry at 1.0 is now stale
    queue.update(early, early.deadline)
    assert queue.next_deadline() == 5.0
    assert queue.pop_due(4.9) == []
    assert queue.pop_due(9.0) == [late, early]
    assert queue.next_deadline() is None
    late.deadline = None
    queue.update(late, late.deadline)
    assert len(queue) == 0


def test_timer_queue_lets_go_of_items_whose_deadline_moved_or_went() -> None:
    """An ended call's entry at its maximum duration (hours away) must not keep it alive."""

    queue: TimerQueue[_Item] = TimerQueue()
    alive = [_Item(1.0 + i) for i in range(10)]
    for item in alive:
        queue.update(item, item.deadline)
    ended, lingering = [], []
    for i in range(20_000):  # calls answered (deadline hours away), then ended
        item = _Item(14_400.0 + i)
        queue.update(item, item.deadline)
        item.deadline = 30.0 + i if i % 200 == 0 else None  # a few linger a while
        queue.update(item, item.deadline)
        (ended if item.deadline is None else lingering).append(weakref.ref(item))
        del item
    gc.collect()
    held = sum(ref() is not None for ref in ended)
    # Without the rebuilds all 19,900 would be held until their hours-away deadline.
    assert held <= len(alive) + len(lingering) + COMPACT_MIN, held
    assert all(ref() is not None for ref in lingering)
    assert queue.pop_due(10.0) == alive  # order and deadlines kept through the rebuilds
    assert len(queue) == len(lingering)


# --- client INVITE ------------------------------------------------------------------------


def test_client_invite_retransmits_doubling_until_timer_b() -> None:
    layer = TransactionLayer()
    txn, events = layer.send_request(request(), UAS, 0.0)
    assert [type(e) for e in events] == [SendMessage]
    happened = run_timers(layer)
    # Timer A doubles without a cap: 0.5, 1, 2, 4, 8, 16 s apart; Timer B ends it at 64*T1.
    assert send_times(happened) == [0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert happened[-2:] == [(32.0, Timeout(txn)), (32.0, Terminated(txn))]
    assert len(layer) == 0


def test_timers_keep_their_start_order_and_never_exceed_two() -> None:
    """A transaction keeps its running timers in two pairs of slots, not a dict (issue 15:
    a dict of one or two deadlines was about 420 bytes on every lingering transaction).
    Started order is kept, so of two timers due at once the older fires first; a timer
    that fired and was started again goes last."""
    for kind in TRANSACTION_KINDS:
        assert all(len(timers) <= MAX_TIMERS for timers in kind.TIMERS.values()), kind
    layer = TransactionLayer()
    txn, _ = layer.send_request(request(), UAS, 0.0)
    assert list(txn.timers.items()) == [(Timer.A, 0.5), (Timer.B, 32.0)]
    shared = layer.config.durations(reliable=False)  # one per configuration, not per transaction
    assert [r for r in gc.get_referents(txn) if isinstance(r, dict) and r is not shared] == []
    layer.on_timer(0.5)  # Timer A fires and is started again, after B
    assert list(txn.timers.items()) == [(Timer.B, 32.0), (Timer.A, 1.5)]
    with pytest.raises(LocalProtocolError, match="more than 2 timers"):
        txn._start_timer(Timer.D, 40.0)
    # Two due at once: the one started first (B) fires first, and ends the transaction.
    txn._start_timer(Timer.A, 32.0)  # a running timer moved keeps its place
    assert list(txn.timers) == [Timer.B, Timer.A]
    assert [type(e) for e in layer.on_timer(32.0)] == [Timeout, Terminated]
    assert txn.timers == {} and txn.next_timer() is None


def test_a_tu_that_wrote_the_via_gives_its_branch_and_transport() -> None:
    """`send_request(via=...)`: the layer keys and times the transaction by the branch and
    transport given (the TU's own Via, not parsed back), and still refuses a branch
    without the RFC 3261 cookie."""
    layer = TransactionLayer()
    branch = new_branch()
    invite = request(transport="TCP", branch=branch)
    txn, events = layer.send_request(invite, UAS, 0.0, via=(branch, "TCP"))
    assert [type(e) for e in events] == [SendMessage]
    assert txn.reliable and txn.key == (branch, "INVITE")
    events = layer.receive(wire(make_response(invite, 180, to_tag="b1")), UAS, 0.1)
    assert [type(e) for e in events] == [DeliverToTU]
    with pytest.raises(LocalProtocolError):
        layer.send_request(request(branch="rfc2543"), UAS, 0.0, via=("rfc2543", "UDP"))


def test_client_invite_stops_retransmitting_on_provisional() -> None:
    layer = TransactionLayer()
    invite = request()
    txn, _ = layer.send_request(invite, UAS, 0.0)
    events = layer.receive(wire(make_response(invite, 180, to_tag="b1")), UAS, 0.7)
    assert [type(e) for e in events] == [DeliverToTU]
    assert txn.state is TransactionState.PROCEEDING
    assert layer.next_timer() is None  # no A, no B: the TU's own timer decides when to CANCEL


def test_client_invite_acks_non_2xx_itself_and_absorbs_retransmissions() -> None:
    layer = TransactionLayer()
    routes = ("<sip:proxy1.example.com;lr>", "<sip:proxy2.example.com;lr>")
    invite = request(routes=routes, cseq=7)
    txn, _ = layer.send_request(invite, UAS, 0.0)
    busy = wire(make_response(invite, 486, to_tag="b1"))
    events = layer.receive(busy, UAS, 0.1)
    assert [type(e) for e in events] == [SendMessage, DeliverToTU]
    ack = wire(events[0].message)
    assert isinstance(ack, Request)
    assert (ack.method, ack.uri, ack.call_id, ack.cseq) == (
        "ACK",
        invite.uri,
        invite.call_id,
        (7, "ACK"),
    )
    assert ack.top_via.branch == invite.top_via.branch
    assert len(ack.vias) == 1
    assert ack.headers.get("From") == invite.headers.get("From")
    assert ack.to_tag == "b1"
    assert ack.headers.get_all("Route") == list(routes)
    assert txn.state is TransactionState.COMPLETED

    again = layer.receive(wire(busy), UAS, 0.6)
    assert [type(e) for e in again] == [SendMessage]  # the same ACK again, nothing to the TU
    assert again[0].message is events[0].message
    assert run_timers(layer) == [(32.1, Terminated(txn))]  # Timer D


def test_client_invite_passes_every_2xx_to_the_tu_while_accepted() -> None:
    layer = TransactionLayer()
    invite = request()
    txn, _ = layer.send_request(invite, UAS, 0.0)
    ok = make_response(invite, 200, to_tag="b1")
    forked_ok = make_response(invite, 200, to_tag="b2")
    first = layer.receive(wire(ok), UAS, 0.1)
    assert [type(e) for e in first] == [DeliverToTU]  # no ACK: the TU acknowledges a 2xx
    assert txn.state is TransactionState.ACCEPTED
    assert [type(e) for e in layer.receive(wire(ok), UAS, 0.6)] == [DeliverToTU]
    assert [type(e) for e in layer.receive(wire(forked_ok), UAS, 0.7)] == [DeliverToTU]
    assert layer.receive(wire(make_response(invite, 180, to_tag="b3")), UAS, 0.8) == []
    assert run_timers(layer) == [(32.1, Terminated(txn))]  # Timer M
    assert layer.receive(wire(ok), UAS, 40.0) == []  # stray 2xx after M: dropped


def test_client_invite_on_reliable_transport() -> None:
    layer = TransactionLayer()
    invite = request(transport="TCP")
    txn, _ = layer.send_request(invite, UAS, 0.0)
    assert txn.reliable
    assert layer.next_timer() == 32.0  # only Timer B: no retransmissions
    events = layer.receive(wire(make_response(invite, 503, to_tag="b1")), UAS, 0.1)
    assert [type(e) for e in events] == [SendMessage, DeliverToTU, Terminated]  # D = 0
    assert len(layer) == 0


# --- client non-INVITE --------------------------------------------------------------------


def test_client_non_invite_backs_off_to_t2_until_timer_f() -> None:
    layer = TransactionLayer()
    txn, _ = layer.send_request(request("OPTIONS"), UAS, 0.0)
    happened = run_timers(layer)
    assert send_times(happened) == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert happened[-2:] == [(32.0, Timeout(txn)), (32.0, Terminated(txn))]


def test_client_non_invite_retransmits_every_t2_once_proceeding() -> None:
    layer = TransactionLayer()
    bye = request("BYE", to_tag="b1")
    txn, _ = layer.send_request(bye, UAS, 0.0)
    run_timers(layer, until=0.5)
    layer.receive(wire(make_response(bye, 100)), UAS, 1.0)
    assert txn.state is TransactionState.PROCEEDING
    happened = run_timers(layer, until=14.0)
    assert send_times(happened) == [1.5, 5.5, 9.5, 13.5]
    events = layer.receive(wire(make_response(bye, 200)), UAS, 14.0)
    assert [type(e) for e in events] == [DeliverToTU]
    assert layer.receive(wire(make_response(bye, 200)), UAS, 14.5) == []  # absorbed
    assert run_timers(layer) == [(19.0, Terminated(txn))]  # Timer K = T4


def test_client_non_invite_on_reliable_transport_ends_with_the_final() -> None:
    layer = TransactionLayer()
    options = request("OPTIONS", transport="TLS")
    txn, _ = layer.send_request(options, UAS, 0.0)
    assert layer.next_timer() == 32.0
    events = layer.receive(wire(make_response(options, 200)), UAS, 0.1)
    assert events == [events[0], Terminated(txn)]
    assert isinstance(events[0], DeliverToTU)


# --- server INVITE ------------------------------------------------------------------------


def test_server_invite_sends_100_and_answers_retransmissions_with_the_last_response() -> None:
    layer = TransactionLayer()
    invite = wire(request())
    events = layer.receive(invite, UAC, 0.0)
    assert [type(e) for e in events] == [SendMessage, DeliverToTU]
    trying = events[0].message
    assert isinstance(trying, Response) and trying.status == 100
    txn = events[1].transaction
    assert isinstance(txn, ServerInviteTransaction)
    retransmitted = layer.receive(wire(invite), UAC, 0.5)
    assert [e.message for e in retransmitted if isinstance(e, SendMessage)] == [trying]
    ringing = make_response(invite, 180, to_tag="b1")
    layer.send_response(txn, ringing, 1.0)
    assert layer.receive(wire(invite), UAC, 1.5) == [SendMessage(ringing, UAC, txn)]


def test_server_invite_without_automatic_100_leaves_it_to_the_tu() -> None:
    layer = TransactionLayer(send_trying=False)
    invite = wire(request())
    events = layer.receive(invite, UAC, 0.0)
    assert [type(e) for e in events] == [DeliverToTU]
    assert layer.receive(wire(invite), UAC, 0.5) == []  # nothing sent yet, nothing to resend


def test_server_invite_retransmits_non_2xx_until_timer_h() -> None:
    layer = TransactionLayer()
    invite = wire(request())
    txn = layer.receive(invite, UAC, 0.0)[-1].transaction
    assert txn is not None
    layer.send_response(txn, make_response(invite, 486, to_tag="b1"), 0.0)
    happened = run_timers(layer)
    # Timer G doubles up to T2; Timer H gives up on the ACK at 64*T1.
    assert send_times(happened) == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert happened[-2:] == [(32.0, Timeout(txn)), (32.0, Terminated(txn))]


def test_server_invite_ack_confirms_then_timer_i_terminates() -> None:
    layer = TransactionLayer()
    invite = request(branch="z9hG4bKbusy")
    txn = layer.receive(wire(invite), UAC, 0.0)[-1].transaction
    assert txn is not None
    layer.send_response(txn, make_response(invite, 486, to_tag="b1"), 0.0)
    ack = request("ACK", branch="z9hG4bKbusy", to_tag="b1")
    assert layer.receive(wire(ack), UAC, 0.1) == []  # absorbed, not for the TU
    assert txn.state is TransactionState.CONFIRMED
    assert layer.receive(wire(ack), UAC, 0.2) == []
    assert layer.receive(wire(invite), UAC, 0.3) == []
    assert run_timers(layer) == [(5.1, Terminated(txn))]  # Timer I = T4


def test_server_invite_accepted_absorbs_invite_retransmissions_until_timer_l() -> None:
    layer = TransactionLayer()
    invite = wire(request())
    txn = layer.receive(invite, UAC, 0.0)[-1].transaction
    assert txn is not None
    ok = make_response(invite, 200, to_tag="b1")
    assert layer.send_response(txn, ok, 0.2) == [SendMessage(ok, UAC, txn)]
    assert txn.state is TransactionState.ACCEPTED
    assert layer.receive(wire(invite), UAC, 0.5) == []  # the TU retransmits the 2xx, not us
    assert layer.send_response(txn, ok, 0.7) == [SendMessage(ok, UAC, txn)]
    assert run_timers(layer) == [(32.2, Terminated(txn))]  # Timer L


def test_server_invite_lets_its_2xx_go_once_the_tu_resends_it_no_more() -> None:
    """`answer_done`: in Accepted nothing but the TU sends the 2xx, so once the TU is done with
    it (the ACK came, the call is over) the transaction need not keep it for the rest of
    Timer L; before a 2xx, the last response stays, for the retransmissions it answers."""
    layer = TransactionLayer()
    invite = wire(request())
    txn = layer.receive(invite, UAC, 0.0)[-1].transaction
    assert isinstance(txn, ServerInviteTransaction)
    ringing = make_response(invite, 180, to_tag="b1")
    layer.send_response(txn, ringing, 0.1)
    txn.answer_done()  # Proceeding: the 180 still answers a retransmitted INVITE
    assert txn.last_response is ringing
    assert layer.receive(wire(invite), UAC, 0.15) == [SendMessage(ringing, UAC, txn)]
    ok = make_response(invite, 200, to_tag="b1")
    layer.send_response(txn, ok, 0.2)
    assert txn.last_response is ok
    txn.answer_done()
    assert txn.last_response is None
    assert not any(held is ok for held in gc.get_referents(txn))  # not kept in another slot
    assert layer.receive(wire(invite), UAC, 0.5) == []  # absorbed, as before
    assert run_timers(layer) == [(32.2, Terminated(txn))]  # Timer L as before


def test_server_invite_on_reliable_transport() -> None:
    layer = TransactionLayer()
    invite = wire(request(transport="TCP", branch="z9hG4bKrel"))
    txn = layer.receive(invite, UAC, 0.0)[-1].transaction
    assert txn is not None
    layer.send_response(txn, make_response(invite, 404, to_tag="b1"), 0.0)
    assert layer.next_timer() == 32.0  # Timer H only: no G
    ack = request("ACK", transport="TCP", branch="z9hG4bKrel", to_tag="b1")
    assert layer.receive(wire(ack), UAC, 0.1) == [Terminated(txn)]  # I = 0


# --- server non-INVITE --------------------------------------------------------------------


def test_server_non_invite_absorbs_then_resends_the_final_until_timer_j() -> None:
    layer = TransactionLayer()
    options = wire(request("OPTIONS"))
    events = layer.receive(options, UAC, 0.0)
    assert [type(e) for e in events] == [DeliverToTU]  # no automatic 100 outside INVITE
    txn = events[0].transaction
    assert isinstance(txn, ServerNonInviteTransaction)
    assert layer.receive(wire(options), UAC, 0.5) == []  # Trying: nothing to resend
    ok = make_response(options, 200, to_tag="b1")
    (sent,) = layer.send_response(txn, ok, 1.0)
    # Lingering 32 s, the final keeps its bytes, not its parse (issue 15: memory per call).
    assert ok._headers is None and sent == SendMessage(ok, UAC, txn)
    wire_bytes = ok.to_bytes()
    assert layer.receive(wire(options), UAC, 1.5) == [SendMessage(ok, UAC, txn)]
    assert ok.to_bytes() == wire_bytes and ok.to_tag == "b1"
    assert run_timers(layer) == [(33.0, Terminated(txn))]  # Timer J = 64*T1


def test_a_completed_non_invite_transaction_lets_its_request_go() -> None:
    """Issue 15: a finished call's BYE transactions linger (the caller's 32 s). In Completed a
    non-INVITE transaction answers a retransmission from its final (server) or absorbs a
    response (client), so it keeps neither the request nor its bytes; `request` says so."""
    layer = TransactionLayer()
    bye = wire(request("BYE", to_tag="b1"))
    server = layer.receive(bye, UAC, 0.0)[0].transaction
    assert isinstance(server, ServerNonInviteTransaction) and server.request is bye
    ok = make_response(bye, 200)
    layer.send_response(server, ok, 0.1)
    assert not any(held is bye for held in gc.get_referents(server))
    with pytest.raises(LocalProtocolError, match="let its request go"):
        _ = server.request
    assert layer.receive(wire(bye), UAC, 0.5) == [SendMessage(ok, UAC, server)]  # as before
    assert "completed" in repr(server)

    ours = request("BYE", to_tag="b2")
    client, _ = layer.send_request(ours, UAS, 1.0)
    assert client.request is ours
    layer.receive(wire(make_response(ours, 200)), UAS, 1.1)
    assert client.state is TransactionState.COMPLETED
    assert not any(held is ours for held in gc.get_referents(client))
    assert layer.receive(wire(make_response(ours, 200)), UAS, 1.2) == []  # absorbed
    assert run_timers(layer) == [(6.1, Terminated(client)), (32.1, Terminated(server))]


def test_server_non_invite_on_reliable_transport_ends_with_the_final() -> None:
    layer = TransactionLayer()
    options = wire(request("OPTIONS", transport="TCP"))
    txn = layer.receive(options, UAC, 0.0)[0].transaction
    assert txn is not None
    events = layer.send_response(txn, make_response(options, 200, to_tag="b1"), 0.0)
    assert [type(e) for e in events] == [SendMessage, Terminated]  # J = 0


# --- matching -----------------------------------------------------------------------------


def test_ack_of_a_2xx_has_its_own_branch_and_goes_to_the_tu_without_transaction() -> None:
    layer = TransactionLayer()
    invite = wire(request())
    txn = layer.receive(invite, UAC, 0.0)[-1].transaction
    assert txn is not None
    layer.send_response(txn, make_response(invite, 200, to_tag="b1"), 0.1)
    ack = wire(request("ACK", to_tag="b1"))
    assert layer.receive(ack, UAC, 0.2) == [DeliverToTU(ack, UAC, None)]


def test_cancel_is_its_own_transaction_and_names_the_invite_it_cancels() -> None:
    layer = TransactionLayer()
    invite = request()
    invite_txn = layer.receive(wire(invite), UAC, 0.0)[-1].transaction
    cancel = wire(make_cancel(invite))
    [delivered] = layer.receive(cancel, UAC, 0.5)
    assert isinstance(delivered, DeliverToTU)
    assert isinstance(delivered.transaction, ServerNonInviteTransaction)
    assert delivered.cancelled is invite_txn
    assert len(layer) == 2


def test_cancel_without_its_invite_names_none() -> None:
    layer = TransactionLayer()
    [delivered] = layer.receive(wire(make_cancel(request())), UAC, 0.0)
    assert isinstance(delivered, DeliverToTU)
    assert delivered.cancelled is None


def test_make_cancel_copies_what_rfc3261_9_1_requires() -> None:
    invite = request(routes=("<sip:proxy.example.com;lr>",), cseq=42)
    cancel = wire(make_cancel(invite))
    assert isinstance(cancel, Request)
    assert (cancel.method, cancel.uri, cancel.cseq) == ("CANCEL", invite.uri, (42, "CANCEL"))
    for name in ("From", "To", "Call-ID", "Route"):
        assert cancel.headers.get(name) == invite.headers.get(name)
    assert cancel.headers.get_all("Via") == invite.headers.get_all("Via")[:1]
    with pytest.raises(LocalProtocolError):
        make_cancel(request("BYE"))


def test_same_branch_from_another_sent_by_is_another_transaction() -> None:
    layer = TransactionLayer()
    first = request(branch="z9hG4bKsame")
    other = make_request(
        "INVITE",
        first.uri,
        from_=first.headers.get("From") or "",
        to=first.headers.get("To") or "",
        call_id=first.call_id,
        cseq=1,
        via="SIP/2.0/UDP 203.0.113.9:5060;branch=z9hG4bKsame",
    )
    layer.receive(wire(first), UAC, 0.0)
    events = layer.receive(wire(other), ("203.0.113.9", 5060), 0.0)
    assert any(isinstance(e, DeliverToTU) for e in events)
    assert len(layer) == 2


def test_responses_match_by_branch_and_cseq_method() -> None:
    layer = TransactionLayer()
    invite = request()
    invite_txn, _ = layer.send_request(invite, UAS, 0.0)
    layer.receive(wire(make_response(invite, 180, to_tag="b1")), UAS, 0.1)
    cancel = make_cancel(invite)
    cancel_txn, _ = layer.send_request(cancel, UAS, 0.2)
    [to_cancel] = layer.receive(wire(make_response(cancel, 200, to_tag="b1")), UAS, 0.3)
    assert isinstance(to_cancel, DeliverToTU)
    assert to_cancel.transaction is cancel_txn
    [to_invite, *_] = layer.receive(wire(make_response(invite, 487, to_tag="b1")), UAS, 0.4)
    assert isinstance(to_invite, SendMessage)  # the ACK
    assert to_invite.transaction is invite_txn
    stray = make_response(request(), 200, to_tag="x")
    assert layer.receive(wire(stray), UAS, 0.5) == []


def _rfc2543(method: str, *, to_tag: str | None = None, cseq: int = 5) -> Request:
    """A request from an RFC 2543 peer: no branch in its Via."""
    to = "<sip:bob@198.51.100.5>" + (f";tag={to_tag}" if to_tag else "")
    return make_request(
        method,
        "sip:bob@198.51.100.5",
        from_="<sip:old@192.0.2.10>;tag=o1",
        to=to,
        call_id="legacy@192.0.2.10",
        cseq=cseq,
        via="SIP/2.0/UDP 192.0.2.10:5060",
    )


def test_rfc2543_requests_match_on_dialog_fields_and_the_ack_on_our_tag() -> None:
    layer = TransactionLayer()
    invite = wire(_rfc2543("INVITE"))
    txn = layer.receive(invite, UAC, 0.0)[-1].transaction
    assert isinstance(txn, ServerInviteTransaction)
    assert [type(e) for e in layer.receive(wire(invite), UAC, 0.5)] == [SendMessage]  # 100 again
    layer.send_response(txn, make_response(invite, 486, to_tag="ours"), 1.0)
    wrong_ack = wire(_rfc2543("ACK", to_tag="not-ours"))
    assert layer.receive(wrong_ack, UAC, 1.1) == [DeliverToTU(wrong_ack, UAC, None)]
    assert layer.receive(wire(_rfc2543("ACK", to_tag="ours")), UAC, 1.2) == []
    assert txn.state is TransactionState.CONFIRMED
    next_invite = wire(_rfc2543("INVITE", cseq=6))
    assert layer.receive(next_invite, UAC, 1.3)[-1].transaction is not txn


def test_rfc2543_reinvite_and_its_2xx_ack_share_the_dialog_tag() -> None:
    layer = TransactionLayer()
    reinvite = wire(_rfc2543("INVITE", to_tag="d1"))
    txn = layer.receive(reinvite, UAC, 0.0)[-1].transaction
    assert txn is not None
    layer.send_response(txn, make_response(reinvite, 200), 0.1)
    ack = wire(_rfc2543("ACK", to_tag="d1"))
    # RFC 6026: an ACK matching an Accepted transaction goes to the TU.
    assert layer.receive(ack, UAC, 0.2) == [DeliverToTU(ack, UAC, txn)]


# --- misuse and transport errors ----------------------------------------------------------


def test_misuse_by_our_code_is_a_local_protocol_error() -> None:
    layer = TransactionLayer()
    with pytest.raises(LocalProtocolError):
        layer.send_request(request("ACK"), UAS, 0.0)
    legacy = _rfc2543("OPTIONS")
    with pytest.raises(LocalProtocolError):
        layer.send_request(legacy, UAS, 0.0)
    no_via = request("OPTIONS")
    no_via.headers.remove("Via")
    with pytest.raises(LocalProtocolError):
        layer.send_request(no_via, UAS, 0.0)
    invite = request()
    client, _ = layer.send_request(invite, UAS, 0.0)
    with pytest.raises(LocalProtocolError):
        layer.send_request(invite, UAS, 0.0)  # its branch is taken
    with pytest.raises(LocalProtocolError):
        layer.send_response(client, make_response(invite, 200), 0.0)
    server = layer.receive(wire(request()), UAC, 0.0)[-1].transaction
    assert server is not None
    layer.send_response(server, make_response(invite, 486, to_tag="b"), 0.0)
    with pytest.raises(LocalProtocolError):
        layer.send_response(server, make_response(invite, 200, to_tag="b"), 0.0)


def test_unexpected_peer_input_is_a_remote_protocol_error() -> None:
    layer = TransactionLayer()
    invite = request()
    layer.send_request(invite, UAS, 0.0)
    layer.receive(wire(make_response(invite, 486, to_tag="b1")), UAS, 0.1)
    with pytest.raises(RemoteProtocolError):  # a 2xx after a non-2xx final
        layer.receive(wire(make_response(invite, 200, to_tag="b1")), UAS, 0.2)
    server_invite = wire(request())
    layer.receive(server_invite, UAC, 0.0)
    ack = wire(
        make_request(
            "ACK",
            server_invite.uri,
            from_=server_invite.headers.get("From") or "",
            to=server_invite.headers.get("To") or "",
            call_id=server_invite.call_id,
            cseq=1,
            via=server_invite.headers.get_all("Via")[0],
        )
    )
    with pytest.raises(RemoteProtocolError):  # an ACK before any final response
        layer.receive(ack, UAC, 0.1)


def test_transport_error_informs_the_tu_and_ends_the_transaction() -> None:
    layer = TransactionLayer()
    txn, _ = layer.send_request(request(), UAS, 0.0)
    assert layer.transport_error(txn, 0.1) == [TransportError(txn), Terminated(txn)]
    assert len(layer) == 0
    assert layer.next_timer() is None
    assert layer.transport_error(txn, 0.2) == []  # reported late: nothing left to do


def test_layer_aggregates_deadlines_across_transactions() -> None:
    layer = TransactionLayer()
    layer.send_request(request("OPTIONS"), UAS, 0.0)
    layer.send_request(request("OPTIONS"), UAS, 0.2)
    assert layer.next_timer() == 0.5
    first = layer.on_timer(0.5)
    assert len(first) == 1
    assert layer.next_timer() == pytest.approx(0.7)
