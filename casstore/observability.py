"""Logs, metrics and traces of what a store does; every dependency here is optional.

Logging
    Each public operation of a `Store` emits exactly one record on the ``casstore``
    logger when it ends; its ``op`` is snapshot, restore (both for state and directory
    snapshots, told apart by ``kind``), gc, verify, copy or forget. The record carries ``record.casstore``, a dict of plain values:

    ``op``, ``outcome`` ("ok", "error", or "problems" for a verify that found some),
    ``duration_s``, ``backend`` (protocol: file, s3, ...), ``repo`` (the redacted URL),
    on failure ``error_kind`` (the exception class) and ``error`` (its message), and
    per operation: ``id``, ``agent``, ``session``, ``kind``, ``raw_size`` (logical
    bytes), ``stored_size`` (new bytes written), ``chunks``, ``new_chunks``,
    ``dedup_bytes`` (logical bytes not written again because the repository, or the
    snapshot itself, already held them), ``dedup_ratio`` (dedup_bytes / raw_size,
    0..1); gc, verify, copy and forget add their report's counts.

    Success is INFO; a StorageError or IntegrityError is ERROR; any other failure
    (not found, bad arguments) and a verify that found problems is WARNING. A storage
    request that fails for good is a WARNING on ``casstore.backend``; each retry is a
    DEBUG record there. Records never hold credentials: URLs come redacted from the
    backend. `JsonFormatter` renders a record (and its ``casstore`` fields) as one
    JSON line; the CLI installs it with ``casstore --log-format json``.

Metrics (``pip install casstore[metrics]``, i.e. prometheus-client)
    Recorded into the global prometheus REGISTRY as soon as prometheus_client is
    importable; `enable_metrics(registry)` moves them to another registry (a test's
    private CollectorRegistry, or an application's own), `disable_metrics()` stops.

    - ``casstore_bytes_logical_total``       logical bytes of snapshots written
    - ``casstore_bytes_written_total``       new (compressed) bytes snapshots stored
    - ``casstore_bytes_deduplicated_total``  logical bytes snapshots did not store again
    - ``casstore_snapshots_total``           snapshots written
    - ``casstore_errors_total{kind,backend,op}``  failed operations by exception class
      (a verify that found problems counts as kind="VerifyFailed")
    - ``casstore_request_errors_total{backend,request}``  storage requests that failed
      after their retries (missing objects are not failures)
    - ``casstore_retries_total{backend}``    retried storage requests
    - ``casstore_operation_seconds{op}``     histogram of operation latency
    - ``casstore_snapshot_bytes``            histogram of snapshot logical size
    - ``casstore_repository_*{repo}``        gauges set by `watch_stats` (serve-metrics --watch)

    Exposing them: ``casstore serve-metrics --port 9464 [--watch 60]`` runs
    prometheus_client's HTTP server on 127.0.0.1. A host application that already
    serves ``/metrics`` needs nothing but ``casstore.observability.enable_metrics()``
    (or ``enable_metrics(my_registry)``) and its usual exposition, e.g.
    ``prometheus_client.make_asgi_app(registry=my_registry)``.

Traces
    When opentelemetry-api is importable each operation runs in a span
    ``casstore.<op>`` from ``trace.get_tracer("casstore")`` whose attributes are the
    record's fields (prefixed ``casstore.``); a failure is recorded on the span. With
    no SDK configured the API's spans are no-ops.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as _dt
import functools
import inspect
import json
import logging
import os
import threading
import time
from typing import Any, Callable, Iterator

__all__ = [
    "JsonFormatter", "Operation", "operation", "observed", "current", "note_snapshot", "note_packs",
    "enable_metrics", "disable_metrics", "metrics", "request_failed", "request_retry", "watch_stats",
    "configure_logging", "backend_label",
]

log = logging.getLogger("casstore")
backend_log = logging.getLogger("casstore.backend")

_current: contextvars.ContextVar["Operation | None"] = contextvars.ContextVar("casstore_operation", default=None)

# Exceptions that mean the storage or the data is in trouble (ERROR); anything else
# (a missing snapshot, a bad argument) is the caller's and logged as WARNING.
_SEVERE = ("StorageError", "IntegrityError")

# bound-argument name -> record field
_ARG_FIELDS = {"agent_id": "agent", "session_id": "session", "id": "id", "dry_run": "dry_run", "deep": "deep"}


def backend_label(backend: Any) -> str:
    """The protocol of a Backend ("file", "s3", "gcs", ...), a low-cardinality metric label."""
    if backend is None:
        return "unknown"
    if getattr(backend, "is_local", False):
        return "file"
    url = str(getattr(backend, "url", ""))
    return url.split("://", 1)[0].split("::")[-1].lower() if "://" in url else "unknown"


# --------------------------------------------------------------------------- operations


class Operation:
    """One running operation: collects the fields of its record, metric values and span."""

    __slots__ = ("op", "fields", "started", "new_raw", "_noted")

    def __init__(self, op: str, fields: dict):
        self.op = op
        self.fields = fields
        self.started = time.perf_counter()
        self.new_raw: int | None = None  # logical bytes of data chunks this op stored (see note_packs)
        self._noted = False

    def update(self, **fields: Any) -> None:
        self.fields.update({k: v for k, v in fields.items() if v is not None})

    def note_snapshot(self, info: Any) -> None:
        """Fields of a SnapshotInfo the operation wrote or read."""
        self._noted = True
        self.update(id=info.id, agent=info.agent_id, session=info.session_id, kind=info.kind,
                    raw_size=info.raw_size, chunks=info.chunk_count)
        if self.op == "snapshot":
            raw = info.raw_size
            if self.new_raw is not None:
                dedup = max(0, raw - self.new_raw)
            elif info.new_chunk_count == 0:
                dedup = raw
            else:  # no pack commit was seen (an index not reporting): estimate by chunk count
                dedup = int(raw * (1 - info.new_chunk_count / max(1, info.chunk_count)))
            self.update(stored_size=info.stored_size, new_chunks=info.new_chunk_count, dedup_bytes=dedup,
                        dedup_ratio=round(dedup / raw, 4) if raw else 0.0)


def current() -> Operation | None:
    """The operation running in this context, if any."""
    return _current.get()


def note_snapshot(info: Any) -> None:
    """Tell the running operation which snapshot it wrote or read (no-op outside one)."""
    op = _current.get()
    if op is not None:
        op.note_snapshot(info)


def note_packs(packs: list) -> None:
    """Index hook: packs committed by the running operation; counts their data chunks' logical bytes."""
    op = _current.get()
    if op is None or not packs:
        return
    raw = 0
    for entry in (e for p in packs for e in p[-1]):
        if getattr(entry, "kind", 0) == 0:  # KIND_DATA; tree nodes are not logical bytes
            raw += getattr(entry, "raw_len", 0)
    op.new_raw = (op.new_raw or 0) + raw


@contextlib.contextmanager
def operation(op: str, *, backend: Any = None, repo: str | None = None, **fields: Any) -> Iterator[Operation]:
    """Run a block as one observed operation: a span, then one log record and the metrics.

    The block may add fields with ``o.update(...)`` / ``o.note_snapshot(info)``.
    """
    label = backend_label(backend)
    o = Operation(op, {"op": op, "backend": label, **({"repo": repo} if repo else {}),
                       **{k: v for k, v in fields.items() if v is not None}})
    token = _current.set(o)
    span_cm = _start_span(op)
    span = span_cm.__enter__() if span_cm is not None else None
    error: BaseException | None = None
    try:
        yield o
    except BaseException as exc:
        error = exc
        raise
    finally:
        _current.reset(token)
        try:
            _finish(o, error, label, span)
        except Exception:  # noqa: BLE001 - observing must never break the operation
            pass
        finally:
            if span_cm is not None:
                span_cm.__exit__(None, None, None)


def observed(op: str, result: Callable[[Operation, Any, Any], None] | None = None) -> Callable:
    """Decorator for Store methods: run the method as `operation(op)`.

    Fields come from the bound arguments (agent_id, session_id, id, dry_run, deep)
    and from the result (see `_from_result`), or from `note_snapshot` calls made
    inside the method.
    """

    def wrap(fn: Callable) -> Callable:
        params = list(inspect.signature(fn).parameters.values())[1:]   # after self
        # (argument name, its index when it may be passed by position, else None): looked up per
        # call from args and kwargs as Signature.bind would, without its cost (8 us of a 46 us
        # warm restore of a tiny state)
        where = [(p.name, i if p.kind is p.POSITIONAL_OR_KEYWORD else None)
                 for i, p in enumerate(params) if p.name in _ARG_FIELDS]

        @functools.wraps(fn)
        def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            fields: dict = {}
            for name, index in where:
                if name in kwargs:
                    fields[_ARG_FIELDS[name]] = kwargs[name]
                elif index is not None and index < len(args):
                    fields[_ARG_FIELDS[name]] = args[index]
            repo = getattr(self, "_repo", None)
            backend = getattr(repo, "backend", None)
            with operation(op, backend=backend, repo=getattr(backend, "url", None), **fields) as o:
                out = fn(self, *args, **kwargs)
                (result or _from_result)(o, out, self)
                return out

        return wrapper

    return wrap


def snapshot_by_id(o: Operation, out: Any, store: Any) -> None:
    """Result hook for operations that return nothing but name a snapshot by id (restore_dir)."""
    if o.fields.get("id"):
        o.note_snapshot(store.get_metadata(o.fields["id"]))


def _from_result(o: Operation, out: Any, store: Any = None) -> None:
    if out is None:
        return
    if hasattr(out, "raw_size") and hasattr(out, "id"):  # SnapshotInfo
        o.note_snapshot(out)
    elif isinstance(out, list):  # forget: the removed snapshots
        o.update(removed=len(out))
    elif hasattr(out, "to_dict"):  # GCReport, VerifyReport, CopyReport
        d = out.to_dict()
        for k, v in d.items():
            if isinstance(v, (bool, int, float, str)) and k != "seconds":
                o.fields[k] = v
            elif isinstance(v, list) and k in ("problems", "copied", "skipped", "deleted"):
                o.fields[k] = len(v)
        if getattr(out, "ok", True) is False:
            o.fields["outcome"] = "problems"


def _finish(o: Operation, error: BaseException | None, label: str, span: Any) -> None:
    f = o.fields
    f["duration_s"] = round(time.perf_counter() - o.started, 6)
    if error is not None:
        f["outcome"] = "error"
        f["error_kind"] = type(error).__name__
        f["error"] = _short(str(error) or type(error).__name__)
        level = logging.ERROR if _is_severe(error) else logging.WARNING
    elif f.get("outcome") == "problems":
        level = logging.WARNING
    else:
        f["outcome"] = "ok"
        level = logging.INFO
    _record_metrics(o, error, label)
    if span is not None:
        _end_span(span, f, error)
    if log.isEnabledFor(level):
        log.log(level, _message(f), extra={"casstore": dict(f)})


def _is_severe(error: BaseException) -> bool:
    return any(c.__name__ in _SEVERE for c in type(error).__mro__)


def _short(text: str, limit: int = 500) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "…"


def _size(n: Any) -> str:
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def _message(f: dict) -> str:
    """The human line of a record: op, id, lineage, sizes, duration, outcome."""
    parts = [str(f["op"])]
    if f.get("id"):
        parts.append(str(f["id"])[:12])
    if f.get("agent") is not None:
        parts.append(f"{f['agent']}/{f.get('session', '*')}" if f.get("session") is not None else str(f["agent"]))
    if "path" in f:
        parts.append(str(f["path"]))
    if "raw_size" in f:
        parts.append(f"raw={_size(f['raw_size'])}")
    if "stored_size" in f:
        parts.append(f"stored={_size(f['stored_size'])}")
    if "dedup_ratio" in f:
        parts.append(f"dedup={f['dedup_ratio'] * 100:.0f}%")
    for k in ("new_chunks", "removed", "packs_deleted", "bytes_freed", "problems", "copied", "bytes_sent"):
        if k in f:
            parts.append(f"{k}={f[k]}")
    parts.append(f"{f['duration_s'] * 1000:.1f} ms")
    parts.append(f["outcome"] if f["outcome"] != "error" else f"error {f['error_kind']}: {f['error']}")
    return " ".join(parts)


# --------------------------------------------------------------------------- backend hooks


def request_retry(backend: Any, request: str, key: str, exc: BaseException, attempt: int) -> None:
    """Backend hook: a transient failure of `request` is about to be retried."""
    label = backend_label(backend)
    m = metrics()
    if m is not None:
        m.retries.labels(backend=label).inc()
    if backend_log.isEnabledFor(logging.DEBUG):
        backend_log.debug("retrying %s %s (attempt %d): %s", request, _object(backend, key), attempt + 1,
                          type(exc).__name__, extra={"casstore": {
                              "event": "retry", "request": request, "backend": label, "object": _object(backend, key),
                              "attempt": attempt + 1, "error_kind": type(exc).__name__}})


def request_failed(backend: Any, request: str, key: str, exc: BaseException, message: str) -> None:
    """Backend hook: `request` failed for good (retries exhausted or a permanent error)."""
    label = backend_label(backend)
    m = metrics()
    if m is not None:
        m.request_errors.labels(backend=label, request=request).inc()
    if backend_log.isEnabledFor(logging.WARNING):
        backend_log.warning("%s", message, extra={"casstore": {
            "event": "request_failed", "request": request, "backend": label, "object": _object(backend, key),
            "error_kind": type(exc).__name__, "error": _short(message)}})


def _object(backend: Any, key: str) -> str:
    fn = getattr(backend, "object_url", None)
    return fn(key) if fn is not None else key


# --------------------------------------------------------------------------- metrics


class Metrics:
    """casstore's prometheus collectors, registered in one registry."""

    def __init__(self, registry: Any):
        from prometheus_client import Counter, Gauge, Histogram

        self.registry = registry
        kw = {"registry": registry}
        self.bytes_logical = Counter("casstore_bytes_logical", "Logical bytes of snapshots written.", **kw)
        self.bytes_written = Counter("casstore_bytes_written", "New (compressed) bytes stored by snapshots.", **kw)
        self.bytes_dedup = Counter("casstore_bytes_deduplicated",
                                   "Logical bytes of snapshots that were already stored (not written again).", **kw)
        self.snapshots = Counter("casstore_snapshots", "Snapshots written.", **kw)
        self.errors = Counter("casstore_errors", "Failed operations, by exception class, backend and operation.",
                              ["kind", "backend", "op"], **kw)
        self.request_errors = Counter("casstore_request_errors",
                                      "Storage requests that failed after their retries.", ["backend", "request"], **kw)
        self.retries = Counter("casstore_retries", "Storage requests retried after a transient failure.",
                               ["backend"], **kw)
        self.op_seconds = Histogram("casstore_operation_seconds", "Duration of casstore operations.", ["op"],
                                    buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60,
                                             120, 300, 600), **kw)
        self.snapshot_bytes = Histogram("casstore_snapshot_bytes", "Logical size of snapshots written.",
                                        buckets=tuple(float(4 ** i * 1024) for i in range(13)), **kw)
        self.repo_gauges = {
            name: Gauge(f"casstore_repository_{name}", help_, ["repo"], **kw) for name, help_ in (
                ("snapshots", "Snapshots in the repository (serve-metrics --watch)."),
                ("logical_bytes", "Logical bytes of all snapshots (serve-metrics --watch)."),
                ("stored_bytes", "Bytes of all packs (serve-metrics --watch)."),
                ("chunks", "Distinct chunks stored (serve-metrics --watch)."),
                ("packs", "Packs stored (serve-metrics --watch)."),
                ("dedup_ratio", "Logical bytes / stored bytes (serve-metrics --watch)."),
            )}


_metrics_lock = threading.Lock()
_metrics: Metrics | None = None
_metrics_state = "auto"  # "auto": use the global REGISTRY on first use; "on"; "off"


def enable_metrics(registry: Any = None) -> Metrics:
    """Record casstore metrics into `registry` (default: prometheus_client's global REGISTRY).

    Returns the `Metrics`; calling again with the same registry returns the same
    collectors. Raises ImportError when prometheus_client is not installed.
    """
    global _metrics, _metrics_state
    import prometheus_client

    registry = prometheus_client.REGISTRY if registry is None else registry
    with _metrics_lock:
        if _metrics is not None and _metrics.registry is registry:
            _metrics_state = "on"
            return _metrics
        existing = _by_registry.get(id(registry))
        if existing is not None and existing.registry is registry:
            _metrics = existing
        else:
            _metrics = Metrics(registry)
            _by_registry[id(registry)] = _metrics
        _metrics_state = "on"
        return _metrics


_by_registry: dict[int, Metrics] = {}


def disable_metrics() -> None:
    """Stop recording metrics (the collectors stay registered)."""
    global _metrics, _metrics_state
    with _metrics_lock:
        _metrics, _metrics_state = None, "off"


def metrics() -> Metrics | None:
    """The active Metrics, enabling the global registry on first use if prometheus_client is installed."""
    if _metrics is not None or _metrics_state != "auto":
        return _metrics
    if os.environ.get("CASSTORE_METRICS", "").lower() in ("0", "off", "false", "no"):
        return None
    try:
        return enable_metrics()
    except ImportError:
        _disable_quietly()
    except ValueError:  # a collector of the same name is already in the global registry
        _disable_quietly()
    return None


def _disable_quietly() -> None:
    global _metrics_state
    _metrics_state = "off"


def _record_metrics(o: Operation, error: BaseException | None, label: str) -> None:
    m = metrics()
    if m is None:
        return
    f = o.fields
    m.op_seconds.labels(op=o.op).observe(f["duration_s"])
    if error is not None:
        m.errors.labels(kind=type(error).__name__, backend=label, op=o.op).inc()
        return
    if f.get("outcome") == "problems":
        m.errors.labels(kind="VerifyFailed", backend=label, op=o.op).inc()
    if o.op == "snapshot" and "raw_size" in f:
        m.snapshots.inc()
        m.bytes_logical.inc(f["raw_size"])
        m.bytes_written.inc(f.get("stored_size", 0))
        m.bytes_dedup.inc(f.get("dedup_bytes", 0))
        m.snapshot_bytes.observe(f["raw_size"])


def watch_stats(store: Any, m: Metrics | None = None) -> dict:
    """Sync `store` and set the casstore_repository_* gauges from its stats; returns the stats."""
    m = m or metrics()
    if not getattr(store._repo.backend, "is_local", True):
        store.sync()
    s = store.stats().to_dict()
    if m is not None:
        for name, gauge in m.repo_gauges.items():
            gauge.labels(repo=store.url).set(s.get(name, 0) or 0)
    return s


# --------------------------------------------------------------------------- tracing

_tracer: Any = None
_tracer_state = "auto"


def _get_tracer() -> Any:
    global _tracer, _tracer_state
    if _tracer_state == "auto":
        try:
            from opentelemetry import trace

            _tracer = trace.get_tracer("casstore")
            _tracer_state = "on"
        except Exception:  # noqa: BLE001 - not installed or broken: no spans
            _tracer_state = "off"
    return _tracer


def _start_span(op: str) -> Any:
    tracer = _get_tracer()
    if tracer is None or _not_recording(tracer):
        return None
    try:
        return tracer.start_as_current_span(f"casstore.{op}", record_exception=False, set_status_on_exception=False)
    except Exception:  # noqa: BLE001 - tracing must never break an operation
        return None


def _not_recording(tracer: Any) -> bool:
    """Whether spans from tracer go nowhere: OpenTelemetry's API is installed but no SDK provider
    is set (yet; checked at each operation, so one set later is used). Starting and ending such a
    no-op span cost about 6 us an operation."""
    from opentelemetry import trace
    if isinstance(tracer, trace.NoOpTracer):
        return True
    return isinstance(tracer, trace.ProxyTracer) and isinstance(
        trace.get_tracer_provider(), (trace.ProxyTracerProvider, trace.NoOpTracerProvider))


def _end_span(span: Any, fields: dict, error: BaseException | None) -> None:
    try:
        span.set_attributes({f"casstore.{k}": v for k, v in fields.items()
                             if isinstance(v, (str, bool, int, float))})
        if error is not None:
            from opentelemetry.trace import Status, StatusCode

            span.record_exception(error)
            span.set_status(Status(StatusCode.ERROR, type(error).__name__))
    except Exception:  # noqa: BLE001
        pass


# --------------------------------------------------------------------------- logging output

_STD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "casstore"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, the casstore fields, extras, exception."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": _dt.datetime.fromtimestamp(record.created, tz=_dt.timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "casstore", None)
        if isinstance(fields, dict):
            out.update(fields)
        for k, v in record.__dict__.items():
            if k not in _STD_ATTRS and not k.startswith("_") and k not in out:
                out[k] = v
        if record.exc_info:
            out["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(out, default=_json_default, ensure_ascii=False)


def _json_default(v: Any) -> Any:
    if isinstance(v, (bytes, bytearray, memoryview)):
        return bytes(v).hex()
    if isinstance(v, (set, frozenset, tuple)):
        return list(v)
    return str(v)


def configure_logging(level: int, fmt: str = "text", stream: Any = None) -> None:
    """The CLI's logging: text lines (``casstore: LEVEL: message``) or JSON lines on stderr."""
    import sys

    stream = sys.stderr if stream is None else stream
    root = logging.getLogger()
    for h in [h for h in root.handlers if getattr(h, "_casstore_json", False)]:
        root.removeHandler(h)
    if fmt == "json":
        handler = logging.StreamHandler(stream)
        handler.setFormatter(JsonFormatter())
        handler._casstore_json = True  # type: ignore[attr-defined]
        if not root.handlers:
            root.setLevel(level)
        root.addHandler(handler)
    else:
        logging.basicConfig(level=level, format="casstore: %(levelname)s: %(message)s", stream=stream)
    logging.getLogger("casstore").setLevel(level)
