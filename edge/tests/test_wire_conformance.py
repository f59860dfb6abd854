"""SIP conformance on the wire: what a running `python -m edge` answers, over UDP and TCP.

The RFC 4475 torture messages (byte for byte, from /work/shared/conformance/rfc4475) and the
RFC 5118 IPv6 ones (section 4, written here) are sent to a real edge process; each row of the
tables says which final status comes back (None: silence, as for a response or a message that
names nobody to answer). A message is sent to an edge that has not seen another with the same
transaction key (several torture messages share a branch and sent-by, and the second would
rightly be taken for a retransmission of the first). Every edge must end with
`trunkline_edge_core_errors_total 0` and no "core raised" in its log: an exception in the core
is a failure here whatever was answered.

Also here: a valid request followed by garbage on one TCP connection, an unknown Require on
OPTIONS, a BYE whose tags match no dialog, and an edge listening on IPv6 (::1) without
--advertise placing a call through its own Via.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.sip import RemoteProtocolError, Request, Response, parse_message
from edge.sip.message import make_request, make_response, new_branch, new_tag
from edge.sip.parser import StreamParser
from edge.sip.tests.test_rfc4475 import EXPECTATIONS, TORTURE_DIR
from edge.tests.factories import NUMBER, gateway_doc, origination_doc, snapshot_doc, trunk_doc
from edge.tests.sipp_harness import EdgeProcess

# How long silence must last to count as "no answer" (an answer takes milliseconds).
QUIET = 0.5
ANSWER_TIMEOUT = 5.0


# --- peers -------------------------------------------------------------------------------------


def statuses(data: bytes, *, stream: bool) -> list[int]:
    """The final statuses in what the edge sent (provisionals and requests left out)."""
    items = StreamParser().feed(data) if stream else [parse_message(data)]
    return [m.status for m in items if isinstance(m, Response) and m.status >= 200]


def exchange_udp(edge: tuple[str, int], data: bytes, expected: int) -> list[int]:
    family = socket.AF_INET6 if ":" in edge[0] else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.bind((edge[0], 0))
        sock.sendto(data, edge)
        found: list[int] = []
        deadline = time.monotonic() + (ANSWER_TIMEOUT if expected else QUIET)
        while len(found) < expected or not expected:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                answer, _ = sock.recvfrom(65535)
            except TimeoutError:
                break
            found += statuses(answer, stream=False)
        return found


def exchange_tcp(edge: tuple[str, int], data: bytes, expected: int) -> tuple[list[int], bool]:
    """(final statuses, whether the edge closed the connection)."""
    with socket.create_connection(edge, timeout=ANSWER_TIMEOUT) as sock:
        sock.sendall(data)
        received = b""
        closed = False
        deadline = time.monotonic() + (ANSWER_TIMEOUT if expected else QUIET)
        while True:
            if expected and len(statuses(received, stream=True)) >= expected:
                # Give a close (or an unexpected extra answer) the same short moment.
                deadline = min(deadline, time.monotonic() + 0.2)
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = sock.recv(65535)
            except TimeoutError:
                break
            if not chunk:
                closed = True
                break
            received += chunk
        return statuses(received, stream=True), closed


def core_errors(edge: EdgeProcess) -> float:
    status, text = edge.api("GET", "/metrics")
    assert status == 200
    match = re.search(r"^trunkline_edge_core_errors_total (\S+)$", text, re.MULTILINE)
    assert match, "the edge's /metrics has no trunkline_edge_core_errors_total"
    return float(match.group(1))


def assert_no_core_error(edge: EdgeProcess) -> None:
    assert core_errors(edge) == 0, edge.explain()
    assert "core raised" not in edge.stderr_path.read_text(), edge.explain()


class Edges:
    """Edge processes started on demand; one per round of messages with distinct keys."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.running: list[EdgeProcess] = []
        self.keys: list[set[object]] = []

    def for_key(self, key: object) -> EdgeProcess:
        for edge, keys in zip(self.running, self.keys, strict=True):
            if key is None or key not in keys:
                keys.add(key)
                return edge
        edge = EdgeProcess(self.workdir / f"edge{len(self.running)}", snapshot_doc()).start()
        self.running.append(edge)
        self.keys.append({key})
        return edge

    def close(self) -> None:
        try:
            for edge in self.running:
                assert_no_core_error(edge)
        finally:
            for edge in self.running:
                edge.stop()


@pytest.fixture(scope="module")
def edges(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Edges]]:
    by_transport = {
        "udp": Edges(tmp_path_factory.mktemp("udp")),
        "tcp": Edges(tmp_path_factory.mktemp("tcp")),
    }
    yield by_transport
    for edges in by_transport.values():
        edges.close()


def transaction_key(data: bytes) -> object:
    """What the edge's transaction layer matches on, near enough (None: not parsable)."""
    try:
        message = parse_message(data)
        via = message.top_via
        return (via.branch, via.host.lower(), via.port, message.cseq[1])
    except RemoteProtocolError:
        return None


# --- RFC 4475 ----------------------------------------------------------------------------------

# What differs on a stream: clerr announces more body than comes (the edge waits for it);
# inv2543 has no Content-Length, which a stream cannot do without (400, then the edge closes);
# dblreq's second request is framed too (its INVITE is answered), then the trailing bytes
# cannot be framed and the edge closes.
TCP_ANSWERS: dict[str, list[int]] = {"clerr": [], "inv2543": [400], "dblreq": [401, 484]}
TCP_CLOSES = {"inv2543", "dblreq", "ncl", "mcl01"}


@pytest.mark.parametrize("transport", ["udp", "tcp"])
@pytest.mark.parametrize("name", sorted(EXPECTATIONS))
def test_rfc4475_on_the_wire(name: str, transport: str, edges: dict[str, Edges]) -> None:
    data = (TORTURE_DIR / f"{name}.dat").read_bytes()
    wire = EXPECTATIONS[name].wire
    expected = [] if wire is None else [wire]
    edge = edges[transport].for_key(transaction_key(data))
    if transport == "udp":
        assert exchange_udp(edge.sip_address, data, len(expected)) == expected
    else:
        expected = TCP_ANSWERS.get(name, expected)
        found, closed = exchange_tcp(edge.sip_address, data, len(expected))
        assert found == expected
        assert closed == (name in TCP_CLOSES)


# --- RFC 5118 (section 4), sent to an IPv4 edge; the IPv6 edge is further down -----------------


def _message(start: str, headers: list[str], body: str = "") -> bytes:
    lines = [start, *headers, f"Content-Length: {len(body.encode())}", "", body]
    return "\r\n".join(lines).encode()


def _register(request_uri: str, contact: str, branch: str) -> bytes:
    return _message(
        f"REGISTER {request_uri} SIP/2.0",
        [
            "To: sip:user@example.com",
            "From: sip:user@example.com;tag=81x2",
            f"Via: SIP/2.0/UDP [2001:db8::9:1];branch={branch}",
            f"Call-ID: SSG9559905523997077@hlau_4100-{branch}",
            "Max-Forwards: 70",
            f"Contact: {contact}",
            "CSeq: 98176 REGISTER",
        ],
    )


def _options(request_uri: str, via: str, call_id: str) -> bytes:
    return _message(
        f"OPTIONS {request_uri} SIP/2.0",
        [
            "To: sip:user@example.com",
            "From: sip:user@example.com;tag=81x2",
            f"Via: {via}",
            f"Call-ID: {call_id}",
            "CSeq: 1 OPTIONS",
            "Max-Forwards: 70",
            "Contact: <sip:user@[2001:db8::9:1]>",
        ],
    )


def _invite(call_id: str, branch: str, body: str, contact: str = "[2001:db8::9:1]") -> bytes:
    return _message(
        "INVITE sip:user@[2001:db8::10] SIP/2.0",
        [
            "To: sip:user@[2001:db8::10]",
            "From: sip:user@example.com;tag=81x2",
            f"Via: SIP/2.0/UDP [2001:db8::9:1];branch={branch}",
            f"Call-ID: {call_id}",
            "CSeq: 1 INVITE",
            "Max-Forwards: 70",
            f"Contact: <sip:user@{contact}>",
            "Content-Type: application/sdp",
        ],
        body,
    )


SDP6 = (
    "v=0\r\no=assistant 971731711378798081 0 IN IP6 2001:db8::20\r\ns=Live video feed\r\n"
    "c=IN IP6 2001:db8::20\r\nt=0 0\r\nm=audio 6000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
)
SDP46 = (
    "v=0\r\no=bob 280744730 28977631 IN IP4 host.example.com\r\ns=\r\nt=0 0\r\n"
    "m=audio 22334 RTP/AVP 0\r\nc=IN IP4 192.0.2.1\r\n"
    "m=video 6000 RTP/AVP 34\r\nc=IN IP6 2001:db8::1\r\n"
)

# (section, message, final status on the wire)
RFC5118: list[tuple[str, bytes, int]] = [
    # Valid: the registrar challenges (the trunk registers with digest).
    ("4.1", _register("sip:[2001:db8::10]", "<sip:caller@[2001:db8::1]>", "z9hG4bK41"), 401),
    # IPv6 addresses without brackets: not a SIP URI.
    ("4.2", _register("sip:2001:db8::10", "<sip:caller@2001:db8::1>", "z9hG4bK42"), 400),
    ("4.3", _register("sip:[2001:db8::10:5070]", "<sip:caller@[2001:db8::1]>", "z9hG4bK43"), 401),
    ("4.4", _register("sip:[2001:db8::10]:5070", "<sip:caller@[2001:db8::1]>", "z9hG4bK44"), 401),
    (
        "4.5 with delimiters",
        _options(
            "sip:[2001:db8::10]",
            "SIP/2.0/UDP [2001:db8::9:1]:6050;branch=z9hG4bK45a;received=[2001:db8::9:255]",
            "45a@[2001:db8::9:1]",
        ),
        200,
    ),
    (
        "4.5 without delimiters",
        _options(
            "sip:[2001:db8::10]",
            "SIP/2.0/UDP [2001:db8::9:1]:6050;branch=z9hG4bK45b;received=2001:db8::9:255",
            "45b@[2001:db8::9:1]",
        ),
        200,
    ),
    # INVITEs to a number the edge does not route (sip:user): refused by routing, after every
    # IPv6 header and SDP line was read.
    ("4.6", _invite("46@[2001:db8::9:1]", "z9hG4bK46", SDP6), 484),
    (
        "4.7",
        _message(
            "BYE sip:user@host.example.net SIP/2.0",
            [
                "Via: SIP/2.0/UDP [2001:db8::9:1]:6050;branch=z9hG4bK47",
                "Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKjhja8781hjuaij65144",
                "Via: SIP/2.0/TCP [2001:db8::9:255];branch=z9hG4bK451jj;received=192.0.2.200",
                "Call-ID: 997077@lau_4100",
                "Max-Forwards: 70",
                "CSeq: 89187 BYE",
                "To: sip:user@example.net;tag=9817--94",
                "From: sip:user@example.com;tag=81x2",
            ],
        ),
        481,  # well-formed, in no dialog
    ),
    ("4.8", _invite("48@[2001:db8::9:1]", "z9hG4bK48", SDP46), 484),
    ("4.9", _invite("49@[::ffff:192.0.2.10]", "z9hG4bK49", SDP6, "[::ffff:192.0.2.10]:19823"), 484),
    # Three colons (the ABNF bug): not an IPv6 address.
    (
        "4.10",
        _options(
            "sip:[2001:db8:::192.0.2.1]",
            "SIP/2.0/UDP [2001:db8::9:1]:6050;branch=z9hG4bK410",
            "410@[2001:db8::9:1]",
        ),
        400,
    ),
]


@pytest.mark.parametrize("transport", ["udp", "tcp"])
@pytest.mark.parametrize(("section", "data", "status"), RFC5118, ids=[r[0] for r in RFC5118])
def test_rfc5118_on_the_wire(
    section: str, data: bytes, status: int, transport: str, edges: dict[str, Edges]
) -> None:
    edge = edges[transport].for_key(transaction_key(data))
    if transport == "udp":
        assert exchange_udp(edge.sip_address, data, 1) == [status]
    else:
        assert exchange_tcp(edge.sip_address, data, 1) == ([status], False)


# --- one-off cases -----------------------------------------------------------------------------


def _options_request(edge: tuple[str, int], *headers: tuple[str, str]) -> Request:
    return make_request(
        "OPTIONS",
        f"sip:{edge[0]}:{edge[1]}",
        from_=f"<sip:probe@{edge[0]}>;tag={new_tag()}",
        to=f"<sip:{edge[0]}>",
        call_id=new_tag(),
        cseq=1,
        via=f"SIP/2.0/TCP {edge[0]}:5999;branch={new_branch()}",
        headers=list(headers),
    )


def test_a_valid_request_then_garbage_on_one_connection(edges: dict[str, Edges]) -> None:
    edge = edges["tcp"].for_key(None)
    valid = _options_request(edge.sip_address).to_bytes()
    found, closed = exchange_tcp(edge.sip_address, valid + b"\x00\xffgarbage\r\n\r\n", 1)
    assert (found, closed) == ([200], True)


def test_a_malformed_request_between_two_valid_ones_is_answered_and_skipped(
    edges: dict[str, Edges],
) -> None:
    edge = edges["tcp"].for_key(None)
    first = _options_request(edge.sip_address).to_bytes()
    last = _options_request(edge.sip_address).to_bytes()
    spaced = b" " + _options_request(edge.sip_address).to_bytes().replace(b" sip:", b"  sip:", 1)
    found, closed = exchange_tcp(edge.sip_address, first + spaced + last, 3)
    assert (found, closed) == ([200, 400, 200], False)


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_an_unknown_require_is_refused_with_420(transport: str, edges: dict[str, Edges]) -> None:
    edge = edges[transport].for_key(None)
    request = _options_request(edge.sip_address, ("Require", "100rel, x-unheard-of"))
    data = request.to_bytes()
    if transport == "udp":
        assert exchange_udp(edge.sip_address, data, 1) == [420]
        return
    with socket.create_connection(edge.sip_address, timeout=ANSWER_TIMEOUT) as sock:
        sock.sendall(data)
        (response,) = StreamParser().feed(sock.recv(65535))
    assert isinstance(response, Response) and response.status == 420
    assert response.headers.get_all("Unsupported") == ["100rel", "x-unheard-of"]


# --- IPv6 --------------------------------------------------------------------------------------


def _free_port6(kind: int) -> int:
    with socket.socket(socket.AF_INET6, kind) as sock:
        sock.bind(("::1", 0))
        return int(sock.getsockname()[1])


def _ipv6_available() -> bool:
    try:
        _free_port6(socket.SOCK_DGRAM)
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _ipv6_available(), reason="no IPv6 loopback on this machine")
def test_an_edge_on_ipv6_brackets_its_via_and_places_a_call(tmp_path: Path) -> None:
    """An inbound call from a carrier gateway on ::1 to the number's origination URI on
    [::1], through an edge bound to ::1 without --advertise: the edge's own Via and Contact
    carry [::1], and the callee's answer comes back through them to the caller."""
    with (
        socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as callee,
        socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as caller,
    ):
        for sock in (callee, caller):
            sock.bind(("::1", 0))
            sock.settimeout(ANSWER_TIMEOUT)
        callee_port, caller_port = callee.getsockname()[1], caller.getsockname()[1]
        trunk = trunk_doc(origination_uris=[origination_doc(f"sip:[::1]:{callee_port}")])
        gateway = gateway_doc(host="::1", port=caller_port)
        edge = EdgeProcess(
            tmp_path,
            snapshot_doc(trunks=[trunk], gateways=[gateway]),
            ip="::1",
            sip_port=_free_port6(socket.SOCK_DGRAM),
            control_port=_free_port6(socket.SOCK_STREAM),
        ).start()
        try:
            invite = make_request(
                "INVITE",
                f"sip:{NUMBER}@[::1]:{edge.sip_port}",
                from_=f"<sip:+14155550199@[::1]>;tag={new_tag()}",
                to=f"<sip:{NUMBER}@[::1]>",
                call_id=f"{new_tag()}@[::1]",
                cseq=1,
                via=f"SIP/2.0/UDP [::1]:{caller_port};branch={new_branch()}",
                contact=f"<sip:+14155550199@[::1]:{caller_port}>",
            )
            caller.sendto(invite.to_bytes(), ("::1", edge.sip_port))
            while True:
                data, source = callee.recvfrom(65535)
                relayed = parse_message(data)
                if isinstance(relayed, Request) and relayed.method == "INVITE":
                    break
            assert relayed.top_via.host == "[::1]"
            assert relayed.top_via.port == edge.sip_port
            assert relayed.contact[0].sip_uri.host == "[::1]"
            callee.sendto(make_response(relayed, 486, to_tag=new_tag()).to_bytes(), source[:2])
            while True:
                answer = parse_message(caller.recvfrom(65535)[0])
                if isinstance(answer, Response) and answer.status >= 200:
                    break
            assert answer.status == 486
        finally:
            edge.stop()
        assert "core raised" not in edge.stderr_path.read_text()


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_a_33_kb_content_type_is_refused_with_400(transport: str, edges: dict[str, Edges]) -> None:
    edge = edges[transport].for_key(None)
    request = _options_request(edge.sip_address)
    request.headers.set("Content-Type", "application/sdp;x=" + "y" * 33_000)
    request.body = b"v=0\r\n"
    data = request.to_bytes()
    if transport == "udp":
        assert exchange_udp(edge.sip_address, data, 1) == [400]
    else:
        assert exchange_tcp(edge.sip_address, data, 1) == ([400], False)
