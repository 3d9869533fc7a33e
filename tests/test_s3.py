"""casstore on a real S3 API (moto's server on loopback): round trips, two machines on
one bucket, copy between repositories, index loss, request counts, faults and crashes."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import casstore
from casstore.config import cache_dir

from .helpers import add_turn, chat_state, deep_equal

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _open(url, options, index_dir):
    return casstore.open(url, storage_options=options, index_path=str(index_dir))


def _big_chat(nbytes: int = 2 << 20) -> dict:
    state = chat_state(20)
    seed = 1000
    while sum(len(m["content"]) for m in state["messages"]) < nbytes:
        state["messages"].extend(chat_state(40, seed)["messages"])
        seed += 1
    for i, m in enumerate(state["messages"]):
        m["id"] = i
    return state


# ------------------------------------------------------------------ round trip and two machines

def test_chat_and_array_round_trip_on_s3(s3_server, s3_url, tmp_path):
    chat = chat_state(30)
    arr = np.random.default_rng(1).standard_normal((3000, 64)).astype(np.float32)
    with _open(s3_url, s3_server.storage_options, tmp_path / "idx") as store:
        a = store.snapshot(chat, agent_id="bot", session_id="s1")
        b = store.snapshot({"emb": arr, "step": 1}, agent_id="bot", session_id="s2")
        assert deep_equal(store.restore(a.id), chat)
        got = store.restore(b.id)
        assert deep_equal(got["emb"], arr) and got["step"] == 1
        assert [i.id for i in store.list()] == [a.id, b.id]
    # a fresh index (another process, same cache folder) sees the same
    with _open(s3_url, s3_server.storage_options, tmp_path / "idx") as store:
        assert deep_equal(store.restore(agent_id="bot", session_id="s1"), chat)


def test_two_machines_share_a_bucket_and_dedup(s3_server, s3_url, tmp_path):
    opts = s3_server.storage_options
    state = _big_chat(300_000)
    with _open(s3_url, opts, tmp_path / "m1") as m1, _open(s3_url, opts, tmp_path / "m2") as m2:
        a = m1.snapshot(state, agent_id="a")
        # m2 has never synced: restoring the unknown id syncs on its own
        assert deep_equal(m2.restore(a.id), state)
        # m2 now knows m1's chunks: the same state costs it (almost) nothing
        b = m2.snapshot(state, agent_id="b")
        assert b.stored_size < 1024 and b.new_chunk_count == 0
        assert a.stored_size > 100_000
        add_turn(state, 7)
        c = m2.snapshot(state, agent_id="b")
        assert c.stored_size < a.stored_size // 10
        # m1 sees m2's snapshots on list (automatic sync) ...
        assert {i.id for i in m1.list()} == {a.id, b.id, c.id}
        assert deep_equal(m1.restore(c.id), state)
        # ... and by explicit sync, restoring the latest of a lineage
        d = m1.snapshot({"x": 1}, agent_id="a")
        assert m2.sync() == 1
        assert m2.restore(agent_id="a") == {"x": 1} and m2.get_metadata(d.id).agent_id == "a"


def test_a_langgraph_saver_on_another_machine_finds_checkpoints_by_label(s3_server, s3_url, tmp_path):
    """Machine 2's index has never seen the thread: a checkpoint, the latest one and a label
    lookup are found once it learns what machine 1 wrote (refresh), without listing the thread."""
    pytest.importorskip("langgraph")
    from langgraph.checkpoint.base import empty_checkpoint

    from casstore.integrations.langgraph import CasstoreSaver

    opts = s3_server.storage_options
    base = {"configurable": {"thread_id": "t", "checkpoint_ns": ""}}
    with _open(s3_url, opts, tmp_path / "m1") as m1, _open(s3_url, opts, tmp_path / "m2") as m2:
        saver1, saver2 = CasstoreSaver(m1), CasstoreSaver(m2)
        cfg = None
        for i in range(3):
            c = {**empty_checkpoint(), "id": f"1ef00000-0000-6000-8000-00000000000{i}"}
            cfg = saver1.put(cfg or base, c, {"source": "loop", "step": i, "parents": {}}, {})
        assert m2.find("langgraph:t", "c0::" + cfg["configurable"]["checkpoint_id"]) == []
        assert saver2.get_tuple(base).config == cfg
        old = {"configurable": {**base["configurable"], "checkpoint_id": "1ef00000-0000-6000-8000-000000000001"}}
        assert saver2.get_tuple(old).checkpoint["id"] == old["configurable"]["checkpoint_id"]
        assert m2.refresh() == 0 and m1.refresh() == 0
        c = {**empty_checkpoint(), "id": "1ef00000-0000-6000-8000-000000000009"}
        newer = saver1.put(cfg, c, {"source": "loop", "step": 3, "parents": {}}, {})
        assert saver2.get_tuple(newer).config == newer  # an id it does not know makes it learn

        # a thread machine 2 first sees as all labelled, then learns holds an unlabelled snapshot
        legacy = {"configurable": {"thread_id": "u", "checkpoint_ns": ""}}
        assert saver2.get_tuple(legacy) is None
        c = {**empty_checkpoint(), "id": "1ef00000-0000-6000-8000-000000000001"}
        cfg = saver1.put(legacy, c, {"source": "loop", "step": 0, "parents": {}}, {})
        typed, data = saver1.serde.dumps_typed("legacy value")
        m1.snapshot({"format": 1, "writes": [["task-1", "ch", 0, "", typed.encode() + b"\0" + data]]},
                    "langgraph:u", "default#writes",
                    metadata={"langgraph": "writes", "checkpoint_ns": "", "checkpoint_id": c["id"],
                              "task_id": "task-1", "keys": [0]})
        assert saver2.get_tuple(cfg).pending_writes == [("task-1", "ch", "legacy value")]


# ------------------------------------------------------------------ copy

def test_copy_local_to_s3_to_local_is_exact_and_incremental(s3_server, s3_url, tmp_path):
    states = []
    with casstore.open(str(tmp_path / "src")) as src:
        state = chat_state(20)
        state["emb"] = np.random.default_rng(2).standard_normal((2000, 32)).astype(np.float32)
        ids = []
        for i in range(3):
            add_turn(state, i)
            state["emb"][i] = i
            ids.append(src.snapshot(state, agent_id="a").id)
            states.append(src.restore(ids[-1]))
        with _open(s3_url, s3_server.storage_options, tmp_path / "s3idx") as s3, \
                casstore.open(str(tmp_path / "dst")) as dst:
            up = src.copy_to(s3)
            assert up.copied == ids and up.skipped == [] and up.chunks_sent > 0 and up.verified
            down = s3.copy_to(dst)
            assert down.copied == ids and down.chunks_sent == up.chunks_sent
            for sid, want in zip(ids, states):
                assert deep_equal(dst.restore(sid), want)
                assert dst.chunks(sid) == src.chunks(sid)
            assert [i.parent for i in dst.list()] == [None, ids[0], ids[1]]
            # a second copy sends nothing
            again = src.copy_to(s3)
            assert again.copied == [] and again.skipped == ids and again.chunks_sent == again.bytes_sent == 0
            # one new snapshot sends only its new chunks
            add_turn(state, 99)
            new = src.snapshot(state, agent_id="a")
            step = src.copy_to(s3, ids=[new.id[:12]])
            assert step.copied == [new.id] and 0 < step.bytes_sent < up.bytes_sent // 2
            assert deep_equal(s3.restore(new.id), src.restore(new.id))


# ------------------------------------------------------------------ index cache

def test_deleted_index_cache_loses_nothing(s3_server, s3_url, tmp_path):
    idx = tmp_path / "cache" / "idx"
    states, ids = [], []
    with _open(s3_url, s3_server.storage_options, idx) as store:
        state = chat_state(10)
        for i in range(3):
            add_turn(state, i)
            ids.append(store.snapshot(state).id)
            states.append(store.restore(ids[-1]))
    shutil.rmtree(tmp_path / "cache")
    with _open(s3_url, s3_server.storage_options, idx) as store:
        assert store.index_rebuild() == 3
        for sid, want in zip(ids, states):
            assert deep_equal(store.restore(sid), want)
        assert [i.id for i in store.list()] == ids


def test_default_index_of_a_remote_repo_is_under_the_cache_dir(s3_server, s3_url, tmp_path, monkeypatch):
    monkeypatch.setenv("CASSTORE_CACHE_DIR", str(tmp_path / "cc"))
    assert cache_dir() == str(tmp_path / "cc")
    with casstore.open(s3_url, storage_options=s3_server.storage_options) as store:
        store.snapshot({"a": 1})
        path = store._repo.index_path
        assert os.path.commonpath([path, str(tmp_path / "cc")]) == str(tmp_path / "cc")
        assert store._repo.config.repo_id in path and os.path.isdir(path)
    monkeypatch.delenv("CASSTORE_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == str(tmp_path / "xdg" / "casstore")


# ------------------------------------------------------------------ request counts

def test_one_message_step_makes_a_small_constant_number_of_requests(s3_proxy, s3_proxy_url, tmp_path):
    state = _big_chat(2 << 20)
    with _open(s3_proxy_url, s3_proxy.storage_options, tmp_path / "idx") as store:
        store.snapshot(state)
        steps = []
        for i in range(4):
            add_turn(state, 500 + i)
            s3_proxy.reset_counts()
            info = store.snapshot(state)
            counts = dict(s3_proxy.counts)
            steps.append(counts)
            assert info.new_chunk_count <= 8, info
            assert counts.get("PUT", 0) <= 3, counts
            assert counts.get("GET", 0) + counts.get("HEAD", 0) + counts.get("LIST", 0) <= 2, counts
            assert counts.get("DELETE", 0) + counts.get("POST", 0) == 0, counts
        assert len({c.get("PUT", 0) for c in steps}) == 1, steps  # constant, whatever the history length


def test_a_cold_remote_restore_reads_a_fresh_tree_in_one_request(s3_proxy, s3_proxy_url, tmp_path):
    """The root's read takes the bytes before it in its pack, where the levels below it lie:
    the walk down the tree is one GET, not one per level."""
    state = _big_chat(2 << 20)
    with _open(s3_proxy_url, s3_proxy.storage_options, tmp_path / "idx") as store:
        info = store.snapshot(state)
        repo = store._repo
        fields = repo.fields(bytes.fromhex(info.id))
        assert fields["height"] >= 3
        store.drop_caches()
        s3_proxy.reset_counts()
        entries = repo.entries(fields)
        assert dict(s3_proxy.counts) == {"GET": 1}
        assert len(entries) == fields["chunks"]
        store.drop_caches()
        assert deep_equal(store.restore(info.id), state)


def test_a_cold_remote_restore_by_path_reads_little(s3_proxy, s3_proxy_url, tmp_path):
    """One value of a big remote state, whose bulk an earlier snapshot wrote: a few GETs and a
    small part of the bytes a full restore downloads."""
    state = _big_chat(2 << 20)
    with _open(s3_proxy_url, s3_proxy.storage_options, tmp_path / "idx") as store:
        store.snapshot(state)
        state["memory"] = {"persona": "p" * 3000, "step": 7}
        info = store.snapshot(state)
        store.drop_caches()
        s3_proxy.reset_counts()
        assert store.restore(info.id, path="memory") == state["memory"]
        part_gets, part_bytes = s3_proxy.counts.get("GET", 0), s3_proxy.bytes_out
        store.drop_caches()
        s3_proxy.reset_counts()
        assert deep_equal(store.restore(info.id), state)
        assert 1 <= part_gets <= 3, part_gets
        assert part_bytes * 5 < s3_proxy.bytes_out, (part_bytes, s3_proxy.bytes_out)


# ------------------------------------------------------------------ faults

SECRET_KEY = "AKIAFAKEKEY0123456789"
SECRET = "s3cr3t-must-never-leak-0123456789"


def _secret_options(proxy):
    return {**proxy.storage_options, "key": SECRET_KEY, "secret": SECRET}


def test_throttling_and_resets_mid_upload_are_retried(s3_proxy, s3_proxy_url, tmp_path):
    state = _big_chat(400_000)
    state["emb"] = np.random.default_rng(3).standard_normal((4000, 64)).astype(np.float32)
    with _open(s3_proxy_url, _secret_options(s3_proxy), tmp_path / "idx") as store:
        s3_proxy.fail_next(2, methods={"PUT"})
        s3_proxy.reset_next(1, methods={"PUT"})
        s3_proxy.fail_next(1, status=500, code="InternalError", methods={"PUT"})
        info = store.snapshot(state)
        assert s3_proxy.counts["PUT"] >= 2 + 4
        s3_proxy.reset_next(1, methods={"GET"})
        s3_proxy.fail_next(1, methods={"GET"})
        assert deep_equal(store.restore(info.id), state)


def test_permanent_failure_names_the_url_and_commits_nothing(s3_proxy, s3_proxy_url, tmp_path):
    with _open(s3_proxy_url, _secret_options(s3_proxy), tmp_path / "idx") as store:
        good = store.snapshot({"n": 0, "text": "x" * 5000})
        s3_proxy.fail_always(methods={"PUT"})
        with pytest.raises(casstore.StorageError) as err:
            store.snapshot({"n": 1, "text": "y" * 5000})
        message = str(err.value)
        assert s3_proxy_url.replace("s3://", "") in message and "/packs/" in message
        chain = []
        e: BaseException | None = err.value
        while e is not None and len(chain) < 10:
            chain.append(f"{e!r} {e}")
            e = e.__cause__ or e.__context__
        for text in chain + [repr(store), message]:
            assert SECRET not in text and SECRET_KEY not in text
        s3_proxy.clear()
        assert [i.id for i in store.list()] == [good.id]
        assert store.restore(good.id) == {"n": 0, "text": "x" * 5000}
    with _open(s3_proxy_url, s3_proxy.storage_options, tmp_path / "other") as fresh:
        assert fresh.index_rebuild() == 1
        assert fresh.restore(agent_id="default") == {"n": 0, "text": "x" * 5000}


def test_sigkilled_writer_on_s3_leaves_earlier_snapshots_restorable(s3_server, s3_url, tmp_path):
    import json
    proc = subprocess.Popen([sys.executable, "-m", "tests.chat_writer", s3_url,
                             json.dumps(s3_server.storage_options), str(tmp_path / "writer-idx")],
                            stdout=subprocess.PIPE, text=True, cwd=ROOT)
    first = proc.stdout.readline()
    time.sleep(0.4)
    proc.send_signal(signal.SIGKILL)
    out, _ = proc.communicate(timeout=30)
    committed = [line.split() for line in (first + out).splitlines() if line.strip()]
    assert committed, "the writer committed nothing before it was killed"
    with _open(s3_url, s3_server.storage_options, tmp_path / "reader-idx") as store:
        listed = {i.id for i in store.list()}
        assert {sid for sid, _ in committed} <= listed
        for sid in listed:  # every listed snapshot, including one the writer never reported, restores
            assert store.restore(sid)["emb"].shape == (2000, 128)
        for sid, step in committed:
            assert store.restore(sid)["emb"][int(step) % 2000][0] == int(step)


def test_gc_on_s3_frees_a_deleted_snapshot_and_other_machines_follow(s3_server, s3_url, tmp_path):
    opts = s3_server.storage_options
    rng = np.random.default_rng(5)
    keep_state = {"emb": rng.standard_normal((2000, 64)).astype(np.float32)}
    with casstore.open(s3_url, storage_options=opts, index_path=str(tmp_path / "m1"), gc_grace=0) as m1, \
            _open(s3_url, opts, tmp_path / "m2") as m2:
        doomed = m1.snapshot({"emb": rng.standard_normal((2000, 64)).astype(np.float32)}, agent_id="x")
        keep = m1.snapshot(keep_state, agent_id="y")
        assert len(m2.list()) == 2
        m1.delete(doomed.id)
        m1.gc()            # condemn
        report = m1.gc()   # grace 0: delete
        assert report.packs_deleted >= 1 and report.bytes_freed > 400_000
        assert [i.id for i in m2.list()] == [keep.id]      # m2 follows on its next sync
        assert deep_equal(m2.restore(keep.id), keep_state)
        with pytest.raises(casstore.SnapshotNotFoundError):
            m2.restore(doomed.id)
        again = m2.snapshot(keep_state, agent_id="z")       # dedups against the surviving packs
        assert again.new_chunk_count == 0


def test_partial_copy_after_forget_verifies_clean(tmp_path):
    with casstore.open(str(tmp_path / "src")) as src, casstore.open(str(tmp_path / "dst")) as dst:
        infos = [src.snapshot({"i": i, "pad": "p" * 3000}, agent_id="a") for i in range(4)]
        src.forget(keep_last=2)
        src.copy_to(dst)
        assert [i.id for i in dst.list()] == [i.id for i in infos[2:]]
        assert dst.verify().ok
        with casstore.open(str(tmp_path / "dst2")) as dst2:
            src.copy_to(dst2, ids=[infos[3].id])  # the parent stays behind on purpose
            assert dst2.verify().ok and dst2.restore(infos[3].id)["i"] == 3
