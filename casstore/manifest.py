"""Snapshot manifests: the one object whose existence makes a snapshot exist.

A manifest is a msgpack map; the snapshot id is the BLAKE3 hash of its bytes
and it names its parent's id, so each lineage is a hash chain. It is small
and constant-size: the chunk list lives in the chunk tree (see tree.py),
and the manifest holds only the tree's root.

Fields: v (format), kind ("state" | "dir"), agent, session, parent (32 bytes
or nil), index (position in the lineage), time (UNIX seconds), desc, meta
(user metadata), root (32-byte tree root = Merkle root), height (tree
levels), raw (logical bytes), struct (bytes of the structure stream; blobs
follow it, or precede it when tail is true), chunks (data chunks), new_chunks,
stored (new bytes written), tail (optional, default false; true: the
structure stream comes last. State snapshots are written that way, so that a
step that grows a list and changes the structure rewrites one path of the
chunk tree, not two; snapshots written without it still read), ascii
(optional: [offset, length] in the blob region of each ASCII string of at
least 1 MiB, which a restore decodes straight into a new str; see
store.restore), labels (optional: strings the index finds the snapshot by
within its agent, see Store.find).

Stored form: in a repository of format 2 or later (config.py) the manifest object
holds the msgpack bytes compressed by zstd primed with PRIMER, a fixed
msgpack text of the field names casstore and its bundled integrations write:
a manifest is a few hundred bytes, too short for zstd to learn its own
field names, and the primer halves it (a LangGraph checkpoint's 480 bytes
become 265; the index keeps its summaries the same way). PRIMER is part of
the format and never changes. Format 1 stored the msgpack bytes plain, and
all read.

In an encrypted repository the id is the repository's keyed BLAKE3 of the
plaintext manifest bytes (so ids reveal nothing and stay stable when the
manifest is re-sealed, e.g. by copy), and the stored object is those bytes
sealed with the snapshot id as associated data (see Repository.seal_manifest).
Here `digest` is the repository's hasher, plain BLAKE3 by default.
"""

from __future__ import annotations

import threading
from typing import Callable

import blake3
import msgpack
import zstandard

from .errors import IntegrityError, SerializationError

VERSION = 1
MAX_MANIFEST = 16 << 20
KINDS = ("state", "dir")
PRIMER = msgpack.packb({
    "v": VERSION, "kind": "state", "agent": "langgraph:", "session": "default", "parent": bytes(32), "index": 0,
    "time": 0.0, "desc": "langgraph loop step ", "meta": {
        "langgraph": "checkpoint", "checkpoint_ns": "", "checkpoint_id": "1f0", "parent_checkpoint_id": "1f0",
        "metadata": {"source": "loop", "step": 0, "parents": {}}, "writes": [], "step": 0},
    "root": bytes(32), "height": 1, "raw": 0, "struct": 0, "chunks": 0, "new_chunks": 0, "stored": 0, "tail": True,
}, use_bin_type=True)
_DICT = zstandard.ZstdCompressionDict(PRIMER, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_local = threading.local()
_REQUIRED = {"v": int, "kind": str, "agent": str, "session": str, "index": int, "time": float,
             "root": bytes, "height": int, "raw": int, "struct": int, "chunks": int}


def encode(fields: dict, digest: Callable[[bytes], bytes] | None = None) -> tuple[bytes, bytes]:
    """Return (snapshot id, manifest bytes)."""
    try:
        data = msgpack.packb(fields, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as e:
        raise SerializationError(f"snapshot metadata must be plain msgpack data (dict, list, str, numbers): {e}") from e
    return (digest(data) if digest else blake3.blake3(data).digest()), data


def _contexts() -> tuple[zstandard.ZstdCompressor, zstandard.ZstdDecompressor]:
    """This thread's primed zstd contexts (building one costs more than a manifest's decode)."""
    ctx = getattr(_local, "ctx", None)
    if ctx is None:
        ctx = _local.ctx = (zstandard.ZstdCompressor(level=3, dict_data=_DICT, write_dict_id=False),
                            zstandard.ZstdDecompressor(dict_data=_DICT))
    return ctx


def pack(data: bytes) -> bytes:
    """The stored form of manifest bytes (format 2 and later): zstd primed with PRIMER."""
    return _contexts()[0].compress(data)


def unpack(stored: bytes | memoryview, name: str = "manifest") -> bytes:
    """Manifest bytes from their stored form, compressed (format 2 and later) or plain msgpack (format 1)."""
    if bytes(stored[:4]) != _ZSTD_MAGIC:
        return bytes(stored)
    try:
        return _contexts()[1].decompress(stored, max_output_size=MAX_MANIFEST)
    except zstandard.ZstdError as e:
        raise IntegrityError(f"snapshot {name}: manifest does not decompress: {e}") from e


def decode(data: bytes, snap_id: bytes | None = None, digest: Callable[[bytes], bytes] | None = None) -> dict:
    """Parse and validate a manifest; with snap_id, check it hashes to that id."""
    name = snap_id.hex() if snap_id else "manifest"
    if len(data) > MAX_MANIFEST:
        raise IntegrityError(f"snapshot {name}: manifest of {len(data)} bytes exceeds the {MAX_MANIFEST}-byte bound")
    if snap_id is not None and (digest(data) if digest else blake3.blake3(data).digest()) != snap_id:
        raise IntegrityError(f"snapshot {name}: manifest does not hash to its id")
    try:
        fields = msgpack.unpackb(data, raw=False, strict_map_key=False)
    except Exception as e:
        raise IntegrityError(f"snapshot {name}: manifest does not decode: {e}") from e
    if not isinstance(fields, dict):
        raise IntegrityError(f"snapshot {name}: manifest is not a map")
    for key, typ in _REQUIRED.items():
        if not isinstance(fields.get(key), typ):
            raise IntegrityError(f"snapshot {name}: manifest field {key!r} is missing or not a {typ.__name__}")
    if fields["v"] != VERSION or fields["kind"] not in KINDS:
        raise IntegrityError(f"snapshot {name}: unsupported manifest version {fields['v']} / kind {fields['kind']!r}")
    if len(fields["root"]) != 32 or not (fields.get("parent") is None or len(fields["parent"]) == 32):
        raise IntegrityError(f"snapshot {name}: root or parent is not a 32-byte hash")
    if not isinstance(fields.get("tail", False), bool):
        raise IntegrityError(f"snapshot {name}: manifest field 'tail' is not a bool")
    labels = fields.get("labels", [])
    if not (isinstance(labels, list) and all(isinstance(v, str) and v for v in labels)):
        raise IntegrityError(f"snapshot {name}: manifest field 'labels' is not a list of non-empty strings")
    if not 0 <= fields["struct"] <= fields["raw"]:
        raise IntegrityError(f"snapshot {name}: structure length {fields['struct']} exceeds raw size {fields['raw']}")
    if "ascii" in fields and not _spans_fit(fields["ascii"], fields["raw"] - fields["struct"]):
        raise IntegrityError(f"snapshot {name}: manifest field 'ascii' is not a list of ordered, disjoint "
                             f"[offset, length] spans inside the {fields['raw'] - fields['struct']}-byte blob region")
    return fields


def _spans_fit(spans: object, region: int) -> bool:
    if not isinstance(spans, list):
        return False
    end = 0
    for span in spans:
        if not (isinstance(span, list) and len(span) == 2 and all(type(v) is int for v in span)
                and end <= span[0] and span[1] > 0 and span[0] + span[1] <= region):
            return False
        end = span[0] + span[1]
    return True
