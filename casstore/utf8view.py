"""Zero-copy UTF-8 bytes of big ASCII strings, both ways.

CPython stores a str of pure ASCII in its compact form, whose bytes already
are its UTF-8 encoding, and PyUnicode_AsUTF8AndSize (stable C API) hands out a
pointer to them without copying. str.encode instead copies the whole string
into fresh memory before a byte of it is chunked: on this project's 2-core
VM, where fresh pages are slow to fault in, encoding the 512 MB of text of
the 1 GiB benchmark state took 0.3-1.4 s, a quarter of the snapshot. The view
keeps its str alive and is read-only, so it is as safe as the copy: a str
never changes. Other strings, and other Pythons, get the copy.

The other way, a restore decodes a big ASCII string's chunks straight into a
new str (new_ascii: PyUnicode_New, then the same pointer) instead of into a
buffer that str() then copies: for the 1 GiB benchmark state that copy was
512 MB of fresh pages and 0.2-1.4 s of the restore. The str is handed out
only after its bytes were checked to be ASCII (is_ascii), so it is a valid
str whatever storage held.
"""

from __future__ import annotations

import ctypes
from typing import Any

VIEW_MIN = 64 << 10  # shorter strings are encoded: a copy of them costs less than the ctypes call


def _pythonapi(name: str, restype: Any, argtypes: list) -> Any:
    try:
        fn = getattr(ctypes.pythonapi, name)
    except (AttributeError, ValueError):   # not CPython
        return None
    fn.restype = restype
    fn.argtypes = argtypes
    return fn


_AS_UTF8 = _pythonapi("PyUnicode_AsUTF8AndSize", ctypes.c_void_p, [ctypes.py_object, ctypes.POINTER(ctypes.c_ssize_t)])
_NEW = _pythonapi("PyUnicode_New", ctypes.py_object, [ctypes.c_ssize_t, ctypes.c_uint32])
_HIGH_BITS = 0x8080808080808080


def _buffer_of(s: str) -> memoryview | None:
    """s's own bytes, writable, if s is in CPython's compact ASCII form (else None)."""
    size = ctypes.c_ssize_t()
    address = _AS_UTF8(s, ctypes.byref(size))
    if not address or size.value != len(s):
        return None
    buf = (ctypes.c_char * size.value).from_address(address)
    buf.owner = s   # the view holds buf, buf holds s: the bytes live as long as the view
    return memoryview(buf).cast("B")


def utf8(s: str) -> memoryview:
    """The UTF-8 bytes of s as a read-only byte view: s's own buffer when it is ASCII and big, else a copy."""
    if _AS_UTF8 is not None and len(s) >= VIEW_MIN and s.isascii():
        view = _buffer_of(s)
        if view is not None:
            return view.toreadonly()
    return memoryview(s.encode("utf-8"))


def new_ascii(n: int) -> tuple[str, memoryview] | None:
    """A new n-character ASCII str and its writable bytes, to fill before the str is used
    (None where CPython's API is missing). Until is_ascii(bytes) holds, the str must not
    escape: a byte >= 0x80 in it would break CPython's own assumptions about it."""
    if _NEW is None or _AS_UTF8 is None or n <= 0:
        return None
    s = _NEW(n, 127)
    view = _buffer_of(s)
    return None if view is None else (s, view)


def is_ascii(view: memoryview) -> bool:
    """Whether every byte of view is below 0x80 (eight bytes per step, in numpy)."""
    import numpy as np
    body = len(view) // 8 * 8
    words = np.frombuffer(view[:body], dtype=np.uint64)
    high = int(np.bitwise_or.reduce(words)) if body else 0
    return not high & _HIGH_BITS and bytes(view[body:]).isascii()
