"""How a config snapshot travels from the control plane to an edge: as lines.

A snapshot with 100,000 numbers is a 6 MB JSON document. Decoded in one piece it is one C call
that holds the GIL for ~50 ms, and the edge's event loop (SIP) stalls that long even though the
decoding runs in a worker thread. Sent as lines, each line decodes in a few milliseconds and
the loop runs in between. The document is the same either way (docs/snapshot.md):

    trunkline-snapshot-lines/1
    {...the document, with "trunks": [] and "numbers": []...}
    {"trunks": [...at most TRUNKS_PER_LINE...]}
    {"numbers": [...at most NUMBERS_PER_LINE...]}
    ...

`decode` also takes a plain JSON document (a snapshot file written by hand or by an older
control plane). Pure: bytes in, bytes out.
"""

from __future__ import annotations

from typing import Any

import orjson

__all__ = ["MAGIC", "MEDIA_TYPE", "SnapshotFormatError", "decode", "encode_lines"]

MAGIC = b"trunkline-snapshot-lines/1\n"
MEDIA_TYPE = "application/x-trunkline-snapshot-lines"
SPLIT_KEYS = ("trunks", "numbers")
TRUNKS_PER_LINE = 500
NUMBERS_PER_LINE = 5000


class SnapshotFormatError(ValueError):
    """The bytes are neither a snapshot document nor snapshot lines."""


def encode_lines(doc: dict[str, Any]) -> bytes:
    """`doc` as snapshot lines."""
    head = {key: ([] if key in SPLIT_KEYS else value) for key, value in doc.items()}
    parts = [MAGIC, orjson.dumps(head)]
    for key, per_line in (("trunks", TRUNKS_PER_LINE), ("numbers", NUMBERS_PER_LINE)):
        items = doc.get(key, [])
        for start in range(0, len(items), per_line):
            parts.append(b"\n" + orjson.dumps({key: items[start : start + per_line]}))
    return b"".join(parts)


def decode(data: bytes) -> Any:
    """The snapshot document in `data` (lines or one JSON document), not yet validated:
    `EdgeConfig.compile` says what is wrong with its content."""
    try:
        if not data.startswith(MAGIC):
            return orjson.loads(data)
        lines = data[len(MAGIC) :].split(b"\n")
        doc = orjson.loads(lines[0])
        if not isinstance(doc, dict) or any(not isinstance(doc.get(k), list) for k in SPLIT_KEYS):
            raise SnapshotFormatError("the first line must be the document, with its lists")
        for number, line in enumerate(lines[1:], start=2):
            piece = orjson.loads(line)
            if not isinstance(piece, dict) or not set(piece) <= set(SPLIT_KEYS):
                raise SnapshotFormatError(f"line {number}: expected trunks or numbers")
            for key, items in piece.items():
                doc[key].extend(items)
        return doc
    except orjson.JSONDecodeError as error:
        raise SnapshotFormatError(f"not JSON: {error}") from None
