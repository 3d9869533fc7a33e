"""Garbage collection that never blocks writers: condemn, wait a grace period, then delete.

Design (a two-phase fossil collection, as duplicacy and kopia do):

1. A pass lists every manifest and computes the live chunks. A pack holding
   no live chunk is *condemned*: a mark object ``gc/condemned/<pack>`` is
   written with the time. Packs that are mostly garbage are *repacked*: their
   live chunks are copied into a new pack and the old pack is condemned. Many
   small live packs (one per snapshot, as an agent writes) are merged the
   same way, so a restore reads a few packs instead of one per step.
2. Writers never take a lock. They look at the marks at least every
   grace/2 and treat chunks whose only copies sit in condemned packs as
   missing, so they store fresh copies instead of deduplicating against a
   doomed pack. A write that spends more than grace/2 between its dedup
   check and its manifest re-checks the marks before committing.
3. A later pass deletes a condemned pack only once the grace period has
   passed since its mark, and only if the manifests listed *in that pass*
   still reference nothing in it. A writer that deduplicated against the
   pack before seeing the mark committed within grace/2 of its check, so its
   manifest is listed by then, and the pack is rescued (its mark removed).

So a chunk a committed snapshot references is never deleted, whenever the
snapshot committed; a crash of gc at any point leaves marks or packs that the
next pass finishes. Clock skew between machines must stay well below grace.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import msgpack

from .errors import ObjectNotFoundError
from .index import Location
from .liveness import reachable
from .pack import PackWriter
from .repository import PACK_TARGET, Repository, condemned_key, pack_key

log = logging.getLogger("casstore")

REPACK_THRESHOLD = 0.5  # repack a pack once more than this share of its bytes is garbage
SMALL_PACK = 1 << 20    # live packs below this size...
MERGE_MIN = 32          # ...are merged into bigger ones once there are this many


@dataclass
class GCReport:
    dry_run: bool
    snapshots: int = 0
    live_chunks: int = 0
    packs: int = 0
    packs_condemned: int = 0
    packs_rescued: int = 0
    packs_deleted: int = 0
    packs_repacked: int = 0
    chunks_freed: int = 0
    bytes_freed: int = 0
    bytes_rewritten: int = 0
    packs_waiting: int = 0
    seconds: float = 0.0
    deleted: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def collect(repo: Repository, *, dry_run: bool = False, grace: float | None = None,
            repack_threshold: float = REPACK_THRESHOLD) -> GCReport:
    """One gc pass; see the module docstring for why it is safe under concurrent writers."""
    started = time.time()
    grace = repo.config.gc_grace if grace is None else grace
    report = GCReport(dry_run=dry_run)
    repo.sync()
    listed_at = time.time()  # every manifest committed before this moment is in the index now
    snaps = [(f["root"], f["height"]) for _, f in repo.index.lineage()]
    report.snapshots = len(snaps)
    live_data, live_nodes = reachable(snaps, repo.fetch_nodes)
    live = live_data | live_nodes
    report.live_chunks = len(live_data)

    canonical = repo.index.locate(live)  # the one copy of each live chunk that gc keeps
    sizes = repo.index.packs()
    report.packs = len(sizes)
    marks = _read_marks(repo)

    held: dict[bytes, list[bytes]] = {}  # pack -> hashes it holds
    data_bytes: dict[bytes, int] = {}    # stored chunk bytes per pack, trailer excluded
    for h, loc in repo.index.iter_chunks():  # one scan of the chunk table for both
        held.setdefault(loc.pack, []).append(h)
        data_bytes[loc.pack] = data_bytes.get(loc.pack, 0) + loc.stored_len
    live_bytes: dict[bytes, int] = {}
    for h, loc in canonical.items():
        live_bytes[loc.pack] = live_bytes.get(loc.pack, 0) + loc.stored_len

    to_mark, to_rescue, to_delete, to_repack = [], [], [], []
    for pack_id in sizes:
        marked = marks.get(pack_id)
        used = live_bytes.get(pack_id, 0)
        if marked is not None:
            if used:
                to_rescue.append(pack_id)
            elif marked + grace <= listed_at:
                to_delete.append(pack_id)
            else:
                report.packs_waiting += 1
        elif not used:
            to_mark.append(pack_id)
        elif used < data_bytes.get(pack_id, 0) * (1 - repack_threshold):
            to_repack.append(pack_id)
    small = [p for p in sizes if p not in marks and p not in to_repack and live_bytes.get(p)
             and data_bytes.get(p, 0) < SMALL_PACK]
    if len(small) >= MERGE_MIN:  # many small live packs (a snapshot per step): merge them for read locality
        to_repack += small
    stale_marks = [p for p in marks if p not in sizes]

    report.packs_condemned = len(to_mark) + len(to_repack)  # a repacked pack is condemned too
    report.packs_rescued = len(to_rescue)
    report.packs_deleted = len(to_delete)
    report.packs_repacked = len(to_repack)
    report.deleted = [p.hex() for p in to_delete]
    for p in to_delete:
        report.chunks_freed += len(held.get(p, []))
        report.bytes_freed += sizes[p][0]
    if dry_run:
        report.seconds = time.time() - started
        return report

    for p in to_rescue + stale_marks:
        repo.backend.delete(condemned_key(p))
    repo.index.set_condemned({}, clear=to_rescue + stale_marks)
    repacked = _repack(repo, to_repack, canonical, report)
    _condemn(repo, to_mark + repacked)
    for p in to_delete:
        repo.backend.delete(pack_key(p))
        repo.backend.delete(condemned_key(p))
    repo.index.remove_packs({p: held.get(p, []) for p in to_delete})
    report.seconds = time.time() - started
    log.debug("gc", extra={"casstore": {"op": "gc", **{k: v for k, v in report.to_dict().items() if k != "deleted"}}})
    return report


def _read_marks(repo: Repository) -> dict[bytes, float]:
    """Condemned packs and when they were marked, from storage (the index may be behind)."""
    keys = repo.backend.list("gc/condemned/")

    def one(key: str) -> tuple[bytes, float] | None:
        try:
            pack_id = bytes.fromhex(key.rsplit("/", 1)[-1])
            return pack_id, float(msgpack.unpackb(repo.backend.get(key))["time"])
        except (ObjectNotFoundError, ValueError, KeyError, TypeError, msgpack.UnpackException):
            return None
    return dict(r for r in repo.pool.map(one, keys) if r is not None)


def _condemn(repo: Repository, packs: list[bytes]) -> None:
    """Mark objects first (other machines), then the local index (writers here see it at once).

    The mark's time is taken just before it is written, never earlier: the
    grace period must run from when writers can see the mark.
    """
    now = time.time()
    # Not fsynced: a mark lost to a power cut only means the pack is not deleted yet.
    repo.backend.put_many([(condemned_key(p), msgpack.packb({"time": now})) for p in packs], durable=False)
    repo.index.set_condemned({p: now for p in packs})


def _repack(repo: Repository, packs: list[bytes], canonical: dict[bytes, Location], report: GCReport) -> list[bytes]:
    """Copy the live chunks of mostly-garbage packs into new packs; return the packs emptied."""
    if not packs:
        return []
    wanted = set(packs)
    by_pack: dict[bytes, list[tuple[bytes, Location]]] = {}
    for h, loc in canonical.items():
        if loc.pack in wanted:
            by_pack.setdefault(loc.pack, []).append((h, loc))
    writer = PackWriter(repo.sealer)   # sealed chunks move as they are: their AD is their id, not the pack
    new = []

    def flush() -> None:
        pack_id, data, entries = writer.finalize()
        repo.backend.put(pack_key(pack_id), data)
        new.append((pack_id, len(data), entries))
        report.bytes_rewritten += len(data)

    for pack_id in packs:
        data = memoryview(repo.backend.get(pack_key(pack_id)))
        for h, loc in sorted(by_pack.get(pack_id, []), key=lambda x: x[1].offset):
            stored = data[loc.offset:loc.offset + loc.stored_len]
            repo.decode_chunk(h, loc.method, stored, loc.raw_len, loc.itemsize, pack_id)
            writer.add(h, loc.kind, loc.method, loc.itemsize, bytes(stored), loc.raw_len)
            if writer.size >= PACK_TARGET:
                flush()
                writer = PackWriter(repo.sealer)
    if len(writer):
        flush()
    repo.index.add_packs(new)
    return packs
