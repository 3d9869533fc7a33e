"""The chunk tree: a content-defined Merkle tree over a snapshot's chunk list.

A snapshot's chunks (hash, raw length) are grouped into leaf nodes, cut after
any entry whose hash has its low FANOUT_BITS bits zero (about 8 entries a
node), then the node hashes are grouped the same way, level by level, up to
one root. Because cuts depend only on content, consecutive snapshots share
every node but the path to what changed: a chat step rewrites a few hundred
bytes of tree, not a list of every chunk (as prolly trees and Xet's
aggregated hashes do). The root hash is the snapshot's Merkle root, and the
same nodes give inclusion proofs.

Node bytes: b"T", level (u8), count (u16 LE), then count x (32-byte hash,
u64 LE size); size is a chunk's raw length at level 0, a subtree's raw bytes
above.

Node ids come from the repository's hasher (plain BLAKE3, or BLAKE3 keyed
with the id key in an encrypted repository, see crypto.py): every function
that hashes takes it as `digest`, plain BLAKE3 by default. Checking a proof
of an encrypted repository therefore needs that repository's id key.
"""

from __future__ import annotations

import struct
from bisect import bisect_right
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

import blake3

from .errors import IntegrityError

FANOUT_BITS = 3
MAX_FANOUT = 64
MAX_HEIGHT = 16
_HEAD = struct.Struct("<cBH")
_ITEM = struct.Struct("<32sQ")
_MASK = (1 << FANOUT_BITS) - 1

Entry = tuple[bytes, int]
Digest = Callable[[bytes], bytes]


def encode_node(level: int, entries: list[Entry]) -> bytes:
    return _HEAD.pack(b"T", level, len(entries)) + b"".join(_ITEM.pack(h, s) for h, s in entries)


_WIDTHS = {2: "H", 4: "I"}


def narrow_node(data: bytes | memoryview) -> bytes | None:
    """A node's compact stored form: the header, a width byte, the hashes, then every size in
    the fewest bytes (2 or 4) that hold them all; None when sizes need all 8 bytes.

    A leaf's sizes are chunk lengths (under 64 KiB), so 6 of each entry's 40 bytes are
    zeros that zstd, on a node of a few hundred bytes, does not win back.
    """
    count = _HEAD.unpack_from(data, 0)[2]
    sizes = _fields(f"<{'32xQ' * count}").unpack_from(data, _HEAD.size)
    top = max(sizes, default=0)
    width = 2 if top < 1 << 16 else 4 if top < 1 << 32 else 0
    if not width:
        return None
    hashes = _fields(f"<{'32s8x' * count}").unpack_from(data, _HEAD.size)
    return b"".join([bytes(data[:_HEAD.size]), bytes([width]), *hashes,
                     _fields(f"<{count}{_WIDTHS[width]}").pack(*sizes)])


def widen_node(stored: bytes | memoryview, raw_len: int) -> bytes:
    """The node bytes narrow_node() stored (which the node's hash then checks)."""
    if len(stored) < _HEAD.size + 1:
        raise IntegrityError("narrowed tree node is shorter than its header")
    count = _HEAD.unpack_from(stored, 0)[2]
    width = stored[_HEAD.size]
    if width not in _WIDTHS or len(stored) != _HEAD.size + 1 + count * (32 + width) or \
            raw_len != _HEAD.size + count * _ITEM.size:
        raise IntegrityError(f"narrowed tree node of {len(stored)} bytes does not match its header")
    hashes = _fields(f"<{'32s' * count}").unpack_from(stored, _HEAD.size + 1)
    sizes = _fields(f"<{count}{_WIDTHS[width]}").unpack_from(stored, _HEAD.size + 1 + 32 * count)
    return bytes(stored[:_HEAD.size]) + b"".join(map(_ITEM.pack, hashes, sizes))


@lru_cache(maxsize=1024)
def _fields(fmt: str) -> struct.Struct:
    return struct.Struct(fmt)


def decode_node(data: bytes | memoryview, expect_level: int | None = None) -> tuple[int, list[Entry]]:
    if len(data) < _HEAD.size:
        raise IntegrityError("tree node is shorter than its header")
    tag, level, count = _HEAD.unpack_from(data, 0)
    if tag != b"T" or len(data) != _HEAD.size + count * _ITEM.size or count > MAX_FANOUT:
        raise IntegrityError(f"tree node header does not match its {len(data)} bytes")
    if expect_level is not None and level != expect_level:
        raise IntegrityError(f"tree node at level {level}, expected {expect_level}")
    return level, list(_ITEM.iter_unpack(memoryview(data)[_HEAD.size:]))


def node_hash(data: bytes) -> bytes:
    return blake3.blake3(data).digest()


@dataclass
class Level:
    """One level of a built tree: its entries, where its nodes end, and the nodes' (hash, size)."""

    entries: list[Entry]
    ends: list[int]
    parents: list[Entry]
    closed: bool  # the last node ends at a cut, not just where the entries ran out


def build(entries: list[Entry], digest: Digest | None = None, previous: list[Level] | None = None
          ) -> tuple[bytes, int, list[tuple[bytes, bytes]], list[Level]]:
    """Return (root hash, height, [(node hash, node bytes)] made here, levels) for a chunk list.

    With previous (the levels of an earlier build), every node that ends
    before the two lists differ is the same node, since cuts depend only on
    content: it is reused, not encoded and hashed again, and not returned
    (the earlier build stored it). An agent's list that grows at its end
    thus costs the nodes of its last path, not a walk over all of it.
    """
    digest = digest or node_hash
    nodes: list[tuple[bytes, bytes]] = []
    levels: list[Level] = []
    level, current = 0, entries
    while True:
        old = previous[level] if previous is not None and level < len(previous) else None
        keep = _reusable(old, current) if old is not None else 0
        ends = old.ends[:keep] if keep else []
        parents = old.parents[:keep] if keep else []
        start = ends[-1] if ends else 0
        for group in _split(current[start:]) if start < len(current) or not current else ():
            data = encode_node(level, group)
            h = digest(data)
            nodes.append((h, data))
            start += len(group)
            ends.append(start)
            parents.append((h, sum(s for _, s in group)))
        last_size = ends[-1] - (ends[-2] if len(ends) > 1 else 0)
        closed = bool(current) and (_cut_after(current[-1][0]) or last_size == MAX_FANOUT)
        levels.append(Level(current, ends, parents, closed))
        if len(parents) == 1:
            return parents[0][0], level + 1, nodes, levels
        level, current = level + 1, parents


def _reusable(old: Level, current: list[Entry]) -> int:
    """How many of old's nodes current starts with: those ending before the first difference
    (the last one only if it ended at a cut; otherwise current may continue it)."""
    same = 0
    for a, b in zip(old.entries, current):
        if a is not b and a != b:
            break
        same += 1
    keep = bisect_right(old.ends, same)
    if keep == len(old.ends) and not (old.closed and same == len(old.entries)):
        keep -= 1
    return max(keep, 0)


def _cut_after(h: bytes) -> bool:
    return h[0] & _MASK == 0


def _split(entries: list[Entry]) -> list[list[Entry]]:
    if not entries:
        return [[]]
    groups, start = [], 0
    for i, (h, _) in enumerate(entries):
        if _cut_after(h) or i + 1 - start == MAX_FANOUT:
            groups.append(entries[start:i + 1])
            start = i + 1
    if start < len(entries):
        groups.append(entries[start:])
    return groups


# Node bytes by hash, each already checked against its hash (Repository.fetch_nodes reads them
# through the same BLAKE3 check as every chunk), so a walk does not hash them again.
FetchNodes = Callable[[list[bytes]], dict[bytes, bytes]]


def walk_levels(root: bytes, height: int, fetch: FetchNodes) -> list[list[tuple[bytes, list[Entry]]]]:
    """Read the whole tree, top level first: levels[i] = [(node hash, entries)] in order."""
    if not 1 <= height <= MAX_HEIGHT:
        raise IntegrityError(f"tree height {height} is outside 1..{MAX_HEIGHT}")
    levels = []
    hashes = [root]
    for level in range(height - 1, -1, -1):
        unique = list(dict.fromkeys(hashes))
        data = fetch(unique)
        decoded = {h: decode_node(data[h], level)[1] for h in unique}
        row = [(h, decoded[h]) for h in hashes]
        levels.append(row)
        hashes = [c for _, entries in row for c, _ in entries]
    return levels


def leaf_entries(root: bytes, height: int, fetch: FetchNodes) -> list[Entry]:
    """The snapshot's chunk list, in order."""
    return [e for _, entries in walk_levels(root, height, fetch)[-1] for e in entries]


def span_entries(root: bytes, height: int, fetch: FetchNodes, start: int, end: int) -> tuple[int, list[Entry]]:
    """(offset of the first, chunks) covering bytes [start, end) of the snapshot: only the nodes
    over that span are read, a level at a time, as a part of a state is restored without the
    rest (each node's size is checked against its children's)."""
    if not 1 <= height <= MAX_HEIGHT:
        raise IntegrityError(f"tree height {height} is outside 1..{MAX_HEIGHT}")
    picked: list[Entry] = [(root, -1)]
    base = 0
    for level in range(height - 1, -1, -1):
        data = fetch(list(dict.fromkeys(h for h, _ in picked)))
        pos, first, kept = base, None, []
        for h, size in picked:
            _, children = decode_node(data[h], level)
            if size >= 0 and sum(n for _, n in children) != size:
                raise IntegrityError(f"tree node {h.hex()} holds {sum(n for _, n in children)} bytes; "
                                     f"its parent says {size}")
            for child in children:
                n = child[1]
                if pos + n > start and pos < end:
                    if first is None:
                        first = pos
                    kept.append(child)
                pos += n
        if pos < end and kept:
            raise IntegrityError(f"chunk tree covers {pos} bytes, fewer than the {end} asked for")
        base, picked = (pos if first is None else first), kept
    return base, picked


def node_hashes(root: bytes, height: int, fetch: FetchNodes) -> list[bytes]:
    return [h for row in walk_levels(root, height, fetch) for h, _ in row]


@dataclass(frozen=True)
class Proof:
    """Inclusion proof: for each level from the leaf up, the node's entries and the position taken."""

    chunk: str
    steps: tuple[tuple[int, int, tuple[tuple[str, int], ...]], ...]  # (level, position, entries)

    def to_dict(self) -> dict:
        return {"chunk": self.chunk,
                "steps": [{"level": lv, "position": p, "entries": [[h, s] for h, s in es]} for lv, p, es in self.steps]}

    @classmethod
    def from_dict(cls, d: dict) -> "Proof":
        steps = tuple((int(s["level"]), int(s["position"]), tuple((str(h), int(n)) for h, n in s["entries"]))
                      for s in d["steps"])
        return cls(str(d["chunk"]), steps)


def prove(root: bytes, height: int, fetch: FetchNodes, chunk: bytes) -> Proof | None:
    """Proof that chunk is in the tree, or None when it is not."""
    levels = walk_levels(root, height, fetch)
    by_hash = {h: entries for row in levels for h, entries in row}

    def search(h: bytes, level: int) -> list | None:
        entries = by_hash[h]
        for pos, (child, _) in enumerate(entries):
            if level == 0:
                if child == chunk:
                    return [(0, pos, entries)]
            else:
                found = search(child, level - 1)
                if found is not None:
                    return found + [(level, pos, entries)]
        return None

    path = search(root, height - 1)
    if path is None:
        return None
    steps = tuple((lv, pos, tuple((h.hex(), s) for h, s in es)) for lv, pos, es in path)
    return Proof(chunk.hex(), steps)


def verify_proof(proof: Proof | dict, root: str | bytes, *, key: str | bytes | None = None) -> bool:
    """Check an inclusion proof against a Merkle root, with nothing but the proof.

    key: the id key of an encrypted repository (`Store.proof_key`), whose node
    ids are keyed BLAKE3; None for an unencrypted one.
    """
    try:
        if key is None:
            digest = node_hash
        else:
            k = key if isinstance(key, bytes) else bytes.fromhex(key)
            digest = lambda data: blake3.blake3(data, key=k).digest()  # noqa: E731
        if isinstance(proof, dict):
            proof = Proof.from_dict(proof)
        want = root if isinstance(root, bytes) else bytes.fromhex(root)
        current = bytes.fromhex(proof.chunk)
        for expect_level, (level, pos, entries) in enumerate(proof.steps):
            if level != expect_level or not 0 <= pos < len(entries):
                return False
            decoded = [(bytes.fromhex(h), s) for h, s in entries]
            if decoded[pos][0] != current:
                return False
            current = digest(encode_node(level, decoded))
        return bool(proof.steps) and current == want
    except (ValueError, KeyError, TypeError, struct.error):
        return False
