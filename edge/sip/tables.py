"""A table for hundreds of thousands of entries that come and go, without one insertion paying
for rebuilding all of them.

An edge keeps every finished call's transactions for 32 s (RFC 3261 17), so at R calls a second
its tables hold about 32 R entries each at a constant size while entries come and go. A CPython
dict in that state rebuilds itself whole each time its deleted slots run out, and the insertion
that finds none left pays O(size) for it: 10.5 ms for a dict of 242,400 objects in isolation
(the transactions lingering at 2,400 calls/s), 35-70 ms inside an edge at that rate, where the
loop stalled 34, 36 and 44 s into every soak (issue 15; `bench/edge_core.py --stalls`).

`ShardedDict` spreads its entries over `SHARDS` dicts by the key's hash, so that a rebuild is
a sixteenth of the table; the work overall is the same. Only what the core's tables use: keys
hashable, values never None (`get` and `pop` answer None for a missing key).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Final, Generic, TypeVar

__all__ = ["SHARDS", "ShardedDict"]

SHARDS: Final = 16  # a power of two: the part is chosen by the hash's low bits
_MASK: Final = SHARDS - 1

K = TypeVar("K")
V = TypeVar("V")


class ShardedDict(Generic[K, V]):
    """A dict in `SHARDS` parts by hash: the same lookups, a sixteenth of the rebuild."""

    __slots__ = ("_shards",)

    def __init__(self) -> None:
        self._shards: list[dict[K, V]] = [{} for _ in range(SHARDS)]

    # The part of a key: `h ^ (h >> 4) ^ (h >> 8)`, masked. An object's hash is its address
    # shifted by 4 bits, and objects of one size sit at a fixed stride: the low bits alone left
    # half or more of the parts empty; folding in the next eight bits spreads them
    # (test_tables). Written out in each lookup, not a helper method: interpreted, a method
    # call for it in 46 lookups a call was 1 % of the core's instructions
    # (`bench/edge_core.py --interpreted`: 3.41 M a call with it, 3.38 M without).

    def get(self, key: K) -> V | None:
        h = hash(key)
        return self._shards[(h ^ (h >> 4) ^ (h >> 8)) & _MASK].get(key)

    def __setitem__(self, key: K, value: V) -> None:
        h = hash(key)
        self._shards[(h ^ (h >> 4) ^ (h >> 8)) & _MASK][key] = value

    def pop(self, key: K) -> V | None:
        """Remove `key` and return its value; None if it was not there."""
        h = hash(key)
        return self._shards[(h ^ (h >> 4) ^ (h >> 8)) & _MASK].pop(key, None)

    def __contains__(self, key: object) -> bool:
        h = hash(key)
        return key in self._shards[(h ^ (h >> 4) ^ (h >> 8)) & _MASK]

    def __len__(self) -> int:
        return sum([len(shard) for shard in self._shards])

    def __iter__(self) -> Iterator[K]:
        for shard in self._shards:
            yield from shard

    def __sizeof__(self) -> int:
        """What the parts take too (`sys.getsizeof`: the memory a quiet edge gives back)."""
        return object.__sizeof__(self) + sum([sys.getsizeof(shard) for shard in self._shards])

    def items(self) -> Iterator[tuple[K, V]]:
        for shard in self._shards:
            yield from shard.items()

    def values(self) -> Iterator[V]:
        for shard in self._shards:
            yield from shard.values()

    def compact(self) -> None:
        """Give back what the parts kept from when they were larger (a dict keeps its largest
        table after its entries go): each is copied at its present size. O(entries)."""
        self._shards = [dict(shard) for shard in self._shards]
