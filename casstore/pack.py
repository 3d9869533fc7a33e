"""Pack objects: many stored chunks in one immutable object, with a trailer.

Layout (all integers little-endian)::

    offset 0            chunk 0 stored bytes
                        chunk 1 stored bytes
                        ...
    data_end            trailer: N entries of ENTRY_SIZE (48) bytes
                            0   32s  hash       BLAKE3 of the chunk's raw bytes
                            32  B    kind       0 data chunk, 1 tree node
                            33  B    method     0 raw, 1 zstd, 2 zstd + byte shuffle
                            34  H    itemsize   shuffle width (0 unless method 2)
                            36  I    offset     start of the stored bytes
                            40  I    stored_len
                            44  I    raw_len
    size - 32           footer: I N, I format version, 16s salt, 8s magic b"CASPACK1"

The pack's name is the BLAKE3 hash of all its bytes. The random salt makes
every pack written unique, even with the same chunks: a writer that stores
fresh copies of chunks in a pack gc condemned must never produce that same
pack name again (gc would delete the copy with the doomed pack). The trailer makes each
pack self-describing, so the index can be rebuilt from packs alone. Every
number read back is checked against the pack's size and named bounds before
it is trusted.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

import blake3

from .compress import MAX_CHUNK
from .errors import IntegrityError

MAGIC = b"CASPACK1"
VERSION = 1
ENTRY = struct.Struct("<32sBBHIII")
FOOTER = struct.Struct("<II16s8s")
ENTRY_SIZE = ENTRY.size
FOOTER_SIZE = FOOTER.size
MAX_ENTRIES = 1 << 20
MAX_PACK = 1 << 31

KIND_DATA = 0
KIND_NODE = 1


@dataclass(frozen=True)
class PackEntry:
    hash: bytes
    kind: int
    method: int
    itemsize: int
    offset: int
    stored_len: int
    raw_len: int


class PackWriter:
    """Accumulates stored chunks in memory; finalize() returns (pack id, pack bytes, entries)."""

    def __init__(self) -> None:
        self._parts: list[bytes | memoryview] = []
        self._entries: list[PackEntry] = []
        self.size = 0

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, hash: bytes, kind: int, method: int, itemsize: int, stored: bytes | memoryview, raw_len: int) -> None:
        n = len(stored)
        self._entries.append(PackEntry(hash, kind, method, itemsize, self.size, n, raw_len))
        self._parts.append(stored)
        self.size += n

    def finalize(self) -> tuple[bytes, bytes, list[PackEntry]]:
        trailer = b"".join(ENTRY.pack(e.hash, e.kind, e.method, e.itemsize, e.offset, e.stored_len, e.raw_len)
                           for e in self._entries)
        data = b"".join([*self._parts, trailer, FOOTER.pack(len(self._entries), VERSION, os.urandom(16), MAGIC)])
        return blake3.blake3(data).digest(), data, self._entries


def parse_footer(footer: bytes, pack_size: int) -> int:
    """Validate the footer and return the trailer length in bytes."""
    if pack_size < FOOTER_SIZE or len(footer) != FOOTER_SIZE:
        raise IntegrityError(f"pack of {pack_size} bytes is smaller than its footer")
    count, version, _salt, magic = FOOTER.unpack(footer)
    if magic != MAGIC:
        raise IntegrityError("pack footer has a wrong magic number")
    if version != VERSION:
        raise IntegrityError(f"pack format version {version} is not supported")
    if count > MAX_ENTRIES:
        raise IntegrityError(f"pack claims {count} entries, above the {MAX_ENTRIES} bound")
    trailer_len = count * ENTRY_SIZE
    if trailer_len + FOOTER_SIZE > pack_size:
        raise IntegrityError("pack trailer is larger than the pack")
    return trailer_len


def parse_trailer(trailer: bytes, pack_size: int) -> list[PackEntry]:
    """Decode trailer entries, checking each range lies in the data region."""
    data_end = pack_size - FOOTER_SIZE - len(trailer)
    entries = []
    for i in range(0, len(trailer), ENTRY_SIZE):
        e = PackEntry(*ENTRY.unpack_from(trailer, i))
        check_entry(e, data_end)
        entries.append(e)
    return entries


def check_entry(e: PackEntry, data_end: int) -> None:
    if e.kind not in (KIND_DATA, KIND_NODE):
        raise IntegrityError(f"chunk {e.hash.hex()}: unknown kind {e.kind}")
    if e.raw_len > MAX_CHUNK:
        raise IntegrityError(f"chunk {e.hash.hex()} claims {e.raw_len} raw bytes, above the {MAX_CHUNK} bound")
    if e.offset + e.stored_len > data_end:
        raise IntegrityError(f"chunk {e.hash.hex()} range [{e.offset}, +{e.stored_len}) runs past the pack data ({data_end} bytes)")


def read_entries(data: bytes | memoryview) -> list[PackEntry]:
    """Entries of a whole pack held in memory (used by verify and repack)."""
    trailer_len = parse_footer(bytes(data[-FOOTER_SIZE:]), len(data))
    start = len(data) - FOOTER_SIZE - trailer_len
    return parse_trailer(bytes(data[start:len(data) - FOOTER_SIZE]), len(data))
