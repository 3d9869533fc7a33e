"""State codec: Python state <-> one msgpack structure stream plus big-leaf blobs.

encode() walks the state once in Python (to name paths in errors, catch
cycles and pull out big leaves), building a tree of msgpack-native values and
ExtTypes that msgpack's C packer then serializes. Big leaves (arrays, long
str/bytes) are not copied into the structure: they become blobs, referenced
by (offset, length) in a blob region laid after the structure, so they are
chunked on their own and deduplicate wherever they sit in the state. Arrays
are exposed to the chunker as memoryviews of their own buffer (no copy).

Lists of at least LIST_STREAM bytes (a conversation, tool results) become
streams of their own too: their items, packed back to back without msgpack's
array header, with the count kept in the reference. A msgpack array starts
with its item count, so inline, every appended message would rewrite the
chunk holding that header. The encoder also records where each item ends, so
the chunker cuts such a stream only between items (see chunker.cut_items):
an append adds chunks without rewriting any, and a message of 1 KiB or more
is the same chunk in every list it is an item of. Lists of tiny items (numbers, tokens)
are packed whole and cut by FastCDC instead (see list_stream).

Outside lists, strings and bytes of at least MEDIUM_LEAF bytes (a memory
block, a system prompt) become blobs too, chunked like the structure: the
structure stream changes at nearly every step (a counter, the references
to growing lists), and text kept inline would be rewritten with it. Inside
a list item nothing but a BIG_LEAF leaf leaves the item, because a reference
holds an offset in the blob region: an item holding one would change
whenever anything before it grows.

decode() is one msgpack unpack with an ext hook; blobs are read back as
zero-copy views of the restored buffer. Nothing in storage can make decode
run code: classes are looked up among registered codecs and already-imported
dataclasses / pydantic models, and pickle is refused unless opted into.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import decimal
import importlib
import pickle
import sys
import uuid
from dataclasses import dataclass
from itertools import accumulate
from typing import Any, Callable, Sequence

import msgpack

from .errors import PathNotFoundError, SerializationError
from .utf8view import utf8

BIG_LEAF = 64 * 1024  # leaves at least this large become their own blobs
DIRECT_STR = 1 << 20  # ASCII string blobs at least this large are listed for restore straight into a str
MEDIUM_LEAF = 1024  # str/bytes at least this large, outside lists, become blobs chunked like the structure
LIST_STREAM = 1024  # lists (outside lists) whose items encode to at least this many bytes get their own stream
TINY_ITEM, TINY_SAMPLE = 64, 64  # a list whose first TINY_SAMPLE items pack to < TINY_ITEM bytes each on average

EXT_TUPLE = 1
EXT_SET = 2
EXT_FROZENSET = 3
EXT_DATETIME = 4
EXT_DATE = 5
EXT_TIME = 6
EXT_TIMEDELTA = 7
EXT_UUID = 8
EXT_DECIMAL = 9
EXT_BIGINT = 10
EXT_BLOB = 11
EXT_ARRAY = 12
EXT_NPSCALAR = 13
EXT_BYTEARRAY = 14
EXT_MEMORYVIEW = 15
EXT_OBJECT = 16
EXT_PICKLE = 17
EXT_LIST = 18

BLOB_BYTES, BLOB_STR, BLOB_BYTEARRAY, BLOB_MEMORYVIEW, BLOB_ARRAY = range(5)

_INT_MIN, _INT_MAX = -(1 << 63), (1 << 64) - 1
_SIZED = frozenset((str, bytes))
_SCALARS = frozenset((float, bool, type(None)))
_ARRAY_KINDS = set("biufcmMSU")


@dataclass
class Blob:
    """A big leaf to chunk on its own; row_bytes > 0 asks for row-aligned blocks."""

    data: memoryview
    row_bytes: int = 0
    itemsize: int = 0  # for the byte-shuffle filter; 0 = not numeric
    small_chunks: bool = False  # structure-like data (a medium string): cut into small chunks
    item_ends: list[int] | None = None  # a list stream: where each packed item ends, for chunk cuts
    ascii: bool = False  # an ASCII str of at least DIRECT_STR bytes: its restore may fill a new str in place


@dataclass(frozen=True)
class _Codec:
    cls: type
    name: str
    encode: Callable[[Any], Any]
    decode: Callable[[Any], Any]


_BY_TYPE: dict[type, _Codec] = {}
_BY_NAME: dict[str, _Codec] = {}
# Codecs for whole class families (e.g. LangChain Serializable), tried before dataclass/pydantic/pickle.
_FALLBACK: list[tuple[Callable[[type], bool], _Codec]] = []
# Integrations imported (once) when their library is loaded: library module -> casstore module.
_AUTOLOAD = {"langchain_core": "casstore.integrations.langchain"}


def register_codec(cls: type, encode: Callable[[Any], Any] | None = None,
                   decode: Callable[[Any], Any] | None = None, *, name: str | None = None) -> None:
    """Teach the codec a type: encode(obj) returns any encodable value, decode(value) rebuilds obj.

    Dataclasses and pydantic models need no functions: registering them only
    makes them restorable in a process that has not imported their module.
    """
    name = name or f"{cls.__module__}:{cls.__qualname__}"
    if encode is None or decode is None:
        if not (dataclasses.is_dataclass(cls) or _is_pydantic(cls)):
            raise TypeError(f"register_codec({cls.__qualname__}) needs encode and decode functions")
        encode = encode or _fields_of
        decode = decode or (lambda fields, c=cls: _build(c, fields))
    codec = _Codec(cls, name, encode, decode)
    _BY_TYPE[cls] = codec
    _BY_NAME[name] = codec


def register_fallback(predicate: Callable[[type], bool], encode: Callable[[Any], Any],
                      decode: Callable[[Any], Any], *, name: str) -> None:
    """Teach the codec a family of types: every class for which predicate(cls) is true."""
    codec = _Codec(object, name, encode, decode)
    _FALLBACK.append((predicate, codec))
    _BY_NAME[name] = codec


def _autoload(name: str | None = None) -> None:
    """Import the integration of a loaded library (or of the library a stored codec name starts with)."""
    for lib, module in list(_AUTOLOAD.items()):
        if lib in sys.modules if name is None else name.startswith(lib):
            _AUTOLOAD.pop(lib, None)
            try:
                importlib.import_module(module)
            except ImportError:
                pass


def _fallback(cls: type) -> _Codec | None:
    if _AUTOLOAD:
        _autoload()
    for predicate, codec in _FALLBACK:
        if predicate(cls):
            _BY_TYPE[cls] = codec
            return codec
    return None


def encode(state: Any, *, allow_pickle: bool = False, big_leaf: int = BIG_LEAF) -> tuple[bytes, list[Blob]]:
    """Serialize state into (structure bytes, blobs in blob-region order)."""
    enc = _Encoder(allow_pickle, big_leaf)
    try:
        tree = enc.walk(state, "state")
        return msgpack.packb(tree, use_bin_type=True), enc.blobs
    except RecursionError as e:
        raise SerializationError("state is nested too deeply to encode (or holds a cycle)") from e
    except (ValueError, OverflowError) as e:
        raise SerializationError(f"state cannot be encoded: {e}") from e


def ascii_spans(blobs: list[Blob]) -> list[list[int]]:
    """[offset, length] in the blob region of each blob marked ascii, in order."""
    starts = accumulate((b.data.nbytes for b in blobs), initial=0)
    return [[at, b.data.nbytes] for at, b in zip(starts, blobs) if b.ascii]


def decode(structure: bytes | memoryview, blob_region: memoryview | None = None, *, allow_pickle: bool = False,
           strings: dict[int, str] | None = None) -> Any:
    """Rebuild the state; blob_region holds the blobs' bytes in encode order. strings maps
    region offsets to string blobs restored already (their bytes in the region are not read)."""
    region = blob_region if blob_region is not None else memoryview(b"")
    made = strings or {}

    def hook(code: int, data: bytes) -> Any:
        return _decode_ext(code, data, region, hook, allow_pickle, made)

    try:
        return msgpack.unpackb(structure, ext_hook=hook, raw=False, strict_map_key=False, use_list=True)
    except SerializationError:
        raise
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, IndexError) as e:
        raise SerializationError(f"stored state does not decode: {e}") from e


def decode_at(structure: bytes | memoryview, blob_region: Any, path: Sequence[Any], *,
              allow_pickle: bool = False) -> Any:
    """The value at path inside the state (keys of dicts, indexes of lists and tuples, field
    names of objects), decoded alone: blob_region is sliced only for the blobs and list
    streams on the way there and under it, so a caller can hand in a region that reads
    storage on demand (see Store.restore). PathNotFoundError names the first step that fails.

    The structure is unpacked with every container extension (tuples, sets, objects, blobs,
    list streams) left as a _Deferred; the steps of path open the ones on the way, and the
    value found is then decoded in full, as decode would.
    """
    made: dict[int, str] = {}

    def eager(code: int, data: bytes) -> Any:
        return _decode_ext(code, data, blob_region, eager, allow_pickle, made)

    def lazy(code: int, data: bytes) -> Any:
        if code in _DEFERRED:
            return _Deferred(code, data)
        return _decode_ext(code, data, blob_region, lazy, allow_pickle, made)

    def force(value: Any) -> Any:
        t = type(value)
        if t is _Deferred:
            return _decode_ext(value.code, value.data, blob_region, eager, allow_pickle, made)
        if t is dict:
            return {force(k): force(v) for k, v in value.items()}
        if t is list:
            return [force(v) for v in value]
        return value

    def step(value: Any, key: Any, where: str) -> Any:
        if type(value) is _Deferred:   # a list or tuple is opened one level; anything else decoded whole
            hook = lazy if value.code in (EXT_LIST, EXT_TUPLE) else eager
            value = _decode_ext(value.code, value.data, blob_region, hook, allow_pickle, made)
        if type(value) is dict:
            if key in value:
                return value[key]
            for k, v in value.items():   # a key that is itself an extension (a tuple, a UUID...)
                if type(k) is _Deferred and force(k) == key:
                    return v
            raise PathNotFoundError(f"{where} has no key {key!r}")
        if type(value) in (list, tuple):
            index = _index(key, where)
            if not -len(value) <= index < len(value):
                raise PathNotFoundError(f"{where} has {len(value)} items, no item {key!r}")
            return value[index]
        if isinstance(key, str) and (dataclasses.is_dataclass(value) or _is_pydantic(type(value))):
            try:
                return getattr(value, key)
            except AttributeError:
                raise PathNotFoundError(f"{where} (a {type(value).__name__}) has no field {key!r}") from None
        raise PathNotFoundError(f"{where} is a {type(value).__name__}, which has no item {key!r}")

    try:
        value = msgpack.unpackb(structure, ext_hook=lazy, raw=False, strict_map_key=False, use_list=True)
        where = "state"
        for key in path:
            value = step(value, key, where)
            where += f"[{key!r}]"
        return force(value)
    except (SerializationError, PathNotFoundError):
        raise
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, IndexError) as e:
        raise SerializationError(f"stored state does not decode: {e}") from e


@dataclass(frozen=True)
class _Deferred:
    """An extension value not decoded yet (see decode_at); hashable, as a dict key may be one."""

    code: int
    data: bytes


_DEFERRED = frozenset({EXT_TUPLE, EXT_SET, EXT_FROZENSET, EXT_BLOB, EXT_LIST, EXT_OBJECT, EXT_PICKLE})


def _index(key: Any, where: str) -> int:
    """A list index from an int, or from a string of decimal digits (as a command line gives it)."""
    if type(key) is int:
        return key
    if isinstance(key, str) and key.lstrip("-").isdigit():
        return int(key)
    raise PathNotFoundError(f"{where} is a list; {key!r} is not an index")


class _Encoder:
    def __init__(self, allow_pickle: bool, big_leaf: int):
        self.allow_pickle = allow_pickle
        self.big_leaf = big_leaf
        self.blobs: list[Blob] = []
        self.region = 0
        self.seen_blobs: dict[int, tuple[Any, msgpack.ExtType]] = {}
        self.active: set[int] = set()
        # str/bytes leaves at least this large become blobs: MEDIUM_LEAF, but only big_leaf inside
        # list items (see the module docstring); in_list counts the list items being walked.
        self.leaf_limit = self.top_limit = min(MEDIUM_LEAF, big_leaf)
        self.in_list = 0
        self.packer = msgpack.Packer(use_bin_type=True)

    def walk(self, obj: Any, path: str) -> Any:
        t = type(obj)
        if t is str:
            if len(obj) >= self.leaf_limit:
                return self.blob(obj, BLOB_STR)
            return obj
        if t is int:
            if _INT_MIN <= obj <= _INT_MAX:
                return obj
            return msgpack.ExtType(EXT_BIGINT, obj.to_bytes((obj.bit_length() + 8) // 8, "little", signed=True))
        if t is float or t is bool or obj is None:
            return obj
        if t is dict:
            if self.plain(obj.values()) and self.plain(obj.keys()):
                return obj
            return self.container(obj, path, lambda: {
                self.walk(k, f"{path}[{k!r}] (key)"): self.walk(v, f"{path}[{k!r}]") for k, v in obj.items()})
        if t is list:
            items = obj if self.plain(obj, self.big_leaf) else self.container(obj, path, lambda: self.items(obj, path))
            return items if self.in_list else self.list_stream(items)
        if t is tuple:
            return self.container(obj, path, lambda: self.ext(EXT_TUPLE, [
                self.walk(v, f"{path}[{i}]") for i, v in enumerate(obj)]))
        if t is bytes:
            return self.blob(obj, BLOB_BYTES) if len(obj) >= self.leaf_limit else obj
        if t is bytearray:
            return self.blob(obj, BLOB_BYTEARRAY) if len(obj) >= self.big_leaf else msgpack.ExtType(EXT_BYTEARRAY, bytes(obj))
        if t is memoryview:
            if obj.nbytes >= self.big_leaf:
                return self.blob(obj, BLOB_MEMORYVIEW)
            return msgpack.ExtType(EXT_MEMORYVIEW, obj.tobytes())
        if t is set or t is frozenset:
            items = [self.walk(v, f"{path}{{{v!r}}}") for v in _stable_order(obj)]
            return self.ext(EXT_SET if t is set else EXT_FROZENSET, items)
        if t.__module__ == "numpy":  # numpy is loaded only when a state holds its objects
            np = _numpy()
            if t is np.ndarray:
                return self.array(obj, path)
            if isinstance(obj, np.generic):
                return self.npscalar(obj, path)
        if t is _dt.datetime:
            return self.ext(EXT_DATETIME, [obj.isoformat()])
        if t is _dt.date:
            return self.ext(EXT_DATE, [obj.isoformat()])
        if t is _dt.time:
            return self.ext(EXT_TIME, [obj.isoformat()])
        if t is _dt.timedelta:
            return self.ext(EXT_TIMEDELTA, [obj.days, obj.seconds, obj.microseconds])
        if t is uuid.UUID:
            return msgpack.ExtType(EXT_UUID, obj.bytes)
        if t is decimal.Decimal:
            return msgpack.ExtType(EXT_DECIMAL, str(obj).encode())
        return self.custom(obj, path)

    def plain(self, items: Any, big: int | None = None) -> bool:
        """True when msgpack can pack every item as it is (the common case: a message dict), with
        str/bytes below big (by default, the size from which they become blobs where they stand).

        Checking types in one C-driven pass is several times cheaper than
        walking each item, and such a container needs no copy.
        """
        big = big or self.leaf_limit
        kinds = set(map(type, items))
        if kinds <= _SIZED:  # all str / bytes: C-level passes only (an agent's message list)
            return max(map(len, items), default=0) < big
        if kinds <= _SCALARS:
            return True
        return all((t := type(v)) is str and len(v) < big or t is float or t is bool or v is None
                   or t is int and _INT_MIN <= v <= _INT_MAX or t is bytes and len(v) < big for v in items)

    def items(self, obj: list, path: str) -> list:
        self.in_list += 1
        self.leaf_limit = self.big_leaf
        try:
            return [self.walk(v, f"{path}[{i}]") for i, v in enumerate(obj)]
        finally:
            self.in_list -= 1
            if not self.in_list:
                self.leaf_limit = self.top_limit

    def container(self, obj: Any, path: str, build: Callable[[], Any]) -> Any:
        key = id(obj)
        if key in self.active:
            raise SerializationError(f"{path}: cycle, this {type(obj).__name__} contains itself")
        self.active.add(key)
        try:
            return build()
        finally:
            self.active.discard(key)

    def ext(self, code: int, value: Any) -> msgpack.ExtType:
        return msgpack.ExtType(code, msgpack.packb(value, use_bin_type=True))

    def blob(self, obj: Any, kind: int, meta: Any = None, row_bytes: int = 0, itemsize: int = 0,
             view: memoryview | None = None) -> msgpack.ExtType:
        seen = self.seen_blobs.get(id(obj))
        if seen is not None:
            return seen[1]
        if view is None:
            view = utf8(obj) if kind == BLOB_STR else memoryview(obj).cast("B")
        ref = self.ext(EXT_BLOB, [self.region, view.nbytes, kind, meta])
        self.blobs.append(Blob(view, row_bytes, itemsize, small_chunks=view.nbytes < self.big_leaf,
                               ascii=kind == BLOB_STR and view.nbytes >= DIRECT_STR and obj.isascii()))
        self.region += view.nbytes
        self.seen_blobs[id(obj)] = (obj, ref)
        return ref

    def list_stream(self, items: list) -> Any:
        """A list as its own stream of packed items (with their end offsets); short ones stay inline.

        Packing item by item (a C-level map, no Python per item) gives the
        same bytes as packing the list, minus the array header. A list whose
        first items are tiny (token ids, a vector as floats) is packed whole
        instead, ten times faster, and cut by FastCDC: an item boundary per
        few bytes buys nothing there. Deciding on the first items keeps the
        choice stable while the list grows.
        """
        head = sum(map(len, map(self.packer.pack, items[:TINY_SAMPLE])))
        if head < TINY_ITEM * min(len(items), TINY_SAMPLE):
            packed = msgpack.packb(items, use_bin_type=True)
            header = 1 if len(items) < 16 else 3 if len(items) < 1 << 16 else 5  # fixarray / array16 / array32
            return self.stream(items, memoryview(packed)[header:], None)
        parts = list(map(self.packer.pack, items))
        ends = list(accumulate(map(len, parts)))
        return self.stream(items, memoryview(b"".join(parts)), ends)

    def stream(self, items: list, view: memoryview, ends: list[int] | None) -> Any:
        if view.nbytes < LIST_STREAM:
            return items
        ref = self.ext(EXT_LIST, [self.region, view.nbytes, len(items)])
        self.blobs.append(Blob(view, small_chunks=ends is None, item_ends=ends))
        self.region += view.nbytes
        return ref

    def array(self, arr: Any, path: str) -> msgpack.ExtType:
        np = _numpy()
        if arr.dtype.kind not in _ARRAY_KINDS or arr.dtype.fields is not None:
            raise SerializationError(f"{path}: numpy array of dtype {arr.dtype} is not supported (object/structured)")
        meta = [arr.dtype.str, list(arr.shape)]
        if arr.nbytes < self.big_leaf:
            return self.ext(EXT_ARRAY, [*meta, np.ascontiguousarray(arr).tobytes()])
        contiguous = np.ascontiguousarray(arr)
        row_bytes = contiguous.nbytes // arr.shape[0] if arr.ndim > 0 and arr.shape[0] else 0
        numeric = arr.dtype.kind in "iufc" and arr.dtype.itemsize > 1
        view = memoryview(contiguous.reshape(-1).view(np.uint8))
        return self.blob(arr, BLOB_ARRAY, meta, row_bytes, arr.dtype.itemsize if numeric else 0, view)

    def npscalar(self, obj: Any, path: str) -> msgpack.ExtType:
        if obj.dtype.kind not in _ARRAY_KINDS:
            raise SerializationError(f"{path}: numpy scalar of dtype {obj.dtype} is not supported")
        return self.ext(EXT_NPSCALAR, [obj.dtype.str, obj.tobytes()])

    def custom(self, obj: Any, path: str) -> msgpack.ExtType:
        cls = type(obj)
        codec = _BY_TYPE.get(cls) or _fallback(cls)
        if codec is None and (dataclasses.is_dataclass(cls) or _is_pydantic(cls)):
            register_codec(cls)
            codec = _BY_TYPE[cls]
        if codec is not None:
            try:
                value = codec.encode(obj)
            except Exception as e:
                raise SerializationError(f"{path}: codec {codec.name!r} failed: {e}") from e
            return self.container(obj, path, lambda: self.ext(EXT_OBJECT, [codec.name, self.walk(value, path)]))
        if self.allow_pickle:
            try:
                return msgpack.ExtType(EXT_PICKLE, pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))
            except Exception as e:
                raise SerializationError(f"{path}: {cls.__qualname__} cannot be pickled: {e}") from e
        raise SerializationError(
            f"{path}: {cls.__qualname__} is not supported; register it with casstore.register_codec "
            f"(or pass allow_pickle=True)")


def _decode_ext(code: int, data: bytes, region: memoryview, hook: Callable, allow_pickle: bool,
                made: dict[int, str]) -> Any:
    def inner() -> Any:
        return msgpack.unpackb(data, ext_hook=hook, raw=False, strict_map_key=False, use_list=True)

    if code == EXT_TUPLE:
        return tuple(inner())
    if code == EXT_SET:
        return set(inner())
    if code == EXT_FROZENSET:
        return frozenset(inner())
    if code == EXT_BLOB:
        return _decode_blob(inner(), region, made)
    if code == EXT_LIST:
        return _decode_list(inner(), region, hook)
    if code == EXT_ARRAY:
        dtype, shape, raw = inner()
        np = _numpy()
        return np.frombuffer(raw, dtype=np.dtype(dtype)).reshape(shape).copy()
    if code == EXT_NPSCALAR:
        dtype, raw = inner()
        np = _numpy()
        return np.frombuffer(raw, dtype=np.dtype(dtype))[0]
    if code == EXT_DATETIME:
        return _dt.datetime.fromisoformat(inner()[0])
    if code == EXT_DATE:
        return _dt.date.fromisoformat(inner()[0])
    if code == EXT_TIME:
        return _dt.time.fromisoformat(inner()[0])
    if code == EXT_TIMEDELTA:
        return _dt.timedelta(*inner())
    if code == EXT_UUID:
        return uuid.UUID(bytes=data)
    if code == EXT_DECIMAL:
        return decimal.Decimal(data.decode())
    if code == EXT_BIGINT:
        return int.from_bytes(data, "little", signed=True)
    if code == EXT_BYTEARRAY:
        return bytearray(data)
    if code == EXT_MEMORYVIEW:
        return memoryview(data)
    if code == EXT_OBJECT:
        name, value = inner()
        return _codec_named(name).decode(value)
    if code == EXT_PICKLE:
        if not allow_pickle:
            raise SerializationError("stored state holds a pickled object; restore with allow_pickle=True to load it")
        return pickle.loads(data)
    raise SerializationError(f"stored state holds unknown extension type {code}")


def _decode_blob(ref: list, region: memoryview, made: dict[int, str]) -> Any:
    offset, nbytes, kind, meta = ref
    if offset < 0 or nbytes < 0 or offset + nbytes > len(region):
        raise SerializationError(f"blob reference [{offset}, +{nbytes}) lies outside the {len(region)}-byte blob region")
    if kind == BLOB_STR and offset in made and len(made[offset]) == nbytes:
        return made[offset]
    view = region[offset:offset + nbytes]
    if kind == BLOB_ARRAY:
        dtype, shape = meta
        np = _numpy()
        return np.frombuffer(view, dtype=np.dtype(dtype)).reshape(shape)
    if kind == BLOB_STR:
        return str(view, "utf-8")
    if kind == BLOB_BYTES:
        return bytes(view)
    if kind == BLOB_BYTEARRAY:
        return bytearray(view)
    if kind == BLOB_MEMORYVIEW:
        return memoryview(bytes(view))
    raise SerializationError(f"unknown blob kind {kind}")


def _decode_list(ref: list, region: memoryview, hook: Callable) -> list:
    offset, nbytes, count = ref
    if offset < 0 or nbytes < 0 or offset + nbytes > len(region) or not 0 <= count <= nbytes:
        raise SerializationError(f"list reference [{offset}, +{nbytes}) x{count} does not fit the "
                                 f"{len(region)}-byte blob region")
    data = b"\xdd" + count.to_bytes(4, "big") + region[offset:offset + nbytes]
    return msgpack.unpackb(data, ext_hook=hook, raw=False, strict_map_key=False, use_list=True)


def _numpy() -> Any:
    """numpy, imported on first use: a process that never meets an array does not pay for it."""
    import numpy
    return numpy


def _codec_named(name: str) -> _Codec:
    codec = _BY_NAME.get(name)
    if codec is None and _AUTOLOAD:
        _autoload(name)
        codec = _BY_NAME.get(name)
    if codec is not None:
        return codec
    module, _, qualname = name.partition(":")
    obj: Any = sys.modules.get(module)
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
    if isinstance(obj, type) and (dataclasses.is_dataclass(obj) or _is_pydantic(obj)):
        register_codec(obj)
        return _BY_NAME[name]
    raise SerializationError(
        f"stored state holds a {name!r} object; import its module or register it with casstore.register_codec")


def _fields_of(obj: Any) -> dict:
    if dataclasses.is_dataclass(obj):
        return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    return {name: getattr(obj, name) for name in type(obj).model_fields}


def _build(cls: type, fields: dict) -> Any:
    if _is_pydantic(cls):
        return cls.model_construct(**fields)
    obj = cls.__new__(cls)
    for k, v in fields.items():
        object.__setattr__(obj, k, v)
    return obj


def _is_pydantic(cls: type) -> bool:
    return hasattr(cls, "model_fields") and hasattr(cls, "model_construct")


def _stable_order(items: Any) -> list:
    try:
        return sorted(items)
    except TypeError:
        return list(items)
