"""Merkle inclusion proofs verify with nothing but the proof and the root."""

from __future__ import annotations

import json

import numpy as np
import pytest

import casstore
from casstore.tree import Proof

from .helpers import chat_state


@pytest.fixture
def two_snapshots(store):
    state = chat_state(80)
    state["emb"] = np.random.default_rng(0).normal(size=(3000, 64)).astype(np.float32)
    a = store.snapshot(state)
    state["messages"].append({"role": "user", "content": "new message " * 40, "id": -1})
    b = store.snapshot(state)
    return a, b


def test_every_chunk_of_a_snapshot_proves(store, two_snapshots):
    a, _ = two_snapshots
    chunks = store.chunks(a.id)
    assert len(chunks) > 50
    for h in chunks:
        proof = store.prove(a.id, h)
        assert casstore.verify_proof(proof, a.root)
        assert casstore.verify_proof(json.loads(json.dumps(proof.to_dict())), a.root)


def test_proof_fails_for_another_snapshot_root(store, two_snapshots):
    a, b = two_snapshots
    only_in_b = next(h for h in store.chunks(b.id) if h not in set(store.chunks(a.id)))
    assert not casstore.verify_proof(store.prove(b.id, only_in_b), a.root)
    with pytest.raises(casstore.ChunkNotFoundError):
        store.prove(a.id, only_in_b)


def test_flipped_bit_fails(store, two_snapshots):
    a, _ = two_snapshots
    d = store.prove(a.id, store.chunks(a.id)[7]).to_dict()
    for step in range(len(d["steps"])):
        bad = json.loads(json.dumps(d))
        h = bad["steps"][step]["entries"][0][0]
        bad["steps"][step]["entries"][0][0] = ("0" if h[0] != "0" else "1") + h[1:]
        assert not casstore.verify_proof(bad, a.root)
        bad = json.loads(json.dumps(d))
        bad["steps"][step]["entries"][0][1] += 1  # a size is covered by the node hash too
        assert not casstore.verify_proof(bad, a.root)
    bad = dict(d, chunk="ff" + d["chunk"][2:])
    assert not casstore.verify_proof(bad, a.root)


def test_reordered_or_truncated_path_fails(store, two_snapshots):
    a, _ = two_snapshots
    proof = store.prove(a.id, store.chunks(a.id)[-1])
    assert len(proof.steps) >= 2
    assert not casstore.verify_proof(Proof(proof.chunk, tuple(reversed(proof.steps))), a.root)
    assert not casstore.verify_proof(Proof(proof.chunk, proof.steps[:-1]), a.root)
    assert not casstore.verify_proof(Proof(proof.chunk, ()), a.root)
    level, pos, entries = proof.steps[0]
    swapped = (level, (pos + 1) % len(entries), entries) if len(entries) > 1 else None
    if swapped:
        assert not casstore.verify_proof(Proof(proof.chunk, (swapped, *proof.steps[1:])), a.root)


def test_garbage_proofs_are_false_not_errors():
    assert not casstore.verify_proof({"chunk": "zz", "steps": []}, "00" * 32)
    assert not casstore.verify_proof({"nothing": 1}, "00" * 32)
    assert not casstore.verify_proof({"chunk": "00" * 32, "steps": [{"level": 0, "position": 5, "entries": []}]}, "00" * 32)
