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
control plane).

A delta carries only what changed since a version the edge holds (the control plane sends it
to an edge on that version; a one-trunk change is a few hundred bytes instead of 6 MB):

    trunkline-snapshot-delta/1
    {"base_version": B, "version": V, "content_hash": ..., "generated_at": ...,
     "replace": {...top-level keys other than trunks, whole...},
     "trunks": [...trunk objects added or changed...], "deleted_trunks": [...ids...]}

`decode` returns it as a `Delta`; `apply_delta` turns the base document and the delta into the
new document, which the edge compiles as any other. Pure: bytes in, documents out.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import orjson

from edge.slices import Steps, run_to_end

__all__ = [
    "DELTA_MAGIC",
    "MAGIC",
    "MEDIA_TYPE",
    "Delta",
    "SnapshotFormatError",
    "apply_delta",
    "decode",
    "encode_delta",
    "encode_lines",
]

MAGIC = b"trunkline-snapshot-lines/1\n"
DELTA_MAGIC = b"trunkline-snapshot-delta/1\n"
MEDIA_TYPE = "application/x-trunkline-snapshot-lines"
SPLIT_KEYS = ("trunks", "numbers")
TRUNKS_PER_LINE = 500
NUMBERS_PER_LINE = 5000


class SnapshotFormatError(ValueError):
    """The bytes are neither a snapshot document, snapshot lines nor a delta."""


class Delta(dict[str, Any]):
    """A decoded delta document (see the module's docstring); `base_version` is an int."""

    @property
    def base_version(self) -> int:
        value: int = self["base_version"]
        return value


def encode_lines(doc: Mapping[str, Any]) -> bytes:
    """`doc` as snapshot lines."""
    head = {key: ([] if key in SPLIT_KEYS else value) for key, value in doc.items()}
    parts = [MAGIC, orjson.dumps(head)]
    for key, per_line in (("trunks", TRUNKS_PER_LINE), ("numbers", NUMBERS_PER_LINE)):
        items = doc.get(key, [])
        for start in range(0, len(items), per_line):
            parts.append(b"\n" + orjson.dumps({key: items[start : start + per_line]}))
    return b"".join(parts)


def encode_delta(delta: dict[str, Any]) -> bytes:
    """`delta` (the module's docstring says what it holds) as it travels."""
    return DELTA_MAGIC + orjson.dumps(delta)


def decode(data: bytes) -> Any:
    """The snapshot document in `data` (lines or one JSON document), not yet validated:
    `EdgeConfig.compile` says what is wrong with its content; a `Delta` for a delta."""
    return run_to_end(decode_steps(data))


def decode_steps(data: bytes) -> Steps[Any]:
    """`decode` a line at a time (edge/slices.py); one JSON document is one step."""
    try:
        if data.startswith(DELTA_MAGIC):
            return _delta(orjson.loads(data[len(DELTA_MAGIC) :]))
        if not data.startswith(MAGIC):
            return orjson.loads(data)
        lines = _lines(data, len(MAGIC))
        doc = orjson.loads(next(lines))
        if not isinstance(doc, dict) or any(not isinstance(doc.get(k), list) for k in SPLIT_KEYS):
            raise SnapshotFormatError("the first line must be the document, with its lists")
        for number, line in enumerate(lines, start=2):
            yield
            piece = orjson.loads(line)
            if not isinstance(piece, dict) or not set(piece) <= set(SPLIT_KEYS):
                raise SnapshotFormatError(f"line {number}: expected trunks or numbers")
            for key, items in piece.items():
                doc[key].extend(items)
        return doc
    except orjson.JSONDecodeError as error:
        raise SnapshotFormatError(f"not JSON: {error}") from None


def _lines(data: bytes, start: int) -> Iterator[memoryview]:
    """The lines of `data` from `start`, as views: no copy of the whole (a split of 6 MB is
    one C call of several milliseconds, a stall of the event loop that decodes)."""
    view = memoryview(data)
    while True:
        end = data.find(b"\n", start)
        if end < 0:
            yield view[start:]
            return
        yield view[start:end]
        start = end + 1


def _delta(doc: Any) -> Delta:
    if not isinstance(doc, dict):
        raise SnapshotFormatError("a delta must be an object")
    if type(doc.get("base_version")) is not int or type(doc.get("version")) is not int:
        raise SnapshotFormatError("a delta needs integer base_version and version")
    if not isinstance(doc.get("replace"), dict) or "trunks" in doc["replace"]:
        raise SnapshotFormatError("a delta's replace must be an object without trunks")
    if not isinstance(doc.get("trunks"), list) or not isinstance(doc.get("deleted_trunks"), list):
        raise SnapshotFormatError("a delta's trunks and deleted_trunks must be lists")
    if any(not isinstance(trunk, dict) for trunk in doc["trunks"]):
        raise SnapshotFormatError("a delta's trunks must be objects")
    return Delta(doc)


def apply_delta(base: Mapping[str, Any], delta: Delta) -> dict[str, Any]:
    """The document that `delta` makes of `base` (the document of version
    `delta.base_version`). The unchanged trunk objects are `base`'s own, so the compiler
    recognises them as unchanged; trunks stay ordered by id."""
    doc = {**base, **delta["replace"]}
    for key in ("version", "content_hash", "generated_at"):
        doc[key] = delta.get(key)
    trunks = base.get("trunks")
    if not isinstance(trunks, list):
        raise SnapshotFormatError("the base document has no list of trunks")
    by_id = {trunk.get("id"): trunk for trunk in trunks if isinstance(trunk, dict)}
    for trunk_id in delta["deleted_trunks"]:
        by_id.pop(trunk_id, None)
    added = False
    for trunk in delta["trunks"]:
        added |= trunk.get("id") not in by_id
        by_id[trunk.get("id")] = trunk
    merged = list(by_id.values())
    if added:
        merged.sort(key=lambda trunk: trunk["id"] if type(trunk.get("id")) is int else -1)
    doc["trunks"] = merged
    return doc
