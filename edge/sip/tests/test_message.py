"""Headers, typed accessors, serialisation after changes, builders and Via handling."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

from edge.sip import (
    BRANCH_MAGIC_COOKIE,
    Headers,
    LocalProtocolError,
    NameAddr,
    RemoteProtocolError,
    Request,
    Response,
    Via,
    make_request,
    make_response,
    new_branch,
    new_call_id,
    new_tag,
    parse_message,
    parse_uri,
    parse_via,
    random_hex,
    validate_for_proxy,
)
from edge.sip.message import answered_to
from edge.sip.tests.samples import ALL_SAMPLES, BYE, INVITE, OPTIONS, REGISTER


def parse_request(data: bytes) -> Request:
    message = parse_message(data)
    assert isinstance(message, Request)
    return message


# --- Headers --------------------------------------------------------------------------------


def test_lookup_is_case_insensitive_and_knows_compact_forms() -> None:
    headers = Headers([("v", "SIP/2.0/UDP a"), ("VIA", "SIP/2.0/UDP b"), ("i", "x@y")])
    assert headers.get("Via") == "SIP/2.0/UDP a"
    assert headers.get_all("via") == ["SIP/2.0/UDP a", "SIP/2.0/UDP b"]
    assert headers.get("Call-ID") == "x@y"
    assert "call-id" in headers
    assert "Contact" not in headers
    assert headers.get("Contact") is None
    assert headers.get_all("Contact") == []


def test_get_all_splits_list_headers_outside_quotes_and_brackets() -> None:
    headers = Headers(
        [
            ("Contact", '"Doe, John" <sip:a@b;x=1,2>;q=0.5, <sip:c@d>'),
            ("Supported", "timer, 100rel,replaces"),
            ("Subject", "lunch, maybe"),
        ]
    )
    assert headers.get_all("Contact") == ['"Doe, John" <sip:a@b;x=1,2>;q=0.5', "<sip:c@d>"]
    assert headers.get_all("Supported") == ["timer", "100rel", "replaces"]
    assert headers.get_all("Subject") == ["lunch, maybe"]


def test_set_replaces_every_line_in_place_of_the_first() -> None:
    headers = Headers([("A", "1"), ("Via", "v1"), ("B", "2"), ("Via", "v2")])
    headers.set("via", "v3")
    assert list(headers) == [("A", "1"), ("via", "v3"), ("B", "2")]
    headers.set("C", "3")
    assert list(headers)[-1] == ("C", "3")


def test_add_appends_or_goes_before_the_others_of_its_name() -> None:
    headers = Headers([("Max-Forwards", "70"), ("Via", "v1")])
    headers.add("Via", "v0", first=True)
    headers.add("Via", "v2")
    headers.add("Route", "<sip:r>", first=True)
    assert list(headers) == [
        ("Route", "<sip:r>"),
        ("Max-Forwards", "70"),
        ("Via", "v0"),
        ("Via", "v1"),
        ("Via", "v2"),
    ]


def test_remove_and_remove_first() -> None:
    headers = Headers([("Via", "v1, v2"), ("Via", "v3"), ("X", "1"), ("X", "2")])
    assert headers.remove_first("Via") == "v1"
    assert headers.get_all("Via") == ["v2", "v3"]
    assert headers.remove_first("X") == "1"
    headers.remove("Via")
    assert list(headers) == [("X", "2")]
    assert headers.remove_first("Via") is None
    assert len(headers) == 1


@pytest.mark.parametrize(
    ("name", "value"), [("Bad Name", "x"), ("", "x"), ("X", "a\r\nInjected: yes"), ("X", "a\nb")]
)
def test_our_own_bad_headers_are_refused(name: str, value: str) -> None:
    with pytest.raises(LocalProtocolError):
        Headers([(name, value)])
    with pytest.raises(LocalProtocolError):
        Headers().add(name, value)


# --- accessors ------------------------------------------------------------------------------


def test_typed_accessors_of_an_invite() -> None:
    invite = parse_request(INVITE)
    assert invite.call_id == "7f3c2a9e41b84d0c@192.0.2.10"
    assert invite.cseq == (314159, "INVITE")
    assert invite.from_.display_name == "Front Desk"
    assert invite.from_tag == "1928301774"
    assert invite.to_tag is None
    assert invite.max_forwards == 70
    assert invite.top_via.branch == "z9hG4bK776asdhds"
    assert invite.top_via.sent_by == "192.0.2.10:5060"
    assert invite.contact[0].sip_uri.params["transport"] == "udp"
    assert invite.routes == []
    assert invite.content_type == "application/sdp"
    assert invite.parsed_uri.user == "+14155550123"
    validate_for_proxy(invite)


def test_accessors_are_cached_until_the_headers_change() -> None:
    invite = parse_request(INVITE)
    assert invite.vias is invite.vias
    invite.headers.add("Via", "SIP/2.0/TCP 198.51.100.5;branch=z9hG4bKedge", first=True)
    assert [via.host for via in invite.vias] == ["198.51.100.5", "192.0.2.10"]


def test_content_type_drops_parameters_and_case() -> None:
    message = parse_message(OPTIONS)
    message.headers.set("Content-Type", "Multipart/Mixed; boundary=xyz")
    assert message.content_type == "multipart/mixed"


def test_contact_wildcard() -> None:
    register = parse_request(REGISTER)
    register.headers.set("Contact", "*")
    assert register.contact == []
    assert register.contact_is_wildcard
    register.headers.add("Contact", "<sip:a@b>")
    assert not register.contact_is_wildcard
    with pytest.raises(RemoteProtocolError, match="Contact"):
        _ = register.contact


@pytest.mark.parametrize(
    ("header", "value", "accessor"),
    [
        ("Max-Forwards", "256", "max_forwards"),
        ("Max-Forwards", "-1", "max_forwards"),
        ("Max-Forwards", "\uff17", "max_forwards"),  # a fullwidth 7 is no digit
        ("CSeq", "1", "cseq"),
        ("CSeq", "4294967296 OPTIONS", "cseq"),
        ("CSeq", "1 OPTIONS extra", "cseq"),
        ("Call-ID", "has space", "call_id"),
        ("Content-Type", "nonsense", "content_type"),
        ("Via", "SIP/2.0/UDP", "vias"),
        ("Via", "SIP/3.0/UDP host", "vias"),
        ("Via", "SIP/2.0/UDP host:99999", "vias"),
        ("Via", "SIP/2.0/UDP host;branch=", "vias"),
        ("Via", "SIP/2.0/UD\u00de host;branch=z9hG4bK1", "vias"),
        ("Via", "SIP/2.0/UDP host;branch=z9hG4bK\u00e91", "vias"),
        ("CSeq", "1 OPTION\u00d0", "cseq"),
        ("Route", "<sip:unterminated", "routes"),
    ],
)
def test_bad_values_raise_when_read(header: str, value: str, accessor: str) -> None:
    message = parse_message(OPTIONS)
    message.headers.set(header, value)
    with pytest.raises(RemoteProtocolError, match=f"Invalid {header} header"):
        getattr(message, accessor)


@pytest.mark.parametrize("name", sorted(ALL_SAMPLES))
def test_samples_are_valid_for_a_proxy(name: str) -> None:
    validate_for_proxy(parse_message(ALL_SAMPLES[name]))


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda h: h.remove("Call-ID"), "Missing Call-ID"),
        (lambda h: h.remove("Via"), "Missing Via"),
        (lambda h: h.add("To", "<sip:other@example.com>"), "Multiple To"),
        (lambda h: h.set("CSeq", "1 INVITE"), "CSeq method"),
        (lambda h: h.set("Contact", "sip:a@b?x=y"), "Invalid Contact"),
        (lambda h: h.set("From", "<sip:a@exa_mple>;tag=1"), "Invalid From header: Malformed host"),
        (lambda h: h.add("Route", "<sip:proxy:port;lr>"), "Invalid Route header: Malformed port"),
        # The optional headers are checked when present, whatever their spelling.
        (
            lambda h: h.add("record-route", "<sip:proxy:port;lr>"),
            "Invalid Record-Route header: Malformed port",
        ),
        (lambda h: h.set("Max-Forwards", "256"), "Max-Forwards out of range"),
        (lambda h: h.set("c", "application"), "Invalid Content-Type header: Malformed media type"),
        (lambda h: (h.remove("Contact"), h.add("m", "sip:a@b?x=y")), "Invalid Contact"),
    ],
)
def test_validate_for_proxy_refuses(change: Callable[[Headers], None], reason: str) -> None:
    message = parse_message(OPTIONS)
    change(message.headers)
    with pytest.raises(RemoteProtocolError, match=reason):
        validate_for_proxy(message)


def test_an_address_text_seen_before_is_not_parsed_again() -> None:
    # Peers repeat their From, To and Contact values on every message: one parse per text.
    from edge.sip import message

    first, again = parse_request(INVITE), parse_request(INVITE)
    assert again.from_ is first.from_ and again.to is first.to
    assert again.contact[0] is first.contact[0]
    assert str(again.from_) == str(first.from_)
    # Another text is another value; a malformed one raises every time and is not kept.
    other = parse_request(INVITE.replace(b";tag=", b";tag=other"))
    assert other.from_ is not first.from_ and other.from_.tag == "other" + str(first.from_.tag)
    bad = INVITE.replace(b"From: ", b"From: <sip:bad", 1)
    for _ in range(2):
        with pytest.raises(RemoteProtocolError, match="Invalid From header"):
            validate_for_proxy(parse_request(bad))
    assert all(isinstance(value, NameAddr) for value in message._NAME_ADDRS.values())


def test_the_address_cache_is_bounded_and_forgotten_with_the_known_values() -> None:
    from edge.sip import grammar, message

    for number in range(message._NAME_ADDRS_LIMIT + 10):
        message._name_addr(f"<sip:{number}@example.test>;tag={number}")
    assert 0 < len(message._NAME_ADDRS) <= message._NAME_ADDRS_LIMIT
    grammar.forget_known()
    assert message._NAME_ADDRS == {}


# --- serialisation after changes ------------------------------------------------------------


def test_changes_keep_untouched_lines_as_received() -> None:
    folded = OPTIONS.replace(
        b"Accept: application/sdp", b"Accept: application/sdp,\r\n  text/plain"
    )
    message = parse_message(folded)
    message.headers.remove("User-Agent")
    assert bytes(message) == folded.replace(b"User-Agent: Trunkline\r\n", b"")


def test_content_length_follows_the_body_and_keeps_its_spelling() -> None:
    message = parse_message(OPTIONS.replace(b"Content-Length: 0", b"l: 0"))
    message.body = b"hello"
    assert bytes(message).endswith(b"\r\nl: 5\r\n\r\nhello")
    reparsed = parse_message(bytes(message))
    assert reparsed.body == b"hello"


def test_start_line_changes_are_serialised() -> None:
    request = parse_request(OPTIONS)
    request.uri = "sip:192.0.2.99"
    assert request.parsed_uri.host == "192.0.2.99"
    request.method = "INFO"
    assert bytes(request).startswith(b"INFO sip:192.0.2.99 SIP/2.0\r\n")
    response = make_response(request, 200)
    bytes(response)
    response.status, response.reason = 202, "Accepted"
    assert bytes(response).startswith(b"SIP/2.0 202 Accepted\r\n")


def test_pop_via_removes_only_the_top_value() -> None:
    data = BYE.replace(
        b"Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK776asdhdu;rport",
        b"Via: SIP/2.0/UDP edge.example;branch=z9hG4bKtop, SIP/2.0/UDP 192.0.2.10;branch=z9hG4bKb",
    )
    message = parse_message(data)
    assert message.pop_via().host == "edge.example"
    assert [via.branch for via in message.vias] == ["z9hG4bKb"]
    assert b"Via: SIP/2.0/UDP 192.0.2.10;branch=z9hG4bKb\r\n" in bytes(message)
    message.pop_via()
    with pytest.raises(RemoteProtocolError, match="Missing Via"):
        message.pop_via()


# --- Via ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "transport", "host", "port", "params"),
    [
        ("SIP/2.0/UDP host;branch=z9hG4bK1", "UDP", "host", None, {"branch": "z9hG4bK1"}),
        ("SIP/2.0/tcp 192.0.2.1:5070;rport", "TCP", "192.0.2.1", 5070, {"rport": None}),
        ("SIP / 2.0 / TLS  h.example ; rport=5061", "TLS", "h.example", None, {"rport": "5061"}),
        ("SIP/2.0/UDP [2001:db8::1]:5060;received=[2001:db8::2]", "UDP", "[2001:db8::1]", 5060,
         {"received": "[2001:db8::2]"}),
        ("SIP/2.0/WSS x.invalid;maddr=224.2.0.1;ttl=16", "WSS", "x.invalid", None,
         {"maddr": "224.2.0.1", "ttl": "16"}),
    ],
)  # fmt: skip
def test_parse_via(
    text: str, transport: str, host: str, port: int | None, params: dict[str, str | None]
) -> None:
    via = parse_via(text)
    assert (via.transport, via.host, via.port, dict(via.params)) == (transport, host, port, params)
    assert parse_via(str(via)).sent_by == via.sent_by


def test_via_str() -> None:
    via = Via("UDP", "198.51.100.5", 5060)
    via.params["branch"] = "z9hG4bKabc"
    via.params["rport"] = None
    assert str(via) == "SIP/2.0/UDP 198.51.100.5:5060;branch=z9hG4bKabc;rport"


# --- builders -------------------------------------------------------------------------------


def test_make_response_copies_what_rfc_3261_says() -> None:
    invite = parse_request(INVITE)
    invite.headers.add("Via", "SIP/2.0/UDP proxy.example;branch=z9hG4bKp", first=True)
    invite.headers.add("Timestamp", "54")
    ringing = make_response(invite, 180, to_tag="as83kd9")
    assert (ringing.status, ringing.reason) == (180, "Ringing")
    assert [name for name, _ in ringing.headers] == ["Via", "Via", "From", "To", "Call-ID", "CSeq"]
    assert [via.branch for via in ringing.vias] == ["z9hG4bKp", "z9hG4bK776asdhds"]
    assert ringing.to_tag == "as83kd9"
    assert ringing.from_tag == invite.from_tag
    assert (ringing.call_id, ringing.cseq) == (invite.call_id, invite.cseq)
    wire = bytes(ringing)
    assert wire.startswith(b"SIP/2.0 180 Ringing\r\nVia: SIP/2.0/UDP proxy.example;branch=z9hG4bKp")
    assert wire.endswith(b"Content-Length: 0\r\n\r\n")
    assert parse_message(wire).to_tag == "as83kd9"


def test_100_trying_echoes_timestamp_and_needs_no_tag() -> None:
    invite = parse_request(INVITE)
    invite.headers.add("Timestamp", "54")
    trying = make_response(invite, 100)
    assert trying.headers.get("Timestamp") == "54"
    assert trying.to_tag is None
    assert "Timestamp" not in make_response(invite, 180).headers


def test_make_response_keeps_an_existing_to_tag() -> None:
    bye = parse_request(BYE)
    assert make_response(bye, 200, to_tag="other").to_tag == "a6c85cf"


def test_answered_to_is_the_to_a_response_carries() -> None:
    """One rule for the To of our answers: make_response's, and the dialog the B2BUA builds
    from its 2xx without reading it back (edge/b2bua.py)."""
    invite, bye = parse_request(INVITE), parse_request(BYE)
    assert answered_to(invite, "as83kd9") == f"{invite.headers.get('To')};tag=as83kd9"
    assert answered_to(bye, "other") == bye.headers.get("To")
    for request, tag in ((invite, "as83kd9"), (bye, "other")):
        assert make_response(request, 200, to_tag=tag).headers.get("To") == answered_to(
            request, tag
        )


def test_make_response_reason_body_and_extra_headers() -> None:
    invite = parse_request(INVITE)
    assert make_response(invite, 699).reason == "Global Failure"
    assert make_response(invite, 499).reason == "Request Failure"
    assert make_response(invite, 486, "Busy Now").reason == "Busy Now"
    answer = make_response(
        invite,
        200,
        to_tag=new_tag(),
        headers=[("Content-Type", "application/sdp"), ("Contact", "<sip:edge@198.51.100.5>")],
        body=b"v=0\r\n",
    )
    reparsed = parse_message(bytes(answer))
    assert (reparsed.body, reparsed.content_type) == (b"v=0\r\n", "application/sdp")
    assert reparsed.contact[0].sip_uri.host == "198.51.100.5"


def test_make_response_to_a_request_whose_to_cannot_be_read() -> None:
    broken = parse_request(OPTIONS.replace(b"To: <sip:192.0.2.10:5060>", b'To: "unterminated'))
    response = make_response(broken, 400, "Invalid To header", to_tag="t1")
    assert response.headers.get("To") == '"unterminated'


@pytest.mark.parametrize("status", [99, 700])
def test_make_response_refuses_non_sip_status(status: int) -> None:
    with pytest.raises(LocalProtocolError):
        make_response(parse_request(OPTIONS), status)


def test_make_request_round_trips() -> None:
    via = Via("UDP", "198.51.100.5", 5060)
    via.params["branch"] = new_branch()
    caller = NameAddr(parse_uri("sip:+14155550100@sip.trunkline.example"), "Front Desk")
    caller.params["tag"] = new_tag()
    request = make_request(
        "INVITE",
        parse_uri("sip:+14155550123@203.0.113.20"),
        from_=caller,
        to="<sip:+14155550123@203.0.113.20>",
        call_id=new_call_id("198.51.100.5"),
        cseq=1,
        via=via,
        contact="<sip:b2bua@198.51.100.5:5060>",
        headers=[("Allow", "INVITE, ACK, BYE, CANCEL, OPTIONS")],
        body=b"v=0\r\n",
        content_type="application/sdp",
    )
    reparsed = parse_request(bytes(request))
    validate_for_proxy(reparsed)
    assert [name for name, _ in reparsed.headers] == [
        "Via", "Max-Forwards", "From", "To", "Call-ID", "CSeq", "Contact", "Allow",
        "Content-Type", "Content-Length",
    ]  # fmt: skip
    assert reparsed.from_.display_name == "Front Desk"
    assert reparsed.from_tag == caller.tag
    assert reparsed.top_via.branch == via.branch
    assert (reparsed.cseq, reparsed.max_forwards, reparsed.body) == ((1, "INVITE"), 70, b"v=0\r\n")


@pytest.mark.parametrize(
    ("method", "cseq", "body", "content_type"),
    [("IN VITE", 1, b"", None), ("INVITE", -1, b"", None), ("INVITE", 1, b"v=0", None)],
)
def test_make_request_refuses_misuse(
    method: str, cseq: int, body: bytes, content_type: str | None
) -> None:
    with pytest.raises(LocalProtocolError):
        make_request(
            method, "sip:a@b", from_="<sip:c@d>;tag=1", to="<sip:a@b>", call_id="x", cseq=cseq,
            via="SIP/2.0/UDP h;branch=z9hG4bKx", body=body, content_type=content_type,
        )  # fmt: skip


def test_generated_identifiers() -> None:
    branches = {new_branch() for _ in range(100)}
    assert len(branches) == 100
    assert all(branch.startswith(BRANCH_MAGIC_COOKIE) for branch in branches)
    assert len({new_tag() for _ in range(100)}) == 100
    assert new_call_id("198.51.100.5").endswith("@198.51.100.5")


def test_response_repr_and_request_repr() -> None:
    assert repr(parse_message(OPTIONS)) == "<Request OPTIONS sip:192.0.2.10:5060>"
    assert isinstance(make_response(parse_request(OPTIONS), 200), Response)


def test_random_ids_have_their_size_and_never_repeat_across_pool_refills() -> None:
    # Several pools' worth: every refill boundary is crossed, sizes not dividing the pool.
    ids = [random_hex(7) for _ in range(3 * 4096 // 7)]
    assert all(len(i) == 14 and int(i, 16) >= 0 for i in ids)
    assert len(set(ids)) == len(ids)
    assert len(random_hex(5000)) == 10000  # larger than a pool
    assert new_branch().startswith(BRANCH_MAGIC_COOKIE) and len(new_branch()) == 7 + 20
    assert len(new_tag()) == 16 and new_call_id("h").endswith("@h")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_does_not_reuse_its_parents_random_bytes() -> None:
    random_hex(1)  # the parent holds a pool
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its first id, then exit without running pytest's cleanup
        os.write(write, random_hex(16).encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child = os.read(read, 64).decode()
    os.close(read)
    os.close(write)
    assert len(child) == 32 and child != random_hex(16)


def test_a_forgotten_parse_keeps_the_bytes_and_reads_the_headers_again() -> None:
    message = parse_message(INVITE)
    assert isinstance(message, Request)
    before = (message.call_id, message.cseq, message.from_tag, [str(v) for v in message.vias])
    message.forget_parsed()
    assert message._headers is None  # dropped whole: nothing left for the collector to walk
    assert message.to_bytes() == INVITE  # resending needs only the bytes
    assert (message.call_id, message.cseq, message.from_tag, [str(v) for v in message.vias]) == (
        before
    )
    assert message.headers.get("Call-ID") == before[0]
    # Changed after being read again: the change is what goes on the wire.
    message.headers.set("Subject", "again")
    assert b"Subject: again\r\n" in message.to_bytes()
    message.forget_parsed()
    assert message.headers.get("Subject") == "again"


def test_a_built_message_forgets_its_parse_once_serialised() -> None:
    request = make_request(
        "BYE",
        "sip:bob@192.0.2.4",
        from_="<sip:alice@192.0.2.1>;tag=a",
        to="<sip:bob@192.0.2.4>;tag=b",
        call_id="c1@192.0.2.1",
        cseq=2,
        via=f"SIP/2.0/UDP 192.0.2.1:5060;branch={new_branch()}",
    )
    request.forget_parsed()  # not serialised yet: the headers are all there is
    assert request._headers is not None
    wire = request.to_bytes()
    request.forget_parsed()
    assert request._headers is None and request.to_bytes() == wire
    assert (request.to_tag, request.cseq) == ("b", (2, "BYE"))
    response = make_response(request, 200)  # answering reads the dropped headers again
    assert response.call_id == "c1@192.0.2.1" and response.to_tag == "b"


def test_a_message_changed_since_serialised_keeps_its_headers_when_forgetting() -> None:
    message = parse_message(INVITE)
    message.headers.set("Subject", "changed")
    message.forget_parsed()
    assert message._headers is not None
    assert b"Subject: changed\r\n" in message.to_bytes()


def test_bare_lf_messages_are_read_again_as_they_were_parsed() -> None:
    head, body = INVITE.split(b"\r\n\r\n", 1)
    data = head.replace(b"\r\n", b"\n") + b"\n\n" + body  # the body keeps its length
    message = parse_message(data)
    call_id = message.call_id
    message.forget_parsed()
    assert message.to_bytes() == data and message.call_id == call_id


def test_changing_the_start_line_or_body_of_a_forgotten_message_keeps_its_headers() -> None:
    request = parse_message(INVITE)
    assert isinstance(request, Request)
    call_id = request.call_id
    request.forget_parsed()
    request.uri = "sip:carol@192.0.2.9"
    request.body = b""
    assert request.call_id == call_id
    assert request.to_bytes().startswith(b"INVITE sip:carol@192.0.2.9 SIP/2.0\r\n")
    response = make_response(request, 180)
    response.to_bytes()
    response.forget_parsed()
    response.status = 183
    assert response.call_id == call_id and response.to_bytes().startswith(b"SIP/2.0 183")


def test_a_forgotten_parse_keeps_one_copy_of_the_body() -> None:
    """The body is the tail of the bytes: forgetting the parse drops the second copy (an SDP of
    hundreds of bytes on every held call and lingering transaction), and reading it again, or
    changing the start line (which drops the bytes), gives it back whole."""
    message = parse_message(INVITE)
    body = message.body
    assert body and INVITE.endswith(body)
    message.forget_parsed()
    assert message._body is None  # one copy left: the bytes
    assert message.to_bytes() == INVITE
    assert message.body == body
    message.forget_parsed()
    assert isinstance(message, Request)
    message.uri = "sip:carol@192.0.2.9"  # the bytes go; the body must not go with them
    assert message.body == body
    assert message.to_bytes().endswith(b"\r\n\r\n" + body)
    # A body that is not the tail of the bytes (built from other parts) is kept as it is.
    odd = parse_message(INVITE)
    odd._raw = INVITE + b"trailing"
    odd.forget_parsed()
    assert odd._body == body
