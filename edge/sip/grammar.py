"""Character classes and lexical helpers of the SIP grammar (RFC 3261 section 25.1).

Shared by the URI, message and SDP readers so that every module agrees on what a token, a
quoted string and a comma-separated list are. Pure string functions, no I/O; the one state is
the caches of values already found well-formed (`remember`), each registered where it is made
(`known_values`, `forgettable`) so that `forget_known` empties them all.
"""

from __future__ import annotations

import string
from collections.abc import Callable, Hashable
from typing import Any, Final, TypeVar

from edge.sip.errors import RemoteProtocolError

__all__ = [
    "ALPHANUMERIC",
    "HEX_DIGITS",
    "KNOWN_TEXTS_LIMIT",
    "TOKEN_CHARS",
    "UNRESERVED",
    "forget_known",
    "forgettable",
    "is_ascii_alnum",
    "is_token",
    "known_values",
    "quote_string",
    "read_quoted_string",
    "remember",
    "split_unquoted",
]

ALPHANUMERIC: Final = frozenset(string.ascii_letters + string.digits)
HEX_DIGITS: Final = frozenset(string.hexdigits)
TOKEN_CHARS: Final = ALPHANUMERIC | frozenset("-.!%*_+`'~")
UNRESERVED: Final = ALPHANUMERIC | frozenset("-_.!~*'()")

# Backslash, double quote and line ends are the only characters a quoted string must escape;
# CR and LF cannot be escaped at all (quoted-pair excludes them).
_UNESCAPABLE: Final = frozenset("\r\n")


K = TypeVar("K", bound=Hashable)
# How many texts a cache of `remember` holds before it starts again.
KNOWN_TEXTS_LIMIT: Final = 4096


# How to empty each cache of known values, for `forget_known`.
_CACHE_CLEARS: Final[list[Callable[[], object]]] = []


def known_values() -> set[Any]:
    """A new, empty cache for `remember`, which `forget_known` empties."""
    known: set[Any] = set()
    _CACHE_CLEARS.append(known.clear)
    return known


def forgettable(clear: Callable[[], object]) -> None:
    """Have `forget_known` call `clear` too: another cache of known values (an lru_cache's
    ``cache_clear``)."""
    _CACHE_CLEARS.append(clear)


def forget_known() -> None:
    """Empty every cache of known values. They are caches: a value not in them is checked
    again, at the cost of the first message that brings it (the edge's quiet release,
    edge/runtime/gc_policy.py: what a busy spell put in them pins its memory)."""
    for clear in _CACHE_CLEARS:
        clear()


def remember(known: set[K], text: K) -> None:
    """Note `text` in `known` (made by `known_values`), a set of texts (or tuples of values)
    already found well-formed
    (URIs, hosts, a CDR's addresses and routes): checking is a pure function of the value and
    peers repeat the same few, so a value in the set is not checked again. Bounded: emptied
    when full."""
    if len(known) >= KNOWN_TEXTS_LIMIT:
        known.clear()
    known.add(text)


def is_ascii_alnum(text: str) -> bool:
    """True if `text` is non-empty ASCII letters and digits: a member of every character class
    here, and what most tokens, tags, branches and methods are.

    The fast path before a character-class test: `isalnum` is one C loop and `isascii` reads
    a flag, where `frozenset.issuperset(text)` hashes and looks up every character (compiled,
    a 24-character branch: about 580 instructions against 3,270).
    """
    return text.isalnum() and text.isascii()


def is_token(text: str) -> bool:
    """True if `text` is a non-empty RFC 3261 token."""
    return is_ascii_alnum(text) or (bool(text) and TOKEN_CHARS.issuperset(text))


def read_quoted_string(text: str, start: int) -> tuple[str, int]:
    """Read the quoted string whose opening quote is at `text[start]`.

    Returns the unescaped content and the index just past the closing quote.
    """
    closing = text.find('"', start + 1)
    if closing >= 0:
        content_text = text[start + 1 : closing]
        # Without backslashes the content is exactly the text between the quotes.
        if "\\" not in content_text:
            return content_text, closing + 1
    content: list[str] = []
    position = start + 1
    end = len(text)
    while position < end:
        char = text[position]
        if char == '"':
            return "".join(content), position + 1
        if char == "\\":
            position += 1
            if position == end or text[position] in _UNESCAPABLE:
                break
            char = text[position]
        content.append(char)
        position += 1
    raise RemoteProtocolError("Unterminated quoted string")


def quote_string(text: str) -> str:
    """Quote `text` as an RFC 3261 quoted-string, escaping backslashes and quotes."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def split_unquoted(text: str, separator: str) -> list[str]:
    """Split `text` on `separator` where it is outside quoted strings and <...>.

    The pieces are returned unstripped; an unterminated quote or bracket is the peer's error.
    """
    if '"' not in text and "<" not in text:
        return text.split(separator)
    pieces: list[str] = []
    piece_start = 0
    position = 0
    end = len(text)
    while position < end:
        char = text[position]
        if char == '"':
            position = read_quoted_string(text, position)[1]
            continue
        if char == "<":
            closing = text.find(">", position)
            if closing < 0:
                raise RemoteProtocolError("Unterminated <")
            position = closing + 1
            continue
        if char == separator:
            pieces.append(text[piece_start:position])
            piece_start = position + 1
        position += 1
    pieces.append(text[piece_start:])
    return pieces
