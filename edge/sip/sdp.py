"""SDP bodies (RFC 4566, RFC 3264): read and rewrite addresses, ports and codec lists.

A B2BUA passes SDP through with a few edits (connection address and ports when anchoring
media, codec policy), so a parsed description keeps every line with its own line end and
writes untouched lines back byte for byte. Malformed SDP raises RemoteProtocolError(400); an
offer left without any acceptable codec raises it with 488. No I/O here.
"""

from __future__ import annotations

from dataclasses import dataclass

from edge.sip.errors import RemoteProtocolError

__all__ = ["STATIC_PAYLOAD_TYPES", "Codec", "MediaDescription", "SessionDescription"]

# RFC 3551 table 4 and 5: payload types that need no a=rtpmap line.
STATIC_PAYLOAD_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("PCMU", 8000, 1),
    3: ("GSM", 8000, 1),
    4: ("G723", 8000, 1),
    5: ("DVI4", 8000, 1),
    6: ("DVI4", 16000, 1),
    7: ("LPC", 8000, 1),
    8: ("PCMA", 8000, 1),
    9: ("G722", 8000, 1),
    10: ("L16", 44100, 2),
    11: ("L16", 44100, 1),
    12: ("QCELP", 8000, 1),
    13: ("CN", 8000, 1),
    14: ("MPA", 90000, 1),
    15: ("G728", 8000, 1),
    16: ("DVI4", 11025, 1),
    17: ("DVI4", 22050, 1),
    18: ("G729", 8000, 1),
    25: ("CelB", 90000, 1),
    26: ("JPEG", 90000, 1),
    28: ("nv", 90000, 1),
    31: ("H261", 90000, 1),
    32: ("MPV", 90000, 1),
    33: ("MP2T", 90000, 1),
    34: ("H263", 90000, 1),
}
# Attributes that belong to one payload type: `a=<name>:<pt> ...`.
_PER_FORMAT_ATTRIBUTES = ("rtpmap", "fmtp", "rtcp-fb")
_MAX_PAYLOAD_TYPE = 127
_AFTER_CONNECTION = frozenset("btrzka")


@dataclass(slots=True, init=False, unsafe_hash=True)
class Codec:
    """One RTP payload format offered in a media description."""

    payload_type: int
    name: str
    clock_rate: int | None
    channels: int = 1

    def __init__(
        self,
        payload_type: int,
        name: str,
        clock_rate: int | None,
        channels: int = 1,
    ) -> None:
        self.payload_type = payload_type
        self.name = name
        self.clock_rate = clock_rate
        self.channels = channels


def _split_line_end(line: str) -> tuple[str, str]:
    text = line.rstrip("\r\n")
    return text, line[len(text) :]


def _replace_text(line: str, text: str) -> str:
    """`line` with its content replaced and its original line end kept."""
    return text + _split_line_end(line)[1]


def _connection_line(address: str) -> str:
    address_type = "IP6" if ":" in address else "IP4"
    return f"c=IN {address_type} {address}"


def _read_connection_address(lines: list[str]) -> str | None:
    for line in lines:
        if line.startswith("c="):
            parts = _split_line_end(line)[0][2:].split()
            if len(parts) != 3:
                raise RemoteProtocolError("Malformed SDP connection line")
            # A multicast address may carry /ttl[/count]; the address is what precedes it.
            return parts[2].split("/", 1)[0]
    return None


def _write_connection_address(lines: list[str], address: str) -> None:
    for position, line in enumerate(lines):
        if line.startswith("c="):
            lines[position] = _replace_text(line, _connection_line(address))
            return
    # RFC 4566 5: c= comes before the first of these line types in a section.
    insert_at = next(
        (i for i, line in enumerate(lines) if i and line[:1] in _AFTER_CONNECTION), len(lines)
    )
    line_end = _split_line_end(lines[0])[1] or "\r\n"
    # The line before may be the body's last, written without a line end.
    if not _split_line_end(lines[insert_at - 1])[1]:
        lines[insert_at - 1] += line_end
    lines.insert(insert_at, _connection_line(address) + line_end)


class MediaDescription:
    """One `m=` section: its m= line first, then its own lines (c=, a=...)."""

    __slots__ = ("lines",)

    def __init__(self, lines: list[str]) -> None:
        self.lines = lines
        fields = self._media_fields()
        if len(fields) < 4:
            raise RemoteProtocolError("Malformed SDP media line")
        port = fields[1].split("/", 1)[0]
        if not (port.isascii() and port.isdigit()):
            raise RemoteProtocolError("Malformed SDP media port")

    def _media_fields(self) -> list[str]:
        return _split_line_end(self.lines[0])[0][2:].split()

    @property
    def media_type(self) -> str:
        return self._media_fields()[0]

    @property
    def port(self) -> int:
        return int(self._media_fields()[1].split("/", 1)[0])

    @port.setter
    def port(self, port: int) -> None:
        fields = self._media_fields()
        _, slash, count = fields[1].partition("/")
        fields[1] = f"{port}{slash}{count}"
        self.lines[0] = _replace_text(self.lines[0], "m=" + " ".join(fields))

    @property
    def protocol(self) -> str:
        return self._media_fields()[2]

    @property
    def formats(self) -> list[str]:
        return self._media_fields()[3:]

    @property
    def is_rtp(self) -> bool:
        return "RTP/" in self.protocol.upper()

    @property
    def connection_address(self) -> str | None:
        """The media-level c= address, or None when the session-level one applies."""
        return _read_connection_address(self.lines)

    @connection_address.setter
    def connection_address(self, address: str) -> None:
        _write_connection_address(self.lines, address)

    def _rtpmap(self) -> dict[int, tuple[str, int | None, int]]:
        mapping: dict[int, tuple[str, int | None, int]] = {}
        for line in self.lines:
            if not line.startswith("a=rtpmap:"):
                continue
            payload_type, _, encoding = _split_line_end(line)[0][len("a=rtpmap:") :].partition(" ")
            name, _, rest = encoding.strip().partition("/")
            rate, _, channels = rest.partition("/")
            if not _is_payload_type(payload_type) or not name:
                raise RemoteProtocolError("Malformed SDP rtpmap")
            if not (rate.isdigit() or not rate) or not (channels.isdigit() or not channels):
                raise RemoteProtocolError("Malformed SDP rtpmap")
            mapping[int(payload_type)] = (
                name,
                int(rate) if rate else None,
                int(channels) if channels else 1,
            )
        return mapping

    @property
    def codecs(self) -> list[Codec]:
        """The RTP payload formats in m= order; empty for non-RTP media (T.38, BFCP...)."""
        if not self.is_rtp:
            return []
        rtpmap = self._rtpmap()
        codecs = []
        for payload_type_text in self.formats:
            if not _is_payload_type(payload_type_text):
                raise RemoteProtocolError("Malformed SDP payload type")
            payload_type = int(payload_type_text)
            known = rtpmap.get(payload_type) or STATIC_PAYLOAD_TYPES.get(payload_type)
            # A dynamic payload type without a=rtpmap has no name we could allow.
            name, clock_rate, channels = known or ("", None, 1)
            codecs.append(Codec(payload_type, name, clock_rate, channels))
        return codecs


def _is_payload_type(text: str) -> bool:
    return text.isascii() and text.isdigit() and int(text) <= _MAX_PAYLOAD_TYPE


def _attribute_payload_type(line: str) -> int | None:
    """The payload type (as a number) a per-format attribute line is about, else None."""
    fmt = _attribute_format(line)
    return int(fmt) if fmt is not None and _is_payload_type(fmt) else None


def _attribute_format(line: str) -> str | None:
    """The payload type a per-format attribute line is about, or None for other lines."""
    if not line.startswith("a="):
        return None
    name, colon, value = line[2:].partition(":")
    if not colon or name not in _PER_FORMAT_ATTRIBUTES:
        return None
    return value.split(None, 1)[0] if value.strip() else None


class SessionDescription:
    """A parsed SDP body: session-level lines, then one MediaDescription per m= line."""

    __slots__ = ("media", "session_lines")

    def __init__(self, session_lines: list[str], media: list[MediaDescription]) -> None:
        self.session_lines = session_lines
        self.media = media

    @classmethod
    def parse(cls, body: bytes) -> SessionDescription:
        session_lines: list[str] = []
        media: list[MediaDescription] = []
        media_lines: list[str] | None = None
        # bytes.splitlines splits on CR and LF only (str.splitlines knows more separators).
        for raw_line in body.splitlines(keepends=True):
            line = raw_line.decode("utf-8", "surrogateescape")
            text = _split_line_end(line)[0]
            if text and (len(text) < 2 or text[1] != "=" or not text[0].isalpha()):
                raise RemoteProtocolError("Malformed SDP line")
            if text.startswith("m="):
                if media_lines is not None:
                    media.append(MediaDescription(media_lines))
                media_lines = [line]
            elif media_lines is None:
                session_lines.append(line)
            else:
                media_lines.append(line)
        if media_lines is not None:
            media.append(MediaDescription(media_lines))
        if not session_lines or not session_lines[0].startswith("v="):
            raise RemoteProtocolError("SDP does not start with v=")
        return cls(session_lines, media)

    @property
    def connection_address(self) -> str | None:
        """The session-level c= address."""
        return _read_connection_address(self.session_lines)

    @connection_address.setter
    def connection_address(self, address: str) -> None:
        _write_connection_address(self.session_lines, address)

    def to_bytes(self) -> bytes:
        lines = [*self.session_lines]
        for description in self.media:
            lines.extend(description.lines)
        return "".join(lines).encode("utf-8", "surrogateescape")

    def __bytes__(self) -> bytes:
        return self.to_bytes()
