"""Directory snapshots: a workspace folder as one snapshot of kind "dir".

Layout of a dir snapshot's logical bytes (what Repository.write stores):

    +--------------------------------+  offset 0
    | listing (msgpack, structure)   |  stream 0, small CDC chunks
    +--------------------------------+  fields["struct"]
    | content of file 1              |  stream 1, blob CDC chunks
    | content of file 2              |  stream 2 ...
    | ...                            |
    +--------------------------------+  fields["raw"]

The listing is {"v": 1, "scan_ns": ..., "entries": [entry, ...]}, entries
sorted by relative POSIX path. An entry is a map with short keys:

    p  relative POSIX path            t  "f" file | "d" dir | "l" symlink
    m  permission bits (S_IMODE)      mt mtime in ns
    s  size (files: content bytes)    i, dv  inode and device at snapshot time
    o  offset of the content in the blob region (files)
    l  symlink target (symlinks)      q  1 if captured as a SQLite database

Every file is its own stream, so its chunks never straddle another file and
an unchanged file's chunk list is exactly the chunks covering its byte range
in the parent snapshot: such a file is not re-read (as restic does), it
reuses that list. A file is unchanged when size, mtime_ns and inode match
the parent's entry and its mtime is older than the parent's scan start by
more than RACY_NS (a file written in the same clock tick as the scan could
change again without its mtime moving, git's "racily clean" problem).
SQLite databases are always re-captured through the backup API: in WAL mode
the main file's mtime does not move when rows are committed.

Memory: Repository.write takes every stream at once, so the content of the
files that changed (all files, on a lineage's first snapshot) is held in
memory until it is packed; unchanged files cost only their chunk list.
Restore is bounded by the largest file (small files are fetched in batches
of up to RESTORE_BATCH bytes).
"""

from __future__ import annotations

import bisect
import fnmatch
import os
import posixpath
import sqlite3
import stat
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

import msgpack

from . import tree
from .errors import ConfigurationError, IntegrityError, PathNotFoundError
from .repository import Repository, ReuseError, Stream

LISTING_VERSION = 1
SQLITE_MAGIC = b"SQLite format 3\x00"
SQLITE_SIDECARS = ("-wal", "-shm", "-journal")
RACY_NS = 1_000_000_000          # files modified this close to the parent's scan are re-read
RESTORE_BATCH = 16 << 20         # small files are fetched together up to this many bytes
MAX_LINK_HOPS = 40               # symlink substitutions allowed when checking a target

Progress = Callable[[int, int], None]   # (bytes done, bytes total)


# ---------------------------------------------------------------------------
# snapshot
# ---------------------------------------------------------------------------

@dataclass
class _Scanned:
    """One tree entry found by the scan, before its content is decided."""

    rel: str
    full: str
    st: os.stat_result
    kind: str                # "f" | "d" | "l"


def snapshot_dir(repo: Repository, path: str, agent_id: str = "default", session_id: str = "default", *,
                 description: str | None = None, metadata: dict | None = None, labels: Iterable[str] = (),
                 exclude: Iterable[str] | None = None, progress: Progress | None = None) -> tuple[bytes, dict]:
    """Snapshot the tree at path (a directory, or a single file) as a "dir" snapshot; return (id, fields)."""
    root = os.path.abspath(path)
    try:
        os.lstat(root)
    except OSError as e:
        raise ConfigurationError(f"cannot snapshot {path}: {e.strerror or e}") from e
    patterns = list(exclude or ())
    parent = _parent_listing(repo, agent_id, session_id)
    extra = {"labels": labels} if labels else None
    try:
        streams = _build_streams(repo, root, patterns, parent, progress)
        return repo.write("dir", streams, agent_id=agent_id, session_id=session_id,
                          description=description, metadata=metadata, extra=extra)
    except ReuseError:
        streams = _build_streams(repo, root, patterns, None, progress)
        return repo.write("dir", streams, agent_id=agent_id, session_id=session_id,
                          description=description, metadata=metadata, extra=extra)


@dataclass
class _Parent:
    """The previous snapshot of the lineage: its listing and its chunk positions."""

    scan_ns: int
    by_path: dict[str, dict]
    struct: int
    entries: list[tree.Entry]
    starts: list[int] = field(default_factory=list)   # logical offset where each entry begins

    def __post_init__(self) -> None:
        pos = 0
        for _, n in self.entries:
            self.starts.append(pos)
            pos += n
        self.starts.append(pos)

    def chunks_of(self, e: dict) -> list[tree.Entry] | None:
        """The chunk entries covering exactly this file's content, or None if they do not tile it."""
        size = e["s"]
        if size == 0:
            return []
        lo = self.struct + e["o"]
        hi = lo + size
        i = bisect.bisect_left(self.starts, lo)
        j = bisect.bisect_left(self.starts, hi)
        if i >= len(self.starts) or self.starts[i] != lo or j >= len(self.starts) or self.starts[j] != hi:
            return None
        return self.entries[i:j]


def _parent_listing(repo: Repository, agent_id: str, session_id: str) -> _Parent | None:
    head = repo.index.head(agent_id, session_id)
    if head is None or head[1]["kind"] != "dir":
        return None
    fields = head[1]
    try:
        entries = repo.entries(fields)
        listing = decode_listing(repo.read(fields, 0, fields["struct"], entries=entries))
    except (IntegrityError, OSError):
        return None     # a damaged parent only costs a full read
    by_path = {e["p"]: e for e in listing["entries"]}
    return _Parent(listing.get("scan_ns", 0), by_path, fields["struct"], entries)


def _build_streams(repo: Repository, root: str, patterns: list[str], parent: _Parent | None,
                   progress: Progress | None) -> list[Stream]:
    scan_ns = time.time_ns()
    scanned = _scan(root, patterns)
    total = sum(s.st.st_size for s in scanned if s.kind == "f")
    done = 0
    entries: list[dict] = []
    blobs: list[Stream] = []
    databases: set[str] = set()
    offset = 0
    for s in scanned:
        e: dict = {"p": s.rel, "t": s.kind, "m": stat.S_IMODE(s.st.st_mode), "mt": s.st.st_mtime_ns}
        if s.kind == "l":
            e["l"] = os.readlink(s.full)
        elif s.kind == "f":
            if _is_sidecar(s.rel, databases):
                continue
            reuse = _reusable(parent, s)
            if reuse is not None:
                stream, st = Stream(None, entries=reuse), s.st
                size = st.st_size
            else:
                data, st, is_db = read_file(s.full)
                if data is None:            # vanished or unreadable since the scan: leave it out
                    continue
                if is_db:
                    e["q"] = 1
                    databases.add(s.rel)
                stream, size = Stream(memoryview(data)), len(data)
            e.update(m=stat.S_IMODE(st.st_mode), mt=st.st_mtime_ns, s=size, i=st.st_ino, dv=st.st_dev, o=offset)
            offset += size
            blobs.append(stream)
            done += s.st.st_size
            if progress:
                progress(done, total)
        entries.append(e)
    listing = msgpack.packb({"v": LISTING_VERSION, "scan_ns": scan_ns, "entries": entries}, use_bin_type=True)
    return [Stream(memoryview(listing), structure=True)] + blobs


def _scan(root: str, patterns: list[str]) -> list[_Scanned]:
    """Every entry under root (or root itself if it is not a directory), sorted by relative path."""
    st = os.lstat(root)
    if not stat.S_ISDIR(st.st_mode):
        kind = _kind(st)
        if kind is None:
            raise ConfigurationError(f"cannot snapshot {root}: not a directory, regular file or symlink")
        return [_Scanned(os.path.basename(root), root, st, kind)]
    out: list[_Scanned] = []

    def walk(dir_full: str, dir_rel: str) -> None:
        try:
            names = os.listdir(dir_full)
        except FileNotFoundError:
            return
        for name in names:
            rel = f"{dir_rel}/{name}" if dir_rel else name
            if _excluded(rel, name, patterns):
                continue
            full = os.path.join(dir_full, name)
            try:
                st = os.lstat(full)
            except FileNotFoundError:
                continue
            kind = _kind(st)
            if kind is None:
                continue      # sockets, fifos, devices: not workspace content
            out.append(_Scanned(rel, full, st, kind))
            if kind == "d":
                walk(full, rel)

    walk(root, "")
    out.sort(key=lambda s: s.rel)
    return out


def _kind(st: os.stat_result) -> str | None:
    if stat.S_ISREG(st.st_mode):
        return "f"
    if stat.S_ISDIR(st.st_mode):
        return "d"
    if stat.S_ISLNK(st.st_mode):
        return "l"
    return None


def _excluded(rel: str, name: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(rel, p) or fnmatch.fnmatchcase(name, p) for p in patterns)


def _is_sidecar(rel: str, databases: set[str]) -> bool:
    return any(rel.endswith(suffix) and rel[: -len(suffix)] in databases for suffix in SQLITE_SIDECARS)


def _reusable(parent: _Parent | None, s: _Scanned) -> list[tree.Entry] | None:
    """The parent's chunk list for this file if it is provably unchanged, else None."""
    if parent is None:
        return None
    e = parent.by_path.get(s.rel)
    if (e is None or e.get("t") != "f" or e.get("q") or e.get("s") != s.st.st_size
            or e.get("mt") != s.st.st_mtime_ns or e.get("i") != s.st.st_ino
            or s.st.st_mtime_ns >= parent.scan_ns - RACY_NS):
        return None
    return parent.chunks_of(e)


def read_file(path: str) -> tuple[bytes | None, os.stat_result | None, bool]:
    """(content, stat taken before reading, is a SQLite db); SQLite files go through the backup API."""
    try:
        with open(path, "rb", buffering=0) as f:
            st = os.fstat(f.fileno())
            head = f.read(len(SQLITE_MAGIC))
            if head == SQLITE_MAGIC:
                data = _sqlite_backup(path)
                if data is not None:
                    return data, st, True
                f.seek(0)
                return f.read(), st, False
            return head + f.read(), st, False
    except (FileNotFoundError, PermissionError, IsADirectoryError):
        return None, None, False


def _sqlite_backup(path: str) -> bytes | None:
    """A consistent image of a live SQLite database (WAL content included), or None if it will not open."""
    uri = "file:" + _uri_path(path)
    for mode in ("?mode=ro", ""):
        try:
            src = sqlite3.connect(uri + mode, uri=True, timeout=30)
        except sqlite3.Error:
            continue
        try:
            dst = sqlite3.connect(":memory:")
            try:
                src.backup(dst)
                return bytes(dst.serialize())
            finally:
                dst.close()
        except sqlite3.Error:
            continue
        finally:
            src.close()
    return None


def _uri_path(path: str) -> str:
    from urllib.parse import quote
    return quote(os.path.abspath(path))


# ---------------------------------------------------------------------------
# listing
# ---------------------------------------------------------------------------

def decode_listing(data: bytes | bytearray | memoryview) -> dict:
    """Parse a listing, checking its shape (not yet its paths: restore does that)."""
    try:
        listing = msgpack.unpackb(data, raw=False, strict_map_key=False)
    except Exception as e:
        raise IntegrityError(f"directory listing does not decode: {e}") from e
    if not isinstance(listing, dict) or not isinstance(listing.get("entries"), list):
        raise IntegrityError("directory listing is not a map with an entries list")
    if listing.get("v") != LISTING_VERSION:
        raise IntegrityError(f"directory listing version {listing.get('v')!r} is not supported")
    for e in listing["entries"]:
        if not isinstance(e, dict) or not isinstance(e.get("p"), str) or e.get("t") not in ("f", "d", "l"):
            raise IntegrityError(f"directory listing entry {e!r:.100} is malformed")
        if e["t"] == "f" and not (isinstance(e.get("s"), int) and isinstance(e.get("o"), int)
                                  and e["s"] >= 0 and e["o"] >= 0):
            raise IntegrityError(f"directory listing entry {e['p']!r} has no valid size/offset")
        if e["t"] == "l" and not isinstance(e.get("l"), str):
            raise IntegrityError(f"directory listing entry {e['p']!r} is a symlink without a target")
    return listing


def read_listing(repo: Repository, fields: dict, entries: list[tree.Entry] | None = None) -> list[dict]:
    """The entries of a dir snapshot's listing; without the snapshot's chunk list (entries),
    only the tree nodes over the listing are read (see Repository.read_span)."""
    if fields["kind"] != "dir":
        raise ConfigurationError("not a directory snapshot")
    data = (repo.read_span(fields, 0, fields["struct"]) if entries is None
            else repo.read(fields, 0, fields["struct"], entries=entries))
    return decode_listing(data)["entries"]


def file_content(repo: Repository, snap_id: bytes, fields: dict, path: str) -> bytes:
    """The content of the file at path (relative, POSIX) in a dir snapshot: only the listing's
    chunks and the file's are read (see Repository.read_span), not the tree's whole chunk list.
    The listing is checked as restore_dir checks it."""
    name = snap_id.hex()
    if fields["kind"] != "dir":
        raise ConfigurationError(f"snapshot {name} is a state snapshot; use restore(id, path=...)")
    want = posixpath.normpath(path.replace(os.sep, "/")).lstrip("/")
    listing = read_listing(repo, fields)
    check_listing(listing, fields, name)
    e = next((e for e in listing if e["p"] == want), None)
    if e is None:
        raise PathNotFoundError(f"the folder holds no {want!r}")
    if e["t"] != "f":
        what = "a directory" if e["t"] == "d" else f"a symlink to {e['l']!r}"
        raise PathNotFoundError(f"{want!r} is {what}, not a file")
    if e["s"] == 0:
        return b""
    start = fields["struct"] + e["o"]
    return bytes(repo.read_span(fields, start, start + e["s"]))


# ---------------------------------------------------------------------------
# restore
# ---------------------------------------------------------------------------

def restore_dir(repo: Repository, snap_id: bytes, fields: dict, dest: str, *, overwrite: bool = False,
                progress: Progress | None = None) -> None:
    """Recreate the tree of a dir snapshot under dest; never writes outside dest."""
    name = snap_id.hex()
    if fields["kind"] != "dir":
        raise ConfigurationError(f"snapshot {name} is a state snapshot; use restore")
    entries = repo.entries(fields)
    listing = read_listing(repo, fields, entries)
    check_listing(listing, fields, name)
    dest = os.path.abspath(dest)
    if os.path.lexists(dest) and not os.path.isdir(dest):
        raise ConfigurationError(f"restore destination {dest} exists and is not a directory")
    if os.path.isdir(dest) and os.listdir(dest) and not overwrite:
        raise ConfigurationError(f"restore destination {dest} is not empty (pass overwrite=True / --overwrite)")
    os.makedirs(dest, exist_ok=True)
    real_dest = os.path.realpath(dest)

    for e in listing:
        if e["t"] == "d":
            target = _safe_target(real_dest, e["p"])
            if os.path.islink(target) or (os.path.lexists(target) and not os.path.isdir(target)):
                _remove(target)
            os.makedirs(target, exist_ok=True)
    _restore_files(repo, fields, entries, real_dest, [e for e in listing if e["t"] == "f"], progress)
    for e in listing:
        if e["t"] == "l":
            target = _safe_target(real_dest, e["p"])
            if os.path.lexists(target):
                _remove(target)
            os.symlink(e["l"], target)
            resolved = os.path.realpath(target)
            if not _inside(real_dest, resolved):
                os.unlink(target)
                raise ConfigurationError(f"snapshot {name}: symlink {e['p']!r} -> {e['l']!r} resolves outside {dest}")
            _set_times(target, e, follow=False)
    for e in sorted((e for e in listing if e["t"] == "d"), key=lambda e: e["p"], reverse=True):
        target = os.path.join(real_dest, e["p"])
        os.chmod(target, e.get("m", 0o755))
        _set_times(target, e)


def _restore_files(repo: Repository, fields: dict, entries: list[tree.Entry], real_dest: str,
                   files: list[dict], progress: Progress | None) -> None:
    """Write files in listing order, fetching runs of small files in one read (memory <= largest file or batch)."""
    base = fields["struct"]
    total = sum(e["s"] for e in files)
    done = 0
    batch: list[dict] = []

    def flush() -> None:
        nonlocal done
        if not batch:
            return
        lo = base + min(e["o"] for e in batch)
        hi = base + max(e["o"] + e["s"] for e in batch)
        data = memoryview(repo.read(fields, lo, hi, entries=entries)) if hi > lo else memoryview(b"")
        for e in batch:
            start = base + e["o"] - lo
            _write_file(_safe_target(real_dest, e["p"]), data[start:start + e["s"]], e)
            done += e["s"]
            if progress:
                progress(done, total)
        batch.clear()

    span = 0
    for e in sorted(files, key=lambda e: e["o"]):
        if batch and (span + e["s"] > RESTORE_BATCH or e["o"] != batch[-1]["o"] + batch[-1]["s"]):
            flush()
            span = 0
        batch.append(e)
        span += e["s"]
    flush()


def _write_file(target: str, data: memoryview, e: dict) -> None:
    if os.path.islink(target) or os.path.isdir(target):
        _remove(target)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(target, e.get("m", 0o644))
    _set_times(target, e)


def _set_times(target: str, e: dict, follow: bool = True) -> None:
    mt = e.get("mt")
    if isinstance(mt, int):
        try:
            os.utime(target, ns=(mt, mt), follow_symlinks=follow)
        except (NotImplementedError, OSError):
            if follow:
                raise


def _remove(target: str) -> None:
    if os.path.isdir(target) and not os.path.islink(target):
        import shutil
        shutil.rmtree(target)
    else:
        os.unlink(target)


def _safe_target(real_dest: str, rel: str) -> str:
    """dest/rel, after checking that its parent directory really is inside dest (no symlinked parents)."""
    target = os.path.join(real_dest, rel)
    if not _inside(real_dest, os.path.realpath(os.path.dirname(target))):
        raise ConfigurationError(f"refusing to write {rel!r}: its parent directory resolves outside {real_dest}")
    return target


def _inside(root: str, path: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def check_listing(listing: list[dict], fields: dict, name: str) -> None:
    """Refuse listings that would write outside dest: absolute paths, '..', escaping links, bad ranges."""
    kinds: dict[str, str] = {}
    links: dict[str, str] = {}
    blob_bytes = fields["raw"] - fields["struct"]
    for e in listing:
        p = e["p"]
        parts = p.split("/")
        if (not p or p.startswith("/") or "\x00" in p or "\\" in p or os.path.isabs(p)
                or any(part in ("", ".", "..") for part in parts)):
            raise ConfigurationError(f"snapshot {name}: listing entry {p!r} is not a safe relative path")
        if p in kinds:
            raise ConfigurationError(f"snapshot {name}: listing entry {p!r} appears twice")
        kinds[p] = e["t"]
        if e["t"] == "f" and e["o"] + e["s"] > blob_bytes:
            raise ConfigurationError(f"snapshot {name}: listing entry {p!r} points past the end of the snapshot")
        if e["t"] == "l":
            links[p] = e["l"]
    for p in kinds:                      # a second pass: the listing order is not trusted
        parts = p.split("/")
        for i in range(1, len(parts)):
            anc = "/".join(parts[:i])
            if kinds.get(anc, "d") != "d":
                raise ConfigurationError(f"snapshot {name}: listing entry {p!r} lies under a non-directory {anc!r}")
    for p, target in links.items():
        if not _link_stays_inside(p, links):
            raise ConfigurationError(f"snapshot {name}: symlink {p!r} -> {target!r} resolves outside the destination")


def _link_stays_inside(path: str, links: dict[str, str]) -> bool:
    """Resolve a link of the listing lexically, substituting other listed links; False if it leaves the tree."""
    resolved = path.split("/")[:-1]
    pending = _components(links[path])
    if pending is None:
        return False
    hops = 0
    while pending:
        comp = pending.pop(0)
        if comp in ("", "."):
            continue
        if comp == "..":
            if not resolved:
                return False
            resolved.pop()
            continue
        resolved.append(comp)
        here = "/".join(resolved)
        if here in links:
            hops += 1
            more = _components(links[here])
            if more is None or hops > MAX_LINK_HOPS:
                return False
            resolved.pop()
            pending = more + pending
    return True


def _components(target: str) -> list[str] | None:
    if not target or target.startswith("/") or "\x00" in target:
        return None
    return target.split("/")


# ---------------------------------------------------------------------------
# diff
# ---------------------------------------------------------------------------

@dataclass
class DirDiff:
    """What changed between two dir snapshots: paths added, removed and modified, with sizes."""

    added: list[dict] = field(default_factory=list)       # {path, type, size}
    removed: list[dict] = field(default_factory=list)     # {path, type, size}
    modified: list[dict] = field(default_factory=list)    # {path, type, old_size, new_size, changes}

    @property
    def changed(self) -> bool:
        return bool(self.added or self.removed or self.modified)

    def to_dict(self) -> dict:
        return {"added": self.added, "removed": self.removed, "modified": self.modified,
                "added_bytes": sum(d["size"] for d in self.added),
                "removed_bytes": sum(d["size"] for d in self.removed)}


_TYPE_NAMES = {"f": "file", "d": "dir", "l": "symlink"}


def diff_dirs(repo: Repository, a_fields: dict, b_fields: dict) -> DirDiff:
    """Compare two dir snapshots by listing and by the chunk hashes of each file's content."""
    a_entries, b_entries = repo.entries(a_fields), repo.entries(b_fields)
    a = {e["p"]: e for e in read_listing(repo, a_fields, a_entries)}
    b = {e["p"]: e for e in read_listing(repo, b_fields, b_entries)}
    a_par = _Parent(0, a, a_fields["struct"], a_entries)
    b_par = _Parent(0, b, b_fields["struct"], b_entries)
    out = DirDiff()
    for p in sorted(a.keys() | b.keys()):
        ea, eb = a.get(p), b.get(p)
        if ea is None:
            out.added.append({"path": p, "type": _TYPE_NAMES[eb["t"]], "size": eb.get("s", 0)})
        elif eb is None:
            out.removed.append({"path": p, "type": _TYPE_NAMES[ea["t"]], "size": ea.get("s", 0)})
        else:
            changes = _changes(ea, eb, a_par, b_par)
            if changes:
                out.modified.append({"path": p, "type": _TYPE_NAMES[eb["t"]], "old_size": ea.get("s", 0),
                                     "new_size": eb.get("s", 0), "changes": changes})
    return out


def _changes(ea: dict, eb: dict, a_par: _Parent, b_par: _Parent) -> list[str]:
    if ea["t"] != eb["t"]:
        return ["type"]
    changes = []
    if ea["t"] == "f":
        if ea["s"] != eb["s"] or a_par.chunks_of(ea) != b_par.chunks_of(eb) or a_par.chunks_of(ea) is None:
            changes.append("content")
    elif ea["t"] == "l" and ea["l"] != eb["l"]:
        changes.append("target")
    if ea["t"] != "l" and ea.get("m") != eb.get("m"):
        changes.append("mode")
    return changes
