"""Backend: the same byte-object contract on a local folder, memory:// and a real S3 API.

The S3 fixtures (s3_server, s3_url, s3_proxy, s3_proxy_url) come from tests/s3server.py,
loaded by conftest.py through `pytest_plugins = ["tests.s3server"]`.
"""

from __future__ import annotations

import os
import threading
import uuid

import pytest

from casstore import backend as backend_module
from casstore import journal
from casstore.backend import Backend, is_transient, redact_url, with_retries
from casstore.errors import ConfigurationError, ObjectNotFoundError, StorageError

SECRET = "Sup3rS3cretValue"


@pytest.fixture(params=["local", "memory", "s3"])
def backend(request, tmp_path):
    """A Backend on a fresh, empty root of each kind."""
    if request.param == "local":
        b = Backend(str(tmp_path / "repo"))
    elif request.param == "memory":
        b = Backend(f"memory://casstore-test-{uuid.uuid4().hex}")
    else:
        server = request.getfixturevalue("s3_server")
        b = Backend(request.getfixturevalue("s3_url"), server.storage_options)
    yield b
    b.close()


@pytest.fixture
def proxied(s3_proxy, s3_proxy_url):
    """A Backend that reaches S3 through the fault proxy (SDK retries off)."""
    b = Backend(s3_proxy_url, s3_proxy.storage_options, retries=3)
    yield b
    b.close()


# --------------------------------------------------------------------------- contract


def test_put_get_size_exists_round_trip(backend):
    backend.put("config", b"cfg-v1")
    backend.put("packs/ab/abcdef", bytearray(b"\x00\x01" * 1000))
    backend.put("snapshots/12/1234", memoryview(b"xxmanifestxx")[2:-2])
    assert backend.get("config") == b"cfg-v1"
    assert backend.get("packs/ab/abcdef") == b"\x00\x01" * 1000
    assert backend.get("snapshots/12/1234") == b"manifest"
    assert backend.size("packs/ab/abcdef") == 2000
    assert backend.exists("config") and not backend.exists("nope")
    assert not backend.exists("packs")  # a "folder" is not an object
    backend.put("config", b"cfg-v2")
    assert backend.get("config") == b"cfg-v2"
    backend.put("empty", b"")
    assert backend.get("empty") == b"" and backend.size("empty") == 0


def test_get_range_and_get_ranges_keep_request_order(backend):
    data = bytes(range(256)) * 40
    backend.put("packs/00/p", data)
    backend.put("packs/01/q", b"0123456789")
    assert backend.get_range("packs/00/p", 10, 20) == data[10:20]
    assert backend.get_range("packs/00/p", 5, 5) == b""
    requests = [("packs/00/p", i * 100, i * 100 + 37) for i in range(30)] + [("packs/01/q", 3, 7)]
    assert backend.get_ranges(requests) == [data[s:e] for _, s, e in requests[:-1]] + [b"3456"]
    with pytest.raises(StorageError, match="short read"):
        backend.get_range("packs/01/q", 5, 50)
    with pytest.raises(ObjectNotFoundError):
        backend.get_ranges([("packs/01/q", 0, 1), ("packs/ff/missing", 0, 1)])


def test_list_is_recursive_sorted_and_relative(backend):
    for key in ["snapshots/12/1234", "packs/ab/abc2", "packs/ab/abc1", "packs/cd/cd00", "config"]:
        backend.put(key, b"x")
    assert backend.list("packs") == ["packs/ab/abc1", "packs/ab/abc2", "packs/cd/cd00"]
    assert backend.list("packs/") == backend.list("packs")
    assert backend.list("packs/ab") == ["packs/ab/abc1", "packs/ab/abc2"]
    assert backend.list("") == sorted(["snapshots/12/1234", "packs/ab/abc2", "packs/ab/abc1",
                                     "packs/cd/cd00", "config"])
    assert backend.list("locks") == []
    assert backend.list("config") == ["config"]


def test_delete_removes_and_missing_is_fine(backend):
    backend.put("locks/a", b"1")
    backend.delete("locks/a")
    backend.delete("locks/a")
    backend.delete("never/was")
    assert not backend.exists("locks/a")
    assert backend.list("locks") == []


def test_put_many_writes_everything(backend):
    items = [(f"packs/{i:02x}/{i:064x}", os.urandom(100 + i)) for i in range(40)]
    backend.put_many(items)
    assert backend.list("packs") == sorted(k for k, _ in items)
    assert backend.get_ranges([(k, 0, len(v)) for k, v in items]) == [v for _, v in items]


def test_put_if_absent_writes_once(backend):
    assert backend.put_if_absent("locks/exclusive", b"first") is True
    assert backend.put_if_absent("locks/exclusive", b"second") is False
    assert backend.get("locks/exclusive") == b"first"


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_put_if_absent_race_has_one_winner(kind, tmp_path, request):
    if kind == "local":
        b = Backend(str(tmp_path / "repo"))
    else:
        b = Backend(request.getfixturevalue("s3_url"), request.getfixturevalue("s3_server").storage_options)
    results: list[bool] = []
    barrier = threading.Barrier(8)

    def contender(i: int) -> None:
        barrier.wait()
        results.append(b.put_if_absent("locks/race", f"owner-{i}".encode()))

    threads = [threading.Thread(target=contender, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] * 7 + [True]
    assert b.get("locks/race").startswith(b"owner-")


def test_missing_object_raises_not_found_naming_the_url(backend):
    with pytest.raises(ObjectNotFoundError) as info:
        backend.get("snapshots/ab/missing")
    assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, StorageError)
    assert backend.object_url("snapshots/ab/missing") in str(info.value)
    with pytest.raises(ObjectNotFoundError, match="snapshots/ab/missing"):
        backend.size("snapshots/ab/missing")
    with pytest.raises(ObjectNotFoundError):
        backend.get_range("snapshots/ab/missing", 0, 1)


def test_put_of_pieces_stores_them_in_order(backend):
    pieces = [b"head", memoryview(b"xy" * 5000), bytearray(b"middle"), b"", memoryview(b"tail")]
    backend.put("packs/ab/pieces", pieces)
    assert backend.get("packs/ab/pieces") == b"".join(pieces)


def test_invalid_keys_are_rejected(backend):
    for key in ["", "/abs", "a/../b", "a//b", "dir/"]:
        with pytest.raises(ValueError):
            backend.put(key, b"x")


# --------------------------------------------------------------------------- local specifics


def test_local_put_is_atomic_and_temp_files_are_never_listed(tmp_path, monkeypatch):
    b = Backend(str(tmp_path / "repo"))
    b.put("packs/ab/abc", b"old")
    # An in-flight put: the temp file exists next to the target, not yet renamed.
    tmp = backend_module._write_temp(os.path.join(b.local_path, "packs", "ab", "abd"), b"partial")
    assert os.path.basename(tmp).startswith(".")
    assert b.list("") == ["packs/ab/abc"]
    os.unlink(tmp)

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(backend_module.os, "replace", broken_replace)
    with pytest.raises(StorageError, match="put .*packs/ab/abc"):
        b.put("packs/ab/abc", b"new")
    monkeypatch.undo()
    assert b.get("packs/ab/abc") == b"old"  # the old object survives whole
    assert os.listdir(tmp_path / "repo" / "packs" / "ab") == ["abc"]  # temp cleaned up


def test_local_put_fsyncs_file_and_directory(tmp_path, monkeypatch):
    b = Backend(str(tmp_path / "repo"))
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(backend_module.os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    b.put("packs/ab/abc", b"data")
    assert len(synced) >= 2  # the file's data, then the directory entry


def test_put_pair_stores_both(backend):
    backend.put_pair(("packs/ab/abc", b"pack"), ("snapshots/cd/cde", b"manifest"))
    assert backend.get("packs/ab/abc") == b"pack" and backend.get("snapshots/cd/cde") == b"manifest"


BIG_PACK = b"p" * (journal.MAX_PAIR + 1)   # a pair too large for the journal: put file by file


def test_put_pair_renames_the_second_only_after_the_first_is_durable(tmp_path, monkeypatch):
    """Unjournaled, the manifest's final name appears only after the pack's rename and its folder's fsync."""
    b = Backend(str(tmp_path / "repo"))
    events: list[str] = []
    real_replace, real_fsync_dir = os.replace, backend_module._fsync_dir
    monkeypatch.setattr(backend_module.os, "replace",
                        lambda src, dst: (events.append("rename " + os.path.basename(dst)), real_replace(src, dst)))
    monkeypatch.setattr(backend_module, "_fsync_dir",
                        lambda path: (events.append("fsync " + os.path.basename(path)), real_fsync_dir(path)))
    b.put_pair(("packs/ab/abc", BIG_PACK), ("snapshots/cd/cde", b"manifest"))
    assert events.index("rename abc") < events.index("fsync ab") < events.index("rename cde")


@pytest.mark.parametrize("failing", ["packs", "snapshots"])
def test_put_pair_failure_never_leaves_the_second_alone(tmp_path, monkeypatch, failing):
    b = Backend(str(tmp_path / "repo"))
    real = backend_module._write_temp

    def write_temp(path, data, *args):
        if f"{os.sep}{failing}{os.sep}" in path:
            raise OSError(28, "No space left on device")
        return real(path, data, *args)

    monkeypatch.setattr(backend_module, "_write_temp", write_temp)
    with pytest.raises(StorageError, match=f"put .*{failing}/"):
        b.put_pair(("packs/ab/abc", BIG_PACK), ("snapshots/cd/cde", b"manifest"))
    assert not b.exists("snapshots/cd/cde")
    assert not [n for _, _, names in os.walk(tmp_path / "repo") for n in names if n.startswith(".")]  # no temp left


def test_ensure_prefixes_makes_the_shard_folders(tmp_path):
    b = Backend(str(tmp_path / "repo"))
    b.ensure_prefixes(["packs/00", "packs/ff", "snapshots/7a"])
    assert sorted(os.listdir(tmp_path / "repo" / "packs")) == ["00", "ff"]
    assert b.list("") == []                          # empty folders hold no objects
    b.put("packs/ff/ffee", b"x")
    assert b.list("packs/") == ["packs/ff/ffee"]


def test_local_put_makes_missing_folders_and_fsyncs_their_parents(tmp_path, monkeypatch):
    """A put opens its temp file first and makes the folders only when the open finds them
    missing: a fresh shard folder, and one removed behind the backend's back, are made anew."""
    b = Backend(str(tmp_path / "repo"))
    b.put("packs/ab/first", b"1")
    synced_dirs: list[str] = []
    real = backend_module._fsync_dir
    monkeypatch.setattr(backend_module, "_fsync_dir", lambda path: (synced_dirs.append(path), real(path)))
    b.put("packs/ab/second", b"2")
    assert synced_dirs == [str(tmp_path / "repo" / "packs" / "ab")]  # only the rename's own folder
    synced_dirs.clear()
    (tmp_path / "repo" / "packs" / "ab" / "first").unlink()
    (tmp_path / "repo" / "packs" / "ab" / "second").unlink()
    (tmp_path / "repo" / "packs" / "ab").rmdir()
    b.put("packs/ab/third", b"3")
    assert b.get("packs/ab/third") == b"3" and b.list("packs/") == ["packs/ab/third"]
    assert str(tmp_path / "repo" / "packs") in synced_dirs  # the new folder's entry made durable


def test_local_put_of_more_pieces_than_one_writev_takes_resumes_short_writes(tmp_path, monkeypatch):
    b = Backend(str(tmp_path / "repo"))
    pieces = [os.urandom(1 + i % 300) for i in range(3 * backend_module._IOV_MAX + 5)]
    calls: list[int] = []

    def short_writev(fd, bufs):   # the kernel may write less than asked: here a third, at most
        calls.append(len(bufs))
        data = b"".join(map(bytes, bufs))
        return os.write(fd, data[:max(1, len(data) // 3)])

    monkeypatch.setattr(backend_module.os, "writev", short_writev)
    b.put("packs/ab/many", pieces)
    assert b.get("packs/ab/many") == b"".join(pieces)
    assert max(calls) <= backend_module._IOV_MAX and len(calls) > 3


@pytest.mark.skipif(not hasattr(os, "posix_fadvise"), reason="no posix_fadvise on this OS")
def test_local_put_without_cache_advises_the_kernel_once_the_object_is_durable(tmp_path, monkeypatch):
    b = Backend(str(tmp_path / "repo"))
    events: list[tuple] = []
    real_fsync = os.fsync
    monkeypatch.setattr(backend_module.os, "fsync", lambda fd: (events.append(("fsync",)), real_fsync(fd)))
    monkeypatch.setattr(backend_module.os, "posix_fadvise",
                        lambda fd, offset, length, advice: events.append((os.fstat(fd).st_ino, offset, length, advice)))
    b.put("packs/ab/big", b"x" * 100_000, cache=False)
    dropped = next(e for e in events if e != ("fsync",))
    assert dropped == (os.stat(tmp_path / "repo" / "packs" / "ab" / "big").st_ino, 0, 0, os.POSIX_FADV_DONTNEED)
    assert events.index(dropped) > events.index(("fsync",))   # after the data is on disk
    events.clear()
    b.put("packs/ab/small", b"y")
    b.put("gc/condemned/ab", b"", durable=False, cache=False)   # dirty pages would not drop: no advice
    assert all(e == ("fsync",) for e in events)
    assert b.get("packs/ab/big") == b"x" * 100_000 and b.get("packs/ab/small") == b"y"


def test_concurrent_reader_sees_whole_objects(tmp_path):
    b = Backend(str(tmp_path / "repo"))
    versions = [b"a" * 200_000, b"b" * 300_000]
    b.put("config", versions[0])
    stop = threading.Event()

    def writer() -> None:
        i = 0
        while not stop.is_set():
            b.put("config", versions[i % 2])
            i += 1

    t = threading.Thread(target=writer)
    t.start()
    try:
        for _ in range(200):
            assert b.get("config") in versions
    finally:
        stop.set()
        t.join()


def test_plain_and_file_urls_are_local(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rel = Backend("rel/repo")
    assert rel.is_local and rel.local_path == str(tmp_path / "rel" / "repo")
    url = Backend(f"file://{tmp_path}/repo2")
    assert url.is_local and url.local_path == str(tmp_path / "repo2")
    mem = Backend("memory://x")
    assert not mem.is_local and mem.local_path is None


def test_memory_backends_on_one_url_share_data():
    url = f"memory://shared-{uuid.uuid4().hex}"
    Backend(url).put("config", b"c")
    assert Backend(url).get("config") == b"c"


# --------------------------------------------------------------------------- URLs and secrets


def test_unknown_protocol_and_missing_driver_are_configuration_errors():
    with pytest.raises(ConfigurationError, match="nosuchproto"):
        Backend("nosuchproto://bucket/x")
    try:
        import gcsfs  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigurationError, match="gcsfs"):
            Backend("gcs://bucket/x")


def test_redact_url_strips_credentials():
    assert redact_url("s3://AKIA:secret@bucket/p") == "s3://bucket/p"
    assert redact_url("https://u:p@host/x?sig=abc") == "https://host/x?<redacted>"
    assert redact_url("/plain/path") == "/plain/path"


def test_credentials_never_appear_in_repr_or_errors(s3_proxy, s3_proxy_url):
    options = s3_proxy.storage_options
    options["secret"] = SECRET  # wrong secret: requests are refused, nothing may echo it
    b = Backend(s3_proxy_url, options, retries=0)
    assert SECRET not in repr(b) and SECRET not in str(b) and SECRET not in b.url
    with pytest.raises(StorageError) as info:
        b.get("config")
    assert SECRET not in str(info.value) and s3_proxy_url in str(info.value)
    mem = Backend(f"memory://user:{SECRET}@host/repo")
    assert SECRET not in repr(mem)
    with pytest.raises(ObjectNotFoundError) as info:
        mem.get("config")
    assert SECRET not in str(info.value)


# --------------------------------------------------------------------------- faults on S3


def test_requests_per_operation_are_minimal(proxied, s3_proxy):
    s3_proxy.reset_counts()
    proxied.put("packs/ab/abc", b"x" * 1000)
    proxied.get("packs/ab/abc")
    proxied.get_range("packs/ab/abc", 10, 20)
    proxied.exists("packs/ab/abc")
    proxied.exists("packs/ab/nope")
    proxied.list("packs")
    proxied.put_if_absent("locks/l", b"1")
    proxied.delete("locks/l")
    assert dict(s3_proxy.counts) == {"PUT": 2, "GET": 2, "HEAD": 2, "LIST": 1, "DELETE": 1}
    assert proxied.stats == {"put": 2, "get": 2, "head": 2, "list": 1, "delete": 1}


def test_retries_succeed_after_two_503s(proxied, s3_proxy):
    proxied.put("config", b"cfg")
    s3_proxy.reset_counts()
    s3_proxy.fail_next(2)
    assert proxied.get("config") == b"cfg"
    assert s3_proxy.counts["GET"] == 3
    s3_proxy.fail_next(2, methods={"PUT"})
    proxied.put("packs/ab/abc", b"payload")
    assert s3_proxy.counts["PUT"] == 3
    assert proxied.get("packs/ab/abc") == b"payload"


def test_retries_survive_connection_resets_and_truncated_bodies(proxied, s3_proxy):
    data = os.urandom(50_000)
    proxied.put("packs/ab/abc", data)
    s3_proxy.reset_next(1)
    assert proxied.get("packs/ab/abc") == data
    s3_proxy.truncate_next(1)
    assert proxied.get("packs/ab/abc") == data
    s3_proxy.reset_next(1, methods={"PUT"})
    proxied.put("packs/ab/abd", data)
    assert proxied.get_range("packs/ab/abd", 100, 200) == data[100:200]


def test_permanent_failure_raises_storage_error_naming_the_url(proxied, s3_proxy, s3_proxy_url):
    proxied.put("config", b"cfg")
    s3_proxy.reset_counts()
    s3_proxy.fail_always()
    with pytest.raises(StorageError) as info:
        proxied.get("config")
    assert f"{s3_proxy_url}/config" in str(info.value) and "get" in str(info.value)
    assert info.value.__cause__ is not None
    assert s3_proxy.counts["GET"] == 1 + proxied.retries
    s3_proxy.clear()
    s3_proxy.reset_counts()
    s3_proxy.fail_always(status=403, code="AccessDenied")
    with pytest.raises(StorageError, match="config"):
        proxied.get("config")
    assert s3_proxy.counts["GET"] == 1  # permission errors are not retried


# --------------------------------------------------------------------------- retry policy


def test_retry_policy_classifies_failures():
    assert is_transient(ConnectionResetError())
    assert is_transient(TimeoutError())
    assert is_transient(OSError(5, "I/O error"))
    assert not is_transient(FileNotFoundError())
    assert not is_transient(PermissionError())
    assert not is_transient(IsADirectoryError())
    assert not is_transient(ValueError("bug"))

    class ClientError(Exception):
        def __init__(self, code):
            super().__init__(code)
            self.response = {"Error": {"Code": code}}

    assert is_transient(ClientError("SlowDown")) and is_transient(ClientError("503"))
    assert not is_transient(ClientError("AccessDenied"))


def test_with_retries_stops_after_the_budget():
    calls, sleeps = [], []

    def flaky():
        calls.append(1)
        raise ConnectionResetError("reset")

    with pytest.raises(ConnectionResetError):
        with_retries(flaky, retries=5, sleep=sleeps.append)
    assert len(calls) == 6 and len(sleeps) == 5
    assert all(0 <= s <= 2.0 for s in sleeps)

    calls.clear()

    def missing():
        calls.append(1)
        raise FileNotFoundError("x")

    with pytest.raises(FileNotFoundError):
        with_retries(missing, retries=5, sleep=sleeps.append)
    assert len(calls) == 1
