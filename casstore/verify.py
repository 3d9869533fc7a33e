"""Repository checker: structure in quick mode, every chunk's bytes in deep mode.

Quick mode reads manifests, tree nodes and pack trailers: every manifest
hashes to its id, its parent exists or was forgotten, every chunk it names
has a location in the index inside an existing pack, and the index agrees
with the trailers. Deep mode also reads packs whole (one at a time per
worker, so memory stays bounded by the pack size), checks each pack hashes
to its name and re-hashes every chunk; it can be limited to a fraction of
the packs or a byte budget, as restic's --read-data-subset.

Encrypted repositories: with the key, everything above (trailers and
manifests are opened, every chunk authenticated). Without it,
verify_without_key checks what needs no key: the config, each key object's
fields, every manifest's and pack's name, every pack footer and its bounds,
and in deep mode that every pack hashes to its name (pack names are plain
BLAKE3 of the pack bytes for exactly this reason).
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass, field
from functools import partial

from concurrent.futures import ThreadPoolExecutor

import blake3

from . import crypto
from .backend import Backend
from .config import RepoConfig
from .errors import CasstoreError, IntegrityError
from .liveness import reachable
from .pack import FOOTER_SIZE, VERSION_SEALED, read_entries, read_footer
from .repository import CONFIG_KEY, Repository, _key_id, manifest_key, pack_key, read_pack_trailer

log = logging.getLogger("casstore")


@dataclass
class Problem:
    kind: str                 # manifest, chain, missing-chunk, pack, trailer, index, chunk, unreferenced
    message: str
    snapshots: list[str] = field(default_factory=list)
    object: str | None = None
    severity: str = "error"   # "error" makes the report fail; "info" (unreferenced leftovers) does not

    def __str__(self) -> str:
        where = f" (snapshots {', '.join(s[:12] for s in self.snapshots[:5])})" if self.snapshots else ""
        return f"{self.kind}: {self.message}{where}"


@dataclass
class VerifyReport:
    deep: bool
    snapshots_checked: int = 0
    packs_checked: int = 0
    chunks_checked: int = 0
    bytes_read: int = 0
    seconds: float = 0.0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(p.severity == "error" for p in self.problems)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    def to_dict(self) -> dict:
        return {"ok": self.ok, "deep": self.deep, "snapshots_checked": self.snapshots_checked,
                "packs_checked": self.packs_checked, "chunks_checked": self.chunks_checked,
                "bytes_read": self.bytes_read, "seconds": round(self.seconds, 3),
                "problems": [p.__dict__ for p in self.problems]}


def verify(repo: Repository, snap_ids: list[bytes] | None = None, *, deep: bool = False,
           read_fraction: float = 1.0, max_bytes: int | None = None, seed: int | None = None) -> VerifyReport:
    """Check the repository (or the given snapshots) and report every problem found."""
    started = time.time()
    report = VerifyReport(deep=deep)
    repo.sync()
    pack_keys = {pid: k for k in repo.backend.list("packs/") if (pid := _key_id(k)) is not None}
    trailers = _check_trailers(repo, pack_keys, report)
    manifests = _check_manifests(repo, snap_ids, report)
    owners: dict[bytes, int] = {}
    names = [sid.hex() for sid, _ in manifests]
    data, nodes = _walk_trees(repo, manifests, owners, report)
    _check_locations(repo, data | nodes, trailers, owners, names, report)
    if snap_ids is None:
        referenced = data | nodes
        for pid, entries in trailers.items():
            if not any(e.hash in referenced for e in entries):
                report.problems.append(Problem("unreferenced", f"pack {pid.hex()} holds no referenced chunk; gc removes it",
                                               object=pack_keys[pid], severity="info"))
    if deep:
        _check_data(repo, pack_keys, data | nodes, owners, names, report, read_fraction, max_bytes, seed)
    report.snapshots_checked = len(manifests)
    report.seconds = time.time() - started
    log.debug("verify", extra={"casstore": {"op": "verify", "ok": report.ok, "deep": deep,
                                           "problems": len(report.problems), "seconds": round(report.seconds, 3)}})
    return report


def _check_trailers(repo: Repository, pack_keys: dict[bytes, str], report: VerifyReport) -> dict:
    """Read every trailer; compare with the index's view of the pack."""
    def one(item: tuple[bytes, str]):
        pid, key = item
        try:
            return pid, read_pack_trailer(repo.backend, key, repo.sealer)
        except CasstoreError as e:
            return pid, e
    trailers = {}
    indexed = repo.index.pack_hashes()
    for pid, result in repo.pool.map(one, pack_keys.items()):
        if isinstance(result, Exception):
            report.problems.append(Problem("pack", f"pack {pid.hex()} is unreadable: {result}", object=pack_keys[pid]))
            continue
        size, entries = result
        trailers[pid] = entries
        if pid in indexed and set(indexed[pid]) != {e.hash for e in entries}:
            report.problems.append(Problem("index", f"index and trailer of pack {pid.hex()} disagree; run `casstore index rebuild`",
                                           object=pack_keys[pid]))
    for pid in set(indexed) - set(pack_keys):
        report.problems.append(Problem("index", f"index lists pack {pid.hex()} that storage does not hold"))
    return trailers


def _check_manifests(repo: Repository, snap_ids: list[bytes] | None, report: VerifyReport) -> list[tuple[bytes, dict]]:
    keys = {sid: k for k in repo.backend.list("snapshots/") if (sid := _key_id(k)) is not None}
    wanted = list(keys) if snap_ids is None else snap_ids
    forgotten = repo.index.forgotten()
    out = []
    for sid in wanted:
        try:
            fields = repo.open_manifest(sid, repo.backend.get(manifest_key(sid)))
        except CasstoreError as e:
            report.problems.append(Problem("manifest", str(e), [sid.hex()], manifest_key(sid)))
            continue
        parent = fields.get("parent")
        if parent is not None and parent not in keys and parent not in forgotten:
            report.problems.append(Problem("chain", f"parent {parent.hex()} is missing and was not forgotten: "
                                                    f"the history was altered", [sid.hex()]))
        out.append((sid, fields))
    return out


def _walk_trees(repo: Repository, manifests: list[tuple[bytes, dict]], owners: dict[bytes, int],
                report: VerifyReport) -> tuple[set[bytes], set[bytes]]:
    """All referenced chunks and nodes; a tree that cannot be read is reported with its snapshot.

    Nodes are read from storage, never from the repository's cache: verify checks what is stored."""
    roots = [(f["root"], f["height"]) for _, f in manifests]
    fetch = partial(repo.fetch_nodes, cached=False)
    try:
        return reachable(roots, fetch, lambda h, i: owners.__setitem__(h, i))
    except CasstoreError:
        pass  # some tree is damaged: walk snapshot by snapshot to name the ones affected
    data: set[bytes] = set()
    nodes: set[bytes] = set()
    for i, (sid, f) in enumerate(manifests):
        try:
            d, n = reachable([(f["root"], f["height"])], fetch)
        except CasstoreError as e:
            report.problems.append(Problem("missing-chunk", f"the chunk tree of snapshot {sid.hex()} cannot be read: {e}",
                                           [sid.hex()]))
            continue
        for h in d - data:
            owners[h] = i
        data |= d
        nodes |= n
    return data, nodes


def _check_locations(repo: Repository, hashes: set[bytes], trailers: dict, owners: dict[bytes, int],
                     names: list[str], report: VerifyReport) -> None:
    in_trailer = {e.hash: (pid, e) for pid, entries in trailers.items() for e in entries}
    locs = repo.index.locate(hashes)
    for h in hashes:
        report.chunks_checked += 1
        loc = locs.get(h)
        owner = [names[owners[h]]] if h in owners else []
        if loc is None:
            where = "storage holds it in a pack the index does not know" if h in in_trailer else "no pack holds it"
            report.problems.append(Problem("missing-chunk", f"chunk {h.hex()} is not in the index: {where}", owner))
        elif loc.pack not in trailers:
            report.problems.append(Problem("missing-chunk", f"chunk {h.hex()} is in pack {loc.pack.hex()}, which is "
                                                            f"missing or unreadable", owner, pack_key(loc.pack)))


def _check_data(repo: Repository, pack_keys: dict[bytes, str], referenced: set[bytes], owners: dict[bytes, int],
                names: list[str], report: VerifyReport, fraction: float, max_bytes: int | None,
                seed: int | None) -> None:
    chosen = sorted(pack_keys)
    if fraction < 1.0:
        rng = random.Random(seed)
        chosen = sorted(rng.sample(chosen, max(1, round(len(chosen) * fraction)))) if chosen else []

    def one(pid: bytes) -> tuple[int, int, list[Problem]]:
        key = pack_keys[pid]
        problems = []
        try:
            data = repo.backend.get(key)
        except CasstoreError as e:
            return 0, 0, [Problem("pack", f"pack {pid.hex()} cannot be read: {e}", object=key)]
        if blake3.blake3(data).digest() != pid:
            problems.append(Problem("pack", f"pack {pid.hex()} does not hash to its name", object=key))
        try:
            entries = read_entries(data, repo.sealer, f"pack {pid.hex()}")
        except IntegrityError as e:
            return len(data), 0, problems + [Problem("trailer", f"pack {pid.hex()}: {e}", object=key)]
        view = memoryview(data)
        for e in entries:
            try:
                repo.decode_chunk(e.hash, e.method, view[e.offset:e.offset + e.stored_len], e.raw_len, e.itemsize, pid)
            except IntegrityError as err:
                owner = [names[owners[e.hash]]] if e.hash in owners else []
                sev = "error" if e.hash in referenced else "info"
                problems.append(Problem("chunk", f"chunk {e.hash.hex()} in pack {pid.hex()}: {err}", owner, key, sev))
        return len(data), len(entries), problems

    budget = max_bytes
    batch: list[bytes] = []
    for pid in chosen:
        batch.append(pid)
        if len(batch) == 4 or pid == chosen[-1]:
            for nbytes, _n, problems in repo.pool.map(one, batch):
                report.bytes_read += nbytes
                report.packs_checked += 1
                report.problems.extend(problems)
            batch = []
            if budget is not None and report.bytes_read >= budget:
                break


def verify_without_key(url: str | Backend, *, deep: bool = False, storage_options: dict | None = None) -> VerifyReport:
    """Check what needs no key (see the module docstring); works on any repository, encrypted or not."""
    if isinstance(url, Backend):
        return _verify_without_key(url, deep)
    backend = Backend(url, storage_options)
    try:
        return _verify_without_key(backend, deep)
    finally:
        backend.close()


def _verify_without_key(backend: Backend, deep: bool) -> VerifyReport:
    started = time.time()
    report = VerifyReport(deep=deep)
    try:
        config_bytes = backend.get(CONFIG_KEY)
        cfg = RepoConfig.decode(config_bytes, backend.url)
    except CasstoreError as e:
        report.problems.append(Problem("config", f"repository config: {e}", object=CONFIG_KEY))
        report.seconds = time.time() - started
        return report
    key_keys = backend.list(crypto.KEYS_PREFIX)
    for key in key_keys:
        try:
            crypto.parse_key_object(backend.get(key), key)
        except CasstoreError as e:
            report.problems.append(Problem("key", str(e), object=key))
    if cfg.encryption and not key_keys:
        report.problems.append(Problem("key", "encrypted repository holds no key objects: nothing can unlock it"))
    for key in backend.list("snapshots/"):
        sid = _key_id(key)
        if sid is None or key != manifest_key(sid):
            report.problems.append(Problem("manifest", f"{key} is not named by a snapshot id", object=key))
            continue
        report.snapshots_checked += 1
        if cfg.encryption and backend.size(key) < crypto.OVERHEAD:
            report.problems.append(Problem("manifest", f"sealed manifest {key} is shorter than nonce and tag",
                                           [sid.hex()], key))
    pack_keys = {pid: k for k in backend.list("packs/") if (pid := _key_id(k)) is not None and k == pack_key(pid)}
    for k in set(backend.list("packs/")) - set(pack_keys.values()):
        report.problems.append(Problem("pack", f"{k} is not named by a pack hash", object=k))

    def one(item: tuple[bytes, str]) -> tuple[int, list[Problem]]:
        pid, key = item
        try:
            size = backend.size(key)
            if size < FOOTER_SIZE:
                raise IntegrityError(f"{size} bytes, smaller than a footer")
            _n, version, _salt, _tl = read_footer(backend.get_range(key, size - FOOTER_SIZE, size), size)
            if (version == VERSION_SEALED) != bool(cfg.encryption):
                raise IntegrityError(f"pack format version {version} does not match the repository's mode")
            if deep and blake3.blake3(backend.get(key)).digest() != pid:
                raise IntegrityError("does not hash to its name")
        except CasstoreError as e:
            return 0, [Problem("pack", f"pack {pid.hex()}: {e}", object=key)]
        return (size if deep else FOOTER_SIZE), []

    with ThreadPoolExecutor(max_workers=8) as pool:
        for nbytes, problems in pool.map(one, pack_keys.items()):
            report.packs_checked += 1
            report.bytes_read += nbytes
            report.problems.extend(problems)
    report.seconds = time.time() - started
    return report
