"""Zero-copy UTF-8 bytes of big ASCII strings.

CPython stores a str of pure ASCII in its compact form, whose bytes already
are its UTF-8 encoding, and PyUnicode_AsUTF8AndSize (stable C API) hands out a
pointer to them without copying. str.encode instead copies the whole string
into fresh memory before a byte of it is chunked: on this project's 2-core
VM, where fresh pages are slow to fault in, encoding the 512 MB of text of
the 1 GiB benchmark state took 0.3-1.4 s, a quarter of the snapshot. The view
keeps its str alive and is read-only, so it is as safe as the copy: a str
never changes. Other strings, and other Pythons, get the copy.
"""

from __future__ import annotations

import ctypes

VIEW_MIN = 64 << 10  # shorter strings are encoded: a copy of them costs less than the ctypes call


def _as_utf8():
    try:
        fn = ctypes.pythonapi.PyUnicode_AsUTF8AndSize
    except (AttributeError, ValueError):   # not CPython
        return None
    fn.restype = ctypes.c_void_p
    fn.argtypes = [ctypes.py_object, ctypes.POINTER(ctypes.c_ssize_t)]
    return fn


_AS_UTF8 = _as_utf8()


def utf8(s: str) -> memoryview:
    """The UTF-8 bytes of s as a read-only byte view: s's own buffer when it is ASCII and big, else a copy."""
    if _AS_UTF8 is not None and len(s) >= VIEW_MIN and s.isascii():
        size = ctypes.c_ssize_t()
        address = _AS_UTF8(s, ctypes.byref(size))
        if address and size.value == len(s):
            buf = (ctypes.c_char * size.value).from_address(address)
            buf.owner = s   # the view holds buf, buf holds s: the bytes live as long as the view
            return memoryview(buf).cast("B").toreadonly()
    return memoryview(s.encode("utf-8"))
