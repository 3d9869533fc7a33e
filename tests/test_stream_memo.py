"""Reusing the unchanged start of a stream (chunker/memo.py) gives exactly the chunks a
fresh cut gives, cuts only the new bytes, and never trusts chunks gc has condemned."""

import copy

import casstore
from casstore import gc as gc_mod
from casstore.repository import pack_key

from .helpers import add_turn, chat_state, deep_equal


def _root(store, snap_id):
    return store._repo.fields(bytes.fromhex(snap_id))["root"]


def test_reused_start_gives_the_chunks_of_a_fresh_cut(tmp_path):
    grown = casstore.open(str(tmp_path / "grown"))
    state = chat_state(40)
    cut_bytes = []
    real = grown._repo.chunker.cut_items
    grown._repo.chunker.cut_items = lambda buf, ends: cut_bytes.append(len(buf)) or real(buf, ends)
    for step in range(12):
        add_turn(state, 100 + step)
        if step == 6:  # an edit in the middle: the start no longer matches, everything is cut again
            state["messages"][10]["content"] += " edited"
        cut_bytes.clear()
        info = grown.snapshot(state, "a")
        fresh = casstore.open(str(tmp_path / f"fresh{step}"))
        assert _root(fresh, fresh.snapshot(copy.deepcopy(state), "a").id) == _root(grown, info.id)
        fresh.close()
        if step not in (0, 6):
            # only the appended turn and the two spans before it are cut again
            assert sum(cut_bytes) < 20_000, cut_bytes
    grown.drop_caches()
    assert deep_equal(grown.restore(info.id), state)


def test_reused_chunks_left_only_in_condemned_packs_are_stored_again(tmp_path):
    store = casstore.open(str(tmp_path / "repo"))
    repo = store._repo
    state = chat_state(40)
    store.snapshot(state, "a")
    doomed = list(repo.index.packs())
    gc_mod._condemn(repo, doomed)          # as gc's first phase does
    add_turn(state, 7)
    info = store.snapshot(state, "a")     # reuses the start of the stream from the condemned packs
    for pack_id in doomed:                 # gc's second phase, after the grace period
        repo.backend.delete(pack_key(pack_id))
    store.close()
    fresh = casstore.open(str(tmp_path / "repo"))
    fresh.index_rebuild()
    assert deep_equal(fresh.restore(info.id), state)


def test_snapshots_with_the_structure_first_still_restore(tmp_path):
    """State snapshots store their structure stream last (manifest field "tail"); those
    written before, structure first, read as they always did."""
    from casstore import codec
    from casstore.repository import Stream

    store = casstore.open(str(tmp_path / "repo"))
    state = chat_state(30)
    structure, blobs = codec.encode(state)
    streams = [Stream(memoryview(structure), structure=True)]
    streams += [Stream(b.data, b.row_bytes, b.itemsize, structure=b.small_chunks, item_ends=b.item_ends)
                for b in blobs]
    old_id, fields = store._repo.write("state", streams, agent_id="a", session_id="s", description=None,
                                       metadata=None)
    assert "tail" not in fields
    new = store.snapshot(state, "a", "s")
    assert store._repo.fields(bytes.fromhex(new.id))["tail"] is True
    store.drop_caches()
    assert deep_equal(store.restore(old_id.hex()), state)
    assert deep_equal(store.restore(new.id), state)
