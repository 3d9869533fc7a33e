"""A size-bounded LRU of verified plaintext chunks and tree nodes, keyed by their hash.

Entries are named by the hash of their bytes, so they never go stale: a pack
that gc rewrites or deletes changes where a chunk lives, never what it is.
Only bytes that were hashed and matched their name go in, so a hit needs no
I/O, no decompression and no re-hashing. Plaintext is held in memory, as the
state it came from is; an encrypted repository's cache holds decrypted bytes.

The Repository fills it from small reads and from writes of small changes
(an agent that restores its latest checkpoint at the start of every step
then reads memory, not packs). Restores bigger than `admit_limit` bypass it,
so one 1 GiB restore neither flushes it nor pays for copies into it.
`verify` never reads through it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Iterable

DEFAULT_CACHE_BYTES = 64 << 20
ENTRY_OVERHEAD = 176   # bytes charged per entry besides its data (measured: key object 65, bytes header 33, slot ~75)
HASH_KEY = 32          # the key length ENTRY_OVERHEAD covers; a longer key is charged its extra bytes
ADMIT_FRACTION = 4     # a read or write fills the cache only when it is at most 1/4 of it


class ChunkCache:
    """Thread-safe LRU of hash -> bytes holding at most max_bytes (data plus ENTRY_OVERHEAD each).

    Any bytes key works (the LangGraph saver keys its pickled messages by their serialized
    form); one longer than a hash is charged its extra bytes too.
    """

    def __init__(self, max_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        if max_bytes < 0:
            raise ValueError(f"cache size must be >= 0 bytes, got {max_bytes}")
        self.max_bytes = max_bytes
        self.size = 0
        self._data: OrderedDict[bytes, bytes] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def admit_limit(self) -> int:
        """The most bytes one read or write may add; bigger ones bypass the cache."""
        return self.max_bytes // ADMIT_FRACTION

    def __len__(self) -> int:
        return len(self._data)

    def get_many(self, hashes: Iterable[bytes]) -> dict[bytes, bytes]:
        """The cached ones of hashes, each marked as recently used."""
        out = {}
        with self._lock:
            data = self._data
            for h in hashes:
                value = data.get(h)
                if value is not None:
                    data.move_to_end(h)
                    out[h] = value
        return out

    def put_many(self, items: Iterable[tuple[bytes, bytes]]) -> None:
        """Insert verified (hash, bytes) pairs, evicting the least recently used beyond max_bytes."""
        with self._lock:
            data = self._data
            for h, value in items:
                cost = _cost(h, value)
                if cost > self.max_bytes:
                    continue
                old = data.pop(h, None)
                if old is not None:
                    self.size -= _cost(h, old)
                data[h] = value
                self.size += cost
            while self.size > self.max_bytes:
                h, old = data.popitem(last=False)
                self.size -= _cost(h, old)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self.size = 0


def _cost(key: bytes, value: bytes) -> int:
    return len(value) + ENTRY_OVERHEAD + max(0, len(key) - HASH_KEY)
