"""The write-ahead journal of small local pairs (casstore/journal.py): durable before the files,
flushed in batches, replayed after a crash, never resurrecting a deleted snapshot."""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import casstore
from casstore import backend as backend_module
from casstore import journal
from casstore.backend import Backend
from casstore.errors import StorageError

ROOT = Path(__file__).resolve().parent.parent

# A writer that takes `count` snapshots of a growing chat (deleting the one at `delete`, if any),
# prints their ids and is SIGKILLed before it can close: its journal is left behind unflushed.
WRITER = textwrap.dedent("""
    import os, signal, sys
    import casstore
    from casstore import journal
    from tests.helpers import add_turn, chat_state
    journal.FLUSH_AGE = 1e9   # however slow this machine, the pairs stay in one journal
    repo, count, delete = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    store = casstore.open(repo)
    state = chat_state(3)
    for i in range(count):
        add_turn(state, i)
        print(store.snapshot(state, agent_id="a", session_id="s").id, flush=True)
    if delete >= 0:
        store.delete(store.list()[delete].id)
    os.kill(os.getpid(), signal.SIGKILL)
""")


def crashed_writer(repo: Path, count: int, delete: int = -1) -> list[str]:
    proc = subprocess.run([sys.executable, "-c", WRITER, str(repo), str(count), str(delete)],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == -9, proc.stderr
    return proc.stdout.split()


def journal_records(repo: Path) -> list[list[tuple[str, memoryview, str | None]]]:
    [path] = glob.glob(str(repo / journal.FOLDER / "*"))
    return list(journal.records(Path(path).read_bytes()))


def expected_states(count: int) -> list[dict]:
    from tests.helpers import add_turn, chat_state
    state, out = chat_state(3), []
    for i in range(count):
        add_turn(state, i)
        out.append({**state, "messages": [dict(m) for m in state["messages"]]})
    return out


def test_a_small_pair_is_journaled_before_its_files_and_flushed_in_batches(tmp_path, monkeypatch):
    monkeypatch.setattr(journal, "FLUSH_AGE", 1e9)
    b = Backend(str(tmp_path / "repo"))
    b.put_pair(("packs/ab/abc", b"pack"), ("manifests/cd/cde", b"manifest"), tombstone="forgotten/cde")
    assert b.get("packs/ab/abc") == b"pack" and b.get("manifests/cd/cde") == b"manifest"
    [record] = journal_records(tmp_path / "repo")
    assert [(k, bytes(d), t) for k, d, t in record] == [
        ("packs/ab/abc", b"pack", None), ("manifests/cd/cde", b"manifest", "forgotten/cde")]
    for i in range(1, journal.FLUSH_RECORDS):   # the batch's last put retires the journal
        b.put_pair((f"packs/ab/{i}", b"p%d" % i), (f"manifests/cd/{i}", b"m%d" % i))
    b._journal.retiring.join()   # its files synced, it is gone
    assert os.listdir(tmp_path / "repo" / journal.FOLDER) == []
    b.put_pair(("packs/ab/last", b"p"), ("manifests/cd/last", b"m"))   # the next pair opens a new one
    assert len(journal_records(tmp_path / "repo")) == 1
    b.close()
    assert os.listdir(tmp_path / "repo" / journal.FOLDER) == []   # closing syncs and removes it


def test_a_crash_replays_what_the_files_lost(tmp_path):
    """After a SIGKILL the journal holds the unflushed pairs; a power cut could lose or tear their
    files (simulated here by removing and truncating them): the next open puts them back."""
    repo = tmp_path / "repo"
    ids = crashed_writer(repo, 6)
    records = journal_records(repo)
    assert len(records) == 6
    (pack, _, _), (manifest, _, _) = records[-1]
    os.remove(repo / manifest)
    os.remove(repo / pack)
    (pack2, data2, _), _ = records[-2]
    (repo / pack2).write_bytes(bytes(data2[:len(data2) // 2]))
    with casstore.open(str(repo)) as store:
        assert os.listdir(repo / journal.FOLDER) == []
        for snap_id, want in zip(ids, expected_states(6)):
            assert store.restore(snap_id) == want
        assert store.verify().ok


def test_a_live_writers_journal_is_left_alone(tmp_path):
    repo = tmp_path / "repo"
    script = ("import sys, casstore\nstore = casstore.open(sys.argv[1])\n"
              "print(store.snapshot({'x': 1}).id, flush=True)\nsys.stdin.readline()\nstore.close()\n")
    proc = subprocess.Popen([sys.executable, "-c", script, str(repo)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        snap_id = proc.stdout.readline().strip()
        [held] = glob.glob(str(repo / journal.FOLDER / "*"))
        with casstore.open(str(repo)) as store:   # another process opens the folder meanwhile
            assert os.path.exists(held)
            assert store.restore(snap_id) == {"x": 1}
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()
    assert not os.path.exists(held)


def test_a_torn_last_record_is_ignored(tmp_path, monkeypatch):
    monkeypatch.setattr(journal, "FLUSH_AGE", 1e9)
    repo = tmp_path / "repo"
    b = Backend(str(repo))
    b.put_pair(("packs/ab/one", b"1" * 100), ("manifests/cd/one", b"m1"))
    b.put_pair(("packs/ab/two", b"2" * 100), ("manifests/cd/two", b"m2"))
    path = b._journal.path
    os.close(b._journal.fd)   # the writer dies: its lock goes with it
    whole = Path(path).read_bytes()
    Path(path).write_bytes(whole + whole[:journal.RECORD.size + 20])   # a third record, cut short
    for key in ("packs/ab/one", "manifests/cd/one", "packs/ab/two", "manifests/cd/two"):
        os.remove(repo / key)
    b2 = Backend(str(repo))
    assert b2.get("packs/ab/one") == b"1" * 100 and b2.get("manifests/cd/two") == b"m2"
    assert not os.path.exists(path)


def test_a_snapshot_deleted_before_the_crash_stays_deleted(tmp_path):
    """The deleted snapshot's manifest is in the journal, but its tombstone exists: no replay
    brings it back, not even an index rebuilt from the files."""
    repo = tmp_path / "repo"
    ids = crashed_writer(repo, 3, delete=1)
    for _, (manifest, _, _) in journal_records(repo):
        if os.path.exists(repo / manifest):
            os.remove(repo / manifest)   # lost in the "power cut": the replay must decide
    with casstore.open(str(repo)) as store:
        assert [s.id for s in store.list()] == [ids[0], ids[2]]
        assert not store.exists(ids[1])
        store.index_rebuild()
        assert [s.id for s in store.list()] == [ids[0], ids[2]]
        assert store.restore(ids[2]) == expected_states(3)[2]


def test_without_syncfs_a_flush_fsyncs_each_file_and_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(journal, "_SYNCFS", None)
    synced: list[str] = []
    real = journal.fsync_path
    monkeypatch.setattr(journal, "fsync_path", lambda path: (synced.append(os.path.relpath(path, tmp_path)),
                                                             real(path)))
    b = Backend(str(tmp_path / "repo"))
    b.put_pair(("packs/ab/abc", b"pack"), ("manifests/cd/cde", b"manifest"))
    path = b._journal.path
    b.close()
    for name in ("repo/packs/ab/abc", "repo/manifests/cd/cde", "repo/packs/ab", "repo/manifests/cd"):
        assert name in synced
    assert not os.path.exists(path)


def test_a_journal_whose_files_fail_to_sync_is_kept_for_a_replay(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(journal, "_SYNCFS", lambda fd: -1)
    repo = tmp_path / "repo"
    b = Backend(str(repo))
    for i in range(journal.FLUSH_RECORDS):
        b.put_pair((f"packs/ab/{i}", b"p%d" % i), (f"manifests/cd/{i}", b"m%d" % i))
    b._journal.retiring.join()
    assert "kept for the next open to replay" in caplog.text
    assert len(journal_records(repo)) == journal.FLUSH_RECORDS   # still the durable copy, now unlocked
    os.remove(repo / "packs/ab/7")
    monkeypatch.setattr(journal, "_SYNCFS", None)
    b2 = Backend(str(repo))
    assert b2.get("packs/ab/7") == b"p7"
    assert os.listdir(repo / journal.FOLDER) == []
    with pytest.raises(StorageError, match="syncfs"):   # at close, the failure is the caller's to see
        monkeypatch.setattr(journal, "_SYNCFS", lambda fd: -1)
        b2.put_pair(("packs/ab/x", b"x"), ("manifests/cd/x", b"y"))
        b2.close()


def test_an_old_journal_is_retired_at_the_next_put(tmp_path, monkeypatch):
    monkeypatch.setattr(journal, "FLUSH_AGE", 0.0)
    repo = tmp_path / "repo"
    b = Backend(str(repo))
    b.put_pair(("packs/ab/one", b"1"), ("manifests/cd/one", b"m1"))
    b._journal.retiring.join()
    assert os.listdir(repo / journal.FOLDER) == []
    assert b.get("packs/ab/one") == b"1"


def test_a_manifest_deleted_before_its_batch_is_synced_is_no_failure(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(journal, "_SYNCFS", None)
    repo = tmp_path / "repo"
    b = Backend(str(repo))
    b.put_pair(("packs/ab/one", b"1"), ("manifests/cd/one", b"m1"), tombstone="forgotten/one")
    b.put("forgotten/one", b"")
    b.delete("manifests/cd/one")
    b.close()
    assert "kept for the next open" not in caplog.text
    assert os.listdir(repo / journal.FOLDER) == []


def _fail_the_append(m: pytest.MonkeyPatch) -> None:
    m.setattr(journal.os, "fdatasync", lambda fd: (_ for _ in ()).throw(OSError(5, "I/O error")))


def _fail_the_manifest_file(m: pytest.MonkeyPatch) -> None:
    real = backend_module._local_put

    def local_put(path, data, *args, **kwargs):
        if "manifests" in path:
            raise OSError(28, "No space left on device")
        return real(path, data, *args, **kwargs)

    m.setattr(backend_module, "_local_put", local_put)


@pytest.mark.parametrize("fail, error, pack_written", [(_fail_the_append, "I/O error", False),
                                                       (_fail_the_manifest_file, "No space left", True)])
def test_a_failed_pair_is_cut_off_the_journal(tmp_path, monkeypatch, fail, error, pack_written):
    """Whether its append or its files fail, the caller is told the pair failed: its record goes,
    so no replay brings it back, and the records after it stay reachable."""
    monkeypatch.setattr(journal, "FLUSH_AGE", 1e9)
    repo = tmp_path / "repo"
    b = Backend(str(repo))
    b.put_pair(("packs/ab/one", b"1"), ("manifests/cd/one", b"m1"))
    with monkeypatch.context() as m:
        fail(m)
        with pytest.raises(StorageError, match=f"put .*packs/ab/two.*{error}"):
            b.put_pair(("packs/ab/two", b"2"), ("manifests/cd/two", b"m2"))
    assert b.exists("packs/ab/two") is pack_written   # a pack put before its manifest failed is an orphan
    b.put_pair(("packs/ab/three", b"3"), ("manifests/cd/three", b"m3"))
    assert [[key for key, _, _ in rec] for rec in journal_records(repo)] == [
        ["packs/ab/one", "manifests/cd/one"], ["packs/ab/three", "manifests/cd/three"]]


def test_files_that_are_not_journals_are_left_alone(tmp_path):
    folder = tmp_path / "repo" / journal.FOLDER
    folder.mkdir(parents=True)
    (folder / "notes.txt").write_text("mine")
    (folder / ("a" * 32)).write_bytes(b"not a journal, though named like one")
    Backend(str(tmp_path / "repo"))
    assert sorted(p.name for p in folder.iterdir()) == sorted(["notes.txt", "a" * 32])
