"""A LangGraph checkpoint saver backed by a casstore Store.

    from casstore.integrations.langgraph import CasstoreSaver
    saver = CasstoreSaver(casstore.open("s3://bucket/agents"))   # or CasstoreSaver.from_url(url)
    graph = builder.compile(checkpointer=saver)

Layout in the repository
------------------------
* A thread is the casstore agent ``langgraph:<thread_id>``; a checkpoint
  namespace is a session of it (``default`` for the root namespace ``""``,
  else the namespace itself), so ``casstore ls``, ``diff``, ``verify`` and
  ``prove`` work on LangGraph checkpoints like on any other snapshot.
* Each checkpoint is one snapshot of that lineage. Its snapshot metadata
  (kept in the index, read without restoring anything) holds the small
  fields: ``checkpoint_id``, ``parent_checkpoint_id``, the namespace (unless
  it is the root namespace), the
  LangGraph metadata dict (plain, or serde-encoded when it holds values
  msgpack cannot carry as-is), and ``latest``, the namespace's greatest
  checkpoint id so far, only when it is not the snapshot's own (a put out of
  id order). ``list`` finds checkpoints by these fields and sorts them by
  checkpoint id (newest first); only the snapshots actually returned are
  restored.
* Snapshot labels (``Store.find``) name what a snapshot holds:
  ``c<len(ns)>:<ns>:<checkpoint id>`` for its checkpoint and
  ``w<len(ns)>:<ns>:<checkpoint id>`` for each checkpoint whose writes it
  carries. ``get_tuple``, ``put`` and ``put_writes`` find a checkpoint, its
  writes, and a namespace's latest checkpoint (the lineage's last snapshot,
  or the one its ``latest`` names) in a few index lookups, however long the
  thread, without listing it. A thread with snapshots that have no labels
  (written by a casstore before them) is read from its listing, as before.
* The snapshot's state is ``{"format", "lists", "values", "checkpoint"}``:
  channel values that are lists (``messages``) are stored element by
  element, each element serialized by the saver's serde on its own
  (``type\\0bytes``), so appending a message appends bytes at the end of the
  encoded state and every older message keeps its exact bytes; casstore's
  content-defined chunking then stores only the new chunks. Other channel
  values are one serde item each; they and the checkpoint itself (ids,
  versions, ``versions_seen``, without channel values) are small and sit in
  the state's structure stream, apart from the long lists' own streams.
* Pending writes (``put_writes``) are rows ``[checkpoint id, task id,
  channel, index, task path, value count]`` with the values (serde items) in
  one flat list beside them, so that a message a task wrote is the same list
  item, and the same chunk, as in the next checkpoint's message list (stored
  once). LangGraph stores a step's task writes and, right after, the next
  checkpoint, so a call waits for the next ``put`` of its lineage to carry
  its rows in that checkpoint's snapshot. It stops waiting once
  ``writes_linger`` seconds (0.05 by default) pass with no ``put`` of the
  lineage in progress (LangGraph starts a put only when the previous one is
  done); if none came (an interrupt, an error, a caller that waits for
  ``put_writes`` before it puts), the queued calls are stored
  together as a snapshot of their own in the sibling lineage
  ``<session>#writes``. Either way a call returns once its rows are durable.
  The snapshot metadata lists ``[checkpoint id, task id, write indexes]``
  per call, enough to keep ``put_writes`` idempotent without restoring
  anything. Writes are merged, in commit order, into ``pending_writes`` when
  a checkpoint is read (a repeated regular write keeps the first value, a
  special write such as an error or interrupt keeps the last). Deleting a
  checkpoint whose snapshot carries writes of a kept checkpoint stores those
  rows again first. A written value that the carrying checkpoint's own list
  holds (a message the reducer appended) is stored as its index in that list
  (state format 3). Formats 1 (one snapshot per call) and 2 are still read.
* ``delete_thread`` / ``prune`` / ``delete_for_runs`` delete snapshots with
  ``Store.delete``; their chunks are reclaimed by ``casstore gc``.
  ``copy_thread`` re-snapshots each stored state under the target thread,
  which writes no new chunks.

Speed
-----
LangGraph hands ``put`` the whole message list at every step, and reads the
latest checkpoint back at the start of every run. The saver remembers, per
thread, namespace and channel, the serialized form of the list elements it
stored or loaded last, in order and holding strong references, so each step
serializes only the new messages: the unchanged prefix (the very same objects,
with the same message id, the same content object and content length) is
recognised in a few C-level passes over the list, without a Python step per
message, and the elements past it are matched by identity and the same checks. The encoded states it wrote or read
(immutable bytes items) are kept in an LRU bounded by ``state_cache_bytes``
(64 MiB by default), so reading a recent checkpoint costs only
deserialization, and a list's msgpack elements are deserialized in one call,
as one array. A LangChain object (a message, a document) deserialized once is
kept as a pickle of serde's result, under a second bound of
``state_cache_bytes``: reading it again (the next run's first ``get_tuple``,
every checkpoint of a listing that holds it) unpickles a new, equal object,
about twice as fast as serde rebuilds it. Those pickles never leave memory;
nothing is unpickled from storage. The snapshot-metadata listing of each
thread, once ``list`` has read it, is cached as well and kept current by the
saver's own writes; a checkpoint id it does not know makes it re-read the
index, and ``refresh()`` drops the listings (use it if another process
writes the same threads). A thread not listed is read by label.
"""

from __future__ import annotations

import asyncio
import itertools
import operator
import pickle
import threading
from collections import OrderedDict
from collections.abc import AsyncIterator, Hashable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import msgpack
from langchain_core.load.serializable import Serializable
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    WRITES_IDX_MAP,
    BaseCheckpointSaver,
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
    SerializerProtocol,
    get_checkpoint_id,
    get_checkpoint_metadata,
)

try:
    from langgraph.checkpoint.base import writes_sort_key
except ImportError:  # langgraph-checkpoint before writes_sort_key existed
    def writes_sort_key(task_path: str, task_id: str = "", idx: int = 0) -> tuple[str, str, int]:
        return (task_path, task_id, idx)

from ..cache import ChunkCache
from ..errors import SnapshotNotFoundError
from ..store import SnapshotInfo, Store

__all__ = ["CasstoreSaver", "AGENT_PREFIX"]

AGENT_PREFIX = "langgraph:"
ROOT_SESSION = "default"
WRITES_SUFFIX = "#writes"
FORMAT = 3  # 3: a write value may be an index into the snapshot's own list (_pack_rows); 1 and 2 still read
REF_WINDOW = 64  # a write value is looked for among this many last items of its channel's list
KIND_CHECKPOINT = "checkpoint"
KIND_WRITES = "writes"
MAX_CACHED_THREADS = 256
DEFAULT_CACHE_BYTES = 64 << 20
DEFAULT_LINGER = 0.05  # seconds put_writes waits for the next checkpoint to carry its rows
ALIST_BATCH = 8        # checkpoints alist deserializes per worker-thread call


def agent_id(thread_id: str) -> str:
    return AGENT_PREFIX + str(thread_id)


def session_id(checkpoint_ns: str) -> str:
    return checkpoint_ns or ROOT_SESSION


def _label(kind: str, ns: str, cid: str) -> str:
    """The label of a checkpoint ("c") or of writes for it ("w"); the namespace is
    length-prefixed, so no two (namespace, checkpoint id) pairs share a label."""
    return f"{kind}{len(ns)}:{ns}:{cid}"


def _item(typed: tuple[str, bytes]) -> bytes:
    """One serde (type, bytes) pair as a single bytes leaf: type NUL data."""
    t, data = typed
    return t.encode() + b"\0" + bytes(data)


def _typed(item: bytes) -> tuple[str, bytes]:
    t, _, data = bytes(item).partition(b"\0")
    return t.decode(), data


_MSGPACK_ITEM = b"msgpack\0"


def _array_header(n: int) -> bytes:
    return b"\xdd" + n.to_bytes(4, "big")  # msgpack array32


def _fingerprint(obj: Any) -> tuple:
    """What an element looked like when it was serialized: (id, content, content length)."""
    content = getattr(obj, "content", None)
    return getattr(obj, "id", None), content, len(content) if isinstance(content, (str, list)) else None


_CONTENT = operator.attrgetter("content")
_ID = operator.attrgetter("id")


def _looks(values: list) -> tuple[list, list, list] | None:
    """(ids, contents, content lengths) of message-like elements, in C-level passes (no
    Python step per element); None when one of them has no content (not a message list)."""
    try:
        contents = list(map(_CONTENT, values))
        return list(map(_ID, values)), contents, list(map(len, contents))
    except (AttributeError, TypeError):
        return None


def _unchanged_prefix(values: list, looks: tuple[list, list, list], seen: "_Seen") -> int:
    """How many leading elements are the very objects seen last, with the same id, the same
    content object and the same content length: each check one C-level pass over the prefix."""
    n = min(len(values), len(seen.objs))
    checks = ((operator.is_, values, seen.objs), (operator.is_, looks[1], seen.looks[1]),
              (operator.eq, looks[0], seen.looks[0]), (operator.eq, looks[2], seen.looks[2]))
    for same, now, before in checks:
        if not n:
            break
        flags = list(map(same, now[:n], before[:n]))
        if False in flags:
            n = flags.index(False)
    return n


_IMMUTABLE = (str, bytes, int, float, bool, type(None))


class _StateCache:
    """Encoded states by snapshot id: an LRU bounded by the bytes it holds.

    A state holds only immutable serde output (bytes items), so handing the
    same one out twice is safe: every read deserializes fresh objects from
    it. Items a put reuses from the previous put are the very same bytes
    objects, so a state written through the cache is charged only for the
    items that were new to it (plus a pointer per item). A checkpoint's merged
    pending-write rows share the bound, under ("rows", thread, ns, checkpoint id).
    Thread-safe on its own lock: reads run on LangGraph's threads while a put
    on another thread evicts.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._states: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, snap_id: Hashable) -> Any:
        with self._lock:
            hit = self._states.get(snap_id)
            if hit is None:
                return None
            self._states.move_to_end(snap_id)
            return hit[0]

    def put(self, snap_id: Hashable, state: Any, cost: int) -> None:
        with self._lock:
            self._discard(snap_id)
            if cost > self.limit:
                return
            self._states[snap_id] = (state, cost)
            self.used += cost
            while self.used > self.limit:
                _, (_, freed) = self._states.popitem(last=False)
                self.used -= freed

    def discard(self, snap_id: Hashable) -> None:
        with self._lock:
            self._discard(snap_id)

    def _discard(self, snap_id: Hashable) -> None:
        old = self._states.pop(snap_id, None)
        if old is not None:
            self.used -= old[1]

    def clear(self) -> None:
        with self._lock:
            self._states.clear()
            self.used = 0


_MISSING = object()


class _Thawed:
    """LangChain objects (messages, documents) deserialized before, as pickles keyed by their
    serde item: reading an element again unpickles it, about 2x faster than LangGraph's serde
    rebuilds a message, where every read (each run's first get_tuple, each listed checkpoint)
    deserialized every message afresh.

    The pickles are taken from serde's own output, right after deserializing, and never
    leave the process, so an element read again equals, field for field, a fresh
    deserialization of its item, and is a new object that no other reader shares.
    Nothing is ever unpickled from storage. The pickles are held in a ChunkCache (a
    thread-safe LRU bounded by the bytes of its keys and values).
    """

    def __init__(self, limit: int) -> None:
        self._pickles = ChunkCache(limit)   # serde item -> pickle

    @property
    def used(self) -> int:
        return self._pickles.size

    def load(self, items: list[bytes]) -> list[Any]:
        """The element of each item, unpickled where known, else _MISSING."""
        found = self._pickles.get_many(items)
        return [_MISSING if (p := found.get(i)) is None else pickle.loads(p) for i in items]

    def add(self, items: list[bytes], objs: list[Any]) -> None:
        """Keep the LangChain objects among objs (just deserialized from items)."""
        kept = []
        for item, obj in zip(items, objs):
            if isinstance(obj, Serializable):
                try:
                    kept.append((item, pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)))
                except Exception:  # noqa: BLE001 - an unpicklable object is deserialized each time
                    continue
        self._pickles.put_many(kept)

    def clear(self) -> None:
        self._pickles.clear()


def _state_bytes(state: Any) -> int:
    """What a restored state costs the cache: every item's bytes (nothing is shared)."""
    if isinstance(state, (bytes, bytearray)):
        return len(state) + 8
    if isinstance(state, dict):
        return sum(_state_bytes(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return sum(_state_bytes(v) for v in state)
    return 8


@dataclass
class _Seen:
    """A channel's list as the saver last stored or loaded it, to recognise what a put repeats.

    objs, looks (ids, contents, content lengths: see _looks) and items (their serialized
    forms) run in list order; others holds elements known outside that order, by identity:
    id(obj) -> (obj, _fingerprint(obj), item), for values put_writes serialized and for
    lists whose elements are not messages.
    """

    objs: list = field(default_factory=list)
    looks: tuple[list, list, list] = ([], [], [])
    items: list[bytes] = field(default_factory=list)
    others: dict[int, tuple[Any, tuple, bytes]] = field(default_factory=dict)

    def candidates(self, start: int) -> dict[int, tuple[Any, tuple, bytes]]:
        """Elements an element past the unchanged prefix may be: others, and the ordered ones from start on."""
        ids, contents, sizes = self.looks
        found = {id(o): (o, (ids[i], contents[i], sizes[i]), self.items[i])
                 for i, o in enumerate(self.objs[start:], start)}
        found.update(self.others)
        return found


@dataclass
class _Ckpt:
    snap_id: str
    checkpoint_id: str
    parent_id: str | None
    meta: dict  # the snapshot metadata (LangGraph metadata decoded lazily)
    _md: dict | None = None


@dataclass
class _Writes:
    snap_id: str
    checkpoint_id: str
    task_id: str
    keys: list[int]
    carrier: tuple[str, str] | None = None  # (ns, checkpoint id) when a checkpoint's snapshot carries them


@dataclass
class _Queued:
    """One put_writes call waiting for the next snapshot of its lineage (group commit)."""

    tid: str
    ns: str
    cid: str
    task_id: str
    rows: list  # [cid, task_id, channel, idx, task_path, item]
    keys: list[int]
    cost: int
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None


@dataclass
class _Thread:
    ckpts: dict[str, dict[str, _Ckpt]] = field(default_factory=dict)           # ns -> cid -> checkpoint
    writes: dict[tuple[str, str], list[_Writes]] = field(default_factory=dict)  # (ns, cid) -> writes, in order


class CasstoreSaver(BaseCheckpointSaver[int], AbstractContextManager, AbstractAsyncContextManager):
    """LangGraph checkpointer storing checkpoints as deduplicated casstore snapshots."""

    def __init__(self, store: Store, *, serde: SerializerProtocol | None = None, owns_store: bool = False,
                 state_cache_bytes: int = DEFAULT_CACHE_BYTES, writes_linger: float = DEFAULT_LINGER) -> None:
        super().__init__(serde=serde)
        self.writes_linger = writes_linger
        self.store = store
        self._owns_store = owns_store
        self._lock = threading.RLock()
        self._threads: OrderedDict[str, _Thread] = OrderedDict()
        self._labelled: OrderedDict[str, None] = OrderedDict()  # threads known to hold only labelled snapshots
        # (thread, ns, channel) -> the list as last stored or loaded (see _encode_items)
        self._seen: OrderedDict[tuple[str, str, str], _Seen] = OrderedDict()
        self._states = _StateCache(state_cache_bytes)
        self._thawed = _Thawed(state_cache_bytes)
        self._io = threading.Lock()  # one snapshot write at a time; taken before _lock, never inside it
        self._queue: list[_Queued] = []  # pending writes not yet in a snapshot
        self._putting: dict[tuple[str, str], int] = {}  # (thread, ns) -> puts in progress

    @classmethod
    def from_url(cls, url: str | None = None, *, serde: SerializerProtocol | None = None,
                 state_cache_bytes: int = DEFAULT_CACHE_BYTES, writes_linger: float = DEFAULT_LINGER,
                 **open_kwargs: Any) -> "CasstoreSaver":
        """Open (or create) the repository at url and wrap it; closing the saver closes the store."""
        from .. import store as _store
        return cls(_store.open(url, **open_kwargs), serde=serde, owns_store=True,
                   state_cache_bytes=state_cache_bytes, writes_linger=writes_linger)

    def close(self) -> None:
        with self._lock:
            self._threads.clear()
            self._labelled.clear()
            self._seen.clear()
            self._states.clear()
            self._thawed.clear()
        if self._owns_store:
            self.store.close()

    def __enter__(self) -> "CasstoreSaver":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    async def __aenter__(self) -> "CasstoreSaver":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.close()

    def refresh(self, thread_id: str | None = None) -> None:
        """Forget cached listings (of one thread or all) so the next read re-reads the index."""
        with self._lock:
            if thread_id is None:
                self._threads.clear()
                self._labelled.clear()
            else:
                self._threads.pop(str(thread_id), None)
                self._labelled.pop(str(thread_id), None)

    # ------------------------------------------------------------------ listing cache
    def _thread(self, thread_id: str, reload: bool = False) -> _Thread:
        thread_id = str(thread_id)
        with self._lock:
            th = None if reload else self._threads.get(thread_id)
            if th is None:
                th = self._load_thread(self.store.list(agent_id(thread_id)))
                self._remember(thread_id, th)
            else:
                self._threads.move_to_end(thread_id)
            return th

    def _remember(self, thread_id: str, th: _Thread) -> None:
        self._threads[thread_id] = th
        self._threads.move_to_end(thread_id)
        while len(self._threads) > MAX_CACHED_THREADS:
            self._threads.popitem(last=False)

    @staticmethod
    def _load_thread(infos: list[SnapshotInfo]) -> _Thread:
        th = _Thread()
        for info in infos:  # oldest first: later snapshots of the same checkpoint id win
            _add_info(th, info)
        return th

    def _all_threads(self) -> list[str]:
        """Every thread in the store (re-reads the index and refreshes the cache)."""
        by_thread: dict[str, list[SnapshotInfo]] = {}
        for info in self.store.list():
            if info.agent_id.startswith(AGENT_PREFIX) and info.metadata.get("langgraph") in (KIND_CHECKPOINT, KIND_WRITES):
                by_thread.setdefault(info.metadata.get("thread_id", info.agent_id[len(AGENT_PREFIX):]), []).append(info)
        with self._lock:
            self._threads.clear()
            for tid, infos in by_thread.items():
                self._remember(tid, self._load_thread(infos))
        return sorted(by_thread)

    # ------------------------------------------------------------------ encoding
    def _encode_items(self, key: tuple[str, str, str], values: list, merge: bool = False) -> tuple[list[bytes], int]:
        """Serialize list elements one by one, reusing what the last put or load of this channel held.

        LangGraph hands put the whole list each time, the old elements being the very
        objects it stored before: the unchanged prefix is recognised in a few C-level
        passes (_unchanged_prefix), and only elements past it are looked at one by one,
        reused when they are an element seen before with the same fingerprint.
        merge (put_writes) adds what it serialized to what is known instead of
        replacing the list. Returns the items and the bytes newly serialized (what
        caching the state costs).
        """
        seen = self._seen.get(key) or _Seen()
        looks = None if merge else _looks(values)   # written values are a few new ones, not the list
        n = _unchanged_prefix(values, looks, seen) if looks is not None else 0
        out = seen.items[:n]
        tail = values[n:]
        old = seen.others if merge else seen.candidates(n) if tail else {}
        others: dict[int, tuple[Any, tuple, bytes]] = {}
        fresh = 8 * len(values)
        dumps = self.serde.dumps_typed
        for v in tail:
            k = id(v)
            hit = old.get(k)
            if hit is not None and hit[0] is v and _fingerprint(v) == hit[1]:
                others[k] = hit
                out.append(hit[2])
                continue
            item = _item(dumps(v))
            fresh += len(item)
            if isinstance(v, _IMMUTABLE) or hasattr(v, "content"):
                others[k] = (v, _fingerprint(v), item)
            out.append(item)
        if merge:
            seen.others.update(others)
            self._remember_seen(key, seen)
        elif looks is not None:
            self._remember_seen(key, _Seen(list(values), looks, out))
        else:
            self._remember_seen(key, _Seen(others=others))
        return out, fresh

    def _remember_seen(self, key: tuple[str, str, str], seen: _Seen) -> None:
        with self._lock:  # reads (get_tuple) remember too, beside puts on other threads
            self._seen[key] = seen
            self._seen.move_to_end(key)
            while len(self._seen) > MAX_CACHED_THREADS * 4:
                self._seen.popitem(last=False)

    def _encode_checkpoint(self, thread_id: str, ns: str, checkpoint: dict, values: dict) -> tuple[dict, int]:
        lists, others = {}, {}
        cost = 0
        for name, value in values.items():
            if type(value) is list:
                lists[name], fresh = self._encode_items((thread_id, ns, name), value)
                cost += fresh
            else:
                others[name] = _item(self.serde.dumps_typed(value))
                cost += len(others[name])
        state = {"format": FORMAT, "lists": lists, "values": others,
                 "checkpoint": _item(self.serde.dumps_typed(checkpoint))}
        return state, cost + len(state["checkpoint"])

    def _decode_checkpoint(self, state: dict, remember: tuple[str, str] | None = None,
                           writes: Sequence[bytes | list] = ()) -> tuple[Checkpoint, list]:
        """(the checkpoint in state, the written values given as stored items), deserialized in one
        call; with remember=(thread, ns), the checkpoint's lists seed the next put's reuse."""
        lists, values_items = state["lists"], state["values"]
        groups = [[state["checkpoint"]], *lists.values(), list(values_items.values()),
                  *(w if isinstance(w, list) else [w] for w in writes)]
        loaded = iter(self._load_groups(groups))
        checkpoint = next(loaded)[0]
        values: dict[str, Any] = {}
        for (name, items), objs in zip(lists.items(), loaded):
            values[name] = objs
            if remember is not None:
                looks = _looks(objs)
                self._remember_seen((*remember, name), _Seen(list(objs), looks, list(items)) if looks is not None else
                                    _Seen(others={id(o): (o, _fingerprint(o), i) for o, i in zip(objs, items)
                                                  if isinstance(o, _IMMUTABLE) or hasattr(o, "content")}))
        values.update(zip(values_items, next(loaded)))
        checkpoint["channel_values"] = values
        return checkpoint, [objs if isinstance(w, list) else objs[0] for w, objs in zip(writes, loaded)]

    def _load_groups(self, groups: list[list[bytes]]) -> list[list]:
        """Deserialize groups of items: the LangChain objects read before from their pickles
        (_Thawed), the rest through serde, the msgpack ones in one call, as one array (several
        times faster than one call per item)."""
        flat = [i for g in groups for i in g]
        objs = self._thawed.load(flat)
        todo = [k for k, o in enumerate(objs) if o is _MISSING]
        if todo:
            items = [flat[k] for k in todo]
            fresh = self._deserialize(items)
            self._thawed.add(items, fresh)
            for k, o in zip(todo, fresh):
                objs[k] = o
        out, at = [], 0
        for g in groups:
            out.append(objs[at:at + len(g)])
            at += len(g)
        return out

    def _deserialize(self, items: list[bytes]) -> list:
        """serde's objects for items: the msgpack ones in one call, others one by one."""
        packed = [i for i in items if i.startswith(_MSGPACK_ITEM)]
        objs: list = []
        if packed:
            skip = len(_MSGPACK_ITEM)
            objs = self.serde.loads_typed(
                ("msgpack", b"".join([_array_header(len(packed)), *(memoryview(i)[skip:] for i in packed)])))
        if len(packed) < len(items):  # others (e.g. a None written to a branch channel) one by one
            unpacked = iter(objs)
            objs = [next(unpacked) if i.startswith(_MSGPACK_ITEM) else self.serde.loads_typed(_typed(i))
                    for i in items]
        return objs

    def _metadata(self, ck: _Ckpt) -> dict:
        if ck._md is None:
            if "metadata" in ck.meta:
                ck._md = ck.meta["metadata"]
            else:
                ck._md = self.serde.loads_typed(_typed(ck.meta["metadata_typed"]))
        return ck._md

    def _metadata_fields(self, md: dict) -> dict:
        try:
            if msgpack.unpackb(msgpack.packb(md, use_bin_type=True), raw=False, strict_map_key=False) == md:
                return {"metadata": md}
        except (TypeError, ValueError, OverflowError):
            pass
        return {"metadata_typed": _item(self.serde.dumps_typed(md))}

    # ------------------------------------------------------------------ reading
    def _find(self, config: RunnableConfig) -> tuple[str, str, _Ckpt, list[_Writes]] | None:
        conf = config["configurable"]
        tid, ns = str(conf["thread_id"]), conf.get("checkpoint_ns", "")
        cid = get_checkpoint_id(config)
        if self._direct(tid):
            trusted, ck = self._labelled_checkpoint(tid, ns, cid)
            if ck is None and trusted and self.store.refresh():  # another machine may have written it
                with self._lock:  # and what it wrote may hold unlabelled snapshots: count them again
                    self._labelled.pop(tid, None)
                trusted, ck = self._labelled_checkpoint(tid, ns, cid) if self._direct(tid) else (False, None)
            if ck is not None:
                return tid, ns, ck, self._labelled_writes(tid, ns, ck.checkpoint_id)
            if trusted:
                return None
            # else the namespace's greatest checkpoint id on record was deleted, or the thread
            # turned out to hold unlabelled snapshots: the listing knows the rest
        with self._lock:  # a put on another thread adds to the thread's checkpoints meanwhile
            th = self._thread(tid)
            if cid:
                ck = th.ckpts.get(ns, {}).get(cid)
                if ck is None:  # maybe written by another saver since we listed
                    ck = self._thread(tid, reload=True).ckpts.get(ns, {}).get(cid)
            else:
                ns_ckpts = th.ckpts.get(ns)
                if not ns_ckpts:
                    ns_ckpts = self._thread(tid, reload=True).ckpts.get(ns)
                ck = ns_ckpts[max(ns_ckpts)] if ns_ckpts else None
            if ck is None:
                return None
            return tid, ns, ck, list(self._thread(tid).writes.get((ns, ck.checkpoint_id), ()))

    # ------------------------------------------------------------------ direct lookups
    def _direct(self, tid: str) -> bool:
        """Whether to find the thread's checkpoints and writes by label: when its listing is not
        cached (that is quicker still) and every snapshot of it carries its labels, as every one
        this version of the saver wrote does (a thread with snapshots from a casstore before
        labels is read from its listing). Once known, that is remembered like a listing (see refresh)."""
        with self._lock:
            if tid in self._threads:
                return False
            if tid in self._labelled:
                self._labelled.move_to_end(tid)
                return True
        if self.store.count_unlabelled(agent_id(tid)):
            return False
        with self._lock:
            self._labelled[tid] = None
            while len(self._labelled) > MAX_CACHED_THREADS:
                self._labelled.popitem(last=False)
        return True

    def _labelled_checkpoint(self, tid: str, ns: str, cid: str | None) -> tuple[bool, _Ckpt | None]:
        """(whether to trust a miss, the checkpoint) with this id, or the namespace's latest,
        found by label. The latest is the greatest checkpoint id put in the namespace (see _greatest_of)."""
        trusted = True
        if not cid:
            head = self._head(tid, ns)
            if head is None:
                return True, None
            cid, trusted = _greatest_of(head), False
            if cid == head.metadata["checkpoint_id"]:
                return True, _checkpoint(head)
        found = self.store.find(agent_id(tid), _label("c", ns, cid))
        return trusted, _checkpoint(found[-1]) if found else None

    def _head(self, tid: str, ns: str) -> SnapshotInfo | None:
        """The last snapshot of the namespace's lineage, when it is a checkpoint."""
        head = self.store.latest(agent_id(tid), session_id(ns))
        return head if head is not None and head.metadata.get("langgraph") == KIND_CHECKPOINT else None

    def _greatest(self, tid: str, ns: str) -> str | None:
        """The greatest checkpoint id put in the namespace so far (see _greatest_of), or None
        when the namespace has no checkpoint."""
        head = self._head(tid, ns)
        return None if head is None else _greatest_of(head)

    def _labelled_writes(self, tid: str, ns: str, cid: str) -> list[_Writes]:
        """The writes stored for a checkpoint, in commit order, found by label."""
        th = _Thread()
        for info in self.store.find(agent_id(tid), _label("w", ns, cid)):
            _add_info(th, info)
        return th.writes.get((ns, cid), [])

    def _writes_of(self, tid: str, ns: str, cid: str) -> list[_Writes]:
        if self._direct(tid):
            return self._labelled_writes(tid, ns, cid)
        return list(self._thread(tid).writes.get((ns, cid), ()))

    @staticmethod
    def _labels(ns: str, meta: dict) -> list[str]:
        """The labels of a snapshot with this metadata: its checkpoint's, and those of each
        checkpoint whose writes it carries."""
        labels = [_label("c", ns, meta["checkpoint_id"])] if meta.get("langgraph") == KIND_CHECKPOINT else []
        return labels + [_label("w", ns, cid) for cid in dict.fromkeys(call[0] for call in _calls(meta))]

    def _state(self, snap_id: str) -> dict | None:
        """A stored state, from the cache when this saver wrote or read it lately."""
        state = self._states.get(snap_id)
        if state is None:
            try:
                state = self.store.restore(snap_id)
            except SnapshotNotFoundError:
                return None
            self._states.put(snap_id, state, _state_bytes(state))
        return state

    def _tuple(self, tid: str, ns: str, ck: _Ckpt, writes: list[_Writes], latest: bool = False
               ) -> CheckpointTuple | None:
        state = self._state(ck.snap_id)
        if state is None:
            return None
        rows = self._pending_rows(tid, ns, ck.checkpoint_id, writes)
        checkpoint, written = self._decode_checkpoint(state, (tid, ns) if latest else None, [r[2] for r in rows])
        return CheckpointTuple(
            config={"configurable": {"thread_id": tid, "checkpoint_ns": ns, "checkpoint_id": ck.checkpoint_id}},
            checkpoint=checkpoint,
            metadata=self._metadata(ck),
            parent_config=({"configurable": {"thread_id": tid, "checkpoint_ns": ns,
                                             "checkpoint_id": ck.parent_id}} if ck.parent_id else None),
            pending_writes=[(task_id, channel, value) for (task_id, channel, _), value in zip(rows, written)],
        )

    def _pending_rows(self, tid: str, ns: str, cid: str, writes: list[_Writes]) -> list[tuple[str, str, bytes | list]]:
        """(task id, channel, stored item or items) of the checkpoint's pending writes, in LangGraph's order."""
        snap_ids = tuple(dict.fromkeys(w.snap_id for w in writes))
        known = self._states.get(("rows", tid, ns, cid))
        if known is not None and known[0] == snap_ids:
            return known[1]
        merged: dict[tuple[str, int], tuple[str, str, bytes, str]] = {}
        complete = True
        for snap_id in snap_ids:
            state = self._state(snap_id)
            if state is None:
                complete = False
                continue
            for row_cid, task_id, channel, idx, task_path, item in _write_rows(state):
                if row_cid is not None and row_cid != cid:  # a snapshot may carry several checkpoints' writes
                    continue
                key = (task_id, idx)
                if idx >= 0 and key in merged:
                    continue
                merged[key] = (task_id, channel, item, task_path)
        ordered = sorted(merged.items(), key=lambda kv: writes_sort_key(kv[1][3], *kv[0]))
        rows = [(task_id, channel, item) for _, (task_id, channel, item, _path) in ordered]
        if complete:  # a snapshot's rows never change: valid while the same snapshots carry the writes
            self._states.put(("rows", tid, ns, cid), (snap_ids, rows), _state_bytes([r[2] for r in rows]))
        return rows

    def get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        found = self._find(config)
        return None if found is None else self._tuple(*found, latest=True)

    def list(self, config: RunnableConfig | None, *, filter: dict[str, Any] | None = None,
             before: RunnableConfig | None = None, limit: int | None = None) -> Iterator[CheckpointTuple]:
        if config is not None:
            thread_ids = [str(config["configurable"]["thread_id"])]
            want_ns = config["configurable"].get("checkpoint_ns")
            want_id = get_checkpoint_id(config)
        else:
            thread_ids, want_ns, want_id = self._all_threads(), None, None
        before_id = get_checkpoint_id(before) if before else None
        candidates: list[tuple[str, str, _Ckpt, list[_Writes]]] = []
        for tid in thread_ids:
            th = self._thread(tid)
            with self._lock:
                for ns, ckpts in th.ckpts.items():
                    if want_ns is not None and ns != want_ns:
                        continue
                    for cid, ck in ckpts.items():
                        if want_id and cid != want_id:
                            continue
                        if before_id and cid >= before_id:
                            continue
                        if filter:
                            md = self._metadata(ck)
                            if not all(md.get(k) == v for k, v in filter.items()):
                                continue
                        candidates.append((tid, ns, ck, list(th.writes.get((ns, cid), ()))))
        candidates.sort(key=lambda c: c[2].checkpoint_id, reverse=True)
        if limit is not None:
            candidates = candidates[:max(0, limit)]
        for tid, ns, ck, writes in candidates:
            tup = self._tuple(tid, ns, ck, writes)
            if tup is not None:
                yield tup

    # ------------------------------------------------------------------ writing
    def put(self, config: RunnableConfig, checkpoint: Checkpoint, metadata: CheckpointMetadata,
            new_versions: ChannelVersions) -> RunnableConfig:
        conf = config["configurable"]
        tid, ns = str(conf["thread_id"]), conf.get("checkpoint_ns", "")
        parent_id = conf.get("checkpoint_id")
        c = dict(checkpoint)
        values = c.pop("channel_values", None) or {}
        md = get_checkpoint_metadata(config, metadata)
        md.pop("writes", None)
        cid = checkpoint["id"]
        with self._lock:
            self._putting[(tid, ns)] = self._putting.get((tid, ns), 0) + 1
        try:
            return self._put(tid, ns, cid, parent_id, c, values, md)
        finally:
            with self._lock:
                self._putting[(tid, ns)] -= 1
                if not self._putting[(tid, ns)]:
                    del self._putting[(tid, ns)]

    def _put(self, tid: str, ns: str, cid: str, parent_id: str | None, c: dict, values: dict, md: dict
             ) -> RunnableConfig:
        with self._lock:
            state, cost = self._encode_checkpoint(tid, ns, c, values)
            meta = {"langgraph": KIND_CHECKPOINT, **_ns_field(ns), "checkpoint_id": cid,
                    "parent_checkpoint_id": parent_id, **self._metadata_fields(md)}
        desc = f"langgraph {md.get('source', 'checkpoint')} step {md.get('step', '?')}"
        with self._io:
            with self._lock:
                greatest = self._greatest(tid, ns)
                if greatest is not None and greatest > cid:
                    meta["latest"] = greatest
                if not self._direct(tid):
                    old = self._thread(tid).ckpts.get(ns, {}).get(cid)
                elif greatest is None or cid > greatest:  # a new id, as LangGraph's always are: no lookup
                    old = None
                else:
                    old = self._labelled_checkpoint(tid, ns, cid)[1]
                # the old snapshot goes unless it carries writes (of any checkpoint, see _commit)
                replaced = old is not None and not old.meta.get("writes")
            self._commit(tid, ns, state, cost, meta, desc)
            if replaced:  # the same checkpoint id put again: the new snapshot replaces the old one
                self._delete([old.snap_id])
        return {"configurable": {"thread_id": tid, "checkpoint_ns": ns, "checkpoint_id": cid}}

    def _commit(self, tid: str, ns: str, state: dict, cost: int, meta: dict, desc: str | None) -> None:
        """Write one snapshot (holding _io) carrying every queued write of this lineage.

        Every put_writes call whose rows ride in the snapshot returns once it is
        durable (group commit). LangGraph stores a step's task writes and then,
        right after, the next checkpoint, so the writes usually ride in that
        checkpoint's snapshot instead of needing one of their own.
        """
        with self._lock:
            jobs = [q for q in self._queue if q.tid == tid and q.ns == ns]
            self._queue = [q for q in self._queue if q not in jobs]
        if jobs:
            state = {**state, **_pack_rows([row for q in jobs for row in q.rows], state.get("lists"))}
            meta = {**meta, "writes": [[q.cid, q.task_id, q.keys] for q in jobs]}
            cost += sum(q.cost for q in jobs)
        session = session_id(ns) + ("" if meta["langgraph"] == KIND_CHECKPOINT else WRITES_SUFFIX)
        try:
            labels = self._labels(ns, meta)
            info = self.store.snapshot(state, agent_id(tid), session, description=desc, metadata=meta, labels=labels)
        except BaseException as e:
            for q in jobs:
                q.error = e
                q.done.set()
            raise
        with self._lock:
            self._states.put(info.id, state, cost)
            th = self._threads.get(tid)
            if th is not None:  # else the next listing reads it from the index
                _add_info(th, info)
        for q in jobs:
            q.done.set()

    def put_writes(self, config: RunnableConfig, writes: Sequence[tuple[str, Any]], task_id: str,
                   task_path: str = "") -> None:
        conf = config["configurable"]
        tid, ns, cid = str(conf["thread_id"]), conf.get("checkpoint_ns", ""), conf["checkpoint_id"]
        with self._lock:
            have = {(w.task_id, i) for w in self._writes_of(tid, ns, cid) for i in w.keys}
            have.update((q.task_id, i) for q in self._queue if (q.tid, q.ns, q.cid) == (tid, ns, cid) for i in q.keys)
            rows, keys = [], []
            cost = 0
            for idx, (channel, value) in enumerate(writes):
                i = WRITES_IDX_MAP.get(channel, idx)
                if i >= 0 and (task_id, i) in have:
                    continue
                if type(value) is list:  # element by element, and remembered for the next put
                    stored, fresh = self._encode_items((tid, ns, channel), value, merge=True)
                    cost += fresh
                else:
                    stored = _item(self.serde.dumps_typed(value))
                    cost += len(stored)
                rows.append([cid, task_id, channel, i, task_path, stored])
                keys.append(i)
            if not rows:
                return
            job = _Queued(tid, ns, cid, task_id, rows, keys, cost + 64 * len(rows))
            self._queue.append(job)
        while not job.done.wait(self.writes_linger):
            with self._lock:
                if not self._putting.get((tid, ns)):
                    break  # no checkpoint of the lineage on its way took them: a snapshot of their own
        if not job.done.is_set():
            with self._io:
                if not job.done.is_set():
                    self._commit(tid, ns, {"format": FORMAT}, 0, {"langgraph": KIND_WRITES, **_ns_field(ns)}, None)
        job.done.wait()
        if job.error is not None:
            raise job.error

    def _delete_checkpoints(self, tid: str, th: _Thread, doomed: set[tuple[str, str]]) -> None:
        """Delete these (ns, checkpoint id)s of a thread with their writes (holding _io and _lock).

        A doomed checkpoint's snapshot may also carry writes of a kept
        checkpoint: those rows are stored again, as a writes snapshot, first.
        """
        delete, rescue = _snapshots_of(th, doomed)
        for sid, kept in rescue.items():
            ns = next(iter(kept))[0]  # a snapshot belongs to one namespace's lineage
            rows = [list(r) for r in _write_rows(self._state(sid) or {}) if (ns, r[0]) in kept]
            if not rows:
                continue
            calls = [[w.checkpoint_id, w.task_id, w.keys] for key in sorted(kept) for w in th.writes.get(key, ())
                     if w.snap_id == sid]
            meta = {"langgraph": KIND_WRITES, **_ns_field(ns), "writes": calls}
            self.store.snapshot({"format": FORMAT, **_pack_rows(rows)}, agent_id(tid),
                                session_id(ns) + WRITES_SUFFIX, metadata=meta,
                                labels=self._labels(ns, meta))
        self._delete(delete)

    def _delete(self, snap_ids: list[str]) -> None:
        for sid in snap_ids:
            self._states.discard(sid)
            try:
                self.store.delete(sid)
            except SnapshotNotFoundError:
                pass

    def delete_thread(self, thread_id: str) -> None:
        tid = str(thread_id)
        with self._io, self._lock:
            infos = self.store.list(agent_id(tid))
            self._delete([i.id for i in infos])
            self._threads.pop(tid, None)
            for key in [k for k in self._seen if k[0] == tid]:
                del self._seen[key]

    def copy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        src, dst = str(source_thread_id), str(target_thread_id)
        with self._io, self._lock:
            infos = self.store.list(agent_id(src))
            th = self._thread(dst)
            for info in infos:
                if info.metadata.get("langgraph") not in (KIND_CHECKPOINT, KIND_WRITES):
                    continue
                state = self._state(info.id)
                if state is None:
                    continue
                ns = info.metadata.get("checkpoint_ns", "")
                meta = {k: v for k, v in info.metadata.items() if k not in ("thread_id", "latest")}
                if meta["langgraph"] == KIND_CHECKPOINT:
                    greatest = self._greatest(dst, ns)
                    if greatest is not None and greatest > meta["checkpoint_id"]:
                        meta["latest"] = greatest
                labels = self._labels(ns, meta)
                new = self.store.snapshot(state, agent_id(dst), info.session_id, description=info.description,
                                          metadata=meta, labels=labels)
                _add_info(th, new)

    def prune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        if strategy not in ("keep_latest", "delete"):
            raise ValueError(f"unknown prune strategy {strategy!r} (keep_latest or delete)")
        for thread_id in thread_ids:
            tid = str(thread_id)
            if strategy == "delete":
                self.delete_thread(tid)
                continue
            with self._io, self._lock:
                th = self._thread(tid, reload=True)
                latest = {ns: max(ckpts) for ns, ckpts in th.ckpts.items() if ckpts}
                doomed = {(ns, cid) for ns, ckpts in th.ckpts.items() for cid in ckpts if cid != latest[ns]}
                doomed |= {(ns, cid) for ns, cid in th.writes if cid not in th.ckpts.get(ns, {})}  # orphans
                self._delete_checkpoints(tid, th, doomed)
                self._threads.pop(tid, None)

    def delete_for_runs(self, run_ids: Sequence[str]) -> None:
        runs = {str(r) for r in run_ids}
        if not runs:
            return
        with self._io, self._lock:
            for tid in self._all_threads():
                th = self._thread(tid)
                doomed = {(ns, cid) for ns, ckpts in th.ckpts.items() for cid, ck in ckpts.items()
                          if str(self._metadata(ck).get("run_id")) in runs}
                if doomed:
                    self._delete_checkpoints(tid, th, doomed)
                    self._threads.pop(tid, None)

    # ------------------------------------------------------------------ async
    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        return await asyncio.to_thread(self.get_tuple, config)

    async def alist(self, config: RunnableConfig | None, *, filter: dict[str, Any] | None = None,
                    before: RunnableConfig | None = None, limit: int | None = None) -> AsyncIterator[CheckpointTuple]:
        """list() a few checkpoints at a time on a worker thread: a long history is never
        deserialized whole before its first checkpoint is handed out."""
        found = self.list(config, filter=filter, before=before, limit=limit)
        while True:
            batch = await asyncio.to_thread(lambda: list(itertools.islice(found, ALIST_BATCH)))
            for item in batch:
                yield item
            if len(batch) < ALIST_BATCH:
                return

    async def aput(self, config: RunnableConfig, checkpoint: Checkpoint, metadata: CheckpointMetadata,
                   new_versions: ChannelVersions) -> RunnableConfig:
        return await asyncio.to_thread(self.put, config, checkpoint, metadata, new_versions)

    async def aput_writes(self, config: RunnableConfig, writes: Sequence[tuple[str, Any]], task_id: str,
                          task_path: str = "") -> None:
        await asyncio.to_thread(self.put_writes, config, writes, task_id, task_path)

    async def adelete_thread(self, thread_id: str) -> None:
        await asyncio.to_thread(self.delete_thread, thread_id)

    async def acopy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        await asyncio.to_thread(self.copy_thread, source_thread_id, target_thread_id)

    async def aprune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        await asyncio.to_thread(self.prune, thread_ids, strategy=strategy)

    async def adelete_for_runs(self, run_ids: Sequence[str]) -> None:
        await asyncio.to_thread(self.delete_for_runs, run_ids)


def _snapshots_of(th: _Thread, doomed: set[tuple[str, str]]) -> tuple[list[str], dict[str, set[tuple[str, str]]]]:
    """Snapshots to delete with these (ns, checkpoint id)s, and, for those of them that also carry
    writes of kept checkpoints, which ones (their rows must be stored again before the delete).

    A checkpoint's snapshot goes with its checkpoint; a snapshot of writes only goes once every
    checkpoint whose writes it carries goes.
    """
    own = {ck.snap_id: (ns, cid) for ns, ckpts in th.ckpts.items() for cid, ck in ckpts.items()}
    carried: dict[str, set[tuple[str, str]]] = {}
    for key, ws in th.writes.items():
        for w in ws:
            carried.setdefault(w.snap_id, set()).add(key)
            if w.carrier is not None:
                own.setdefault(w.snap_id, w.carrier)
    delete, rescue = [], {}
    for sid in own.keys() | carried.keys():
        kept = carried.get(sid, set()) - doomed
        if (own[sid] not in doomed) if sid in own else bool(kept):
            continue
        delete.append(sid)
        if kept:
            rescue[sid] = kept
    return sorted(delete), rescue


def _pack_rows(rows: list[list], lists: dict[str, list] | None = None) -> dict:
    """Write rows as stored: the values (serde items) in one flat list of their own, so a
    message written by a task is the same list item, and chunk, as in the next checkpoint.

    With lists (the snapshot's own channel lists), a value that is one of the last
    REF_WINDOW items of its channel's list (a message a task wrote, which the reducer
    appended) is stored as its index there instead: a short message would otherwise
    be stored twice, in the write and, grouped with its neighbours, in the list.
    """
    heads, items = [], []
    found: dict[str, dict[bytes, int]] = {}
    for cid, task_id, channel, idx, task_path, value in rows:
        values = value if isinstance(value, list) else [value]
        heads.append([cid, task_id, channel, idx, task_path, len(values) if isinstance(value, list) else -1])
        if lists and channel in lists and channel not in found:
            tail = lists[channel][-REF_WINDOW:]
            start = len(lists[channel]) - len(tail)
            found[channel] = {item: start + i for i, item in enumerate(tail)}
        refs = found.get(channel)
        items += [refs.get(v, v) for v in values] if refs else values
    return {"rows": heads, "items": items}


def _write_rows(state: dict) -> Iterator[tuple]:
    """(checkpoint id or None, task id, channel, index, task path, item or items) of every stored
    write row, in any format (1: inline values, no checkpoint id; 2 and 3: _pack_rows, where 3
    may store a value as an index into the snapshot's list of that channel)."""
    if "rows" in state:
        items, at = state["items"], 0
        lists = state.get("lists") or {}
        for cid, task_id, channel, idx, task_path, n in state["rows"]:
            count = 1 if n < 0 else n
            values = [lists[channel][v] if type(v) is int else v for v in items[at:at + count]]
            at += count
            yield cid, task_id, channel, idx, task_path, values[0] if n < 0 else values
        return
    for row in state.get("writes", ()):
        yield (None, *row)


def _ns_field(ns: str) -> dict:
    """The namespace as snapshot metadata; the root namespace "" is the default and not stored."""
    return {"checkpoint_ns": ns} if ns else {}


def _add_info(th: _Thread, info: SnapshotInfo) -> None:
    meta = info.metadata
    kind = meta.get("langgraph")
    ns = meta.get("checkpoint_ns", "")
    if kind == KIND_CHECKPOINT:
        cid = meta["checkpoint_id"]
        th.ckpts.setdefault(ns, {})[cid] = _checkpoint(info)
    if kind in (KIND_CHECKPOINT, KIND_WRITES):
        carrier = (ns, meta["checkpoint_id"]) if kind == KIND_CHECKPOINT else None
        for cid, task_id, keys in _calls(meta):
            th.writes.setdefault((ns, cid), []).append(_Writes(info.id, cid, task_id, list(keys), carrier))


def _greatest_of(head: SnapshotInfo) -> str:
    """The greatest checkpoint id put in a namespace, as the last snapshot of its lineage records
    it: a checkpoint's metadata holds it as "latest" when it is not its own id (after a put out of
    id order). No greater checkpoint id exists in the namespace."""
    return head.metadata.get("latest", head.metadata["checkpoint_id"])


def _checkpoint(info: SnapshotInfo) -> _Ckpt:
    meta = info.metadata
    return _Ckpt(info.id, meta["checkpoint_id"], meta.get("parent_checkpoint_id"), meta)


def _calls(meta: dict) -> list:
    """The [checkpoint id, task id, write indexes] of each put_writes call a snapshot carries."""
    if meta.get("langgraph") == KIND_WRITES and "writes" not in meta:  # format 1: one call per snapshot
        return [[meta["checkpoint_id"], meta.get("task_id", ""), meta.get("keys", ())]]
    return meta.get("writes", [])
