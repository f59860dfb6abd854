"""SIP, SIPS and tel URIs (RFC 3261 19.1, RFC 3966, RFC 5118) and name-addr header values.

Parsing keeps every part as written (user escapes, parameter spelling) so that `str()` gives
back the text we read and a proxy forwards what it received; comparisons use the unescaped or
case-folded forms. Malformed input raises `RemoteProtocolError`; nothing here does I/O.
"""

from __future__ import annotations

import ipaddress
import string
from collections.abc import Iterable, Iterator, MutableMapping
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import unquote

from edge.sip.errors import RemoteProtocolError
from edge.sip.grammar import (
    ALPHANUMERIC,
    HEX_DIGITS,
    TOKEN_CHARS,
    UNRESERVED,
    is_ascii_alnum,
    is_token,
    known_values,
    quote_string,
    read_quoted_string,
    remember,
    split_unquoted,
)

__all__ = [
    "AbsoluteUri",
    "NameAddr",
    "Parameters",
    "SipUri",
    "bracket_host",
    "parse_header_params",
    "parse_host_port",
    "parse_name_addr",
    "parse_uri",
]

_USER_CHARS: Final = UNRESERVED | frozenset("%&=+$,;?/")
_PASSWORD_CHARS: Final = UNRESERVED | frozenset("%&=+$,")
_URI_PARAM_CHARS: Final = UNRESERVED | frozenset("%[]/:&+$")
_URI_HEADER_CHARS: Final = UNRESERVED | frozenset("%[]/?:+$")
_HOSTNAME_CHARS: Final = ALPHANUMERIC | frozenset("-.")
_TEL_NUMBER_CHARS: Final = frozenset(string.hexdigits + "*#+-.()")
_SCHEME_CHARS: Final = ALPHANUMERIC | frozenset("+-.")
# A header parameter value is a token, a host (IPv6 references bring ':' and brackets) or a
# quoted string, which is checked separately.
_GENERIC_VALUE_CHARS: Final = TOKEN_CHARS | frozenset(":[]")
_OPAQUE_URI_FORBIDDEN: Final = frozenset(' \t"<>')
_MAX_PORT: Final = 65535
# URI texts of name-addr values known to parse (NameAddr.check_uri); emptied when full.
_VALID_URI_TEXTS: Final[set[str]] = known_values()


class Parameters(MutableMapping[str, str | None]):
    """`;name=value` parameters: case-insensitive names, spelling kept, None for a flag."""

    __slots__ = ("_items",)

    def __init__(self, items: Iterable[tuple[str, str | None]] = ()) -> None:
        self._items: dict[str, tuple[str, str | None]] = {}
        if items:
            self.update(items)

    def __getitem__(self, name: str) -> str | None:
        return self._items[name.lower()][1]

    def __setitem__(self, name: str, value: str | None) -> None:
        key = name.lower()
        existing = self._items.get(key)
        self._items[key] = (existing[0] if existing else name, value)

    def __delitem__(self, name: str) -> None:
        del self._items[name.lower()]

    def get(self, name: str, default: str | None = None) -> str | None:  # type: ignore[override]
        # Mapping.get goes through __getitem__ and KeyError; tags are read on every message.
        item = self._items.get(name.lower())
        return default if item is None else item[1]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._items

    def __iter__(self) -> Iterator[str]:
        return iter([spelling for spelling, _ in self._items.values()])

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Parameters({list(self._items.values())!r})"

    def __str__(self) -> str:
        return "".join(
            f";{name}" if value is None else f";{name}={value}"
            for name, value in self._items.values()
        )


@dataclass(slots=True, eq=False, init=False)
class SipUri:
    """A sip:, sips: or tel: URI. `user` stays escaped as received; a tel number is `user`."""

    scheme: str = "sip"
    user: str | None = None
    password: str | None = None
    host: str = ""
    port: int | None = None
    params: Parameters = field(default_factory=Parameters)
    headers: list[tuple[str, str]] = field(default_factory=list)

    def __init__(
        self,
        scheme: str = "sip",
        user: str | None = None,
        password: str | None = None,
        host: str = "",
        port: int | None = None,
        params: Parameters | None = None,
        headers: list[tuple[str, str]] | None = None,
    ) -> None:
        self.scheme = scheme
        self.user = user
        self.password = password
        self.host = host
        self.port = port
        self.params = Parameters() if params is None else params
        self.headers = [] if headers is None else headers

    @property
    def unescaped_user(self) -> str | None:
        """The user part with %HH escapes decoded, the form RFC 3261 19.1.4 compares."""
        return None if self.user is None else unquote(self.user)

    @property
    def host_port(self) -> str:
        return self.host if self.port is None else f"{self.host}:{self.port}"

    def __str__(self) -> str:
        if self.scheme == "tel":
            return f"tel:{self.user}{self.params}"
        userinfo = ""
        if self.user is not None:
            password = "" if self.password is None else f":{self.password}"
            userinfo = f"{self.user}{password}@"
        headers = ""
        if self.headers:
            headers = "?" + "&".join(f"{name}={value}" for name, value in self.headers)
        return f"{self.scheme}:{userinfo}{self.host_port}{self.params}{headers}"


@dataclass(slots=True, eq=False, init=False)
class AbsoluteUri:
    """A URI of a scheme we do not interpret (http:, isbn:, urn:...), kept as text."""

    scheme: str
    opaque: str

    def __init__(self, scheme: str, opaque: str) -> None:
        self.scheme = scheme
        self.opaque = opaque

    def __str__(self) -> str:
        return f"{self.scheme}:{self.opaque}"


# What a NameAddr holds until its URI text is parsed (mypyc-compiled classes have no __new__).
_UNPARSED: Final = AbsoluteUri("unparsed", "")


class NameAddr:
    """An address header value: optional display name, URI, header parameters (tag, q...).

    A parsed value keeps its URI as text until `uri` is first read: matching dialogs needs
    only the tags, and the URIs of From and To are rarely looked at. A malformed URI therefore
    raises RemoteProtocolError from `uri` (validate_for_proxy reads every one it needs).
    """

    __slots__ = ("_uri", "_uri_text", "display_name", "params")

    def __init__(
        self,
        uri: SipUri | AbsoluteUri,
        display_name: str | None = None,
        params: Parameters | None = None,
    ) -> None:
        self._uri: SipUri | AbsoluteUri | None = uri
        self._uri_text = ""
        self.display_name = display_name
        self.params = Parameters() if params is None else params

    @classmethod
    def _with_unparsed_uri(
        cls, uri_text: str, display_name: str | None, params: Parameters
    ) -> NameAddr:
        name_addr = cls(_UNPARSED, display_name, params)
        name_addr._uri = None
        name_addr._uri_text = uri_text
        return name_addr

    @property
    def uri(self) -> SipUri | AbsoluteUri:
        uri = self._uri
        if uri is None:
            uri = self._uri = _parse_any_uri(self._uri_text)
        return uri

    @uri.setter
    def uri(self, uri: SipUri | AbsoluteUri) -> None:
        self._uri = uri

    def check_uri(self) -> None:
        """Raise RemoteProtocolError if the URI does not parse, as reading `uri` would.

        A validating proxy checks From, To and Contact on every message, and peers send the
        same few URIs over and over: texts already found valid are remembered (a bounded set;
        parsing is a pure function of the text), so they are not parsed again just to be
        checked. `uri` still parses on first use.
        """
        text = self._uri_text
        if self._uri is not None or text in _VALID_URI_TEXTS:
            return
        self._uri = _parse_any_uri(text)
        remember(_VALID_URI_TEXTS, text)

    @property
    def tag(self) -> str | None:
        return self.params.get("tag")

    @property
    def sip_uri(self) -> SipUri:
        """The URI when it is sip:, sips: or tel:; other schemes are answered with 416."""
        uri = self.uri
        if isinstance(uri, AbsoluteUri):
            raise RemoteProtocolError("Unsupported URI Scheme", 416)
        return uri

    def _uri_str(self) -> str:
        return self._uri_text if self._uri is None else str(self._uri)

    def __str__(self) -> str:
        display = "" if self.display_name is None else f"{quote_string(self.display_name)} "
        return f"{display}<{self._uri_str()}>{self.params}"

    def __repr__(self) -> str:
        return f"NameAddr({self._uri_str()!r}, {self.display_name!r}, {self.params!r})"


def _check_escapes(text: str) -> None:
    position = text.find("%")
    while position >= 0:
        escaped = text[position + 1 : position + 3]
        if len(escaped) != 2 or not HEX_DIGITS.issuperset(escaped):
            raise RemoteProtocolError("Malformed escape in URI")
        position = text.find("%", position + 3)


def _check_uri_part(text: str, allowed: frozenset[str], what: str) -> None:
    # Every class here includes the ASCII letters and digits (is_ascii_alnum says why first).
    if is_ascii_alnum(text):
        return
    if not text or not allowed.issuperset(text):
        raise RemoteProtocolError(f"Malformed URI {what}")
    if "%" in text:
        _check_escapes(text)


def bracket_host(host: str) -> str:
    """`host` as SIP writes it in a URI or a Via: an IPv6 address in brackets (RFC 3261
    19.1.1, RFC 5118); a hostname, an IPv4 address or a bracketed reference unchanged."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


# Hosts already found well-formed (`remember`): a busy edge reads the same few peers' addresses
# in every message.
_HOSTS_SEEN: Final[set[str]] = known_values()


def parse_host_port(text: str) -> tuple[str, int | None]:
    """Split `host[:port]` where host is a hostname, IPv4 address or [IPv6] reference."""
    if text.startswith("["):
        closing = text.find("]")
        if closing < 0:
            raise RemoteProtocolError("Unterminated IPv6 reference")
        host, port_text = text[: closing + 1], text[closing + 1 :]
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise RemoteProtocolError("Malformed IPv6 reference") from None
        if port_text and not port_text.startswith(":"):
            raise RemoteProtocolError("Malformed host")
        port_text = port_text[1:]
    else:
        host, colon, port_text = text.partition(":")
        if colon and not port_text:
            raise RemoteProtocolError("Malformed host")
        if host not in _HOSTS_SEEN:  # the same few peers write most messages
            if not host or not _HOSTNAME_CHARS.issuperset(host):
                raise RemoteProtocolError("Malformed host")
            remember(_HOSTS_SEEN, host)
    if not port_text:
        return host, None
    if not (port_text.isascii() and port_text.isdigit()) or int(port_text) > _MAX_PORT:
        raise RemoteProtocolError("Malformed port")
    return host, int(port_text)


# Parameter names seen in almost every message, as usually spelled -> lookup key: valid tokens
# (and URI parameter names) by construction, so they skip the character checks.
_USUAL_PARAM_KEYS: Final[dict[str, str]] = {
    spelling: name
    for name in (
        "branch", "tag", "received", "rport", "transport", "lr", "user", "maddr", "ttl",
        "method", "expires", "q", "alias", "ob", "gr", "keep", "sigcomp-id",
    )
    for spelling in (name, name.upper())
}  # fmt: skip


def _parse_uri_params(pieces: list[str]) -> Parameters:
    params = Parameters()
    items = params._items
    for piece in pieces:
        name, equals, value = piece.partition("=")
        key = _USUAL_PARAM_KEYS.get(name)
        if key is None:
            _check_uri_part(name, _URI_PARAM_CHARS, "parameter")
            key = name.lower()
        if equals:
            _check_uri_part(value, _URI_PARAM_CHARS, "parameter")
            items[key] = (name, value)
        else:
            items[key] = (name, None)
    return params


def _parse_uri_headers(text: str) -> list[tuple[str, str]]:
    headers = []
    for piece in text.split("&"):
        name, equals, value = piece.partition("=")
        _check_uri_part(name, _URI_HEADER_CHARS, "header")
        if not equals or (value and not _URI_HEADER_CHARS.issuperset(value)):
            raise RemoteProtocolError("Malformed URI header")
        _check_escapes(value)
        headers.append((name, value))
    return headers


def _parse_sip_uri(scheme: str, rest: str) -> SipUri:
    # '@' cannot occur unescaped after the userinfo, and the user part may itself contain
    # ';' and '?' (RFC 4475 semiuri, intmeth), so the first '@' ends the userinfo.
    user = password = None
    at = rest.find("@")
    if at >= 0:
        user = rest[:at]
        rest = rest[at + 1 :]
        if ":" in user:
            user, _, password = user.partition(":")
            if password:
                _check_uri_part(password, _PASSWORD_CHARS, "password")
        _check_uri_part(user, _USER_CHARS, "user")
    # Neither parameters nor header values may contain an unescaped '?', so the first one
    # starts the headers; likewise the first ';' ends the host-port.
    headers: list[tuple[str, str]] = []
    if "?" in rest:
        rest, _, headers_text = rest.partition("?")
        headers = _parse_uri_headers(headers_text)
    # partition and split rather than `rest, *pieces = ...`: compiled, the starred target
    # copies the list again.
    rest, semicolon, params_text = rest.partition(";")
    params = _parse_uri_params(params_text.split(";")) if semicolon else Parameters()
    host, port = parse_host_port(rest)
    return SipUri(scheme, user, password, host, port, params, headers)


def _parse_tel_uri(rest: str) -> SipUri:
    number, semicolon, params_text = rest.partition(";")
    if not number or not _TEL_NUMBER_CHARS.issuperset(number):
        raise RemoteProtocolError("Malformed tel URI")
    params = _parse_uri_params(params_text.split(";")) if semicolon else Parameters()
    return SipUri("tel", number, params=params)


def _is_scheme(text: str) -> bool:
    return bool(text) and text[0].isalpha() and _SCHEME_CHARS.issuperset(text)


def parse_uri(text: str) -> SipUri:
    """Parse a sip:, sips: or tel: URI; any other well-formed URI is answered with 416."""
    scheme, colon, rest = text.partition(":")
    lowered = scheme.lower()
    if lowered in ("sip", "sips"):
        return _parse_sip_uri(lowered, rest)
    if lowered == "tel":
        return _parse_tel_uri(rest)
    if colon and _is_scheme(scheme) and rest and _OPAQUE_URI_FORBIDDEN.isdisjoint(rest):
        raise RemoteProtocolError("Unsupported URI Scheme", 416)
    raise RemoteProtocolError("Malformed URI")


def _parse_any_uri(text: str) -> SipUri | AbsoluteUri:
    try:
        return parse_uri(text)
    except RemoteProtocolError as error:
        if error.status_hint != 416:
            raise
    scheme, _, opaque = text.partition(":")
    return AbsoluteUri(scheme.lower(), opaque)


def _parse_header_param_value(value: str) -> str:
    value = value.strip()
    if value.startswith('"'):
        if read_quoted_string(value, 0)[1] != len(value):
            raise RemoteProtocolError("Malformed parameter value")
    elif not value or not _GENERIC_VALUE_CHARS.issuperset(value):
        raise RemoteProtocolError("Malformed parameter value")
    return value


def parse_header_params(text: str) -> Parameters:
    """Parse what follows an address or a Via sent-by: empty, or `;name[=value]...`."""
    params = Parameters()
    if not text:
        return params
    # Only a quoted value can hide a ';' (a '<' in a parameter is refused below anyway).
    pieces = split_unquoted(text, ";") if '"' in text else text.split(";")
    leading = pieces[0]
    if leading and not leading.isspace():
        raise RemoteProtocolError("Unexpected text before parameters")
    items = params._items
    # An index loop, not `leading, *pieces = ...`: compiled, the starred target copies the
    # list (about 1,000 instructions a call, and this runs for every Via and address).
    for position in range(1, len(pieces)):
        name, equals, value = pieces[position].partition("=")
        # The checks are written so that the common case (no spaces) costs one set test each,
        # and a usual name (tag, branch...) none: its lookup key comes from a table.
        key = _USUAL_PARAM_KEYS.get(name)
        if key is None:
            if not name or not TOKEN_CHARS.issuperset(name):
                name = name.strip()
                if not is_token(name):
                    raise RemoteProtocolError("Malformed parameter")
            key = name.lower()
        if not equals:
            items[key] = (name, None)
            continue
        if not is_ascii_alnum(value) and (not value or not _GENERIC_VALUE_CHARS.issuperset(value)):
            value = _parse_header_param_value(value)
        items[key] = (name, value)
    return params


def _parse_display_name(text: str) -> str | None:
    words = text.split()
    if not all(is_token(word) for word in words):
        raise RemoteProtocolError("Malformed display name")
    return " ".join(words) or None


def _parse_bracketed(text: str, bracket: int, display_name: str | None) -> NameAddr:
    """Parse `<uri>;params` with `<` at `text[bracket]`."""
    closing = text.find(">", bracket)
    if closing < 0:
        raise RemoteProtocolError("Unterminated <")
    uri_text = text[bracket + 1 : closing]
    # The URI itself is parsed on first use; what is checked now is what framing needs.
    if ":" not in uri_text or " " in uri_text or not uri_text.isprintable():
        raise RemoteProtocolError("Malformed URI in <>")
    params = parse_header_params(text[closing + 1 :])
    return NameAddr._with_unparsed_uri(uri_text, display_name, params)


def parse_name_addr(text: str) -> NameAddr:
    """Parse `"Name" <uri>;params`, `Name <uri>;params` or `uri;params`.

    After a bare addr-spec every parameter belongs to the header (RFC 3261 20), and such a URI
    may not contain ',', ';' or '?' (RFC 4475 regbadct).
    """
    text = text.strip()
    if text.startswith('"'):
        quoted_name, position = read_quoted_string(text, 0)
        bracket = text.find("<", position)
        if bracket < 0 or (bracket > position and not text[position:bracket].isspace()):
            raise RemoteProtocolError("Display name without <uri>")
        return _parse_bracketed(text, bracket, quoted_name)
    bracket = text.find("<")
    if bracket >= 0:
        token_name = _parse_display_name(text[:bracket]) if bracket else None
        return _parse_bracketed(text, bracket, token_name)
    uri_text, semicolon, params_text = text.partition(";")
    uri_text = uri_text.rstrip()
    if ":" not in uri_text:
        raise RemoteProtocolError("Malformed URI")
    if "?" in uri_text or "," in uri_text or " " in uri_text or not uri_text.isprintable():
        raise RemoteProtocolError("URI with '?', ',' or spaces must be enclosed in <>")
    params = parse_header_params(semicolon + params_text)
    return NameAddr._with_unparsed_uri(uri_text, None, params)
