"""Snapshot lines decode to the same document as the plain JSON form; bad input is refused."""

import orjson
import pytest

from edge.snapshot_wire import MAGIC, SnapshotFormatError, decode, encode_lines
from edge.tests.factories import big_snapshot_doc, snapshot_doc


def test_lines_and_plain_json_decode_to_the_same_document() -> None:
    doc = big_snapshot_doc()
    data = encode_lines(doc)
    assert data.startswith(MAGIC) and data.count(b"\n") > 10
    assert decode(data) == doc == decode(orjson.dumps(doc))


def test_a_small_snapshot_round_trips() -> None:
    doc = snapshot_doc()
    assert decode(encode_lines(doc)) == doc


@pytest.mark.parametrize(
    "data",
    [
        b"not json",
        MAGIC + b'{"trunks": []}',
        MAGIC + b'{"trunks": [], "numbers": []}\n{"x": []}',
        MAGIC + b'{"trunks": [], "numbers": []}\n{"numbers": [}',
    ],
)
def test_malformed_input_is_a_format_error(data: bytes) -> None:
    with pytest.raises(SnapshotFormatError):
        decode(data)
