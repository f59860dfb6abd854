"""RFC 4475 torture messages: what the parser returns and what the edge answers, file by file.

Each row states the status hint `parse_message` raises (None: it parses), the one
`validate_for_proxy` raises on the parsed message (None: a proxy can use it), and the final
status a running edge puts on the wire (None: none), which edge/tests/test_wire_conformance.py
checks against a real `python -m edge` over UDP and TCP. Parsed messages also get a few
assertions of what was read.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from edge.sip import (
    FramingError,
    RemoteProtocolError,
    Request,
    Response,
    StreamParser,
    parse_message,
    validate_for_proxy,
)

TORTURE_DIR = Path("/work/shared/conformance/rfc4475")


@dataclass(frozen=True)
class Expectation:
    parse_error: int | None
    validate_error: int | None
    # The final status a running edge answers over UDP (None: silence); asserted on the wire,
    # over UDP and TCP, by edge/tests/test_wire_conformance.py.
    wire: int | None
    edge_answer: str


EXPECTATIONS: dict[str, Expectation] = {
    # 3.1.1 valid messages: all parse and validate.
    "wsinv": Expectation(
        None, None, 481, "481: in-dialog (To tag), no such dialog; every odd header read (3.1.1.1)"
    ),
    "intmeth": Expectation(None, None, 405, "405 for the unknown method (3.1.1.2)"),
    "esc01": Expectation(
        None, None, 484, "484: read whole, the callee is not a number the edge routes (3.1.1.3)"
    ),
    "escnull": Expectation(
        None, None, 401, "401: the registrar challenges; %00 stays escaped (3.1.1.4)"
    ),
    "esc02": Expectation(None, None, 405, "405: RE%47IST%45R is not REGISTER (3.1.1.5)"),
    "lwsdisp": Expectation(None, None, 200, "200 (3.1.1.6)"),
    "longreq": Expectation(
        None, None, 484, "484: read whole, the callee is not a number the edge routes (3.1.1.7)"
    ),
    "dblreq": Expectation(
        None, None, 401, "401 to the REGISTER; trailing datagram bytes ignored (3.1.1.8)"
    ),
    "semiuri": Expectation(None, None, 200, "200; ';' belongs to the user part (3.1.1.9)"),
    "transports": Expectation(None, None, 200, "200 (3.1.1.10)"),
    "mpart01": Expectation(None, None, 405, "405 for MESSAGE; binary body kept as is (3.1.1.11)"),
    "unreason": Expectation(
        None, None, None, "response dropped: it matches no transaction (3.1.1.12)"
    ),
    "noreason": Expectation(
        None, None, None, "response dropped: it matches no transaction (3.1.1.13)"
    ),
    # 3.1.2 invalid messages: rejected where a proxy has to read the broken part.
    "badinv01": Expectation(None, 400, 400, "400: empty Via and Contact parameters (3.1.2.1)"),
    "clerr": Expectation(
        400, None, 400, "400 on UDP; on a stream it waits for more bytes (3.1.2.2)"
    ),
    "ncl": Expectation(400, None, 400, "400: negative Content-Length (3.1.2.3)"),
    "scalar02": Expectation(None, 400, 400, "400: CSeq beyond 2**32-1 (3.1.2.4)"),
    "scalarlg": Expectation(None, 400, None, "response dropped: CSeq overflow (3.1.2.5)"),
    "quotbal": Expectation(None, 400, 400, "400: unterminated quote in To (3.1.2.6)"),
    "ltgtruri": Expectation(None, 400, 400, "400: <> around the Request-URI (3.1.2.7)"),
    "lwsruri": Expectation(400, None, 400, "400: space inside the Request-URI (3.1.2.8)"),
    "lwsstart": Expectation(400, None, 400, "400: several spaces in the request line (3.1.2.9)"),
    "trws": Expectation(400, None, 400, "400: trailing spaces after SIP/2.0 (3.1.2.10)"),
    "escruri": Expectation(None, 400, 400, "400: headers in the Request-URI (3.1.2.11)"),
    "baddate": Expectation(
        None, None, 484, "484: the edge never reads Date; the callee is not routable (3.1.2.12)"
    ),
    "regbadct": Expectation(None, 400, 400, "400: addr-spec with '?' outside <> (3.1.2.13)"),
    "badaspec": Expectation(None, 400, 400, "400: spaces inside <> in To (3.1.2.14)"),
    "baddn": Expectation(None, 400, 400, "400: unquoted ',' in the display name (3.1.2.15)"),
    "badvers": Expectation(505, None, 505, "505 Version Not Supported (3.1.2.16)"),
    "mismatch01": Expectation(None, 400, 400, "400: CSeq method is not the method (3.1.2.17)"),
    "mismatch02": Expectation(None, 400, 400, "400: CSeq method is not the method (3.1.2.18)"),
    "bigcode": Expectation(
        400, None, None, "response dropped: status code not 3 digits (3.1.2.19)"
    ),
    # 3.2 transaction layer.
    "badbranch": Expectation(None, None, 200, "200: RFC 2543 matching for the bare branch (3.2.1)"),
    # 3.3 application layer: well-formed; the edge refuses most of them itself.
    "insuf": Expectation(None, 400, 400, "400: missing Call-ID, From and To (3.3.1)"),
    "unkscm": Expectation(None, 416, 416, "416 Unsupported URI Scheme (3.3.2)"),
    "novelsc": Expectation(None, 416, 416, "416: soap.beep is never routable by us (3.3.3)"),
    "unksm2": Expectation(
        None, None, 401, "401: the registrar checks credentials before it reads To (3.3.4)"
    ),
    "bext01": Expectation(None, None, 420, "420 Bad Extension with Unsupported (3.3.5)"),
    "invut": Expectation(
        None, None, 484, "484: refused by routing before the body is read; 415 not reached (3.3.6)"
    ),
    "regaut01": Expectation(None, None, 401, "401 with a Digest challenge (3.3.7)"),
    "multi01": Expectation(None, 400, 400, "400: single-valued headers repeated (3.3.8)"),
    "mcl01": Expectation(400, None, 400, "400: two Content-Length values, framing unknown (3.3.9)"),
    "bcast": Expectation(
        None,
        None,
        None,
        "response dropped: matches no transaction; broadcast Via never used (3.3.10)",
    ),
    "zeromf": Expectation(
        None, None, 200, "200: an OPTIONS the edge answers itself (an endpoint, 3.3.11)"
    ),
    "cparam01": Expectation(
        None, None, 401, "401: the registrar challenges; unknownparam is a header param (3.3.12)"
    ),
    "cparam02": Expectation(
        None, None, 401, "401: the registrar challenges; unknownparam is a URI param (3.3.13)"
    ),
    "regescrt": Expectation(
        None, None, 401, "401: the registrar challenges before it stores the contact (3.3.14)"
    ),
    "sdp01": Expectation(
        None, None, 484, "484: refused by routing before Accept is read; 406 not reached (3.3.15)"
    ),
    # 3.4 backward compatibility.
    "inv2543": Expectation(
        None, None, 484, "484: RFC 2543 transaction matching; the callee is not routable (3.4.1)"
    ),
}

# Files that are whole messages on a stream too (Content-Length present and exact).
NOT_STREAMABLE = {"clerr", "ncl", "mcl01", "inv2543", "dblreq"}


def read(name: str) -> bytes:
    return (TORTURE_DIR / f"{name}.dat").read_bytes()


def parsed(name: str) -> Request | Response:
    return parse_message(read(name))


def test_every_torture_message_has_an_expectation() -> None:
    assert {path.stem for path in TORTURE_DIR.glob("*.dat")} == set(EXPECTATIONS)


@pytest.mark.parametrize("name", sorted(EXPECTATIONS))
def test_parse_and_validate(name: str) -> None:
    expected = EXPECTATIONS[name]
    if expected.parse_error is not None:
        with pytest.raises(RemoteProtocolError) as raised:
            parse_message(read(name))
        assert raised.value.status_hint == expected.parse_error
        return
    message = parsed(name)
    if expected.validate_error is None:
        validate_for_proxy(message)
    else:
        with pytest.raises(RemoteProtocolError) as raised:
            validate_for_proxy(message)
        assert raised.value.status_hint == expected.validate_error


PARSED = sorted(name for name, e in EXPECTATIONS.items() if e.parse_error is None)


@pytest.mark.parametrize("name", [n for n in PARSED if n != "dblreq"])
def test_unmodified_message_serialises_byte_for_byte(name: str) -> None:
    assert bytes(parsed(name)) == read(name)


@pytest.mark.parametrize("name", [n for n in PARSED if n not in NOT_STREAMABLE])
def test_stream_one_byte_at_a_time_gives_the_same_message(name: str) -> None:
    data = read(name)
    stream = StreamParser()
    messages = [message for i in range(len(data)) for message in stream.feed(data[i : i + 1])]
    assert [bytes(message) for message in messages] == [data]


def test_dblreq_datagram_ignores_the_bytes_after_content_length() -> None:
    data = read("dblreq")
    message = parsed("dblreq")
    assert isinstance(message, Request)
    assert message.method == "REGISTER"
    assert message.body == b""
    assert bytes(message) == data[: data.index(b"\r\n\r\n") + 4]


def test_dblreq_on_a_stream_is_two_requests_then_garbage() -> None:
    data = read("dblreq")
    # The INVITE's body is 5 bytes longer than its Content-Length: those are not a message.
    garbage = b"C\r\n\r\n"
    assert data.endswith(garbage)
    stream = StreamParser()
    requests = stream.feed(data[: -len(garbage)])
    assert [r.method for r in requests if isinstance(r, Request)] == ["REGISTER", "INVITE"]
    (error,) = stream.feed(garbage)
    assert isinstance(error, FramingError) and error.fatal


def test_clerr_on_a_stream_waits_for_the_announced_body() -> None:
    assert StreamParser().feed(read("clerr")) == []


def test_inv2543_needs_content_length_on_a_stream() -> None:
    (error,) = StreamParser().feed(read("inv2543"))
    assert isinstance(error, FramingError) and error.fatal
    assert "Content-Length" in error.reason and error.head.startswith(b"INVITE ")


# (file, what is read, expected value)
READ_VALUES: list[tuple[str, Callable[[Any], object], object]] = [
    ("wsinv", lambda m: m.max_forwards, 68),
    ("wsinv", lambda m: m.cseq, (9, "INVITE")),
    ("wsinv", lambda m: m.to_tag, "1918181833n"),
    ("wsinv", lambda m: (m.from_.display_name, m.from_tag), ('J Rosenberg \\"', "98asjd8")),
    ("wsinv", lambda m: [v.host for v in m.vias],
     ["192.0.2.2", "spindle.example.com", "192.168.255.111"]),
    ("wsinv", lambda m: [v.branch for v in m.vias], ["390skdjuw", "z9hG4bK9ikj8", "z9hG4bK30239"]),
    ("wsinv", lambda m: m.contact[0].display_name, 'Quoted string ""'),
    ("wsinv", lambda m: dict(m.contact[0].params),
     {"newparam": "newvalue", "secondparam": None, "q": "0.33"}),
    ("wsinv", lambda m: "lr" in m.routes[0].sip_uri.params, True),
    ("wsinv", lambda m: m.headers.get("newfangledheader"),
     "newfangled value continued newfangled value"),
    ("wsinv", lambda m: m.headers.get("Subject"), ""),
    ("wsinv", lambda m: len(m.body), 150),
    ("intmeth", lambda m: m.method, "!interesting-Method0123456789_*+`.%indeed'~"),
    ("intmeth", lambda m: m.parsed_uri.user, "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"),
    ("intmeth", lambda m: m.parsed_uri.password, "&it+has=1,weird!*pas$wo~d_too.(doesn't-it)"),
    ("intmeth", lambda m: m.to.display_name, "BEL:\x07 NUL:\x00 DEL:\x7f"),
    ("intmeth", lambda m: m.from_.display_name, "token1~` token2'+_ token3*%!.-"),
    ("intmeth", lambda m: m.from_tag, "_token~1'+`*%!-."),
    ("intmeth", lambda m: m.from_.params["fromParam''~+*_!.-%"], '"работающий"'),
    ("intmeth", lambda m: m.call_id, "intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{"),
    ("intmeth", lambda m: m.top_via.branch, "z9hG4bK-.!%66*_+`'~"),
    ("esc01", lambda m: m.parsed_uri.user, "sips%3Auser%40example.com"),
    ("esc01", lambda m: m.parsed_uri.unescaped_user, "sips:user@example.com"),
    ("esc01", lambda m: m.to.sip_uri.unescaped_user, "user"),
    ("esc01", lambda m: m.from_.sip_uri.unescaped_user, "I have spaces"),
    ("esc01", lambda m: str(m.contact[0].uri),
     "sip:cal%6Cer@host5.example.net;%6C%72;n%61me=v%61lue%25%34%31"),
    ("escnull", lambda m: m.to.sip_uri.unescaped_user, "null-\x00-null"),
    ("escnull", lambda m: [c.sip_uri.unescaped_user for c in m.contact], ["\x00", "\x00\x00"]),
    ("esc02", lambda m: m.cseq, (29344, "RE%47IST%45R")),
    ("esc02", lambda m: [c.sip_uri.host for c in m.contact],
     ["host1.example.com", "host3.example.com"]),
    ("esc02", lambda m: m.headers.get("C%6Fntact"), "<sip:alias2@host2.example.com>"),
    ("esc02", lambda m: m.to.display_name, "%Z%45"),
    ("lwsdisp", lambda m: (m.from_.display_name, m.from_tag), ("caller", "323")),
    ("longreq", lambda m: len(m.vias), 34),
    ("longreq", lambda m: m.vias[-1].params["received"], "192.0.2.5"),
    ("longreq", lambda m: (m.to.sip_uri.port, len(m.to.sip_uri.params)), (6000, 3)),
    ("semiuri", lambda m: (m.parsed_uri.user, m.parsed_uri.host),
     ("user;par=u%40example.net", "example.com")),
    ("semiuri", lambda m: len(m.headers.get_all("Accept")), 6),
    ("transports", lambda m: [v.transport for v in m.vias],
     ["UDP", "SCTP", "TLS", "UNKNOWN", "TCP"]),
    ("mpart01", lambda m: (m.content_type, len(m.body)), ("multipart/mixed", 553)),
    ("mpart01", lambda m: ("rport" in m.top_via.params, m.top_via.params["rport"]), (True, None)),
    ("unreason", lambda m: (m.status, m.reason),
     (200, "= 2**3 * 5**2 но сто девяносто девять - простое")),
    ("noreason", lambda m: (m.status, m.reason), (100, "")),
    ("baddate", lambda m: m.headers.get("Date"), "Fri, 01 Jan 2010 16:00:00 EST"),
    ("badbranch", lambda m: m.top_via.branch, "z9hG4bK"),
    ("unksm2", lambda m: (m.to.uri.scheme, m.from_.uri.scheme, m.contact[0].uri.scheme),
     ("isbn", "http", "name")),
    ("bext01", lambda m: m.headers.get_all("Proxy-Require"),
     ["noProxiesSupportThis", "norDoAnyProxiesSupportThis"]),
    ("invut", lambda m: m.content_type, "application/unknownformat"),
    ("bcast", lambda m: m.vias[1].host, "255.255.255.255"),
    ("zeromf", lambda m: m.max_forwards, 0),
    ("cparam01", lambda m: "unknownparam" in m.contact[0].params, True),
    ("cparam01", lambda m: len(m.contact[0].sip_uri.params), 0),
    ("cparam02", lambda m: "unknownparam" in m.contact[0].sip_uri.params, True),
    ("cparam02", lambda m: len(m.contact[0].params), 0),
    ("regescrt", lambda m: m.contact[0].sip_uri.headers, [("Route", "%3Csip:sip.example.com%3E")]),
    ("inv2543", lambda m: (m.max_forwards, m.top_via.branch, m.from_tag), (None, None, None)),
    ("inv2543", lambda m: m.body.startswith(b"v=0\r\n"), True),  # no Content-Length: the rest
]  # fmt: skip


@pytest.mark.parametrize(("name", "read_value", "expected"), READ_VALUES)
def test_what_is_read(name: str, read_value: Callable[[Any], object], expected: object) -> None:
    assert read_value(parsed(name)) == expected


@pytest.mark.parametrize(
    ("name", "accessor", "reason"),
    [
        ("badinv01", "vias", "Invalid Via header"),
        ("badinv01", "contact", "Invalid Contact header"),
        ("scalar02", "max_forwards", "Invalid Max-Forwards header"),
        ("scalarlg", "cseq", "Invalid CSeq header"),
        ("quotbal", "to", "Invalid To header"),
        ("ltgtruri", "parsed_uri", "Invalid Request-URI"),
        ("regbadct", "contact", "Invalid Contact header"),
        ("badaspec", "to", "Invalid To header"),
        ("baddn", "from_", "Invalid From header"),
        ("insuf", "call_id", "Missing Call-ID header"),
        ("unkscm", "parsed_uri", "Unsupported URI Scheme"),
    ],
)
def test_lazy_accessor_names_the_broken_header(name: str, accessor: str, reason: str) -> None:
    message = parsed(name)
    with pytest.raises(RemoteProtocolError, match=reason):
        getattr(message, accessor)
