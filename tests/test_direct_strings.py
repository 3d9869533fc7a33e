"""Big ASCII strings are restored straight into new str objects (utf8view.new_ascii), which are
handed out only once their bytes are checked to be ASCII, whatever the manifest claims."""

from __future__ import annotations

import numpy as np
import pytest

import casstore
from casstore import codec, manifest, store as store_mod
from casstore.errors import IntegrityError
from casstore.repository import Stream
from casstore.utf8view import is_ascii, new_ascii

from .helpers import deep_equal

MiB = 1 << 20


def _text(n: int, seed: int) -> str:
    words = [f"w{seed}-{i}" for i in range(997)]
    out, size, i = [], 0, 0
    while size <= n:
        w = words[(i * 7919 + seed) % len(words)]
        out.append(w)
        size += len(w) + 1
        i += 1
    return " ".join(out)[:n]


def _state() -> dict:
    shared = _text(2 * MiB, 1)
    return {
        "doc": shared,
        "again": [shared, {"inner": shared}],                  # one blob, referenced three times
        "tuple": (_text(MiB + 17, 2), 5),
        "unicode": "é" * MiB + _text(MiB, 3),                  # not ASCII: the usual decode
        "small": _text(MiB - 1, 4),                            # below DIRECT_STR
        "docs": [_text(70_000, 10 + i) for i in range(80)],    # a list stream of string blobs
        "emb": np.arange(300_000, dtype=np.float32).reshape(-1, 60),
    }


@pytest.fixture
def spy(monkeypatch):
    made = []

    def counting(n):
        got = new_ascii(n)
        made.append(n)
        return got
    monkeypatch.setattr(store_mod, "new_ascii", counting)
    return made


@pytest.mark.parametrize("cache_bytes,encrypt", [(0, False), (256 * MiB, False), (0, True)])
def test_big_ascii_strings_restore_into_new_strs(tmp_path, monkeypatch, spy, cache_bytes, encrypt):
    """Straight into place (sealed runs too), or copied from the cache into the new strs."""
    monkeypatch.setattr(codec, "DIRECT_STR", 64_000)           # the list stream's 70 kB items qualify too
    state = _state()
    kw = {"password": "pw", "encrypt": True, "index_path": str(tmp_path / "index")} if encrypt else {}
    with casstore.open(str(tmp_path / "repo"), cache_bytes=cache_bytes, **kw) as s:
        info = s.snapshot(state)
        spans = s._repo.fields(bytes.fromhex(info.id))["ascii"]
        assert sorted(n for _, n in spans) == sorted([2 * MiB, MiB + 17, MiB - 1] + [70_000] * 80)
        for cold in (True, False):
            if cold:
                s.drop_caches()
            restored = s.restore(info.id)
            assert deep_equal(restored, state)
            assert restored["doc"] is restored["again"][0] is restored["again"][1]["inner"]
            assert restored["doc"].isascii() and hash(restored["doc"]) == hash(state["doc"])
        assert sorted(spy) == sorted([n for _, n in spans] * 2)


def test_a_manifest_that_calls_non_ascii_text_ascii_still_restores_it(tmp_path, spy):
    """The spans are a hint from the writer: bytes that are not ASCII never become an ASCII str."""
    text = "ü" + _text(3 * MiB, 5)
    structure, blobs = codec.encode({"t": text, "u": _text(2 * MiB, 6)})
    streams = [Stream(b.data, b.row_bytes, b.itemsize, structure=b.small_chunks) for b in blobs]
    streams.append(Stream(memoryview(structure), structure=True))
    spans = [[0, blobs[0].data.nbytes], [blobs[0].data.nbytes, blobs[1].data.nbytes]]
    with casstore.open(str(tmp_path / "repo"), cache_bytes=0) as s:
        snap_id, _ = s._repo.write("state", streams, agent_id="a", session_id="s", description=None,
                                   metadata=None, structure_last=True, extra={"ascii": spans})
        restored = s.restore(snap_id.hex())
    assert restored == {"t": text, "u": _text(2 * MiB, 6)}
    assert not restored["t"].isascii() and restored["t"][0] == "ü"
    assert len(spy) == 2


def test_spans_off_chunk_edges_are_decoded_the_usual_way(tmp_path, spy):
    text = _text(3 * MiB, 7)
    structure, blobs = codec.encode({"t": text})
    streams = [Stream(blobs[0].data), Stream(memoryview(structure), structure=True)]
    with casstore.open(str(tmp_path / "repo"), cache_bytes=0) as s:
        snap_id, _ = s._repo.write("state", streams, agent_id="a", session_id="s", description=None,
                                   metadata=None, structure_last=True, extra={"ascii": [[1, 3 * MiB - 1]]})
        assert s.restore(snap_id.hex()) == {"t": text}
    assert spy == []


@pytest.mark.parametrize("spans", ["x", [[0]], [[0, 0]], [[-1, 5]], [[0, 10], [5, 10]], [[0, 1 << 40]],
                                   [[0, 1.5]], [[0, True]]])
def test_manifest_refuses_malformed_ascii_spans(spans):
    fields = {"v": manifest.VERSION, "kind": "state", "agent": "a", "session": "s", "index": 0, "time": 0.0,
              "root": bytes(32), "height": 1, "raw": 100, "struct": 10, "chunks": 1, "tail": True,
              "ascii": spans}
    _, data = manifest.encode(fields)
    with pytest.raises(IntegrityError, match="'ascii'"):
        manifest.decode(data)
    fields["ascii"] = [[0, 40], [40, 50]]
    assert manifest.decode(manifest.encode(fields)[1])["ascii"] == [[0, 40], [40, 50]]


def test_is_ascii_checks_every_byte():
    assert is_ascii(memoryview(b""))
    for n in (1, 7, 8, 9, 64, 1001):
        clean = bytearray(b"a" * n)
        assert is_ascii(memoryview(clean))
        for at in {0, n // 2, n - 1}:
            dirty = bytearray(clean)
            dirty[at] = 0x80
            assert not is_ascii(memoryview(dirty)), (n, at)
