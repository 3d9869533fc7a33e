"""restore(path=...) gives back one value inside a state, reading only what that value needs."""

from __future__ import annotations

import dataclasses
import uuid

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import casstore
from casstore import codec

from .helpers import chat_state, deep_equal
from .test_roundtrip import states


@dataclasses.dataclass
class Notebook:
    title: str
    pages: list


def _state() -> dict:
    rng = np.random.default_rng(3)
    return {
        "memory": {"persona": "p" * 5000, "tools": ["search", ("sql", 2)], "note": "short"},
        "emb": rng.standard_normal((2000, 64), dtype=np.float32),
        "messages": [{"role": "user", "content": f"message {i} " * 150} for i in range(40)],
        (1, 2): "tuple key", 7: "int key", "id": uuid.UUID(int=9),
        "book": Notebook("t", [1, {"scan": b"\x01" * 70_000}]),
        "pair": (1, [2, {"deep": "d" * 3000}]),
    }


def _follow(state, steps):
    for key in steps:
        if dataclasses.is_dataclass(state):
            state = getattr(state, key)
        elif isinstance(state, (list, tuple)):
            state = state[int(key)]
        else:
            state = state[key]
    return state


@pytest.mark.parametrize("path", [
    "memory", ("memory", "persona"), ["memory", "tools", 1], ("messages", 3, "content"), ("messages", "-1"),
    [(1, 2)], 7, "id", ("book", "pages", 1, "scan"), "book", ("pair", 1, 1, "deep"), "pair", "emb", (),
])
def test_value_at_path_equals_that_part_of_the_full_restore(store, path):
    info = store.snapshot(_state())
    full = store.restore(info.id)
    store.drop_caches()
    got = store.restore(info.id, path=path)
    want = _follow(full, path if isinstance(path, (list, tuple)) else (path,))
    assert deep_equal(got, want)
    assert type(got) is type(want)
    if isinstance(got, np.ndarray):
        assert got.flags.writeable


def test_latest_of_a_lineage_by_path(store):
    store.snapshot({"step": 1}, agent_id="a")
    store.snapshot({"step": 2}, agent_id="a")
    assert store.restore(agent_id="a", path="step") == 2


@pytest.mark.parametrize("path, message", [
    (("memory", "nope"), r"state\['memory'\] has no key 'nope'"),
    (("messages", 99), r"state\['messages'\] has 40 items, no item 99"),
    (("messages", "first"), r"state\['messages'\] is a list; 'first' is not an index"),
    (("memory", "note", 0), r"state\['memory'\]\['note'\] is a str, which has no item 0"),
    (("book", "cover"), r"state\['book'\] \(a Notebook\) has no field 'cover'"),
])
def test_a_path_to_nothing_names_the_step_and_the_snapshot(store, path, message):
    info = store.snapshot(_state())
    with pytest.raises(casstore.PathNotFoundError, match=message) as e:
        store.restore(info.id, path=path)
    assert info.id in str(e.value)
    assert isinstance(e.value, LookupError)


def test_a_step_that_cannot_be_a_key_is_refused_before_reading(store):
    info = store.snapshot(_state())
    with pytest.raises(casstore.ConfigurationError, match=r"step \['a'\] is not a key"):
        store.restore(info.id, path=("memory", ["a"]))


def test_only_the_chunks_under_the_path_are_read(store, repo_dir):
    """The array's chunks sit in a pack of their own; with that pack damaged, the rest of the
    state still restores by path, while a full restore (or the array's path) names the damage."""
    arr = np.random.default_rng(0).standard_normal((4000, 64), dtype=np.float32)
    store.snapshot({"emb": arr}, agent_id="first")
    packs = [p for p in (repo_dir / "packs").rglob("*") if p.is_file()]
    info = store.snapshot({"emb": arr, "notes": {"summary": "s" * 3000, "n": 3}}, agent_id="second")
    assert info.stored_size < arr.nbytes // 10   # the array was deduplicated, not written again
    [array_pack] = packs
    data = bytearray(array_pack.read_bytes())
    data[len(data) // 2] ^= 0xFF
    array_pack.write_bytes(bytes(data))
    store.drop_caches()
    assert store.restore(info.id, path="notes") == {"summary": "s" * 3000, "n": 3}
    with pytest.raises(casstore.IntegrityError, match=info.id):
        store.restore(info.id, path="emb")
    with pytest.raises(casstore.IntegrityError, match=info.id):
        store.restore(info.id)


def test_by_path_from_a_remote_store_and_a_long_history():
    store = casstore.open("memory://restore-path-history")
    try:
        state = chat_state(5)
        ids = []
        for turn in range(40):
            state["messages"].append({"role": "user", "content": f"turn {turn} " * 200})
            state["step"] = turn
            ids.append(store.snapshot(state).id)
        store.drop_caches()
        for turn in (0, 17, 39):
            assert store.restore(ids[turn], path="step") == turn
            assert store.restore(ids[turn], path=("messages", -1, "content")) == f"turn {turn} " * 200
    finally:
        store.close()


def test_directory_snapshots_are_refused(store, tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f.txt").write_text("x")
    info = store.snapshot_dir(str(tmp_path / "d"))
    with pytest.raises(casstore.ConfigurationError, match="restore_dir"):
        store.restore(info.id, path="f.txt")


def _paths(state, prefix=()):
    """Every path into state that decode_at can follow, with the value there."""
    yield prefix, state
    if isinstance(state, dict):
        for k, v in state.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(state, (list, tuple)):
        for i, v in enumerate(state):
            yield from _paths(v, prefix + (i,))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(state=states, pick=st.integers(min_value=0))
def test_codec_decodes_any_path_of_nested_states(state, pick):
    structure, blobs = codec.encode({"s": state, "big": "b" * 70_000})
    region = memoryview(bytearray(b"".join(bytes(b.data) for b in blobs)))
    paths = list(_paths(state, ("s",)))
    path, want = paths[pick % len(paths)]
    assert deep_equal(codec.decode_at(structure, region, path), want)


def test_by_path_and_one_file_from_an_encrypted_store(tmp_path):
    with casstore.open(str(tmp_path / "enc"), password="pw", encrypt=True) as store:
        info = store.snapshot(_state())
        (tmp_path / "ws").mkdir()
        (tmp_path / "ws" / "notes.md").write_text("secret notes\n" * 50)
        folder = store.snapshot_dir(str(tmp_path / "ws"))
    with casstore.open(str(tmp_path / "enc"), password="pw") as store:
        assert store.restore(info.id, path=("memory", "persona")) == "p" * 5000
        assert deep_equal(store.restore(info.id, path=("book", "pages")), [1, {"scan": b"\x01" * 70_000}])
        assert store.read_file(folder.id, "notes.md") == b"secret notes\n" * 50
