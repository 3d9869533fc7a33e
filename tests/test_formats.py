"""Repository formats 2 and 3 (primed manifests and narrowed tree nodes; plane-split numeric
blocks, see test_planes.py) and the older forms that still read: format-1 repositories and the
index layout that kept summaries by snapshot id."""

import dataclasses

import blake3
import lmdb
import msgpack
import pytest

import casstore
from casstore import manifest
from casstore.config import RepoConfig


def _manifest_file(repo, snap_id):
    return next(p for p in (repo / "snapshots").rglob(snap_id) if p.is_file())


def test_format_1_repository_keeps_plain_manifests_and_reads_both(tmp_path):
    repo = tmp_path / "repo"
    with casstore.open(str(repo)) as s:
        new = s.snapshot({"step": 1, "text": "primed " * 50}, agent_id="a")
        cfg = s._repo.config
    assert cfg.format == 3
    stored = _manifest_file(repo, new.id).read_bytes()
    assert stored[:4] == b"\x28\xb5\x2f\xfd" and blake3.blake3(manifest.unpack(stored)).hexdigest() == new.id

    (repo / "config").write_bytes(dataclasses.replace(cfg, format=1).encode())  # as casstore 0.1 wrote it
    with casstore.open(str(repo)) as s:
        old = s.snapshot({"step": 2, "text": "plain " * 50}, agent_id="a")
        assert blake3.blake3(_manifest_file(repo, old.id).read_bytes()).hexdigest() == old.id
        assert s.index_rebuild() == 2
        assert s.restore(new.id)["step"] == 1 and s.restore(old.id)["step"] == 2
        assert [i.id for i in s.list("a")] == [new.id, old.id]
        assert s.verify().ok


def test_unknown_repository_format_is_refused(tmp_path):
    repo = tmp_path / "repo"
    with casstore.open(str(repo)) as s:
        cfg = s._repo.config
    (repo / "config").write_bytes(dataclasses.replace(cfg, format=9).encode())
    with pytest.raises(casstore.ConfigurationError, match="format 9 is not supported"):
        casstore.open(str(repo))


def test_index_with_summaries_by_snapshot_id_is_converted(tmp_path):
    repo = tmp_path / "repo"
    with casstore.open(str(repo)) as s:
        infos = [s.snapshot({"step": i}, agent_id="a", session_id="s", metadata={"i": i}) for i in range(5)]
    env = lmdb.open(str(repo / "index"), max_dbs=12)
    with env.begin(write=True) as txn:  # rewrite the index as the earlier layout kept it
        summaries, seqs = env.open_db(b"summaries", txn=txn), env.open_db(b"snapseq", txn=txn)
        old = env.open_db(b"snaps", txn=txn)
        for sid, seq in list(txn.cursor(db=seqs)):
            fields = msgpack.unpackb(manifest.unpack(txn.get(seq, db=summaries)), raw=False)
            txn.put(sid, msgpack.packb(fields, use_bin_type=True), db=old)
        txn.drop(summaries, delete=True)
        txn.drop(seqs, delete=True)
    env.close()
    with casstore.open(str(repo)) as s:
        assert [(i.id, i.metadata) for i in s.list("a", "s")] == [(i.id, {"i": n}) for n, i in enumerate(infos)]
        assert s.restore(agent_id="a", session_id="s") == {"step": 4}
        assert s.get_metadata(infos[2].id[:10]).metadata == {"i": 2}
        nxt = s.snapshot({"step": 5}, agent_id="a", session_id="s")
        assert nxt.parent == infos[-1].id and nxt.index == 5
    env = lmdb.open(str(repo / "index"), max_dbs=12, readonly=True)
    with env.begin() as txn:
        assert txn.get(b"snaps") is None  # the old table is gone
    env.close()
    assert RepoConfig().format == 3


def _node_methods(store):
    return {loc.method for _, loc in store._repo.index.iter_chunks() if loc.kind == 1}


def test_tree_nodes_are_stored_narrowed_and_read_back(tmp_path):
    from casstore import tree
    from casstore.compress import NARROW_NODE
    from casstore.errors import IntegrityError

    entries = [(bytes([i]) * 32, size) for i, size in enumerate([5, 70_000, 3, 2 ** 33])]
    for sizes_from, width in ((0, 2), (1, 4)):
        node = tree.encode_node(0, entries[sizes_from:sizes_from + 1] + entries[2:3])
        small = tree.narrow_node(node)
        assert small[4] == width and len(small) < len(node)
        assert tree.widen_node(small, len(node)) == node
        with pytest.raises(IntegrityError):
            tree.widen_node(small[:-1], len(node))
    assert tree.narrow_node(tree.encode_node(1, entries)) is None  # a size needs 8 bytes: stored as before

    with casstore.open(str(tmp_path / "new")) as s:
        infos = [s.snapshot({"m": [f"message {i} " + "x" * 1200 for i in range(n)]}, agent_id="a")
                 for n in (50, 51, 80)]
        assert NARROW_NODE in _node_methods(s)
        s.drop_caches()
        assert s.restore(infos[-1].id)["m"][79].startswith("message 79")
        assert s.verify(deep=True).ok
        assert casstore.verify_proof(s.prove(infos[0].id, s.chunks(infos[0].id)[0]), infos[0].root)
        old = tmp_path / "old"
        with casstore.open(str(old)) as o:
            cfg = o._repo.config
        (old / "config").write_bytes(dataclasses.replace(cfg, format=1).encode())
        with casstore.open(str(old)) as o:  # a format-1 repository keeps nodes readable by casstore 0.1
            s.copy_to(o)
            o.snapshot({"m": ["more " * 300] * 3}, agent_id="b")
            assert NARROW_NODE not in _node_methods(o)
            assert o.restore(infos[-1].id) == s.restore(infos[-1].id)
