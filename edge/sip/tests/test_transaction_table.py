"""Every (state, input) pair of every transaction kind, enumerated from the tables themselves.

A pair either is a transition of the kind's table, and the transaction lands in the state the
table names (after any zero-length timer of a reliable transport has fired), or it raises
LocalProtocolError or RemoteProtocolError and leaves the state alone. Nothing else escapes.
Hypothesis then drives random input sequences through the four kinds under the same rule.
"""

from __future__ import annotations

from collections import deque

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.sip.errors import LocalProtocolError, RemoteProtocolError
from edge.sip.message import Request, make_request, make_response
from edge.sip.timers import Timer, TimerConfig
from edge.sip.transaction import (
    ClientInviteTransaction,
    ClientNonInviteTransaction,
    ClientTransaction,
    SendMessage,
    ServerInviteTransaction,
    ServerNonInviteTransaction,
    ServerTransaction,
    Terminated,
    Transaction,
    TransactionEvent,
    TransactionInput,
    TransactionState,
)

KINDS: list[type[Transaction]] = [
    ClientInviteTransaction,
    ClientNonInviteTransaction,
    ServerInviteTransaction,
    ServerNonInviteTransaction,
]
CONFIG = TimerConfig()
PEER = ("203.0.113.7", 5060)
BRANCH = "z9hG4bKtable"
# What each side can be given through its public API, besides its timers.
CLIENT_INPUTS = (
    TransactionInput.RECV_1XX,
    TransactionInput.RECV_2XX,
    TransactionInput.RECV_FINAL,
    TransactionInput.TRANSPORT_ERROR,
)
SERVER_INPUTS = (
    TransactionInput.RECV_REQUEST,
    TransactionInput.RECV_ACK,
    TransactionInput.SEND_1XX,
    TransactionInput.SEND_2XX,
    TransactionInput.SEND_FINAL,
    TransactionInput.TRANSPORT_ERROR,
)
STATUS = {
    TransactionInput.RECV_1XX: 180,
    TransactionInput.RECV_2XX: 200,
    TransactionInput.RECV_FINAL: 486,
    TransactionInput.SEND_1XX: 180,
    TransactionInput.SEND_2XX: 200,
    TransactionInput.SEND_FINAL: 486,
}
PROTOCOL_ERRORS = (LocalProtocolError, RemoteProtocolError)


def inputs_of(kind: type[Transaction]) -> tuple[TransactionInput, ...]:
    return CLIENT_INPUTS if issubclass(kind, ClientTransaction) else SERVER_INPUTS


def table_request(kind: type[Transaction], reliable: bool) -> Request:
    """The request a transaction of the table tests is for (rebuilt when a test needs it: a
    non-INVITE transaction lets its own go in Completed)."""
    invite = kind in (ClientInviteTransaction, ServerInviteTransaction)
    return make_request(
        "INVITE" if invite else "OPTIONS",
        "sip:bob@198.51.100.5",
        from_="<sip:alice@192.0.2.10>;tag=a1",
        to="<sip:bob@198.51.100.5>",
        call_id="table@192.0.2.10",
        cseq=1,
        via=f"SIP/2.0/{'TCP' if reliable else 'UDP'} 192.0.2.10:5060;branch={BRANCH}",
    )


def new_transaction(kind: type[Transaction], reliable: bool) -> Transaction:
    request = table_request(kind, reliable)
    return kind(request, PEER, 0.0, key=("table",), config=CONFIG, reliable=reliable)


def apply(
    txn: Transaction, what: TransactionInput | Timer, now: float
) -> tuple[list[TransactionEvent], float]:
    """Give `what` to `txn` through its public API; return the events and the new time."""
    if isinstance(what, Timer):
        deadline = txn.timers[what]  # earlier timers fire first: all are retransmissions
        return txn.on_timer(deadline), deadline
    if what is TransactionInput.TRANSPORT_ERROR:
        return txn.transport_error(now), now
    request = table_request(type(txn), txn.reliable)
    if isinstance(txn, ClientTransaction):
        return txn.receive(make_response(request, STATUS[what], to_tag="b1"), now), now
    assert isinstance(txn, ServerTransaction)
    if what is TransactionInput.RECV_REQUEST:
        return txn.receive(request, now), now
    if what is TransactionInput.RECV_ACK:
        ack = make_request(
            "ACK",
            request.uri,
            from_=request.headers.get("From") or "",
            to="<sip:bob@198.51.100.5>;tag=b1",
            call_id=request.call_id,
            cseq=1,
            via=request.headers.get_all("Via")[0],
        )
        return txn.receive(ack, now), now
    return txn.send(make_response(request, STATUS[what], to_tag="b1"), now), now


def expected_state(
    kind: type[Transaction], reliable: bool, state: TransactionState, what: TransactionInput | Timer
) -> TransactionState:
    """The table's next state, followed through timers that run for zero seconds."""
    durations = CONFIG.durations(reliable=reliable)
    state = kind.TABLE[(state, what)][1]
    while zero := [t for t in kind.TIMERS[state] if durations.get(t) == 0]:
        state = kind.TABLE[(state, zero[0])][1]
    return state


def check_events(
    txn: Transaction, before: TransactionState, events: list[TransactionEvent]
) -> None:
    terminations = [e for e in events if isinstance(e, Terminated)]
    if txn.state is TransactionState.TERMINATED and before is not TransactionState.TERMINATED:
        assert terminations == [Terminated(txn)]
        assert events[-1] == Terminated(txn)
        assert txn.next_timer() is None
    else:
        assert terminations == []
    for event in events:
        assert event.transaction is txn
        if isinstance(event, SendMessage):
            assert event.addr == PEER


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.__name__)
def test_timers_and_table_agree(kind: type[Transaction]) -> None:
    # A timer fires only in states where it runs, so only there may the table mention it.
    states = set(kind.TIMERS)
    assert kind.INITIAL_STATE in states
    for (state, what), (_, next_state) in kind.TABLE.items():
        assert {state, next_state} <= states
        assert what in inputs_of(kind) or isinstance(what, Timer)
    for state, running in kind.TIMERS.items():
        in_table = {w for (s, w) in kind.TABLE if s is state and isinstance(w, Timer)}
        assert in_table == set(running), state
    assert kind.TIMERS[TransactionState.TERMINATED] == ()
    assert not [key for key in kind.TABLE if key[0] is TransactionState.TERMINATED]


@pytest.mark.parametrize("reliable", [False, True], ids=["udp", "tcp"])
@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.__name__)
def test_every_state_input_pair_follows_the_table(kind: type[Transaction], reliable: bool) -> None:
    paths: dict[TransactionState, list[TransactionInput | Timer]] = {kind.INITIAL_STATE: []}
    queue = deque([kind.INITIAL_STATE])
    tried: set[tuple[TransactionState, TransactionInput | Timer]] = set()
    while queue:
        state = queue.popleft()
        for what in (*inputs_of(kind), *Timer):
            txn, now = new_transaction(kind, reliable), 0.0
            for step in paths[state]:
                _, now = apply(txn, step, now)
            assert txn.state is state
            if isinstance(what, Timer) and what not in txn.timers:
                continue  # cannot fire here; test_timers_and_table_agree covers the table side
            tried.add((state, what))
            try:
                events, now = apply(txn, what, now)
            except PROTOCOL_ERRORS:
                assert (state, what) not in kind.TABLE
                assert txn.state is state
                continue
            assert txn.state is expected_state(kind, reliable, state, what)
            check_events(txn, state, events)
            if txn.state not in paths:
                paths[txn.state] = [*paths[state], what]
                queue.append(txn.state)
    if not reliable:  # every state and every transition is reachable over UDP
        assert set(paths) == set(kind.TIMERS)
        assert set(kind.TABLE) <= tried


@settings(max_examples=300, deadline=None)
@given(data=st.data(), kind=st.sampled_from(KINDS), reliable=st.booleans())
def test_random_input_sequences_only_follow_the_table(
    data: st.DataObject, kind: type[Transaction], reliable: bool
) -> None:
    txn, now = new_transaction(kind, reliable), 0.0
    choices: list[TransactionInput | Timer | str] = [*inputs_of(kind), "next timer"]
    for _ in range(data.draw(st.integers(min_value=1, max_value=15))):
        choice = data.draw(st.sampled_from(choices))
        before = txn.state
        if choice == "next timer":
            if not txn.timers:
                continue
            what: TransactionInput | Timer = min(txn.timers, key=txn.timers.__getitem__)
        else:
            assert not isinstance(choice, str)
            what = choice
        try:
            events, now = apply(txn, what, now)
        except PROTOCOL_ERRORS:
            assert (before, what) not in kind.TABLE
            assert txn.state is before
            continue
        assert txn.state is expected_state(kind, reliable, before, what)
        check_events(txn, before, events)
