"""The local LMDB index: a rebuildable cache of what the repository holds."""

from .db import Index, Location

__all__ = ["Index", "Location"]
