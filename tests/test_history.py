"""Differential snapshots: unchanged state writes almost nothing, every snapshot restores."""

from __future__ import annotations

import numpy as np
import pytest

import casstore

from .helpers import add_turn, chat_state, deep_equal


def test_same_state_twice_writes_almost_nothing(store):
    state = chat_state(60)
    first = store.snapshot(state)
    second = store.snapshot(state)
    assert first.stored_size > 50_000
    assert second.stored_size == 0 and second.new_chunk_count == 0
    assert second.parent == first.id and second.index == first.index + 1
    assert store.chunks(first.id) == store.chunks(second.id)


def test_appended_message_writes_little(store):
    state = chat_state(200)
    store.snapshot(state, agent_id="bot", session_id="u1")
    sizes = []
    for step in range(10):
        add_turn(state, 1000 + step)
        sizes.append(store.snapshot(state, agent_id="bot", session_id="u1").stored_size)
    raw_new = len(state["messages"][-1]["content"]) + len(state["messages"][-2]["content"])
    assert max(sizes) < 20_000, sizes          # a step rewrites a couple of 4 KiB chunks, not the 500 KB state
    assert np.median(sizes) < 3 * raw_new + 4096, (sizes, raw_new)


def test_every_snapshot_of_a_long_history_restores(store):
    state = {"messages": [], "memory": {"core": "x"}, "emb": np.zeros((0, 16), np.float32), "step": 0}
    saved = []
    rng = np.random.default_rng(0)
    for step in range(40):
        state["messages"].append({"role": "user", "content": f"message {step} " * (step % 7 + 1)})
        state["emb"] = np.concatenate([state["emb"], rng.normal(size=(50, 16)).astype(np.float32)])
        if step % 10 == 3:
            state["memory"]["core"] = f"edited at {step}"
        state["step"] = step
        info = store.snapshot(state, agent_id="a", session_id="s", description=f"step {step}", metadata={"step": step})
        saved.append((info.id, {"messages": list(state["messages"]), "memory": dict(state["memory"]),
                                "emb": state["emb"].copy(), "step": step}))
    for snap_id, expected in saved:
        assert deep_equal(store.restore(snap_id), expected)
    history = store.list(agent_id="a")
    assert [i.id for i in history] == [s for s, _ in saved]
    assert [i.metadata["step"] for i in history] == list(range(40))
    assert all(h.parent == p.id for p, h in zip(history, history[1:]))
    assert deep_equal(store.restore(agent_id="a", session_id="s"), saved[-1][1])


def test_vector_rows_overwrite_changes_few_blocks(store):
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(4000, 256)).astype(np.float32)
    base = store.snapshot({"emb": emb})
    emb[[5, 1000, 3000]] = 0.0
    emb = np.concatenate([emb, rng.normal(size=(20, 256)).astype(np.float32)])
    step = store.snapshot({"emb": emb})
    assert step.new_chunk_count <= 6, step
    assert step.stored_size < 0.03 * base.stored_size


def test_list_filters_and_lineages(store):
    a = store.snapshot({"x": 1}, agent_id="a", session_id="1")
    b = store.snapshot({"x": 2}, agent_id="a", session_id="2")
    c = store.snapshot({"x": 3}, agent_id="b", session_id="1")
    assert [i.id for i in store.list()] == [a.id, b.id, c.id]
    assert [i.id for i in store.list(agent_id="a")] == [a.id, b.id]
    assert [i.id for i in store.list(agent_id="a", session_id="2")] == [b.id]
    assert b.parent is None and b.index == 0
    with pytest.raises(casstore.ConfigurationError):
        store.list(session_id="1")


def test_listed_infos_are_whole_frozen_snapshot_infos(store):
    """list() builds its SnapshotInfos without the dataclass constructor: each must still carry
    every field, equal the constructed one, and stay frozen."""
    import dataclasses
    info = store.snapshot({"x": 1}, agent_id="a", session_id="s", description="d", metadata={"k": [1, 2]})
    [listed] = store.list("a")
    assert set(vars(listed)) == {f.name for f in dataclasses.fields(casstore.SnapshotInfo)}
    assert listed == casstore.SnapshotInfo(**dataclasses.asdict(listed)) == info
    with pytest.raises(dataclasses.FrozenInstanceError):
        listed.index = 7


def test_ids_prefixes_metadata_exists_delete(store):
    infos = [store.snapshot({"i": i}, description=f"d{i}", metadata={"i": i}) for i in range(40)]
    one = infos[7]
    assert store.get_metadata(one.id[:12]) == one
    assert store.get_metadata(one.id).description == "d7" and store.get_metadata(one.id).metadata == {"i": 7}
    assert store.exists(one.id[:10]) and not store.exists("ff" * 32)
    firsts = [i.id[0] for i in infos]
    shared = next(d for d in firsts if firsts.count(d) > 1)  # 40 ids over 16 digits: some digit repeats
    with pytest.raises(casstore.SnapshotNotFoundError, match="ambiguous"):
        store.get_metadata(shared)
    with pytest.raises(casstore.SnapshotNotFoundError, match="0123"):
        store.restore("0123" * 16)
    with pytest.raises(LookupError, match="not a snapshot id"):
        store.restore("not-hex!")
    store.delete(one.id)
    assert not store.exists(one.id)
    with pytest.raises(casstore.SnapshotNotFoundError):
        store.restore(one.id)
    assert store.restore(infos[8].id) == {"i": 8}


def test_metadata_must_be_plain_data(store):
    with pytest.raises(casstore.SerializationError):
        store.snapshot({"x": 1}, metadata={"bad": object()})
    with pytest.raises(casstore.ConfigurationError, match="agent_id"):
        store.snapshot({"x": 1}, agent_id="")


def test_stats_reports_dedup(store):
    state = chat_state(50)
    for i in range(5):
        add_turn(state, i)
        store.snapshot(state)
    s = store.stats()
    assert s.snapshots == 5 and s.logical_bytes > 4 * s.stored_bytes and s.dedup_ratio > 4


def test_default_url_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("CASSTORE_REPO", str(tmp_path / "envrepo"))
    with casstore.open() as s:
        s.snapshot({"a": 1})
    assert (tmp_path / "envrepo" / "config").exists()
    monkeypatch.delenv("CASSTORE_REPO")
    monkeypatch.chdir(tmp_path)
    with casstore.open() as s:
        s.snapshot({"a": 1})
    assert (tmp_path / ".casstore" / "config").exists()


def test_memory_url_works(tmp_path):
    with casstore.open("memory://casstore-test-mem", index_path=str(tmp_path / "idx")) as s:
        info = s.snapshot({"m": [1, 2, 3]})
        assert s.restore(info.id) == {"m": [1, 2, 3]}


def test_diff_names_changed_state_paths_and_chunks(store):
    state = chat_state(30)
    a = store.snapshot(state)
    state["memory"]["persona"] = "terse"
    add_turn(state, 99)
    b = store.snapshot(state)
    d = store.diff(a.id[:10], b.id)
    changed = {p["path"]: p["change"] for p in d["paths"]}
    assert changed["state['memory']['persona']"] == "modified"
    assert changed["state['messages']"] == "length 60 -> 62"
    assert "state['step']" in changed and d["chunks_added"] >= 1 and d["bytes_added"] > 0
    assert store.diff(a.id, a.id)["paths"] == [] and store.diff(a.id, a.id)["chunks_added"] == 0
