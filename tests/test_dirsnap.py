"""Directory snapshots: round trips, unchanged-file reuse, SQLite capture under load, safe restore."""

from __future__ import annotations

import os
import sqlite3
import stat
import time

import msgpack
import pytest

from . import sqlite_writer

import casstore
from casstore import dirsnap
from casstore.errors import ConfigurationError
from casstore.repository import ReuseError, Stream


@pytest.fixture
def store(tmp_path):
    s = casstore.open(str(tmp_path / "repo"))
    yield s
    s.close()


def _age(root, seconds=30):
    """Push every mtime into the past, out of the racily-clean window."""
    past = time.time_ns() - seconds * 1_000_000_000
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames + dirnames:
            os.utime(os.path.join(dirpath, name), ns=(past, past), follow_symlinks=False)


def _make_tree(root):
    (root / "sub" / "deep").mkdir(parents=True)
    (root / "empty").mkdir()
    (root / "notes.txt").write_text("hello workspace\n")
    (root / "sub" / "deep" / "blob.bin").write_bytes(os.urandom(200_000) + bytes(range(256)) * 100)
    (root / "sub" / "script.sh").write_text("#!/bin/sh\necho hi\n")
    (root / "sub" / "empty.txt").write_bytes(b"")
    os.chmod(root / "sub" / "script.sh", 0o755)
    os.chmod(root / "notes.txt", 0o600)
    os.symlink("sub/deep/blob.bin", root / "link")
    os.symlink("../notes.txt", root / "sub" / "up")
    _age(root)


def _tree_state(root):
    """Everything a restore must reproduce: type, mode, mtime, content or link target per path."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(full), st.st_mtime_ns)
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode), st.st_mtime_ns)
            else:
                with open(full, "rb") as f:
                    out[rel] = ("file", stat.S_IMODE(st.st_mode), st.st_mtime_ns, f.read())
    return out


def test_round_trip_keeps_content_modes_mtimes_links_and_empty_dirs(store, tmp_path):
    ws = tmp_path / "ws"
    _make_tree(ws)
    info = store.snapshot_dir(str(ws), "agent", "s1", description="first")
    assert info.kind == "dir" and info.description == "first"
    store.restore_dir(info.id[:12], str(tmp_path / "out"))
    assert _tree_state(tmp_path / "out") == _tree_state(ws)
    assert os.path.isdir(tmp_path / "out" / "empty")
    assert os.readlink(tmp_path / "out" / "link") == "sub/deep/blob.bin"


def test_state_restore_of_dir_snapshot_is_refused(store, tmp_path):
    ws = tmp_path / "ws"
    _make_tree(ws)
    info = store.snapshot_dir(str(ws))
    with pytest.raises(ConfigurationError, match="restore_dir"):
        store.restore(info.id)


def test_unchanged_tree_is_not_reread_and_writes_almost_nothing(store, tmp_path, monkeypatch):
    ws = tmp_path / "ws"
    _make_tree(ws)
    first = store.snapshot_dir(str(ws), "a", "s")
    reads = []
    real = dirsnap.read_file
    monkeypatch.setattr(dirsnap, "read_file", lambda p: (reads.append(p), real(p))[1])
    second = store.snapshot_dir(str(ws), "a", "s")
    assert reads == []
    assert second.parent == first.id
    assert second.raw_size == first.raw_size
    assert second.new_chunk_count <= 2            # the listing's chunk holding the scan time
    assert second.stored_size < 4096
    # an edited file is read, and only that one
    (ws / "notes.txt").write_text("changed\n")
    third = store.snapshot_dir(str(ws), "a", "s")
    assert [os.path.basename(p) for p in reads] == ["notes.txt"]
    store.restore_dir(third.id, str(tmp_path / "out"))
    assert (tmp_path / "out" / "notes.txt").read_text() == "changed\n"
    assert (tmp_path / "out" / "sub" / "deep" / "blob.bin").read_bytes() == (ws / "sub" / "deep" / "blob.bin").read_bytes()


def test_recently_modified_file_is_reread(store, tmp_path, monkeypatch):
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "fresh.txt").write_text("just written")    # mtime inside the racy window of the first scan
    store.snapshot_dir(str(ws))
    reads = []
    real = dirsnap.read_file
    monkeypatch.setattr(dirsnap, "read_file", lambda p: (reads.append(p), real(p))[1])
    store.snapshot_dir(str(ws))
    assert [os.path.basename(p) for p in reads] == ["fresh.txt"]


def test_reuse_error_falls_back_to_reading_every_file(store, tmp_path, monkeypatch):
    ws = tmp_path / "ws"
    _make_tree(ws)
    store.snapshot_dir(str(ws))
    repo = store._repo
    real_write = repo.write
    calls = []

    def flaky_write(kind, streams, **kw):
        calls.append(any(s.entries is not None for s in streams))
        if calls[-1]:
            raise ReuseError("chunks gone")
        return real_write(kind, streams, **kw)

    monkeypatch.setattr(repo, "write", flaky_write)
    info = store.snapshot_dir(str(ws))
    assert calls == [True, False]
    store.restore_dir(info.id, str(tmp_path / "out"))
    assert _tree_state(tmp_path / "out") == _tree_state(ws)


def test_edit_in_the_middle_of_a_large_file_stores_few_chunks(store, tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    data = bytearray(os.urandom(1 << 20))
    (ws / "big.bin").write_bytes(data)
    (ws / "other.txt").write_text("x" * 1000)
    _age(ws)
    first = store.snapshot_dir(str(ws))
    data[500_000:500_010] = b"0123456789"
    (ws / "big.bin").write_bytes(data)
    second = store.snapshot_dir(str(ws))
    assert first.chunk_count > 20
    assert second.new_chunk_count <= 4
    assert second.stored_size < 200_000
    store.restore_dir(second.id, str(tmp_path / "out"))
    assert (tmp_path / "out" / "big.bin").read_bytes() == bytes(data)


def test_exclude_matches_relative_paths_and_basenames(store, tmp_path):
    ws = tmp_path / "ws"
    (ws / "cache" / "x").mkdir(parents=True)
    (ws / "cache" / "x" / "big").write_text("skip me")
    (ws / "keep").mkdir()
    (ws / "keep" / "a.log").write_text("log")
    (ws / "keep" / "a.txt").write_text("txt")
    info = store.snapshot_dir(str(ws), exclude=["cache", "*.log"])
    store.restore_dir(info.id, str(tmp_path / "out"))
    assert sorted(os.listdir(tmp_path / "out")) == ["keep"]
    assert os.listdir(tmp_path / "out" / "keep") == ["a.txt"]


def test_single_file_snapshot(store, tmp_path):
    f = tmp_path / "state.json"
    f.write_text('{"a": 1}')
    info = store.snapshot_dir(str(f))
    store.restore_dir(info.id, str(tmp_path / "out"))
    assert (tmp_path / "out" / "state.json").read_text() == '{"a": 1}'


def test_non_empty_destination_is_refused_without_overwrite(store, tmp_path):
    ws = tmp_path / "ws"
    _make_tree(ws)
    info = store.snapshot_dir(str(ws))
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("existing")
    (out / "stray").write_text("stray")
    with pytest.raises(ConfigurationError, match="not empty") as e:
        store.restore_dir(info.id, str(out))
    assert str(out) in str(e.value)
    assert (out / "notes.txt").read_text() == "existing"
    store.restore_dir(info.id, str(out), overwrite=True)
    assert (out / "notes.txt").read_text() == "hello workspace\n"


def test_diff_dirs_reports_added_removed_modified(store, tmp_path):
    ws = tmp_path / "ws"
    _make_tree(ws)
    a = store.snapshot_dir(str(ws))
    (ws / "notes.txt").write_text("edited")
    (ws / "sub" / "empty.txt").unlink()
    (ws / "new.txt").write_text("new!")
    os.chmod(ws / "sub" / "script.sh", 0o700)
    b = store.snapshot_dir(str(ws))
    repo = store._repo
    d = dirsnap.diff_dirs(repo, repo.fields(bytes.fromhex(a.id)), repo.fields(bytes.fromhex(b.id)))
    assert [x["path"] for x in d.added] == ["new.txt"] and d.added[0]["size"] == 4
    assert [x["path"] for x in d.removed] == ["sub/empty.txt"]
    mods = {x["path"]: x for x in d.modified}
    assert mods["notes.txt"]["changes"] == ["content"] and mods["notes.txt"]["new_size"] == 6
    assert mods["sub/script.sh"]["changes"] == ["mode"]
    assert "sub/deep/blob.bin" not in mods


# --- SQLite -----------------------------------------------------------------

def start_writer(tmp_path, db_path, mode="wal"):
    return sqlite_writer.start(tmp_path, db_path, mode)


@pytest.mark.parametrize("mode", ["wal", "delete"])
def test_sqlite_db_under_concurrent_writes_restores_consistent(store, tmp_path, mode):
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "notes.md").write_text("workspace")
    proc, stop = start_writer(tmp_path, ws / "events.db", mode)
    try:
        infos = []
        for _ in range(3):
            infos.append(store.snapshot_dir(str(ws), "a", mode))
            time.sleep(0.1)
    finally:
        stop.write_text("")
        proc.wait(timeout=30)
    counts = []
    for n, info in enumerate(infos):
        out = tmp_path / f"out-{n}"
        store.restore_dir(info.id, str(out))
        names = sorted(os.listdir(out))
        assert names == ["events.db", "notes.md"], names      # no -wal/-shm/-journal sidecars
        db = sqlite3.connect(out / "events.db")
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        counts.append(db.execute("SELECT count(*) FROM events").fetchone()[0])
        db.close()
    assert counts[0] > 0 and counts == sorted(counts)


# --- hostile listings ---------------------------------------------------------

def _crafted(store, entries, content=b"pwned"):
    listing = msgpack.packb({"v": 1, "scan_ns": 0, "entries": entries}, use_bin_type=True)
    sid, _ = store._repo.write("dir", [Stream(memoryview(listing), structure=True), Stream(memoryview(content))],
                               agent_id="evil", session_id="x", description=None, metadata=None)
    return sid.hex()


def _file(p, size=5, o=0):
    return {"p": p, "t": "f", "m": 0o644, "mt": 0, "s": size, "o": o}


def _link(p, target):
    return {"p": p, "t": "l", "m": 0o777, "mt": 0, "l": target}


@pytest.mark.parametrize("entries", [
    [_file("../evil")],
    [_file("/tmp/evil-abs")],
    [{"p": "a", "t": "d", "m": 0o755, "mt": 0}, _file("a/../../evil")],
    [_file("./evil")],
    [_file("a//evil")],
    [_link("escape", "../../evil")],
    [_link("abs", "/etc/passwd")],
    [{"p": "d", "t": "d", "m": 0o755, "mt": 0}, _link("d/l1", ".."), _link("l2", "d/l1/..")],
    [_link("s", "sub"), _file("s/evil")],
    [_file("s/evil"), _link("s", "/tmp")],
    [_file("big", size=1 << 30)],
    [_file("dup"), _file("dup")],
], ids=["dotdot", "absolute", "nested-dotdot", "dot", "empty-part", "link-up", "link-abs", "link-chain",
        "under-link", "under-link-unsorted", "past-end", "duplicate"])
def test_hostile_listing_is_refused_before_writing(store, tmp_path, entries):
    sid = _crafted(store, entries)
    dest = tmp_path / "jail" / "dest"
    with pytest.raises(ConfigurationError) as e:
        store.restore_dir(sid, str(dest))
    assert "snapshot" in str(e.value)
    assert not (tmp_path / "jail" / "evil").exists() and not (tmp_path / "evil").exists()
    assert not dest.exists() or os.listdir(dest) == []


def test_link_inside_the_tree_is_allowed(store, tmp_path):
    sid = _crafted(store, [{"p": "d", "t": "d", "m": 0o755, "mt": 0}, _file("d/f"), _link("d/up", "../d/f")])
    store.restore_dir(sid, str(tmp_path / "out"))
    assert (tmp_path / "out" / "d" / "up").read_bytes() == b"pwned"


def test_overwrite_does_not_follow_a_symlink_already_in_dest(store, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "dest"
    dest.mkdir()
    os.symlink(str(outside), dest / "d")
    sid = _crafted(store, [{"p": "d", "t": "d", "m": 0o755, "mt": 0}, _file("d/f")])
    store.restore_dir(sid, str(dest), overwrite=True)
    assert os.listdir(outside) == []
    assert (dest / "d" / "f").read_bytes() == b"pwned" and not os.path.islink(dest / "d")


# ---------------------------------------------------------------------------
# one file of a directory snapshot
# ---------------------------------------------------------------------------

def test_read_file_gives_each_file_of_a_snapshot(store, tmp_path):
    root = tmp_path / "ws"
    _make_tree(root)
    info = store.snapshot_dir(str(root))
    for rel in ("notes.txt", "sub/deep/blob.bin", "sub/script.sh", "sub/empty.txt"):
        assert store.read_file(info.id, rel) == (root / rel).read_bytes()
    assert store.read_file(info.id[:10], "./sub//script.sh") == (root / "sub" / "script.sh").read_bytes()
    (root / "notes.txt").write_text("edited\n")
    later = store.snapshot_dir(str(root))
    assert store.read_file(info.id, "notes.txt") == b"hello workspace\n"
    assert store.read_file(later.id, "notes.txt") == b"edited\n"


@pytest.mark.parametrize("rel, message", [
    ("missing.txt", "holds no 'missing.txt'"),
    ("sub", "'sub' is a directory, not a file"),
    ("link", "'link' is a symlink to 'sub/deep/blob.bin', not a file"),
])
def test_read_file_names_what_is_there_instead(store, tmp_path, rel, message):
    root = tmp_path / "ws"
    _make_tree(root)
    info = store.snapshot_dir(str(root))
    with pytest.raises(casstore.PathNotFoundError, match=message) as e:
        store.read_file(info.id, rel)
    assert info.id in str(e.value)


def test_read_file_refuses_a_state_snapshot(store):
    info = store.snapshot({"a": 1})
    with pytest.raises(ConfigurationError, match=r"state snapshot; use restore\(id, path=...\)"):
        store.read_file(info.id, "a")


def test_read_file_reads_only_that_file(store, tmp_path):
    """The big file's chunks lie in the first snapshot's pack; damaged, they fail a full
    restore and that file's read, while another file of the later snapshot still reads."""
    root = tmp_path / "ws"
    root.mkdir()
    (root / "big.bin").write_bytes(os.urandom(400_000))
    _age(root)
    store.snapshot_dir(str(root))
    packs = [p for p in (tmp_path / "repo" / "packs").rglob("*") if p.is_file()]
    (root / "small.txt").write_text("small and new\n")
    _age(root)
    info = store.snapshot_dir(str(root))
    [first_pack] = packs
    data = bytearray(first_pack.read_bytes())
    data[100_000] ^= 0xFF
    first_pack.write_bytes(bytes(data))
    store.drop_caches()
    assert store.read_file(info.id, "small.txt") == b"small and new\n"
    with pytest.raises(casstore.IntegrityError, match=info.id):
        store.read_file(info.id, "big.bin")
    with pytest.raises(casstore.IntegrityError):
        store.restore_dir(info.id, str(tmp_path / "out"))
