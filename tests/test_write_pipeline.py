"""A write bigger than a compression task and a pack: chunks are compressed while cutting goes on, packs put as they fill."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest

import casstore
from casstore import crypto, repository

from .helpers import deep_equal


@pytest.fixture
def small_batches(monkeypatch, tmp_path):
    """Tasks of 256 KiB and packs of 1 MiB, so a few MB of state takes many of each; a cheap KDF."""
    monkeypatch.setattr(repository, "COMPRESS_BATCH", 256 << 10)
    monkeypatch.setattr(repository, "PACK_TARGET", 1 << 20)
    monkeypatch.setattr(crypto, "SCRYPT_N", 1 << 12)
    monkeypatch.setenv("CASSTORE_CACHE_DIR", str(tmp_path / "cache"))
    real = crypto.wrap
    monkeypatch.setattr(crypto, "wrap", lambda *a, n=None, **k: real(*a, n=1 << 12, **k))


def big_state(seed: int) -> dict:
    rng = random.Random(seed)
    words = ["".join(rng.choice("abcdefghijklmnop") for _ in range(rng.randint(2, 8))) for _ in range(2000)]
    return {
        "texts": [" ".join(rng.choice(words) for _ in range(40_000)) for _ in range(4)],
        "noise": rng.randbytes(1 << 20),
        "arrays": [np.random.default_rng(seed).standard_normal((4000, 64), dtype=np.float32) for _ in range(3)],
        "messages": [{"role": "user", "content": " ".join(rng.choice(words) for _ in range(300))} for _ in range(300)],
    }


@pytest.mark.parametrize("encrypt", [False, True])
def test_a_write_of_many_tasks_and_packs_restores_and_verifies(tmp_path, small_batches, encrypt):
    kw = {"password": "pw", "encrypt": True} if encrypt else {}
    state = big_state(1)
    with casstore.open(str(tmp_path / "repo"), **kw) as store:
        info = store.snapshot(state)
        packs = list((tmp_path / "repo" / "packs").rglob("*"))
        assert len([p for p in packs if p.is_file()]) >= 3   # ~3.5 MB stored in packs of ~1 MiB
        assert info.stored_size < info.raw_size   # the texts and arrays compressed, the noise stored raw
        again = store.snapshot(state)
        assert again.new_chunk_count == 0 and again.stored_size < 4096   # only the new tree root, if any
        assert deep_equal(store.restore(info.id), state)
        assert store.verify(deep=True).ok


def test_chunks_that_compress_and_that_do_not_are_stored_by_the_right_method(tmp_path, small_batches):
    with casstore.open(str(tmp_path / "repo")) as store:
        store.snapshot(big_state(2))
        methods = {loc.method for _, loc in store._repo.index.iter_chunks()}
    assert methods >= {0, 1, 4}   # raw (the random bytes), zstd (text), byte shuffle and planes (floats)


def test_shuffled_blocks_take_their_own_level_and_every_level_restores(tmp_path, small_batches):
    from casstore.compress import SHUFFLE_LEVEL, ZSTD, ZSTD_PLANES, Codec
    assert Codec(3).shuffle_level == min(3, SHUFFLE_LEVEL) and Codec(3, shuffle_level=5).shuffle_level == 5
    assert Codec(1, shuffle_level=None).shuffle_level == 1   # never above the main level unless asked
    state = big_state(3)
    stored = {}
    for level in (1, 3):
        with casstore.open(str(tmp_path / f"repo{level}"), shuffle_level=level) as store:
            info = store.snapshot(state)
            assert deep_equal(store.restore(info.id), state)
            stored[level] = {m: sum(loc.stored_len for _, loc in store._repo.index.iter_chunks() if loc.method == m)
                             for m in (ZSTD, ZSTD_PLANES)}
    assert stored[3][ZSTD_PLANES] != stored[1][ZSTD_PLANES]  # the float blocks took each level...
    assert stored[3][ZSTD] == stored[1][ZSTD]                  # ...and the other chunks the main level, 3
    with casstore.open(str(tmp_path / "repo1"), shuffle_level=3) as store:   # the level is not part of the format
        assert deep_equal(store.restore(store.list()[0].id), state)
    with pytest.raises(casstore.ConfigurationError):
        casstore.open(str(tmp_path / "repo1"), shuffle_level=0)


def test_a_pack_in_pieces_is_named_by_the_hash_of_its_bytes_and_reads_back():
    import blake3

    from casstore.pack import PackWriter, read_entries
    writer = PackWriter()
    chunks = [(bytes([i]) * 32, memoryview(bytes([i]) * (100 + i))) for i in range(5)]
    for h, data in chunks:
        writer.add(h, 0, 0, 0, data, len(data))
    pack_id, pieces, entries = writer.pieces()
    data = b"".join(pieces)
    assert pack_id == blake3.blake3(data).digest()
    assert read_entries(data) == entries and [e.hash for e in entries] == [h for h, _ in chunks]
    assert [data[e.offset:e.offset + e.stored_len] for e in entries] == [bytes(d) for _, d in chunks]


def test_a_big_write_leaves_its_packs_out_of_the_page_cache_and_a_small_one_keeps_its_pack(tmp_path, small_batches,
                                                                                          monkeypatch):
    from casstore import backend as backend_module
    advised: set[int] = set()   # inodes of the files the kernel was told to drop
    monkeypatch.setattr(backend_module.os, "posix_fadvise", lambda fd, offset, length, advice: advised.add(
        os.fstat(fd).st_ino) if advice == os.POSIX_FADV_DONTNEED else None)
    repo = tmp_path / "repo"

    def pack_inodes():
        return {p.stat().st_ino for p in (repo / "packs").rglob("*") if p.is_file()}

    with casstore.open(str(repo)) as store:
        big = store.snapshot(big_state(4), "big")
        big_packs = pack_inodes()
        assert len(big_packs) >= 3 and advised == big_packs               # every pack of the big write
        small = store.snapshot({"note": "hello"}, "small")
        assert len(pack_inodes() - big_packs) == 1 and advised == big_packs  # the only pack of a small one: kept
        assert deep_equal(store.restore(big.id), big_state(4)) and store.restore(small.id) == {"note": "hello"}


def test_big_ascii_strings_are_chunked_from_their_own_buffer(tmp_path):
    import gc

    from casstore.utf8view import VIEW_MIN, utf8
    text = "".join(chr(97 + i % 26) for i in range(VIEW_MIN + 7))
    view = utf8(text)
    assert view.readonly and view.format == "B" and bytes(view) == text.encode()
    assert not isinstance(view.obj, bytes)                       # no copy was made
    del text
    gc.collect()
    assert bytes(view[:3]) == b"abc"                             # the view keeps its str alive
    for copied in ("é" * VIEW_MIN, "a" * (VIEW_MIN - 1)):        # not ASCII, or small: encoded
        assert isinstance(utf8(copied).obj, bytes) and bytes(utf8(copied)) == copied.encode()
    state = {"ascii": "agent " * VIEW_MIN, "accents": "été " * VIEW_MIN, "list": ["x" * (2 * VIEW_MIN), "y"]}
    with casstore.open(str(tmp_path / "repo")) as store:
        info = store.snapshot(state)
        store.drop_caches()
        assert store.restore(info.id) == state
        assert store.verify(deep=True).ok


def test_a_big_write_pauses_the_cyclic_gc_while_it_cuts_and_switches_it_back_on(tmp_path, small_batches, monkeypatch):
    import gc

    from casstore import gcpause
    from casstore.chunker import Chunker
    monkeypatch.setattr(gcpause, "PAUSE_MIN", 1 << 20)
    seen: list[bool] = []
    real = Chunker.cut_blob
    monkeypatch.setattr(Chunker, "cut_blob", lambda self, *a: (seen.append(gc.isenabled()), real(self, *a))[1])
    with casstore.open(str(tmp_path / "repo")) as store:
        assert gc.isenabled()
        store.snapshot(big_state(5), "big")                       # ~7 MB of streams: paused
        assert seen and not any(seen) and gc.isenabled()
        seen.clear()
        store.snapshot({"blob": b"x" * 200_000}, "small")         # below PAUSE_MIN: untouched
        assert seen == [True]
        monkeypatch.setattr(Chunker, "cut_blob", lambda self, *a: (_ for _ in ()).throw(RuntimeError("cut failed")))
        with pytest.raises(RuntimeError):
            store.snapshot(big_state(6), "failing")
        assert gc.isenabled()                                     # back on after a failure too
        gc.disable()
        try:
            monkeypatch.setattr(Chunker, "cut_blob", real)
            store.snapshot(big_state(7), "app-disabled")
            assert not gc.isenabled()                             # the application's choice stands
        finally:
            gc.enable()
