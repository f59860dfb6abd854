"""Framing and start lines: bytes from a datagram or a stream become Request/Response objects.

Only what framing needs is checked here (start line, version, header line syntax,
Content-Length); header values stay raw until an accessor or `validate_for_proxy` reads them.
No sockets, no buffers beyond the one a StreamParser owns, no clock. The only exception that
leaves this module on any input is `RemoteProtocolError`.
"""

from __future__ import annotations

from functools import partial

from edge.sip.errors import RemoteProtocolError
from edge.sip.grammar import is_token
from edge.sip.message import SIP_VERSION, Headers, Request, Response

__all__ = ["DEFAULT_MAX_SIZE", "StreamParser", "parse_message"]

DEFAULT_MAX_SIZE = 65535
_COMMON_METHODS = frozenset(
    {
        "ACK",
        "BYE",
        "CANCEL",
        "INFO",
        "INVITE",
        "MESSAGE",
        "NOTIFY",
        "OPTIONS",
        "PRACK",
        "PUBLISH",
        "REFER",
        "REGISTER",
        "SUBSCRIBE",
        "UPDATE",
    }
)
_LINE_END_BYTES = b"\r\n"

_MessageFactory = partial[Request] | partial[Response]


def _find_head_end(
    data: bytes | bytearray, start: int, searched: int = 0
) -> tuple[int, int] | None:
    """(end of the header block, start of the body), or None while the blank line is missing.

    The message starts at `start`; the blank line is not before `searched`. Bare LF line ends
    are accepted, as a robust proxy does, when the start line ends with one.
    """
    first_line_end = data.find(b"\n", start)
    if first_line_end < 0:
        return None
    search_from = max(first_line_end - 1, searched)
    if data[first_line_end - 1 : first_line_end] == b"\r":
        head_end = data.find(b"\r\n\r\n", search_from)
        return None if head_end < 0 else (head_end, head_end + 4)
    head_end = data.find(b"\n\n", search_from)
    return None if head_end < 0 else (head_end, head_end + 2)


def _check_version(version: str) -> None:
    if version == SIP_VERSION or version.upper() == SIP_VERSION:
        return
    if version[:4].upper() == "SIP/":
        raise RemoteProtocolError("Version Not Supported", 505)
    raise RemoteProtocolError("Malformed SIP version")


def _parse_start_line(line: str) -> _MessageFactory:
    """Check the request or status line; return what builds the message once it is whole."""
    if line[:4].upper() == "SIP/":
        version, _, rest = line.partition(" ")
        _check_version(version)
        code, _, reason = rest.partition(" ")
        if len(code) != 3 or not (code.isascii() and code.isdigit()) or code[0] not in "123456":
            raise RemoteProtocolError("Malformed status code")
        return partial(Response, int(code), reason, version=version)
    # Exactly one SP between the three parts (RFC 4475 lwsruri, lwsstart, trws).
    parts = line.split(" ")
    if len(parts) != 3 or not all(parts):
        raise RemoteProtocolError("Malformed request line")
    method, uri, version = parts
    if method not in _COMMON_METHODS and not is_token(method):
        raise RemoteProtocolError("Malformed method")
    _check_version(version)
    return partial(Request, method, uri, version=version)


def _parse_head(data: bytes | bytearray, start: int, end: int) -> tuple[_MessageFactory, Headers]:
    # surrogateescape keeps bytes that are not UTF-8, so untouched lines go back out unchanged.
    head = data[start:end].decode("utf-8", "surrogateescape")
    lines = head.split("\r\n")
    if head.count("\n") != len(lines) - 1:
        lines = head.replace("\r\n", "\n").rstrip("\r").split("\n")
    return _parse_start_line(lines[0]), Headers.from_lines(lines[1:])


def _content_length(headers: Headers) -> int | None:
    values = headers.get_all("Content-Length")
    if not values:
        return None
    if len(values) > 1:
        # Two lengths make the framing ambiguous (RFC 4475 mcl01); pick none.
        raise RemoteProtocolError("Multiple Content-Length headers")
    text = values[0]
    if not (text.isascii() and text.isdigit()):
        raise RemoteProtocolError("Malformed Content-Length")
    return int(text)


def _skip_line_ends(data: bytes | bytearray) -> int:
    """How many CR and LF bytes precede the start line (RFC 3261 7.5 says ignore them)."""
    return len(data) - len(data.lstrip(_LINE_END_BYTES)) if data[:1] in (b"\r", b"\n") else 0


def parse_message(data: bytes, *, max_size: int = DEFAULT_MAX_SIZE) -> Request | Response:
    """Parse one datagram.

    Without Content-Length the body is the rest of the datagram; with it, the body is that
    many bytes and anything after them is discarded (RFC 3261 18.3, RFC 4475 dblreq). A
    Content-Length beyond the datagram is answered with 400 (RFC 4475 clerr).
    """
    if len(data) > max_size:
        raise RemoteProtocolError("Message Too Large", 513)
    start = _skip_line_ends(data)
    head_bounds = _find_head_end(data, start)
    if head_bounds is None:
        raise RemoteProtocolError("Missing blank line after the headers")
    head_end, body_start = head_bounds
    factory, headers = _parse_head(data, start, head_end)
    content_length = _content_length(headers)
    end = len(data) if content_length is None else body_start + content_length
    if end > len(data):
        raise RemoteProtocolError("Content-Length mismatch")
    raw = data if start == 0 and end == len(data) else data[start:end]
    return factory(headers, data[body_start:end], raw=raw)


class StreamParser:
    """Cuts a TCP/TLS byte stream into messages; Content-Length is mandatory on streams.

    `feed` accepts any split of the stream (one byte at a time, several messages at once) and
    returns the messages it completed. A framing error raises RemoteProtocolError; the stream
    cannot be resynchronised after that, so every later `feed` raises it again and the
    connection should be closed. Messages completed in the same `feed` call as the error are
    dropped with it.
    """

    def __init__(self, *, max_size: int = DEFAULT_MAX_SIZE) -> None:
        self._buffer = bytearray()
        self._max_size = max_size
        # How much of the buffer was searched for the blank line, so a slow sender costs
        # linear rather than quadratic time.
        self._searched = 0
        # A message whose head is parsed and whose body is still arriving: how to build it,
        # its headers, where its body starts and where it ends in the buffer.
        self._pending: tuple[_MessageFactory, Headers, int, int] | None = None
        self._error: RemoteProtocolError | None = None

    def feed(self, data: bytes) -> list[Request | Response]:
        if self._error is not None:
            raise self._error
        self._buffer += data
        messages: list[Request | Response] = []
        try:
            while (message := self._next_message()) is not None:
                messages.append(message)
        except RemoteProtocolError as error:
            self._error = error
            raise
        return messages

    def _next_message(self) -> Request | Response | None:
        buffer = self._buffer
        if self._pending is None:
            skipped = _skip_line_ends(buffer)
            if skipped:
                del buffer[:skipped]
                self._searched = 0
            head_bounds = _find_head_end(buffer, 0, self._searched - 3)
            if head_bounds is None:
                self._searched = len(buffer)
                if len(buffer) > self._max_size:
                    raise RemoteProtocolError("Message Too Large", 513)
                return None
            head_end, body_start = head_bounds
            if head_end > self._max_size:
                raise RemoteProtocolError("Message Too Large", 513)
            factory, headers = _parse_head(buffer, 0, head_end)
            content_length = _content_length(headers)
            if content_length is None:
                raise RemoteProtocolError("Missing Content-Length on a stream transport")
            if body_start + content_length > self._max_size:
                raise RemoteProtocolError("Request Entity Too Large", 413)
            self._pending = (factory, headers, body_start, body_start + content_length)
        factory, headers, body_start, end = self._pending
        if len(buffer) < end:
            return None
        raw = bytes(buffer[:end])
        del buffer[:end]
        self._pending = None
        self._searched = 0
        return factory(headers, raw[body_start:], raw=raw)
