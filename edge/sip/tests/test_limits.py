"""Limits on what a message may carry and what crosses between the legs of a call.

A 33 KB Content-Type once went from one leg to the other in one UDP datagram and crashed the
far end: header lines, Content-Type and the values that cross are bounded and checked here,
and a request too large for UDP (RFC 3261 18.1.1) is not sent as a datagram.
"""

from __future__ import annotations

import pytest

from edge.sip import RemoteProtocolError, parse_message, validate_for_proxy
from edge.sip.message import (
    MAX_CROSSING_VALUE_LENGTH,
    MAX_CROSSING_VALUES,
    MAX_HEADER_LINE_LENGTH,
    crossing_headers,
)
from edge.sip.tests.test_transaction import request
from edge.sip.timers import Timer
from edge.sip.transaction import SendMessage, Timeout, TransactionLayer


def options(*extra: str) -> bytes:
    lines = [
        "OPTIONS sip:edge@192.0.2.1 SIP/2.0",
        "Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKlimits",
        "From: <sip:a@192.0.2.10>;tag=1",
        "To: <sip:edge@192.0.2.1>",
        "Call-ID: limits@192.0.2.10",
        "CSeq: 1 OPTIONS",
        *extra,
        "Content-Length: 0",
        "",
        "",
    ]
    return "\r\n".join(lines).encode()


def test_a_header_line_over_the_limit_is_refused_with_400() -> None:
    fine = "X-Long: " + "a" * (MAX_HEADER_LINE_LENGTH - len("X-Long: "))
    validate_for_proxy(parse_message(options(fine)))
    with pytest.raises(RemoteProtocolError) as raised:
        parse_message(options(fine + "a"))
    assert (raised.value.status_hint, raised.value.reason) == (400, "Header Line Too Long")


@pytest.mark.parametrize(
    "content_type",
    [
        "application/sdp;" + "x" * 33_000,  # the 33 KB one (a line under the header limit
        "application/sdp; charset",  # is refused by the Content-Type's own limit)
        "application/sdp; a=b c",
        "application",
        'application/sdp; q="unterminated',
    ],
)
def test_a_malformed_or_oversized_content_type_is_a_400(content_type: str) -> None:
    data = options(f"Content-Type: {content_type}")
    try:
        message = parse_message(data, max_size=100_000)
    except RemoteProtocolError as error:  # too long a line: refused by the parser already
        assert error.status_hint == 400
        return
    with pytest.raises(RemoteProtocolError) as raised:
        validate_for_proxy(message)
    assert raised.value.status_hint == 400
    assert "Content-Type" in raised.value.reason


def test_well_formed_content_types_pass() -> None:
    for content_type in ("application/sdp", 'multipart/mixed;boundary="unique-boundary-1"'):
        validate_for_proxy(parse_message(options(f"Content-Type: {content_type}")))


def test_only_well_formed_bounded_values_cross() -> None:
    message = parse_message(
        options(
            "Supported: timer, 100rel, not a token, replaces",
            "Allow: INVITE, " + "X" * (MAX_CROSSING_VALUE_LENGTH + 1) + ", BYE",
            "Accept: application/sdp;level=1, application/*, */*, text/h tml",
            'Reason: Q.850;cause=16;text="Normal call clearing", SIP;cause=;text="x"',
            "Privacy: id;user",
            'Supported: "unterminated, timer',
        )
    )
    copied = crossing_headers(message, ("Allow", "Supported", "Accept", "Privacy", "Reason"))
    assert copied == [
        ("Allow", "INVITE"),
        ("Allow", "BYE"),
        ("Supported", "timer"),
        ("Supported", "100rel"),
        ("Supported", "replaces"),
        ("Accept", "application/sdp;level=1"),
        ("Accept", "application/*"),
        ("Accept", "*/*"),
        ("Privacy", "id;user"),
        ("Reason", 'Q.850;cause=16;text="Normal call clearing"'),
    ]


def test_the_number_of_crossing_values_is_bounded() -> None:
    many = ", ".join(f"ext{i}" for i in range(MAX_CROSSING_VALUES + 10))
    message = parse_message(options(f"Supported: {many}"))
    assert len(crossing_headers(message, ("Supported",))) == MAX_CROSSING_VALUES


def test_a_request_too_large_for_udp_is_not_sent_and_times_out_at_once() -> None:
    layer = TransactionLayer()
    big = request("INVITE")
    big.headers.add("X-Padding", "p" * layer.udp_request_limit)
    client, events = layer.send_request(big, ("198.51.100.5", 5060, "udp"), 10.0)
    assert events == []
    assert dict(client.timers) == {Timer.B: 10.0}
    assert layer.next_timer() == 10.0
    timed_out = layer.on_timer(10.0)
    assert any(isinstance(event, Timeout) for event in timed_out)
    assert not any(isinstance(event, SendMessage) for event in timed_out)


def test_the_same_request_goes_over_tcp_and_a_small_one_over_udp() -> None:
    layer = TransactionLayer()
    big = request("INVITE", transport="TCP")
    big.headers.add("X-Padding", "p" * layer.udp_request_limit)
    _, events = layer.send_request(big, ("198.51.100.5", 5060, "tcp"), 10.0)
    assert [type(event) for event in events] == [SendMessage]
    _, events = layer.send_request(request("OPTIONS"), ("198.51.100.5", 5060, "udp"), 10.0)
    assert [type(event) for event in events] == [SendMessage]
