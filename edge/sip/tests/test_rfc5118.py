"""IPv6 torture messages of RFC 5118, the key ones, written inline."""

from __future__ import annotations

import pytest

from edge.sip import (
    RemoteProtocolError,
    Request,
    SessionDescription,
    parse_message,
    validate_for_proxy,
)


def register(request_uri: str, contact: str) -> bytes:
    lines = [
        f"REGISTER {request_uri} SIP/2.0",
        "To: sip:user@example.com",
        "From: sip:user@example.com;tag=81x2",
        "Via: SIP/2.0/UDP [2001:db8::9:1];branch=z9hG4bKas3-111",
        "Call-ID: SSG9559905523997077@hlau_4100",
        "Max-Forwards: 70",
        f"Contact: {contact}",
        "CSeq: 98176 REGISTER",
        "Content-Length: 0",
        "",
        "",
    ]
    return "\r\n".join(lines).encode()


def parse_request(data: bytes) -> Request:
    message = parse_message(data)
    assert isinstance(message, Request)
    return message


def test_4_1_ipv6_reference_in_request_uri_and_headers() -> None:
    request = parse_request(register("sip:[2001:db8::10]", '"Caller" <sip:caller@[2001:db8::1]>'))
    validate_for_proxy(request)
    assert request.parsed_uri.host == "[2001:db8::10]"
    assert request.top_via.host == "[2001:db8::9:1]"
    assert request.contact[0].sip_uri.host == "[2001:db8::1]"


def test_4_2_ipv6_without_brackets_is_refused_with_400() -> None:
    request = parse_request(register("sip:2001:db8::10", '"Caller" <sip:caller@2001:db8::1>'))
    with pytest.raises(RemoteProtocolError) as raised:
        validate_for_proxy(request)
    assert raised.value.status_hint == 400


def test_4_3_port_inside_the_brackets_is_part_of_the_address() -> None:
    request = parse_request(register("sip:[2001:db8::10:5070]", "<sip:caller@[2001:db8::1]>"))
    assert (request.parsed_uri.host, request.parsed_uri.port) == ("[2001:db8::10:5070]", None)


def test_4_4_port_after_the_brackets() -> None:
    request = parse_request(register("sip:[2001:db8::10]:5070", "<sip:caller@[2001:db8::1]>"))
    assert (request.parsed_uri.host, request.parsed_uri.port) == ("[2001:db8::10]", 5070)


@pytest.mark.parametrize("received", ["[2001:db8::9:255]", "2001:db8::9:255"])
def test_4_5_via_received_with_or_without_brackets(received: str) -> None:
    via = f"Via: SIP/2.0/UDP [2001:db8::9:1]:6050;branch=z9hG4bKas3-111;received={received}"
    data = register("sip:[2001:db8::10]", "<sip:caller@[2001:db8::1]>").replace(
        b"Via: SIP/2.0/UDP [2001:db8::9:1];branch=z9hG4bKas3-111", via.encode()
    )
    request = parse_request(data)
    validate_for_proxy(request)
    assert request.top_via.port == 6050
    assert request.top_via.params["received"] == received


def test_4_7_ipv4_and_ipv6_vias_in_one_message() -> None:
    data = register("sip:[2001:db8::10]", "<sip:caller@[2001:db8::1]>").replace(
        b"Via: SIP/2.0/UDP [2001:db8::9:1];branch=z9hG4bKas3-111",
        b"Via: SIP/2.0/UDP [2001:db8::9:1]:6050;branch=z9hG4bKas3-111\r\n"
        b"Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKjhja8781hjuaij65144\r\n"
        b"Via: SIP/2.0/TCP [2001:db8::9:255];branch=z9hG4bK451jj;received=192.0.2.200",
    )
    request = parse_request(data)
    assert [via.host for via in request.vias] == [
        "[2001:db8::9:1]",
        "192.0.2.1",
        "[2001:db8::9:255]",
    ]


def test_4_9_dual_stack_sdp_and_rewriting_to_ipv6() -> None:
    body = (
        b"v=0\r\n"
        b"o=bob 280744730 28977631 IN IP4 host.example.com\r\n"
        b"s=\r\n"
        b"c=IN IP4 192.0.2.1\r\n"
        b"t=0 0\r\n"
        b"m=audio 22334 RTP/AVP 0\r\n"
        b"c=IN IP6 2001:db8::1\r\n"
    )
    sdp = SessionDescription.parse(body)
    assert sdp.connection_address == "192.0.2.1"
    assert sdp.media[0].connection_address == "2001:db8::1"
    sdp.connection_address = "2001:db8::20"
    assert b"c=IN IP6 2001:db8::20\r\n" in bytes(sdp)


def test_4_10_ipv4_mapped_ipv6_address() -> None:
    request = parse_request(
        register("sip:[::ffff:192.0.2.10]", "<sip:user@[::ffff:192.0.2.10]:19823>")
    )
    validate_for_proxy(request)
    assert request.contact[0].sip_uri.port == 19823
