"""casstore: a content-addressed, deduplicating snapshot store for AI-agent state."""

from .codec import register_codec
from .errors import (AuthenticationError, CasstoreError, ChunkNotFoundError, ConfigurationError, IntegrityError,
                     PathNotFoundError, SerializationError, SnapshotNotFoundError, StorageError)
from .gc import GCReport
from .store import SnapshotInfo, Stats, Store, open
from .verify import Problem, VerifyReport, verify_without_key
from . import config
from .tree import Proof, verify_proof

__version__ = "0.1.0"

__all__ = [
    "open", "Store", "SnapshotInfo", "Stats", "Proof", "verify_proof", "VerifyReport", "Problem", "GCReport", "register_codec",
    "CasstoreError", "ChunkNotFoundError", "SnapshotNotFoundError", "IntegrityError", "StorageError", "ConfigurationError",
    "SerializationError", "AuthenticationError", "PathNotFoundError", "verify_without_key",
]
