"""SDP: byte-for-byte round trip, address and port rewrite, codec listing and filtering."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.sip import Codec, RemoteProtocolError, SessionDescription, parse_message
from edge.sip.tests.samples import SDP_ANSWER, SDP_OFFER

TORTURE_SDP = [
    parse_message((Path("/work/shared/conformance/rfc4475") / f"{name}.dat").read_bytes()).body
    for name in ("wsinv", "esc01", "sdp01", "bcast")
]


@pytest.mark.parametrize(
    "body", [SDP_OFFER, SDP_ANSWER, *TORTURE_SDP, SDP_OFFER.replace(b"\r\n", b"\n")]
)
def test_unmodified_description_round_trips(body: bytes) -> None:
    assert bytes(SessionDescription.parse(body)) == body


def test_reads_addresses_ports_and_codecs() -> None:
    sdp = SessionDescription.parse(SDP_OFFER)
    assert sdp.connection_address == "192.0.2.10"
    [audio] = sdp.media
    assert (audio.media_type, audio.port, audio.protocol) == ("audio", 16384, "RTP/AVP")
    assert audio.connection_address is None
    assert audio.formats == ["0", "8", "18", "101"]
    assert audio.codecs == [
        Codec(0, "PCMU", 8000),
        Codec(8, "PCMA", 8000),
        Codec(18, "G729", 8000),
        Codec(101, "telephone-event", 8000),
    ]


def test_static_payload_types_need_no_rtpmap() -> None:
    sdp = SessionDescription.parse(TORTURE_SDP[0])
    assert [codec.name for codec in sdp.media[0].codecs] == ["PCMU", "QCELP"]
    assert sdp.media[1].codecs == [Codec(31, "LPC", None)]  # a=rtpmap:31 LPC has no rate


def test_rewrites_connection_and_port_keeping_other_lines() -> None:
    sdp = SessionDescription.parse(SDP_OFFER)
    sdp.connection_address = "198.51.100.5"
    sdp.media[0].port = 40000
    expected = SDP_OFFER.replace(b"c=IN IP4 192.0.2.10", b"c=IN IP4 198.51.100.5").replace(
        b"m=audio 16384 ", b"m=audio 40000 "
    )
    assert bytes(sdp) == expected


def test_media_level_connection_is_added_after_the_m_line() -> None:
    sdp = SessionDescription.parse(SDP_OFFER)
    sdp.media[0].connection_address = "2001:db8::5"
    assert b"m=audio 16384 RTP/AVP 0 8 18 101\r\nc=IN IP6 2001:db8::5\r\n" in bytes(sdp)


def test_session_connection_goes_before_the_time_line() -> None:
    sdp = SessionDescription.parse(b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nt=0 0\r\n")
    sdp.connection_address = "192.0.2.9"
    assert (
        bytes(sdp) == b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.9\r\nt=0 0\r\n"
    )


def test_connection_after_a_last_line_without_line_end() -> None:
    sdp = SessionDescription.parse(b"v=0\r\nm=audio 4000 RTP/AVP 0")
    sdp.media[0].connection_address = "192.0.2.9"
    assert bytes(sdp) == b"v=0\r\nm=audio 4000 RTP/AVP 0\r\nc=IN IP4 192.0.2.9\r\n"


def test_port_count_is_kept() -> None:
    sdp = SessionDescription.parse(SDP_OFFER.replace(b"m=audio 16384 ", b"m=audio 16384/2 "))
    sdp.media[0].port = 5004
    assert b"m=audio 5004/2 RTP/AVP" in bytes(sdp)


def test_non_rtp_media_is_left_alone() -> None:
    body = SDP_OFFER + b"m=image 6000 udptl t38\r\na=T38FaxVersion:0\r\n"
    sdp = SessionDescription.parse(body)
    assert sdp.media[1].codecs == []
    assert bytes(sdp).endswith(b"m=image 6000 udptl t38\r\na=T38FaxVersion:0\r\n")


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"o=missing version\r\n",
        b"v=0\r\nm =video 3227 RTP/AVP 31\r\n",  # RFC 4475 dblreq's second body
        b"v=0\r\nm=audio\r\n",
        b"v=0\r\nm=audio x RTP/AVP 0\r\n",
        b"v=0\r\nc=IN IP4\r\n",
    ],
)
def test_malformed_sdp_is_400(body: bytes) -> None:
    with pytest.raises(RemoteProtocolError) as raised:
        sdp = SessionDescription.parse(body)
        _ = sdp.connection_address
    assert raised.value.status_hint == 400


@pytest.mark.parametrize(
    "media_line", [b"m=audio 1 RTP/AVP 0 x", b"m=audio 1 RTP/AVP 0 128", b"m=audio 1 RTP/AVP 96"]
)
def test_bad_payload_types_are_400(media_line: bytes) -> None:
    body = b"v=0\r\n" + media_line + b"\r\na=rtpmap:96 opus/48000/two\r\n"
    with pytest.raises(RemoteProtocolError) as raised:
        _ = SessionDescription.parse(body).media[0].codecs
    assert raised.value.status_hint == 400


def test_payload_types_are_numbers() -> None:
    # Found by the fuzzer: "00" is payload type 0 (PCMU).
    body = (
        b"v=0\r\no=- 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\n"
        b"m=audio 16384 RTP/AVP 00 08\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n"
    )
    codecs = SessionDescription.parse(body).media[0].codecs
    assert [(codec.payload_type, codec.name) for codec in codecs] == [(0, "PCMU"), (8, "PCMA")]
