"""List streams are cut only between items: appends, insertions and edits touch only their own chunks."""

from __future__ import annotations

import random
import subprocess
import sys

import blake3
import msgpack
from hypothesis import given, settings
from hypothesis import strategies as st

from casstore import codec
from casstore.chunker import Chunker

from .helpers import deep_equal

CHUNKER = Chunker()


def text(rng: random.Random, n: int) -> str:
    return "".join(rng.choice("abcdefgh ijklmnop qrstuvwxyz") for _ in range(n))


def message(rng: random.Random, n: int) -> dict:
    return {"role": rng.choice(["user", "assistant"]), "content": text(rng, n), "id": rng.getrandbits(64)}


def chunk_of(item) -> str:
    """The hash a list item has when it is a chunk of its own: BLAKE3 of its msgpack bytes."""
    return blake3.blake3(msgpack.packb(item, use_bin_type=True)).hexdigest()


def new_chunks(store, before, after) -> set[str]:
    return set(store.chunks(after.id)) - set(store.chunks(before.id))


def test_appending_to_a_long_list_writes_only_the_new_items_chunks(store):
    rng = random.Random(1)
    state = {"messages": [message(rng, rng.randint(100, 3000)) for _ in range(200)], "step": 0}
    state["messages"].append(message(rng, 2000))   # a big item closes any open group of small ones
    before = store.snapshot(state)
    added = [message(rng, 1500), message(rng, 2500)]
    state["messages"] += added
    state["step"] = 1
    after = store.snapshot(state)
    structure = store.chunks(after.id)[-1]  # the structure stream is stored last
    assert new_chunks(store, before, after) == {structure, *map(chunk_of, added)}
    assert after.new_chunk_count == 3
    assert deep_equal(store.restore(after.id), state)


def test_an_item_edited_in_place_changes_only_its_own_chunk(store):
    rng = random.Random(2)
    state = {"messages": [message(rng, rng.randint(1200, 3000)) for _ in range(100)]}
    before = store.snapshot(state)
    state["messages"][40]["content"] += " edited"
    after = store.snapshot(state)
    assert new_chunks(store, before, after) == {store.chunks(after.id)[-1], chunk_of(state["messages"][40])}


def test_an_insertion_among_small_items_rewrites_only_a_few_chunks(store):
    rng = random.Random(3)
    notes = [text(rng, rng.randint(20, 300)) for _ in range(3000)]
    before = store.snapshot({"notes": notes})
    notes.insert(1500, text(rng, 120))
    after = store.snapshot({"notes": notes})
    assert before.chunk_count > 100
    assert len(new_chunks(store, before, after)) <= 4   # the structure, the group around the insertion, maybe its neighbour
    assert deep_equal(store.restore(after.id), {"notes": notes})


def test_the_same_message_in_two_lists_is_the_same_chunk(store):
    rng = random.Random(4)
    shared = message(rng, 1800)
    a = store.snapshot({"messages": [message(rng, 300) for _ in range(30)] + [shared, message(rng, 50)]})
    b = store.snapshot({"writes": [shared], "other": {"note": text(rng, 5000)}})
    assert chunk_of(shared) in store.chunks(a.id)
    assert chunk_of(shared) in store.chunks(b.id)
    assert b.new_chunk_count == b.chunk_count - 1   # all but the message, which was stored already


def test_a_long_text_outside_lists_is_not_rewritten_with_the_structure(store):
    rng = random.Random(5)
    state = {"memory": {"persona": text(rng, 3000), "human": text(rng, 2000)}, "step": 0}
    before = store.snapshot(state)
    state["step"] = 1
    after = store.snapshot(state)
    assert after.new_chunk_count == 1
    assert len(new_chunks(store, before, after)) == 1


def test_new_leaves_and_list_streams_round_trip(store):
    rng = random.Random(6)
    shared = text(rng, 1500)
    state = {
        "prompt": shared, "raw": rng.randbytes(3000), "same": shared, "short": [1, 2, 3],
        "messages": [message(rng, 1500), {"parts": [shared, rng.randbytes(2000), (1, 2)]}, shared, b"x" * 5000,
                     [[text(rng, 1200)] * 3], message(rng, 20)],
        "empty": [], "nested": {"deep": {"text": text(rng, 70000), "lists": [[1] * 500, [text(rng, 10)] * 300]}},
    }
    structure, blobs = codec.encode(state)
    region = memoryview(bytearray(b"".join(bytes(b.data) for b in blobs)))
    assert deep_equal(codec.decode(structure, region), state)
    assert deep_equal(store.restore(store.snapshot(state).id), state)


def test_a_list_of_tiny_items_is_packed_whole_and_cut_by_fastcdc(store):
    rng = random.Random(9)
    state = {"tokens": [rng.randrange(50000) for _ in range(20000)], "floats": [rng.random() for _ in range(3000)],
             "few": list(range(10)), "keys": {"k" * 2000: {text(rng, 1500)}, "t": ([text(rng, 30)] * 100, 1)}}
    _, blobs = codec.encode(state)
    tokens = blobs[0]
    assert tokens.item_ends is None and tokens.small_chunks
    assert bytes(tokens.data) == msgpack.packb(state["tokens"])[3:]   # the items, without the array16 header
    assert deep_equal(store.restore(store.snapshot(state).id), state)


def test_list_items_hold_no_references_but_to_big_leaves():
    """A reference inside an item names a blob-region offset, which moves when anything before it grows."""
    rng = random.Random(7)
    items = [{"content": text(rng, 5000), "parts": [text(rng, 2000)] * 20} for _ in range(3)]
    _, blobs = codec.encode({"messages": items})
    assert len(blobs) == 1 and blobs[0].item_ends is not None
    assert bytes(blobs[0].data) == b"".join(msgpack.packb(i, use_bin_type=True) for i in items)


@settings(max_examples=200, deadline=None)
@given(sizes=st.lists(st.one_of(st.integers(1, 300), st.integers(1, 20000), st.integers(60000, 150000)), max_size=80),
       seed=st.integers(0, 2**32))
def test_item_cuts_tile_the_stream_and_fall_between_items(sizes, seed):
    data = random.Random(seed).randbytes(sum(sizes))
    ends = [sum(sizes[:i + 1]) for i in range(len(sizes))]
    spans = CHUNKER.cut_items(memoryview(data), ends)
    assert [o for o, _ in spans] == [0, *(o + n for o, n in spans[:-1])][:len(spans)]
    assert sum(n for _, n in spans) == len(data)
    bounds = {0, *ends}
    for off, n in spans:
        item = next(i for i, e in enumerate(ends) if e > off)
        if sizes[item] > CHUNKER.blob.max_size:   # only a huge item is cut inside (by FastCDC)
            assert n <= CHUNKER.blob.max_size
        elif sizes[item] >= CHUNKER.item_min:     # a big item is a chunk of its own
            assert (off, n) == (ends[item] - sizes[item], sizes[item])
        else:                                     # a group of small items
            assert off in bounds and off + n in bounds and n <= CHUNKER.structure.max_size
            assert all(sizes[i] < CHUNKER.item_min for i, e in enumerate(ends) if off < e <= off + n)


def test_item_cuts_do_not_depend_on_position_or_process():
    rng = random.Random(8)
    parts = [msgpack.packb(text(rng, rng.randint(10, 500))) for _ in range(400)]
    ends = [sum(map(len, parts[:i + 1])) for i in range(len(parts))]
    data = memoryview(b"".join(parts))
    spans = CHUNKER.cut_items(data, ends)
    head = msgpack.packb(text(rng, 4000))  # a big item before: everything after it shifts, the cuts move along
    shifted = CHUNKER.cut_items(memoryview(head + bytes(data)), [len(head)] + [e + len(head) for e in ends])
    assert shifted == [(0, len(head))] + [(o + len(head), n) for o, n in spans]
    code = ("import sys, msgpack, random; from casstore.chunker import Chunker; from tests.test_item_chunking import text;"
            "rng = random.Random(8); parts = [msgpack.packb(text(rng, rng.randint(10, 500))) for _ in range(400)];"
            "ends = [sum(map(len, parts[:i + 1])) for i in range(len(parts))];"
            "print(Chunker().cut_items(memoryview(b''.join(parts)), ends))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONHASHSEED": "12345", "PATH": "", **_pythonpath()})
    assert out.stdout.strip() == str(spans)


def _pythonpath() -> dict[str, str]:
    import os
    return {"PYTHONPATH": os.pathsep.join(sys.path)}
