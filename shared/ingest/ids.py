"""The ids seen so far in a file, in about 8 bytes each, to report duplicates.

Each id is kept as a 64-bit BLAKE2b digest: recent ones in a small set, older ones in one sorted numpy
array that the set is merged into when it fills; a 4 MB bitmap over the digests' low bits answers "new"
for most new ids without the binary search. A million ids take 8 MB plus the bitmap (a set of digests
would take about 100 MB). Two different ids share a digest with probability about n^2 / 2^65: 3e-8 for a
million ids, a false duplicate report at worst.

`dump()` gives the digests in 8 bytes each (plus a 16-byte header) and `load()` takes them back, so a read
that resumes in another process still reports duplicates of ids read before; `SeenIds.of(ids)` rebuilds
the same set from the ids themselves (those of the records already staged).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable
from hashlib import blake2b

import numpy as np

__all__ = ["SeenIds"]

_MAGIC = b"embedpipe-ids-1\n"  # 16 bytes: the format of `dump`

_RECENT_MAX = 1 << 17
_BITMAP_BITS = 1 << 25  # 4 MB: at a million ids, 3% of new ids need the binary search


class SeenIds:
    def __init__(self, recent_max: int = _RECENT_MAX):
        self._recent: set[int] = set()
        self._recent_max = recent_max
        self._sorted = np.empty(0, dtype=np.int64)
        self._view = memoryview(self._sorted)  # bisect on a memoryview beats searchsorted for one key
        self._bitmap = bytearray(_BITMAP_BITS // 8)

    def __len__(self) -> int:
        return len(self._recent) + int(self._sorted.size)

    @classmethod
    def of(cls, record_ids: Iterable[str]) -> SeenIds:
        """The set after adding `record_ids` in turn."""
        seen = cls()
        for record_id in record_ids:
            seen.add(record_id)
        return seen

    def dump(self) -> bytes:
        """The digests, sorted, in 8 bytes each after a 16-byte header."""
        if self._recent:
            self._merge()
        return _MAGIC + self._sorted.astype("<i8", copy=False).tobytes()

    @classmethod
    def load(cls, data: bytes) -> SeenIds:
        """The set `dump` gave `data` of. Raises ValueError for anything else."""
        if not data.startswith(_MAGIC) or (len(data) - len(_MAGIC)) % 8:
            raise ValueError("not a dump of SeenIds: it must start with the header SeenIds.dump() writes, "
                             "followed by 8 bytes per id")
        keys = np.frombuffer(data, dtype="<i8", offset=len(_MAGIC)).astype(np.int64)
        if keys.size > 1 and not bool(np.all(keys[1:] > keys[:-1])):
            raise ValueError("not a dump of SeenIds: the ids' digests are not in strictly increasing order")
        seen = cls()
        seen._sorted = keys
        seen._view = memoryview(keys)
        bits = keys & (_BITMAP_BITS - 1)
        bitmap = np.zeros(_BITMAP_BITS // 8, dtype=np.uint8)
        np.bitwise_or.at(bitmap, bits >> 3, (1 << (bits & 7)).astype(np.uint8))
        seen._bitmap = bytearray(bitmap.tobytes())
        return seen

    def add(self, record_id: str) -> bool:
        """Remember `record_id`; False when it was already seen."""
        key = int.from_bytes(blake2b(record_id.encode("utf-8", "surrogatepass"), digest_size=8).digest(),
                             "little", signed=True)
        bit = key & (_BITMAP_BITS - 1)
        byte, mask = bit >> 3, 1 << (bit & 7)
        bitmap = self._bitmap
        if bitmap[byte] & mask:
            if key in self._recent:
                return False
            older = self._view
            index = bisect_left(older, key)
            if index < len(older) and older[index] == key:
                return False
        else:
            bitmap[byte] |= mask
        self._recent.add(key)
        if len(self._recent) >= self._recent_max:
            self._merge()
        return True

    def _merge(self) -> None:
        recent = np.fromiter(self._recent, dtype=np.int64, count=len(self._recent))
        merged = np.concatenate((self._sorted, recent))
        merged.sort(kind="stable")  # two sorted runs: timsort merges them in linear time
        self._sorted = merged
        self._view = memoryview(merged)
        self._recent = set()
