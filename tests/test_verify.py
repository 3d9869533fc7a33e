"""verify finds each kind of damage, names it and the snapshots it affects."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

import casstore

from .helpers import add_turn, chat_state


def _files(path):
    return sorted(p for p in path.rglob("*") if p.is_file())


@pytest.fixture
def history(store):
    state = chat_state(30)
    state["emb"] = np.random.default_rng(0).normal(size=(2000, 64)).astype(np.float32)
    infos = []
    for i in range(6):
        add_turn(state, i)
        state["emb"][i] = -1
        infos.append(store.snapshot(state, agent_id="a", session_id="s"))
    return infos


def test_clean_repository_verifies(store, repo_dir, history):
    quick = store.verify()
    assert quick.ok and quick.snapshots_checked == 6 and quick.chunks_checked > 50 and not quick.errors
    deep = store.verify(deep=True)
    packs = _files(repo_dir / "packs")
    assert deep.ok and deep.packs_checked == len(packs) and deep.bytes_read == sum(p.stat().st_size for p in packs)
    assert store.verify(history[2].id).snapshots_checked == 1


def test_flipped_byte_found_by_deep_verify_only(store, repo_dir, history):
    pack = max(_files(repo_dir / "packs"), key=lambda p: p.stat().st_size)
    data = bytearray(pack.read_bytes())
    data[len(data) // 3] ^= 0x40
    pack.write_bytes(bytes(data))
    assert store.verify().ok  # structure is intact
    deep = store.verify(deep=True)
    assert not deep.ok
    kinds = {p.kind for p in deep.errors}
    assert "pack" in kinds and "chunk" in kinds
    chunk_problem = next(p for p in deep.errors if p.kind == "chunk")
    assert chunk_problem.snapshots and pack.name in chunk_problem.message


def test_deleted_pack_reported_with_affected_snapshots(store, repo_dir, history):
    first_pack = min(_files(repo_dir / "packs"), key=lambda p: p.stat().st_mtime)
    first_pack.unlink()
    report = store.verify()
    assert not report.ok
    missing = [p for p in report.errors if p.kind == "missing-chunk"]
    assert missing and all(p.snapshots for p in missing)
    assert history[0].id in {s for p in missing for s in p.snapshots}


def test_truncated_pack_is_named(store, repo_dir, history):
    pack = _files(repo_dir / "packs")[0]
    pack.write_bytes(pack.read_bytes()[:10])
    report = store.verify()
    assert any(p.kind == "pack" and pack.name in p.message for p in report.errors)


def test_removed_manifest_breaks_the_chain_but_forget_does_not(store, repo_dir, history):
    store.delete(history[1].id)  # deliberate: recorded as forgotten
    assert store.verify().ok
    victim = history[3].id
    (repo_dir / "snapshots" / victim[:2] / victim).unlink()  # tampering: history altered
    report = store.verify()
    assert not report.ok
    chain = [p for p in report.errors if p.kind == "chain"]
    assert chain and chain[0].snapshots == [history[4].id] and victim in chain[0].message


def test_tampered_manifest_is_reported(store, repo_dir, history):
    victim = history[2].id
    path = repo_dir / "snapshots" / victim[:2] / victim
    data = bytearray(path.read_bytes())
    data[5] ^= 1
    path.write_bytes(bytes(data))
    report = store.verify()
    assert any(p.kind == "manifest" and victim in p.snapshots for p in report.errors)


def test_leftover_pack_is_info_and_gc_removes_it(repo_dir):
    with casstore.open(str(repo_dir), gc_grace=0) as store:
        store.snapshot({"x": os.urandom(50_000)})
        repo = store._repo
        packs = list(repo._pack([(b"\x01" * 32, memoryview(b"orphan" * 100), 0, 0)]))
        repo.backend.put_many([(f"packs/{p.hex()[:2]}/{p.hex()}", d) for p, d, _ in packs])
        report = store.verify()
        assert report.ok and [p.kind for p in report.problems] == ["unreferenced"]
        store.gc()
        store.gc()
        assert store.verify().problems == []


def test_index_lost_then_rebuilt_verifies_clean(store, repo_dir, history):
    store.close()
    shutil.rmtree(repo_dir / "index")
    with casstore.open(str(repo_dir)) as again:
        again.index_rebuild()
        assert again.verify(deep=True).ok


def test_deep_subset_reads_part_of_the_data(store, history):
    full = store.verify(deep=True)
    half = store.verify(deep=True, read_fraction=0.5)
    assert 0 < half.packs_checked < full.packs_checked
    budget = store.verify(deep=True, max_bytes=1)
    assert budget.packs_checked < full.packs_checked
