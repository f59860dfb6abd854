"""Realistic SIP messages for tests and benchmarks: one call through the edge and a REGISTER.

A customer PBX at 192.0.2.10 calls +14155550123 through the edge at 198.51.100.5: INVITE,
100, 180, 200 (with SDP answer), ACK, BYE and its 200; the PBX also registers and is pinged
with OPTIONS. Each constant is the exact wire form (CRLF line ends, correct Content-Length).
"""

from __future__ import annotations

__all__ = [
    "ACK",
    "ALL_SAMPLES",
    "BYE",
    "BYE_OK",
    "CALL_FLOW",
    "INVITE",
    "INVITE_OK",
    "OPTIONS",
    "REGISTER",
    "REGISTER_AUTHORIZED",
    "REGISTER_UNAUTHORIZED",
    "RINGING",
    "SDP_ANSWER",
    "SDP_OFFER",
    "TRYING",
]


def _wire(start_line: str, headers: list[str], body: bytes = b"") -> bytes:
    lines = [start_line, *headers, f"Content-Length: {len(body)}", "", ""]
    return "\r\n".join(lines).encode() + body


SDP_OFFER = (
    b"v=0\r\n"
    b"o=pbx 1928374 1928374 IN IP4 192.0.2.10\r\n"
    b"s=call\r\n"
    b"c=IN IP4 192.0.2.10\r\n"
    b"t=0 0\r\n"
    b"m=audio 16384 RTP/AVP 0 8 18 101\r\n"
    b"a=rtpmap:0 PCMU/8000\r\n"
    b"a=rtpmap:8 PCMA/8000\r\n"
    b"a=rtpmap:18 G729/8000\r\n"
    b"a=fmtp:18 annexb=no\r\n"
    b"a=rtpmap:101 telephone-event/8000\r\n"
    b"a=fmtp:101 0-16\r\n"
    b"a=ptime:20\r\n"
    b"a=sendrecv\r\n"
)

SDP_ANSWER = (
    b"v=0\r\n"
    b"o=carrier 5551212 5551213 IN IP4 203.0.113.20\r\n"
    b"s=-\r\n"
    b"c=IN IP4 203.0.113.20\r\n"
    b"t=0 0\r\n"
    b"m=audio 30000 RTP/AVP 0 101\r\n"
    b"a=rtpmap:0 PCMU/8000\r\n"
    b"a=rtpmap:101 telephone-event/8000\r\n"
    b"a=fmtp:101 0-16\r\n"
    b"a=ptime:20\r\n"
    b"a=sendrecv\r\n"
)

_CALL_ID = "Call-ID: 7f3c2a9e41b84d0c@192.0.2.10"
_INVITE_VIA = "Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK776asdhds;rport"
# The same Via as the edge returns it in responses (RFC 3581 rport and received filled in).
_INVITE_VIA_ANSWERED = (
    "Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK776asdhds;rport=5060;received=192.0.2.10"
)
_FROM = 'From: "Front Desk" <sip:+14155550100@192.0.2.10>;tag=1928301774'
_TO = "To: <sip:+14155550123@sip.trunkline.example>"
_TO_TAGGED = f"{_TO};tag=a6c85cf"
_ALLOW = "Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, UPDATE, PRACK, INFO, REFER, NOTIFY"

INVITE = _wire(
    "INVITE sip:+14155550123@sip.trunkline.example SIP/2.0",
    [
        _INVITE_VIA,
        "Max-Forwards: 70",
        _FROM,
        _TO,
        _CALL_ID,
        "CSeq: 314159 INVITE",
        "Contact: <sip:+14155550100@192.0.2.10:5060;transport=udp>",
        _ALLOW,
        "Supported: replaces, timer, 100rel",
        "Session-Expires: 1800;refresher=uac",
        "Min-SE: 90",
        "P-Asserted-Identity: <sip:+14155550100@192.0.2.10>",
        "User-Agent: Asterisk PBX 20.5.0",
        "Content-Type: application/sdp",
    ],
    SDP_OFFER,
)

TRYING = _wire(
    "SIP/2.0 100 Trying",
    [
        _INVITE_VIA_ANSWERED,
        _FROM,
        _TO,
        _CALL_ID,
        "CSeq: 314159 INVITE",
        "Server: Trunkline",
    ],
)

RINGING = _wire(
    "SIP/2.0 180 Ringing",
    [
        _INVITE_VIA_ANSWERED,
        "Record-Route: <sip:198.51.100.5;lr;ftag=1928301774>",
        _FROM,
        _TO_TAGGED,
        _CALL_ID,
        "CSeq: 314159 INVITE",
        "Contact: <sip:b2bua-4f2a@198.51.100.5:5060>",
        _ALLOW,
        "Server: Trunkline",
    ],
)

INVITE_OK = _wire(
    "SIP/2.0 200 OK",
    [
        _INVITE_VIA_ANSWERED,
        "Record-Route: <sip:198.51.100.5;lr;ftag=1928301774>",
        _FROM,
        _TO_TAGGED,
        _CALL_ID,
        "CSeq: 314159 INVITE",
        "Contact: <sip:b2bua-4f2a@198.51.100.5:5060>",
        _ALLOW,
        "Supported: replaces, timer",
        "Session-Expires: 1800;refresher=uac",
        "Require: timer",
        "Server: Trunkline",
        "Content-Type: application/sdp",
    ],
    SDP_ANSWER,
)

ACK = _wire(
    "ACK sip:b2bua-4f2a@198.51.100.5:5060 SIP/2.0",
    [
        "Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK776asdhdt;rport",
        "Max-Forwards: 70",
        "Route: <sip:198.51.100.5;lr;ftag=1928301774>",
        _FROM,
        _TO_TAGGED,
        _CALL_ID,
        "CSeq: 314159 ACK",
        "User-Agent: Asterisk PBX 20.5.0",
    ],
)

BYE = _wire(
    "BYE sip:b2bua-4f2a@198.51.100.5:5060 SIP/2.0",
    [
        "Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK776asdhdu;rport",
        "Max-Forwards: 70",
        "Route: <sip:198.51.100.5;lr;ftag=1928301774>",
        _FROM,
        _TO_TAGGED,
        _CALL_ID,
        "CSeq: 314160 BYE",
        'Reason: Q.850;cause=16;text="Normal call clearing"',
        "User-Agent: Asterisk PBX 20.5.0",
    ],
)

BYE_OK = _wire(
    "SIP/2.0 200 OK",
    [
        "Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK776asdhdu;rport=5060;received=192.0.2.10",
        _FROM,
        _TO_TAGGED,
        _CALL_ID,
        "CSeq: 314160 BYE",
        "Server: Trunkline",
    ],
)

_REGISTER_FROM = "From: <sip:pbx-acme@sip.trunkline.example>;tag=49583"
_REGISTER_TO = "To: <sip:pbx-acme@sip.trunkline.example>"
_REGISTER_CALL_ID = "Call-ID: 843817637684230@192.0.2.10"
_REGISTER_HEADERS = ["Max-Forwards: 70", _REGISTER_FROM, _REGISTER_TO, _REGISTER_CALL_ID]

REGISTER = _wire(
    "REGISTER sip:sip.trunkline.example SIP/2.0",
    [
        "Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKnashds7;rport",
        *_REGISTER_HEADERS,
        "CSeq: 1826 REGISTER",
        "Contact: <sip:pbx-acme@192.0.2.10:5060;transport=udp>;expires=3600",
        "Allow: INVITE, ACK, CANCEL, BYE, OPTIONS",
        "User-Agent: Asterisk PBX 20.5.0",
    ],
)

REGISTER_UNAUTHORIZED = _wire(
    "SIP/2.0 401 Unauthorized",
    [
        "Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKnashds7;rport=5060;received=192.0.2.10",
        _REGISTER_FROM,
        f"{_REGISTER_TO};tag=37GkEhwl6",
        _REGISTER_CALL_ID,
        "CSeq: 1826 REGISTER",
        'WWW-Authenticate: Digest realm="sip.trunkline.example", '
        'nonce="1700000000.3f9a1c2e8b7d6a5c", algorithm=SHA-256, qop="auth"',
        'WWW-Authenticate: Digest realm="sip.trunkline.example", '
        'nonce="1700000000.3f9a1c2e8b7d6a5c", algorithm=MD5, qop="auth"',
        "Server: Trunkline",
    ],
)

REGISTER_AUTHORIZED = _wire(
    "REGISTER sip:sip.trunkline.example SIP/2.0",
    [
        "Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKnashds8;rport",
        *_REGISTER_HEADERS,
        "CSeq: 1827 REGISTER",
        "Contact: <sip:pbx-acme@192.0.2.10:5060;transport=udp>;expires=3600",
        'Authorization: Digest username="pbx-acme", realm="sip.trunkline.example", '
        'nonce="1700000000.3f9a1c2e8b7d6a5c", uri="sip:sip.trunkline.example", '
        'response="6629fae49393a05397450978507c4ef1", algorithm=MD5, qop=auth, '
        'nc=00000001, cnonce="0a4f113b"',
        "User-Agent: Asterisk PBX 20.5.0",
    ],
)

OPTIONS = _wire(
    "OPTIONS sip:192.0.2.10:5060 SIP/2.0",
    [
        "Via: SIP/2.0/UDP 198.51.100.5:5060;branch=z9hG4bKping8812",
        "Max-Forwards: 70",
        "From: <sip:ping@sip.trunkline.example>;tag=ping-31337",
        "To: <sip:192.0.2.10:5060>",
        "Call-ID: ping-5a1e77@198.51.100.5",
        "CSeq: 1 OPTIONS",
        "Accept: application/sdp",
        "User-Agent: Trunkline",
    ],
)

# The call as the edge sees it, in order.
CALL_FLOW = (INVITE, TRYING, RINGING, INVITE_OK, ACK, BYE, BYE_OK)

ALL_SAMPLES: dict[str, bytes] = {
    "INVITE": INVITE,
    "TRYING": TRYING,
    "RINGING": RINGING,
    "INVITE_OK": INVITE_OK,
    "ACK": ACK,
    "BYE": BYE,
    "BYE_OK": BYE_OK,
    "REGISTER": REGISTER,
    "REGISTER_UNAUTHORIZED": REGISTER_UNAUTHORIZED,
    "REGISTER_AUTHORIZED": REGISTER_AUTHORIZED,
    "OPTIONS": OPTIONS,
}
