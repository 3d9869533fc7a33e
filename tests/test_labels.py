"""Snapshot labels: a snapshot found by what it is, without listing its agent's history."""

import lmdb
import msgpack
import pytest

import casstore
from casstore import ConfigurationError
from casstore import manifest
from casstore.index import db as index_db


def _history(store, n=6):
    infos = []
    for i in range(n):
        labels = [f"step:{i}", "even" if i % 2 == 0 else "odd"]
        infos.append(store.snapshot({"i": i}, "bot", "s1" if i < 4 else "s2", labels=labels))
    return infos


def test_find_returns_the_labelled_snapshots_oldest_first(store):
    infos = _history(store)
    assert [i.id for i in store.find("bot", "even")] == [infos[0].id, infos[2].id, infos[4].id]
    assert [i.id for i in store.find("bot", "step:3")] == [infos[3].id]
    assert store.find("bot", "step:3")[0].labels == ("step:3", "odd")
    assert store.get_metadata(infos[3].id).labels == ("step:3", "odd")
    assert store.find("bot", "step:9") == [] and store.find("other", "even") == []
    again = store.snapshot({"i": 3}, "bot", "s2", labels=["step:3"])
    assert [i.id for i in store.find("bot", "step:3")] == [infos[3].id, again.id]
    assert store.count_unlabelled("bot") == 0


def test_a_deleted_snapshot_is_no_longer_found(store):
    infos = _history(store)
    store.delete(infos[2].id)
    assert [i.id for i in store.find("bot", "even")] == [infos[0].id, infos[4].id]
    assert store.find("bot", "step:2") == []


def test_unlabelled_snapshots_are_counted_per_agent(store):
    _history(store, 2)
    plain = store.snapshot({"x": 1}, "bot")
    store.snapshot({"x": 2}, "bot")
    store.snapshot({"x": 3}, "other")
    assert store.count_unlabelled("bot") == 2 and store.count_unlabelled("other") == 1
    store.delete(plain.id)
    assert store.count_unlabelled("bot") == 1
    assert store.count_unlabelled("nobody") == 0


def test_labels_are_checked_before_anything_is_written(store):
    for bad, message in (("step:1", "list of strings"), ([""], "non-empty string"), ([3], "non-empty string")):
        with pytest.raises(ConfigurationError, match=message):
            store.snapshot({"a": 1}, "bot", labels=bad)
    assert store.list() == []
    info = store.snapshot({"a": 1}, "bot", labels=iter(["x", "x", "y"]))
    assert info.labels == ("x", "y")


def test_latest_is_the_lineage_head(store):
    infos = _history(store)
    assert store.latest("bot", "s1").id == infos[3].id
    assert store.latest("bot", "s2").id == infos[5].id
    assert store.latest("bot", "s3") is None


def test_labels_survive_an_index_rebuild_and_a_copy(store, tmp_path):
    infos = _history(store)
    store.index_rebuild()
    assert [i.id for i in store.find("bot", "odd")] == [infos[1].id, infos[3].id, infos[5].id]
    with casstore.open(str(tmp_path / "copy")) as other:
        store.copy_to(other)
        assert [i.id for i in other.find("bot", "odd")] == [infos[1].id, infos[3].id, infos[5].id]
        assert other.count_unlabelled("bot") == 0


def test_labels_sharing_a_hash_are_told_apart(store, monkeypatch):
    monkeypatch.setattr(index_db, "_label_hash", lambda label: b"\0" * 8)
    a = store.snapshot({"a": 1}, "bot", labels=["a"])
    b = store.snapshot({"b": 1}, "bot", labels=["b"])
    assert [i.id for i in store.find("bot", "a")] == [a.id]
    assert [i.id for i in store.find("bot", "b")] == [b.id]
    store.delete(a.id)
    assert store.find("bot", "a") == [] and [i.id for i in store.find("bot", "b")] == [b.id]


def _raw_commit(repo_dir, fields, snap_id):
    """Append a summary as casstore before labels did: summary, id and lineage, no label tables."""
    env = lmdb.open(str(repo_dir / "index"), max_dbs=16)
    try:
        with env.begin(write=True) as txn:
            summaries, snaps = env.open_db(b"summaries", txn=txn), env.open_db(b"snapseq", txn=txn)
            lineage = env.open_db(b"lineage", txn=txn)
            cur = txn.cursor(db=summaries)
            seq = (int.from_bytes(cur.key(), "big") + 1 if cur.last() else 0).to_bytes(8, "big")
            txn.put(seq, manifest.pack(msgpack.packb(fields, use_bin_type=True)), db=summaries)
            txn.put(snap_id, seq, db=snaps)
            txn.put(index_db._lineage_key(fields, snap_id), b"", db=lineage)
    finally:
        env.close()


def test_summaries_another_writer_added_are_labelled_at_the_next_lookup(repo_dir):
    with casstore.open(str(repo_dir)) as store:
        first = store.snapshot({"a": 1}, "bot", labels=["one"])
        fields = dict(store._repo.fields(bytes.fromhex(first.id)))
    # what an earlier casstore commits when it learns a labelled manifest: no label entries
    snap_id = bytes(range(32))
    fields.update(index=1, parent=bytes.fromhex(first.id), labels=["two"])
    _raw_commit(repo_dir, fields, snap_id)
    _raw_commit(repo_dir, {**fields, "index": 2, "labels": []}, bytes(range(1, 33)))
    with casstore.open(str(repo_dir)) as store:
        assert [i.id for i in store.find("bot", "two")] == [snap_id.hex()]
        assert [i.id for i in store.find("bot", "one")] == [first.id]
        assert store.count_unlabelled("bot") == 1


def test_an_index_from_before_labels_is_labelled_once(repo_dir):
    with casstore.open(str(repo_dir)) as store:
        infos = _history(store, 3)
    env = lmdb.open(str(repo_dir / "index"), max_dbs=16)
    with env.begin(write=True) as txn:  # as an index written before the label tables existed
        for name in (b"labels", b"unlabelled"):
            txn.drop(env.open_db(name, txn=txn, dupsort=name == b"labels"), delete=True)
        txn.delete(b"labelled", db=env.open_db(b"meta", txn=txn))
    env.close()
    with casstore.open(str(repo_dir)) as store:
        assert [i.id for i in store.find("bot", "even")] == [infos[0].id, infos[2].id]
        assert store.count_unlabelled("bot") == 0
