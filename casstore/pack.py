"""Pack objects: many stored chunks in one immutable object, with a trailer.

Layout (all integers little-endian)::

    offset 0            chunk 0 stored bytes
                        chunk 1 stored bytes
                        ...
    data_end            trailer: N entries of ENTRY_SIZE (48) bytes
                            0   32s  hash       BLAKE3 of the chunk's raw bytes
                            32  B    kind       0 data chunk, 1 tree node
                            33  B    method     0 raw, 1 zstd, 2 zstd + byte shuffle,
                                                3 tree node with narrowed sizes (tree.narrow_node),
                                                4 zstd + byte shuffle, plane by plane (compress.py)
                            34  H    itemsize   shuffle width (0 unless method 2 or 4)
                            36  I    offset     start of the stored bytes
                            40  I    stored_len
                            44  I    raw_len
    size - 32           footer: I N, I format version, 16s salt, 8s magic b"CASPACK1"

Format version 1 is the plain layout above. Version 2 (encrypted
repositories, see crypto.py) keeps the layout, but each chunk's stored bytes
are sealed (nonce + AEAD of the compressed bytes, the chunk id
as associated data; stored_len includes the 28 bytes of nonce and tag) and
the trailer is sealed as a whole (N x 48 + 28 bytes, associated data
"casstore trailer " + the footer's salt, which binds it to this pack). The
footer stays plain, so the pack's size, entry count and hash can be checked
without the key; rebuilding the index from packs needs the key.

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
from .crypto import AD_TRAILER, NULL_SEALER, OVERHEAD, Sealer
from .errors import IntegrityError

MAGIC = b"CASPACK1"
VERSION = 1
VERSION_SEALED = 2
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
    """Accumulates stored chunks in memory; finalize() returns (pack id, pack bytes, entries).

    pieces() is the same pack left in pieces (the stored chunks as added, then
    trailer and footer), hashed piece by piece: a local put writes them with
    writev, so a big pack is never joined into one buffer.
    """

    def __init__(self, sealer: Sealer = NULL_SEALER) -> None:
        self.sealer = sealer
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
        pack_id, pieces, entries = self.pieces()
        return pack_id, b"".join(pieces), entries

    def pieces(self) -> tuple[bytes, list[bytes | memoryview], list[PackEntry]]:
        """(pack id, the pack's bytes as pieces in order, entries)."""
        pieces = [*self._parts, self._tail()]
        hasher = blake3.blake3()
        for piece in pieces:
            hasher.update(piece)
        return hasher.digest(), pieces, self._entries

    def _tail(self) -> bytes:
        """Trailer (sealed in an encrypted repository) and footer, with a fresh salt."""
        trailer = b"".join(ENTRY.pack(e.hash, e.kind, e.method, e.itemsize, e.offset, e.stored_len, e.raw_len)
                           for e in self._entries)
        salt = os.urandom(16)
        version = VERSION
        if self.sealer.encrypted:
            trailer, version = self.sealer.seal(trailer, AD_TRAILER + salt), VERSION_SEALED
        return trailer + FOOTER.pack(len(self._entries), version, salt, MAGIC)


def parse_footer(footer: bytes, pack_size: int) -> int:
    """Validate the footer and return the trailer length in bytes (sealed or not)."""
    return read_footer(footer, pack_size)[3]


def read_footer(footer: bytes, pack_size: int) -> tuple[int, int, bytes, int]:
    """Validate the footer: (entry count, version, salt, trailer length in bytes)."""
    if pack_size < FOOTER_SIZE or len(footer) != FOOTER_SIZE:
        raise IntegrityError(f"pack of {pack_size} bytes is smaller than its footer")
    count, version, salt, magic = FOOTER.unpack(footer)
    if magic != MAGIC:
        raise IntegrityError("pack footer has a wrong magic number")
    if version not in (VERSION, VERSION_SEALED):
        raise IntegrityError(f"pack format version {version} is not supported")
    if count > MAX_ENTRIES:
        raise IntegrityError(f"pack claims {count} entries, above the {MAX_ENTRIES} bound")
    trailer_len = count * ENTRY_SIZE + (NULL_SEALER.overhead if version == VERSION else OVERHEAD)
    if trailer_len + FOOTER_SIZE > pack_size:
        raise IntegrityError("pack trailer is larger than the pack")
    return count, version, salt, trailer_len


def open_trailer(trailer: bytes, footer: bytes, pack_size: int, sealer: Sealer, where: str = "pack") -> list[PackEntry]:
    """Decode a trailer read with its footer, opening it when sealed; the pack's mode must match the repository's."""
    _count, version, salt, trailer_len = read_footer(footer, pack_size)
    if (version == VERSION_SEALED) != sealer.encrypted:
        raise IntegrityError(f"{where}: {'an encrypted' if version == VERSION_SEALED else 'a plain'} pack "
                             f"in {'an encrypted' if sealer.encrypted else 'an unencrypted'} repository")
    data_end = pack_size - FOOTER_SIZE - trailer_len
    if version == VERSION_SEALED:
        trailer = sealer.open(trailer, AD_TRAILER + salt, f"{where} trailer")
    return parse_trailer(trailer, pack_size, data_end)


def parse_trailer(trailer: bytes, pack_size: int, data_end: int | None = None) -> list[PackEntry]:
    """Decode plain trailer entries, checking each range lies in the data region."""
    if data_end is None:
        data_end = pack_size - FOOTER_SIZE - len(trailer)
    if len(trailer) % ENTRY_SIZE:
        raise IntegrityError(f"pack trailer of {len(trailer)} bytes is not a whole number of entries")
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


def read_entries(data: bytes | memoryview, sealer: Sealer = NULL_SEALER, where: str = "pack") -> list[PackEntry]:
    """Entries of a whole pack held in memory (used by verify and repack)."""
    footer = bytes(data[-FOOTER_SIZE:])
    trailer_len = parse_footer(footer, len(data))
    start = len(data) - FOOTER_SIZE - trailer_len
    return open_trailer(bytes(data[start:len(data) - FOOTER_SIZE]), footer, len(data), sealer, where)
