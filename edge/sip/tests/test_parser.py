"""Framing: datagrams with parse_message, byte streams with StreamParser."""

from __future__ import annotations

import pytest

from edge.sip import (
    FramingError,
    RemoteProtocolError,
    Request,
    Response,
    StreamParser,
    parse_message,
)
from edge.sip.tests.samples import ALL_SAMPLES, BYE, CALL_FLOW, INVITE, OPTIONS, TRYING

SAMPLES = sorted(ALL_SAMPLES)


def feed_in_chunks(data: bytes, size: int) -> list[bytes]:
    stream = StreamParser()
    messages = []
    for start in range(0, len(data), size):
        messages.extend(stream.feed(data[start : start + size]))
    return [bytes(message) for message in messages]


# --- datagrams ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SAMPLES)
def test_datagram_parses_and_serialises_byte_for_byte(name: str) -> None:
    data = ALL_SAMPLES[name]
    message = parse_message(data)
    assert bytes(message) == data
    assert message.to_bytes() is message.to_bytes()


def test_request_and_response_start_lines() -> None:
    request = parse_message(INVITE)
    assert isinstance(request, Request)
    assert (request.method, request.uri, request.version) == (
        "INVITE",
        "sip:+14155550123@sip.trunkline.example",
        "SIP/2.0",
    )
    response = parse_message(TRYING)
    assert isinstance(response, Response)
    assert (response.status, response.reason) == (100, "Trying")


@pytest.mark.parametrize("name", SAMPLES)
def test_datagram_discards_bytes_after_content_length(name: str) -> None:
    data = ALL_SAMPLES[name]
    message = parse_message(data + b"garbage after the body")
    assert bytes(message) == data


def test_datagram_without_content_length_takes_the_rest_as_body() -> None:
    head, _, body = INVITE.partition(b"\r\n\r\n")
    without_length = b"\r\n".join(
        line for line in head.split(b"\r\n") if not line.startswith(b"Content-Length")
    )
    message = parse_message(without_length + b"\r\n\r\n" + body)
    assert message.body == body
    message.headers.add("X-Changed", "yes")
    assert b"Content-Length: %d\r\n" % len(body) in bytes(message)


def test_datagram_skips_leading_line_ends() -> None:
    message = parse_message(b"\r\n\r\n" + OPTIONS)
    assert bytes(message) == OPTIONS


def test_bare_lf_line_ends_are_accepted_and_rewritten_as_crlf() -> None:
    lf_only = OPTIONS.replace(b"\r\n", b"\n")
    message = parse_message(lf_only)
    assert message.call_id == "ping-5a1e77@198.51.100.5"
    assert bytes(message) == lf_only
    message.headers.remove("User-Agent")
    assert bytes(message) == OPTIONS.replace(b"User-Agent: Trunkline\r\n", b"")


@pytest.mark.parametrize(
    ("data", "status_hint", "reason"),
    [
        (OPTIONS.replace(b"Content-Length: 0", b"Content-Length: 10"), 400, "mismatch"),
        (OPTIONS.replace(b"Content-Length: 0", b"Content-Length: x"), 400, "Content-Length"),
        (OPTIONS + b"x" * 70000, 513, "Too Large"),
        (OPTIONS[: OPTIONS.index(b"\r\n\r\n")], 400, "blank line"),
        (OPTIONS.replace(b"SIP/2.0\r\n", b"SIP/3.0\r\n", 1), 505, "Version"),
        (OPTIONS.replace(b"SIP/2.0\r\n", b"HTTP/1.1\r\n", 1), 400, "version"),
        (OPTIONS.replace(b"OPTIONS sip:", b"OPT(IONS sip:", 1), 400, "method"),
        (OPTIONS.replace(b"OPTIONS sip:", b"OPTIONS\tsip:", 1), 400, "request line"),
        # alphanumeric but not ASCII: not a token (the ASCII-alphanumeric fast path)
        (OPTIONS.replace(b"OPTIONS sip:", "OPTIONS\u00b2 sip:".encode(), 1), 400, "method"),
        (OPTIONS.replace(b"Max-Forwards: 70", b"Max-Forwards 70"), 400, "header line"),
        (OPTIONS.replace(b"Max-Forwards: 70", b": 70"), 400, "header line"),
        (OPTIONS.replace(b"\r\nVia:", b"\r\n Via:", 1), 400, "Continuation"),
        (TRYING.replace(b"SIP/2.0 100", b"SIP/2.0 099"), 400, "status code"),
        (TRYING.replace(b"SIP/2.0 100", b"SIP/2.0 700"), 400, "status code"),
        (TRYING.replace(b"SIP/2.0 100", b"SIP/2.0 1000"), 400, "status code"),
        (TRYING.replace(b"SIP/2.0 100", b"SIP/2.0 1a0"), 400, "status code"),
        (TRYING.replace(b"SIP/2.0 100", b"SIP/1.0 100"), 505, "Version"),
        (OPTIONS.replace(b"Content-Length: 0", b"Content-Length: 0\r\nl: 0"), 400, "Multiple"),
    ],
)
def test_datagram_errors(data: bytes, status_hint: int, reason: str) -> None:
    with pytest.raises(RemoteProtocolError, match=reason) as raised:
        parse_message(data)
    assert raised.value.status_hint == status_hint


def test_version_is_case_insensitive_and_kept_as_written() -> None:
    data = OPTIONS.replace(b"SIP/2.0\r\n", b"sip/2.0\r\n", 1)
    message = parse_message(data)
    assert message.version == "sip/2.0"
    assert bytes(message) == data


def test_response_without_reason_phrase_or_its_space() -> None:
    response = parse_message(TRYING.replace(b"100 Trying", b"100"))
    assert isinstance(response, Response)
    assert (response.status, response.reason) == (100, "")


# --- streams --------------------------------------------------------------------------------


STREAM = b"".join(CALL_FLOW)


@pytest.mark.parametrize("chunk_size", [1, 2, 7, 64, 1000, len(STREAM)])
def test_stream_in_chunks_of_any_size(chunk_size: int) -> None:
    assert feed_in_chunks(STREAM, chunk_size) == list(CALL_FLOW)


def test_stream_keeps_a_partial_message_for_the_next_feed() -> None:
    stream = StreamParser()
    cut = len(INVITE) + 40
    first = stream.feed((INVITE + BYE)[:cut])
    assert [bytes(m) for m in first] == [INVITE]
    second = stream.feed((INVITE + BYE)[cut:])
    assert [bytes(m) for m in second] == [BYE]


def test_stream_partial_body_waits() -> None:
    stream = StreamParser()
    assert stream.feed(INVITE[:-1]) == []
    assert [bytes(m) for m in stream.feed(INVITE[-1:])] == [INVITE]


def test_stream_skips_crlf_keep_alives_between_messages() -> None:
    data = b"\r\n\r\n" + OPTIONS + b"\r\n\r\n\r\n" + BYE + b"\r\n"
    assert feed_in_chunks(data, 1) == [OPTIONS, BYE]
    assert feed_in_chunks(data, len(data)) == [OPTIONS, BYE]


def only_error(items: list[object]) -> FramingError:
    assert len(items) == 1 and isinstance(items[0], FramingError), items
    return items[0]


def test_stream_requires_content_length() -> None:
    without_length = OPTIONS.replace(b"Content-Length: 0\r\n", b"")
    error = only_error(StreamParser().feed(without_length))
    assert "Content-Length" in error.reason
    assert (error.status_hint, error.fatal) == (400, True)
    assert error.head == without_length[: without_length.index(b"\r\n\r\n")]


def test_stream_bounds_the_head() -> None:
    stream = StreamParser(max_size=1000)
    assert stream.feed(b"OPTIONS sip:a@b SIP/2.0\r\n") == []
    items: list[object] = []
    for _ in range(100):
        items += stream.feed(b"X-Filler: " + b"x" * 50 + b"\r\n")
    error = only_error(items)
    assert (error.status_hint, error.fatal) == (513, True)
    assert len(error.head) <= 1000


def test_stream_bounds_the_body() -> None:
    huge = OPTIONS.replace(b"Content-Length: 0", b"Content-Length: 99999999999")
    error = only_error(StreamParser().feed(huge))
    assert (error.status_hint, error.fatal) == (413, True)


def test_stream_stays_failed_after_a_fatal_error() -> None:
    stream = StreamParser()
    assert only_error(stream.feed(b"NOT A SIP MESSAGE\r\n\r\n")).fatal
    assert stream.feed(OPTIONS) == []


def test_stream_delivers_the_valid_message_before_garbage() -> None:
    items = StreamParser().feed(OPTIONS + b"GARBAGE\r\n\r\n")
    assert [bytes(m) for m in items[:1]] == [OPTIONS]
    assert only_error(items[1:]).fatal


def test_stream_skips_a_malformed_message_whose_length_is_known() -> None:
    body = b"v=0\r\n"
    bad = (
        b" OPTIONS  sip:a@b SIP/2.0\r\nVia: SIP/2.0/TCP h;branch=z9hG4bK1\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    data = OPTIONS + bad + BYE
    for chunk_size in (1, 7, len(data)):
        stream = StreamParser()
        chunks = [data[at : at + chunk_size] for at in range(0, len(data), chunk_size)]
        items = [item for chunk in chunks for item in stream.feed(chunk)]
        assert len(items) == 3
        assert bytes(items[0]) == OPTIONS and bytes(items[2]) == BYE  # type: ignore[arg-type]
        error = items[1]
        assert isinstance(error, FramingError) and not error.fatal
        assert error.status_hint == 400
        assert error.head.startswith(b" OPTIONS  sip:a@b SIP/2.0\r\nVia:")


def test_stream_parses_bare_lf_messages() -> None:
    lf_only = OPTIONS.replace(b"\r\n", b"\n")
    assert feed_in_chunks(lf_only + lf_only, 3) == [lf_only, lf_only]
