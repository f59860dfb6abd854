"""Fuzzing: whatever the bytes, only RemoteProtocolError leaves the parsers and accessors.

Inputs are arbitrary bytes and mutations of real messages (the samples and RFC 4475), fed as
datagrams and as streams cut anywhere. Messages that parse are read through every accessor,
validated, answered, changed and serialised again, and must parse back to the same headers.
"""

from __future__ import annotations

from contextlib import suppress
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.sip import (
    FramingError,
    RemoteProtocolError,
    Request,
    Response,
    SessionDescription,
    StreamParser,
    make_response,
    parse_message,
    validate_for_proxy,
)
from edge.sip.tests.samples import ALL_SAMPLES, SDP_OFFER

SEEDS = [
    *ALL_SAMPLES.values(),
    *(path.read_bytes() for path in sorted(Path("/work/shared/conformance/rfc4475").glob("*.dat"))),
]
# Bytes that matter to the grammar, so mutations hit the interesting branches often.
SYNTAX_BYTES = [
    *(bytes([char]) for char in b'"\\<>;,:=%[]@?/ \t\n\x00\xff0'),
    b"\r\n",
    b"\r\n ",
    b"99999999999",
]
ACCESSORS = (
    "call_id",
    "cseq",
    "from_",
    "to",
    "from_tag",
    "to_tag",
    "vias",
    "top_via",
    "max_forwards",
    "contact",
    "contact_is_wildcard",
    "routes",
    "record_routes",
    "content_type",
)
FUZZ_SETTINGS = settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@st.composite
def mutated(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 4))):
        position = draw(st.integers(0, len(data)))
        end = min(len(data), position + draw(st.integers(0, 8)))
        replacement = draw(st.one_of(st.sampled_from(SYNTAX_BYTES), st.binary(max_size=6)))
        data[position:end] = replacement
    return bytes(data)


def read_everything(message: Request | Response) -> None:
    for accessor in ACCESSORS + (("parsed_uri",) if isinstance(message, Request) else ()):
        with suppress(RemoteProtocolError):
            getattr(message, accessor)
    with suppress(RemoteProtocolError):
        validate_for_proxy(message)
    if isinstance(message, Request):
        parse_message(bytes(make_response(message, 400, to_tag="fuzz")))
    # A changed message is rebuilt from its header lines and must read back the same.
    message.headers.add("X-Fuzz", "1")
    reparsed = parse_message(bytes(message))
    assert without_content_length(reparsed) == without_content_length(message)
    assert reparsed.body == message.body


def without_content_length(message: Request | Response) -> list[tuple[str, str]]:
    # Serialisation writes a Content-Length that matches the body, added if it was missing.
    return [(n, v) for n, v in message.headers if n.lower() not in ("content-length", "l")]


def parse_datagram(data: bytes) -> None:
    try:
        message = parse_message(data)
    except RemoteProtocolError:
        return
    read_everything(message)


@FUZZ_SETTINGS
@given(st.binary(max_size=512))
def test_arbitrary_bytes(data: bytes) -> None:
    parse_datagram(data)


@FUZZ_SETTINGS
@given(
    st.sampled_from([b"INVITE sip:a@b SIP/2.0\r\n", b"SIP/2.0 200 OK\r\n"]),
    st.binary(max_size=300),
)
def test_valid_start_line_then_arbitrary_bytes(start_line: bytes, rest: bytes) -> None:
    parse_datagram(start_line + rest)


@FUZZ_SETTINGS
@given(mutated(SEEDS))
def test_mutated_messages(data: bytes) -> None:
    parse_datagram(data)


@FUZZ_SETTINGS
@given(st.lists(mutated(SEEDS), min_size=1, max_size=3), st.lists(st.integers(1, 400), max_size=8))
def test_mutated_streams_cut_anywhere(messages: list[bytes], cuts: list[int]) -> None:
    data = b"".join(messages)
    stream = StreamParser()
    position = 0
    # feed never raises: errors come back as items, and nothing follows a fatal one.
    lost = False
    for size in [*cuts, len(data)]:
        for item in stream.feed(data[position : position + size]):
            assert not lost
            if isinstance(item, FramingError):
                assert isinstance(item.head, bytes)
                lost = item.fatal
            else:
                read_everything(item)
        position += size


@FUZZ_SETTINGS
@given(
    mutated([SDP_OFFER, SDP_OFFER + b"m=video 5006 RTP/AVP 31 96\r\na=rtpmap:96 H264/90000\r\n"])
)
def test_mutated_sdp(body: bytes) -> None:
    try:
        sdp = SessionDescription.parse(body)
        _ = sdp.connection_address
        for media in sdp.media:
            _ = (media.port, media.connection_address, media.codecs)
    except RemoteProtocolError:
        return
    assert SessionDescription.parse(bytes(sdp)).to_bytes() == bytes(sdp)
