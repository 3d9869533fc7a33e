"""The public API: a Store snapshots and restores agent state."""

from __future__ import annotations

import datetime as _dt
import logging
import time
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any, Iterable

from . import codec, retention, tree
from . import diff as diff_mod
from . import gc as gc_mod
from .backend import Backend
from .cache import DEFAULT_CACHE_BYTES
from .config import resolve_url
from .copy import CopyReport, copy_snapshots
from .errors import ChunkNotFoundError, ConfigurationError, IntegrityError, PathNotFoundError, SnapshotNotFoundError
from .index.db import check_labels
from .config import RepoConfig
from .repository import Repository, Stream
from .tree import Proof
from .utf8view import is_ascii, new_ascii
from .verify import VerifyReport
from .verify import verify as verify_repo
from . import observability as _obs
from .observability import observed

log = logging.getLogger("casstore")


@dataclass(frozen=True)
class SnapshotInfo:
    """What the index knows of one snapshot."""

    id: str
    agent_id: str
    session_id: str
    parent: str | None
    index: int
    timestamp: float
    description: str | None
    metadata: dict
    root: str
    raw_size: int
    stored_size: int
    chunk_count: int
    new_chunk_count: int
    kind: str = "state"
    labels: tuple[str, ...] = ()

    @property
    def time(self) -> _dt.datetime:
        return _dt.datetime.fromtimestamp(self.timestamp, tz=_dt.timezone.utc)

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    @classmethod
    def from_fields(cls, snap_id: bytes, f: dict) -> "SnapshotInfo":
        """The info of an index summary. Built without the dataclass __init__, which sets each
        field of a frozen instance through object.__setattr__: 6.4 against 2.5 µs an info, and
        a listing builds hundreds. Every field is set, so the instance equals a constructed one."""
        info = object.__new__(cls)
        info.__dict__.update(
            id=snap_id.hex(), agent_id=f["agent"], session_id=f["session"],
            parent=f["parent"].hex() if f.get("parent") else None, index=f["index"], timestamp=f["time"],
            description=f.get("desc"), metadata=f.get("meta") or {}, root=f["root"].hex(),
            raw_size=f["raw"], stored_size=f.get("stored", 0), chunk_count=f["chunks"],
            new_chunk_count=f.get("new_chunks", 0), kind=f["kind"], labels=tuple(f.get("labels", ())))
        return info


@dataclass(frozen=True)
class Stats:
    snapshots: int
    logical_bytes: int
    stored_bytes: int
    chunks: int
    packs: int
    dedup_ratio: float = field(default=0.0)

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


class Store:
    """A casstore repository: snapshot, restore, list, verify, prove, gc."""

    def __init__(self, repo: Repository):
        self._repo = repo

    @property
    def url(self) -> str:
        return self._repo.backend.url

    def __repr__(self) -> str:
        return f"Store({self.url!r})"

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self._repo.close()

    def drop_caches(self) -> None:
        """Empty the in-memory cache of verified chunks and tree nodes (see `open`'s cache_bytes):
        the next restore reads storage, as a new process would. Useful before timing a cold
        restore, or to make a restore re-read data that was damaged in storage meanwhile."""
        self._repo.drop_caches()

    # writing ------------------------------------------------------------
    @observed("snapshot")
    def snapshot(self, state: Any, agent_id: str = "default", session_id: str = "default", *,
                 description: str | None = None, metadata: dict | None = None,
                 labels: Iterable[str] = (), allow_pickle: bool = False) -> SnapshotInfo:
        """Store state; only chunks the repository lacks are written. labels are strings the
        snapshot can be found by later within its agent (see find), without listing the history."""
        started = time.perf_counter()
        labels = check_labels(labels)
        extra: dict = {"labels": labels} if labels else {}
        structure, blobs = codec.encode(state, allow_pickle=allow_pickle)
        streams = [Stream(b.data, b.row_bytes, b.itemsize, structure=b.small_chunks, item_ends=b.item_ends)
                   for b in blobs]
        streams.append(Stream(memoryview(structure), structure=True))
        spans = codec.ascii_spans(blobs)
        if spans:
            extra["ascii"] = spans
        snap_id, fields = self._repo.write("state", streams, agent_id=agent_id, session_id=session_id,
                                           description=description, metadata=metadata, structure_last=True,
                                           extra=extra)
        info = SnapshotInfo.from_fields(snap_id, fields)
        _log_op("snapshot", info, started)
        return info

    @observed("snapshot")
    def snapshot_dir(self, path: str, agent_id: str = "default", session_id: str = "default", *,
                     description: str | None = None, metadata: dict | None = None, labels: Iterable[str] = (),
                     exclude: list[str] | None = None, progress: Any = None) -> SnapshotInfo:
        """Snapshot a directory tree (or one file); unchanged files are not re-read. See dirsnap.py."""
        from . import dirsnap
        started = time.perf_counter()
        snap_id, fields = dirsnap.snapshot_dir(self._repo, path, agent_id, session_id, description=description,
                                               metadata=metadata, labels=check_labels(labels),
                                               exclude=exclude, progress=progress)
        info = SnapshotInfo.from_fields(snap_id, fields)
        _log_op("snapshot_dir", info, started)
        return info

    @observed("restore", _obs.snapshot_by_id)
    def restore_dir(self, id: str, dest: str, *, overwrite: bool = False, progress: Any = None) -> None:
        """Recreate a directory snapshot under dest (which must be empty unless overwrite)."""
        from . import dirsnap
        sid = self._repo.resolve(id)
        dirsnap.restore_dir(self._repo, sid, self._repo.fields(sid), dest, overwrite=overwrite, progress=progress)

    def read_file(self, id: str, path: str) -> bytes:
        """The content of one file of a directory snapshot (path relative to the snapshotted
        folder), reading only that file's chunks; PathNotFoundError when it holds no such file."""
        from . import dirsnap
        sid = self._repo.resolve(id)
        try:
            return dirsnap.file_content(self._repo, sid, self._repo.fields(sid), path)
        except (IntegrityError, PathNotFoundError) as e:
            raise _naming(e, sid) from e

    # reading ------------------------------------------------------------
    @observed("restore")
    def restore(self, id: str | None = None, *, agent_id: str | None = None, session_id: str | None = None,
                path: Any = None, allow_pickle: bool = False) -> Any:
        """The state of a snapshot, by id (or unique prefix) or the latest of a lineage.

        With path, only the value at that path inside the state: a sequence of steps (dict
        keys, list or tuple indexes, object field names), or one key. Only the chunks of the
        state's structure and of the blobs on the way and under the value are read, so one
        entry of a state that also holds a big array costs what that entry costs.
        PathNotFoundError names the step that leads nowhere."""
        started = time.perf_counter()
        snap_id, fields = self._pick(id, agent_id, session_id)
        if fields["kind"] != "state":
            raise ConfigurationError(f"snapshot {snap_id.hex()} is a directory snapshot; use restore_dir")
        if path is not None:
            steps = _steps(path)
            op = _obs.current()
            if op is not None:
                op.update(path="state" + "".join(f"[{k!r}]" for k in steps))
            value = self._restore_at(snap_id, fields, steps, allow_pickle)
            _log_op("restore", SnapshotInfo.from_fields(snap_id, fields), started)
            return value
        try:
            entries = self._repo.entries(fields)
            strings = _new_strings(fields.get("ascii") or [], entries) if fields.get("tail") else {}
            view = memoryview(self._repo.read(fields, entries=entries,
                                              into={at: buf for at, (_, buf) in strings.items()}))
        except IntegrityError as e:
            raise _naming(e, snap_id) from e
        if fields.get("tail"):  # the structure stream is stored after the blobs
            split = fields["raw"] - fields["struct"]
            made = {}
            for at, (s, buf) in strings.items():
                if is_ascii(buf):
                    made[at] = s
                else:   # not what the manifest says: decoded from the view like any string blob
                    view[at:at + len(buf)] = buf
            state = codec.decode(view[split:], view[:split], allow_pickle=allow_pickle, strings=made)
        else:
            state = codec.decode(view[:fields["struct"]], view[fields["struct"]:], allow_pickle=allow_pickle)
        _log_op("restore", SnapshotInfo.from_fields(snap_id, fields), started)
        return state

    def _restore_at(self, snap_id: bytes, fields: dict, steps: tuple, allow_pickle: bool) -> Any:
        """The value at steps inside a state: its structure stream read whole, its blob region
        slice by slice as the decoder asks for it (see codec.decode_at)."""
        tail = bool(fields.get("tail"))
        split = fields["raw"] - fields["struct"] if tail else fields["struct"]
        windows: dict = {}
        try:
            structure = self._repo.read_span(fields, *((split, fields["raw"]) if tail else (0, split)), windows)
            region = _StoredRegion(self._repo, fields, 0 if tail else split, fields["raw"] - fields["struct"], windows)
            return codec.decode_at(structure, region, steps, allow_pickle=allow_pickle)
        except (IntegrityError, PathNotFoundError) as e:
            raise _naming(e, snap_id) from e

    def get_metadata(self, id: str) -> SnapshotInfo:
        sid = self._repo.resolve(id)
        return SnapshotInfo.from_fields(sid, self._repo.fields(sid))

    def exists(self, id: str) -> bool:
        try:
            self._repo.resolve(id)
            return True
        except SnapshotNotFoundError:
            return False

    def list(self, agent_id: str | None = None, session_id: str | None = None) -> list[SnapshotInfo]:
        """Snapshots, oldest first, optionally of one agent or one lineage."""
        if session_id is not None and agent_id is None:
            raise ConfigurationError("session_id needs agent_id")
        self.refresh()
        rows = self._repo.index.lineage(agent_id, session_id)
        infos = [SnapshotInfo.from_fields(sid, f) for sid, f in rows]
        return sorted(infos, key=lambda i: (i.timestamp, i.index))

    def find(self, agent_id: str, label: str) -> list[SnapshotInfo]:
        """The agent's snapshots written with this label, oldest first: one index lookup, however
        long the history. It reads this machine's index (see refresh)."""
        infos = [SnapshotInfo.from_fields(sid, f) for sid, f in self._repo.index.labelled(agent_id, label)]
        return sorted(infos, key=lambda i: (i.timestamp, i.index))

    def latest(self, agent_id: str, session_id: str = "default") -> SnapshotInfo | None:
        """The lineage's latest snapshot, or None when it has none, as this machine's index knows
        it (see refresh)."""
        found = self._repo.index.head(agent_id, session_id)
        return None if found is None else SnapshotInfo.from_fields(*found)

    def count_unlabelled(self, agent_id: str) -> int:
        """How many of the agent's snapshots were written without labels: when none were,
        every snapshot of the agent can be found by its labels."""
        return self._repo.index.unlabelled(agent_id)

    def refresh(self) -> int:
        """Learn what other machines wrote to remote storage (a listing of it, see sync), and
        return how many snapshots were new. Every writer to a local folder shares its index,
        so there it lists nothing and returns 0."""
        return 0 if self._repo.backend.is_local else self._repo.sync()[0]

    def diff(self, a: str, b: str) -> dict:
        """What changed from snapshot a to b: chunks and bytes added and removed, and the
        files (directory snapshots) or state paths (state snapshots) that differ."""
        return diff_mod.diff(self._repo, self._repo.resolve(a), self._repo.resolve(b), self.restore)

    def chunks(self, id: str) -> list[str]:
        """The snapshot's data chunk hashes (hex), in order."""
        sid = self._repo.resolve(id)
        return [h.hex() for h, _ in self._repo.entries(self._repo.fields(sid))]

    def delete(self, id: str) -> None:
        """Remove one snapshot's manifest; its chunks go at the next gc."""
        self._repo.delete_snapshots([self._repo.resolve(id)])

    def sync(self) -> int:
        """Learn snapshots other machines wrote to the same storage; returns how many were new."""
        return self._repo.sync()[0]

    @observed("copy")
    def copy_to(self, other: "Store", ids: list[str] | None = None) -> CopyReport:
        """Copy snapshots (all, or these ids/prefixes) into other, sending only chunks it lacks."""
        return copy_snapshots(self._repo, other._repo, ids)

    @observed("verify")
    def verify(self, id: str | None = None, deep: bool = False, *, read_fraction: float = 1.0,
               max_bytes: int | None = None) -> VerifyReport:
        """Check the repository, or one snapshot; deep re-reads and re-hashes the data."""
        ids = None if id is None else [self._repo.resolve(id)]
        return verify_repo(self._repo, ids, deep=deep, read_fraction=read_fraction, max_bytes=max_bytes)

    def prove(self, id: str, chunk_hash: str) -> Proof:
        """A Merkle inclusion proof that chunk_hash belongs to snapshot id."""
        sid = self._repo.resolve(id)
        fields = self._repo.fields(sid)
        try:
            chunk = bytes.fromhex(chunk_hash)
        except ValueError:
            raise ConfigurationError(f"{chunk_hash!r} is not a chunk hash (hex)") from None
        proof = tree.prove(fields["root"], fields["height"], self._repo.fetch_nodes, chunk)
        if proof is None:
            raise ChunkNotFoundError(f"chunk {chunk_hash} is not part of snapshot {sid.hex()}")
        return proof

    # encryption (see crypto.py) -------------------------------------------
    @property
    def encrypted(self) -> bool:
        return self._repo.keys.encrypted

    @property
    def proof_key(self) -> bytes | None:
        """The id key that verify_proof(proof, root, key=...) needs for an encrypted repository (None if plain).
        Whoever holds it can test whether a known text is stored, but cannot decrypt anything."""
        return self._repo.hasher.key

    def add_password(self, password: str | bytes) -> str:
        """Let another password open this encrypted repository; returns the new key's id."""
        return self._repo.add_password(_password_bytes(password))

    def change_password(self, password: str | bytes) -> str:
        """Replace the password this store was opened with (no data is rewritten); returns the new key's id."""
        return self._repo.change_password(_password_bytes(password))

    def keys(self) -> list[dict]:
        """The repository's key objects (id, created, kdf, current)."""
        return self._repo.list_keys()

    def remove_key(self, key_id: str) -> None:
        """Delete a key object by id or unique prefix; never the one in use nor the last."""
        self._repo.remove_key(key_id)

    @observed("forget")
    def forget(self, *, keep_last: int | None = None, keep_within: str | float | _dt.timedelta | None = None,
               keep_daily: int | None = None, agent_id: str | None = None, session_id: str | None = None,
               dry_run: bool = False) -> list[SnapshotInfo]:
        """Remove snapshots no rule keeps, per lineage; returns what was (or would be) removed."""
        policy = retention.Policy(keep_last, None if keep_within is None else retention.parse_duration(keep_within),
                                  keep_daily)
        if policy.empty():
            raise ConfigurationError("forget needs at least one of keep_last, keep_within, keep_daily")
        lineages: dict[tuple[str, str], list[SnapshotInfo]] = {}
        for info in self.list(agent_id, session_id):
            lineages.setdefault((info.agent_id, info.session_id), []).append(info)
        doomed = [s for lineage in lineages.values() for s in retention.apply(policy, lineage).forget]
        if not dry_run and doomed:
            self._repo.delete_snapshots([bytes.fromhex(s.id) for s in doomed])
        return sorted(doomed, key=lambda s: (s.timestamp, s.index))

    @observed("gc")
    def gc(self, dry_run: bool = False, *, grace: float | None = None,
           repack_threshold: float = gc_mod.REPACK_THRESHOLD) -> gc_mod.GCReport:
        """Free what no snapshot references; safe while other writers keep snapshotting (see gc.py)."""
        return gc_mod.collect(self._repo, dry_run=dry_run, grace=grace, repack_threshold=repack_threshold)

    def index_rebuild(self) -> int:
        """Rebuild the local index from packs and manifests; returns the snapshot count."""
        self._repo.rebuild_index()
        return len(self._repo.index.snapshot_ids())

    def stats(self) -> Stats:
        rows = self._repo.index.lineage()
        logical = sum(f["raw"] for _, f in rows)
        packs = self._repo.index.packs()
        stored = sum(size for size, _ in packs.values())
        return Stats(snapshots=len(rows), logical_bytes=logical, stored_bytes=stored,
                     chunks=self._repo.index.chunk_count(), packs=len(packs),
                     dedup_ratio=logical / stored if stored else 0.0)

    def _pick(self, id: str | None, agent_id: str | None, session_id: str | None) -> tuple[bytes, dict]:
        if id is not None:
            sid = self._repo.resolve(id)
            return sid, self._repo.fields(sid)
        if agent_id is None:
            raise ConfigurationError("restore needs a snapshot id or an agent_id")
        rows = [r for r in self._repo.index.lineage(agent_id, session_id)]
        if not rows and not self._repo.backend.is_local:
            self._repo.sync()
            rows = self._repo.index.lineage(agent_id, session_id)
        if not rows:
            where = agent_id if session_id is None else f"{agent_id}/{session_id}"
            raise SnapshotNotFoundError(f"no snapshot for {where} in {self.url}")
        return max(rows, key=lambda r: (r[1]["time"], r[1]["index"]))


def open(url: str | None = None, *, storage_options: dict | None = None, index_path: str | None = None,
         compression_level: int = 3, shuffle_level: int | None = None, create: bool = True,
         gc_grace: float | None = None, password: str | bytes | None = None, key_file: str | None = None,
         encrypt: bool | str = False, key_from: Store | None = None, cache_bytes: int = DEFAULT_CACHE_BYTES) -> Store:
    """Open (or create) the repository at url: None means $CASSTORE_REPO, else ./.casstore.

    gc_grace (seconds a condemned pack waits before gc deletes it; default one
    hour) is recorded in the repository when this call creates it.

    Encryption (crypto.py): the password comes from password, else key_file
    (a file holding it), else $CASSTORE_PASSWORD. An encrypted repository
    needs it; a wrong one raises AuthenticationError (a ConfigurationError).
    encrypt=True makes a repository this call creates encrypted (with AES-256-GCM
    where the CPU has AES instructions, else ChaCha20-Poly1305; or name one:
    encrypt="chacha20-poly1305"); key_from
    (an open encrypted Store) makes it share that store's master key, so
    `copy` between the two works. An explicit password for an unencrypted
    repository is refused rather than silently ignored.

    shuffle_level is the zstd level of byte-shuffled numeric array blocks
    (default: compress.SHUFFLE_LEVEL, 1, or compression_level if lower): on
    float32 data level 1 stores ~1.5 % more bytes than level 3 for ~0.6x the CPU.

    cache_bytes bounds the in-memory LRU of verified chunks and tree nodes
    (default 64 MiB; 0 turns it off). Entries are keyed by content hash, so
    they never go stale; restores of up to a quarter of it, and snapshots that
    write up to a quarter of it, fill it, so restoring a snapshot just written
    or just read reads memory, not storage. `Store.drop_caches()` empties it;
    `verify` never reads through it.
    """
    from . import crypto
    secret = crypto.read_password(password, key_file)
    if key_from is not None and key_from._repo.keys.master is None:
        raise ConfigurationError("key_from must be an open encrypted store")
    if not 1 <= compression_level <= 22:
        raise ConfigurationError(f"compression_level must be 1..22, got {compression_level}")
    if shuffle_level is not None and not 1 <= shuffle_level <= 22:
        raise ConfigurationError(f"shuffle_level must be 1..22, got {shuffle_level}")
    if gc_grace is not None and gc_grace < 0:
        raise ConfigurationError(f"gc_grace must be >= 0 seconds, got {gc_grace}")
    if cache_bytes < 0:
        raise ConfigurationError(f"cache_bytes must be >= 0, got {cache_bytes}")
    resolved, _ = resolve_url(url)
    backend = Backend(resolved, storage_options)
    if isinstance(encrypt, str) and encrypt not in crypto.CIPHERS:
        raise ConfigurationError(f"unknown cipher {encrypt!r} (known: {', '.join(crypto.CIPHERS)})")
    cipher = encrypt if isinstance(encrypt, str) else crypto.default_cipher()
    new_config = RepoConfig(encryption=cipher if encrypt or key_from is not None else None,
                            **({} if gc_grace is None else {"gc_grace": float(gc_grace)}))
    try:
        repo = Repository(backend, index_path=index_path, compression_level=compression_level,
                          shuffle_level=shuffle_level, create=create,
                          new_config=new_config, password=secret,
                          master_key=key_from._repo.keys.master if key_from is not None else None,
                          cache_bytes=cache_bytes)
    except BaseException:
        backend.close()
        raise
    if (password is not None or key_file is not None or encrypt) and not repo.keys.encrypted:
        repo.close()
        raise ConfigurationError(f"repository {repo.backend.url} is not encrypted; "
                                 f"{'it existed before this call' if encrypt else 'it takes no password'}")
    return Store(repo)


def _naming(error: Exception, snap_id: bytes) -> Exception:
    """error again, its message prefixed with the snapshot it is about (the layers below name
    chunks, packs and paths, not the snapshot a restore was asked for)."""
    return type(error)(f"snapshot {snap_id.hex()}: {error}")


def _steps(path: Any) -> tuple:
    """restore's path as steps: a list or tuple is one step per element, anything else one step.
    Every step must be hashable, as a dict key, index or field name is."""
    steps = tuple(path) if isinstance(path, (list, tuple)) else (path,)
    for step in steps:
        try:
            hash(step)
        except TypeError:
            raise ConfigurationError(f"restore path step {step!r} is not a key, index or field name") from None
    return steps


class _StoredRegion:
    """A snapshot's blob region that reads storage only for the slices taken of it (see
    codec.decode_at): size bytes from logical offset base of the snapshot."""

    def __init__(self, repo: Repository, fields: dict, base: int, size: int, windows: dict) -> None:
        self._repo, self._fields, self._windows = repo, fields, windows
        self._base, self._size = base, size

    def __len__(self) -> int:
        return self._size

    def __getitem__(self, span: slice) -> memoryview:
        start, stop, _ = span.indices(self._size)
        if stop <= start:
            return memoryview(b"")
        return self._repo.read_span(self._fields, self._base + start, self._base + stop, self._windows)


def _new_strings(spans: list[list[int]], entries: list[tree.Entry]) -> dict[int, tuple[str, memoryview]]:
    """For each [offset, length] of a big ASCII string a manifest lists, a new str of that length
    and its bytes, to restore into (store.restore checks them before use). A span that does not
    begin and end on chunk edges is left to the usual decode, and so is every span where
    CPython's API is missing."""
    edges = set(accumulate((n for _, n in entries), initial=0)) if spans else set()
    out = {}
    for at, n in spans:
        if at not in edges or at + n not in edges:
            continue
        made = new_ascii(n)
        if made is None:
            return {}
        out[at] = made
    return out


def _password_bytes(password: str | bytes) -> bytes:
    return password.encode() if isinstance(password, str) else bytes(password)


def _log_op(op: str, info: SnapshotInfo, started: float) -> None:
    """Tell the running observed operation (see observability.py) which snapshot it wrote or read."""
    _obs.note_snapshot(info)
