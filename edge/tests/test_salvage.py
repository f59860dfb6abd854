"""edge/salvage.py: answers to requests the parser refused, on any input."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge.salvage import MAX_COPIED_BYTES, answer_unparsable
from edge.sip import RemoteProtocolError, Response, parse_message
from edge.sip.message import crossing_headers
from edge.sip.tests.test_fuzz import FUZZ_SETTINGS, SEEDS, mutated

HEADERS = (
    b"Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1\r\n"
    b"From: <sip:a@example.test>;tag=1\r\n"
    b"To: <sip:b@example.test>\r\n"
    b"Call-ID: salvage-1\r\n"
    b"CSeq: 1 OPTIONS\r\n"
)


@pytest.mark.parametrize(
    ("start_line", "status"),
    [
        (b" OPTIONS sip:b@example.test SIP/2.0", 400),  # leading space
        (b"OPTIONS  sip:b@example.test  SIP/2.0", 400),  # doubled spaces
        (b"OPTIONS sip:b@example.test SIP/2.0   ", 400),  # trailing spaces
        (b"OPTIONS sip:b@example.test SIP/7.0", 505),
    ],
)
def test_odd_request_lines_are_answered_with_the_transaction_headers(start_line, status):
    data = start_line + b"\r\n" + HEADERS + b"Content-Length: 0\r\n\r\n"
    with pytest.raises(RemoteProtocolError) as raised:
        parse_message(data)
    answer = answer_unparsable(data, raised.value)
    assert answer is not None and answer.status == status
    response = parse_message(answer.data)
    assert isinstance(response, Response) and response.status == status
    assert response.call_id == "salvage-1" and response.cseq == (1, "OPTIONS")
    assert response.top_via.branch == "z9hG4bK1"


@pytest.mark.parametrize(
    "data",
    [
        b"SIP/2.0 200 OK\r\n" + HEADERS + b"\r\n",  # a response: never answered
        b"ACK sip:b@example.test SIP/2.0 \r\n" + HEADERS + b"\r\n",  # an ACK: never answered
        b"OPTIONS sip:b SIP/2.0 x\r\n" + HEADERS.replace(b"Call-ID", b"X-Call-ID") + b"\r\n",
        b"\x00\xff garbage",
    ],
)
def test_nothing_to_answer(data):
    assert answer_unparsable(data, RemoteProtocolError("Malformed request line")) is None


@FUZZ_SETTINGS
@given(mutated(SEEDS), st.sampled_from([400, 505, 513]))
def test_salvage_never_raises_and_answers_are_sip(data: bytes, status: int) -> None:
    answer = answer_unparsable(data, RemoteProtocolError("Fuzzed\r\nreason", status))
    if answer is None:
        return
    assert len(answer.data) <= MAX_COPIED_BYTES + 200
    response = parse_message(answer.data)
    assert isinstance(response, Response) and response.status == status


@FUZZ_SETTINGS
@given(mutated(SEEDS))
def test_crossing_headers_never_raise(data: bytes) -> None:
    try:
        message = parse_message(data)
    except RemoteProtocolError:
        return
    names = ("Allow", "Supported", "Accept", "Privacy", "Reason", "Info-Package")
    for _name, value in crossing_headers(message, names):
        assert "\r" not in value and "\n" not in value and len(value) <= 1024
