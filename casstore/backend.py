"""Byte objects under one root of an fsspec filesystem: the lowest layer of casstore.

A `Backend` knows keys ("config", "packs/ab/abcd…", "snapshots/12/12…") and bytes,
nothing else. It gives the layers above four guarantees:

- put is atomic: a reader sees the whole object or nothing. Local folders get a
  temp file + fsync + rename + directory fsync (durable when put returns), or,
  for a small pack-and-manifest pair (put_pair), an append to a write-ahead
  journal first (see journal.py); object stores are atomic per object, so a
  remote put is a single request.
- every failure is a `StorageError` naming the operation and the object URL, with
  credentials redacted and the cause chained; a missing object is an
  `ObjectNotFoundError`.
- transient failures (timeouts, resets, 5xx, throttling) are retried with capped
  exponential backoff and full jitter; not-found and permission errors are not.
- batch reads and writes run on a bounded thread pool, because object stores are
  latency-bound and one request at a time wastes the link.

The local filesystem is driven with `os` directly (fsync and O_EXCL semantics are
exact there); every other protocol goes through fsspec.
"""

from __future__ import annotations

import errno
import os
import random
import stat
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, TypeVar
from urllib.parse import urlsplit, urlunsplit


from casstore import journal as _journal
from casstore import observability as _obs
from casstore.errors import ConfigurationError, ObjectNotFoundError, StorageError

__all__ = ["Backend", "redact_url"]

T = TypeVar("T")

BACKOFF_BASE = 0.05  # seconds; first retry waits up to this long
BACKOFF_CAP = 2.0  # seconds; no single wait is longer
TEMP_MARKER = ".tmp-"  # in-flight local puts are named ".<name>.tmp-<random>"
PATHS_KEPT = 8192  # local paths of keys read by range, kept so a restore's hundreds of reads skip re-checking keys

# pip packages that provide fsspec drivers, for the "install X" hint.
_DRIVER_PACKAGES = {
    "s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs",
    "az": "adlfs", "abfs": "adlfs", "abfss": "adlfs", "adl": "adlfs",
    "sftp": "paramiko", "ssh": "paramiko", "hf": "huggingface_hub",
    "oci": "ocifs", "webdav": "webdav4", "dropbox": "dropboxdrivefs",
}

# S3-style error codes and HTTP statuses that mean "try again later".
_TRANSIENT_CODES = {
    "SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout",
    "RequestTimeoutException", "Throttling", "ThrottlingException",
    "RequestLimitExceeded", "TooManyRequestsException", "ProvisionedThroughputExceededException",
    "500", "502", "503", "504",
}
_TRANSIENT_STATUSES = {429, 500, 502, 503, 504}
# Exception class names (anywhere in the MRO) of network-level failures raised by
# botocore / aiohttp / asyncio, matched by name so this module needs none of them.
_TRANSIENT_NAME_PARTS = (
    "Timeout", "ConnectionError", "ConnectionClosed", "ServerDisconnected",
    "HTTPClientError", "IncompleteRead", "PayloadError", "ResponseParserError",
    "ProtocolError", "ClientOSError", "EndpointConnectionError",
)
_TRANSIENT_MESSAGE_PARTS = (
    "SlowDown", "reduce your request rate", "Service Unavailable", "ServiceUnavailable",
    "InternalError", "Connection reset", "timed out", "Throttl",
)
_PERMANENT_OS_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)


def redact_url(url: str) -> str:
    """Return `url` without `user:password@` and without a query string's values."""
    if "://" not in url:
        return url
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)[-1] if "@" in parts.netloc else parts.netloc
    query = "<redacted>" if parts.query else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


# --------------------------------------------------------------------------- errors


def _is_not_found(exc: BaseException) -> bool:
    if isinstance(exc, FileNotFoundError):
        return True
    code = _error_code(exc)
    return code in {"NoSuchKey", "404", "NotFound"}


def _error_code(exc: BaseException) -> str | None:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        code = response.get("Error", {}).get("Code")
        if code is not None:
            return str(code)
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if status is not None:
            return str(status)
    return None


def _causes(exc: BaseException | None):
    """The exception and the chain of its explicit causes (s3fs wraps boto errors)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__


def is_transient(exc: BaseException) -> bool:
    """True when retrying `exc` may succeed: network trouble, throttling, 5xx."""
    if isinstance(exc, _PERMANENT_OS_ERRORS):
        return False
    chain = list(_causes(exc))
    for e in chain:  # a service error code is the most precise verdict
        code = _error_code(e)
        if code is not None:
            return code in _TRANSIENT_CODES
        status = getattr(e, "status", None) or getattr(e, "status_code", None)
        if isinstance(status, int) and 400 <= status < 600:
            return status in _TRANSIENT_STATUSES
    for e in chain:
        if isinstance(e, _PERMANENT_OS_ERRORS):
            return False
        names = [cls.__name__ for cls in type(e).__mro__]
        if any(part in name for name in names for part in _TRANSIENT_NAME_PARTS):
            return True
        if isinstance(e, (TimeoutError, ConnectionError)):
            return True
        if any(part in str(e) for part in _TRANSIENT_MESSAGE_PARTS):
            return True
    if isinstance(exc, OSError):
        # Unclassified I/O trouble (s3fs reports unknown service errors as EIO):
        # worth a bounded retry, except the errnos that never heal by waiting.
        return exc.errno not in (errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.ENAMETOOLONG, errno.EEXIST)
    return False


def backoff_delay(attempt: int, base: float = BACKOFF_BASE, cap: float = BACKOFF_CAP) -> float:
    """Full-jitter exponential backoff: uniform in [0, min(cap, base * 2**attempt))."""
    return random.uniform(0, min(cap, base * (2**attempt)))


def with_retries(fn: Callable[[], T], retries: int, sleep: Callable[[float], None] = time.sleep,
                 on_retry: Callable[[BaseException, int], None] | None = None) -> T:
    """Call `fn`, retrying transient failures up to `retries` times; re-raise the last.

    `on_retry(exc, attempt)` is told of each transient failure before its retry."""
    attempt = 0
    while True:
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - classified below
            if attempt >= retries or not is_transient(exc):
                raise
            if on_retry is not None:
                on_retry(exc, attempt)
            sleep(backoff_delay(attempt))
            attempt += 1


# --------------------------------------------------------------------------- backend


class Backend:
    """Byte objects under one root folder/prefix of an fsspec filesystem."""

    def __init__(
        self,
        url: str,
        storage_options: dict | None = None,
        *,
        max_workers: int = 8,
        retries: int = 5,
    ) -> None:
        if not isinstance(url, (str, os.PathLike)):
            raise ConfigurationError(f"storage URL must be a string, got {type(url).__name__}")
        url = os.fspath(url)
        if not url:
            raise ConfigurationError("storage URL is empty")
        options = dict(storage_options or {})
        shown = redact_url(url)
        s3 = _protocol_of(url) in ("s3", "s3a")
        if s3:
            options = _single_attempt_sdk(options)
        try:
            fs, root = _open_fs(url, options)
        except ImportError as exc:
            raise ConfigurationError(_missing_driver_message(url, shown)) from exc
        except ValueError as exc:
            if "Protocol not known" in str(exc):
                raise ConfigurationError(f"unknown storage protocol in {shown!r}: {exc}") from exc
            raise ConfigurationError(f"invalid storage URL {shown!r}: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - driver constructors raise anything
            # Never echo the options: they hold secrets.
            raise ConfigurationError(
                f"cannot open storage {shown!r}: {type(exc).__name__}"
            ) from None

        if s3 and type(fs).__module__.startswith("s3fs"):
            fs.retries = 1  # this class retries; nested loops would multiply attempts
            # A whole-object get is one GET, not a HEAD first to plan parallel parts.
            self._get_kwargs: dict = {"max_concurrency": 1}
            self._s3 = True
        else:
            self._get_kwargs = {}
            self._s3 = False
        protocols = ("file",) if fs is None else fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
        self.fs = fs
        self.is_local: bool = "file" in protocols or "local" in protocols
        self.local_path: str | None = os.path.abspath(root) if self.is_local else None
        self._root = self.local_path if self.is_local else root.rstrip("/")
        if self.is_local:
            self.url = self.local_path if "://" not in url else f"file://{self.local_path}"
        else:
            self.url = shown.rstrip("/") or shown
        self.retries = max(0, int(retries))
        self.max_workers = max(1, int(max_workers))
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        self._read_paths: dict[str, str] = {}  # key -> checked local path (see _read_path)
        self._stats_lock = threading.Lock()
        self.stats: dict[str, int] = {"put": 0, "get": 0, "list": 0, "delete": 0, "head": 0}
        self._journal: _journal.Journal | None = None
        if self.is_local and _journal.supported():
            self._journal = _journal.Journal(self.local_path, _write_all)
            self._replay_journals()

    def __repr__(self) -> str:
        return f"Backend({self.url!r})"

    __str__ = __repr__

    # ------------------------------------------------------------------ plumbing

    def _path(self, key: str) -> str:
        """The filesystem path of `key`, after checking the key is a plain relative name."""
        if not isinstance(key, str) or not key or key.startswith("/") or key.endswith("/"):
            raise ValueError(f"invalid object key {key!r}")
        parts = key.split("/")
        if any(p in ("", ".", "..") for p in parts):
            raise ValueError(f"invalid object key {key!r}")
        if self.is_local:
            return os.path.join(self._root, *parts)
        return f"{self._root}/{key}"

    def _read_path(self, key: str) -> str:
        """_path(key), remembered for up to PATHS_KEPT keys: checking and joining a key costs more than
        the pread of a small range it names."""
        path = self._read_paths.get(key)
        if path is None:
            path = self._path(key)
            if len(self._read_paths) >= PATHS_KEPT:
                self._read_paths.clear()
            self._read_paths[key] = path
        return path

    def object_url(self, key: str) -> str:
        """The (redacted) URL of `key`, for messages."""
        return f"{self.url.rstrip('/')}/{key}" if key else self.url

    def _count(self, kind: str) -> None:
        with self._stats_lock:
            self.stats[kind] += 1

    def _run(self, op: str, key: str, kind: str | None, fn: Callable[[], T]) -> T:
        """Run one request with retries; translate failures into casstore errors.

        kind names the request counter to bump per attempt (None: the second step of a counted request)."""

        def attempt() -> T:
            if kind is not None:
                self._count(kind)
            return fn()

        try:
            return with_retries(attempt, self.retries,
                                on_retry=lambda exc, n: _obs.request_retry(self, op, key, exc, n))
        except StorageError:
            raise
        except Exception as exc:  # noqa: BLE001 - every failure becomes a StorageError
            raise self._failure(op, key, exc) from exc

    def _failure(self, op: str, key: str, exc: BaseException) -> StorageError:
        """The casstore error for a failed request (ObjectNotFoundError when the object is missing)."""
        where = self.object_url(key)
        if _is_not_found(exc):
            return ObjectNotFoundError(f"{op} {where}: object not found")
        detail = _describe(exc)
        _obs.request_failed(self, op, key, exc, f"{op} {where} failed: {detail}")
        return StorageError(f"{op} {where} failed: {detail}")

    def _executor(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.max_workers, thread_name_prefix="casstore-io")
            return self._pool

    # ------------------------------------------------------------------ writes

    def put(self, key: str, data: bytes | bytearray | memoryview | list[bytes | memoryview], *,
            durable: bool = True, cache: bool = True) -> None:
        """Store `data` under `key` atomically, replacing any previous object.

        data may be a list of pieces, the object's bytes in order: a local put
        writes them with writev, so a pack's compressed chunks reach the file
        without first being joined into one buffer (a copy of the whole pack);
        a remote put joins them into its one request.
        durable=False skips the fsyncs of a local put, for objects whose loss
        in a power cut is harmless (gc marks: a lost mark only delays a deletion).
        cache=False asks the OS to drop a durable local object's pages from its
        page cache once they are on disk (see _drop_cached).
        """
        path = self._path(key)
        if self.is_local:
            self._run("put", key, "put", lambda: _local_put(path, data, durable, cache))
        else:
            payload = b"".join(data) if isinstance(data, list) else data if isinstance(data, bytes) else bytes(data)
            self._run("put", key, "put", lambda: self.fs.pipe_file(path, payload))

    def put_pair(self, first: tuple[str, bytes | memoryview | list[bytes | memoryview]],
                 then: tuple[str, bytes | memoryview], *, tombstone: str | None = None) -> None:
        """Store two objects durably so that `then` never survives a crash without `first`
        (a pack, then the manifest that needs it).

        A local folder appends a small pair to its write-ahead journal (one
        fdatasync; see journal.py), then puts both as files whose syncs are
        batched; a crash replays the journal when the folder is next opened,
        except `then` when `tombstone` exists by then (its snapshot was deleted).
        A larger pair writes and fsyncs both temp files at once (`then`'s on the
        I/O pool: the two fsyncs overlap, which measured 0.8x the time of two
        puts in a row), renames `first` and fsyncs its folder, and only then
        renames `then`. A remote store gets one put after the other: each is
        durable when its request returns.
        """
        if not self.is_local:
            self.put(*first)
            self.put(*then)
            return
        (key, data), (then_key, then_data) = first, then
        journal = self._journal
        if journal is not None and not journal.broken and (
                _nbytes(data) + _nbytes(then_data) <= _journal.MAX_PAIR):
            self._count("put")   # two objects, one request to the journal
            self._run("put", key, "put", lambda: journal.put(
                [(key, data, None), (then_key, then_data, tombstone)], self._put_unsynced))
            return
        path, then_path = self._path(key), self._path(then_key)
        staged = self._executor().submit(self._run, "put", then_key, "put", lambda: _write_temp(then_path, then_data))
        try:
            self._run("put", key, "put", lambda: _local_put(path, data))
        except BaseException:
            _discard_staged(staged)
            raise
        tmp = staged.result()
        self._run("put", then_key, None, lambda: _rename(tmp, then_path, durable=True))

    def _put_unsynced(self, key: str, data: bytes | memoryview | list[bytes | memoryview]) -> str:
        """A local put whose durability the journal already holds; the file's path."""
        path = self._path(key)
        _local_put(path, data, durable=False)
        return path

    def _replay_journals(self) -> None:
        """Put again what a crashed writer's journal holds and the folder lost (see journal.py)."""
        for path, fd in _journal.orphans(self.local_path):
            try:
                with open(fd, "rb", closefd=False) as f:
                    data = f.read()
                restored = 0
                for objects in _journal.records(data):
                    for key, obj, tomb in objects:
                        if tomb is not None and os.path.exists(self._path(tomb)):
                            continue
                        target = self._path(key)
                        if not _holds(target, obj):
                            _local_put(target, obj)
                            restored += 1
                _unlink_quietly(path)   # a reader without write access leaves it to the next writer
            except OSError as exc:
                raise self._failure("replay journal", f"{_journal.FOLDER}/{os.path.basename(path)}", exc) from exc
            finally:
                os.close(fd)
            if restored:
                _obs.log.warning("casstore: replayed journal %s of a crashed writer: %d objects put again",
                                 path, restored)

    def ensure_prefixes(self, prefixes: list[str]) -> None:
        """Create the folders that keys under these prefixes go to (local folders; a no-op remotely).

        Made once when a repository is created (as restic makes data/00..ff), so
        that the first hundreds of puts do not each create a shard folder and
        fsync its parent: that cost a new repository's pack-and-manifest pair
        1.3x the time of one whose folders exist.
        """
        if not self.is_local:
            return
        parents = set()
        for prefix in prefixes:
            path = self._path(prefix)
            os.makedirs(path, exist_ok=True)
            parents.add(os.path.dirname(path))
        for parent in sorted(parents, key=len, reverse=True):
            _fsync_dir(parent)
        _fsync_dir(self._root)

    def put_many(self, items: list[tuple[str, bytes | memoryview]], *, durable: bool = True) -> None:
        """Put every (key, data) pair, in parallel; raise the first failure after all finish."""
        items = list(items)
        if len(items) <= 1:
            for key, data in items:
                self.put(key, data, durable=durable)
            return
        futures = [self._executor().submit(self.put, key, data, durable=durable) for key, data in items]
        _gather(futures)

    def put_if_absent(self, key: str, data: bytes | bytearray | memoryview) -> bool:
        """Create `key` only if it does not exist; True if this call wrote it.

        Local: the complete temp file is hard-linked to the final name, which fails
        atomically if the name exists. S3: a conditional put (If-None-Match: *).
        Other remotes: best effort, an existence check then a put.
        """
        path = self._path(key)
        if self.is_local:
            return self._run("put_if_absent", key, "put", lambda: _local_create(path, data))
        payload = bytes(data) if not isinstance(data, bytes) else data
        if _supports_conditional_put(self.fs):
            def conditional() -> bool:
                try:
                    self.fs.pipe_file(path, payload, mode="create")
                except FileExistsError:
                    return False
                return True

            return self._run("put_if_absent", key, "put", conditional)
        if self.exists(key):
            return False
        self.put(key, payload)
        return True

    def delete(self, key: str) -> None:
        """Remove `key`; a missing key is not an error."""
        path = self._path(key)

        def remove() -> None:
            try:
                if self.is_local:
                    os.unlink(path)
                else:
                    self.fs.rm_file(path)
            except FileNotFoundError:
                pass

        self._run("delete", key, "delete", remove)

    # ------------------------------------------------------------------ reads

    def get(self, key: str) -> bytes:
        """The whole object; ObjectNotFoundError if it does not exist."""
        path = self._path(key)
        if self.is_local:
            return self._run("get", key, "get", lambda: _local_read(path))
        return self._run("get", key, "get", lambda: self.fs.cat_file(path, **self._get_kwargs))

    def get_range(self, key: str, start: int, end: int) -> bytes:
        """Bytes [start, end) of the object; StorageError if fewer bytes exist.

        A local file is read with one pread outside the retry loop: a local read
        error does not heal by waiting, and a restore reads hundreds of small
        ranges, where the loop's bookkeeping costs more than the read.
        """
        if start < 0 or end < start:
            raise ValueError(f"invalid byte range [{start}, {end}) for {self.object_url(key)}")
        path = self._read_path(key) if self.is_local else self._path(key)
        if end == start:
            return b""
        if self.is_local:
            self._count("get")
            try:
                data = _local_read(path, start, end)
            except OSError as exc:
                raise self._failure("get_range", key, exc) from exc
        else:
            data = self._run("get_range", key, "get", lambda: self.fs.cat_file(path, start=start, end=end))
        if len(data) != end - start:
            raise StorageError(
                f"get_range {self.object_url(key)} [{start}, {end}): short read, "
                f"got {len(data)} of {end - start} bytes"
            )
        return data

    def get_ranges(self, requests: list[tuple[str, int, int]]) -> list[bytes]:
        """Many ranged reads on the bounded pool; results in request order."""
        requests = list(requests)
        if len(requests) <= 1:
            return [self.get_range(k, s, e) for k, s, e in requests]
        futures = [self._executor().submit(self.get_range, k, s, e) for k, s, e in requests]
        return _gather(futures)

    def exists(self, key: str) -> bool:
        """True if an object is stored under `key`."""
        try:
            self.size(key)
        except ObjectNotFoundError:
            return False
        return True

    def size(self, key: str) -> int:
        """The object's length in bytes; ObjectNotFoundError if it does not exist."""
        path = self._path(key)

        def stat() -> int:
            if self.is_local:
                st = os.stat(path)
                if not _stat_is_file(st):
                    raise FileNotFoundError(errno.ENOENT, "not a file", path)
                return st.st_size
            if self._s3:
                # One HEAD; fs.info would add a LIST on a miss to look for a "folder".
                bucket, name, _ = self.fs.split_path(path)
                return int(self.fs.call_s3("head_object", Bucket=bucket, Key=name)["ContentLength"])
            info = self.fs.info(path)
            if info.get("type") != "file":
                raise FileNotFoundError(errno.ENOENT, "not a file", path)
            return int(info["size"])

        return self._run("head", key, "head", stat)

    def list(self, prefix: str) -> list[str]:
        """Every key under the folder `prefix` (recursive), sorted; [] if there is none.

        `prefix` is a folder ("packs", "packs/ab/") or "" for the whole root; an exact
        key lists itself. Temp files of in-flight local puts are never listed.
        """
        prefix = (prefix or "").strip("/")
        if prefix:
            self._path(prefix)  # validates it
        if self.is_local:
            keys = self._run("list", prefix, "list", lambda: _local_list(self._root, prefix))
        else:
            keys = self._run("list", prefix, "list", lambda: self._remote_list(prefix))
        return sorted(k for k in keys if not _is_temp_name(k.rsplit("/", 1)[-1]))

    def _remote_list(self, prefix: str) -> list[str]:
        path = f"{self._root}/{prefix}" if prefix else self._root
        invalidate = getattr(self.fs, "invalidate_cache", None)
        if invalidate is not None:
            invalidate(path)
        try:
            found = self.fs.find(path, withdirs=False, detail=True)
        except FileNotFoundError:
            return []
        base = self.fs._strip_protocol(self._root).rstrip("/")
        keys = []
        for name, info in found.items():
            if info.get("type", "file") != "file" or name.endswith("/"):
                continue
            name = self.fs._strip_protocol(name)
            if base:
                if not name.startswith(base + "/"):
                    continue
                name = name[len(base) + 1 :]
            keys.append(name.lstrip("/"))
        return keys

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Make journaled puts durable, then shut down the thread pool (waits for running requests)."""
        try:
            if self._journal is not None:
                try:
                    self._journal.close()
                except OSError as exc:   # their journal stays, for the next open to replay
                    raise self._failure("sync journaled puts in", _journal.FOLDER, exc) from exc
        finally:
            with self._pool_lock:
                pool, self._pool = self._pool, None
            if pool is not None:
                pool.shutdown(wait=True)

    def __enter__(self) -> "Backend":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# --------------------------------------------------------------------------- helpers


def _gather(futures: list) -> list:
    """Wait for every future; return results in order, or raise the first error."""
    results, first_error = [], None
    for fut in futures:
        try:
            results.append(fut.result())
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            if first_error is None:
                first_error = exc
            results.append(None)
    if first_error is not None:
        raise first_error
    return results


def _describe(exc: BaseException) -> str:
    """A short, secret-free description of a failure."""
    code = None
    for e in _causes(exc):
        code = _error_code(e)
        if code:
            break
    text = str(exc).strip() or type(exc).__name__
    if len(text) > 300:
        text = text[:300] + "…"
    return f"{type(exc).__name__}{f' [{code}]' if code else ''}: {text}"


def _open_fs(url: str, options: dict) -> tuple[Any, str]:
    """(fsspec filesystem, root) for a URL; (None, path) for a plain local path.

    Local folders need nothing from fsspec (every local operation is plain os
    calls), so fsspec and its imports are loaded only for other protocols.
    """
    if _protocol_of(url) == "file" and "::" not in url and not options:
        path = url[len("file://"):] if url.startswith("file://") else url
        return None, os.path.expanduser(path)
    from fsspec.core import url_to_fs
    return url_to_fs(url, **options)


def _protocol_of(url: str) -> str:
    """The (innermost) protocol of an fsspec URL; "file" for a plain path."""
    if "://" not in url:
        return "file"
    return url.split("://", 1)[0].split("::")[-1].lower()


def _single_attempt_sdk(options: dict) -> dict:
    """S3 SDK options: botocore retries throttling and 5xx on its own (5 attempts,
    slow backoff); Backend retries every request itself, so turn botocore's loop
    off unless the caller configured it explicitly."""
    config = dict(options.get("config_kwargs") or {})
    config.setdefault("retries", {"total_max_attempts": 1, "mode": "standard"})
    # Restores fetch many packs at once; botocore's default of 10 connections would queue them.
    config.setdefault("max_pool_connections", 32)
    return {**options, "config_kwargs": config}


def _missing_driver_message(url: str, shown: str) -> str:
    protocol = _protocol_of(url)
    package = _DRIVER_PACKAGES.get(protocol)
    if package is None:
        try:
            from fsspec.registry import known_implementations

            err = known_implementations.get(protocol, {}).get("err")
        except Exception:  # noqa: BLE001
            err = None
        hint = f" ({err})" if err else ""
    else:
        hint = f"; install it with `pip install {package}`"
    return f"no fsspec driver for protocol {protocol!r} needed by {shown!r}{hint}"


def _supports_conditional_put(fs: Any) -> bool:
    """s3fs turns pipe_file(mode="create") into PutObject with If-None-Match: *."""
    protocols = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
    return "s3" in protocols and type(fs).__module__.startswith("s3fs")


def _nbytes(data: bytes | bytearray | memoryview | list[bytes | memoryview]) -> int:
    return sum(map(len, data)) if isinstance(data, list) else len(data)


def _holds(path: str, data: memoryview) -> bool:
    """Whether the file at path holds exactly data."""
    try:
        if os.path.getsize(path) != len(data):
            return False
        with open(path, "rb") as f:
            return f.read() == data
    except OSError:
        return False


def _is_temp_name(name: str) -> bool:
    return name.startswith(".") and TEMP_MARKER in name


def _stat_is_file(st: os.stat_result) -> bool:
    return stat.S_ISREG(st.st_mode)


def _fsync_dir(path: str) -> None:
    """Make a rename/link/create inside `path` durable (no-op where unsupported)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _ensure_parent(path: str) -> None:
    """Create the parent folders of `path`, fsyncing each new entry's parent."""
    parent = os.path.dirname(path)
    if os.path.isdir(parent):
        return
    missing = []
    d = parent
    while not os.path.isdir(d):
        missing.append(d)
        d = os.path.dirname(d)
    for d in reversed(missing):
        try:
            os.mkdir(d)
        except FileExistsError:
            pass
        _fsync_dir(os.path.dirname(d))


def _write_temp(path: str, data: bytes | bytearray | memoryview | list[bytes | memoryview],
                durable: bool = True, cache: bool = True) -> str:
    """Write `data` (bytes, or pieces in order) to a fresh (fsynced when durable) temp file next to
    `path`; return its name. cache=False drops a durable file's pages from the page cache (_drop_cached)."""
    parent = os.path.dirname(path)
    tmp = os.path.join(parent, f".{os.path.basename(path)}{TEMP_MARKER}{uuid.uuid4().hex}")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    try:  # the folder nearly always exists: create it only when the open says it does not
        fd = os.open(tmp, flags, 0o644)
    except FileNotFoundError:
        _ensure_parent(path)
        fd = os.open(tmp, flags, 0o644)
    try:
        _write_all(fd, data if isinstance(data, list) else [data])
        if durable:
            os.fsync(fd)
            if not cache:
                _drop_cached(fd)
    except BaseException:
        os.close(fd)
        _unlink_quietly(tmp)
        raise
    os.close(fd)
    return tmp


def _write_all(fd: int, pieces: list[bytes | bytearray | memoryview]) -> None:
    """Write every piece, in order: writev with up to IOV_MAX pieces a call where the OS has it
    (short writes are resumed), else one write after another."""
    views = [v for v in (memoryview(p).cast("B") for p in pieces) if len(v)]
    if not hasattr(os, "writev"):
        for view in views:
            while view:
                view = view[os.write(fd, view):]
        return
    i = 0
    while i < len(views):
        written = os.writev(fd, views[i:i + _IOV_MAX])
        while i < len(views) and written >= len(views[i]):
            written -= len(views[i])
            i += 1
        if written:
            views[i] = views[i][written:]


def _iov_max() -> int:
    """Pieces one writev call may take: the OS's limit, at most 1024 (POSIX promises 16)."""
    try:
        return max(16, min(1024, os.sysconf("SC_IOV_MAX")))
    except (AttributeError, ValueError, OSError):
        return 16


_IOV_MAX = _iov_max()


def _local_put(path: str, data: bytes | bytearray | memoryview | list[bytes | memoryview],
               durable: bool = True, cache: bool = True) -> None:
    _rename(_write_temp(path, data, durable, cache), path, durable)


def _rename(tmp: str, path: str, durable: bool) -> None:
    """Give a complete temp file its final name (the temp file goes if that fails); durable: and
    make the rename durable."""
    try:
        os.replace(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    if durable:
        _fsync_dir(os.path.dirname(path))


def _discard_staged(staged: Any) -> None:
    """Wait for a temp file being written on the pool and remove it (its pair failed)."""
    try:
        _unlink_quietly(staged.result())
    except Exception:  # noqa: BLE001 - the write that failed first is the error the caller sees
        pass


def _drop_cached(fd: int) -> None:
    """Tell the kernel a file just fsynced will not be read soon (POSIX_FADV_DONTNEED), as borg
    does for its segment files: its clean pages go back to the free memory the next writes take,
    instead of filling the page cache. Advice only: where it is missing or refused, nothing happens."""
    advise = getattr(os, "posix_fadvise", None)
    if advise is None:
        return
    try:
        advise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    except OSError:
        pass


def _local_create(path: str, data: bytes | bytearray | memoryview) -> bool:
    """Atomic create-if-absent: link the complete temp file to its final name."""
    if os.path.lexists(path):
        return False
    tmp = _write_temp(path, data)
    try:
        os.link(tmp, path)
    except FileExistsError:
        return False
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
            raise
        # No hard links here (some network / FUSE filesystems): O_EXCL create
        # claims the name, then the content is written and renamed over it.
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        except FileExistsError:
            return False
        os.replace(tmp, path)
    finally:
        _unlink_quietly(tmp)
    _fsync_dir(os.path.dirname(path))
    return True


def _local_read(path: str, start: int | None = None, end: int | None = None) -> bytes:
    if start is None:
        with open(path, "rb") as f:
            return f.read()
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
    try:
        return os.pread(fd, end - start, start)
    finally:
        os.close(fd)


def _local_list(root: str, prefix: str) -> list[str]:
    top = os.path.join(root, *prefix.split("/")) if prefix else root
    if os.path.isfile(top):
        return [prefix]
    keys = []
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames.sort()
        rel = os.path.relpath(dirpath, root)
        rel = "" if rel == "." else rel.replace(os.sep, "/") + "/"
        keys.extend(rel + name for name in filenames)
    return keys


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
