"""Building a snapshot's tree from the lineage's previous one gives the tree a fresh build gives,
and a failed write leaves nothing that a later snapshot would wrongly reuse."""

import os
import random

import blake3
import pytest

import casstore
from casstore import backend as backend_mod
from casstore import tree


def _entry(rng, wide=False):
    h = bytearray(blake3.blake3(rng.randbytes(8)).digest())
    if wide:  # few cuts: nodes fill up to MAX_FANOUT
        h[0] |= 1 if rng.random() < 0.99 else 0
    return bytes(h), rng.randint(1, 5000)


@pytest.mark.parametrize("wide", [False, True])
def test_reused_build_equals_fresh_build(wide):
    rng = random.Random(7 + wide)
    for _ in range(400):
        old = [_entry(rng, wide) for _ in range(rng.randint(0, 600))]
        _, _, old_nodes, levels = tree.build(old)
        new = list(old)
        op = rng.choice(["append", "edit", "truncate", "insert", "same", "clear"])
        if op == "append":
            new += [_entry(rng, wide) for _ in range(rng.randint(1, 80))]
        elif op == "edit" and new:
            new[rng.randrange(len(new))] = _entry(rng, wide)
        elif op == "truncate":
            new = new[:rng.randint(0, len(new))]
        elif op == "insert":
            new.insert(rng.randint(0, len(new)), _entry(rng, wide))
        elif op == "clear":
            new = []
        root, height, made, _ = tree.build(new, previous=levels)
        fresh_root, fresh_height, fresh_nodes, _ = tree.build(new)
        assert (root, height) == (fresh_root, fresh_height), op
        assert {h for h, _ in fresh_nodes} <= {h for h, _ in old_nodes} | {h for h, _ in made}, op
        if op == "same":  # at most each level's open last node is built again
            assert len(made) <= len(levels)


def test_append_builds_only_the_last_path():
    rng = random.Random(3)
    entries = [_entry(rng) for _ in range(5000)]
    _, height, _, levels = tree.build(entries)
    _, _, made, _ = tree.build(entries + [_entry(rng)], previous=levels)
    assert 1 <= len(made) <= height + 1


def test_failed_write_is_not_reused(tmp_path, monkeypatch):
    """A snapshot whose pack could not be stored must not leave its chunks or nodes to be
    reused by the lineage's next snapshot as if they were stored."""
    with casstore.open(str(tmp_path / "repo")) as store:
        msgs = [f"message {i} " + "x" * 1500 for i in range(40)]
        store.snapshot({"m": msgs}, agent_id="a")
        real = backend_mod._write_temp

        def failing(path, data, *args):
            if f"{os.sep}packs{os.sep}" in path:
                raise OSError("disk full")
            return real(path, data, *args)

        monkeypatch.setattr(backend_mod, "_write_temp", failing)
        grown = msgs + [f"new {i} " + "y" * 1500 for i in range(10)]
        with pytest.raises(casstore.StorageError, match="disk full"):
            store.snapshot({"m": grown}, agent_id="a")
        monkeypatch.setattr(backend_mod, "_write_temp", real)
        assert len(store.list()) == 1                                      # no manifest of the failed write
        assert not [p for p in (tmp_path / "repo" / "snapshots").rglob("*") if p.name.startswith(".")]  # no temp left
        info = store.snapshot({"m": grown + ["z" * 2000]}, agent_id="a")
        store.drop_caches()
        assert store.restore(info.id) == {"m": grown + ["z" * 2000]}
        assert store.verify(info.id, deep=True).ok
