"""Two SIP cores over a fake network with a fake clock: whole calls, losses, races, duplicates.

Alice (a customer PBX, UAC) calls Bob (UAS). Each side is a TransactionLayer plus the few lines
of TU a test needs; every message crosses the network as bytes and is parsed again.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from edge.sip.dialog import AnswerRetransmitter, Dialog, DialogId, DialogState
from edge.sip.message import Request, Response, make_request, make_response, new_call_id, new_tag
from edge.sip.tests.fakenet import FakeNetwork, Peer
from edge.sip.tests.samples import SDP_ANSWER, SDP_OFFER
from edge.sip.transaction import (
    DeliverToTU,
    ServerInviteTransaction,
    Terminated,
    Timeout,
    TransactionState,
    make_cancel,
)

ALICE = ("192.0.2.10", 5060)
BOB = ("198.51.100.5", 5060)


def is_request(method: str):
    return lambda m: isinstance(m, Request) and m.method == method


def is_response(status: int, method: str = "INVITE"):
    return lambda m: isinstance(m, Response) and m.status == status and m.cseq[1] == method


def new_invite(alice: Peer, transport: str = "UDP") -> Request:
    return make_request(
        "INVITE",
        "sip:+14155550123@198.51.100.5",
        from_=f"<sip:+14155550100@192.0.2.10>;tag={new_tag()}",
        to="<sip:+14155550123@198.51.100.5>",
        call_id=new_call_id("192.0.2.10"),
        cseq=1,
        via=alice.via(transport),
        contact=f"<sip:+14155550100@192.0.2.10:5060;transport={transport.lower()}>",
        body=SDP_OFFER,
        content_type="application/sdp",
    )


def answer(request: Request, status: int) -> Response:
    body = SDP_ANSWER if status == 200 and request.method == "INVITE" else b""
    headers = [("Contact", "<sip:bob@198.51.100.5:5060>")]
    if body:
        headers.append(("Content-Type", "application/sdp"))
    return make_response(request, status, to_tag="bob-tag", headers=headers, body=body)


@dataclass
class Caller:
    """Alice's TU: makes a dialog from the 2xx and acknowledges every 2xx it is given."""

    peer: Peer
    invite: Request
    transport: str = "UDP"
    dialog: Dialog | None = None
    ack: Request | None = None

    def on_deliver(self, peer: Peer, delivered: DeliverToTU) -> None:
        response = delivered.message
        if not (isinstance(response, Response) and response.cseq[1] == "INVITE"):
            return
        if response.status // 100 != 2:
            return
        if self.dialog is None:
            self.dialog = Dialog.as_uac(self.invite, response)
            self.ack = self.dialog.create_request("ACK", via=peer.via(self.transport))
        assert DialogId.of_received_response(response) == self.dialog.id
        assert self.ack is not None
        peer.send_stateless(self.ack, BOB)  # RFC 3261 13.2.2.4: one ACK per 2xx received

    def hang_up(self) -> None:
        assert self.dialog is not None
        bye = self.dialog.create_request("BYE", via=self.peer.via(self.transport))
        self.peer.send_request(bye, BOB)


@dataclass
class Callee:
    """Bob's TU: answers the INVITE when told to, takes the ACK, answers BYE and CANCEL."""

    peer: Peer
    dialog: Dialog | None = None
    answering: AnswerRetransmitter | None = None
    acks: list[Request] = field(default_factory=list)

    @property
    def invite(self) -> DeliverToTU:
        [invite] = self.peer.requests("INVITE")
        return invite

    def answer(self, status: int = 200) -> None:
        invite = self.invite
        assert isinstance(invite.message, Request) and invite.transaction is not None
        response = answer(invite.message, status)
        if status == 200:
            self.dialog = Dialog.as_uas(invite.message, response)
            self.answering = self.peer.answer_invite(invite.transaction, response)
        else:
            self.peer.send_response(invite.transaction, response)

    def on_deliver(self, peer: Peer, delivered: DeliverToTU) -> None:
        request = delivered.message
        if not isinstance(request, Request):
            return
        if request.method == "ACK":
            assert delivered.transaction is None  # the ACK of a 2xx is not in a transaction
            assert self.dialog is not None and self.answering is not None
            self.dialog.receive_request(request)
            peer.acknowledged(self.answering)
            self.acks.append(request)
        elif request.method == "BYE":
            assert self.dialog is not None and delivered.transaction is not None
            self.dialog.receive_request(request)
            peer.send_response(delivered.transaction, answer(request, 200))
        elif request.method == "CANCEL":
            assert delivered.transaction is not None
            invite = delivered.cancelled
            peer.send_response(delivered.transaction, answer(request, 200 if invite else 481))
            if invite is not None and invite.state is TransactionState.PROCEEDING:
                peer.send_response(invite, answer(invite.request, 487))


def call(transport: str = "UDP") -> tuple[FakeNetwork, Caller, Callee]:
    net = FakeNetwork(latency=0.01)
    alice, bob = net.peer(ALICE), net.peer(BOB)
    caller = Caller(alice, new_invite(alice, transport), transport)
    callee = Callee(bob)
    alice.on_deliver, bob.on_deliver = caller.on_deliver, callee.on_deliver
    alice.send_request(caller.invite, BOB)
    return net, caller, callee


def statuses(peer: Peer) -> list[tuple[int, str]]:
    """The responses `peer`'s TU was given, as (status, CSeq method)."""
    return [
        (d.message.status, d.message.cseq[1])
        for d in peer.delivered
        if isinstance(d.message, Response)
    ]


def trace(net: FakeNetwork) -> list[str]:
    """Every datagram put on the network, in order: `alice INVITE`, `bob 200 BYE`..."""
    names = {ALICE: "alice", BOB: "bob"}
    lines = []
    for sent in net.wire:
        message = sent.message
        what = (
            message.method
            if isinstance(message, Request)
            else f"{message.status} {message.cseq[1]}"
        )
        lines.append(f"{names[sent.src]} {what}")
    return lines


def test_a_whole_call_invite_100_180_200_ack_bye() -> None:
    net, caller, callee = call()
    net.run(0.05)
    callee.peer.send_response(callee.invite.transaction, answer(callee.invite.message, 180))
    net.run(2.0)
    callee.answer(200)
    net.run(2.1)
    assert caller.dialog is not None and caller.dialog.state is DialogState.CONFIRMED
    assert callee.dialog is not None and callee.dialog.state is DialogState.CONFIRMED
    caller.hang_up()
    net.run(60.0)
    assert trace(net) == [
        "alice INVITE",
        "bob 100 INVITE",
        "bob 180 INVITE",
        "bob 200 INVITE",
        "alice ACK",
        "alice BYE",
        "bob 200 BYE",
    ]
    assert callee.dialog.state is DialogState.TERMINATED
    assert caller.dialog.state is DialogState.TERMINATED
    assert len(caller.peer.layer) == len(callee.peer.layer) == 0
    assert caller.peer.next_timer() is None and callee.peer.next_timer() is None


def test_cancel_before_the_answer_ends_the_invite_with_487() -> None:
    net, caller, callee = call()
    net.run(0.05)
    callee.peer.send_response(callee.invite.transaction, answer(callee.invite.message, 180))
    net.run(1.0)
    caller.peer.send_request(make_cancel(caller.invite), BOB)
    net.run(60.0)
    assert trace(net) == [
        "alice INVITE",
        "bob 100 INVITE",
        "bob 180 INVITE",
        "alice CANCEL",
        "bob 200 CANCEL",
        "bob 487 INVITE",
        "alice ACK",  # built by alice's INVITE transaction, absorbed by bob's
    ]
    assert [d.message.method for d in callee.peer.delivered] == ["INVITE", "CANCEL"]
    assert len(caller.peer.layer) == len(callee.peer.layer) == 0


def test_cancel_crossing_the_200_leaves_a_call_that_the_caller_hangs_up() -> None:
    net, caller, callee = call()
    net.run(0.05)
    callee.peer.send_response(callee.invite.transaction, answer(callee.invite.message, 180))
    net.run(1.0)
    # Both leave at t=1.0 and cross on the wire: the CANCEL reaches an answered INVITE.
    caller.peer.send_request(make_cancel(caller.invite), BOB)
    callee.answer(200)
    net.run(1.1)
    [cancel] = callee.peer.requests("CANCEL")
    assert isinstance(cancel.cancelled, ServerInviteTransaction)
    assert cancel.cancelled.state is TransactionState.ACCEPTED  # too late: no 487
    assert caller.dialog is not None  # alice got the 200 and acknowledged it
    caller.hang_up()  # RFC 3261 15: the CANCEL lost the race, so end the call with BYE
    net.run(60.0)
    assert sorted(trace(net)) == sorted(
        [
            "alice INVITE",
            "bob 100 INVITE",
            "bob 180 INVITE",
            "alice CANCEL",
            "bob 200 INVITE",
            "bob 200 CANCEL",
            "alice ACK",
            "alice BYE",
            "bob 200 BYE",
        ]
    )
    assert callee.dialog is not None and callee.dialog.state is DialogState.TERMINATED
    assert len(caller.peer.layer) == len(callee.peer.layer) == 0


def test_lost_ack_makes_the_callee_resend_the_2xx_until_acknowledged() -> None:
    net, _, callee = call()
    net.run(0.05)
    net.drop(is_request("ACK"))
    callee.answer(200)
    net.run(60.0)
    # Bob's TU resends the 200 after T1; alice's transaction (Accepted) hands it to her TU,
    # which acknowledges it again; then bob stops.
    assert trace(net) == [
        "alice INVITE",
        "bob 100 INVITE",
        "bob 200 INVITE",
        "alice ACK",
        "bob 200 INVITE",
        "alice ACK",
    ]
    assert [w.at for w in net.sent(BOB, is_response(200))] == [0.05, 0.55]
    assert len(callee.acks) == 1
    assert callee.answering is not None and not callee.answering.timed_out
    assert callee.dialog is not None and callee.dialog.state is DialogState.CONFIRMED


def test_ack_never_arriving_makes_the_callee_give_up_after_64_t1() -> None:
    net, _, callee = call()
    net.run(0.05)
    net.drop(is_request("ACK"), times=100)
    callee.answer(200)
    net.run(60.0)
    resent_at = [round(w.at - 0.05, 2) for w in net.sent(BOB, is_response(200))]
    assert resent_at == [0.0, 0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert callee.answering is not None and callee.answering.timed_out  # the TU sends BYE now


def test_lost_final_response_to_bye_is_resent_by_the_server_transaction() -> None:
    net, caller, callee = call()
    net.run(0.05)
    callee.answer(200)
    net.run(1.0)
    net.drop(is_response(200, "BYE"))
    caller.hang_up()
    net.run(60.0)
    assert trace(net)[-4:] == ["alice BYE", "bob 200 BYE", "alice BYE", "bob 200 BYE"]
    assert len(callee.peer.requests("BYE")) == 1  # the retransmission never reached the TU
    assert statuses(caller.peer)[-1] == (200, "BYE")
    assert len(caller.peer.layer) == len(callee.peer.layer) == 0


def test_lost_busy_is_resent_by_timer_g_and_acknowledged_by_the_transaction() -> None:
    net, caller, callee = call()
    net.run(0.05)
    net.drop(is_response(486))
    callee.answer(486)
    net.run(60.0)
    assert trace(net) == [
        "alice INVITE",
        "bob 100 INVITE",
        "bob 486 INVITE",
        "bob 486 INVITE",
        "alice ACK",
    ]
    assert [w.at for w in net.sent(BOB, is_response(486))] == [0.05, 0.55]
    assert statuses(caller.peer) == [(100, "INVITE"), (486, "INVITE")]
    assert [d.message.method for d in callee.peer.delivered] == ["INVITE"]  # ACK absorbed


def test_lost_invite_is_retransmitted_by_timer_a() -> None:
    net, _, callee = call_with_first_invite_dropped()
    net.run(1.0)
    assert [w.at for w in net.sent(ALICE, is_request("INVITE"))] == [0.0, 0.5]
    assert len(callee.peer.requests("INVITE")) == 1


def call_with_first_invite_dropped() -> tuple[FakeNetwork, Caller, Callee]:
    net = FakeNetwork(latency=0.01)
    net.drop(is_request("INVITE"))
    alice, bob = net.peer(ALICE), net.peer(BOB)
    caller, callee = Caller(alice, new_invite(alice)), Callee(bob)
    alice.on_deliver, bob.on_deliver = caller.on_deliver, callee.on_deliver
    alice.send_request(caller.invite, BOB)
    return net, caller, callee


def test_no_answer_at_all_times_out_after_64_t1() -> None:
    net = FakeNetwork()
    alice = net.peer(ALICE)  # nobody listens at BOB
    invite = new_invite(alice)
    txn = alice.send_request(invite, BOB)
    net.run(60.0)
    assert [w.at for w in net.wire] == [0.0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert alice.events[-2:] == [Timeout(txn), Terminated(txn)]


def test_every_datagram_duplicated_still_makes_one_call() -> None:
    net, caller, callee = call()
    net.duplicate(lambda m: True, times=1000)
    net.run(0.05)
    callee.answer(200)
    net.run(1.0)
    caller.hang_up()
    net.run(60.0)
    # Transactions absorbed every duplicate request; alice's TU got the 200 twice (RFC 6026)
    # and acknowledged both, and each of those ACKs arrived twice: ACKs have no transaction.
    methods = [d.message.method for d in callee.peer.delivered]
    assert methods == ["INVITE", "ACK", "ACK", "ACK", "ACK", "BYE"]
    # Provisionals and 2xx reach alice's TU as often as they arrive (RFC 3261 17.1.1.2,
    # RFC 6026); the duplicate 200 to BYE was absorbed by her completed BYE transaction.
    assert statuses(caller.peer) == [
        (100, "INVITE"),
        (100, "INVITE"),
        (200, "INVITE"),
        (200, "INVITE"),
        (200, "BYE"),
    ]
    assert callee.dialog is not None and callee.dialog.state is DialogState.TERMINATED
    assert len(caller.peer.layer) == len(callee.peer.layer) == 0


def test_delayed_200_crosses_an_invite_retransmission() -> None:
    net = FakeNetwork(latency=0.4)  # slower than T1: alice retransmits before any answer
    alice, bob = net.peer(ALICE), net.peer(BOB, send_trying=False)
    caller, callee = Caller(alice, new_invite(alice)), Callee(bob)
    alice.on_deliver, bob.on_deliver = caller.on_deliver, callee.on_deliver
    alice.send_request(caller.invite, BOB)
    net.run(0.4)
    callee.answer(200)
    net.run(60.0)
    # The INVITE retransmitted at 0.5 reaches bob's Accepted transaction and is absorbed.
    assert len(bob.requests("INVITE")) == 1
    assert [w.at for w in net.sent(ALICE, is_request("INVITE"))] == [0.0, 0.5]
    assert caller.dialog is not None and callee.acks


def test_a_whole_call_over_tcp_has_no_retransmissions_and_no_lingering() -> None:
    net, caller, callee = call("TCP")
    net.run(0.05)
    callee.answer(200)
    net.run(1.0)
    caller.hang_up()
    net.run(1.1)
    # BYE's transactions ended at once (J = K = 0); only the INVITE ones wait out L and M.
    assert [t.request.method for t in caller.peer.layer._clients.values()] == ["INVITE"]
    assert [t.request.method for t in callee.peer.layer._servers.values()] == ["INVITE"]
    net.run(60.0)
    assert len(net.wire) == 6
    assert len(caller.peer.layer) == len(callee.peer.layer) == 0
