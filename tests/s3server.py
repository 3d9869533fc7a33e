"""A real S3 API on loopback for tests: moto's server in a subprocess, plus a fault proxy.

    moto_server()          context manager: starts `python -m moto.server` on a free
                           port, waits until it answers, yields its endpoint URL.
    storage_options_for()  the s3fs options that reach an endpoint (no shared caches).
    create_bucket()        makes a bucket on an endpoint.
    FaultProxy             a threaded HTTP/1.1 proxy in front of the server that can add
                           latency, answer 503 SlowDown, or reset connections, and that
                           counts PUT/GET/HEAD/LIST/DELETE/POST requests passing through.

Pytest fixtures (enable with `pytest_plugins = ["tests.s3server"]` in conftest.py):

    s3_server  (session)  S3Server(endpoint_url, storage_options); bucket "casstore-test" exists
    s3_url     (function) "s3://<fresh bucket>/repo", reachable with s3_server.storage_options
    s3_proxy   (function) a FaultProxy in front of s3_server; use s3_proxy.storage_options
                          (SDK-level retries off, so each Backend attempt is one HTTP request)
    s3_proxy_url (function) "s3://<fresh bucket>/repo", for use through s3_proxy
"""

from __future__ import annotations

import contextlib
import http.client
import os
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator, NamedTuple
from urllib.parse import urlsplit

import pytest

ACCESS_KEY = "testing"
SECRET_KEY = "testing"
REGION = "us-east-1"
DEFAULT_BUCKET = "casstore-test"


class S3Server(NamedTuple):
    endpoint_url: str
    storage_options: dict


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def storage_options_for(endpoint_url: str, *, sdk_retries: bool = True) -> dict:
    """s3fs options for `endpoint_url`: fixed test credentials, path-style, no caches.

    With sdk_retries=False, botocore does not retry on its own (casstore's Backend
    already switches off botocore's and s3fs's inner retry loops unless the options
    configure them), so every retry a test observes is casstore's.
    """
    options: dict = {
        "key": ACCESS_KEY,
        "secret": SECRET_KEY,
        "client_kwargs": {"endpoint_url": endpoint_url, "region_name": REGION},
        "config_kwargs": {"s3": {"addressing_style": "path"}},
        "skip_instance_cache": True,
        "use_listings_cache": False,
    }
    if not sdk_retries:
        options["config_kwargs"]["retries"] = {"total_max_attempts": 1, "mode": "standard"}
        options["config_kwargs"]["connect_timeout"] = 2
        options["config_kwargs"]["read_timeout"] = 5
    return options


def _s3_client(endpoint_url: str):
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        region_name=REGION,
    )


def create_bucket(endpoint_url: str, name: str | None = None) -> str:
    """Create a bucket (a fresh random name by default) and return its name."""
    name = name or f"t-{uuid.uuid4().hex[:24]}"
    _s3_client(endpoint_url).create_bucket(Bucket=name)
    return name


def _wait_until_up(endpoint_url: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"moto server exited early with code {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{endpoint_url}/moto-api/", timeout=0.5):
                return
        except urllib.error.HTTPError:
            return  # it answered
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"moto server at {endpoint_url} did not answer within {timeout}s")


@contextlib.contextmanager
def moto_server(timeout: float = 30.0) -> Iterator[str]:
    """Run moto's standalone S3 server on a free loopback port; yield its endpoint URL."""
    env = dict(os.environ)
    env.update(AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY, AWS_DEFAULT_REGION=REGION)
    for attempt in range(3):
        port = free_port()
        endpoint = f"http://127.0.0.1:{port}"
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        try:
            _wait_until_up(endpoint, proc, timeout)
        except RuntimeError:
            _stop(proc)
            if attempt == 2:
                raise
            continue
        try:
            yield endpoint
        finally:
            _stop(proc)
        return


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --------------------------------------------------------------------------- fault proxy

_HOP_BY_HOP = {
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
    "te", "trailers", "transfer-encoding", "upgrade",
}

_SLOWDOWN_BODY = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
    b"<Message>{message}</Message><RequestId>fault-proxy</RequestId></Error>"
)


class FaultProxy:
    """An HTTP proxy in front of an S3 endpoint whose misbehaviour a test controls.

    proxy.latency = 0.05            # seconds added before each request is forwarded
    proxy.fail_next(2)              # the next 2 requests get 503 SlowDown
    proxy.fail_next(1, status=500, code="InternalError", methods={"PUT"})
    proxy.fail_always()             # every request fails until proxy.clear()
    proxy.reset_next(1)             # the next request's connection is reset (RST)
    proxy.truncate_next(1)          # the next response is cut off mid-body, then RST
    proxy.counts["PUT"]             # requests seen, by kind: PUT GET HEAD LIST DELETE POST
    proxy.bytes_out                 # response body bytes sent to the client
    proxy.reset_counts()            # both back to zero
    """

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self.upstream_host = parts.hostname or "127.0.0.1"
        self.upstream_port = parts.port or 80
        self.latency = 0.0
        self.counts: Counter[str] = Counter()
        self.bytes_out = 0
        self._faults: list[dict] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.endpoint_url = ""

    # -- control --------------------------------------------------------------

    def fail_next(self, n: int, status: int = 503, code: str = "SlowDown",
                  message: str = "Please reduce your request rate.", methods=None) -> None:
        self._add({"kind": "fail", "left": n, "status": status, "code": code,
                   "message": message, "methods": _kinds(methods)})

    def fail_always(self, status: int = 503, code: str = "SlowDown", methods=None) -> None:
        self.fail_next(10**12, status=status, code=code, methods=methods)

    def reset_next(self, n: int, methods=None) -> None:
        self._add({"kind": "reset", "left": n, "methods": _kinds(methods)})

    def truncate_next(self, n: int, methods=None) -> None:
        self._add({"kind": "truncate", "left": n, "methods": _kinds(methods)})

    def clear(self) -> None:
        """Remove every pending fault and the latency."""
        with self._lock:
            self._faults.clear()
            self.latency = 0.0

    def reset_counts(self) -> None:
        with self._lock:
            self.counts.clear()
            self.bytes_out = 0

    @property
    def storage_options(self) -> dict:
        return storage_options_for(self.endpoint_url, sdk_retries=False)

    def _add(self, fault: dict) -> None:
        with self._lock:
            self._faults.append(fault)

    def _take_fault(self, kind: str) -> dict | None:
        with self._lock:
            self.counts[kind] += 1
            for fault in self._faults:
                if fault["left"] > 0 and (fault["methods"] is None or kind in fault["methods"]):
                    fault["left"] -= 1
                    return dict(fault)
            self._faults = [f for f in self._faults if f["left"] > 0]
        return None

    # -- lifecycle ------------------------------------------------------------

    def start(self) -> "FaultProxy":
        proxy = self

        class Handler(_ProxyHandler):
            owner = proxy

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        host, port = self._server.server_address[:2]
        self.endpoint_url = f"http://{host}:{port}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True, name="s3-fault-proxy")
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> "FaultProxy":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _kinds(methods) -> set[str] | None:
    return None if methods is None else {m.upper() for m in methods}


def request_kind(method: str, path: str) -> str:
    """PUT GET HEAD LIST DELETE POST; a GET on a bucket (or the service) is a LIST."""
    method = method.upper()
    if method == "GET":
        bare = urlsplit(path).path.strip("/")
        if "/" not in bare:
            return "LIST"
    return method


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    owner: FaultProxy

    def log_message(self, format, *args) -> None:  # noqa: A002 - silence per-request logs
        pass

    def do_GET(self) -> None:
        self._handle()

    do_PUT = do_POST = do_DELETE = do_HEAD = do_GET

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _handle(self) -> None:
        owner = self.owner
        body = self._read_body()
        fault = owner._take_fault(request_kind(self.command, self.path))
        if owner.latency:
            time.sleep(owner.latency)
        if fault is not None and fault["kind"] == "reset":
            self._reset()
            return
        if fault is not None and fault["kind"] == "fail":
            self._send_error(fault)
            return
        try:
            status, reason, headers, payload = self._forward(body)
        except OSError:
            self.send_error(502, "upstream unreachable")
            return
        self.send_response_only(status, reason)
        sent_length = False
        for name, value in headers:
            low = name.lower()
            if low in _HOP_BY_HOP:
                continue
            if low == "content-length":
                if self.command == "HEAD":
                    sent_length = True
                else:
                    continue
            self.send_header(name, value)
        if not sent_length and self.command != "HEAD":
            self.send_header("Content-Length", str(len(payload)))
            with owner._lock:
                owner.bytes_out += len(payload)
        elif not sent_length:
            self.send_header("Content-Length", "0")
        self.end_headers()
        if self.command == "HEAD" or not payload:
            return
        if fault is not None and fault["kind"] == "truncate":
            self.wfile.write(payload[: max(1, len(payload) // 2)])
            self.wfile.flush()
            self._reset()
            return
        self.wfile.write(payload)

    def _forward(self, body: bytes):
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
        headers["Content-Length"] = str(len(body))
        for attempt in range(2):
            conn = self._upstream(fresh=attempt > 0)
            try:
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                payload = resp.read()
                return resp.status, resp.reason, resp.getheaders(), payload
            except (http.client.HTTPException, OSError):
                conn.close()
                if attempt == 1:
                    raise
        raise AssertionError("unreachable")

    def _upstream(self, fresh: bool) -> http.client.HTTPConnection:
        conn = getattr(self, "_conn", None)
        if conn is None or fresh:
            conn = http.client.HTTPConnection(self.owner.upstream_host, self.owner.upstream_port, timeout=30)
            self._conn = conn
        return conn

    def _send_error(self, fault: dict) -> None:
        payload = _SLOWDOWN_BODY.replace(b"{code}", fault["code"].encode()).replace(
            b"{message}", fault["message"].encode()
        )
        self.send_response_only(fault["status"], "Slow Down" if fault["status"] == 503 else None)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", "0" if self.command == "HEAD" else str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def _reset(self) -> None:
        """Close the client connection with a TCP RST (SO_LINGER 0)."""
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        self.close_connection = True
        try:
            self.connection.close()
        except OSError:
            pass


# --------------------------------------------------------------------------- pytest fixtures


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """moto's S3 server for the whole session: S3Server(endpoint_url, storage_options)."""
    with moto_server() as endpoint:
        create_bucket(endpoint, DEFAULT_BUCKET)
        yield S3Server(endpoint, storage_options_for(endpoint))


@pytest.fixture
def s3_url(s3_server: S3Server) -> str:
    """A fresh, empty bucket for this test, as the URL "s3://<bucket>/repo"."""
    return f"s3://{create_bucket(s3_server.endpoint_url)}/repo"


@pytest.fixture
def s3_proxy(s3_server: S3Server) -> Iterator[FaultProxy]:
    """A FaultProxy in front of the session's moto server, faults and counts cleared."""
    with FaultProxy(s3_server.endpoint_url) as proxy:
        yield proxy


@pytest.fixture
def s3_proxy_url(s3_server: S3Server) -> str:
    """A fresh bucket "s3://<bucket>/repo" to use through s3_proxy."""
    return f"s3://{create_bucket(s3_server.endpoint_url)}/repo"
