"""Copy snapshots between repositories, sending only what the destination lacks.

For each snapshot (oldest first, so parents land before children):

    source tree -> chunk and node hashes -> ask the destination index which
    are missing -> read those from the source (every chunk BLAKE3-checked on
    read) -> re-pack them on the destination -> put the packs -> put the
    ORIGINAL manifest bytes -> commit the destination index.

The manifest bytes travel unchanged, so a snapshot keeps its id (the hash of
its manifest) in every repository it is copied to. As in the write path, a
manifest is put only after every pack it needs is durable, so a copy that
fails midway leaves at most unreferenced packs on the destination.

After each snapshot lands, the chunks that were sent are read back from the
destination (hash-checked again), and its tree is walked there, so a report
that says "copied" means the destination can restore it.

Encrypted repositories: chunks are opened with the source's key and sealed
again with the destination's (fresh nonces), and the manifest's plaintext is
re-sealed, so it keeps its id. Ids are keyed by the repository's id key, so
a copy needs both repositories to hash alike: both unencrypted, or both
encrypted with the same master key (create the destination with
`casstore.open(dst, password=..., encrypt=True, key_from=source_store)`).
Between other pairs copy refuses with a ConfigurationError: every chunk,
node and snapshot id would change, and with them the parent chain.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Callable, Iterable

from . import manifest, tree
from .errors import ConfigurationError, IntegrityError
from .pack import PackEntry
from .repository import Repository, manifest_key, pack_key

BATCH_RAW = 64 << 20   # raw bytes read from the source before they are packed and sent


@dataclass
class CopyReport:
    """What a copy did: snapshot ids copied and skipped (already there), chunks and bytes sent."""

    copied: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    chunks_sent: int = 0
    bytes_sent: int = 0        # pack and manifest bytes put on the destination
    packs_sent: int = 0
    verified: bool = False     # every sent chunk was read back from the destination

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def copy_snapshots(src: Repository, dst: Repository, ids: Iterable[str | bytes] | None = None, *,
                   verify: bool = True, progress: Callable[[str, bytes], None] | None = None) -> CopyReport:
    """Copy snapshots (all, or these ids / unique prefixes) from src to dst."""
    if src.hasher != dst.hasher:
        raise ConfigurationError(
            f"cannot copy from {src.backend.url} to {dst.backend.url}: their chunk ids are computed differently "
            f"({_mode(src)} vs {_mode(dst)}); copies need both unencrypted or both encrypted with the same master key")
    if not src.backend.is_local:
        src.sync()
    dst.sync()
    wanted = src.index.snapshot_ids() if ids is None else list(dict.fromkeys(src.resolve(i) for i in ids))
    ordered = sorted(((sid, src.fields(sid)) for sid in wanted), key=lambda r: (r[1]["time"], r[1]["index"]))
    report = CopyReport(verified=verify)
    coming = {sid for sid, _ in ordered}
    absent = [f["parent"] for _, f in ordered
              if f.get("parent") and f["parent"] not in coming and not dst.index.has_snapshot(f["parent"])]
    if absent:  # a partial copy: the destination holds children whose parents stay behind, on purpose
        dst.mark_forgotten(list(dict.fromkeys(absent)))
    for sid, fields in ordered:
        if dst.index.has_snapshot(sid):
            report.skipped.append(sid.hex())
            continue
        _copy_one(src, dst, sid, fields, report, verify)
        report.copied.append(sid.hex())
        if progress is not None:
            progress("copied", sid)
    return report


def _copy_one(src: Repository, dst: Repository, sid: bytes, fields: dict, report: CopyReport, verify: bool) -> None:
    data = src.manifest_plaintext(sid)
    if manifest.decode(data, sid, src.hasher)["root"] != fields["root"]:
        raise IntegrityError(f"snapshot {sid.hex()}: manifest in {src.backend.url} differs from the index")
    nodes = tree.node_hashes(fields["root"], fields["height"], src.fetch_nodes)
    hashes = list(dict.fromkeys([*nodes, *(h for h, _ in src.entries(fields))]))
    with dst._lock:
        dst._refresh_marks(max_age=dst.config.gc_grace / 2)
        missing = dst.index.missing(hashes)
        todo = [h for h in hashes if h in missing]
        packs = _send(src, dst, todo)
        dst.backend.put(manifest_key(sid), dst.seal_manifest(sid, data))   # only after its packs are durable
        dst.index.commit(packs, [(sid, fields)])
    report.chunks_sent += len(todo)
    report.packs_sent += len(packs)
    report.bytes_sent += sum(size for _, size, _ in packs) + len(data)
    if verify:
        dst._load(todo, lambda h, view: None)           # hash-checked read back of what was sent
        tree.node_hashes(fields["root"], fields["height"], partial(dst.fetch_nodes, cached=False))


def _send(src: Repository, dst: Repository, todo: list[bytes]) -> list[tuple[bytes, int, list[PackEntry]]]:
    """Read todo from src in batches of about BATCH_RAW bytes, pack and put them on dst."""
    locs = src.index.locate(todo)
    lost = [h for h in todo if h not in locs]
    if lost:
        raise IntegrityError(f"chunk {lost[0].hex()} (and {len(lost) - 1} more) is not in any pack of {src.backend.url}")
    out: list[tuple[bytes, int, list[PackEntry]]] = []
    batch: list[bytes] = []
    size = 0
    for h in todo + [None]:  # type: ignore[list-item]
        if h is not None:
            batch.append(h)
            size += locs[h].raw_len
            if size < BATCH_RAW:
                continue
        if not batch:
            break
        got: dict[bytes, bytes] = {}
        src._load(batch, lambda k, view: got.__setitem__(k, bytes(view)))
        packs = list(dst._pack([(k, memoryview(got[k]), locs[k].itemsize, locs[k].kind) for k in batch]))
        dst.backend.put_many([(pack_key(pid), pdata) for pid, pdata, _ in packs])
        out += [(pid, len(pdata), ents) for pid, pdata, ents in packs]
        batch, size = [], 0
    return out


def _mode(repo: Repository) -> str:
    return "encrypted" if repo.hasher.keyed else "unencrypted"
