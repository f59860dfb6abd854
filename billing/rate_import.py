"""Reading a rate deck from CSV: every line checked, every problem named by line and column.

Nothing here writes; `services.rate_deck_import` stores what this accepts, all or nothing.
The columns (a header line names them, in any order; `destination`, `connect_fee`,
`effective_to` may be left out):

    prefix,destination,rate_per_minute,connect_fee,first_block,increment,effective_from,effective_to
    44,United Kingdom,0.0120,0,60,60,2026-01-01,
    4420,London,0.0100,0.0100,30,6,2026-01-01T00:00:00Z,2027-01-01

Times are ISO 8601; a date or a time without an offset is UTC; `effective_to` is exclusive and
empty means open-ended; an empty `effective_from` means "always".
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from itertools import pairwise
from typing import Any

COLUMNS = (
    "prefix", "destination", "rate_per_minute", "connect_fee", "first_block", "increment",
    "effective_from", "effective_to",
)  # fmt: skip
REQUIRED = ("prefix", "rate_per_minute", "first_block", "increment")
MAX_ERRORS = 200  # a deck in the wrong format would otherwise list every line
PRICE_PLACES = 6  # Rate.rate_per_minute / connect_fee decimal places
PRICE_MAX = Decimal("1000000")
BEGINNING = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class LineError:
    line: int  # 1-based line of the file (the header is line 1)
    column: str
    message: str

    def as_dict(self) -> dict[str, Any]:
        return {"line": self.line, "column": self.column, "message": self.message}

    def __str__(self) -> str:
        return f"line {self.line}, {self.column}: {self.message}"


class RateImportError(Exception):
    def __init__(self, errors: list[LineError]) -> None:
        super().__init__("; ".join(str(e) for e in errors[:5]))
        self.errors = errors


@dataclass(slots=True)
class RateLine:
    line: int
    fields: dict[str, Any] = field(default_factory=dict)


def _decimal(text: str) -> Decimal:
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise ValueError(f"{text!r} is not a number") from None
    if not value.is_finite():
        raise ValueError(f"{text!r} is not a number")
    if value < 0:
        raise ValueError("must not be negative")
    if value >= PRICE_MAX:
        raise ValueError(f"must be below {PRICE_MAX}")
    exponent = value.as_tuple().exponent
    if isinstance(exponent, int) and -exponent > PRICE_PLACES:
        raise ValueError(f"at most {PRICE_PLACES} decimal places")
    return value


def _seconds(text: str) -> int:
    if not text.isdigit():
        raise ValueError(f"{text!r} is not a whole number of seconds")
    value = int(text)
    if not 1 <= value <= 3600:
        raise ValueError("must be between 1 and 3600 seconds")
    return value


def _time(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{text!r} is not an ISO 8601 date or time") from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _prefix(text: str) -> str:
    value = text.removeprefix("+")
    if not (value.isdigit() and value.isascii() and 1 <= len(value) <= 15):
        raise ValueError(f"{text!r} is not a prefix of 1 to 15 digits")
    return value


PARSERS = {
    "prefix": _prefix,
    "destination": lambda text: text[:100],
    "rate_per_minute": _decimal,
    "connect_fee": _decimal,
    "first_block": _seconds,
    "increment": _seconds,
    "effective_from": _time,
    "effective_to": _time,
}
DEFAULTS: dict[str, Any] = {
    "destination": "",
    "connect_fee": Decimal("0"),
    "effective_from": BEGINNING,
    "effective_to": None,
}


def parse_rate_csv(text: str) -> list[RateLine]:
    """Every line of ``text`` as rate fields; raises `RateImportError` naming each bad one."""
    errors: list[LineError] = []
    reader = csv.reader(io.StringIO(text.lstrip("\ufeff")))
    header = [name.strip().lower() for name in next(reader, [])]
    unknown = [name for name in header if name not in COLUMNS]
    missing = [name for name in REQUIRED if name not in header]
    if unknown or missing:
        message = "; ".join(
            part
            for part in (
                f"unknown column(s) {', '.join(unknown)}" if unknown else "",
                f"missing column(s) {', '.join(missing)}" if missing else "",
            )
            if part
        )
        raise RateImportError(
            [LineError(1, "header", f"{message} (expected {', '.join(COLUMNS)})")]
        )
    rows: list[RateLine] = []
    for number, values in enumerate(reader, start=2):
        if not any(v.strip() for v in values):
            continue  # blank lines
        if len(values) != len(header):
            errors.append(
                LineError(
                    number, "line", f"{len(values)} fields where the header has {len(header)}"
                )
            )
            continue
        row = RateLine(number, dict(DEFAULTS))
        for name, raw in zip(header, values, strict=True):
            text = raw.strip()
            if not text:
                if name in REQUIRED:
                    errors.append(LineError(number, name, "is required"))
                continue
            try:
                row.fields[name] = PARSERS[name](text)
            except ValueError as error:
                errors.append(LineError(number, name, str(error)))
        start, end = row.fields.get("effective_from"), row.fields.get("effective_to")
        if end is not None and start is not None and end <= start:
            errors.append(LineError(number, "effective_to", "must be after effective_from"))
        rows.append(row)
        if len(errors) >= MAX_ERRORS:
            break
    if errors:
        raise RateImportError(errors)
    if not rows:
        raise RateImportError([LineError(2, "line", "the file has no rates")])
    return rows


def check_overlaps(
    rows: list[RateLine], existing: list[tuple[int, str, datetime, datetime | None]]
) -> None:
    """Refuse rows whose effective period overlaps another row of the same prefix, in the file
    or (``existing``: (id, prefix, from, to)) already in the deck: rating must find one price."""
    by_prefix: dict[str, list[tuple[datetime, datetime | None, str, int]]] = {}
    for rate_id, prefix, start, end in existing:
        by_prefix.setdefault(prefix, []).append((start, end, f"the deck's rate #{rate_id}", 0))
    for row in rows:
        f = row.fields
        by_prefix.setdefault(f["prefix"], []).append(
            (f["effective_from"], f["effective_to"], f"line {row.line}", row.line)
        )
    errors: list[LineError] = []
    for prefix, periods in by_prefix.items():
        if len(periods) < 2:
            continue
        periods.sort(key=lambda p: p[0])
        for before, after in pairwise(periods):
            if before[1] is None or before[1] > after[0]:
                line = after[3] or before[3]
                other = before[2] if after[3] else after[2]
                errors.append(
                    LineError(
                        line,
                        "effective_from",
                        f"prefix {prefix} overlaps {other} in time",
                    )
                )
    if errors:
        errors.sort(key=lambda e: e.line)
        raise RateImportError(errors[:MAX_ERRORS])
