"""Older on-disk forms still read: format-1 repositories (plain manifests) and the index layout
that kept summaries by snapshot id."""

import dataclasses

import blake3
import lmdb
import msgpack

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
    assert cfg.format == 2
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
    try:
        casstore.open(str(repo))
    except casstore.ConfigurationError as e:
        assert "format 9 is not supported" in str(e)
    else:
        raise AssertionError("format 9 opened")


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
    assert RepoConfig().format == 2
