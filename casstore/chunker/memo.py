"""Recognise the unchanged start of a stream instead of cutting and hashing it again.

An agent's state mostly grows at its end: a snapshot's list streams start with
the bytes of the same lineage's previous snapshot. A cut depends only on the
bytes before it and, in a list stream, on the item right after it (a run of
small items ends where a big item starts). So when a new stream starts with
the previous stream's bytes up to the start of its last span, every span
before the last two is certain to come out again, with the same hash. One
BLAKE3 call over that prefix (several GB/s, against a Python step per chunk
for cutting and hashing) checks it; only the rest is cut and hashed.

Only (offsets, lengths, hashes) and one digest per stream are kept, never the
data, so a buffer changed after the snapshot cannot make a stale hash look current.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from operator import itemgetter
from typing import Any, Hashable

import blake3

MIN_SPANS = 8          # fewer reusable spans than this: cutting again is as cheap as checking
MAX_LINEAGES = 256     # lineages remembered (a few KB each)


@dataclass(frozen=True)
class Known:
    """The reusable start of a stream: its spans' (hash, length) and where cutting resumes."""

    entries: list[tuple[bytes, int]]
    resume: int         # end of the reusable spans
    check_end: int      # the new stream must equal the old one on [0, check_end)
    digest: bytes       # BLAKE3 of those bytes

    def offsets(self) -> list[int]:
        """Start offset of each reusable span (computed only when a chunk's data is needed)."""
        out, at = [], 0
        for _, n in self.entries:
            out.append(at)
            at += n
        return out


class StreamMemo:
    """Per lineage and stream position, what the previous snapshot's stream started with."""

    def __init__(self, max_lineages: int = MAX_LINEAGES) -> None:
        self.max_lineages = max_lineages
        self._known: OrderedDict[Hashable, dict[int, Known]] = OrderedDict()

    def lookup(self, lineage: Hashable, position: int, data: memoryview) -> tuple[Known, Any] | None:
        """(the reusable start, the BLAKE3 state over data[:check_end]) if data begins like the
        remembered stream, else None; pass the state on to remember() so it need not hash that again."""
        known = self._known.get(lineage, {}).get(position)
        if known is None or len(data) < known.check_end:
            return None
        hasher = blake3.blake3(data[:known.check_end])
        if hasher.digest() != known.digest:
            return None
        return known, hasher

    def remember(self, lineage: Hashable, position: int, data: memoryview,
                 entries: list[tuple[bytes, int]], found: tuple[Known, Any] | None = None) -> None:
        """Record a stream cut from offset 0 into entries (hash, length), in order; found is what
        lookup() returned for this same data, if anything."""
        streams = self._known.setdefault(lineage, {})
        self._known.move_to_end(lineage)
        while len(self._known) > self.max_lineages:
            self._known.popitem(last=False)
        if len(entries) < MIN_SPANS + 2:
            streams.pop(position, None)
            return
        reuse = entries[:-2]
        resume = sum(map(itemgetter(1), reuse))
        check_end = resume + entries[-2][1]
        if found is not None and found[0].check_end <= check_end:  # extend the hash lookup() took
            hasher = found[1]
            hasher.update(data[found[0].check_end:check_end])
        else:
            hasher = blake3.blake3(data[:check_end])
        streams[position] = Known(reuse, resume, check_end, hasher.digest())

    def forget(self, lineage: Hashable | None = None) -> None:
        """Drop what is known (of one lineage, or all: e.g. after the index was rebuilt)."""
        if lineage is None:
            self._known.clear()
        else:
            self._known.pop(lineage, None)
