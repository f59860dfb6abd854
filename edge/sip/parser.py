"""Framing and start lines: bytes from a datagram or a stream become Request/Response objects.

Only what framing needs is checked here (start line, version, header line syntax,
Content-Length); header values stay raw until an accessor or `validate_for_proxy` reads them.
No sockets, no buffers beyond the one a StreamParser owns, no clock. The only exception that
leaves this module on any input is `RemoteProtocolError`.
"""

from __future__ import annotations

from typing import Final

from edge.sip.errors import RemoteProtocolError
from edge.sip.grammar import is_token
from edge.sip.message import MAX_HEADER_LINE_LENGTH, SIP_VERSION, Headers, Request, Response

__all__ = ["DEFAULT_MAX_SIZE", "FramingError", "StreamItem", "StreamParser", "parse_message"]

DEFAULT_MAX_SIZE: Final = 65535
_COMMON_METHODS: Final = frozenset(
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
_LINE_END_BYTES: Final = b"\r\n"

# A start line read: (status code or 0 for a request, method or reason, Request-URI, version).
_StartLine = tuple[int, str, str, str]


class FramingError(RemoteProtocolError):
    """A message on a stream that could not be framed or parsed.

    `head` is its header block as received (at most `max_size` bytes), from which the edge can
    still answer a request (edge/salvage.py). `fatal` says the stream is lost with it: its
    length was unknown (no usable Content-Length, or too large), so nothing after it can be
    framed. Otherwise the message was skipped whole and the stream goes on.
    """

    def __init__(self, reason: str, status_hint: int, *, head: bytes, fatal: bool) -> None:
        super().__init__(reason, status_hint)
        self.head = head
        self.fatal = fatal


StreamItem = Request | Response | FramingError


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


def _parse_start_line(line: str) -> _StartLine:
    """Check the request or status line; return its parts for `_build` (a tuple, not a
    `functools.partial`: compiled, calling a partial went through the interpreter's call
    machinery to the class, about 2,400 instructions a message)."""
    if line[:4].upper() == "SIP/":
        version, _, rest = line.partition(" ")
        _check_version(version)
        code, _, reason = rest.partition(" ")
        if len(code) != 3 or not (code.isascii() and code.isdigit()) or code[0] not in "123456":
            raise RemoteProtocolError("Malformed status code")
        return (int(code), reason, "", version)
    # Exactly one SP between the three parts (RFC 4475 lwsruri, lwsstart, trws).
    parts = line.split(" ")
    if len(parts) != 3 or not all(parts):
        raise RemoteProtocolError("Malformed request line")
    method, uri, version = parts
    if method not in _COMMON_METHODS and not is_token(method):
        raise RemoteProtocolError("Malformed method")
    _check_version(version)
    return (0, method, uri, version)


def _build(start_line: _StartLine, headers: Headers, body: bytes, raw: bytes) -> Request | Response:
    status, method_or_reason, uri, version = start_line
    if status:
        return Response(status, method_or_reason, headers, body, version=version, raw=raw)
    return Request(method_or_reason, uri, headers, body, version=version, raw=raw)


def _parse_head(data: bytes | bytearray, start: int, end: int) -> tuple[_StartLine, Headers]:
    # surrogateescape keeps bytes that are not UTF-8, so untouched lines go back out unchanged.
    head = data[start:end].decode("utf-8", "surrogateescape")
    lines = head.split("\r\n")
    if head.count("\n") != len(lines) - 1:
        lines = head.replace("\r\n", "\n").rstrip("\r").split("\n")
    if len(head) > MAX_HEADER_LINE_LENGTH and len(max(lines, key=len)) > MAX_HEADER_LINE_LENGTH:
        raise RemoteProtocolError("Header Line Too Long")
    return _parse_start_line(lines[0]), Headers.from_lines(lines[1:])


def _content_length(headers: Headers) -> int | None:
    values = headers._values("content-length")  # not a list header: get_all's copy, unsplit
    if not values:
        return None
    if len(values) > 1:
        # Two lengths make the framing ambiguous (RFC 4475 mcl01); pick none.
        raise RemoteProtocolError("Multiple Content-Length headers")
    text = values[0]
    if not (text.isascii() and text.isdigit()):
        raise RemoteProtocolError("Malformed Content-Length")
    return int(text)


def _raw_content_length(head: bytes | bytearray) -> int | None:
    """The one Content-Length of a header block the parser refused, read from its raw lines
    (to skip the message on a stream); None if it is absent, repeated or not a number."""
    found: list[bytes] = []
    for line in bytes(head).split(b"\n")[1:]:
        name, colon, value = line.partition(b":")
        if colon and name.strip().lower() in (b"content-length", b"l"):
            found.append(value.strip())
    if len(found) != 1 or not found[0].isdigit():
        return None
    return int(found[0])


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
    start_line, headers = _parse_head(data, start, head_end)
    content_length = _content_length(headers)
    end = len(data) if content_length is None else body_start + content_length
    if end > len(data):
        raise RemoteProtocolError("Content-Length mismatch")
    raw = data if start == 0 and end == len(data) else data[start:end]
    return _build(start_line, headers, data[body_start:end], raw)


class StreamParser:
    """Cuts a TCP/TLS byte stream into messages; Content-Length is mandatory on streams.

    `feed` accepts any split of the stream (one byte at a time, several messages at once) and
    returns, in stream order, the messages it completed and a `FramingError` for each message
    it could not read. A message whose header block is malformed but whose Content-Length can
    be read is skipped whole and framing goes on (a valid request before or after it is still
    delivered); an error that leaves the stream's framing unknown (no usable Content-Length, a
    message too large) is `fatal`: it is the last item, and every later `feed` returns nothing.
    The connection should then be closed, once the answer to the error (if any) is written.
    """

    def __init__(self, *, max_size: int = DEFAULT_MAX_SIZE) -> None:
        self._buffer = bytearray()
        self._max_size = max_size
        # How much of the buffer was searched for the blank line, so a slow sender costs
        # linear rather than quadratic time.
        self._searched = 0
        # A message whose head is parsed and whose body is still arriving: its start line,
        # its headers, where its body starts and where it ends in the buffer.
        self._pending: tuple[_StartLine, Headers, int, int] | None = None
        # Bytes of a refused message still to be discarded as they arrive.
        self._skip = 0
        self._failed = False

    def feed(self, data: bytes) -> list[StreamItem]:
        if self._failed:
            return []
        self._buffer += data
        items: list[StreamItem] = []
        while True:
            try:
                message = self._next_message()
            except FramingError as error:
                items.append(error)
                if error.fatal:
                    self._failed = True
                    self._buffer.clear()
                    break
                continue
            if message is None:
                break
            items.append(message)
        return items

    def _fatal(self, reason: str, status_hint: int, head_end: int) -> FramingError:
        return FramingError(
            reason,
            status_hint,
            head=bytes(self._buffer[: min(head_end, self._max_size)]),
            fatal=True,
        )

    def _next_message(self) -> Request | Response | None:
        buffer = self._buffer
        if self._skip:
            skipped = min(self._skip, len(buffer))
            del buffer[:skipped]
            self._skip -= skipped
            if self._skip:
                return None
        if self._pending is None:
            skipped = _skip_line_ends(buffer)
            if skipped:
                del buffer[:skipped]
                self._searched = 0
            head_bounds = _find_head_end(buffer, 0, self._searched - 3)
            if head_bounds is None:
                self._searched = len(buffer)
                if len(buffer) > self._max_size:
                    raise self._fatal("Message Too Large", 513, len(buffer))
                return None
            head_end, body_start = head_bounds
            if head_end > self._max_size:
                raise self._fatal("Message Too Large", 513, head_end)
            try:
                start_line, headers = _parse_head(buffer, 0, head_end)
            except RemoteProtocolError as error:
                length = _raw_content_length(buffer[:head_end])
                if length is None or body_start + length > self._max_size:
                    raise self._fatal(error.reason, error.status_hint, head_end) from None
                head = bytes(buffer[:head_end])
                del buffer[:body_start]
                self._searched = 0
                self._skip = length
                raise FramingError(
                    error.reason, error.status_hint, head=head, fatal=False
                ) from None
            try:
                content_length = _content_length(headers)
            except RemoteProtocolError as error:
                raise self._fatal(error.reason, error.status_hint, head_end) from None
            if content_length is None:
                raise self._fatal("Missing Content-Length on a stream transport", 400, head_end)
            if body_start + content_length > self._max_size:
                raise self._fatal("Request Entity Too Large", 413, head_end)
            self._pending = (start_line, headers, body_start, body_start + content_length)
        start_line, headers, body_start, end = self._pending
        if len(buffer) < end:
            return None
        raw = bytes(buffer[:end])
        del buffer[:end]
        self._pending = None
        self._searched = 0
        return _build(start_line, headers, raw[body_start:], raw)
