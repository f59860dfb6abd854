"""SIP requests and responses: headers kept raw, typed accessors parsed lazily, builders.

The edge reads a handful of headers per message and forwards the rest untouched, so a parsed
message keeps each header line as received and its original bytes: an unmodified message
serialises back byte for byte, and a modified one reuses the raw text of every header it did
not change. Typed accessors (`call_id`, `cseq`, `vias`...) parse on first use and are cached
until the headers change. Malformed peer input raises `RemoteProtocolError`; this module does
no I/O and reads no clock.

The head is read once: one pass over its lines finds each line's lookup key (the usual
spellings from a table, without case folding), its unfolded value and the lookup index that
every message needs at once for its Content-Length; what a value means is parsed only by the
accessor that reads it. Character-class checks (tokens, tags, branches, URI parts) try
`is_ascii_alnum` first: compiled, a set test hashes every character of a branch, the fast
path is a C loop and a flag.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Final, TypeVar

from edge.sip.errors import LocalProtocolError, RemoteProtocolError
from edge.sip.grammar import (
    TOKEN_CHARS,
    forgettable,
    is_ascii_alnum,
    is_token,
    known_values,
    read_quoted_string,
    remember,
    split_unquoted,
)
from edge.sip.uri import (
    NameAddr,
    Parameters,
    SipUri,
    parse_header_params,
    parse_host_port,
    parse_name_addr,
    parse_uri,
)

__all__ = [
    "BRANCH_MAGIC_COOKIE",
    "REASON_PHRASES",
    "SIP_VERSION",
    "Headers",
    "Message",
    "Request",
    "Response",
    "Via",
    "answered_to",
    "crossing_headers",
    "make_request",
    "make_response",
    "new_branch",
    "new_call_id",
    "new_tag",
    "parse_via",
    "random_hex",
    "to_tag_or_none",
    "unsupported_extensions",
    "validate_for_proxy",
]

SIP_VERSION: Final = "SIP/2.0"
BRANCH_MAGIC_COOKIE: Final = "z9hG4bK"

REASON_PHRASES: Final[dict[int, str]] = {
    100: "Trying",
    180: "Ringing",
    181: "Call Is Being Forwarded",
    182: "Queued",
    183: "Session Progress",
    199: "Early Dialog Terminated",
    200: "OK",
    202: "Accepted",
    204: "No Notification",
    300: "Multiple Choices",
    301: "Moved Permanently",
    302: "Moved Temporarily",
    305: "Use Proxy",
    380: "Alternative Service",
    400: "Bad Request",
    401: "Unauthorized",
    402: "Payment Required",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    407: "Proxy Authentication Required",
    408: "Request Timeout",
    410: "Gone",
    412: "Conditional Request Failed",
    413: "Request Entity Too Large",
    414: "Request-URI Too Long",
    415: "Unsupported Media Type",
    416: "Unsupported URI Scheme",
    417: "Unknown Resource-Priority",
    420: "Bad Extension",
    421: "Extension Required",
    422: "Session Interval Too Small",
    423: "Interval Too Brief",
    428: "Use Identity Header",
    429: "Provide Referrer Identity",
    433: "Anonymity Disallowed",
    436: "Bad Identity-Info",
    437: "Unsupported Certificate",
    438: "Invalid Identity Header",
    439: "First Hop Lacks Outbound Support",
    440: "Max-Breadth Exceeded",
    469: "Bad Info Package",
    470: "Consent Needed",
    480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist",
    482: "Loop Detected",
    483: "Too Many Hops",
    484: "Address Incomplete",
    485: "Ambiguous",
    486: "Busy Here",
    487: "Request Terminated",
    488: "Not Acceptable Here",
    489: "Bad Event",
    491: "Request Pending",
    493: "Undecipherable",
    494: "Security Agreement Required",
    500: "Server Internal Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Server Time-out",
    505: "Version Not Supported",
    513: "Message Too Large",
    555: "Push Notification Service Not Supported",
    580: "Precondition Failure",
    600: "Busy Everywhere",
    603: "Decline",
    604: "Does Not Exist Anywhere",
    606: "Not Acceptable",
    607: "Unwanted",
    608: "Rejected",
}

_COMPACT_FORMS: Final = {
    "b": "referred-by",
    "c": "content-type",
    "e": "content-encoding",
    "f": "from",
    "i": "call-id",
    "k": "supported",
    "l": "content-length",
    "m": "contact",
    "o": "event",
    "r": "refer-to",
    "s": "subject",
    "t": "to",
    "u": "allow-events",
    "v": "via",
    "x": "session-expires",
}

# RFC 3261 21: what a response of an unknown code means is its class.
_CLASS_REASON_PHRASES: Final = {
    1: "Provisional",
    2: "Successful",
    3: "Redirection",
    4: "Request Failure",
    5: "Server Failure",
    6: "Global Failure",
}

# Headers whose grammar is a comma-separated list, so several values may share one line.
_LIST_HEADERS: Final = frozenset(
    {
        "accept",
        "accept-encoding",
        "accept-language",
        "allow",
        "allow-events",
        "contact",
        "content-encoding",
        "path",
        "proxy-require",
        "record-route",
        "require",
        "route",
        "service-route",
        "supported",
        "unsupported",
        "via",
    }
)

# RFC 3261 8.1.1: a request without these cannot be answered or routed.
_MANDATORY_HEADERS: Final = ("Via", "From", "To", "Call-ID", "CSeq")
_SINGLE_VALUED_HEADERS: Final = (
    "From",
    "To",
    "Call-ID",
    "CSeq",
    "Max-Forwards",
    "Content-Type",
)
# The same with their lookup keys, as validate_for_proxy reads them from the index.
_MANDATORY_KEYS: Final = tuple((name, name.lower()) for name in _MANDATORY_HEADERS)
_SINGLE_VALUED_KEYS: Final = tuple((name, name.lower()) for name in _SINGLE_VALUED_HEADERS)
# Request-URI texts known to parse without URI headers (_check_request_uri); emptied when full.
_VALID_REQUEST_URI_TEXTS: Final[set[str]] = known_values()
# RFC 3261 8.2.6.2: what a response copies from its request; 100 Trying also echoes Timestamp.
_RESPONSE_COPIED_HEADERS: Final = frozenset({"via", "from", "to", "call-id", "cseq"})
_TRYING_COPIED_HEADERS: Final = _RESPONSE_COPIED_HEADERS | {"timestamp"}

# Spelling of the headers behind Message accessors, for error reasons.
_ACCESSOR_HEADER_NAMES: Final = {
    "call-id": "Call-ID",
    "contact": "Contact",
    "content-type": "Content-Type",
    "cseq": "CSeq",
    "from": "From",
    "max-forwards": "Max-Forwards",
    "record-route": "Record-Route",
    "route": "Route",
    "to": "To",
    "via": "Via",
}

# Limits on what a message may carry and what crosses from one leg to the other (the wire
# conformance notes in edge/sip/README.md say why these values).
MAX_HEADER_LINE_LENGTH: Final = 8192
MAX_CONTENT_TYPE_LENGTH: Final = 256
MAX_CROSSING_VALUE_LENGTH: Final = 1024
MAX_CROSSING_VALUES: Final = 32
# Parameter values: token, host (IPv6 references too) or quoted-string (RFC 3261 gen-value).
_PARAM_VALUE_CHARS: Final = TOKEN_CHARS | frozenset(":[]")

_MAX_CSEQ: Final = 2**32 - 1
_MAX_FORWARDS_LIMIT: Final = 255

T = TypeVar("T")
# One header line: (lookup key, name as written, unfolded value, line as received or None).
_Field = tuple[str, str, str, str | None]
_UNPARSED: Final = object()


def _fold_header_name(name: str) -> str:
    key = name.lower()
    return _COMPACT_FORMS.get(key, key)


def _header_key(name: str) -> str:
    # Every lookup and every header we build goes through here: the usual spellings come
    # from a table (and share one key string) instead of being lower-cased each time.
    key = _KEY_BY_SPELLING.get(name)
    return _fold_header_name(name) if key is None else key


# Headers seen in most messages. Their usual spellings map straight to a lookup key, which
# spares the parser the name check and case folding on almost every line.
_COMMON_HEADERS: Final = (
    "Accept",
    "Allow",
    "Allow-Events",
    "Authorization",
    "Call-ID",
    "Contact",
    "Content-Disposition",
    "Content-Length",
    "Content-Type",
    "CSeq",
    "Date",
    "Event",
    "Expires",
    "From",
    "Max-Forwards",
    "Min-SE",
    "P-Asserted-Identity",
    "P-Preferred-Identity",
    "Privacy",
    "Proxy-Authenticate",
    "Proxy-Authorization",
    "RAck",
    "Reason",
    "Record-Route",
    "Require",
    "Route",
    "RSeq",
    "Server",
    "Session-Expires",
    "Supported",
    "Timestamp",
    "To",
    "User-Agent",
    "Via",
    "WWW-Authenticate",
)
_KEY_BY_SPELLING: Final = {
    spelling: _fold_header_name(spelling)
    for name in (*_COMMON_HEADERS, *_COMPACT_FORMS)
    for spelling in (name, name.lower(), name.upper())
}


def _checked_field(name: str, value: str) -> _Field:
    # Every header line we build comes through here: a usual spelling needs no name check,
    # and `in` finds a line break with memchr where a set test would hash every character.
    key = _KEY_BY_SPELLING.get(name)
    if key is None:
        if not name or not TOKEN_CHARS.issuperset(name):
            raise LocalProtocolError(f"Invalid header {name!r}: {value!r}")
        key = _fold_header_name(name)
    if "\r" in value or "\n" in value:
        raise LocalProtocolError(f"Invalid header {name!r}: {value!r}")
    return (key, name, value, None)


class Headers:
    """Ordered header lines with case-insensitive, compact-form-aware lookup.

    Lines read from the wire keep their original text and are written back unchanged unless
    they are replaced or removed. Values of list headers (Via, Contact, Route...) are split on
    commas by `get_all`, respecting quotes and <...>.
    """

    __slots__ = ("_fields", "_index", "_parsed", "_version")

    def __init__(self, fields: Iterable[tuple[str, str]] = ()) -> None:
        self._fields: list[_Field] = [_checked_field(name, value) for name, value in fields]
        self._index: dict[str, list[str]] | None = None
        # Typed values parsed by Message accessors, dropped whenever a header changes.
        self._parsed: dict[str, object] = {}
        self._version = 0

    @classmethod
    def from_lines(cls, lines: Iterable[str]) -> Headers:
        """Read header lines as received (no CRLF), unfolding continuation lines.

        The lookup index is built in the same pass (every message is looked up at once, for
        its Content-Length), unless a line was folded: then on first use, from the unfolded
        values.
        """
        # The dict and the list are used directly, not through bound methods kept in locals:
        # compiled, `d.get` and `l.append` are C calls, a bound method a Python-level call.
        fields: list[_Field] = []
        index: dict[str, list[str]] | None = {}
        for line in lines:
            name, colon, value = line.partition(":")
            key = _KEY_BY_SPELLING.get(name)
            if key is None or not colon:
                # Not a usual spelling of a common header: a folded line, space before the
                # colon, an extension header or garbage.
                if line[:1] in (" ", "\t"):
                    if not fields:
                        raise RemoteProtocolError("Continuation line before the first header")
                    key, name, value, raw = fields[-1]
                    value = f"{value} {line.strip()}".lstrip()
                    fields[-1] = (key, name, value, f"{raw}\r\n{line}")
                    index = None
                    continue
                name = name.rstrip()
                if not colon or not is_token(name):
                    raise RemoteProtocolError("Malformed header line")
                key = _header_key(name)
            value = value.strip()
            fields.append((key, name, value, line))
            if index is not None:
                values = index.get(key)
                if values is None:
                    index[key] = [value]
                else:
                    values.append(value)
        headers = cls()
        headers._fields = fields
        headers._index = index
        return headers

    def _changed(self) -> None:
        self._index = None
        self._parsed.clear()
        self._version += 1

    def forget_parsed(self) -> None:
        """Drop the lookup index and the typed values read so far; the next read rebuilds them.

        For a message kept only to be resent or matched later (a transaction lingering for
        retransmissions, a finished call): its lines stay, but the lists, dicts and URIs of its
        parse would otherwise stay with them, and the garbage collector walks them all.
        """
        self._index = None
        self._parsed.clear()

    def _build_index(self) -> dict[str, list[str]]:
        index: dict[str, list[str]] = {}
        for key, _, value, _ in self._fields:
            values = index.get(key)
            if values is None:
                index[key] = [value]
            else:
                values.append(value)
        self._index = index
        return index

    def _values(self, key: str) -> list[str]:
        index = self._index
        if index is None:
            index = self._build_index()
        return index.get(key, [])

    def get(self, name: str) -> str | None:
        """The value of the first `name` line, or None."""
        values = self._values(_header_key(name))
        return values[0] if values else None

    def get_all(self, name: str) -> list[str]:
        """Every value of `name`; list headers are split into their comma-separated elements."""
        return list(self._elements(_header_key(name)))

    def _elements(self, key: str) -> list[str]:
        """get_all for a lookup key; the list may be internal: callers must not change it."""
        # _values inlined: this runs once per typed accessor on every message.
        index = self._index
        if index is None:
            index = self._build_index()
        values = index.get(key, [])
        if key not in _LIST_HEADERS:
            return values
        elements: list[str] = []
        for value in values:
            if "," in value:
                elements.extend(e.strip() for e in split_unquoted(value, ",") if e.strip())
            elif value:
                elements.append(value)
        return elements

    def set(self, name: str, value: str) -> None:
        """Replace every `name` line by one line, where the first of them was (or at the end)."""
        new_field = _checked_field(name, value)
        key = new_field[0]
        position = next(
            (i for i, existing in enumerate(self._fields) if existing[0] == key),
            None,
        )
        kept = [existing for existing in self._fields if existing[0] != key]
        kept.insert(len(kept) if position is None else position, new_field)
        self._fields = kept
        self._changed()

    def add(self, name: str, value: str, *, first: bool = False) -> None:
        """Append a `name` line, or with `first` insert it before the other `name` lines."""
        new_field = _checked_field(name, value)
        if first:
            key = new_field[0]
            fields = self._fields
            position = 0
            for index, existing in enumerate(fields):
                if existing[0] == key:
                    position = index
                    break
            fields.insert(position, new_field)
        else:
            self._fields.append(new_field)
        self._changed()

    def remove(self, name: str) -> None:
        """Remove every `name` line."""
        key = _header_key(name)
        self._fields = [existing for existing in self._fields if existing[0] != key]
        self._changed()

    def remove_first(self, name: str) -> str | None:
        """Remove and return the first value of `name` (one element of a list header)."""
        key = _header_key(name)
        for position, (field_key, field_name, value, _) in enumerate(self._fields):
            if field_key != key:
                continue
            elements = split_unquoted(value, ",") if key in _LIST_HEADERS else [value]
            rest = ",".join(elements[1:]).strip()
            if rest:
                self._fields[position] = (key, field_name, rest, None)
            else:
                del self._fields[position]
            self._changed()
            return elements[0].strip()
        return None

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and bool(self._values(_header_key(name)))

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter([(name, value) for _, name, value, _ in self._fields])

    def __len__(self) -> int:
        return len(self._fields)

    def __repr__(self) -> str:
        return f"Headers({list(self)!r})"

    def _wire_lines(self, content_length: int) -> list[str]:
        """Header lines to send, ending with a Content-Length that matches the body."""
        lines: list[str] = []
        length_name = "Content-Length"
        for key, name, value, raw in self._fields:
            if key == "content-length":
                length_name = name  # keep the peer's spelling ("l", "content-length")
            else:
                lines.append(f"{name}: {value}" if raw is None else raw)
        lines.append(f"{length_name}: {content_length}")
        return lines


@dataclass(slots=True, eq=False, init=False)
class Via:
    """One Via value: `SIP/2.0/<transport> <host>[:<port>];params` (RFC 3261 20.42)."""

    transport: str
    host: str
    port: int | None = None
    params: Parameters = field(default_factory=Parameters)

    def __init__(
        self,
        transport: str,
        host: str,
        port: int | None = None,
        params: Parameters | None = None,
    ) -> None:
        self.transport = transport
        self.host = host
        self.port = port
        self.params = Parameters() if params is None else params

    @property
    def branch(self) -> str | None:
        return self.params.get("branch")

    @property
    def sent_by(self) -> str:
        return self.host if self.port is None else f"{self.host}:{self.port}"

    def __str__(self) -> str:
        return f"{SIP_VERSION}/{self.transport} {self.sent_by}{self.params}"


def _split_sent_protocol(head: str) -> tuple[str, str]:
    """Split `SIP / 2.0 / UDP host:port` (SWS allowed around '/') into transport and sent-by."""
    protocol = head.split("/", 2)
    if len(protocol) != 3:
        raise RemoteProtocolError("Malformed Via")
    name, version, rest = protocol
    if name.strip().upper() != "SIP" or version.strip() != "2.0":
        raise RemoteProtocolError("Malformed Via protocol")
    transport_and_sent_by = rest.split(None, 1)
    if len(transport_and_sent_by) != 2:
        raise RemoteProtocolError("Malformed Via")
    return transport_and_sent_by[0], transport_and_sent_by[1]


def parse_via(text: str) -> Via:
    """Parse one Via value; whitespace around '/' and before parameters is allowed."""
    # The sent-protocol and sent-by cannot contain ';', so the first one starts the params.
    head, semicolon, params_text = text.partition(";")
    if head.startswith("SIP/2.0/"):
        transport, _, sent_by = head[8:].partition(" ")
    else:
        transport, sent_by = _split_sent_protocol(head)
    if not is_token(transport):
        raise RemoteProtocolError("Malformed Via transport")
    host, port = parse_host_port(sent_by.strip())
    params = parse_header_params(semicolon + params_text)
    return Via(transport.upper(), host, port, params)


# Parsers of required headers get an empty list when the header is missing; what they raise
# then is reported as "Missing <header> header" by Message._cached.


def _parse_call_id(values: list[str]) -> str:
    if not values or len(values[0].split()) != 1:
        raise RemoteProtocolError("Malformed Call-ID")
    return values[0]


def _parse_cseq(values: list[str]) -> tuple[int, str]:
    parts = values[0].split() if values else []
    if len(parts) != 2 or not is_token(parts[1]):
        raise RemoteProtocolError("Malformed CSeq")
    number, method = parts
    if not (number.isascii() and number.isdigit()) or int(number) > _MAX_CSEQ:
        raise RemoteProtocolError("CSeq number out of range")
    return int(number), method


def _parse_max_forwards(values: list[str]) -> int | None:
    if not values:
        return None
    text = values[0]
    if not (text.isascii() and text.isdigit()) or int(text) > _MAX_FORWARDS_LIMIT:
        raise RemoteProtocolError("Max-Forwards out of range")
    return int(text)


# Address values already parsed, by text: peers repeat them (a dialog's From and To on every
# message of both directions, a PBX's or gateway's Contact on every call), so the accessors
# hand out one NameAddr per text. Shared: the core reads what it gets from `from_`, `to`,
# `contact`, `routes` and `record_routes`, and builds new values rather than change these.
# Bounded: emptied when full, and by `forget_known`. Measured (SIPp's uac and uas through the
# edge, issue 15): 15 of the 19 address values a call brings found here.
_NAME_ADDRS: Final[dict[str, NameAddr]] = {}
_NAME_ADDRS_LIMIT: Final = 1024
forgettable(_NAME_ADDRS.clear)


def _name_addr(text: str) -> NameAddr:
    name_addr = _NAME_ADDRS.get(text)
    if name_addr is None:
        name_addr = parse_name_addr(text)  # raises for a malformed value: nothing is kept
        if len(_NAME_ADDRS) >= _NAME_ADDRS_LIMIT:
            _NAME_ADDRS.clear()
        _NAME_ADDRS[text] = name_addr
    return name_addr


def _parse_single_name_addr(values: list[str]) -> NameAddr:
    return _name_addr(values[0] if values else "")


def _parse_vias(values: list[str]) -> list[Via]:
    return [parse_via(value) for value in values]


def _parse_name_addr_list(values: list[str]) -> list[NameAddr]:
    return [_name_addr(value) for value in values]


def _parse_contacts(values: list[str]) -> list[NameAddr]:
    # "Contact: *" (REGISTER, remove all bindings) carries no address; see contact_is_wildcard.
    return [] if values == ["*"] else _parse_name_addr_list(values)


def _parse_content_type(values: list[str]) -> str | None:
    if not values:
        return None
    value = values[0]
    if len(value) > MAX_CONTENT_TYPE_LENGTH or not _well_formed_element(value, media=True):
        raise RemoteProtocolError("Malformed media type")
    return value.partition(";")[0].strip().lower()


def _well_formed_param(param: str, *, valued: bool) -> bool:
    name, equals, value = param.partition("=")
    name, value = name.strip(), value.strip()
    if is_ascii_alnum(name) and is_ascii_alnum(value):
        return True
    if not is_token(name) or (equals and not value) or (valued and not equals):
        return False
    if value[:1] == '"':
        try:
            _, end = read_quoted_string(value, 0)
        except RemoteProtocolError:
            return False
        return end == len(value)
    return _PARAM_VALUE_CHARS.issuperset(value)


def _well_formed_element(value: str, *, media: bool = False) -> bool:
    """`token *(;param)`, or `type/subtype *(;param)` for a media type (RFC 3261 25.1): the
    shape of every header value that crosses between legs."""
    try:
        pieces = split_unquoted(value, ";")
    except RemoteProtocolError:
        return False
    head = pieces[0].strip()
    params = pieces[1:]
    if media:
        kind, slash, subtype = head.partition("/")
        ok = bool(slash) and _media_part(kind.strip()) and _media_part(subtype.strip())
    else:
        ok = is_token(head)
    # A media type's parameters have values (m-parameter); others may not (generic-param).
    return ok and all(_well_formed_param(param, valued=media) for param in params)


def _media_part(text: str) -> bool:
    return text == "*" or is_token(text)


def crossing_headers(message: Message, names: Iterable[str]) -> list[tuple[str, str]]:
    """The values of `names` (list headers such as Allow, Supported, Accept, Privacy, Reason)
    that may be copied to the other leg of a call: each well-formed (`token *(;param)`, a
    media range for Accept) and at most MAX_CROSSING_VALUE_LENGTH long, at most
    MAX_CROSSING_VALUES in all. Anything else stays behind: a peer's oversized or malformed
    value never reaches the other side."""
    copied: list[tuple[str, str]] = []
    headers = message.headers
    for name in names:
        media = name.lower() == "accept"
        for line in headers._values(_header_key(name)):
            try:
                elements = split_unquoted(line, ",") if "," in line else [line]
            except RemoteProtocolError:
                continue  # an unterminated quote: nothing of this line crosses
            for element in elements:
                value = element.strip()
                if len(copied) >= MAX_CROSSING_VALUES:
                    return copied
                if len(value) <= MAX_CROSSING_VALUE_LENGTH and _well_formed_element(
                    value, media=media
                ):
                    copied.append((name, value))
    return copied


def _invalid_header(name: str, error: RemoteProtocolError) -> RemoteProtocolError:
    return RemoteProtocolError(f"Invalid {name} header: {error.reason}", error.status_hint)


class Message:
    """What requests and responses share: headers, body, serialisation, typed accessors.

    Not an `abc.ABC`: under ABCMeta, `isinstance(response, Request)`, asked of every message
    the core handles, runs `ABCMeta.__instancecheck__`, a Python-level call (0.6 % of the
    interpreted edge's time at 700 calls/s, py-spy). Only Request and Response are made.
    """

    __slots__ = ("_body", "_body_length", "_headers", "_raw", "_raw_version", "_version")

    def __init__(
        self,
        headers: Headers | None = None,
        body: bytes = b"",
        *,
        version: str = SIP_VERSION,
        raw: bytes | None = None,
    ) -> None:
        if headers is None:
            headers = Headers()
        # None once `forget_parsed` dropped them: read again from `_raw` when asked for.
        self._headers: Headers | None = headers
        # None once `forget_parsed` dropped it: the last `_body_length` bytes of `_raw`.
        self._body: bytes | None = body
        self._body_length = 0
        self._version = version
        # The bytes this message was parsed from, returned by to_bytes() while nothing changed.
        self._raw = raw
        self._raw_version = headers._version

    @property
    def headers(self) -> Headers:
        headers = self._headers
        if headers is None:
            headers = self._read_headers_again()
        return headers

    def _drop_raw(self) -> None:
        """The start line or body changed: the bytes no longer describe the message (headers
        dropped by `forget_parsed` are read back from them first)."""
        if self._headers is None:
            self._read_headers_again()
        if self._body is None:
            self._body = self.body  # sliced from the bytes while they are at hand
        self._raw = None

    def _read_headers_again(self) -> Headers:
        """The headers of a message whose parse `forget_parsed` dropped, from its bytes."""
        from edge.sip.parser import parse_message  # the parser is built on this module

        raw = self._raw
        assert raw is not None  # forget_parsed drops headers only with their bytes at hand
        headers = parse_message(raw, max_size=len(raw)).headers
        self._headers = headers
        self._raw_version = headers._version
        return headers

    @property
    def version(self) -> str:
        """The SIP version as written on the start line (`SIP/2.0`, any case)."""
        return self._version

    @property
    def body(self) -> bytes:
        body = self._body
        if body is None:
            raw = self._raw
            assert raw is not None  # forget_parsed drops the body only with the bytes at hand
            body = self._body = raw[len(raw) - self._body_length :]
        return body

    @body.setter
    def body(self, body: bytes) -> None:
        self._body = body
        self._drop_raw()

    def _start_line(self) -> str:
        raise NotImplementedError

    def to_bytes(self) -> bytes:
        """The message on the wire: the received bytes if unmodified, else rebuilt."""
        raw = self._raw
        headers = self._headers
        if raw is not None and (headers is None or self._raw_version == headers._version):
            return raw
        headers = self.headers
        body = self.body
        lines = headers._wire_lines(len(body))
        head = f"{self._start_line()}\r\n" + "\r\n".join(lines) + "\r\n\r\n"
        data = head.encode("utf-8", "surrogateescape") + body
        self._raw, self._raw_version = data, headers._version
        return data

    def __bytes__(self) -> bytes:
        return self.to_bytes()

    def forget_parsed(self) -> None:
        """Drop the parse, keep the bytes: for a message kept only to be resent or matched
        later (a transaction lingering for retransmissions, a finished call).

        With its bytes current, the message drops its headers whole (a Headers, its list of
        lines and their tuples are three objects the garbage collector would walk for the
        32 s a transaction lingers, seven messages a call); reading them later parses the
        bytes again. Its body, the tail of those bytes, goes too: read again, it is sliced
        from them. Otherwise it drops what `Headers.forget_parsed` does. Nothing a reader
        sees changes.
        """
        headers = self._headers
        if headers is None:
            return
        raw = self._raw
        if raw is not None and self._raw_version == headers._version:
            self._headers = None
            body = self._body
            if body and raw.endswith(body):
                # The body is the tail of the bytes (a parsed datagram's, or what to_bytes
                # joined): a second copy of an SDP, hundreds of bytes, need not be kept.
                self._body_length = len(body)
                self._body = None
        else:
            headers.forget_parsed()

    def _cached(self, key: str, parse: Callable[[list[str]], T]) -> T:
        """Parse the values of header `key` once; the cache lives until the headers change."""
        headers = self._headers
        if headers is None:
            headers = self._read_headers_again()
        value = headers._parsed.get(key, _UNPARSED)
        if value is _UNPARSED:
            index = headers._index
            if index is None or key in _LIST_HEADERS:
                values = headers._elements(key)
            else:
                values = index.get(key, [])  # _elements' fast path, inlined for the hot path
            try:
                value = parse(values)
            except RemoteProtocolError as error:
                name = _ACCESSOR_HEADER_NAMES[key]
                if not values:
                    raise RemoteProtocolError(f"Missing {name} header") from None
                raise _invalid_header(name, error) from None
            headers._parsed[key] = value
        return value  # type: ignore[return-value]  # typing.cast is a call on the hot path

    @property
    def call_id(self) -> str:
        return self._cached("call-id", _parse_call_id)

    @property
    def cseq(self) -> tuple[int, str]:
        """(sequence number, method)."""
        return self._cached("cseq", _parse_cseq)

    @property
    def from_(self) -> NameAddr:
        return self._cached("from", _parse_single_name_addr)

    @property
    def to(self) -> NameAddr:
        return self._cached("to", _parse_single_name_addr)

    @property
    def from_tag(self) -> str | None:
        return self.from_.tag

    @property
    def to_tag(self) -> str | None:
        return self.to.tag

    @property
    def vias(self) -> list[Via]:
        """Every Via value, topmost first. Change Vias through `headers`, not this list."""
        return self._cached("via", _parse_vias)

    @property
    def top_via(self) -> Via:
        vias = self.vias
        if not vias:
            raise RemoteProtocolError("Missing Via header")
        return vias[0]

    def pop_via(self) -> Via:
        """Remove the topmost Via value (a response passing back through us) and return it."""
        top_via = self.top_via
        self.headers.remove_first("Via")
        return top_via

    @property
    def max_forwards(self) -> int | None:
        return self._cached("max-forwards", _parse_max_forwards)

    @property
    def contact(self) -> list[NameAddr]:
        """Contact addresses; empty for `Contact: *` (see `contact_is_wildcard`)."""
        return self._cached("contact", _parse_contacts)

    @property
    def contact_is_wildcard(self) -> bool:
        return self.headers.get_all("Contact") == ["*"]

    @property
    def routes(self) -> list[NameAddr]:
        return self._cached("route", _parse_name_addr_list)

    @property
    def record_routes(self) -> list[NameAddr]:
        return self._cached("record-route", _parse_name_addr_list)

    @property
    def content_type(self) -> str | None:
        """The media type, lower-cased, without parameters (`application/sdp`)."""
        return self._cached("content-type", _parse_content_type)


class Request(Message):
    """A SIP request; `uri` is the Request-URI text, `parsed_uri` its parsed form."""

    __slots__ = ("_method", "_parsed_uri", "_uri")

    def __init__(
        self,
        method: str,
        uri: str,
        headers: Headers | None = None,
        body: bytes = b"",
        *,
        version: str = SIP_VERSION,
        raw: bytes | None = None,
    ) -> None:
        super().__init__(headers, body, version=version, raw=raw)
        self._method = method
        self._uri = uri
        self._parsed_uri: SipUri | None = None

    @property
    def method(self) -> str:
        return self._method

    @method.setter
    def method(self, method: str) -> None:
        self._method = method
        self._drop_raw()

    @property
    def uri(self) -> str:
        return self._uri

    @uri.setter
    def uri(self, uri: str) -> None:
        self._uri = uri
        self._parsed_uri = None
        self._drop_raw()

    @property
    def parsed_uri(self) -> SipUri:
        """The Request-URI parsed; an unknown scheme raises with status hint 416."""
        if self._parsed_uri is None:
            try:
                self._parsed_uri = parse_uri(self._uri)
            except RemoteProtocolError as error:
                reason = f"Invalid Request-URI: {error.reason}"
                raise RemoteProtocolError(reason, error.status_hint) from None
        return self._parsed_uri

    def forget_parsed(self) -> None:
        super().forget_parsed()
        self._parsed_uri = None

    def _start_line(self) -> str:
        return f"{self._method} {self._uri} {self._version}"

    def __repr__(self) -> str:
        return f"<Request {self._method} {self._uri}>"


class Response(Message):
    """A SIP response."""

    __slots__ = ("_reason", "_status")

    def __init__(
        self,
        status: int,
        reason: str,
        headers: Headers | None = None,
        body: bytes = b"",
        *,
        version: str = SIP_VERSION,
        raw: bytes | None = None,
    ) -> None:
        super().__init__(headers, body, version=version, raw=raw)
        self._status = status
        self._reason = reason

    @property
    def status(self) -> int:
        return self._status

    @status.setter
    def status(self, status: int) -> None:
        self._status = status
        self._drop_raw()

    @property
    def reason(self) -> str:
        return self._reason

    @reason.setter
    def reason(self, reason: str) -> None:
        self._reason = reason
        self._drop_raw()

    def _start_line(self) -> str:
        return f"{self._version} {self._status} {self._reason}"

    def __repr__(self) -> str:
        return f"<Response {self._status} {self._reason}>"


def validate_for_proxy(message: Request | Response) -> None:
    """Check every header a proxy or B2BUA reads; raise RemoteProtocolError on the first fault.

    Covers the mandatory headers and their multiplicity, Via, From, To, Call-ID, CSeq (and its
    method against the request's), Max-Forwards, Content-Type, Contact, Route, Record-Route and the
    Request-URI (no embedded headers; unknown schemes raise 416). Content-Length needs no
    check here: the parser frames the message on it and rejects bad or repeated values.
    """
    # This runs on every message received: the checks read the lookup index and the typed
    # accessors directly instead of going through names, getattr and get_all (same checks,
    # same order, same errors; 4-5 us less per message).
    headers = message.headers
    index = headers._index
    if index is None:
        index = headers._build_index()
    for name, key in _MANDATORY_KEYS:
        if key not in index:
            raise RemoteProtocolError(f"Missing {name} header")
    for name, key in _SINGLE_VALUED_KEYS:
        values = index.get(key)
        if values is not None and len(values) > 1:
            raise RemoteProtocolError(f"Multiple {name} headers")
    # Each accessor parses and checks the header it serves (and caches the result). Those of
    # optional headers are asked only when the header is there: absent, each answers None or
    # [] and cannot fail, and most messages lack most of them (a response Max-Forwards, an
    # in-dialog request Contact, nearly all Route and Record-Route). Asking anyway cost the
    # interpreted core 3.5 % of its instructions (`bench/edge_core.py --interpreted`: 3.38 M
    # a call before, 3.26 M after).
    _ = message.vias
    _ = message.call_id
    cseq = message.cseq
    if "max-forwards" in index:
        _ = message.max_forwards
    if "content-type" in index:
        _ = message.content_type  # forwarded as received to the other leg: well-formed, short
    _check_address_uri("From", message.from_)
    _check_address_uri("To", message.to)
    if "contact" in index:
        for address in message.contact:
            _check_address_uri("Contact", address)
    if "route" in index:
        for address in message.routes:
            _check_address_uri("Route", address)
    if "record-route" in index:
        for address in message.record_routes:
            _check_address_uri("Record-Route", address)
    if isinstance(message, Request):
        _check_request_uri(message)
        if cseq[1] != message.method:
            raise RemoteProtocolError("CSeq method does not match request method")


def _check_address_uri(name: str, address: NameAddr) -> None:
    try:
        address.check_uri()
    except RemoteProtocolError as error:
        raise _invalid_header(name, error) from None


def _check_request_uri(request: Request) -> None:
    """Raise as `request.parsed_uri` would, or for a Request-URI with headers.

    In-dialog requests (ACK, BYE) carry the same few Request-URIs over and over and nothing
    else reads them parsed: texts already found valid and header-free are remembered (a
    bounded set; parsing is a pure function of the text), so they are not parsed again just
    to be checked. `parsed_uri` still parses on first use.
    """
    text = request._uri
    if request._parsed_uri is None and text in _VALID_REQUEST_URI_TEXTS:
        return
    if request.parsed_uri.headers:
        raise RemoteProtocolError("Headers in Request-URI")
    remember(_VALID_REQUEST_URI_TEXTS, text)


def to_tag_or_none(message: Request | Response) -> str | None:
    """The To tag; None when there is none or when To is missing or unreadable (a request
    screened as new for it then gets its 400 from `validate_for_proxy`)."""
    try:
        return message.to.tag
    except RemoteProtocolError:
        return None


def unsupported_extensions(request: Request, supported: frozenset[str]) -> list[str]:
    """The option tags of Proxy-Require and Require that are not in `supported` (RFC 3261
    8.2.2.3: answer 420 listing them in Unsupported; never for ACK or CANCEL)."""
    wanted: list[str] = []
    for name in ("Proxy-Require", "Require"):
        wanted += request.headers.get_all(name)
    return [option for option in wanted if option not in supported]


def _has_tag(request: Request) -> bool:
    try:
        return request.to.tag is not None
    except RemoteProtocolError:
        # Answering a request whose To we cannot read (usually with 400): echo it unchanged.
        return True


def answered_to(request: Request, to_tag: str) -> str:
    """The To of a response to `request` from the party tagged `to_tag` (RFC 3261 8.2.6.2):
    the request's To as received, with ``;tag=to_tag`` added unless it already has a tag."""
    to = request.headers.get("To") or ""
    return to if _has_tag(request) else f"{to};tag={to_tag}"


def make_response(
    request: Request,
    status: int,
    reason: str | None = None,
    *,
    to_tag: str | None = None,
    headers: Iterable[tuple[str, str]] | None = None,
    body: bytes = b"",
) -> Response:
    """Build a response to `request` as RFC 3261 8.2.6 says.

    Copies every Via, From, To, Call-ID and CSeq line as received (and Timestamp for 100);
    with `to_tag`, To as `answered_to` says. `headers` are appended.
    """
    if not 100 <= status <= 699:
        raise LocalProtocolError(f"Status {status} is not a SIP status code")
    if reason is None:
        reason = REASON_PHRASES.get(status) or _CLASS_REASON_PHRASES[status // 100]
    copied = _TRYING_COPIED_HEADERS if status == 100 else _RESPONSE_COPIED_HEADERS
    to = None if to_tag is None else answered_to(request, to_tag)
    fields: list[_Field] = []
    for copied_field in request.headers._fields:
        key = copied_field[0]
        if key not in copied:
            continue
        if key == "to" and to is not None and to is not copied_field[2]:  # the tag added
            fields.append(("to", copied_field[1], to, None))
        else:
            fields.append(copied_field)
    response_headers = Headers(headers or ())
    response_headers._fields[:0] = fields
    return Response(status, reason, response_headers, body)


def make_request(
    method: str,
    uri: str | SipUri,
    *,
    from_: NameAddr | str,
    to: NameAddr | str,
    call_id: str,
    cseq: int,
    via: Via | str,
    max_forwards: int = 70,
    contact: NameAddr | str | None = None,
    headers: Iterable[tuple[str, str]] | None = None,
    body: bytes = b"",
    content_type: str | None = None,
) -> Request:
    """Build a request with the headers RFC 3261 8.1.1 requires, in the conventional order."""
    if not is_token(method):
        raise LocalProtocolError(f"Method {method!r} is not a token")
    if not 0 <= cseq <= _MAX_CSEQ or not 0 <= max_forwards <= _MAX_FORWARDS_LIMIT:
        raise LocalProtocolError("CSeq or Max-Forwards out of range")
    if body and content_type is None:
        raise LocalProtocolError("A request with a body needs a content_type")
    fields = [
        ("Via", str(via)),
        ("Max-Forwards", str(max_forwards)),
        ("From", str(from_)),
        ("To", str(to)),
        ("Call-ID", call_id),
        ("CSeq", f"{cseq} {method}"),
    ]
    if contact is not None:
        fields.append(("Contact", str(contact)))
    fields.extend(headers or ())
    if content_type is not None:
        fields.append(("Content-Type", content_type))
    return Request(method, str(uri), Headers(fields), body)


_POOL_SIZE: Final = 4096
_pool = b""
_pool_at = 0


def _forget_pool() -> None:
    global _pool, _pool_at
    _pool, _pool_at = b"", 0


# A forked child must not hand out the bytes its parent already has.
os.register_at_fork(after_in_child=_forget_pool)


def random_hex(nbytes: int) -> str:
    """`nbytes` random bytes as hex, from the OS's CSPRNG like `secrets.token_hex`.

    The bytes are read from the kernel 4 KiB at a time rather than one system call per id: a
    call through the edge takes about ten (branches, tags, Call-IDs, record ids), and one
    getrandom each was a measurable share of its CPU. Every byte is handed out once.
    """
    global _pool, _pool_at
    end = _pool_at + nbytes
    if end > len(_pool):
        _pool = os.urandom(max(_POOL_SIZE, nbytes))
        _pool_at, end = 0, nbytes
    start, _pool_at = _pool_at, end
    return _pool[start:end].hex()


def new_branch() -> str:
    """A fresh RFC 3261 branch: the magic cookie and 80 random bits."""
    return BRANCH_MAGIC_COOKIE + random_hex(10)


def new_tag() -> str:
    """A fresh From/To tag (RFC 3261 19.3 asks for at least 32 random bits; we use 64)."""
    return random_hex(8)


def new_call_id(host: str) -> str:
    """A fresh globally unique Call-ID of the form `random@host`."""
    return f"{random_hex(12)}@{host}"
