"""ShardedDict: a dict's answers, its entries spread so that no rebuild takes them all."""

from __future__ import annotations

import sys

from edge.sip.tables import SHARDS, ShardedDict


class Item:
    """Hashed by identity, as transactions and calls are."""

    __slots__ = ()


class Call:
    """A larger one (another stride between addresses)."""

    __slots__ = tuple("abcdefghijkl")


def test_it_answers_as_a_dict_does() -> None:
    table: ShardedDict[object, str] = ShardedDict()
    keys: list[object] = [Item() for _ in range(100)] + [f"call-{n}" for n in range(100)]
    keys += [(f"z9hG4bK{n}", "INVITE") for n in range(100)]
    reference = {key: str(position) for position, key in enumerate(keys)}
    for key, value in reference.items():
        table[key] = value
    assert len(table) == len(reference) == 300
    assert all(table.get(key) == value and key in table for key, value in reference.items())
    assert set(table) == set(reference)
    assert dict(table.items()) == reference
    assert sorted(table.values()) == sorted(reference.values())
    assert table.get("missing") is None and "missing" not in table
    assert table.pop("missing") is None
    assert table.pop(keys[0]) == "0" and keys[0] not in table and len(table) == 299
    table[keys[1]] = "replaced"
    assert table.get(keys[1]) == "replaced" and len(table) == 299
    table.compact()
    assert len(table) == 299 and table.get(keys[1]) == "replaced"


def test_no_part_holds_much_more_than_its_share() -> None:
    # What a rebuild costs is the size of the part that rebuilds: identity-hashed objects,
    # Call-IDs and transaction keys must all spread over every part.
    makers = (
        lambda n: Item(),
        lambda n: Call(),
        lambda n: f"{n:08x}@pbx",
        lambda n: (f"z9hG4bK{n}", "BYE"),
    )
    for make in makers:
        table: ShardedDict[object, int] = ShardedDict()
        keep = [make(n) for n in range(16_000)]
        for n, key in enumerate(keep):
            table[key] = n
        sizes = [len(part) for part in table._shards]
        assert len(sizes) == SHARDS
        assert max(sizes) < 2 * len(keep) / SHARDS, sizes


def test_compact_gives_back_what_the_parts_kept() -> None:
    table: ShardedDict[int, int] = ShardedDict()
    for n in range(50_000):
        table[n] = n
    for n in range(50_000 - 10):
        table.pop(n)
    busiest = sys.getsizeof(table)
    table.compact()
    assert sys.getsizeof(table) < busiest / 10
    assert sorted(table.values()) == list(range(50_000 - 10, 50_000))
