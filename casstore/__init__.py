"""casstore: a content-addressed, deduplicating snapshot store for AI-agent state."""

from .codec import register_codec
from .errors import (CasstoreError, ConfigurationError, IntegrityError, SerializationError, SnapshotNotFoundError,
                     StorageError)
from .store import SnapshotInfo, Stats, Store, open
from .tree import Proof, verify_proof

__version__ = "0.1.0"

__all__ = [
    "open", "Store", "SnapshotInfo", "Stats", "Proof", "verify_proof", "register_codec",
    "CasstoreError", "SnapshotNotFoundError", "IntegrityError", "StorageError", "ConfigurationError",
    "SerializationError",
]
