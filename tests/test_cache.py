"""The chunk cache: hits give the very bytes storage would, it stays within its bound, and it never hides damage
from a cold read or from verify."""

from __future__ import annotations

import os

import numpy as np
import pytest

import casstore
from casstore.cache import ENTRY_OVERHEAD, ChunkCache
from casstore.pack import KIND_NODE
from casstore.repository import read_pack_trailer

from .helpers import add_turn, chat_state, deep_equal


def _flip(path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def _packs(repo_dir):
    return sorted(p for p in (repo_dir / "packs").rglob("*") if p.is_file())


def test_lru_keeps_recent_entries_within_its_bound():
    cache = ChunkCache(10 * (1000 + ENTRY_OVERHEAD))
    items = [(bytes([i]) * 32, bytes([i]) * 1000) for i in range(30)]
    cache.put_many(items[:10])
    assert cache.get_many([items[0][0]]) == {items[0][0]: items[0][1]}   # 0 is now the most recent
    cache.put_many(items[10:12])
    assert cache.size <= cache.max_bytes and len(cache) == 10
    held = cache.get_many(h for h, _ in items)
    assert items[0][0] in held and items[1][0] not in held and items[2][0] not in held
    cache.put_many([(b"x" * 32, b"y" * (cache.max_bytes + 1))])        # bigger than the cache: not kept
    assert b"x" * 32 not in cache.get_many([b"x" * 32])
    cache.put_many(items)
    assert cache.size <= cache.max_bytes and cache.size == len(cache) * (1000 + ENTRY_OVERHEAD)
    cache.clear()
    assert len(cache) == 0 and cache.size == 0


def test_warm_restore_reads_no_storage_and_returns_identical_state(store):
    state = chat_state(40)
    state["emb"] = np.random.default_rng(1).normal(size=(300, 32)).astype(np.float32)
    info = store.snapshot(state)
    backend = store._repo.backend
    gets = backend.stats["get"]
    assert deep_equal(store.restore(info.id), state)      # written through: nothing read
    assert backend.stats["get"] == gets
    store.drop_caches()
    assert deep_equal(store.restore(info.id), state)      # cold: from the packs, and fills the cache
    assert backend.stats["get"] > gets
    gets = backend.stats["get"]
    assert deep_equal(store.restore(info.id), state)
    assert backend.stats["get"] == gets


def test_cache_stays_within_its_bound(tmp_path):
    with casstore.open(str(tmp_path / "repo"), cache_bytes=256 << 10) as store:
        state = chat_state(5)
        ids = []
        for i in range(30):
            add_turn(state, i)
            ids.append(store.snapshot(state).id)
            assert store._repo.cache.size <= 256 << 10
        for snap_id in ids:
            store.restore(snap_id)
            assert store._repo.cache.size <= 256 << 10
        assert len(store._repo.cache) > 0


def test_cold_cache_after_corruption_raises_but_warm_cache_serves_verified_bytes(store, repo_dir):
    state = {"blob": os.urandom(300_000)}
    info = store.snapshot(state)
    [pack] = _packs(repo_dir)
    _flip(pack, 1000)
    assert deep_equal(store.restore(info.id), state)      # the cache holds the bytes as written and hashed
    store.drop_caches()
    with pytest.raises(casstore.IntegrityError, match="does not match its hash") as e:
        store.restore(info.id)
    assert info.id in str(e.value) and pack.name in str(e.value)


def test_verify_reads_tree_nodes_from_storage_not_the_cache(store, repo_dir):
    info = store.snapshot(chat_state(20))
    [pack] = _packs(repo_dir)
    key = f"packs/{pack.parent.name}/{pack.name}"
    _size, entries = read_pack_trailer(store._repo.backend, key)
    node = next(e for e in entries if e.kind == KIND_NODE)
    _flip(pack, node.offset + node.stored_len // 2)
    store.restore(info.id)                                 # warm: served from the cache
    report = store.verify()
    assert not report.ok and any(p.kind == "missing-chunk" for p in report.problems)


@pytest.mark.parametrize("cache_bytes", [0, 64 << 20])
def test_reads_with_and_without_the_cache_agree(tmp_path, cache_bytes):
    blob = os.urandom(12 << 20)                            # stored raw: two packs, read on several threads
    emb = np.random.default_rng(2).normal(size=(20_000, 64)).astype(np.float32)
    state = {"a": blob, "b": blob, "emb": emb, "chat": chat_state(10)}
    with casstore.open(str(tmp_path / "repo"), cache_bytes=cache_bytes) as store:
        info = store.snapshot(state)
        store.drop_caches()
        assert deep_equal(store.restore(info.id), state)
        assert deep_equal(store.restore(info.id), state)
        repo = store._repo
        fields = repo.fields(bytes.fromhex(info.id))
        whole = bytes(repo.read(fields))
        for start, end in [(0, 1), (12345, 4_000_000), (fields["raw"] - 70_000, fields["raw"])]:
            store.drop_caches()
            assert bytes(repo.read(fields, start, end)) == whole[start:end]
        if cache_bytes == 0:
            assert len(repo.cache) == 0


def test_damage_found_by_one_reading_thread_fails_the_restore(tmp_path):
    repo_dir = tmp_path / "repo"
    with casstore.open(str(repo_dir), cache_bytes=0) as store:
        info = store.snapshot({"blob": os.urandom(20 << 20)})   # stored raw in two packs, read on several threads
    packs = _packs(repo_dir)
    assert len(packs) == 2
    for pack in packs:
        _flip(pack, 5000)
    with casstore.open(str(repo_dir), cache_bytes=0) as store:
        with pytest.raises(casstore.IntegrityError, match="does not match its hash") as e:
            store.restore(info.id)
        assert info.id in str(e.value)


def _text(nbytes: int, seed: int) -> str:
    rng = np.random.default_rng(seed)
    words = np.array(["".join(chr(97 + c) for c in rng.integers(0, 26, rng.integers(2, 9))) for _ in range(2000)])
    return " ".join(rng.choice(words, nbytes // 5))[:nbytes]


def _big_compressible_state() -> dict:
    rng = np.random.default_rng(3)
    return {"texts": [_text(6 << 20, s) for s in range(2)],
            "arrays": [rng.standard_normal(1 << 20, dtype=np.float32).reshape(-1, 64) for _ in range(3)],
            "tail": rng.standard_normal(1000, dtype=np.float32)}


def test_big_restore_of_compressed_runs_matches_and_names_a_damaged_chunk(tmp_path):
    """Text (zstd) and float arrays (shuffled, plane by plane), stored back to back in packs, decoded run by run
    straight into the restore buffer on the read pipeline; a flipped byte inside one frame of a run
    is an IntegrityError naming the snapshot, the chunk and its pack."""
    from casstore.compress import ZSTD, ZSTD_PLANES
    from casstore.pack import read_entries
    repo_dir = tmp_path / "repo"
    state = _big_compressible_state()
    with casstore.open(str(repo_dir), cache_bytes=0) as store:
        info = store.snapshot(state)
        store.drop_caches()
        assert deep_equal(store.restore(info.id), state)
    damaged = {}
    for pack in _packs(repo_dir):
        entries = read_entries(pack.read_bytes())
        for method in (ZSTD, ZSTD_PLANES):
            found = [e for e in entries if e.method == method]
            if found and method not in damaged:
                e = found[len(found) // 2]
                damaged[method] = (pack, e)
    assert set(damaged) == {ZSTD, ZSTD_PLANES}
    for method, (pack, e) in damaged.items():
        original = pack.read_bytes()
        _flip(pack, e.offset + e.stored_len // 2)
        with casstore.open(str(repo_dir), cache_bytes=0) as store:
            with pytest.raises(casstore.IntegrityError) as err:
                store.restore(info.id)
        message = str(err.value)
        assert info.id in message and "chunk " in message and pack.name in message
        pack.write_bytes(original)


def test_damaged_frame_among_small_chunks_is_named(store, repo_dir):
    """A zstd frame that does not decode is reported with its chunk and pack, as a hash mismatch is."""
    from casstore.compress import ZSTD
    from casstore.pack import read_entries
    info = store.snapshot(chat_state(40))
    [pack] = _packs(repo_dir)
    entries = [e for e in read_entries(pack.read_bytes()) if e.method == ZSTD]
    e = entries[len(entries) // 2]
    data = bytearray(pack.read_bytes())
    data[e.offset:e.offset + 4] = b"\0\0\0\0"   # breaks the frame's magic number: it cannot decode
    pack.write_bytes(bytes(data))
    store.drop_caches()
    with pytest.raises(casstore.IntegrityError, match=f"chunk {e.hash.hex()} in pack {pack.name}") as err:
        store.restore(info.id)
    assert info.id in str(err.value)


def test_inflate_into_decodes_runs_and_refuses_short_ones():
    import zstandard
    from casstore.compress import SCRATCH, ZSTD, ZSTD_SHUFFLE, Codec, shuffle
    rng = np.random.default_rng(5)
    chunks = [memoryview(rng.standard_normal(4096, dtype=np.float32).view(np.uint8)) for _ in range(SCRATCH // 16384 + 3)]
    zc = zstandard.ZstdCompressor()
    frames = b"".join(zc.compress(shuffle(c, 4)) for c in chunks)
    out = bytearray(16384 * len(chunks))
    Codec().inflate_into(ZSTD_SHUFFLE, frames, memoryview(out), 4, 16384)
    assert bytes(out) == b"".join(bytes(c) for c in chunks)
    plain = zc.compress(b"abc" * 1000) + zc.compress(b"xyz" * 500)
    out = bytearray(4500)
    Codec().inflate_into(ZSTD, plain, memoryview(out))
    assert bytes(out) == b"abc" * 1000 + b"xyz" * 500
    with pytest.raises(casstore.IntegrityError, match="expected"):
        Codec().inflate_into(ZSTD, plain, memoryview(bytearray(4600)))
