"""Shuffled numeric blocks stored plane by plane (compress.ZSTD_PLANES, repository format 3):
a zstd frame per byte plane, decoded alone or in runs, refused when the frames do not add up to
the chunk; a format-2 repository keeps writing one frame per block for the versions that read it."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import casstore
from casstore.compress import RAW, SCRATCH, ZSTD_PLANES, ZSTD_SHUFFLE, Codec
from casstore.errors import IntegrityError
from casstore.pack import KIND_DATA, read_entries

from .helpers import deep_equal

MiB = 1 << 20
rng = np.random.default_rng(11)
ARRAYS = {
    "float32 normal": rng.standard_normal(64 * 1024, dtype=np.float32),
    "float64 normal": rng.standard_normal(32 * 1024),
    "int16 small": rng.integers(-50, 50, 128 * 1024, dtype=np.int16),
    "int64 arange": np.arange(32 * 1024, dtype=np.int64),
    "complex64": (rng.standard_normal(32 * 1024) + 1j * rng.standard_normal(32 * 1024)).astype(np.complex64),
    "float32 zeros": np.zeros(64 * 1024, dtype=np.float32),
}


def _chunks(a: np.ndarray, size: int) -> list[memoryview]:
    mv = memoryview(a).cast("B")
    return [mv[i:i + size] for i in range(0, len(mv), size)]


@pytest.mark.parametrize("name", ARRAYS)
@pytest.mark.parametrize("size", [16384, 65536])
def test_planes_round_trip_alone_and_in_runs(name, size):
    a = ARRAYS[name]
    chunks = _chunks(a, size)
    codec = Codec(3)
    stored = codec.compress_many(chunks, [a.itemsize] * len(chunks), planes=True)
    assert {m for m, _ in stored} == {ZSTD_PLANES}   # each of these arrays has a plane that compresses
    for c, (method, data) in zip(chunks, stored):
        assert bytes(codec.decompress(method, data, len(c), a.itemsize)) == bytes(c)
        out = memoryview(bytearray(len(c)))
        assert codec.decompress(method, data, len(c), a.itemsize, out) is out and bytes(out) == bytes(c)
    run = b"".join(data for _, data in stored)
    out = memoryview(bytearray(a.nbytes))
    codec.inflate_into(ZSTD_PLANES, run, out, a.itemsize, size)
    assert bytes(out) == a.tobytes()


def test_a_run_longer_than_the_scratch_buffer_decodes_in_pieces():
    a = rng.standard_normal(SCRATCH // 4 * 3, dtype=np.float32)   # three scratch buffers' worth
    chunks = _chunks(a, 16384)
    codec = Codec(3)
    stored = codec.compress_many(chunks, [4] * len(chunks), planes=True)
    out = memoryview(bytearray(a.nbytes))
    codec.inflate_into(ZSTD_PLANES, b"".join(d for _, d in stored), out, 4, 16384)
    assert np.array_equal(np.frombuffer(out, dtype=np.float32), a)


def test_planes_store_float32_in_fewer_bytes_than_one_frame():
    """The sign/exponent plane compresses, the mantissa planes go in raw blocks: fewer bytes than
    one shared frame, and a frame per plane."""
    import zstandard
    a = ARRAYS["float32 normal"]
    chunks = _chunks(a, 16384)
    codec = Codec(3)
    planes = codec.compress_many(chunks, [4] * len(chunks), planes=True)
    shared = codec.compress_many(chunks, [4] * len(chunks))
    assert {m for m, _ in shared} == {ZSTD_SHUFFLE}
    split, whole = sum(len(d) for _, d in planes), sum(len(d) for _, d in shared)
    assert split < 0.95 * whole, (split, whole)
    data, sizes = bytes(planes[0][1]), []
    while data:
        frame = zstandard.ZstdDecompressor().decompressobj()
        sizes.append(len(frame.decompress(data)))
        data = frame.unused_data
    assert sizes == [4096] * 4


def test_incompressible_blocks_stay_raw():
    noise = np.frombuffer(rng.bytes(64 * 1024), dtype=np.float32)
    chunks = _chunks(noise, 16384)
    assert {m for m, _ in Codec(3).compress_many(chunks, [4] * len(chunks), planes=True)} == {RAW}


def _plane_chunk():
    a = ARRAYS["float32 normal"][:4096]
    [(method, data)] = Codec(3).compress_many([memoryview(a).cast("B")], [4], planes=True)
    assert method == ZSTD_PLANES
    return a, bytes(data)


@pytest.mark.parametrize("damage,shorter,message", [
    (lambda d: d[:-5], 0, "does not decode|decompressed to"),
    (lambda d: d + d[:100], 0, "does not decode|more than"),
    (lambda d: d, 4, "more than the chunk's"),
    (lambda d: d, -4, "decompressed to 16384 bytes, expected 16388"),
])
def test_plane_frames_that_do_not_make_the_chunk_are_refused(damage, shorter, message):
    a, data = _plane_chunk()
    with pytest.raises(IntegrityError, match=message):
        Codec(3).decompress(ZSTD_PLANES, damage(data), a.nbytes - shorter, 4)


def _methods(repo_dir) -> set[int]:
    return {e.method for p in (repo_dir / "packs").rglob("*") if p.is_file()
            for e in read_entries(p.read_bytes()) if e.kind == KIND_DATA}


@pytest.mark.parametrize("encrypt", [False, True])
def test_format_3_stores_planes_and_restores_them_cold(tmp_path, encrypt):
    repo_dir = tmp_path / "repo"
    kw = {"password": "pw", "encrypt": True, "index_path": str(tmp_path / "index")} if encrypt else {}
    state = {"emb": rng.standard_normal((4096, 256), dtype=np.float32), "ids": np.arange(4096)}
    with casstore.open(str(repo_dir), cache_bytes=0, **kw) as store:
        info = store.snapshot(state)
        store.drop_caches()
        assert deep_equal(store.restore(info.id), state)
        assert store.verify(deep=True).ok
    if not encrypt:   # an encrypted pack's trailer is sealed
        assert ZSTD_PLANES in _methods(repo_dir) and ZSTD_SHUFFLE not in _methods(repo_dir)


def test_flipped_byte_in_a_raw_plane_fails_the_chunk_hash(tmp_path):
    repo_dir = tmp_path / "repo"
    state = {"emb": rng.standard_normal((4096, 256), dtype=np.float32)}
    with casstore.open(str(repo_dir), cache_bytes=0) as store:
        info = store.snapshot(state)
    [pack] = [p for p in (repo_dir / "packs").rglob("*") if p.is_file()]
    e = next(e for e in read_entries(pack.read_bytes()) if e.method == ZSTD_PLANES)
    data = bytearray(pack.read_bytes())
    data[e.offset + 100] ^= 0x01   # inside the first plane's frame, a raw block of mantissa bytes: it decodes, wrongly
    pack.write_bytes(bytes(data))
    with casstore.open(str(repo_dir), cache_bytes=0) as store:
        with pytest.raises(casstore.IntegrityError, match=f"chunk {e.hash.hex()}") as err:
            store.restore(info.id)
    assert info.id in str(err.value)


def test_format_2_repository_keeps_one_frame_per_block(tmp_path):
    """Casstore versions that read format 2 know no plane-split chunks: such a repository gets none,
    and a format-2 repository opened by this version reads what it holds and what it adds."""
    repo_dir = tmp_path / "repo"
    first = {"emb": rng.standard_normal((2048, 128), dtype=np.float32)}
    with casstore.open(str(repo_dir)) as store:
        a = store.snapshot(first)
        cfg = store._repo.config
    assert cfg.format == 3 and _methods(repo_dir) >= {ZSTD_PLANES}
    (repo_dir / "config").write_bytes(dataclasses.replace(cfg, format=2).encode())
    before = _methods(repo_dir)
    second = {"emb": rng.standard_normal((2048, 128), dtype=np.float32)}
    with casstore.open(str(repo_dir), cache_bytes=0) as store:
        b = store.snapshot(second)
        assert ZSTD_SHUFFLE in _methods(repo_dir) and ZSTD_SHUFFLE not in before
        assert store.index_rebuild() == 2
        assert deep_equal(store.restore(a.id), first) and deep_equal(store.restore(b.id), second)
        assert store.verify().ok


def test_copy_between_formats_packs_for_the_destination(tmp_path):
    """A copy re-packs chunks with the destination's own methods: plane frames do not reach a
    format-2 repository, and a format-2 repository's blocks become plane frames in a format-3 one."""
    state = {"emb": rng.standard_normal((2048, 128), dtype=np.float32)}
    old_dir, new_dir, back_dir = tmp_path / "old", tmp_path / "new", tmp_path / "back"
    with casstore.open(str(old_dir)) as old:
        cfg = old._repo.config
    (old_dir / "config").write_bytes(dataclasses.replace(cfg, format=2).encode())
    with casstore.open(str(old_dir)) as old, casstore.open(str(new_dir)) as new:
        info = old.snapshot(state)
        old.copy_to(new)
        assert deep_equal(new.restore(info.id), state) and new.verify(deep=True).ok
    assert ZSTD_SHUFFLE in _methods(old_dir) and ZSTD_PLANES not in _methods(old_dir)
    assert ZSTD_PLANES in _methods(new_dir) and ZSTD_SHUFFLE not in _methods(new_dir)
    with casstore.open(str(back_dir)) as back:
        bcfg = back._repo.config
    (back_dir / "config").write_bytes(dataclasses.replace(bcfg, format=2).encode())
    with casstore.open(str(new_dir)) as new, casstore.open(str(back_dir)) as back:
        new.copy_to(back)
        assert deep_equal(back.restore(info.id), state)
    assert ZSTD_PLANES not in _methods(back_dir)
