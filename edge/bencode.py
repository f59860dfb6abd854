"""Bencode, as rtpengine's ng protocol speaks it.

The edge's ng client speaks JSON (edge/runtime/rtpengine.py: orjson is several times faster);
it bencodes only a request whose SDP is not UTF-8, which JSON cannot carry byte for byte. The
tests' rtpengine helper (edge/tests/sipp_harness.py) speaks bencode, as Kamailio does.

Written here rather than taken from a library: the bencode libraries refuse dictionaries whose
keys are not sorted, and rtpengine's answers do not sort them. Strings decode to `bytes`; the
encoder takes `str` (as UTF-8) and `bytes`, ints, lists and dicts (keys sorted, as the
format says). Pure: no I/O.
"""

from __future__ import annotations

from typing import Any

__all__ = ["BencodeError", "decode", "encode"]


class BencodeError(ValueError):
    """Not bencode (a malformed or truncated answer)."""


def encode(value: Any) -> bytes:
    out: list[bytes] = []
    _encode(value, out)
    return b"".join(out)


def _encode(value: Any, out: list[bytes]) -> None:
    if isinstance(value, str):
        value = value.encode()
    if isinstance(value, bytes):
        out.append(b"%d:" % len(value))
        out.append(value)
    elif isinstance(value, bool):
        raise TypeError("bencode has no booleans")
    elif isinstance(value, int):
        out.append(b"i%de" % value)
    elif isinstance(value, list | tuple):
        out.append(b"l")
        for item in value:
            _encode(item, out)
        out.append(b"e")
    elif isinstance(value, dict):
        out.append(b"d")
        items = [(k.encode() if isinstance(k, str) else k, v) for k, v in value.items()]
        for key, item in sorted(items):
            _encode(key, out)
            _encode(item, out)
        out.append(b"e")
    else:
        raise TypeError(f"cannot bencode {type(value).__name__}")


def decode(data: bytes) -> Any:
    """The value `data` holds, whole; BencodeError if it is not exactly one bencoded value."""
    try:
        value, end = _decode(data, 0)
    except (IndexError, ValueError) as error:
        raise BencodeError(str(error) or "truncated") from None
    if end != len(data):
        raise BencodeError("trailing bytes")
    return value


def _decode(data: bytes, at: int) -> tuple[Any, int]:
    kind = data[at]
    if kind == 0x69:  # i<digits>e
        end = data.index(b"e", at)
        return int(data[at + 1 : end]), end + 1
    if kind == 0x6C:  # l ... e
        items = []
        at += 1
        while data[at] != 0x65:
            item, at = _decode(data, at)
            items.append(item)
        return items, at + 1
    if kind == 0x64:  # d ... e, keys in any order
        result: dict[bytes, Any] = {}
        at += 1
        while data[at] != 0x65:
            key, at = _decode(data, at)
            if not isinstance(key, bytes):
                raise BencodeError("a dictionary key is not a string")
            result[key], at = _decode(data, at)
        return result, at + 1
    if 0x30 <= kind <= 0x39:  # <length>:<bytes>
        colon = data.index(b":", at)
        start = colon + 1
        end = start + int(data[at:colon])
        if end > len(data):
            raise BencodeError("truncated string")
        return data[start:end], end
    raise BencodeError(f"unexpected byte {kind:#x} at {at}")
