"""Split byte streams into chunks: content-defined (FastCDC) or row-aligned.

Two policies, chosen by the shape of the data:

* Text-like streams (the encoded state structure, long strings and bytes,
  files) use FastCDC, so an insertion shifts only the chunks around it.
  The structure stream gets small chunks (a chat step appends ~1 KB, so big
  chunks would rewrite tens of KB per step); blobs get larger ones.
* Arrays are cut at whole-row boundaries into fixed blocks: an appended row
  adds blocks at the end and an overwritten row changes one block, with no
  rolling hash to compute.
* List streams (a conversation's messages, tool results) are cut only
  between items, where the codec says items end (see `cut_items`): an item
  of at least `item_min` bytes is a chunk of its own, smaller items are
  grouped by a content-defined rule on the items' own bytes. Appending an
  item then never rewrites the chunks of the items before it, an item
  edited in place changes only its own chunk, and the same message (of
  item_min bytes or more) yields the same chunk in any list it is an item of.
"""

from __future__ import annotations

import zlib
from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from typing import Iterator, Sequence

from pyfastcdc import FastCDC

from ..errors import ConfigurationError


@dataclass(frozen=True)
class CDCParams:
    """FastCDC parameters; pyfastcdc's effective mean is about avg + min."""

    min_size: int
    avg_size: int
    max_size: int

    def to_dict(self) -> dict:
        return {"min": self.min_size, "avg": self.avg_size, "max": self.max_size}

    @classmethod
    def from_dict(cls, d: dict) -> "CDCParams":
        try:
            return cls(int(d["min"]), int(d["avg"]), int(d["max"]))
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigurationError(f"invalid chunker parameters {d!r}") from e


STRUCTURE_CDC = CDCParams(512, 2048, 8192)
BLOB_CDC = CDCParams(4096, 16384, 65536)
ARRAY_BLOCK = 16384          # target bytes per row block for arrays below ARRAY_BIG
ARRAY_BIG = 256 << 20        # bigger arrays use ARRAY_BLOCK_BIG to keep chunk counts sane
ARRAY_BLOCK_BIG = 262144
ITEM_SELECT = 3              # a small item ends a group when the CRC-32 of its bytes has these bits zero (1 in 4)


class Chunker:
    """Cuts buffers into (offset, length) spans according to the repository's parameters."""

    def __init__(self, structure: CDCParams = STRUCTURE_CDC, blob: CDCParams = BLOB_CDC):
        self.structure = structure
        self.blob = blob
        self._cdc_structure = _fastcdc(structure)
        self._cdc_blob = _fastcdc(blob)

    def cut_structure(self, buf: memoryview) -> list[tuple[int, int]]:
        return _cut(self._cdc_structure, buf)

    @property
    def item_min(self) -> int:
        """List items at least this large are chunks of their own; groups of smaller ones reach it first."""
        return 2 * self.structure.min_size

    def cut_items(self, buf: memoryview, ends: Sequence[int]) -> list[tuple[int, int]]:
        """Chunk a list stream whose item i ends at ends[i], cutting only between items.

        An item of at least item_min bytes is a chunk by itself; one larger than
        the blob max_size (rare: strings that big left the item as blobs) is cut
        inside with the blob parameters. Runs of smaller items are grouped (see
        _group_items). Python works per run of small items, not per item.
        """
        import numpy as np  # only list streams need it
        ends_a = np.asarray(ends, dtype=np.int64)
        sizes = np.diff(ends_a, prepend=0)
        starts = (ends_a - sizes).tolist()
        # Items needing more than a span of their own: the small ones and the huge ones.
        special = np.flatnonzero((sizes < self.item_min) | (sizes > self.blob.max_size)).tolist()
        spans: list[tuple[int, int]] = []
        done = 0   # items before this index have spans
        k = 0
        while k < len(special):
            i = special[k]
            spans += zip(starts[done:i], sizes[done:i].tolist())
            if sizes[i] > self.blob.max_size:
                spans += [(starts[i] + off, n) for off, n in self.cut_blob(buf[starts[i]:ends[i]])]
                done, k = i + 1, k + 1
                continue
            run = k   # a run of consecutive small items: special[run..k-1]
            while k < len(special) and special[k] == i + k - run and sizes[special[k]] < self.item_min:
                k += 1
            done = i + k - run
            spans += self._group_items(buf, ends, i, done)
        spans += zip(starts[done:], sizes[done:].tolist())
        return spans

    def _group_items(self, buf: memoryview, ends: Sequence[int], first: int, stop: int) -> list[tuple[int, int]]:
        """Spans over the small items first..stop-1: a group ends after the first item that takes it
        to item_min bytes or more and whose CRC-32 selects it, or at the last item that keeps it
        within max_size, or at the end of the run. The rule reads only the items' own bytes, so an
        insertion shifts the cuts up to the next selected item and no further."""
        lo, hi = self.item_min, self.structure.max_size
        spans = []
        start = ends[first - 1] if first else 0
        while first < stop:
            last = bisect_right(ends, start + hi, first, stop) - 1
            cut = next((i for i in range(bisect_left(ends, start + lo, first, stop), last + 1)
                        if zlib.crc32(buf[ends[i - 1] if i else 0:ends[i]]) & ITEM_SELECT == 0), last)
            spans.append((start, ends[cut] - start))
            start, first = ends[cut], cut + 1
        return spans

    def cut_blob(self, buf: memoryview, row_bytes: int = 0) -> list[tuple[int, int]]:
        """Chunk a big leaf: row blocks when row_bytes > 0, FastCDC otherwise."""
        if row_bytes > 0:
            return list(row_blocks(len(buf), row_bytes))
        return _cut(self._cdc_blob, buf)

    def cut_file(self, path: str) -> Iterator[tuple[int, memoryview]]:
        """Stream a file through FastCDC; each chunk's data is valid until the next one."""
        for c in self._cdc_blob.cut_file(path):
            yield c.offset, c.data


def row_blocks(nbytes: int, row_bytes: int) -> Iterator[tuple[int, int]]:
    """Fixed blocks of whole rows, about ARRAY_BLOCK bytes each (at least one row)."""
    target = ARRAY_BLOCK if nbytes < ARRAY_BIG else ARRAY_BLOCK_BIG
    block = max(1, target // row_bytes) * row_bytes
    for off in range(0, nbytes, block):
        yield off, min(block, nbytes - off)


def _fastcdc(p: CDCParams) -> FastCDC:
    return FastCDC(p.avg_size, min_size=p.min_size, max_size=p.max_size)


def _cut(cdc: FastCDC, buf: memoryview) -> list[tuple[int, int]]:
    if len(buf) == 0:
        return []
    return [(c.offset, c.length) for c in cdc.cut_buf(buf)]
