"""The repository: the write path and the read path over backend, packs and index.

Write: cut each stream into chunks -> BLAKE3 -> ask the index which are new
-> compress the new ones (zstd on all cores, while this thread goes on
cutting and hashing) -> pack them with the new tree nodes -> put each pack
as it fills -> put the manifest (a small snapshot's only pack and its
manifest as one ordered pair, their fsyncs overlapped) -> commit the index
in one LMDB transaction. The manifest is written only after every pack it needs is
durable, so a crash leaves at most unreferenced packs (which gc removes).

Read: tree nodes -> chunk locations -> ranged pack reads (adjacent chunks
coalesced; read and decompressed ahead on the pool, runs of adjacent chunks
straight into the restore buffer) -> BLAKE3 check of every chunk on the
calling thread -> copy of the rest into place. Nothing is returned before
every chunk matched its hash; one that does not raises IntegrityError.

Encrypted repositories (see crypto.py) change two things, both through
objects chosen once from the config: `self.hasher` (keyed BLAKE3) makes
every chunk, node and snapshot id, and `self.sealer` (AES-256-GCM or ChaCha20-Poly1305)
seals each chunk after compression, each pack trailer and each manifest,
and opens them before anything is decompressed or parsed. Unencrypted
repositories get plain BLAKE3 and an identity sealer: the same bytes as ever.
Their index holds decrypted metadata, so it never lives inside the
repository: it goes to the per-user cache folder even for a local one.
"""

from __future__ import annotations

import mmap
import os
import threading
from bisect import bisect_right
from itertools import accumulate
import time
from collections import OrderedDict, deque
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Callable, Iterable, NamedTuple

from . import crypto, gcpause, manifest, tree
from .backend import Backend
from .cache import DEFAULT_CACHE_BYTES, ChunkCache
from .chunker import Chunker
from .chunker.memo import MAX_LINEAGES, Known, StreamMemo
from .compress import NARROW_NODE, SHUFFLED, ZSTD, Codec
from .config import RepoConfig, cache_dir
from .errors import AuthenticationError, ConfigurationError, IntegrityError, ObjectNotFoundError, SnapshotNotFoundError
from .index import Index, Location
from .pack import FOOTER_SIZE, KIND_DATA, KIND_NODE, PackEntry, PackWriter, open_trailer, parse_footer

CONFIG_KEY = "config"
CONDEMNED_PREFIX = "gc/condemned/"
FORGOTTEN_PREFIX = "forgotten/"
PACK_TARGET = 16 << 20      # close a pack once it holds this many stored bytes
COALESCE_GAP = 256 << 10    # read across gaps up to this size rather than issue another request
MAX_READ = 16 << 20         # ...but keep one ranged read below this size
# ...and a local one below this: a 1 GiB restore then has ~250 reads, not ~85, which the pool
# threads and the checking thread interleave more evenly (in-order checking waits less on one
# slow read), and each read's buffer is smaller. Alternated, 10 runs each: 548 against 442 MB/s
# (medians), with one more read ahead (read_ahead).
LOCAL_MAX_READ = 4 << 20
NODE_WINDOW = 1 << 20       # remote: bytes read before a tree's root in its pack, where its upper levels lie
MMAP_BUFFER = 4 << 20       # a read's buffer of this size or more is an anonymous mapping (see _buffer)
# Reads in flight at once on a remote store. They wait on latency, not CPU: a chat
# restore after 150 steps touches ~125 packs, and at 20 ms a request that took
# 2.3 s with the CPU-sized pool (4 threads on 2 cores) and 1.0 s with 16 threads
# (botocore keeps 10 connections unless max_pool_connections is raised).
REMOTE_READ_WORKERS = 16
LOCAL_INLINE = 8 << 20      # a local read of fewer stored bytes runs inline, without the read pool
COMPRESS_BATCH = 8 << 20    # raw bytes per compression task (zstd spreads each over the cores)
COMPRESS_AHEAD = 2          # compression tasks in flight at once: bounds the compressed bytes held
PUTS_AHEAD = 2              # packs being finalized and put at once while the next fills


def pack_key(pack_id: bytes) -> str:
    h = pack_id.hex()
    return f"packs/{h[:2]}/{h}"


def manifest_key(snap_id: bytes) -> str:
    h = snap_id.hex()
    return f"snapshots/{h[:2]}/{h}"


def key_object_key(key_id: str) -> str:
    return crypto.KEYS_PREFIX + key_id


def condemned_key(pack_id: bytes) -> str:
    return CONDEMNED_PREFIX + pack_id.hex()


def forgotten_key(snap_id: bytes) -> str:
    return FORGOTTEN_PREFIX + snap_id.hex()


@dataclass
class Stream:
    """One byte stream of a snapshot and how to cut it.

    A stream known to be unchanged since an earlier snapshot may give its
    chunk list as `entries` instead of data; write() then checks the chunks
    are still stored and raises ReuseError if not, so the caller re-reads.
    A list stream gives `item_ends` (where each item ends) and is cut only there.
    """

    data: memoryview | None
    row_bytes: int = 0
    itemsize: int = 0
    structure: bool = False
    entries: list[tree.Entry] | None = None
    item_ends: list[int] | None = None


Sink = Callable[[bytes, bytes | memoryview], None]   # gets each loaded chunk: (hash, verified bytes)
Range = tuple[bytes, int, int, list[tuple[bytes, Location]]]  # pack id, start, end, the chunks inside
Read = tuple[bytes, bytes, Location]  # pack id, hash, location of a chunk read
Windows = dict[bytes, list[tuple[int, memoryview]]]  # pack id -> (start, bytes) of ranges a tree walk read


class Places(NamedTuple):
    """Where the chunks of a read that land whole go: hash -> (offset in buf, size the chunk tree gives).
    cuts: offsets where buf's memory changes (see _Dest), which no run of chunks decoded at once crosses."""

    buf: "memoryview | _Dest"
    at: dict[bytes, tuple[int, int]]
    cuts: frozenset[int] = frozenset()


NO_PLACES = Places(memoryview(b""), {})


class _Dest:
    """A read's destination: the read's own buffer, but for spans that go to buffers of their own
    (see Repository.read's into). Sliced like the buffer; a slice must not straddle a span's edge."""

    def __init__(self, view: memoryview, into: dict[int, memoryview]):
        self.view = view
        self.starts = sorted(into)
        self.bufs = [into[s] for s in self.starts]
        self.cuts = frozenset(self.starts) | {s + len(b) for s, b in zip(self.starts, self.bufs)}

    def __getitem__(self, part: slice) -> memoryview:
        lo, hi = part.start, part.stop
        i = bisect_right(self.starts, lo) - 1
        if i >= 0 and lo < self.starts[i] + len(self.bufs[i]):
            if hi > self.starts[i] + len(self.bufs[i]):
                raise IntegrityError(f"bytes [{lo}, {hi}) straddle the end of the string at {self.starts[i]}")
            return self.bufs[i][lo - self.starts[i]:hi - self.starts[i]]
        if i + 1 < len(self.starts) and hi > self.starts[i + 1]:
            raise IntegrityError(f"bytes [{lo}, {hi}) straddle the start of the string at {self.starts[i + 1]}")
        return self.view[lo:hi]

    def __setitem__(self, part: slice, data: bytes | memoryview) -> None:
        self[part][:] = data


class ReuseError(Exception):
    """A stream's reused chunk list names chunks the repository no longer holds."""


class Repository:
    """Packs, manifests and the index of one repository."""

    def __init__(self, backend: Backend, *, index_path: str | None = None, compression_level: int = 3,
                 shuffle_level: int | None = None, create: bool = True, workers: int | None = None,
                 read_workers: int | None = None, new_config: RepoConfig | None = None, password: bytes | None = None,
                 master_key: bytes | None = None, cache_bytes: int = DEFAULT_CACHE_BYTES):
        """password unlocks an encrypted repository (or protects a new one); master_key, only when
        creating, reuses another repository's key so that copies between the two keep their ids;
        cache_bytes bounds the in-memory cache of verified chunks and tree nodes (see cache.py);
        shuffle_level is the zstd level of shuffled numeric blocks (see compress.Codec)."""
        self.backend = backend
        self.config = self._load_or_create_config(create, new_config or RepoConfig(), password, master_key)
        self.hasher = self.keys.hasher
        self.sealer = self.keys.sealer
        self.chunker = Chunker(self.config.structure_cdc, self.config.blob_cdc)
        self.codec = Codec(compression_level, shuffle_level=shuffle_level)
        self.index_path = index_path or self._default_index_path()
        self.index = Index(self.index_path)
        self.pool = ThreadPoolExecutor(max_workers=workers or min(8, (os.cpu_count() or 2) + 2),
                                       thread_name_prefix="casstore")
        # Ranged pack reads, trailers and manifests: a wider pool for remote storage (see
        # REMOTE_READ_WORKERS); a local folder shares the CPU-sized pool.
        self.read_pool = self.pool if backend.is_local else ThreadPoolExecutor(
            max_workers=read_workers or REMOTE_READ_WORKERS, thread_name_prefix="casstore-read")
        # Ranges read and decoded ahead of the one being checked (see _load_once and LOCAL_MAX_READ).
        self.read_ahead = (os.cpu_count() or 1) + 1 if backend.is_local else read_workers or REMOTE_READ_WORKERS
        self._lock = threading.RLock()
        self._opened_buf = threading.local()   # per read thread: a run's sealed frames, opened (see _opened)
        self.cache = ChunkCache(cache_bytes)
        self._marks_seen = 0.0  # monotonic time of the last look at gc's condemned marks
        self.memo = StreamMemo()
        self._trees: OrderedDict[tuple[str, str], list[tree.Level]] = OrderedDict()  # lineage -> last tree built
        owner = self.index.get_meta("repo_id")
        if owner not in (None, self.config.repo_id.encode()):
            raise ConfigurationError(f"index at {self.index_path} belongs to another repository; delete it or pass index_path")
        self.index.set_meta("repo_id", self.config.repo_id.encode())
        if owner is None and self.config.encryption:
            self.sync()   # a fresh cache index of an encrypted repository (its index never lives beside it)

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        if self.read_pool is not self.pool:
            self.read_pool.shutdown(wait=True)
        self.index.close()
        self.backend.close()

    # config -------------------------------------------------------------
    def _load_or_create_config(self, create: bool, cfg: RepoConfig, password: bytes | None,
                               master_key: bytes | None) -> RepoConfig:
        try:
            return self._load_config(self.backend.get(CONFIG_KEY), password)
        except ObjectNotFoundError:
            if not create:
                raise ConfigurationError(f"no casstore repository at {self.backend.url} (run `casstore init`)") from None
        data = cfg.encode()
        key_id = None
        if cfg.encryption:
            if not password:
                raise AuthenticationError(f"creating an encrypted repository at {self.backend.url} needs a password")
            master = master_key or crypto.new_master_key()
            key_id = crypto.new_key_id()    # the key object lands first: a config never names a keyless repository
            self.backend.put(key_object_key(key_id), crypto.wrap(master, password, cfg.repo_id, data))
        if not self.backend.put_if_absent(CONFIG_KEY, data):
            if key_id is not None:
                self.backend.delete(key_object_key(key_id))
            return self._load_config(self.backend.get(CONFIG_KEY), password)
        self.backend.ensure_prefixes([f"{top}/{i:02x}" for top in ("packs", "snapshots") for i in range(256)])
        self._config_bytes = data
        self.keys = crypto.Keys.from_master(master, cfg.encryption, key_id) if cfg.encryption else crypto.Keys.plain()
        return cfg

    def _load_config(self, data: bytes, password: bytes | None) -> RepoConfig:
        cfg = RepoConfig.decode(data, self.backend.url)
        self._config_bytes = data
        if not cfg.encryption:
            self.keys = crypto.Keys.plain()
            return cfg
        if not password:
            raise AuthenticationError(f"repository {self.backend.url} is encrypted: give a password "
                                      f"(password=, key_file= or ${crypto.ENV_PASSWORD})")
        self.keys = crypto.unlock(self._key_objects(), password, cfg.repo_id, data, self.backend.url, cfg.encryption)
        return cfg

    def _key_objects(self) -> dict[str, bytes]:
        out = {}
        for key in self.backend.list(crypto.KEYS_PREFIX):
            try:
                out[key.rsplit("/", 1)[-1]] = self.backend.get(key)
            except ObjectNotFoundError:
                continue   # removed meanwhile (a password change elsewhere)
        return out

    # passwords (encrypted repositories) ---------------------------------------
    def _need_key(self) -> bytes:
        if self.keys.master is None:
            raise ConfigurationError(f"repository {self.backend.url} is not encrypted; it has no passwords")
        return self.keys.master

    def add_password(self, password: bytes, *, scrypt_n: int = crypto.SCRYPT_N) -> str:
        """Let another password unlock the repository; returns the new key object's id. No data is rewritten."""
        if not password:
            raise ConfigurationError("the new password is empty")
        key_id = crypto.new_key_id()
        self.backend.put(key_object_key(key_id), crypto.wrap(self._need_key(), password, self.config.repo_id,
                                                              self._config_bytes, n=scrypt_n))
        return key_id

    def change_password(self, password: bytes, *, scrypt_n: int = crypto.SCRYPT_N) -> str:
        """Replace the password this repository was opened with: a new key object, then the old one is deleted."""
        old = self.keys.key_id
        key_id = self.add_password(password, scrypt_n=scrypt_n)
        if old is not None:
            self.backend.delete(key_object_key(old))
        self.keys = crypto.Keys(self.keys.hasher, self.keys.sealer, self.keys.master, key_id)
        return key_id

    def list_keys(self) -> list[dict]:
        """The key objects: id, creation time, KDF parameters, and which one opened this session."""
        self._need_key()
        out = []
        for key_id, data in sorted(self._key_objects().items()):
            d = crypto.parse_key_object(data, key_object_key(key_id))
            out.append({"id": key_id, "created": d.get("created"), "kdf": f"scrypt n={d['n']} r={d['r']} p={d['p']}",
                        "current": key_id == self.keys.key_id})
        return out

    def remove_key(self, key_id: str) -> None:
        """Delete a key object (its password stops working); refuses the last one and the one in use."""
        self._need_key()
        objects = self._key_objects()
        matches = [k for k in objects if k.startswith(key_id)] if key_id else []
        if len(matches) != 1:
            raise ConfigurationError(f"key {key_id!r} matches {len(matches)} key objects")
        if matches[0] == self.keys.key_id:
            raise ConfigurationError("refusing to remove the key this session was opened with (use another password)")
        if len(objects) < 2:
            raise ConfigurationError("refusing to remove the last key: the repository would be unreadable")
        self.backend.delete(key_object_key(matches[0]))

    # sealed objects -------------------------------------------------------------
    def seal_manifest(self, snap_id: bytes, data: bytes) -> bytes:
        """The object to store for manifest bytes: compressed (repository format 2 and later), then sealed if encrypted."""
        return self.sealer.seal(manifest.pack(data) if self.config.format >= 2 else data,
                                crypto.AD_MANIFEST + snap_id)

    def open_manifest(self, snap_id: bytes, stored: bytes) -> dict:
        """Open (when sealed), check against its id and parse a stored manifest."""
        return manifest.decode(self._manifest_bytes(snap_id, stored), snap_id, self.hasher)

    def manifest_plaintext(self, snap_id: bytes) -> bytes:
        """The manifest bytes the snapshot id hashes (opened and checked)."""
        data = self._manifest_bytes(snap_id, self.backend.get(manifest_key(snap_id)))
        manifest.decode(data, snap_id, self.hasher)
        return data

    def _manifest_bytes(self, snap_id: bytes, stored: bytes) -> bytes:
        if len(stored) > manifest.MAX_MANIFEST + crypto.OVERHEAD:
            raise IntegrityError(f"snapshot {snap_id.hex()}: manifest of {len(stored)} bytes exceeds the bound")
        data = self.sealer.open(stored, crypto.AD_MANIFEST + snap_id, f"snapshot {snap_id.hex()}")
        return manifest.unpack(data, snap_id.hex())

    def decode_chunk(self, h: bytes, method: int, stored: bytes | memoryview, raw_len: int, itemsize: int,
                     pack_id: bytes) -> bytes | memoryview:
        """Stored bytes -> open (when sealed) -> decompress -> check against the id."""
        data = self.codec.decompress(method, self._unseal(h, stored, pack_id), raw_len, itemsize)
        self.verify_chunk(h, data, pack_id)
        return data

    def _unseal(self, h: bytes, stored: bytes | memoryview, pack_id: bytes) -> bytes | memoryview:
        """A chunk's stored bytes opened (authenticated and decrypted) when the repository is encrypted."""
        if self.sealer.encrypted:
            return self.sealer.open(stored, h, f"chunk {h.hex()} in pack {pack_id.hex()}")
        return stored

    def _default_index_path(self) -> str:
        if self.backend.is_local and not self.config.encryption:
            return os.path.join(self.backend.local_path, "index")
        return os.path.join(cache_dir(), self.config.repo_id, "index")

    # write path ---------------------------------------------------------
    def write(self, kind: str, streams: list[Stream], *, agent_id: str, session_id: str,
              description: str | None, metadata: dict | None, structure_last: bool = False,
              extra: dict | None = None) -> tuple[bytes, dict]:
        """Store one snapshot made of streams; return (id, manifest fields). extra holds
        more manifest fields, for the layer above (a state's "ascii" spans, see store.restore).

        The structure stream (never reused) is the first stream, or the last one
        with structure_last (recorded as the manifest field "tail"): a state's
        structure changes at every snapshot and its blobs mostly grow at their
        end, so with the structure last one path of the chunk tree changes, not two.

        The chunks a stream adds are compressed and packed while later streams
        are still cut and hashed (see _NewChunks), so zstd and chunking share the cores.
        """
        lineage = (agent_id, session_id)
        with self._lock:
            try:
                with gcpause.paused(sum(s.data.nbytes for s in streams if s.data is not None)):
                    snap_id, fields, levels = self._write(kind, streams, lineage, description, metadata,
                                                          structure_last, extra or {})
            except BaseException:  # what this write chunked or built may not be stored: reuse none of it
                self.memo.forget(lineage)
                self._trees.pop(lineage, None)
                raise
            self._trees[lineage] = levels
            self._trees.move_to_end(lineage)
            while len(self._trees) > MAX_LINEAGES:
                self._trees.popitem(last=False)
            return snap_id, fields

    def _write(self, kind: str, streams: list[Stream], lineage: tuple[str, str], description: str | None,
               metadata: dict | None, structure_last: bool, extra: dict) -> tuple[bytes, dict, list[tree.Level]]:
        """write() under the lock: (snapshot id, manifest fields, the levels of the tree it built)."""
        self._refresh_marks(max_age=self.config.gc_grace / 2)
        checked = time.monotonic()
        with _NewChunks(self) as new:
            new.add([h for s in streams if s.entries is not None for h, _ in s.entries], {}, KIND_DATA)
            entries, chunks = self._chunk_streams(streams, lambda hs, chunks: new.add(hs, chunks, KIND_DATA), lineage)
            # the nodes the lineage's last snapshot stored are reused unless gc may be removing some
            previous = None if self.index.has_condemned() else self._trees.get(lineage)
            root, height, nodes, levels = tree.build(entries, self.hasher, previous)
            chunks.update((h, (memoryview(d), 0)) for h, d in nodes)
            new.add([h for h, _ in nodes], chunks, KIND_NODE)
            packs = new.finish(defer_only=True)
        head = self.index.head_position(*lineage)
        fields = {
            "v": manifest.VERSION, "kind": kind, "agent": lineage[0], "session": lineage[1],
            "parent": head[0] if head else None, "index": head[1] + 1 if head else 0,
            "time": time.time(), "desc": description, "meta": metadata or {}, "root": root, "height": height,
            "raw": levels[-1].parents[0][1], "struct": len(streams[-1 if structure_last else 0].data),
            "chunks": len(entries),
            "new_chunks": sum(1 for _, _, ents in packs for e in ents if e.kind == KIND_DATA),
            "stored": sum(size for _, size, _ in packs),
        }
        if structure_last:
            fields["tail"] = True
        fields.update(extra)
        snap_id, data = manifest.encode(fields, self.hasher)
        stored_manifest = (manifest_key(snap_id), self.seal_manifest(snap_id, data))
        if new.deferred is not None:   # a small snapshot's only pack: both objects in one ordered pair
            self.backend.put_pair(new.deferred, stored_manifest, tombstone=forgotten_key(snap_id))
        else:
            self.backend.put(*stored_manifest)
        if time.monotonic() - checked > self.config.gc_grace / 2:
            written = {e.hash for _, _, ents in packs for e in ents}
            wanted = [h for h, _ in entries if h not in written]
            tree_nodes = [h for lv in levels for h, _ in lv.parents if h not in written]
            packs += self._repair_slow_write(snap_id, wanted, tree_nodes, chunks)
        self.index.commit(packs, [(snap_id, fields)])
        self._cache_written(chunks, packs)
        return snap_id, fields, levels

    def _repair_slow_write(self, snap_id: bytes, data: list[bytes], nodes: list[bytes], chunks: dict[bytes, tuple]
                           ) -> list[tuple[bytes, int, list[PackEntry]]]:
        """A write slower than grace/2 may have deduplicated against a pack gc condemned meanwhile
        and may be deleting now: store fresh copies of whatever is now doomed (see gc.py)."""
        self._refresh_marks(max_age=0.0)
        try:
            with _NewChunks(self) as new:
                new.add(data, chunks, KIND_DATA)
                new.add(nodes, chunks, KIND_NODE)
                return new.finish()
        except ReuseError:
            self.backend.delete(manifest_key(snap_id))
            raise

    def _refresh_marks(self, max_age: float) -> None:
        """Know gc's condemned packs no later than max_age ago, so dedup never trusts a doomed pack."""
        if time.monotonic() - self._marks_seen <= max_age:
            return
        seen = time.monotonic()
        known = self.index.condemned()  # read before listing: a mark gc adds meanwhile is kept
        listed = {pid for pid in map(_key_id, self.backend.list(CONDEMNED_PREFIX)) if pid is not None}
        self.index.set_condemned({p: time.time() for p in listed - known.keys()}, clear=known.keys() - listed)
        self._marks_seen = seen

    def _chunk_streams(self, streams: list[Stream], found: Callable[[list[bytes], dict], None],
                       lineage: tuple[str, str]) -> tuple[list[tree.Entry], dict[bytes, tuple[memoryview, int]]]:
        """Cut and hash the streams: (entries in order, hash -> (data, itemsize)).

        found(hashes, chunks so far) gets the hashes first seen here about every
        COMPRESS_BATCH bytes, so that they can be stored while cutting goes on.
        A stream that starts like the same stream of the lineage's previous
        snapshot reuses that start's spans and hashes (chunker/memo.py).
        """
        entries: list[tree.Entry] = []
        chunks: dict[bytes, tuple[memoryview, int]] = {}
        digest = self.hasher
        fresh: list[bytes] = []
        load = 0
        reused: list[tuple[Stream, Known]] = []
        for pos, s in enumerate(streams):
            if s.entries is not None:
                entries.extend(s.entries)
                continue
            first, start = len(entries), 0
            match = self.memo.lookup(lineage, pos, s.data) if s.row_bytes == 0 else None
            if match is not None:
                known = match[0]
                entries.extend(known.entries)
                reused.append((s, known))
                start = known.resume
            for off, n in self._cut(s, start):
                view = s.data[off:off + n]
                h = digest(view)
                entries.append((h, n))
                if h not in chunks:
                    chunks[h] = (view, s.itemsize)
                    fresh.append(h)
                    load += n
                    if load >= COMPRESS_BATCH:
                        found(fresh, chunks)
                        fresh, load = [], 0
            if s.row_bytes == 0:
                self.memo.remember(lineage, pos, s.data, entries[first:], match)
        if fresh:
            found(fresh, chunks)
        if reused and self.index.has_condemned():
            self._recheck_reused(reused, chunks, found)
        return entries, chunks

    def _recheck_reused(self, reused: list[tuple[Stream, Known]], chunks: dict[bytes, tuple[memoryview, int]],
                        found: Callable[[list[bytes], dict], None]) -> None:
        """Store again the reused chunks that sit only in packs gc condemned since (see gc.py).

        Without condemned packs nothing is needed: the reused chunks were stored at
        the previous snapshot and only gc, after condemning their pack, removes them.
        """
        lost = self.index.missing([h for _, known in reused for h, _ in known.entries]).difference(chunks)
        if not lost:
            return
        for s, known in reused:
            for (h, n), off in zip(known.entries, known.offsets()):
                if h in lost:
                    chunks[h] = (s.data[off:off + n], s.itemsize)
        found(list(lost), chunks)

    def _cut(self, s: Stream, start: int = 0) -> list[tuple[int, int]]:
        """Spans of s from offset start (a cut of an earlier snapshot of the same stream) on."""
        data = s.data[start:] if start else s.data
        if s.item_ends is not None:
            ends = s.item_ends if not start else [e - start for e in s.item_ends[bisect_right(s.item_ends, start):]]
            spans = self.chunker.cut_items(data, ends)
        elif s.structure:
            spans = self.chunker.cut_structure(data)
        else:
            spans = self.chunker.cut_blob(data, s.row_bytes)
        return [(off + start, n) for off, n in spans] if start else spans

    def _pack(self, todo: list[tuple[bytes, memoryview, int, int]]) -> list[tuple[bytes, bytes, list[PackEntry]]]:
        """Compress (hash, data, itemsize, kind) items; return packs of about PACK_TARGET bytes."""
        packs: list[tuple[bytes, bytes, list[PackEntry]]] = []
        packer = _Packer(self, lambda writer: packs.append(writer.finalize()))
        for job in todo:
            packer.add(job)
        packer.finish()
        return packs

    def _compress(self, jobs: list[tuple[bytes, memoryview, int, int]]) -> list[tuple]:
        """(hash, kind, method, itemsize, stored bytes, raw length) per job: zstd (tree nodes, from
        format 2: their compact form; shuffled blocks, from format 3: plane by plane), then sealed
        if encrypted."""
        narrow = [tree.narrow_node(view) if kind == KIND_NODE and self.config.format >= 2 else None
                  for _, view, _, kind in jobs]
        rest = [i for i, n in enumerate(narrow) if n is None]
        packed = self.codec.compress_many([jobs[i][1] for i in rest], [jobs[i][2] for i in rest],
                                          planes=self.config.format >= 3)
        out: list[tuple[int, bytes | memoryview]] = [(NARROW_NODE, n) for n in narrow]
        for i, result in zip(rest, packed):
            out[i] = result
        seal = self.sealer.seal if self.sealer.encrypted else None
        return [(h, kind, method, itemsize, seal(stored, h) if seal else stored, len(view))
                for (h, view, itemsize, kind), (method, stored) in zip(jobs, out)]

    # read path ----------------------------------------------------------
    def drop_caches(self) -> None:
        """Forget every cached chunk and tree node: the next read goes to storage, as in a new process."""
        self.cache.clear()

    def _cache_written(self, chunks: dict[bytes, tuple], packs: list[tuple[bytes, int, list[PackEntry]]]) -> None:
        """Write-through: cache what a small snapshot stored, so restoring it (as an agent does at
        its next step) reads memory. A snapshot that stored more than the cache admits is left out,
        so a big one pays no copies. Each copy is hashed again: the caller may have changed its
        arrays since they were chunked, and the cache holds only bytes that match their name."""
        new = [e.hash for _, _, entries in packs for e in entries]
        if not new or sum(len(chunks[h][0]) for h in new) > self.cache.admit_limit:
            return
        copies = [(h, bytes(chunks[h][0])) for h in new]
        self.cache.put_many((h, data) for h, data in copies if self.hasher(data) == h)

    def fetch_nodes(self, hashes: list[bytes], cached: bool = True, windows: Windows | None = None
                    ) -> dict[bytes, bytes]:
        """Tree nodes by hash, verified; cached=False reads storage only (verify) and caches nothing.
        windows: pack bytes a walk already read (see entries)."""
        out = self.cache.get_many(hashes) if cached else {}
        wanted = [h for h in hashes if h not in out]
        if wanted:
            got: dict[bytes, bytes] = {}
            self._load(wanted, lambda h, data: got.__setitem__(h, bytes(data)), windows=windows)
            if cached:
                self.cache.put_many(got.items())
            out.update(got)
        return out

    def entries(self, fields: dict) -> list[tree.Entry]:
        """The snapshot's chunk list, from its tree of nodes, read a level at a time.

        From remote storage every level would be a round trip. A write stores its
        new nodes at the end of its pack, bottom level first and the root last, so
        the root's read takes the NODE_WINDOW bytes before it as well, and the
        levels below are then found in those bytes (checked against their hashes
        like any chunk) instead of being requested one level after the other: a
        100 MB state's five levels were five 20 ms round trips on S3.
        """
        if self.backend.is_local:
            return tree.leaf_entries(fields["root"], fields["height"], self.fetch_nodes)
        windows: Windows = {}
        return tree.leaf_entries(fields["root"], fields["height"],
                                 lambda hashes: self.fetch_nodes(hashes, windows=windows))

    def read_span(self, fields: dict, start: int, end: int, windows: Windows | None = None) -> memoryview:
        """Bytes [start, end) of the snapshot, walking only the tree nodes over them (see
        tree.span_entries): a part of a state, without the chunk list of the rest. Remote reads
        of one snapshot's spans pass the same windows (see entries), so later walks find their
        nodes in the bytes the first one read."""
        windows = {} if windows is None else windows
        fetch = self.fetch_nodes if self.backend.is_local else (
            lambda hashes: self.fetch_nodes(hashes, windows=windows))
        base, entries = tree.span_entries(fields["root"], fields["height"], fetch, start, end)
        return self.read(fields, start - base, end - base, entries=entries)

    def read(self, fields: dict, start: int = 0, end: int | None = None,
             entries: list[tree.Entry] | None = None, into: dict[int, memoryview] | None = None) -> memoryview:
        """The snapshot's logical bytes [start, end): structure stream, then blobs.

        into maps offsets (from start) to buffers that take the bytes from there
        on instead of the returned view, whose bytes there are left unset: a
        restore's big strings decode straight into their str (see store.restore).
        Each such span must begin and end on chunk edges, as a stream's do.

        Chunks come from the cache when it holds them. A read small enough for
        the cache (see cache.py) fills it with the decoder's output and copies
        each chunk into place; a bigger one bypasses it and decodes each chunk
        that lands once and whole (see _layout) straight into the buffer (the
        others are decoded once, then copied to each place).
        The buffer (see _buffer) is not zero-filled: every byte is overwritten
        by a verified chunk before it is returned, so zeroing hundreds of
        megabytes first would be wasted work. Its pages are faulted in by the
        threads that decode into it: faulting them in ahead on the pool (a zero
        per page, or MADV_POPULATE_WRITE) measured slower for a process's first
        1 GiB restore (240-270 MB/s against 350-390).
        """
        end = fields["raw"] if end is None else end
        view = _buffer(end - start)
        dest: memoryview | _Dest = _Dest(view, into) if into else view
        entries = self.entries(fields) if entries is None else entries
        at, spans, sizes = _layout(entries, start, end)
        got = self.cache.get_many(sizes)
        todo = [h for h in sizes if h not in got]
        if todo and sum(sizes[h] for h in todo) > self.cache.admit_limit:
            self._load(todo, got.__setitem__, Places(dest, at, dest.cuts if into else frozenset()))
            at = {h: p for h, p in at.items() if h in got}   # the cached ones: _load placed the others
        elif todo:   # the decoder's fresh bytes go to the cache as they are, then one copy into place
            fresh: dict[bytes, bytes | memoryview] = {}
            self._load(todo, fresh.__setitem__)
            self.cache.put_many((h, bytes(data)) for h, data in fresh.items())
            got.update(fresh)
        for h, (dst, n) in at.items():
            data = got[h]
            if len(data) != n:
                raise IntegrityError(f"chunk {h.hex()} holds {len(data)} bytes; the chunk tree says {n}")
            dest[dst:dst + n] = data
        for h, dst, a, b in spans:
            data = got[h]
            if len(data) != sizes[h]:
                raise IntegrityError(f"chunk {h.hex()} holds {len(data)} bytes; the chunk tree says {sizes[h]}")
            dest[dst:dst + b - a] = data[a:b]
        return view

    def _load(self, hashes: list[bytes], sink: Sink, places: Places | None = None,
              windows: Windows | None = None) -> None:
        """Fetch, verify and decompress chunks from storage (never the cache).

        Each chunk goes to sink(hash, bytes), or is decoded straight into its
        place when places names one for it. With windows (a remote tree walk, see
        entries), chunks go through _load_nodes. A pack gc removed meanwhile
        triggers one sync and retry.
        """
        try:
            self._load_once(hashes, sink, places or NO_PLACES, windows)
        except ObjectNotFoundError:
            self.sync()
            self._load_once(hashes, sink, places or NO_PLACES, windows)

    def _load_once(self, hashes: list[bytes], sink: Sink, places: Places, windows: Windows | None = None) -> None:
        """Locate the chunks (one index transaction), then read them in coalesced ranges.

        Reading and decoding a range (_read_and_decode) takes a few long calls that
        release the GIL; checking each chunk's BLAKE3 takes a short call per chunk
        that hands the GIL back and forth. So the read pool reads and decodes
        ranges ahead (one per core for a local repository; many for a remote one,
        whose reads wait on the network) while this thread alone checks the
        chunks: two threads both running per-chunk steps would wait on each other
        for the GIL at every step. A small local read runs inline.
        """
        locs = self.index.locate(hashes)
        if len(locs) < len(hashes):
            self.sync()
            locs = self.index.locate(hashes)
        lost = [h for h in hashes if h not in locs]
        if lost:
            raise IntegrityError(f"chunk {lost[0].hex()} (and {len(lost) - 1} more) is not in any known pack")
        if windows is not None:
            self._load_nodes(locs, sink, windows)
            return
        ranges = _coalesce(locs, LOCAL_MAX_READ if self.backend.is_local else MAX_READ)
        if self.backend.is_local and (len(ranges) < 2 or sum(end - base for _, base, end, _ in ranges) < LOCAL_INLINE):
            self._check(*self._decode([self._read(r) for r in ranges], places), sink, places)
            return
        pending: deque[Future] = deque()
        try:
            for r in sorted(ranges, key=lambda r: r[1] - r[2]):   # biggest first: fewer stalls at the end
                pending.append(self.read_pool.submit(self._read_and_decode, r, places))
                if len(pending) > self.read_ahead:
                    self._check(*pending.popleft().result(), sink, places)
            while pending:
                self._check(*pending.popleft().result(), sink, places)
        finally:
            for f in pending:
                f.cancel()
            wait(pending)

    def _load_nodes(self, locs: dict[bytes, Location], sink: Sink, windows: Windows) -> None:
        """Nodes of one level of a remote tree walk: those inside bytes the walk already read are
        decoded from them; the others are read in parallel, the first level's (the root's) with
        the NODE_WINDOW bytes before it, and every read is kept in windows for the levels below."""
        covered: dict[tuple[bytes, int], tuple[memoryview, list[tuple[bytes, Location]]]] = {}
        rest: dict[bytes, Location] = {}
        for h, loc in locs.items():
            hit = next(((b, buf) for b, buf in windows.get(loc.pack, ())
                        if b <= loc.offset and loc.offset + loc.stored_len <= b + len(buf)), None)
            if hit is None:
                rest[h] = loc
            else:
                covered.setdefault((loc.pack, hit[0]), (hit[1], []))[1].append((h, loc))
        reads = [((pack, base, base + len(buf), group), buf) for (pack, base), (buf, group) in covered.items()]
        ranges = _coalesce(rest, MAX_READ)
        if not windows:
            ranges = [(pack, max(0, base - NODE_WINDOW), end, group) for pack, base, end, group in ranges]
        fetched = list(self.read_pool.map(self._read, ranges))
        for (pack, base, _, _), buf in fetched:
            windows.setdefault(pack, []).append((base, buf))
        self._check(*self._decode(reads + fetched, NO_PLACES), sink, NO_PLACES)

    def _read_and_decode(self, job: Range, places: Places) -> tuple[list[Read], list[bytes | memoryview]]:
        return self._decode([self._read(job)], places)

    def _read(self, job: Range) -> tuple[Range, memoryview]:
        """One coalesced range and its bytes."""
        pack_id, base, end, _ = job
        return job, memoryview(self.backend.get_range(pack_key(pack_id), base, end))

    def _decode(self, reads: list[tuple[Range, memoryview]],
                places: Places) -> tuple[list[Read], list[bytes | memoryview]]:
        """Open and decompress the chunks of ranges read (not yet checked): (chunks, decoded bytes of each).

        A chunk with a place is decoded straight into it, others into new
        buffers. Chunks stored back to back whose places also follow each other
        (a fresh snapshot's, usually) are decoded as one run (Codec.inflate_into):
        no Python step, temporary or copy per chunk; sealed, the run's frames are
        first opened side by side into one buffer (_open_run). Plain zstd chunks
        without a place (a small restore's) are decoded together
        (Codec.inflate_each); the rest one by one. A frame that fails is named on
        its own (_name_bad_frame).
        """
        chunks: list[Read] = []
        out: list[bytes | memoryview] = []
        at, dst = places.at, places.buf
        sealed = self.sealer.encrypted
        plain: list[int] = []              # positions in out of plain zstd chunks without a place, decoded together
        frames: list[memoryview] = []
        for (pack_id, base, _, group), buf in reads:
            i = 0
            while i < len(group):
                h, loc = group[i]
                place = at.get(h)
                if place is None and not sealed and loc.method == ZSTD:
                    plain.append(len(out))
                    frames.append(buf[loc.offset - base:loc.offset - base + loc.stored_len])
                    chunks.append((pack_id, h, loc))
                    out.append(b"")
                    i += 1
                    continue
                if place is not None and place[1] != loc.raw_len:
                    raise IntegrityError(f"chunk {h.hex()} holds {loc.raw_len} bytes; the chunk tree says {place[1]}")
                j = _run_end(group, i, at, places.cuts) if place is not None and loc.method in (ZSTD, *SHUFFLED) else i + 1
                if j == i + 1:   # one chunk: one decompress call costs less than a stream reader
                    stored = self._unseal(h, buf[loc.offset - base:loc.offset - base + loc.stored_len], pack_id)
                    try:
                        data = self.codec.decompress(loc.method, stored, loc.raw_len, loc.itemsize,
                                                     None if place is None else dst[place[0]:place[0] + loc.raw_len])
                    except IntegrityError as e:
                        raise IntegrityError(f"chunk {h.hex()} in pack {pack_id.hex()}: {e}") from e
                    chunks.append((pack_id, h, loc))
                    out.append(data)
                    i = j
                    continue
                stored_end = group[j - 1][1].offset + group[j - 1][1].stored_len
                dst_end = at[group[j - 1][0]][0] + group[j - 1][1].raw_len
                try:
                    run = (self._open_run(pack_id, buf, base, group[i:j]) if sealed
                           else buf[loc.offset - base:stored_end - base])
                    self.codec.inflate_into(loc.method, run, dst[place[0]:dst_end], loc.itemsize, loc.raw_len)
                except IntegrityError as e:
                    self._name_bad_frame(pack_id, buf, base, group[i:j])
                    raise IntegrityError(f"chunk {h.hex()} (or one of the {j - i - 1} after it) in pack "
                                         f"{pack_id.hex()}: {e}") from e
                for hk, lk in group[i:j]:
                    off = at[hk][0]
                    chunks.append((pack_id, hk, lk))
                    out.append(dst[off:off + lk.raw_len])
                i = j
        if plain:
            try:
                decoded = self.codec.inflate_each(frames, [chunks[k][2].raw_len for k in plain])
            except IntegrityError as e:
                for k, frame in zip(plain, frames):
                    pack_id, h, loc = chunks[k]
                    self._name_bad_frame(pack_id, frame, loc.offset, [(h, loc)])
                raise IntegrityError(f"one of {len(plain)} chunks: {e}") from e
            for k, data in zip(plain, decoded):
                out[k] = data
        return chunks, out

    def _open_run(self, pack_id: bytes, buf: memoryview, base: int, run: list[tuple[bytes, Location]]) -> memoryview:
        """The zstd frames of a run of sealed chunks, each opened (authenticated) into one buffer, side by side."""
        overhead = self.sealer.overhead
        frames = self._opened(sum(loc.stored_len for _, loc in run) - overhead * len(run))
        at = 0
        for h, loc in run:
            n = loc.stored_len - overhead
            self.sealer.open_into(buf[loc.offset - base:loc.offset - base + loc.stored_len], h,
                                  f"chunk {h.hex()} in pack {pack_id.hex()}", frames[at:at + n])
            at += n
        return frames

    def _opened(self, nbytes: int) -> memoryview:
        """nbytes for opened frames: this thread's MMAP_BUFFER bytes, kept so they are faulted in once
        (a local run is at most LOCAL_MAX_READ, the same size); a bigger remote run's are its own."""
        if nbytes > MMAP_BUFFER:
            return _buffer(nbytes)
        buf = getattr(self._opened_buf, "buf", None)
        if buf is None:
            buf = self._opened_buf.buf = _buffer(MMAP_BUFFER)
        return buf[:nbytes]

    def _name_bad_frame(self, pack_id: bytes, buf: memoryview, base: int, run: list[tuple[bytes, Location]]) -> None:
        """After a run of frames failed to decode: decode them one by one, and raise IntegrityError
        naming the first that fails (returns when each decodes alone)."""
        for h, loc in run:
            stored = self._unseal(h, buf[loc.offset - base:loc.offset - base + loc.stored_len], pack_id)
            try:
                self.codec.decompress(loc.method, stored, loc.raw_len, loc.itemsize)
            except IntegrityError as e:
                raise IntegrityError(f"chunk {h.hex()} in pack {pack_id.hex()}: {e}") from e

    def _check(self, chunks: list[Read], decoded: list[bytes | memoryview], sink: Sink, places: Places) -> None:
        """Check each decoded chunk against its hash; those without a place go to sink."""
        digest, at = self.hasher, places.at
        for (pack_id, h, _), data in zip(chunks, decoded):
            if digest(data) != h:
                raise IntegrityError(f"chunk {h.hex()} in pack {pack_id.hex()} does not match its hash")
            if h not in at:
                sink(h, data)

    def verify_chunk(self, h: bytes, data: bytes | memoryview, pack_id: bytes) -> None:
        if self.hasher(data) != h:
            raise IntegrityError(f"chunk {h.hex()} in pack {pack_id.hex()} does not match its hash")

    # snapshots ----------------------------------------------------------
    def resolve(self, ref: str | bytes) -> bytes:
        """A full snapshot id from an id or unique hex prefix (syncs once if unknown)."""
        for attempt in range(2):
            ids = self._candidates(ref)
            if len(ids) == 1:
                return ids[0]
            if len(ids) > 1:
                shown = ", ".join(i.hex()[:16] for i in ids[:5])
                raise SnapshotNotFoundError(f"snapshot prefix {_show(ref)!r} is ambiguous: matches {shown}")
            if attempt == 0:
                self.sync()
        raise SnapshotNotFoundError(f"no snapshot {_show(ref)!r} in {self.backend.url}")

    def _candidates(self, ref: str | bytes) -> list[bytes]:
        if isinstance(ref, bytes):
            return [ref] if self.index.has_snapshot(ref) else []
        ref = ref.strip().lower()
        if not ref or len(ref) > 64 or ref.strip("0123456789abcdef"):   # "": every character a hex digit
            raise SnapshotNotFoundError(f"{ref!r} is not a snapshot id (hex digits)")
        ids = self.index.ids_with_prefix(bytes.fromhex(ref[: len(ref) // 2 * 2]))
        return [i for i in ids if i.hex().startswith(ref)]

    def fields(self, snap_id: bytes) -> dict:
        f = self.index.snapshot(snap_id)
        if f is None:
            raise SnapshotNotFoundError(f"no snapshot {snap_id.hex()} in {self.backend.url}")
        return f

    def load_manifest(self, snap_id: bytes) -> dict:
        return self.open_manifest(snap_id, self.backend.get(manifest_key(snap_id)))

    def delete_snapshots(self, snap_ids: Iterable[bytes]) -> None:
        """Remove manifests, leaving a tombstone so children do not look like a broken chain."""
        ids = list(snap_ids)
        self.mark_forgotten(ids)
        for sid in ids:
            self.backend.delete(manifest_key(sid))
        self.index.remove_snapshots(ids)

    def mark_forgotten(self, snap_ids: list[bytes]) -> None:
        """Record snapshots as absent on purpose, so their children do not fail the chain check."""
        self.backend.put_many([(forgotten_key(sid), b"") for sid in snap_ids])
        self.index.add_forgotten(snap_ids)

    # index maintenance --------------------------------------------------
    def sync(self) -> tuple[int, int]:
        """Bring the index in line with storage: what others wrote, deleted or condemned.

        Returns (new snapshots, new packs).
        """
        with self._lock:
            # Read the index before listing storage: writers put objects before committing the
            # index, so anything known here and not listed is really gone.
            known_packs = self.index.packs()
            known = set(self.index.snapshot_ids())
            listed_packs = {pid: k for k in self.backend.list("packs/") if (pid := _key_id(k)) is not None}
            gone = known_packs.keys() - listed_packs.keys()
            if gone:
                held = self.index.pack_hashes()
                self.index.remove_packs({p: held.get(p, []) for p in gone})
            packs = self._read_trailers([k for pid, k in listed_packs.items() if pid not in known_packs])
            listed_snaps = {sid: k for k in self.backend.list("snapshots/") if (sid := _key_id(k)) is not None}
            if known - listed_snaps.keys():
                self.index.remove_snapshots(known - listed_snaps.keys())
            snaps = self._read_manifests([k for sid, k in listed_snaps.items() if sid not in known])
            if packs or snaps:
                self.index.commit(packs, snaps)
            forgotten = {sid for sid in map(_key_id, self.backend.list(FORGOTTEN_PREFIX)) if sid is not None}
            self.index.add_forgotten(forgotten - self.index.forgotten())
            self._marks_seen = 0.0
            self._refresh_marks(0.0)
            return len(snaps), len(packs)

    def rebuild_index(self) -> tuple[int, int]:
        """Drop the index and rebuild it from packs and manifests alone."""
        with self._lock:
            self.index.clear()
            self.index.set_meta("repo_id", self.config.repo_id.encode())
            self.cache.clear()
            self.memo.forget()
            self._trees.clear()
            return self.sync()

    def _read_trailers(self, keys: list[str]) -> list[tuple[bytes, int, list[PackEntry]]]:
        def one(key: str) -> tuple[bytes, int, list[PackEntry]] | None:
            pack_id = _key_id(key)
            if pack_id is None:
                return None
            try:
                return (pack_id, *read_pack_trailer(self.backend, key, self.sealer))
            except (IntegrityError, ObjectNotFoundError):
                return None   # a damaged or vanished pack: verify reports it, sync skips it
        return [r for r in self.read_pool.map(one, keys) if r is not None]

    def _read_manifests(self, keys: list[str]) -> list[tuple[bytes, dict]]:
        def one(key: str) -> tuple[bytes, dict] | None:
            sid = _key_id(key)
            if sid is None:
                return None
            try:
                return sid, self.open_manifest(sid, self.backend.get(key))
            except (IntegrityError, ObjectNotFoundError):
                return None
        return [r for r in self.read_pool.map(one, keys) if r is not None]


_PRIVATE = {"flags": mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS} if hasattr(mmap, "MAP_PRIVATE") else {}


def _buffer(nbytes: int) -> memoryview:
    """A writable, uninitialised buffer of nbytes for a read.

    From MMAP_BUFFER bytes up it is an anonymous mapping, not numpy's allocation:
    numpy advises the kernel to back big arrays with huge pages (MADV_HUGEPAGE),
    and where transparent huge pages defragment on madvise (this machine's
    setting) a fault may then wait for the kernel to compact memory. The first
    1 GiB restore in a process that had just snapshotted a 1 GiB state measured
    227-246 MB/s that way (2.4-2.7 s of system time) and 632-642 MB/s with the
    mapping (0.6 s). Arrays restored from the state are views of it and keep it mapped.
    The mapping is private where the OS has the flag: Python's default for an
    anonymous mmap is shared memory, whose first touch of 512 MB cost 0.33-0.36 s
    against 0.21 s private (no huge pages either way).
    """
    if nbytes >= MMAP_BUFFER:
        return memoryview(mmap.mmap(-1, nbytes, **_PRIVATE))
    import numpy as np  # loaded on first restore; gc and verify never need it
    return memoryview(np.empty(nbytes, dtype=np.uint8))


def _layout(entries: list[tree.Entry], start: int, end: int
            ) -> tuple[dict[bytes, tuple[int, int]], list[tuple[bytes, int, int, int]], dict[bytes, int]]:
    """Where the chunks of entries land in a read of bytes [start, end): (hash -> (offset, size)
    for chunks that land once and whole; (hash, offset, from, to) for each piece of the others;
    hash -> size for all).

    A whole snapshot without repeated chunks (the usual read) is laid out by C-level
    accumulate/zip/dict calls: a 1 GiB state has ~60,000 chunks, and a Python step
    per chunk here is time before the first byte is read.
    """
    if start == 0 and entries:
        lengths = [n for _, n in entries]
        offsets = list(accumulate(lengths, initial=0))
        if offsets[-1] == end:
            at = dict(zip([h for h, _ in entries], zip(offsets, lengths)))
            if len(at) == len(entries):
                return at, [], dict(entries)
    spans: list[tuple[bytes, int, int, int]] = []
    sizes: dict[bytes, int] = {}
    pos = 0
    for h, n in entries:
        lo, hi = max(pos, start), min(pos + n, end)
        if lo < hi:
            spans.append((h, lo - start, lo - pos, hi - pos))
            if sizes.setdefault(h, n) != n:
                raise IntegrityError(f"chunk tree lists chunk {h.hex()} with two sizes, {sizes[h]} and {n}")
        pos += n
        if pos >= end:
            break
    if pos < end:
        raise IntegrityError(f"chunk tree covers {pos} bytes, fewer than the {end} the manifest needs")
    once: dict[bytes, int] = {}   # hash -> where it lands, if it lands once and whole; else -1
    for h, dst, a, b in spans:
        once[h] = dst if h not in once and b - a == sizes[h] else -1
    at = {h: (d, sizes[h]) for h, d in once.items() if d >= 0}
    return at, [sp for sp in spans if sp[0] not in at], sizes


def _finish(futures: list[Future]) -> None:
    """Wait for every task, then raise the first failure: no thread is still writing when the caller goes on."""
    wait(futures)
    for f in futures:
        f.result()


def _run_end(group: list[tuple[bytes, Location]], i: int, at: dict[bytes, tuple[int, int]],
             cuts: frozenset[int]) -> int:
    """The end of the run starting at group[i]: chunks stored back to back with one method, placed
    back to back in the buffer's memory (not across cuts; and, shuffled, of one size and item
    size), so one zstd stream decodes them all into place."""
    loc = group[i][1]
    j, stored_end, dst_end = i + 1, loc.offset + loc.stored_len, at[group[i][0]][0] + loc.raw_len
    while j < len(group):
        hj, lj = group[j]
        if (lj.offset != stored_end or lj.method != loc.method or at.get(hj) != (dst_end, lj.raw_len) or dst_end in cuts
                or loc.method in SHUFFLED and (lj.raw_len, lj.itemsize) != (loc.raw_len, loc.itemsize)):
            break
        stored_end += lj.stored_len
        dst_end += lj.raw_len
        j += 1
    return j


def _coalesce(locs: dict[bytes, Location], max_read: int) -> list[Range]:
    """Group chunk locations into ranged reads: per pack, in offset order, across gaps up to
    COALESCE_GAP and below max_read in all."""
    ranges: list[Range] = []
    pack_id, base, end, group = None, 0, 0, []
    for it in sorted(locs.items(), key=_pack_and_offset):   # one sort, then one pass
        loc = it[1]
        if loc.pack == pack_id and loc.offset - end <= COALESCE_GAP and loc.offset + loc.stored_len - base <= max_read:
            group.append(it)
            end = max(end, loc.offset + loc.stored_len)
        else:
            if group:
                ranges.append((pack_id, base, end, group))
            pack_id, base, end, group = loc.pack, loc.offset, loc.offset + loc.stored_len, [it]
    if group:
        ranges.append((pack_id, base, end, group))
    return ranges


def _pack_and_offset(item: tuple[bytes, Location]) -> tuple[bytes, int]:
    return item[1].pack, item[1].offset


class _Packer:
    """Compresses chunks on the pool while the caller goes on, and hands out packs as they fill.

    Jobs (hash, raw view, itemsize, kind) come in order; every COMPRESS_BATCH
    raw bytes become one pool task, which zstd runs in its own threads without
    the GIL (Codec.compress_many), so the caller's chunking and hashing go on
    alongside. At most COMPRESS_AHEAD tasks are in flight, which bounds the
    compressed bytes held in memory. done() gets each full PackWriter (about
    PACK_TARGET stored bytes), in order, to finalize.
    """

    def __init__(self, repo: Repository, done: Callable[[PackWriter], None]):
        self.repo = repo
        self.done = done
        self.writer = PackWriter(repo.sealer)
        self.batch: list[tuple[bytes, memoryview, int, int]] = []
        self.load = 0
        self.tasks: deque[Future] = deque()

    def add(self, job: tuple[bytes, memoryview, int, int]) -> None:
        self.batch.append(job)
        self.load += len(job[1])
        if self.load >= COMPRESS_BATCH:
            self.tasks.append(self.repo.pool.submit(self.repo._compress, self.batch))
            self.batch, self.load = [], 0
            while self.tasks and (len(self.tasks) > COMPRESS_AHEAD or self.tasks[0].done()):
                self._fill(self.tasks.popleft().result())

    def finish(self) -> None:
        """Compress what is left (here, when it is all there is) and hand out the last pack."""
        while self.tasks:
            self._fill(self.tasks.popleft().result())
        if self.batch:
            self._fill(self.repo._compress(self.batch))
            self.batch, self.load = [], 0
        if len(self.writer):
            self.done(self.writer)
            self.writer = PackWriter(self.repo.sealer)

    def _fill(self, stored: list[tuple]) -> None:
        for h, kind, method, itemsize, data, raw_len in stored:
            self.writer.add(h, kind, method, itemsize, data, raw_len)
            if self.writer.size >= PACK_TARGET:
                self.done(self.writer)
                self.writer = PackWriter(self.repo.sealer)


class _NewChunks:
    """The chunks one write must store: those the index lacks, each once, packed and put as found.

    Each full pack is finalized (joined and hashed) and put on the pool while
    the next one fills, at most PUTS_AHEAD at a time, so a big snapshot never
    holds all its compressed chunks in memory at once. Used as a context
    manager, it waits for every put on the way out, failure or not: no thread
    still writes a pack when the caller goes on.
    """

    def __init__(self, repo: Repository):
        self.repo = repo
        self.queued: set[bytes] = set()
        self.puts: list[Future] = []
        self.finishing = False
        self.defer_only = False
        self.deferred: tuple[str, list[bytes | memoryview]] | None = None   # the only pack (key, pieces), left to the caller
        self.packer = _Packer(repo, self._put)

    def add(self, hashes: list[bytes], chunks: dict[bytes, tuple[memoryview, int]], kind: int) -> None:
        """Queue those of hashes the repository lacks; ReuseError if one of them has no data in chunks."""
        todo = [h for h in dict.fromkeys(hashes) if h not in self.queued]
        missing = self.repo.index.missing(todo)
        lost = missing.difference(chunks)   # a set minus a dict looks each element up: O(len(missing))
        if lost:
            raise ReuseError(f"{len(lost)} reused chunks are no longer stored")
        for h in todo:
            if h in missing:
                self.queued.add(h)
                self.packer.add((h, *chunks[h], kind))

    def finish(self, defer_only: bool = False) -> list[tuple[bytes, int, list[PackEntry]]]:
        """Store the rest and wait until every pack is durable: (pack id, size, entries) per pack.

        With defer_only, a write of a single pack (a small snapshot) finalizes it but
        leaves its put to the caller, as `deferred`, so that it can be put together
        with the manifest (Backend.put_pair); the caller must not rely on it before then.
        """
        self.finishing = True
        self.defer_only = defer_only
        self.packer.finish()
        wait(self.puts)
        return [put.result() for put in self.puts]

    def __enter__(self) -> "_NewChunks":
        return self

    def __exit__(self, *exc: object) -> None:
        wait(self.puts)

    def _put(self, writer: PackWriter) -> None:
        if self.finishing and not self.puts:  # the only pack (a small snapshot): no hand-off to the pool
            done: Future = Future()
            if self.defer_only:
                pack_id, pieces, entries = writer.pieces()
                self.deferred = (pack_key(pack_id), pieces)
                done.set_result((pack_id, sum(map(len, pieces)), entries))
            else:
                done.set_result(self._finalize_and_put(writer, True))
            self.puts.append(done)
            return
        if len(self.puts) >= PUTS_AHEAD:
            self.puts[-PUTS_AHEAD].result()
        self.puts.append(self.repo.pool.submit(self._finalize_and_put, writer, False))

    def _finalize_and_put(self, writer: PackWriter, cache: bool) -> tuple[bytes, int, list[PackEntry]]:
        """Hash the pack and put it; a big write's packs (cache=False) are left out of the OS page cache."""
        pack_id, pieces, entries = writer.pieces()
        self.repo.backend.put(pack_key(pack_id), pieces, cache=cache)
        return pack_id, sum(map(len, pieces)), entries


def read_pack_trailer(backend: Backend, key: str, sealer: crypto.Sealer = crypto.NULL_SEALER
                      ) -> tuple[int, list[PackEntry]]:
    """(pack size, entries) from the pack's footer and trailer (opened when sealed), with bounds checks."""
    size = backend.size(key)
    if size < FOOTER_SIZE:
        raise IntegrityError(f"pack {key} is {size} bytes, smaller than a footer")
    footer = backend.get_range(key, size - FOOTER_SIZE, size)
    trailer_len = parse_footer(footer, size)
    trailer = backend.get_range(key, size - FOOTER_SIZE - trailer_len, size - FOOTER_SIZE)
    return size, open_trailer(trailer, footer, size, sealer, f"pack {key}")


def _key_id(key: str) -> bytes | None:
    name = key.rsplit("/", 1)[-1]
    try:
        raw = bytes.fromhex(name)
    except ValueError:
        return None
    return raw if len(raw) == 32 else None


def _show(ref: str | bytes) -> str:
    return ref.hex() if isinstance(ref, bytes) else str(ref)

