"""The read path's bookkeeping: where chunks land in a read, which copy the index names, and that damage is
still named exactly where chunks are decoded straight into the restore buffer."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest

import casstore
from casstore.errors import IntegrityError
from casstore.index import Index
from casstore.pack import KIND_DATA, PackEntry
from casstore.repository import _layout

from .helpers import chat_state, deep_equal


def _assemble(entries, data, start, end) -> bytes:
    """Bytes [start, end) rebuilt from _layout's answer alone."""
    at, spans, sizes = _layout(entries, start, end)
    out = bytearray(end - start)
    for h, (dst, n) in at.items():
        assert sizes[h] == n
        out[dst:dst + n] = data[h]
    for h, dst, a, b in spans:
        assert h not in at
        out[dst:dst + b - a] = data[h][a:b]
    return bytes(out)


@pytest.mark.parametrize("repeats", [False, True])
def test_layout_places_every_byte_of_any_range(repeats):
    rng = random.Random(7)
    data = {bytes([i]) * 32: os.urandom(rng.randint(1, 300)) for i in range(40)}
    hashes = list(data)
    order = hashes + ([hashes[3], hashes[0], hashes[3]] if repeats else [])
    rng.shuffle(order)
    entries = [(h, len(data[h])) for h in order]
    whole = b"".join(data[h] for h in order)
    at, spans, _ = _layout(entries, 0, len(whole))
    assert bool(spans) == repeats                      # without repeats every chunk lands once and whole
    for start, end in [(0, len(whole)), (0, 1), (5, len(whole) - 3), (len(whole) // 2, len(whole)), (17, 17)]:
        assert _assemble(entries, data, start, end) == whole[start:end]


def test_layout_refuses_a_tree_that_is_too_short_or_gives_two_sizes():
    h = b"a" * 32
    with pytest.raises(IntegrityError, match="fewer than"):
        _layout([(h, 10)], 0, 11)
    with pytest.raises(IntegrityError, match="two sizes"):
        _layout([(h, 10), (b"b" * 32, 5), (h, 12)], 0, 27)


def test_locate_prefers_a_copy_outside_condemned_packs(tmp_path):
    index = Index(str(tmp_path / "index"))
    try:
        chunk = b"c" * 32
        first, second = b"1" * 32, b"2" * 32
        index.add_packs([(first, 100, [PackEntry(chunk, KIND_DATA, 1, 0, 0, 10, 20)]),
                         (second, 100, [PackEntry(chunk, KIND_DATA, 1, 0, 40, 10, 20),
                                        PackEntry(b"d" * 32, KIND_DATA, 0, 0, 50, 7, 7)])])
        found = index.locate([chunk, b"d" * 32, b"x" * 32])
        assert set(found) == {chunk, b"d" * 32}
        assert found[b"d" * 32] == (second, KIND_DATA, 0, 0, 50, 7, 7)
        assert found[chunk].pack in (first, second) and found[chunk].raw_len == 20
        condemned = found[chunk].pack
        index.set_condemned({condemned: 0.0})
        other = second if condemned == first else first
        assert index.locate([chunk])[chunk].pack == other
    finally:
        index.close()


def test_small_restore_with_repeated_chunks_matches(store):
    note = "x" * 3000 + "note"                         # a medium string blob: the same chunks twice in the tree
    state = {"a": note, "b": note, "chat": chat_state(8), "c": note}
    info = store.snapshot(state)
    store.drop_caches()
    assert deep_equal(store.restore(info.id), state)
    assert deep_equal(store.restore(info.id), state)   # warm: placed chunks copied from the cache


@pytest.mark.parametrize("encrypt", [False, True])
def test_big_restore_mixing_runs_and_repeated_chunks_matches(tmp_path, encrypt):
    """Past the cache, chunks that land once are decoded in runs straight into place, and
    repeated ones into their own buffers: one read can hold both kinds."""
    text = " ".join(f"line {i} of a long tool result" for i in range(100_000)).encode()
    state = {"a": text, "b": text, "c": os.urandom(1 << 20), "d": [text[:5000]] * 3, "e": text + b"x"}
    kw = {"password": "pw", "encrypt": True, "index_path": str(tmp_path / "index")} if encrypt else {}
    with casstore.open(str(tmp_path / "repo"), cache_bytes=1 << 20, **kw) as s:
        info = s.snapshot(state)
        s.drop_caches()
        assert s.restore(info.id) == state


def test_damaged_raw_chunk_in_a_small_restore_is_named(store, repo_dir):
    state = {"blob": os.urandom(200_000), "chat": chat_state(5)}
    info = store.snapshot(state)
    [pack] = sorted(p for p in (repo_dir / "packs").rglob("*") if p.is_file())
    data = bytearray(pack.read_bytes())
    data[100_000] ^= 0x40                              # inside the raw (incompressible) blob's chunks
    pack.write_bytes(bytes(data))
    store.drop_caches()
    with pytest.raises(casstore.IntegrityError, match=f"in pack {pack.name} does not match its hash") as err:
        store.restore(info.id)
    assert info.id in str(err.value)


def test_frame_that_breaks_a_run_decoded_into_place_is_named_exactly(tmp_path):
    """With no cache every read takes the big path: runs of adjacent frames are decoded by one zstd
    stream straight into the buffer. A frame in the middle of a run that does not decode is
    reported as that chunk, not as the run."""
    from casstore.compress import ZSTD
    from casstore.pack import read_entries
    repo_dir = tmp_path / "repo"
    with casstore.open(str(repo_dir), cache_bytes=0) as store:
        state = chat_state(40)
        info = store.snapshot(state)
        assert deep_equal(store.restore(info.id), state)
    [pack] = sorted(p for p in (repo_dir / "packs").rglob("*") if p.is_file())
    entries = sorted((e for e in read_entries(pack.read_bytes()) if e.method == ZSTD), key=lambda e: e.offset)
    runs = [b for a, b, c in zip(entries, entries[1:], entries[2:])
            if a.offset + a.stored_len == b.offset and b.offset + b.stored_len == c.offset]
    e = runs[len(runs) // 2]                           # a frame with adjacent frames on both sides
    data = bytearray(pack.read_bytes())
    data[e.offset:e.offset + 4] = b"\0\0\0\0"
    pack.write_bytes(bytes(data))
    with casstore.open(str(repo_dir), cache_bytes=0) as store:
        with pytest.raises(casstore.IntegrityError, match=f"chunk {e.hash.hex()} in pack {pack.name}: zstd"):
            store.restore(info.id)


def test_arrays_restored_from_a_mapped_buffer_stay_valid_and_writable(tmp_path):
    """A read of MMAP_BUFFER bytes or more lands in an anonymous mapping; the arrays restored
    from it are views that keep it alive after the store is gone."""
    import gc

    import numpy as np

    from casstore.repository import MMAP_BUFFER
    rng = np.random.default_rng(11)
    state = {"emb": rng.standard_normal((MMAP_BUFFER // 256 + 100, 64), dtype=np.float32), "text": "t" * 5000}
    with casstore.open(str(tmp_path / "repo"), cache_bytes=0) as store:
        info = store.snapshot(state)
        restored = store.restore(info.id)
    gc.collect()
    assert deep_equal(restored, state)
    restored["emb"][0, 0] = 42.0
    assert restored["emb"][0, 0] == 42.0 and state["emb"][0, 0] != 42.0


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_restored_array_is_the_process_own_memory(tmp_path):
    """A big restore's buffer is a private mapping: a forked child writing into a restored array
    changes its own copy, never the parent's (a shared anonymous mapping would hand it both)."""
    state = {"a": np.arange(2 << 20, dtype=np.float32)}   # 8 MiB: the buffer is an anonymous mapping
    with casstore.open(str(tmp_path / "repo"), cache_bytes=0) as store:
        info = store.snapshot(state)
        store.drop_caches()
        got = store.restore(info.id)["a"]
    assert got.flags.writeable
    pid = os.fork()
    if pid == 0:   # the child: overwrite, then leave without running any Python cleanup
        got[:] = -1
        os._exit(0 if got[0] == -1 else 1)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
    assert np.array_equal(got, state["a"])
