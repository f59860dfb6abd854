"""Answers to requests that could not be parsed whole (RFC 3261 8.2 and 21.4, RFC 4475).

A request the parser refuses (odd spacing in the request line, `SIP/7.0`, a header line that is
not one, a bad Content-Length) still deserves its 400 or 505 when its transaction headers (Via,
From, To, Call-ID, CSeq) can be found in the header block, as a robust proxy answers: the peer
then learns why instead of retransmitting into silence. Responses and ACKs are never answered,
and a message whose transaction headers are missing or unreadable gets nothing either (there is
nobody to address the answer to). The copied lines go back exactly as received, bounded in
size, so an answer is never larger than what the peer sent.

Pure functions: bytes in, bytes out. No I/O, no clock; the B2BUA wraps the answer in a Transmit.
"""

from __future__ import annotations

from dataclasses import dataclass

from edge.sip.errors import RemoteProtocolError

__all__ = ["Salvaged", "answer_unparsable"]

# The headers a response copies from its request (RFC 3261 8.2.6), by full and compact name.
TRANSACTION_HEADERS = {
    "via": "via", "v": "via", "from": "from", "f": "from", "to": "to", "t": "to",
    "call-id": "call-id", "i": "call-id", "cseq": "cseq",
}  # fmt: skip
_NEEDED = frozenset(TRANSACTION_HEADERS.values())
# A salvaged answer copies at most this much of the request's header block.
MAX_COPIED_BYTES = 8192
# Reason phrases come from our own error texts; keep them one short printable line.
_MAX_REASON = 100


@dataclass(frozen=True, slots=True)
class Salvaged:
    """The answer to put on the wire, and its status (for the response counters)."""

    status: int
    data: bytes


def _head_lines(data: bytes) -> list[str]:
    """The header block's lines (start line first), CRLF or bare LF, leading CRLFs skipped."""
    text = data.lstrip(b"\r\n")
    end = text.find(b"\r\n\r\n")
    if end < 0:
        end = text.find(b"\n\n")
    head = text if end < 0 else text[:end]
    return head.decode("utf-8", "surrogateescape").replace("\r\n", "\n").split("\n")


def _is_request_line(line: str) -> bool:
    """A request line, however it is spaced: METHOD URI SIP/x.y (not a status line, not ACK)."""
    parts = line.split()
    return (
        len(parts) >= 3
        and not parts[0].upper().startswith("SIP/")
        and parts[-1].upper().startswith("SIP/")
        and parts[0] != "ACK"
    )


def _transaction_lines(lines: list[str]) -> list[str] | None:
    """The Via, From, To, Call-ID and CSeq lines (with their continuation lines), or None if
    one of them is missing or the copy would be too large."""
    copied: list[str] = []
    found: set[str] = set()
    copying = False
    size = 0
    for line in lines:
        if line[:1] in (" ", "\t"):
            if copying:
                copied[-1] += f"\r\n{line}"
                size += len(line)
            continue
        name = TRANSACTION_HEADERS.get(line.split(":", 1)[0].strip().lower())
        copying = name is not None and ":" in line
        if copying and name is not None:
            copied.append(line)
            found.add(name)
            size += len(line)
        if size > MAX_COPIED_BYTES:
            return None
    return copied if found == _NEEDED else None


def answer_unparsable(data: bytes, error: RemoteProtocolError) -> Salvaged | None:
    """The answer to a request the parser refused with `error`, or None (leave it unanswered).

    The status is the error's hint (400, or 505 for another SIP version, 513 for a message too
    large); the reason phrase is the error's reason.
    """
    lines = _head_lines(data)
    if not lines or not _is_request_line(lines[0]):
        return None
    copied = _transaction_lines(lines[1:])
    if copied is None:
        return None
    status = error.status_hint if 400 <= error.status_hint <= 699 else 400
    phrase = "".join(ch for ch in error.reason if ch.isprintable())[:_MAX_REASON]
    head = "\r\n".join([f"SIP/2.0 {status} {phrase or 'Bad Request'}", *copied])
    return Salvaged(
        status, f"{head}\r\nContent-Length: 0\r\n\r\n".encode("utf-8", "surrogateescape")
    )
