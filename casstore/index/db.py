"""LMDB index: chunk locations, snapshot summaries and lineages.

Databases in one LMDB environment:

* ``chunks``:  chunk or node hash (32) -> locations (an LMDB dupsort key: a
  chunk can sit in several packs, e.g. after a repack), each 20 bytes: pack
  number (u32), kind, method, itemsize, offset, stored and raw length, as in
  the pack trailer. A number instead of the 32-byte pack id keeps the index,
  which has an entry per chunk, less than half the size.
* ``packs``:   pack id (32) -> size (u64), entry count (u32), number (u32).
* ``packnums``: pack number (u32 BE) -> pack id.
* ``summaries``: sequence number (u64 BE) -> a snapshot's manifest fields
  (msgpack, compressed as manifests are: manifest.pack). Numbers only grow,
  so every summary is appended at the end of the table and its pages fill
  up; keyed by the random snapshot id, they were split half-full.
* ``snapseq``: snapshot id (32) -> its sequence number.
* ``lineage``: agent \\0 session \\0 position (u64 BE) snapshot id -> b"", so a
  prefix scan lists a lineage in order.
* ``labels``: agent -> 16-byte values (LMDB dupsort with fixed-size values),
  each the first 8 bytes of the BLAKE3 of a label a snapshot was written with
  (manifest field ``labels``) and that snapshot's sequence number, so one
  snapshot of a long history is found by what it is (a LangGraph checkpoint
  id) without listing the history. Fixed-size values pack densely: an entry
  costs 16 bytes, where a key of its own took over 100 with its node header
  and half-full pages. A hash that two labels share is told apart by the
  summary's own labels.
* ``unlabelled``: agent -> how many of its snapshots have no labels (u64), so
  a caller knows whether the labels find all of an agent's snapshots (a
  LangGraph thread written by a casstore before labels has such snapshots).
  The meta value ``labelled`` records the summaries these two tables cover
  (last sequence number, its id, count): when another writer (an earlier
  casstore) changed the summaries without them, the next lookup rebuilds both.
* ``condemned``: pack id -> mark time (f64): packs gc will delete; their
  chunks count as missing to writers, who store fresh copies instead.
* ``forgotten``: snapshot id -> b"": snapshots deleted on purpose, so a child
  whose parent is gone is not reported as a broken chain.
* ``meta``:    small bookkeeping values.

An index written before ``summaries`` existed (``snaps``: id -> fields) is
converted when it is opened. Everything here can be rebuilt from the packs
and manifests in storage. One snapshot is committed in one write
transaction; LMDB's own lock serialises writers across processes.
"""

from __future__ import annotations

import contextlib
import os
import struct
import threading
from typing import Iterable, Iterator, NamedTuple

import blake3
import lmdb
import msgpack

from .. import manifest
from ..errors import ConfigurationError, StorageError
from ..pack import PackEntry
from .. import observability as _obs

MAP_SIZE = 1 << 38
_PACK = struct.Struct("<QII")
_LOC = struct.Struct("<IBBHIII")
_NUM = struct.Struct(">I")     # packnums key: big-endian, so numbers sort in order
_NUM_LE = struct.Struct("<I")  # as the first field of a chunk location
_POS = struct.Struct(">Q")
_TIME = struct.Struct("<d")
_LABELLED = b"labelled"

_ENVS: dict[str, tuple[lmdb.Environment, int]] = {}
_ENVS_LOCK = threading.Lock()


class Location(NamedTuple):
    """Where one copy of a chunk lives (a tuple: a restore builds thousands of them)."""

    pack: bytes
    kind: int
    method: int
    itemsize: int
    offset: int
    stored_len: int
    raw_len: int


def _open_env(path: str) -> lmdb.Environment:
    """LMDB forbids opening one environment twice in a process, so share it."""
    key = os.path.realpath(path)
    with _ENVS_LOCK:
        env, refs = _ENVS.get(key, (None, 0))
        if env is None:
            os.makedirs(key, exist_ok=True)
            try:
                # metasync off: a power loss may undo the last commit, never corrupt the index,
                # and what it undoes is re-learned from storage by sync() (the index is a cache).
                env = lmdb.open(key, map_size=MAP_SIZE, max_dbs=16, sync=True, metasync=False, max_readers=256)
            except lmdb.Error as e:
                raise StorageError(f"cannot open the index at {key}: {e}") from e
        _ENVS[key] = (env, refs + 1)
        return env


def _release_env(path: str) -> None:
    key = os.path.realpath(path)
    with _ENVS_LOCK:
        env, refs = _ENVS.get(key, (None, 0))
        if env is None:
            return
        if refs <= 1:
            del _ENVS[key]
            env.close()
        else:
            _ENVS[key] = (env, refs - 1)


def lineage_prefix(agent_id: str | None, session_id: str | None = None) -> bytes:
    if agent_id is None:
        return b""
    p = _name(agent_id, "agent_id") + b"\0"
    return p if session_id is None else p + _name(session_id, "session_id") + b"\0"


def _name(value: str, what: str) -> bytes:
    if not isinstance(value, str) or not value or "\0" in value:
        raise ConfigurationError(f"{what} must be a non-empty string without NUL characters, got {value!r}")
    return value.encode("utf-8")


class Index:
    """Typed access to the LMDB environment at path."""

    def __init__(self, path: str):
        self.path = path
        self.env = _open_env(path)
        self._chunks = self.env.open_db(b"chunks", dupsort=True)
        self._packs = self.env.open_db(b"packs")
        self._packnums = self.env.open_db(b"packnums")
        self._pack_ids: dict[bytes, bytes] = {}  # packed number -> pack id (numbers never change meaning)
        self._summaries = self.env.open_db(b"summaries")
        self._snaps = self.env.open_db(b"snapseq")
        self._lineage = self.env.open_db(b"lineage")
        self._meta = self.env.open_db(b"meta")
        self._condemned = self.env.open_db(b"condemned")
        self._forgotten = self.env.open_db(b"forgotten")
        self._labels = self.env.open_db(b"labels", dupsort=True, dupfixed=True)
        self._unlabelled = self.env.open_db(b"unlabelled")
        self._convert_summaries()

    def _convert_summaries(self) -> None:
        """Move summaries of an index written by an earlier version (``snaps``) to ``summaries``."""
        try:
            old = self.env.open_db(b"snaps", create=False)
            with self.env.begin(write=True) as txn:
                for sid, raw in list(txn.cursor(db=old)):
                    self._put_summary(txn, bytes(sid), msgpack.unpackb(raw, raw=False, strict_map_key=False), raw)
                txn.drop(old, delete=True)
        except (lmdb.NotFoundError, lmdb.BadDbiError):
            return  # nothing to convert, or another process converted it meanwhile

    def close(self) -> None:
        if self.env is not None:
            _release_env(self.path)
            self.env = None

    # chunks -------------------------------------------------------------
    def missing(self, hashes: Iterable[bytes]) -> set[bytes]:
        """Hashes with no copy outside condemned packs: a writer must store them."""
        with self.env.begin() as txn:
            condemned = self._condemned_nums(txn)
            if not condemned:
                return {h for h in hashes if txn.get(h, db=self._chunks) is None}
            cur = txn.cursor(db=self._chunks)
            out = set()
            for h in hashes:
                if not cur.set_key(h) or all(v[:4] in condemned for v in cur.iternext_dup()):
                    out.add(h)
            return out

    def locate(self, hashes: Iterable[bytes]) -> dict[bytes, Location]:
        """One location per known hash, preferring packs that are not condemned.

        One cursor call fetches every copy of every hash: a restore asks for thousands.
        """
        with self.env.begin() as txn:
            condemned = self._condemned_nums(txn)
            cur = txn.cursor(db=self._chunks)
            if not condemned:   # any copy will do: the first of each hash
                found = cur.getmulti(hashes)
            else:
                best: dict[bytes, bytes] = {}
                for h, v in cur.getmulti(hashes, dupdata=True):
                    old = best.get(h)
                    if old is None or (old[:4] in condemned and v[:4] not in condemned):
                        best[h] = v
                found = list(best.items())
            # One unpack call for all values, and tuple.__new__ rather than Location(): at a
            # restore's tens of thousands of chunks the per-chunk Python step is what costs.
            ids, pack_id, new = self._pack_ids, self._pack_id, tuple.__new__
            return {h: new(Location, (ids.get(v[:4]) or pack_id(txn, v[:4]), *fields[1:]))
                    for (h, v), fields in zip(found, _LOC.iter_unpack(b"".join(v for _, v in found)))}

    def iter_chunks(self) -> Iterator[tuple[bytes, Location]]:
        """Every (hash, location) pair, a chunk once per pack that holds it."""
        with self.env.begin(db=self._chunks) as txn:
            for k, v in txn.cursor():
                yield bytes(k), self._location(txn, v)

    def chunk_count(self) -> int:
        with self.env.begin() as txn:
            return txn.stat(self._chunks)["entries"]

    def _location(self, txn: lmdb.Transaction, value: bytes) -> Location:
        _num, kind, method, itemsize, offset, stored, raw = _LOC.unpack(value)
        return Location(self._pack_id(txn, value[:4]), kind, method, itemsize, offset, stored, raw)

    def _pack_id(self, txn: lmdb.Transaction, num: bytes) -> bytes:
        pack_id = self._pack_ids.get(bytes(num))
        if pack_id is None:
            raw = txn.get(_NUM.pack(_NUM_LE.unpack(num)[0]), db=self._packnums)
            if raw is None:
                raise StorageError(f"index at {self.path} names an unknown pack number; run `casstore index rebuild`")
            pack_id = self._pack_ids[bytes(num)] = bytes(raw)
        return pack_id

    # packs --------------------------------------------------------------
    def packs(self) -> dict[bytes, tuple[int, int]]:
        """Pack id -> (size, entry count)."""
        with self.env.begin(db=self._packs) as txn:
            return {bytes(k): _PACK.unpack(v)[:2] for k, v in txn.cursor()}

    def _put_pack(self, txn: lmdb.Transaction, pack_id: bytes, size: int, entries: list[PackEntry]) -> None:
        known = txn.get(pack_id, db=self._packs)
        if known is not None:
            num = _PACK.unpack(known)[2]
        else:
            raw = txn.get(b"next_pack", db=self._meta)
            num = _NUM.unpack(raw)[0] if raw else 1
            txn.put(b"next_pack", _NUM.pack(num + 1), db=self._meta)
            txn.put(pack_id, _PACK.pack(size, len(entries), num), db=self._packs)
            txn.put(_NUM.pack(num), pack_id, db=self._packnums)
        for e in entries:
            txn.put(e.hash, _LOC.pack(num, e.kind, e.method, e.itemsize, e.offset, e.stored_len, e.raw_len),
                    db=self._chunks)

    def add_packs(self, packs: list[tuple[bytes, int, list[PackEntry]]]) -> None:
        with self.env.begin(write=True) as txn:
            for pack_id, size, entries in packs:
                self._put_pack(txn, pack_id, size, entries)

    def remove_packs(self, packs: dict[bytes, list[bytes]]) -> None:
        """Forget packs (id -> the hashes they hold) and the chunk locations pointing into them."""
        with self.env.begin(write=True) as txn:
            cur = txn.cursor(db=self._chunks)
            for pack_id, hashes in packs.items():
                known = txn.get(pack_id, db=self._packs)
                if known is not None:
                    num = _PACK.unpack(known)[2]
                    prefix = _NUM_LE.pack(num)
                    for h in hashes:
                        if cur.set_key(h):
                            for v in list(cur.iternext_dup()):
                                if v[:4] == prefix:
                                    txn.delete(h, v, db=self._chunks)
                    txn.delete(_NUM.pack(num), db=self._packnums)
                txn.delete(pack_id, db=self._packs)
                txn.delete(pack_id, db=self._condemned)

    def pack_hashes(self) -> dict[bytes, list[bytes]]:
        """Pack id -> hashes it holds, from the chunk table (one scan)."""
        out: dict[bytes, list[bytes]] = {}
        with self.env.begin(db=self._chunks) as txn:
            for k, v in txn.cursor():
                out.setdefault(self._pack_id(txn, v[:4]), []).append(bytes(k))
        return out

    # gc marks -----------------------------------------------------------
    def _condemned_nums(self, txn: lmdb.Transaction) -> set[bytes]:
        """Packed numbers (as stored in chunk locations) of the condemned packs."""
        out = set()
        for pack_id in txn.cursor(db=self._condemned).iternext(keys=True, values=False):
            known = txn.get(pack_id, db=self._packs)
            if known is not None:
                out.add(_NUM_LE.pack(_PACK.unpack(known)[2]))
        return out

    def has_condemned(self) -> bool:
        """Whether gc condemned any pack this index knows."""
        with self.env.begin() as txn:
            return bool(self._condemned_nums(txn))

    def condemned(self) -> dict[bytes, float]:
        with self.env.begin(db=self._condemned) as txn:
            return {bytes(k): _TIME.unpack(v)[0] for k, v in txn.cursor()}

    def set_condemned(self, marks: dict[bytes, float], clear: Iterable[bytes] = ()) -> None:
        with self.env.begin(write=True, db=self._condemned) as txn:
            for p in clear:
                txn.delete(p)
            for p, t in marks.items():
                txn.put(p, _TIME.pack(t))

    def forgotten(self) -> set[bytes]:
        with self.env.begin(db=self._forgotten) as txn:
            return {bytes(k) for k in txn.cursor().iternext(keys=True, values=False)}

    def add_forgotten(self, snap_ids: Iterable[bytes]) -> None:
        with self.env.begin(write=True, db=self._forgotten) as txn:
            for sid in snap_ids:
                txn.put(sid, b"")

    # snapshots ----------------------------------------------------------
    def commit(self, packs: list[tuple[bytes, int, list[PackEntry]]], snapshots: list[tuple[bytes, dict]]) -> None:
        """Record new packs and snapshots in one transaction."""
        _obs.note_packs(packs)  # the running operation learns the logical bytes it stored (dedup metrics)
        with self.env.begin(write=True) as txn:
            for pack_id, size, entries in packs:
                self._put_pack(txn, pack_id, size, entries)
            current = self._labels_current(txn)
            last = None
            for snap_id, fields in snapshots:
                seq = self._put_summary(txn, snap_id, fields, msgpack.packb(fields, use_bin_type=True))
                last = (seq, snap_id) if seq is not None else last
            if current and last is not None:
                self._mark_labelled(txn, *last)

    def _put_summary(self, txn: lmdb.Transaction, snap_id: bytes, fields: dict, raw: bytes) -> bytes | None:
        """Record one snapshot, its summary appended under the next sequence number, which is
        returned (None when the snapshot was known already)."""
        if txn.get(snap_id, db=self._snaps) is not None:
            return None
        cur = txn.cursor(db=self._summaries)
        seq = _POS.pack(_POS.unpack(cur.key())[0] + 1 if cur.last() else 0)
        txn.put(seq, manifest.pack(raw), append=True, db=self._summaries)
        txn.put(snap_id, seq, db=self._snaps)
        txn.put(_lineage_key(fields, snap_id), b"", db=self._lineage)
        self._add_labels(txn, fields, seq, 1)
        return seq

    def _summary(self, txn: lmdb.Transaction, seq: bytes | None) -> dict | None:
        raw = None if seq is None else txn.get(seq, db=self._summaries)
        return None if raw is None else msgpack.unpackb(manifest.unpack(raw), raw=False, strict_map_key=False)

    def snapshot(self, snap_id: bytes) -> dict | None:
        with self.env.begin() as txn:
            return self._summary(txn, txn.get(snap_id, db=self._snaps))

    def has_snapshot(self, snap_id: bytes) -> bool:
        with self.env.begin(db=self._snaps) as txn:
            return txn.get(snap_id) is not None

    def snapshot_ids(self) -> list[bytes]:
        with self.env.begin(db=self._snaps) as txn:
            return [bytes(k) for k in txn.cursor().iternext(keys=True, values=False)]

    def ids_with_prefix(self, prefix: bytes) -> list[bytes]:
        """Snapshot ids starting with prefix (bytes of whole hex digit pairs)."""
        out = []
        with self.env.begin(db=self._snaps) as txn:
            cur = txn.cursor()
            if cur.set_range(prefix):
                for k in cur.iternext(keys=True, values=False):
                    if not k.startswith(prefix):
                        break
                    out.append(bytes(k))
        return out

    def lineage(self, agent_id: str | None = None, session_id: str | None = None) -> list[tuple[bytes, dict]]:
        prefix = lineage_prefix(agent_id, session_id)
        out = []
        with self.env.begin() as txn:
            cur = txn.cursor(db=self._lineage)
            if cur.set_range(prefix):
                for k in cur.iternext(keys=True, values=False):
                    if not k.startswith(prefix):
                        break
                    sid = bytes(k[-32:])
                    fields = self._summary(txn, txn.get(sid, db=self._snaps))
                    if fields is not None:
                        out.append((sid, fields))
        return out

    def head(self, agent_id: str, session_id: str) -> tuple[bytes, dict] | None:
        """The latest snapshot of a lineage and its summary."""
        with self.env.begin() as txn:
            found = self._head_key(txn, agent_id, session_id)
            if found is None:
                return None
            fields = self._summary(txn, txn.get(found[0], db=self._snaps))
            return None if fields is None else (found[0], fields)

    def head_position(self, agent_id: str, session_id: str) -> tuple[bytes, int] | None:
        """(id, position in its lineage) of a lineage's latest snapshot, read from the lineage key
        alone: what a new snapshot needs to name its parent, without decoding a summary."""
        with self.env.begin() as txn:
            return self._head_key(txn, agent_id, session_id)

    def _head_key(self, txn: lmdb.Transaction, agent_id: str, session_id: str) -> tuple[bytes, int] | None:
        """The last lineage key under the lineage's prefix (highest position), as (id, position)."""
        prefix = lineage_prefix(agent_id, session_id)
        cur = txn.cursor(db=self._lineage)
        after = prefix[:-1] + b"\x01"  # prefix ends in NUL: this sorts right after all its keys
        found = cur.prev() if cur.set_range(after) else cur.last()
        key = cur.key()
        if not found or not key.startswith(prefix):
            return None
        return bytes(key[-32:]), _POS.unpack(key[len(prefix):len(prefix) + _POS.size])[0]

    def remove_snapshots(self, snap_ids: Iterable[bytes]) -> None:
        with self.env.begin(write=True) as txn:
            current = self._labels_current(txn)
            for sid in snap_ids:
                seq = txn.get(sid, db=self._snaps)
                fields = self._summary(txn, seq)
                if fields is None:
                    continue
                txn.delete(_lineage_key(fields, sid), db=self._lineage)
                self._add_labels(txn, fields, seq, -1)
                txn.delete(sid, db=self._snaps)
                txn.delete(seq, db=self._summaries)
            if current:
                self._mark_labelled(txn)

    # labels -------------------------------------------------------------
    def labelled(self, agent_id: str, label: str) -> list[tuple[bytes, dict]]:
        """The snapshots of agent_id written with label, with their summaries."""
        agent, want = _name(agent_id, "agent_id"), _label_hash(label)
        with self._label_txn() as txn:
            cur = txn.cursor(db=self._labels)
            out = []
            if cur.set_range_dup(agent, want + bytes(_POS.size)):
                for value in cur.iternext_dup():
                    if value[:8] != want:
                        break
                    seq = bytes(value[8:])
                    fields = self._summary(txn, seq)
                    if fields is not None and label in fields.get("labels", ()):
                        sid = self._id_at(txn, seq, fields)
                        if sid is not None:
                            out.append((sid, fields))
            return out

    def unlabelled(self, agent_id: str) -> int:
        """How many of the agent's snapshots have no labels."""
        with self._label_txn() as txn:
            count = txn.get(_name(agent_id, "agent_id"), db=self._unlabelled)
        return 0 if count is None else _POS.unpack(count)[0]

    def _add_labels(self, txn: lmdb.Transaction, fields: dict, seq: bytes, sign: int) -> None:
        """Index (sign 1) or unindex (-1) a snapshot's labels, or count it as unlabelled."""
        agent = _name(fields["agent"], "agent_id")
        labels = fields.get("labels", ())
        if not labels:
            old = txn.get(agent, db=self._unlabelled)
            count = (0 if old is None else _POS.unpack(old)[0]) + sign
            if count > 0:
                txn.put(agent, _POS.pack(count), db=self._unlabelled)
            elif old is not None:
                txn.delete(agent, db=self._unlabelled)
        for value in sorted({_label_hash(label) + seq for label in labels}):
            if sign > 0:
                txn.put(agent, value, db=self._labels)
            else:
                txn.delete(agent, value, db=self._labels)

    @contextlib.contextmanager
    def _label_txn(self) -> Iterator[lmdb.Transaction]:
        """A read transaction in which the labels table covers every summary."""
        with self.env.begin() as txn:
            if self._labels_current(txn):
                yield txn
                return
        with self.env.begin(write=True) as txn:
            if not self._labels_current(txn):
                self._index_labels(txn)
        with self.env.begin() as txn:
            yield txn

    def _labels_current(self, txn: lmdb.Transaction) -> bool:
        """Whether the labels table holds the labels of every summary (see the module docstring)."""
        mark = txn.get(_LABELLED, db=self._meta)
        cur = txn.cursor(db=self._summaries)
        if not cur.last():
            return True
        if mark is None:
            return False
        seq, sid, count = msgpack.unpackb(mark)
        return (seq == _POS.unpack(cur.key())[0] and txn.get(sid, db=self._snaps) == _POS.pack(seq)
                and count == txn.stat(self._summaries)["entries"])

    def _mark_labelled(self, txn: lmdb.Transaction, seq: bytes | None = None, sid: bytes | None = None) -> None:
        """Record that the labels table covers every summary now; seq and sid name the last one,
        found here when not given."""
        if seq is None:
            cur = txn.cursor(db=self._summaries)
            if not cur.last():
                txn.delete(_LABELLED, db=self._meta)
                return
            seq = bytes(cur.key())
            sid = self._id_at(txn, seq)
            if sid is None:
                return
        txn.put(_LABELLED, msgpack.packb([_POS.unpack(seq)[0], sid, txn.stat(self._summaries)["entries"]]),
                db=self._meta)

    def _id_at(self, txn: lmdb.Transaction, seq: bytes, fields: dict | None = None) -> bytes | None:
        """The id of the snapshot with this sequence number (and summary), found through its lineage key."""
        fields = fields or self._summary(txn, seq)
        if fields is None:
            return None
        prefix = _lineage_key(fields, b"")
        cur = txn.cursor(db=self._lineage)
        if cur.set_range(prefix):
            for k in cur.iternext(keys=True, values=False):
                if not k.startswith(prefix):
                    break
                if txn.get(k[-32:], db=self._snaps) == seq:
                    return bytes(k[-32:])
        return None

    def _index_labels(self, txn: lmdb.Transaction) -> None:
        """Rebuild the label tables from every summary (after another writer changed them)."""
        txn.drop(self._labels, delete=False)
        txn.drop(self._unlabelled, delete=False)
        for k in txn.cursor(db=self._lineage).iternext(keys=True, values=False):
            seq = txn.get(k[-32:], db=self._snaps)
            fields = self._summary(txn, seq)
            if fields is not None:
                self._add_labels(txn, fields, bytes(seq), 1)
        self._mark_labelled(txn)

    # meta ---------------------------------------------------------------
    def get_meta(self, key: str) -> bytes | None:
        with self.env.begin(db=self._meta) as txn:
            v = txn.get(key.encode())
        return None if v is None else bytes(v)

    def set_meta(self, key: str, value: bytes) -> None:
        with self.env.begin(write=True, db=self._meta) as txn:
            txn.put(key.encode(), value)

    def clear(self) -> None:
        with self.env.begin(write=True) as txn:
            for db in (self._chunks, self._packs, self._packnums, self._summaries, self._snaps, self._lineage, self._meta,
                       self._condemned, self._forgotten, self._labels, self._unlabelled):
                txn.drop(db, delete=False)
        self._pack_ids.clear()


def _lineage_key(fields: dict, snap_id: bytes) -> bytes:
    return lineage_prefix(fields["agent"], fields["session"]) + _POS.pack(fields["index"]) + snap_id


def _label_hash(label: str) -> bytes:
    return blake3.blake3(label.encode("utf-8")).digest(length=8)


def check_labels(labels: object) -> list[str]:
    """labels as a list without repeats, or ConfigurationError naming what is wrong."""
    if isinstance(labels, (str, bytes)) or not isinstance(labels, Iterable):
        raise ConfigurationError(f"labels must be a list of strings, got {type(labels).__name__}")
    out = list(dict.fromkeys(labels))
    for label in out:
        if not isinstance(label, str) or not label:
            raise ConfigurationError(f"a label must be a non-empty string, got {label!r}")
    return out
