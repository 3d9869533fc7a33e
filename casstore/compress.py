"""Chunk compression: zstd, with a byte-shuffle filter for numeric rows, or raw.

A chunk is stored raw when zstd does not make it smaller, so incompressible
data (hashes, random floats) costs no decompression time. Numeric array
blocks are byte-shuffled first (all first bytes of each element, then all
second bytes, ...), as Blosc does: the exponent bytes of floats then line up
and zstd finds them. In a repository of format 3 each byte plane of a
shuffled block is then its own zstd frame, the frames back to back
(ZSTD_PLANES; Blosc2's split mode): a float's sign/exponent plane
compresses well and its mantissa planes hardly at all, and one frame over
all four makes one entropy table serve both. zstd stores a plane it cannot
shrink as a raw block, which decodes as a copy. On float32 embeddings this
stores 9 % fewer bytes than one frame (0.84 of raw against 0.92) and decodes
1.7x as fast; decoded across frames, the planes come out as the shuffled
block, so a run of such chunks decodes in one call as ZSTD_SHUFFLE's do.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import zstandard

from .errors import IntegrityError
from .tree import widen_node

RAW = 0
ZSTD = 1
ZSTD_SHUFFLE = 2
NARROW_NODE = 3  # a tree node with its sizes in fewer bytes (tree.narrow_node), repository format 2 and later
ZSTD_PLANES = 4  # byte shuffle, then a zstd frame per byte plane (see the module docstring), repository format 3
SHUFFLED = (ZSTD_SHUFFLE, ZSTD_PLANES)

MAX_CHUNK = 64 << 20  # no chunk is larger; a header claiming more is refused
SCRATCH = 4 << 20  # shuffled bytes decoded per step by inflate_into, in a buffer each thread keeps
# zstd level of shuffled numeric blocks unless Codec is told otherwise (never above its
# level). On float32 blocks of 16 KiB in one frame level 1 stores 1.5 % more bytes than
# level 3 (0.920 of raw against 0.907) for 0.6-0.7x the CPU; plane by plane it stores 0.8 %
# fewer: the sign/exponent plane compresses, the mantissa planes hardly do at any level.
SHUFFLE_LEVEL = 1
# zstd hash and chain table size (log2) for byte planes: small tables are reset faster for each
# small frame and find fewer spurious short matches in noise-like mantissa bytes. On float32
# planes of 16 KiB blocks (one core) the default tables compress 412 MB/s to 0.851 of raw, these
# 555 MB/s to 0.839; float64 and int16 planes compress alike either way.
PLANE_HASH_LOG = 8
MULTI_MIN = 256 << 10  # raw bytes from which compress_many spreads chunks over threads
_MULTI = zstandard.backend == "cext"  # multi_compress_to_buffer is in the C backend only


class Codec:
    """Thread-safe compress/decompress; zstd contexts are kept per thread.

    Shuffled numeric blocks get their own level, shuffle_level (default
    SHUFFLE_LEVEL, or level if lower): zstd finds little in them beyond the
    exponent bytes, so a higher level mostly spends time. Any level's frames
    decode the same way: the level is not recorded anywhere.
    """

    def __init__(self, level: int = 3, threads: int | None = None, shuffle_level: int | None = None):
        self.level = level
        self.shuffle_level = min(level, SHUFFLE_LEVEL) if shuffle_level is None else shuffle_level
        self.threads = threads or os.cpu_count() or 1
        self._local = threading.local()

    def _compressor(self, level: int, planes: bool = False) -> zstandard.ZstdCompressor:
        """This thread's compressor at level; for byte planes with PLANE_HASH_LOG tables."""
        comps = getattr(self._local, "comps", None)
        if comps is None:
            comps = self._local.comps = {}
        comp = comps.get((level, planes))
        if comp is None:
            if planes:
                comp = zstandard.ZstdCompressor(compression_params=zstandard.ZstdCompressionParameters.from_level(
                    level, hash_log=PLANE_HASH_LOG, chain_log=PLANE_HASH_LOG))
            else:
                comp = zstandard.ZstdCompressor(level=level)
            comps[level, planes] = comp
        return comp

    def _decompressor(self) -> zstandard.ZstdDecompressor:
        dec = getattr(self._local, "dec", None)
        if dec is None:
            dec = self._local.dec = zstandard.ZstdDecompressor()
        return dec

    def compress_many(self, chunks: list[memoryview], itemsizes: list[int],
                      planes: bool = False) -> list[tuple[int, bytes | memoryview]]:
        """(method, stored bytes) for each chunk, each its own zstd frame (with planes, a shuffled
        chunk a frame per byte plane: ZSTD_PLANES, repository format 3).

        Many chunks go to zstd in one call that compresses them on `threads`
        C threads without holding the GIL, so a Python thread meanwhile keeps
        chunking and hashing (a pool of Python threads would instead hand the
        GIL back and forth around every small chunk). Shuffled chunks (or their
        planes) are one such call at shuffle_level, the others one at level.
        """
        shuffled = [itemsize > 1 and len(c) % itemsize == 0 and len(c) >= 256 for c, itemsize in zip(chunks, itemsizes)]
        inputs: list[bytes | memoryview] = []
        groups: dict[tuple[int, bool], list[int]] = {}   # (level, planes) -> positions in inputs
        firsts: list[int] = []   # where each chunk's inputs begin
        for c, itemsize, s in zip(chunks, itemsizes, shuffled):
            firsts.append(len(inputs))
            if s:
                whole = memoryview(shuffle(c, itemsize))
                step = len(c) // itemsize
                pieces = [whole[k * step:(k + 1) * step] for k in range(itemsize)] if planes else [whole]
                group = groups.setdefault((self.shuffle_level, planes), [])
                group += range(len(inputs), len(inputs) + len(pieces))
                inputs += pieces
            else:
                groups.setdefault((self.level, False), []).append(len(inputs))
                inputs.append(c)
        outs: list[bytes | memoryview] = [b""] * len(inputs)
        for (level, as_planes), picked in groups.items():
            for i, out in zip(picked, self._compress_all(level, as_planes, [inputs[i] for i in picked])):
                outs[i] = out
        results: list[tuple[int, bytes | memoryview]] = []
        for first, c, itemsize, s in zip(firsts, chunks, itemsizes, shuffled):
            if s and planes:
                method, out = ZSTD_PLANES, b"".join(outs[first:first + itemsize])
            else:
                method, out = (ZSTD_SHUFFLE if s else ZSTD), outs[first]
            results.append((RAW, c) if len(out) >= len(c) else (method, out))
        return results

    def _compress_all(self, level: int, planes: bool, inputs: list[bytes | memoryview]) -> list[bytes | memoryview]:
        """One zstd frame per input at level: on `threads` C threads when there is enough to share."""
        comp = self._compressor(level, planes)
        if _MULTI and self.threads > 1 and len(inputs) > 1 and sum(map(len, inputs)) >= MULTI_MIN:
            return list(map(memoryview, comp.multi_compress_to_buffer(inputs, threads=self.threads)))
        return [comp.compress(c) for c in inputs]

    def decompress(self, method: int, stored: bytes | memoryview, raw_len: int, itemsize: int = 0,
                   out: memoryview | None = None) -> bytes | memoryview:
        """Inverse of compress; refuses outputs that differ from raw_len (bomb guard). Given out
        (raw_len bytes), the chunk is written there, unshuffled straight into it when shuffled,
        and out is returned.

        One zstd call per frame: multi_decompress_to_buffer measured slower for a
        restore's few hundred small frames (its output is a fresh allocation to fault in).
        """
        if out is not None and len(out) != raw_len:
            raise IntegrityError(f"chunk of {raw_len} bytes does not fit a {len(out)}-byte place")
        if method == RAW:
            _check_raw(stored, raw_len)
            data = stored
        elif method == NARROW_NODE:
            _check_bound(raw_len)
            data = widen_node(stored, raw_len)
        else:
            data = self._inflate(method, stored, raw_len)
            if method in SHUFFLED:
                if out is None:
                    return unshuffle(data, itemsize)
                unshuffle_into(data, out, itemsize)
                return out
        if out is None:
            return data
        out[:] = data
        return out

    def inflate_each(self, frames: list[bytes | memoryview], sizes: list[int]) -> list[bytes]:
        """zstd-decode each frame (method ZSTD) into its own bytes of exactly sizes[i]; IntegrityError
        on the first that does not (the caller finds which, see Repository._name_bad_frame).

        One call for a restore's few hundred small frames: the per-frame Python steps of
        decompress() (method dispatch, bound checks, the thread's context) are done once.
        """
        if sizes and max(sizes) > MAX_CHUNK:
            raise IntegrityError(f"chunk claims {max(sizes)} bytes, above the {MAX_CHUNK}-byte bound")
        decompress = self._decompressor().decompress
        out = []
        try:
            for frame, size in zip(frames, sizes):
                data = decompress(frame, max_output_size=size)
                if len(data) != size:
                    raise IntegrityError(f"chunk decompressed to {len(data)} bytes, expected {size}")
                out.append(data)
        except zstandard.ZstdError as e:
            raise IntegrityError(f"zstd frame does not decode: {e}") from e
        return out

    def inflate_into(self, method: int, frames: bytes | memoryview, out: memoryview, itemsize: int = 0,
                     size: int = 0) -> None:
        """zstd-decode adjacent frames (chunks stored back to back) straight into out, which their
        raw bytes fill exactly; shuffled ones are all `size` bytes long and are unshuffled SCRATCH
        bytes at a time.

        One call per run of chunks: no Python step and no temporary per chunk, and a
        plain chunk is never copied (the ranged read holds the frames, out their output).
        """
        if method not in (ZSTD, *SHUFFLED):
            raise IntegrityError(f"unknown compression method {method}")
        reader = self._decompressor().stream_reader(frames, read_across_frames=True)
        if method == ZSTD:
            _fill(reader, out)
            return
        if size <= 0 or len(out) % size:
            raise IntegrityError(f"{len(out)} bytes of shuffled chunks do not split into {size}-byte chunks")
        step = max(1, SCRATCH // size) * size
        scratch = self._scratch(min(step, len(out)))
        for start in range(0, len(out), step):
            piece = out[start:start + step]
            _fill(reader, scratch[:len(piece)])
            unshuffle_into(scratch[:len(piece)], piece, itemsize, len(piece) // size)

    def _scratch(self, nbytes: int) -> memoryview:
        """This thread's buffer for shuffled bytes: kept, so its pages are faulted in once, not per run."""
        buf = getattr(self._local, "scratch", None)
        if buf is None or len(buf) < nbytes:
            import numpy as np
            buf = self._local.scratch = memoryview(np.empty(max(nbytes, SCRATCH), dtype=np.uint8))
        return buf

    def _inflate(self, method: int, stored: bytes | memoryview, raw_len: int) -> bytes | memoryview:
        """zstd-decode a frame (ZSTD_PLANES: the frames) that must hold exactly raw_len bytes."""
        _check_bound(raw_len)
        if method not in (ZSTD, *SHUFFLED):
            raise IntegrityError(f"unknown compression method {method}")
        if method == ZSTD_PLANES:
            reader = self._decompressor().stream_reader(stored, read_across_frames=True)
            out = memoryview(bytearray(raw_len))
            _fill(reader, out)
            try:
                extra = reader.read(1)
            except zstandard.ZstdError as e:
                raise IntegrityError(f"zstd frame does not decode: {e}") from e
            if extra:
                raise IntegrityError(f"zstd frames decompress to more than the chunk's {raw_len} bytes")
            return out
        try:
            out = self._decompressor().decompress(stored, max_output_size=raw_len)
        except zstandard.ZstdError as e:
            raise IntegrityError(f"zstd frame does not decode: {e}") from e
        if len(out) != raw_len:
            raise IntegrityError(f"chunk decompressed to {len(out)} bytes, expected {raw_len}")
        return out


def _check_bound(raw_len: int) -> None:
    if raw_len > MAX_CHUNK:
        raise IntegrityError(f"chunk claims {raw_len} bytes, above the {MAX_CHUNK}-byte bound")


def _check_raw(stored: bytes | memoryview, raw_len: int) -> None:
    _check_bound(raw_len)
    if len(stored) != raw_len:
        raise IntegrityError(f"raw chunk is {len(stored)} bytes, expected {raw_len}")


def shuffle(data: memoryview, itemsize: int) -> bytes:
    import numpy as np  # only numeric array blocks are shuffled
    a = np.frombuffer(data, dtype=np.uint8).reshape(-1, itemsize)
    return a.T.tobytes()


def unshuffle(data: bytes, itemsize: int) -> memoryview:
    import numpy as np
    out = memoryview(np.empty(len(data), dtype=np.uint8))
    unshuffle_into(data, out, itemsize)
    return out


def unshuffle_into(data: bytes | memoryview, out: memoryview, itemsize: int, count: int = 1) -> None:
    """Undo shuffle() of count equal chunks laid back to back in data, into out: one numpy
    copy per byte plane for them all (a contiguous read per plane is ~3x faster than numpy's
    transposed copy, and one call for many chunks saves the per-call overhead of each)."""
    if itemsize <= 1 or len(data) % (itemsize * count) or len(out) != len(data):
        raise IntegrityError(f"shuffled chunk of {len(data)} bytes does not split into {itemsize}-byte items")
    import numpy as np
    planes = np.frombuffer(data, dtype=np.uint8).reshape(count, itemsize, -1)
    items = np.frombuffer(out, dtype=np.uint8).reshape(count, -1, itemsize)
    for k in range(itemsize):
        items[:, :, k] = planes[:, k]


def _fill(reader: Any, out: memoryview) -> None:
    """Read a zstd stream reader until out is full; IntegrityError when the frames end first."""
    done = 0
    try:
        while done < len(out):
            n = reader.readinto(out[done:])
            if not n:
                raise IntegrityError(f"zstd frames decompressed to {done} bytes, expected {len(out)}")
            done += n
    except zstandard.ZstdError as e:
        raise IntegrityError(f"zstd frame does not decode: {e}") from e
