"""The exceptions casstore raises; every one is a CasstoreError."""

from __future__ import annotations


class CasstoreError(Exception):
    """Base class of every error casstore raises on purpose."""


class SnapshotNotFoundError(CasstoreError, LookupError):
    """No snapshot has this id (or the prefix matches none, or several)."""


class ChunkNotFoundError(CasstoreError, LookupError):
    """A chunk hash is not part of the snapshot it was asked about."""


class PathNotFoundError(CasstoreError, LookupError):
    """A path asked for inside a snapshot's state (restore's path) leads to nothing there."""


class IntegrityError(CasstoreError):
    """Stored bytes do not match their hash or their declared format."""


class StorageError(CasstoreError):
    """The object store failed or refused an operation (names the URL)."""


class ObjectNotFoundError(StorageError, FileNotFoundError):
    """An object the repository expected is missing from storage."""


class ConfigurationError(CasstoreError, ValueError):
    """A repository, URL or option is invalid or missing."""


class AuthenticationError(ConfigurationError):
    """No key of an encrypted repository opens with the password given (or none was given)."""


class SerializationError(CasstoreError, TypeError):
    """Part of the state cannot be encoded; the message names its path."""
