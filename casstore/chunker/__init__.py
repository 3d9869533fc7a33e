"""Split byte streams into chunks: content-defined (FastCDC) or row-aligned.

Two policies, chosen by the shape of the data:

* Text-like streams (the encoded state structure, long strings and bytes,
  files) use FastCDC, so an insertion shifts only the chunks around it.
  The structure stream gets small chunks (a chat step appends ~1 KB, so big
  chunks would rewrite tens of KB per step); blobs get larger ones.
* Arrays are cut at whole-row boundaries into fixed blocks: an appended row
  adds blocks at the end and an overwritten row changes one block, with no
  rolling hash to compute.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

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


class Chunker:
    """Cuts buffers into (offset, length) spans according to the repository's parameters."""

    def __init__(self, structure: CDCParams = STRUCTURE_CDC, blob: CDCParams = BLOB_CDC):
        self.structure = structure
        self.blob = blob
        self._cdc_structure = _fastcdc(structure)
        self._cdc_blob = _fastcdc(blob)

    def cut_structure(self, buf: memoryview) -> list[tuple[int, int]]:
        return _cut(self._cdc_structure, buf)

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
