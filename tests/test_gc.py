"""Retention and gc: space comes back, and nothing a snapshot references is ever lost."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import casstore

from .helpers import deep_equal

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _pack_bytes(repo_dir) -> int:
    return sum(p.stat().st_size for p in (repo_dir / "packs").rglob("*") if p.is_file())


def test_forget_policies_per_lineage(store):
    now = time.time()
    made = {}
    for lineage in ("s1", "s2"):
        made[lineage] = [store.snapshot({"i": i, "l": lineage}, agent_id="a", session_id=lineage) for i in range(5)]
    would = store.forget(keep_last=2, dry_run=True)
    assert len(would) == 6 and len(store.list()) == 10
    removed = store.forget(keep_last=2, agent_id="a", session_id="s1")
    assert [r.id for r in removed] == [i.id for i in made["s1"][:3]]
    assert [i.id for i in store.list("a", "s1")] == [i.id for i in made["s1"][3:]]
    assert len(store.list("a", "s2")) == 5
    assert store.forget(keep_within="1h") == []  # everything is recent
    assert len(store.forget(keep_daily=1)) == 4 + 1  # one per day per lineage survives
    assert time.time() - now < 60
    with pytest.raises(casstore.ConfigurationError):
        store.forget()
    with pytest.raises(ValueError, match="duration"):
        store.forget(keep_within="seven days")


def test_gc_frees_forgotten_data_after_grace(repo_dir):
    with casstore.open(str(repo_dir), gc_grace=0.3) as store:
        blobs = [store.snapshot({"b": os.urandom(200_000), "i": i}) for i in range(5)]
        before = _pack_bytes(repo_dir)
        store.forget(keep_last=1)
        dry = store.gc(dry_run=True)
        assert dry.packs_condemned == 4 and dry.packs_deleted == 0 and _pack_bytes(repo_dir) == before
        first = store.gc()
        assert first.packs_condemned == 4 and first.packs_deleted == 0 and first.packs_waiting == 0
        assert store.gc().packs_waiting == 4  # grace not over yet: nothing deleted
        time.sleep(0.35)
        second = store.gc()
        assert second.packs_deleted == 4 and second.bytes_freed > 700_000
        assert _pack_bytes(repo_dir) < before / 4
        assert store.restore(blobs[-1].id)["i"] == 4
        assert store.verify(deep=True).problems == []


def test_mostly_garbage_pack_is_repacked(repo_dir):
    with casstore.open(str(repo_dir), gc_grace=0) as store:
        keep = os.urandom(60_000)
        a = store.snapshot({"keep": keep, "drop": [os.urandom(70_000) for _ in range(5)]})
        b = store.snapshot({"keep": keep})
        store.delete(a.id)
        report = store.gc(repack_threshold=0.5)
        assert report.packs_repacked == 1 and report.bytes_rewritten < 100_000
        store.gc()
        assert _pack_bytes(repo_dir) < 150_000
        assert store.restore(b.id)["keep"] == keep
        assert store.verify(deep=True).ok


def test_writer_does_not_dedup_against_a_condemned_pack(repo_dir):
    with casstore.open(str(repo_dir), gc_grace=0.2) as store:
        state = {"e": np.random.default_rng(0).normal(size=(1000, 100)).astype(np.float32)}
        old = store.snapshot(state)
        store.delete(old.id)
        assert store.gc().packs_condemned == 1
        again = store.snapshot(state)  # the same content: must be stored afresh, not pointed at the doomed pack
        assert again.new_chunk_count == again.chunk_count
        time.sleep(0.25)
        assert store.gc().packs_deleted == 1
        assert deep_equal(store.restore(again.id), state)


def test_pack_reused_by_a_machine_that_missed_the_mark_is_rescued(repo_dir, tmp_path):
    """Machine B deduplicates against a pack just before it learns gc condemned it."""
    with casstore.open(str(repo_dir), gc_grace=2.0) as a, \
            casstore.open(str(repo_dir), index_path=str(tmp_path / "b-index")) as b:
        state = {"blob": os.urandom(300_000)}
        first = a.snapshot(state)
        b.sync()                        # B learns the pack and the (empty) set of marks
        a.delete(first.id)
        assert a.gc().packs_condemned == 1
        reused = b.snapshot(state)      # marks seen < grace/2 ago: B dedups against the pack
        assert reused.new_chunk_count == 0
        time.sleep(2.05)
        report = a.gc()
        assert report.packs_rescued == 1 and report.packs_deleted == 0
        assert a.restore(reused.id) == state and b.restore(reused.id) == state
        assert a.verify(deep=True).ok


WRITER = r"""
import json, sys, numpy as np, casstore
repo, wid, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
import time
store = casstore.open(repo)
rng = np.random.default_rng(0)                       # every writer shares this base: overlapping chunks
base = rng.normal(size=(3000, 64)).astype(np.float32)
shared = [f"shared message {k} " * 30 for k in range(50)]
end, i = time.time() + seconds, 0
while time.time() < end:
    emb = base.copy(); emb[(wid * 97 + i) % 3000] = i
    state = {"w": wid, "i": i, "msgs": shared + [f"writer {wid} step {i}"], "emb": emb}
    info = store.snapshot(state, agent_id=f"w{wid}", session_id="s")
    print(json.dumps([info.id, wid, i]), flush=True)
    i += 1
"""

COLLECTOR = r"""
import sys, time, casstore
repo, seconds = sys.argv[1], float(sys.argv[2])
store = casstore.open(repo)
end = time.time() + seconds
while time.time() < end:
    store.forget(keep_last=3)
    store.gc()
    print("gc", flush=True)
    time.sleep(0.05)
"""


def _expected(wid: int, i: int) -> dict:
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(3000, 64)).astype(np.float32)
    emb[(wid * 97 + i) % 3000] = i
    return {"w": wid, "i": i, "msgs": [f"shared message {k} " * 30 for k in range(50)] + [f"writer {wid} step {i}"],
            "emb": emb}


def test_stress_writers_and_gc_concurrently(repo_dir):
    """Writers snapshot overlapping states while another process forgets and collects, for a few seconds."""
    casstore.open(str(repo_dir), gc_grace=0.5).close()
    seconds = 6.0
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(repo_dir), str(w), str(seconds)],
                                stdout=subprocess.PIPE, text=True, cwd=ROOT) for w in range(3)]
    collector = subprocess.Popen([sys.executable, "-c", COLLECTOR, str(repo_dir), str(seconds + 1)],
                                 stdout=subprocess.PIPE, text=True, cwd=ROOT)
    outputs = [w.communicate(timeout=120)[0] for w in writers]
    gc_out = collector.communicate(timeout=120)[0]
    assert all(w.returncode == 0 for w in writers) and collector.returncode == 0
    assert gc_out.count("gc") >= 3
    committed = [json.loads(line) for out in outputs for line in out.splitlines()]
    assert len(committed) >= 9
    with casstore.open(str(repo_dir)) as store:
        store.gc()
        time.sleep(0.55)
        store.gc()  # a last pass after grace deletes whatever the loop condemned
        alive = {i.id for i in store.list()}
        forgotten = store._repo.index.forgotten()
        for snap_id, wid, i in committed:
            if snap_id in alive:
                assert deep_equal(store.restore(snap_id), _expected(wid, i))
            else:
                assert bytes.fromhex(snap_id) in forgotten, f"snapshot {snap_id} vanished without forget"
        assert len(alive) >= 3
        report = store.verify(deep=True)
        assert report.ok, [str(p) for p in report.errors]


def test_gc_killed_midway_leaves_a_consistent_repository(repo_dir):
    with casstore.open(str(repo_dir), gc_grace=0) as store:
        infos = [store.snapshot({"b": os.urandom(100_000), "i": i}) for i in range(30)]
        store.forget(keep_last=10)
        store.gc()   # condemn
    for delay in (0.0, 0.05, 0.15):
        proc = subprocess.Popen([sys.executable, "-c", "import casstore,sys; casstore.open(sys.argv[1]).gc()",
                                 str(repo_dir)], cwd=ROOT)
        time.sleep(delay + 0.3)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        with casstore.open(str(repo_dir)) as store:
            for info in infos[-10:]:
                assert store.restore(info.id)["i"] == info.metadata.get("i", infos.index(info))
            assert store.verify().ok
    with casstore.open(str(repo_dir)) as store:
        store.gc()
        store.gc()
        assert store.verify(deep=True).problems == []


def test_gc_leaves_a_fully_live_repository_alone(repo_dir):
    with casstore.open(str(repo_dir), gc_grace=0) as store:
        for i in range(5):
            store.snapshot({"small": f"step {i}", "shared": "x" * 5000})  # tiny packs: trailers dominate them
        before = sorted(p.name for p in (repo_dir / "packs").rglob("*") if p.is_file())
        assert len(before) == 5  # grace 0 makes every write "slow": its re-check must not store twice
        for _ in range(2):
            report = store.gc()
            assert (report.packs_condemned, report.packs_repacked, report.packs_deleted) == (0, 0, 0)
        assert sorted(p.name for p in (repo_dir / "packs").rglob("*") if p.is_file()) == before


def test_small_packs_are_merged_and_everything_still_restores(repo_dir):
    with casstore.open(str(repo_dir), gc_grace=0) as store:
        state = {"messages": []}
        infos = []
        for i in range(40):
            state["messages"].append({"role": "user", "content": f"message {i} " + os.urandom(300).hex()})
            infos.append((store.snapshot(state), [dict(m) for m in state["messages"]]))
        packs_before = len(list((repo_dir / "packs").rglob("*")))
        first = store.gc()
        assert first.packs_repacked >= 32 and first.packs_condemned >= 32
        second = store.gc()
        assert second.packs_deleted == first.packs_condemned
        assert len([p for p in (repo_dir / "packs").rglob("*") if p.is_file()]) < packs_before / 4
        for info, messages in infos:
            assert store.restore(info.id) == {"messages": messages}
        assert store.verify(deep=True).problems == []
