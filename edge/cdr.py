"""Call detail records as the edge writes them: one per call attempt, admitted or not.

A record is built once, when the attempt ends, and written as one line of JSON to the node's
journal (`edge.runtime.journal`); the control plane loads those lines into `billing.Cdr`. The
line format is the contract between the two: `from_json` accepts exactly what `to_json` writes,
and a corrupt or foreign line raises `CdrDecodeError`.

Construction validates too, so the edge can never journal a record the loader would refuse.
Two kinds of values are treated differently on purpose:

- values the edge itself decides (ids, codes, reasons, times) must be right, or construction
  raises `ValueError` — that is a bug in our code;
- text that comes from the peer (SIP Call-IDs, numbers as dialled, a registered contact, codec
  names) is cleaned instead: clipped to its column's width, NUL and invalid UTF-8 replaced. One
  odd message must never cost a call its record nor jam the loader's batch.

Times are ISO-8601 strings in UTC with milliseconds (``2026-11-24T08:00:00.123Z``), made by
`iso_utc` from the wall-clock epoch readings the edge's core is given; `parse_iso_utc` turns one
back into an aware datetime. They are not checked for order: a clock step during a call must
not make its record unstorable.

Pure: no I/O, no clocks, no Django.
"""

from __future__ import annotations

import ipaddress
import math
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypedDict, overload

import orjson

from edge.sip.grammar import known_values, remember
from edge.sip.message import random_hex

if TYPE_CHECKING:
    from edge.calls import Call

__all__ = [
    "DIRECTIONS",
    "HANGUP_SIDES",
    "CallDetailRecord",
    "CdrDecodeError",
    "RouteAttempt",
    "call_record",
    "iso_utc",
    "new_call_id",
    "parse_iso_utc",
    "refusal_record",
]

DIRECTIONS = ("inbound", "outbound")
HANGUP_SIDES = ("caller", "callee", "edge")

# Column widths of billing.Cdr; the loader's COPY must never meet a value that does not fit.
EDGE_MAX = 100
CALL_ID_MAX = 64
SIP_CALL_ID_MAX = 255
E164_MAX = 16
NUMBER_RAW_MAX = 255
TARGET_MAX = 255
REASON_MAX = 64
KIND_MAX = 32
CODEC_MAX = 32
MAX_INT32 = 2**31 - 1
MAX_INT64 = 2**63 - 1

_E164 = re.compile(r"\+[1-9][0-9]{1,14}")
_REASON = re.compile(r"[a-z][a-z0-9_]*")
_ISO_MS = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class CdrDecodeError(ValueError):
    """A journal line that is not a valid call detail record; the message says what is wrong."""


class RouteAttempt(TypedDict):
    """One route tried for a call and how it ended: the CDR's decision trace."""

    target: str  # the URI or gateway tried, as configured (or a registered contact)
    kind: str  # what the target is: "origination_uri", "carrier_gateway", "registration", ...
    status: int | None  # the SIP final status it answered, None if it never answered (timeout)
    reason: str  # why the edge moved on or stopped: "answered", "timeout", "failover_5xx", ...


def new_call_id() -> str:
    """A record id unique per edge (128 random bits, as hex). The caller's Call-ID is not: it
    repeats across retries."""
    return random_hex(16)


@overload
def iso_utc(wall: float) -> str: ...
@overload
def iso_utc(wall: None) -> None: ...
def iso_utc(wall: float | None) -> str | None:
    """A wall-clock epoch reading (seconds) as ``2026-11-24T08:00:00.123Z``; None stays None.

    Rounded to whole milliseconds first, so ``x.123`` never prints as ``.122``.
    """
    global _iso_second
    if wall is None:
        return None
    second, millisecond = divmod(round(wall * 1000), 1000)
    # A record takes four times and a busy edge ends many calls per second: the date and time
    # of the last second formatted are kept (one tuple, replaced whole, so threads may share it).
    cached_second, prefix = _iso_second
    if second != cached_second:
        moment = _EPOCH + timedelta(seconds=second)
        prefix = (
            f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}T"
            f"{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d}"
        )
        _iso_second = (second, prefix)
    return f"{prefix}.{millisecond:03d}Z"


_iso_second: tuple[int | None, str] = (None, "")


def call_record(
    call: Call,
    *,
    edge: str,
    end_wall: float,
    final_code: int,
    reason: str,
    side: str | None,
    config_version: int,
) -> CallDetailRecord:
    """The record of an admitted call (edge.calls.Call) that ended at `end_wall`."""
    answer_at = call.answer_at
    # Clamped: a wall clock stepping back mid-call must not make the record unstorable.
    duration_ms = max(0, round((end_wall - answer_at) * 1000)) if answer_at is not None else 0
    b = call.b
    return CallDetailRecord(
        edge=edge,
        call_id=call.id,
        a_call_id=call.a.call_id,
        b_call_id=b.call_id if b is not None else None,
        customer_id=call.customer_id,
        trunk_id=call.trunk.id,
        direction=call.direction,
        caller_e164=call.caller_e164,
        callee_e164=call.callee_e164,
        caller_raw=call.caller_raw,
        callee_raw=call.callee_raw,
        source_ip=call.source[0],
        source_port=call.source[1],
        routes=list(call.routes),
        answered_by=call.answered_by,
        setup_at=iso_utc(call.setup_at),
        ringing_at=iso_utc(call.ringing_at),
        answer_at=iso_utc(answer_at),
        end_at=iso_utc(end_wall),
        duration_ms=duration_ms,
        billable_seconds=-(-duration_ms // 1000) if answer_at is not None else 0,
        final_code=final_code,
        reason=reason,
        hangup_side=side,
        codecs=call.codecs,
        config_version=config_version,
    )


def refusal_record(
    *,
    edge: str,
    a_call_id: str,
    source: tuple[str, int, str],
    trunk_id: int | None,
    customer_id: int | None,
    direction: str,
    caller_e164: str | None,
    callee_e164: str | None,
    caller_raw: str,
    callee_raw: str,
    wall: float,
    final_code: int,
    reason: str,
    config_version: int,
) -> CallDetailRecord:
    """The record of an attempt refused before it became a call (no leg placed)."""
    at = iso_utc(wall)
    return CallDetailRecord(
        edge=edge,
        call_id=new_call_id(),
        a_call_id=a_call_id,
        customer_id=customer_id,
        trunk_id=trunk_id,
        direction=direction,
        caller_e164=caller_e164,
        callee_e164=callee_e164,
        caller_raw=caller_raw,
        callee_raw=callee_raw,
        source_ip=source[0],
        source_port=source[1],
        setup_at=at,
        end_at=at,
        final_code=final_code,
        reason=reason,
        config_version=config_version,
    )


def parse_iso_utc(text: str) -> datetime:
    """The aware UTC datetime of a time as `iso_utc` writes it; ValueError for anything else."""
    if not isinstance(text, str) or not _ISO_MS.fullmatch(text):
        raise ValueError(f"must look like 2026-11-24T08:00:00.123Z, not {text!r}")
    return datetime.fromisoformat(text)


@dataclass(slots=True, kw_only=True)
class CallDetailRecord:
    """The record of one call attempt, from its first INVITE to its end.

    ``call_id`` is the record's own id (`new_call_id`, taken when the attempt starts so events
    can refer to it); ``a_call_id`` and ``b_call_id`` are the SIP Call-IDs of the caller's leg
    and of the last leg the edge placed (None when no leg was placed). ``duration_ms`` runs from
    answer to end (0 when unanswered) and ``billable_seconds`` is it rounded up to the second;
    rating with increments belongs to billing.
    """

    edge: str
    call_id: str
    a_call_id: str
    b_call_id: str | None = None
    customer_id: int | None = None
    trunk_id: int | None = None
    direction: str
    caller_e164: str | None = None
    callee_e164: str | None = None
    caller_raw: str
    callee_raw: str
    source_ip: str
    source_port: int
    routes: list[RouteAttempt] = field(default_factory=list)
    answered_by: str | None = None
    setup_at: str
    ringing_at: str | None = None
    answer_at: str | None = None
    end_at: str
    duration_ms: int = 0
    billable_seconds: int = 0
    final_code: int
    reason: str
    hangup_side: str | None = None
    codecs: list[str] = field(default_factory=list)
    # Media anchored in rtpengine: what its delete answer said (see `clean_media`); None when
    # the media passed through (or the call ended before a media session existed).
    media: MediaSummary | None = None
    config_version: int

    def __post_init__(self) -> None:
        _check_text("edge", self.edge, EDGE_MAX)
        _check_text("call_id", self.call_id, CALL_ID_MAX)
        self.a_call_id = _peer_text("a_call_id", self.a_call_id, SIP_CALL_ID_MAX)
        if self.b_call_id is not None:
            self.b_call_id = _peer_text("b_call_id", self.b_call_id, SIP_CALL_ID_MAX)
        _check_id("customer_id", self.customer_id)
        _check_id("trunk_id", self.trunk_id)
        _check_choice("direction", self.direction, DIRECTIONS)
        _check_e164("caller_e164", self.caller_e164)
        _check_e164("callee_e164", self.callee_e164)
        self.caller_raw = _peer_text("caller_raw", self.caller_raw, NUMBER_RAW_MAX)
        self.callee_raw = _peer_text("callee_raw", self.callee_raw, NUMBER_RAW_MAX)
        _check_ip("source_ip", self.source_ip)
        _check_int("source_port", self.source_port, 0, 65535)
        self.routes = _clean_routes(self.routes)
        if self.answered_by is not None:
            self.answered_by = _peer_text("answered_by", self.answered_by, TARGET_MAX)
        _check_time("setup_at", self.setup_at)
        if self.ringing_at is not None:
            _check_time("ringing_at", self.ringing_at)
        if self.answer_at is not None:
            _check_time("answer_at", self.answer_at)
        _check_time("end_at", self.end_at)
        _check_int("duration_ms", self.duration_ms, 0, MAX_INT32)
        if self.answer_at is None and (self.duration_ms or self.answered_by is not None):
            raise ValueError("duration_ms and answered_by must be empty for an unanswered call")
        if self.answer_at is not None and self.answered_by is None:
            raise ValueError("answered_by is required for an answered call")
        if self.billable_seconds != math.ceil(self.duration_ms / 1000):
            raise ValueError(
                f"billable_seconds: {self.billable_seconds!r} is not duration_ms "
                f"{self.duration_ms} rounded up to the second"
            )
        _check_int("final_code", self.final_code, 200, 699)
        _check_reason("reason", self.reason)
        if self.hangup_side is not None:
            _check_choice("hangup_side", self.hangup_side, HANGUP_SIDES)
        if not isinstance(self.codecs, list):
            raise ValueError("codecs: must be a list")
        self.codecs = [_peer_text("codecs[]", c, CODEC_MAX) for c in self.codecs]
        if self.media is not None:
            self.media = clean_media(self.media)
        _check_int("config_version", self.config_version, 0, MAX_INT64)

    def to_json(self) -> bytes:
        """One line of JSON, without the newline (JSON escapes any inside strings)."""
        return orjson.dumps(
            {
                "edge": self.edge,
                "call_id": self.call_id,
                "a_call_id": self.a_call_id,
                "b_call_id": self.b_call_id,
                "customer_id": self.customer_id,
                "trunk_id": self.trunk_id,
                "direction": self.direction,
                "caller_e164": self.caller_e164,
                "callee_e164": self.callee_e164,
                "caller_raw": self.caller_raw,
                "callee_raw": self.callee_raw,
                "source_ip": self.source_ip,
                "source_port": self.source_port,
                "routes": self.routes,
                "answered_by": self.answered_by,
                "setup_at": self.setup_at,
                "ringing_at": self.ringing_at,
                "answer_at": self.answer_at,
                "end_at": self.end_at,
                "duration_ms": self.duration_ms,
                "billable_seconds": self.billable_seconds,
                "final_code": self.final_code,
                "reason": self.reason,
                "hangup_side": self.hangup_side,
                "codecs": self.codecs,
                "media": self.media,
                "config_version": self.config_version,
            }
        )

    @classmethod
    def from_json(cls, line: bytes) -> CallDetailRecord:
        """The record of one journal line (a trailing newline is allowed).

        Raises `CdrDecodeError` for anything `to_json` would not have written: bad JSON, a
        missing or unknown field (a newer edge's line is refused, not silently cut), or a value
        that construction refuses.
        """
        try:
            data = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise CdrDecodeError(f"not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise CdrDecodeError("not a JSON object")
        if data.keys() != _JSON_FIELDS:  # every field: the usual line needs no set arithmetic
            missing = _JSON_FIELDS - data.keys() - _OPTIONAL_JSON_FIELDS
            unknown = data.keys() - _JSON_FIELDS
            if missing or unknown:
                parts = []
                if missing:
                    parts.append(f"missing fields: {', '.join(sorted(missing))}")
                if unknown:
                    parts.append(f"unknown fields: {', '.join(sorted(unknown))}")
                raise CdrDecodeError("; ".join(parts))
        # Not cls(**data): the keys orjson makes are not the interned names the generated
        # __init__ compares its keywords with, so matching 27 of them by value cost more than
        # the rest of the construction (measured 2-3x). The keys are checked above, so each
        # field is set as it is and __post_init__, the one home of the checks, runs as always.
        record = _new_record(cls)
        try:
            for name, value in data.items():
                _set_field(record, name, value)
            if len(data) != len(_JSON_FIELDS):
                for name in _OPTIONAL_JSON_FIELDS - data.keys():
                    _set_field(record, name, _OPTIONAL_DEFAULTS[name])
            record.__post_init__()
        except (TypeError, ValueError) as exc:
            raise CdrDecodeError(str(exc)) from None
        return record


_JSON_FIELDS = frozenset(CallDetailRecord.__dataclass_fields__)
# Added after journals were written: a line without it is an older edge's, not a broken one.
_OPTIONAL_JSON_FIELDS = frozenset({"media"})
_OPTIONAL_DEFAULTS = {
    name: CallDetailRecord.__dataclass_fields__[name].default for name in _OPTIONAL_JSON_FIELDS
}
_new_record = object.__new__
_set_field = setattr
# The media summary's keys: counters (integers >= 0) and quality figures (numbers >= 0).
MEDIA_COUNTERS = frozenset({"packets_in", "packets_out", "bytes_in", "bytes_out", "packets_lost"})
MEDIA_FIGURES = frozenset({"jitter_ms", "mos"})
MEDIA_TEXT = frozenset({"engine", "mode"})


class MediaSummary(TypedDict, total=False):
    """A call's media as rtpengine counted it (edge/media.py builds it from `delete`)."""

    engine: str  # the rtpengine instance, host:port
    mode: str  # "rtp" or "srtp" on the customer side
    packets_in: int  # received by rtpengine, both legs together
    packets_out: int  # sent by rtpengine, both legs together
    bytes_in: int
    bytes_out: int
    packets_lost: int
    jitter_ms: float  # worst leg's average, where rtpengine reports it
    mos: float  # lowest leg's MOS, where rtpengine reports it


def clean_media(media: Any) -> MediaSummary:
    """`media` checked: only known keys, counters as non-negative ints, figures as numbers."""
    if not isinstance(media, dict):
        raise ValueError("media: must be an object or null")
    clean: dict[str, Any] = {}
    for key, value in media.items():
        if key not in _MEDIA_KEYS:
            raise ValueError(f"media: unknown key {key!r}")
        try:
            if key in MEDIA_COUNTERS:
                _check_int(key, value, 0, MAX_INT64)
            elif key in MEDIA_FIGURES:
                if type(value) not in (int, float) or not 0 <= value < 1e9:
                    raise ValueError(f"{key}: must be a number >= 0, not {value!r}")
            else:
                _check_text(key, value, 100)
        except ValueError as error:
            raise ValueError(f"media.{error}") from None  # the name is made only when wrong
        clean[key] = value
    return clean  # type: ignore[return-value]


_MEDIA_KEYS = MEDIA_COUNTERS | MEDIA_FIGURES | MEDIA_TEXT
_ROUTE_KEYS = frozenset(RouteAttempt.__annotations__)


# --- validation -----------------------------------------------------------------------------
# Each helper raises ValueError("<field>: <what is wrong>"); from_json turns it into the
# CdrDecodeError the loader reports against the line.


def _require_str(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{name}: must be a string, not {type(value).__name__}")
    return value


def _check_text(name: str, value: Any, limit: int) -> None:
    if isinstance(value, str) and 0 < len(value) <= limit and "\x00" not in value:
        return
    _require_str(name, value)
    raise ValueError(f"{name}: must be 1 to {limit} characters without NUL")


def _peer_text(name: str, value: Any, limit: int) -> str:
    """Peer-supplied text made storable: valid UTF-8, no NUL (PostgreSQL refuses both), clipped.
    Only a value that is not text at all is refused."""
    text = value if isinstance(value, str) else _require_str(name, value)
    if not text.isascii():
        text = text.encode("utf-8", "replace").decode("utf-8")
    if "\x00" in text:
        text = text.replace("\x00", "")
    return text[:limit]


def _check_int(name: str, value: Any, low: int, high: int) -> None:
    # bool is an int to Python but never a valid value here.
    if type(value) is not int or not low <= value <= high:
        raise ValueError(f"{name}: must be an integer from {low} to {high}, not {value!r}")


def _check_id(name: str, value: Any) -> None:
    if value is not None:
        _check_int(name, value, 1, MAX_INT64)


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name}: must be one of {', '.join(choices)}, not {value!r}")


def _check_reason(name: str, value: Any) -> None:
    if not isinstance(value, str) or len(value) > REASON_MAX or not _REASON.fullmatch(value):
        raise ValueError(f"{name}: must be a snake_case code of at most {REASON_MAX} characters")


def _check_e164(name: str, value: Any) -> None:
    if value is not None and (not isinstance(value, str) or not _E164.fullmatch(value)):
        raise ValueError(f"{name}: must be an E.164 number (+ and up to 15 digits) or null")


def _check_ip(name: str, value: Any) -> None:
    # Peers call from the same few addresses and ipaddress is slow (~1.5 us): addresses that
    # passed are remembered (a bounded set; the check is a pure function of the text).
    if type(value) is str and value in _VALID_IPS:
        return
    # A scope id ("fe80::1%eth0") is valid to Python but not to PostgreSQL's inet.
    try:
        if not isinstance(value, str) or "%" in value:
            raise ValueError
        ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"{name}: must be an IPv4 or IPv6 address, not {value!r}") from None
    remember(_VALID_IPS, value)


_VALID_IPS: set[str] = known_values()


def _check_time(name: str, value: Any) -> None:
    try:
        parse_iso_utc(value)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None


def _clean_routes(routes: Any) -> list[RouteAttempt]:
    if not isinstance(routes, list):
        raise ValueError("routes: must be a list")
    cleaned: list[RouteAttempt] = []
    for route in routes:
        if not isinstance(route, dict) or route.keys() != _ROUTE_KEYS:
            raise ValueError(
                f"routes[{len(cleaned)}]: must be an object with target, kind, status, reason"
            )
        status = route["status"]
        kind = route["kind"]
        reason = route["reason"]
        target = route["target"]
        # A node's calls try the same few routes and end the same few ways: a route that passed
        # is remembered (a bounded set; the checks are a pure function of these exact values,
        # and exact types, so that 200.0 or True never passes for a status that was an int).
        seen = (target, kind, status, reason)
        if (
            type(target) is str
            and type(kind) is str
            and type(reason) is str
            and (status is None or type(status) is int)
            and seen in _VALID_ROUTES
        ):
            cleaned.append({"target": target, "kind": kind, "status": status, "reason": reason})
            continue
        try:
            if status is not None:
                _check_int("status", status, 100, 699)
            _check_text("kind", kind, KIND_MAX)
            _check_reason("reason", reason)
            clean_target = _peer_text("target", target, TARGET_MAX)
        except ValueError as error:
            # The route's name is made only when something is wrong (records have a few each).
            raise ValueError(f"routes[{len(cleaned)}].{error}") from None
        if clean_target == target:
            remember(_VALID_ROUTES, seen)
        cleaned.append({"target": clean_target, "kind": kind, "status": status, "reason": reason})
    return cleaned


_VALID_ROUTES: set[tuple[Any, ...]] = known_values()
