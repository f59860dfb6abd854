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


def test_a_delta_makes_the_new_document_of_its_base() -> None:
    from edge.snapshot_wire import Delta, apply_delta, encode_delta
    from edge.tests.factories import customer_doc, trunk_doc

    base = snapshot_doc(version=5, trunks=[trunk_doc(id=1), trunk_doc(id=3)])
    new = snapshot_doc(
        version=6,
        customers=[customer_doc(), customer_doc(id=2)],
        trunks=[trunk_doc(id=2, customer=2), trunk_doc(id=3, max_cps=1)],
    )
    delta = decode(
        encode_delta(
            {
                "base_version": 5,
                "version": 6,
                "content_hash": new["content_hash"],
                "generated_at": new.get("generated_at"),
                "replace": {"customers": new["customers"]},
                "trunks": [new["trunks"][0], new["trunks"][1]],
                "deleted_trunks": [1],
            }
        )
    )
    assert isinstance(delta, Delta) and delta.base_version == 5
    assert apply_delta(base, delta) == new


@pytest.mark.parametrize(
    "body",
    [
        b"[]",
        b'{"base_version": "5", "version": 6, "replace": {}, "trunks": [], "deleted_trunks": []}',
        b'{"base_version": 5, "version": 6, "replace": {"trunks": []}, "trunks": [],'
        b' "deleted_trunks": []}',
        b'{"base_version": 5, "version": 6, "replace": {}, "trunks": [1], "deleted_trunks": []}',
    ],
)
def test_a_malformed_delta_is_a_format_error(body: bytes) -> None:
    from edge.snapshot_wire import DELTA_MAGIC

    with pytest.raises(SnapshotFormatError):
        decode(DELTA_MAGIC + body)
