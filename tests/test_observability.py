"""Observability: the log record of each operation, JSON logs, prometheus metrics, spans, serve-metrics."""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

import casstore
from casstore import backend as backend_mod
from casstore import observability as obs
from tests.s3server import free_port

prometheus_client = pytest.importorskip("prometheus_client")

STATE = {"messages": [{"role": "user", "content": f"message {i} " * 20} for i in range(300)], "step": 3}


@pytest.fixture
def registry():
    """casstore's metrics recorded into a private registry for the test, then back to the default."""
    reg = prometheus_client.CollectorRegistry()
    obs.enable_metrics(reg)
    yield reg
    obs.disable_metrics()
    obs._metrics_state = "auto"


def value(reg, name: str, **labels) -> float:
    v = reg.get_sample_value(name, labels)
    return 0.0 if v is None else v


def records(caplog, op: str | None = None) -> list[logging.LogRecord]:
    out = [r for r in caplog.records if isinstance(getattr(r, "casstore", None), dict) and "op" in r.casstore]
    return [r for r in out if op is None or r.casstore["op"] == op]


def test_snapshot_logs_one_structured_record(store, caplog):
    caplog.set_level(logging.INFO, logger="casstore")
    first = store.snapshot(STATE, "agent-a", "s1")
    second = store.snapshot(STATE, "agent-a", "s1")  # identical: nothing new to store

    recs = records(caplog)
    assert [r.casstore["op"] for r in recs] == ["snapshot", "snapshot"]
    r1, r2 = recs
    assert r1.levelno == logging.INFO and r1.name == "casstore"
    f = r1.casstore
    assert f["id"] == first.id and f["agent"] == "agent-a" and f["session"] == "s1" and f["kind"] == "state"
    assert f["raw_size"] == first.raw_size > 0
    assert f["stored_size"] == first.stored_size > 0
    assert f["chunks"] == first.chunk_count and f["new_chunks"] == first.new_chunk_count > 0
    assert f["outcome"] == "ok" and "error_kind" not in f
    assert 0 < f["duration_s"] < 60
    assert f["backend"] == "file" and f["repo"] == store.url
    assert f["dedup_bytes"] < f["raw_size"]
    g = r2.casstore
    assert g["id"] == second.id and g["new_chunks"] == 0
    assert g["dedup_bytes"] == second.raw_size and g["dedup_ratio"] == 1.0
    assert first.id[:12] in r1.getMessage() and "ok" in r1.getMessage()


def test_every_operation_logs_one_record(store, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="casstore")
    info = store.snapshot(STATE, "a", "s")
    (tmp_path / "ws").mkdir()
    (tmp_path / "ws" / "f.txt").write_text("hello " * 1000)
    d = store.snapshot_dir(str(tmp_path / "ws"), "a", "ws")
    store.restore(info.id)
    store.restore_dir(d.id, str(tmp_path / "out"))
    store.verify()
    store.gc()
    with casstore.open(str(tmp_path / "other")) as other:
        store.copy_to(other)
    store.forget(keep_last=1)
    ops = [(r.casstore["op"], r.casstore.get("kind")) for r in records(caplog)]
    assert ops == [("snapshot", "state"), ("snapshot", "dir"), ("restore", "state"), ("restore", "dir"),
                   ("verify", None), ("gc", None), ("copy", None), ("forget", None)]
    by_op = {r.casstore["op"]: r.casstore for r in records(caplog)}
    assert by_op["restore"]["id"] == d.id and by_op["restore"]["raw_size"] == d.raw_size
    assert by_op["verify"]["ok"] is True and by_op["verify"]["problems"] == 0
    assert by_op["copy"]["copied"] == 2 and by_op["copy"]["bytes_sent"] > 0
    assert by_op["gc"]["dry_run"] is False and "packs_deleted" in by_op["gc"]
    assert by_op["forget"]["removed"] == 0
    assert all(r.casstore["outcome"] == "ok" for r in records(caplog))


def test_a_restore_by_path_logs_the_path(store, caplog):
    caplog.set_level(logging.INFO, logger="casstore")
    info = store.snapshot(STATE, "a", "s")
    assert store.restore(info.id, path=("messages", 2, "role")) == "user"
    with pytest.raises(casstore.PathNotFoundError):
        store.restore(info.id, path="memory")
    ok, missing = records(caplog, "restore")
    assert ok.casstore["path"] == "state['messages'][2]['role']" and ok.casstore["outcome"] == "ok"
    assert "state['messages'][2]['role']" in ok.getMessage()
    assert missing.levelno == logging.WARNING and missing.casstore["error_kind"] == "PathNotFoundError"
    assert missing.casstore["path"] == "state['memory']"


def test_failure_is_logged_with_its_class(store, caplog):
    caplog.set_level(logging.INFO, logger="casstore")
    with pytest.raises(casstore.SnapshotNotFoundError):
        store.restore("ffffffff")
    (r,) = records(caplog, "restore")
    assert r.levelno == logging.WARNING
    assert r.casstore["outcome"] == "error" and r.casstore["error_kind"] == "SnapshotNotFoundError"
    assert r.casstore["id"] == "ffffffff"


def test_json_formatter_output_parses(store, caplog):
    caplog.set_level(logging.INFO, logger="casstore")
    info = store.snapshot(STATE, "agent-j", "s")
    (r,) = records(caplog, "snapshot")
    line = obs.JsonFormatter().format(r)
    assert "\n" not in line
    d = json.loads(line)
    assert d["level"] == "INFO" and d["logger"] == "casstore" and d["op"] == "snapshot"
    assert d["id"] == info.id and d["agent"] == "agent-j" and d["raw_size"] == info.raw_size
    assert d["message"] == r.getMessage() and d["time"].endswith("+00:00")
    # odd extras and exceptions still give one valid JSON object
    other = logging.LogRecord("casstore", logging.ERROR, __file__, 1, "boom %s", ("x",), None)
    other.blob = b"\x00\x01"
    try:
        raise ValueError("bad")
    except ValueError:
        other.exc_info = sys.exc_info()
    d = json.loads(obs.JsonFormatter().format(other))
    assert d["message"] == "boom x" and d["blob"] == "0001" and "ValueError: bad" in d["exc_info"]


def test_metrics_after_two_snapshots(store, registry, caplog):
    caplog.set_level(logging.INFO, logger="casstore")
    a = store.snapshot(STATE, "m", "s")
    b = store.snapshot(STATE, "m", "s")
    assert value(registry, "casstore_snapshots_total") == 2
    assert value(registry, "casstore_bytes_logical_total") == a.raw_size + b.raw_size
    assert value(registry, "casstore_bytes_written_total") == a.stored_size + b.stored_size
    recs = records(caplog, "snapshot")
    dedup = sum(r.casstore["dedup_bytes"] for r in recs)
    assert value(registry, "casstore_bytes_deduplicated_total") == dedup >= b.raw_size
    assert value(registry, "casstore_operation_seconds_count", op="snapshot") == 2
    assert value(registry, "casstore_snapshot_bytes_count") == 2
    assert value(registry, "casstore_snapshot_bytes_sum") == a.raw_size + b.raw_size
    store.restore(a.id)
    assert value(registry, "casstore_operation_seconds_count", op="restore") == 1
    assert value(registry, "casstore_snapshots_total") == 2


def test_dedup_bytes_are_exact(store, registry, caplog):
    caplog.set_level(logging.INFO, logger="casstore")
    a, b = os.urandom(1 << 20), os.urandom(1 << 20)
    store.snapshot({"a": a}, "d", "s")
    second = store.snapshot({"a": a, "b": b}, "d", "s")
    first_rec, second_rec = (r.casstore for r in records(caplog, "snapshot"))
    assert first_rec["dedup_bytes"] == 0
    assert second_rec["dedup_bytes"] == len(a)  # the unchanged blob, to the byte
    assert second_rec["dedup_ratio"] == round(len(a) / second.raw_size, 4)
    assert value(registry, "casstore_bytes_deduplicated_total") == len(a)


def test_failed_upload_logs_an_error_and_counts_it(store, registry, caplog, monkeypatch):
    caplog.set_level(logging.INFO, logger="casstore")

    def full(path, data, durable=True):
        raise OSError(errno.ENOSPC, "No space left on device", path)  # permanent: no retry

    monkeypatch.setattr(backend_mod, "_local_put", full)
    monkeypatch.setattr(backend_mod, "_local_create", lambda path, data: full(path, data))
    with pytest.raises(casstore.StorageError):
        store.snapshot(STATE, "f", "s")
    (r,) = records(caplog, "snapshot")
    assert r.levelno == logging.ERROR
    assert r.casstore["outcome"] == "error" and r.casstore["error_kind"] == "StorageError"
    assert r.casstore["agent"] == "f" and "No space left" in r.casstore["error"]
    failed = [x for x in caplog.records if x.name == "casstore.backend"]
    assert failed and failed[0].levelno == logging.WARNING
    assert failed[0].casstore["event"] == "request_failed" and failed[0].casstore["error_kind"] == "OSError"
    assert value(registry, "casstore_errors_total", kind="StorageError", backend="file", op="snapshot") == 1
    assert value(registry, "casstore_request_errors_total", backend="file", request="put") >= 1
    assert value(registry, "casstore_retries_total", backend="file") == 0
    assert value(registry, "casstore_snapshots_total") == 0


def test_transient_failures_move_the_retry_counter(store, registry, monkeypatch):
    real = backend_mod._local_put
    calls = {"n": 0}

    def flaky(path, data, durable=True):
        calls["n"] += 1
        if calls["n"] <= 2:
            raise OSError(errno.EIO, "I/O error (transient)", path)
        return real(path, data, durable)

    monkeypatch.setattr(backend_mod, "_local_put", flaky)
    monkeypatch.setattr(backend_mod, "backoff_delay", lambda attempt: 0.0)
    info = store.snapshot(STATE, "r", "s")
    assert store.restore(info.id) == STATE
    assert value(registry, "casstore_retries_total", backend="file") == 2
    assert value(registry, "casstore_errors_total", kind="StorageError", backend="file", op="snapshot") == 0
    assert value(registry, "casstore_snapshots_total") == 1


def test_s3_upload_failure_counts_retries_and_errors_without_secrets(s3_proxy, s3_proxy_url, tmp_path, registry,
                                                                    caplog, monkeypatch):
    caplog.set_level(logging.DEBUG, logger="casstore")
    monkeypatch.setattr(backend_mod, "backoff_delay", lambda attempt: 0.0)
    options = {**s3_proxy.storage_options, "key": "AKIAOBSERVABILITYTEST", "secret": "s3cr3t-never-logged"}
    with casstore.open(s3_proxy_url, storage_options=options, index_path=str(tmp_path / "idx")) as store:
        store._repo.backend.retries = 2
        s3_proxy.fail_always(methods={"PUT"})
        with pytest.raises(casstore.StorageError):
            store.snapshot(STATE, "s3", "s")
        s3_proxy.clear()
    assert value(registry, "casstore_errors_total", kind="StorageError", backend="s3", op="snapshot") == 1
    assert value(registry, "casstore_retries_total", backend="s3") >= 2
    assert value(registry, "casstore_request_errors_total", backend="s3", request="put") >= 1
    (r,) = records(caplog, "snapshot")
    assert r.levelno == logging.ERROR and r.casstore["backend"] == "s3"
    text = "\n".join(obs.JsonFormatter().format(x) for x in caplog.records)
    assert "s3cr3t-never-logged" not in text and "AKIAOBSERVABILITYTEST" not in text
    assert any(x.casstore.get("event") == "retry" for x in caplog.records if x.name == "casstore.backend")


def test_no_metrics_when_disabled(store, caplog):
    obs.disable_metrics()
    try:
        caplog.set_level(logging.INFO, logger="casstore")
        assert obs.metrics() is None
        store.snapshot(STATE, "n", "s")
        assert records(caplog, "snapshot")[0].casstore["outcome"] == "ok"
    finally:
        obs._metrics_state = "auto"


def test_spans_carry_the_record_fields(store, monkeypatch):
    sdk = pytest.importorskip("opentelemetry.sdk.trace")
    export = pytest.importorskip("opentelemetry.sdk.trace.export")
    memory = pytest.importorskip("opentelemetry.sdk.trace.export.in_memory_span_exporter")
    provider = sdk.TracerProvider()
    exporter = memory.InMemorySpanExporter()
    provider.add_span_processor(export.SimpleSpanProcessor(exporter))
    monkeypatch.setattr(obs, "_tracer", provider.get_tracer("casstore"))
    monkeypatch.setattr(obs, "_tracer_state", "on")
    info = store.snapshot(STATE, "t", "s")
    with pytest.raises(casstore.SnapshotNotFoundError):
        store.restore("eeeeeeee")
    ok, bad = exporter.get_finished_spans()
    assert ok.name == "casstore.snapshot"
    assert ok.attributes["casstore.id"] == info.id and ok.attributes["casstore.raw_size"] == info.raw_size
    assert bad.name == "casstore.restore" and bad.status.status_code.name == "ERROR"
    assert bad.attributes["casstore.error_kind"] == "SnapshotNotFoundError"


def test_no_span_is_started_while_no_tracer_provider_is_set(monkeypatch):
    trace = pytest.importorskip("opentelemetry.trace")
    sdk = pytest.importorskip("opentelemetry.sdk.trace")
    if not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        pytest.skip("a global tracer provider is set in this process")
    monkeypatch.setattr(obs, "_tracer", trace.get_tracer("casstore"))
    monkeypatch.setattr(obs, "_tracer_state", "on")
    assert obs._start_span("restore") is None
    monkeypatch.setattr(obs, "_tracer", sdk.TracerProvider().get_tracer("casstore"))
    assert obs._start_span("restore") is not None


def _cli(*args: str, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "CASSTORE_METRICS": "1"}
    env.pop("CASSTORE_REPO", None)
    return subprocess.run([sys.executable, "-m", "casstore_cli.main", *args], capture_output=True, text=True,
                          env=env, timeout=60, **kw)


def test_cli_log_format_json_writes_json_lines(tmp_path):
    repo = str(tmp_path / "repo")
    casstore.open(repo).close()
    state = tmp_path / "state.json"
    state.write_text(json.dumps(STATE))
    p = _cli("--repo", repo, "--log-format", "json", "snapshot", str(state), "--agent", "cli")
    assert p.returncode == 0, p.stderr
    lines = [json.loads(x) for x in p.stderr.splitlines() if x.strip()]
    snap = [x for x in lines if x.get("op") == "snapshot"]
    assert len(snap) == 1 and snap[0]["outcome"] == "ok" and snap[0]["agent"] == "cli"
    assert snap[0]["level"] == "INFO" and snap[0]["raw_size"] > 0
    p = _cli("--repo", repo, "-q", "--log-format", "json", "snapshot", str(state), "--agent", "cli")
    assert p.returncode == 0 and p.stderr == ""  # -q keeps only errors


def test_serve_metrics_answers_with_metric_names(tmp_path):
    repo = str(tmp_path / "repo")
    with casstore.open(repo) as s:
        s.snapshot(STATE, "srv", "s")
    port = free_port()
    env = {**os.environ}
    env.pop("CASSTORE_REPO", None)
    proc = subprocess.Popen([sys.executable, "-m", "casstore_cli.main", "--repo", repo, "serve-metrics",
                             "--port", str(port), "--watch", "0.2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        body, deadline = "", time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
                    body = resp.read().decode()
                if "casstore_repository_snapshots{" in body:
                    break
            except OSError:
                if proc.poll() is not None:
                    break
            time.sleep(0.1)
        assert proc.poll() is None, proc.communicate()[1]
        for name in ("casstore_bytes_logical_total", "casstore_bytes_written_total", "casstore_snapshots_total",
                     "casstore_bytes_deduplicated_total", "casstore_errors_total", "casstore_retries_total",
                     "casstore_operation_seconds", "casstore_snapshot_bytes"):
            assert name in body
        assert f'casstore_repository_snapshots{{repo="{os.path.abspath(repo)}"}} 1.0' in body
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
