"""Restore gives back exactly what was snapshotted, types included."""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import uuid

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import casstore
from casstore import codec

from .helpers import deep_equal

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=50),
    st.binary(max_size=50), st.datetimes(), st.dates(), st.uuids(), st.decimals(allow_nan=False),
)
keys = st.one_of(st.text(max_size=10), st.integers(), st.tuples(st.integers(), st.text(max_size=3)))
arrays = hnp.arrays(dtype=st.sampled_from([np.float32, np.float64, np.int64, np.uint8, np.bool_, np.complex64]),
                    shape=hnp.array_shapes(min_dims=0, max_dims=3, max_side=6))
leaves = st.one_of(scalars, arrays)
states = st.recursive(
    leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.tuples(children, children),
        st.dictionaries(keys, children, max_size=5),
        st.frozensets(st.integers(), max_size=5),
        st.sets(st.text(max_size=5), max_size=5),
    ),
    max_leaves=30,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(state=states)
def test_codec_round_trips_nested_states(state):
    structure, blobs = codec.encode(state)
    region = bytearray(b"".join(bytes(b.data) for b in blobs))
    assert deep_equal(codec.decode(structure, memoryview(region)), state)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(state=states)
def test_store_round_trips_nested_states(store, state):
    info = store.snapshot({"s": state})
    assert deep_equal(store.restore(info.id), {"s": state})


@dataclasses.dataclass
class Memory:
    name: str
    facts: list
    when: dt.datetime


@dataclasses.dataclass(frozen=True)
class Frozen:
    x: int


def test_every_supported_type_keeps_its_type(store):
    rng = np.random.default_rng(1)
    state = {
        "none": None, "t": True, "big": 10 ** 40, "neg": -(10 ** 30), "f": 1.5, "s": "héllo",
        "b": b"\x00\xff", "ba": bytearray(b"ab"), "mv": memoryview(b"xyz"), "tup": (1, (2, 3)),
        "set": {1, 2}, "fs": frozenset({"a"}), "dt": dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc),
        "date": dt.date(2026, 1, 1), "time": dt.time(1, 2), "td": dt.timedelta(days=2, seconds=3),
        "uuid": uuid.UUID(int=7), "dec": decimal.Decimal("3.14159"), "npf": np.float32(2.5), "npi": np.int16(-3),
        "emb": rng.normal(size=(300, 64)).astype(np.float32), "mask": rng.random((70, 1000)) > 0.5,
        "cplx": np.arange(10, dtype=np.complex128).reshape(2, 5), "fortran": np.asfortranarray(np.ones((300, 40))),
        "longstr": "x" * 200_000, "longbytes": bytes(range(256)) * 1000, "dc": Memory("m", [1, 2], dt.datetime(2025, 5, 5)),
        "frozen": Frozen(3), 1: "int key", (1, 2): "tuple key",
    }
    restored = store.restore(store.snapshot(state).id)
    for k, v in state.items():
        r = restored[k]
        if k == "mv":
            assert isinstance(r, memoryview) and r.tobytes() == b"xyz"
        elif isinstance(v, np.ndarray):
            assert deep_equal(np.ascontiguousarray(v), r)
        else:
            assert type(r) is type(v) and r == v, k


def test_pydantic_models_round_trip(store):
    pydantic = pytest.importorskip("pydantic")

    class Tool(pydantic.BaseModel):
        name: str
        args: dict

    globals()["Tool"] = Tool  # restorable: its module is imported and it is reachable by name
    Tool.__qualname__ = "Tool"
    restored = store.restore(store.snapshot({"tools": [Tool(name="search", args={"q": "x"})]}).id)
    assert restored["tools"][0] == Tool(name="search", args={"q": "x"})


def test_registered_codec(store):
    class Point:
        def __init__(self, x, y):
            self.x, self.y = x, y

    casstore.register_codec(Point, lambda p: [p.x, p.y], lambda v: Point(*v), name="test:Point")
    p = store.restore(store.snapshot({"p": Point(1, np.arange(3))}).id)["p"]
    assert isinstance(p, Point) and p.x == 1 and list(p.y) == [0, 1, 2]


def test_unsupported_object_names_its_path(store):
    with pytest.raises(casstore.SerializationError, match=r"state\['memory'\]\['tools'\]\[3\]: object"):
        store.snapshot({"memory": {"tools": [1, 2, 3, object()]}})
    with pytest.raises(TypeError):  # SerializationError is also a TypeError
        store.snapshot({"f": lambda: 0})
    assert store.list() == []


def test_cycle_is_a_clear_error(store):
    a: list = [1]
    a.append({"back": a})
    with pytest.raises(casstore.SerializationError, match="cycle"):
        store.snapshot({"a": a})


def test_pickle_only_when_opted_in(store):
    class Opaque:
        def __eq__(self, other):
            return isinstance(other, Opaque)

    globals()["Opaque"] = Opaque
    Opaque.__qualname__ = "Opaque"
    info = store.snapshot({"o": Opaque()}, allow_pickle=True)
    with pytest.raises(casstore.SerializationError, match="allow_pickle"):
        store.restore(info.id)
    assert store.restore(info.id, allow_pickle=True) == {"o": Opaque()}


def test_array_restored_without_extra_copy_is_writable(store):
    arr = np.arange(100_000, dtype=np.float64).reshape(1000, 100)
    out = store.restore(store.snapshot({"a": arr}).id)["a"]
    out[0, 0] = 7.0
    assert out.flags.writeable and out[0, 0] == 7.0 and out.dtype == arr.dtype
