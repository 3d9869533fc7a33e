"""Damage is detected and named; the index is a cache that rebuilds from storage."""

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
from casstore.pack import FOOTER_SIZE

from .helpers import add_turn, chat_state, deep_equal

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _packs(repo_dir):
    return sorted(p for p in (repo_dir / "packs").rglob("*") if p.is_file())


def test_flipped_pack_byte_is_detected_on_restore(store, repo_dir):
    info = store.snapshot({"blob": os.urandom(300_000)})
    [pack] = _packs(repo_dir)
    data = bytearray(pack.read_bytes())
    data[1000] ^= 0x01
    pack.write_bytes(bytes(data))
    store.drop_caches()   # the store cached what it wrote; a new process would read the pack
    with pytest.raises(casstore.IntegrityError, match="does not match its hash") as e:
        store.restore(info.id)
    assert pack.name in str(e.value)


def test_truncated_pack_is_an_error_not_a_crash(store, repo_dir):
    info = store.snapshot(chat_state(30))
    for pack in _packs(repo_dir):
        pack.write_bytes(pack.read_bytes()[:100])
    store.drop_caches()
    with pytest.raises(casstore.CasstoreError):
        store.restore(info.id)


def test_missing_pack_is_named(store, repo_dir):
    info = store.snapshot(chat_state(30))
    for pack in _packs(repo_dir):
        pack.unlink()
    store.drop_caches()
    with pytest.raises(casstore.IntegrityError, match="not in any known pack"):
        store.restore(info.id)


def test_index_deleted_and_rebuilt_restores_every_snapshot(repo_dir):
    saved = []
    with casstore.open(str(repo_dir)) as store:
        state = chat_state(40)
        state["emb"] = np.random.default_rng(0).normal(size=(500, 64)).astype(np.float32)
        for i in range(15):
            add_turn(state, i)
            state["emb"][i] = i
            info = store.snapshot(state, agent_id="a", session_id=str(i % 3))
            saved.append((info, {**state, "messages": list(state["messages"]), "emb": state["emb"].copy()}))
    shutil.rmtree(repo_dir / "index")
    with casstore.open(str(repo_dir)) as store:
        assert store.index_rebuild() == 15
        assert [i.id for i in store.list()] == [i.id for i, _ in saved]
        for info, expected in saved:
            assert store.get_metadata(info.id) == info
            assert deep_equal(store.restore(info.id), expected)
        # lineages survive the rebuild: the next snapshot continues the chain
        nxt = store.snapshot({"x": 1}, agent_id="a", session_id="2")
        assert nxt.parent == saved[-1][0].id and nxt.index == saved[-1][0].index + 1


def test_unknown_id_triggers_sync_after_index_loss(repo_dir):
    with casstore.open(str(repo_dir)) as store:
        info = store.snapshot({"k": "v"})
    shutil.rmtree(repo_dir / "index")
    with casstore.open(str(repo_dir)) as store:
        assert store.restore(info.id[:16]) == {"k": "v"}


def test_pack_trailer_that_lies_is_refused(store, repo_dir):
    store.snapshot({"blob": os.urandom(100_000)})
    [pack] = _packs(repo_dir)
    data = bytearray(pack.read_bytes())
    data[-FOOTER_SIZE:-FOOTER_SIZE + 4] = (10 ** 6).to_bytes(4, "little")  # claims a million entries
    pack.write_bytes(bytes(data))
    from casstore.backend import Backend
    from casstore.repository import read_pack_trailer
    with pytest.raises(casstore.IntegrityError, match="entries|larger than the pack"):
        read_pack_trailer(Backend(str(repo_dir)), "packs/" + pack.parent.name + "/" + pack.name)


def test_decompression_bomb_is_refused():
    import zstandard
    from casstore.compress import MAX_CHUNK, ZSTD, Codec
    bomb = zstandard.ZstdCompressor().compress(b"\0" * (8 << 20))
    with pytest.raises(casstore.IntegrityError, match="bound"):
        Codec().decompress(ZSTD, bomb, MAX_CHUNK + 1)
    with pytest.raises(casstore.IntegrityError, match="expected"):
        Codec().decompress(ZSTD, bomb, 1024)   # claims 1 KiB, expands to 8 MiB: stopped at the claim


def test_tampered_manifest_is_refused(store, repo_dir):
    info = store.snapshot({"k": 1})
    [mf] = [p for p in (repo_dir / "snapshots").rglob("*") if p.is_file()]
    data = bytearray(mf.read_bytes())
    data[-1] ^= 1
    mf.write_bytes(bytes(data))
    shutil.rmtree(repo_dir / "index", ignore_errors=True)
    with casstore.open(str(repo_dir)) as again:
        assert again.index_rebuild() == 0  # a manifest that does not hash to its id is not trusted
        with pytest.raises(casstore.SnapshotNotFoundError):
            again.restore(info.id)


@pytest.mark.parametrize("delay", [0.05, 0.3, 0.7])
def test_sigkill_mid_snapshot_leaves_earlier_snapshots_restorable(repo_dir, delay):
    proc = subprocess.Popen([sys.executable, "-m", "tests.chat_writer", str(repo_dir)],
                            stdout=subprocess.PIPE, text=True, cwd=ROOT)
    first = proc.stdout.readline()  # the writer is up and has committed once; kill it mid-stream later
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    out, _ = proc.communicate(timeout=30)
    committed = [line.split() for line in (first + out).splitlines() if line.strip()]
    assert committed, "the writer committed nothing before it was killed"
    with casstore.open(str(repo_dir)) as store:
        for snap_id, step in committed:
            state = store.restore(snap_id)
            assert state["emb"][int(step) % 2000][0] == int(step)
        assert len(store.list()) >= len(committed)


def test_chunk_tree_that_lies_about_sizes_is_refused(store):
    info = store.snapshot({"blob": os.urandom(200_000), "text": "t" * 1000})
    repo = store._repo
    fields = repo.fields(bytes.fromhex(info.id))
    entries = repo.entries(fields)
    longer = [(entries[0][0], entries[0][1] + 7)] + entries[1:]
    with pytest.raises(casstore.IntegrityError, match="the chunk tree says"):
        repo.read(fields, entries=longer)
    with pytest.raises(casstore.IntegrityError, match="fewer than"):
        repo.read(fields, entries=entries[:-1])
    twice = entries + [(entries[0][0], entries[0][1] + 1)]
    with pytest.raises(casstore.IntegrityError, match="two sizes"):
        repo.read(fields, 0, fields["raw"] + entries[0][1] + 1, entries=twice)
    assert deep_equal(store.restore(info.id)["text"], "t" * 1000)
