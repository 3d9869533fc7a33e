"""Object storage: casstore on a local S3 API server behind 20 ms of latency per request.

The chat and vector workloads run on three lanes in lockstep: casstore on a
local folder, casstore on S3 (moto's server on loopback, reached through a
FaultProxy that adds LATENCY to every request and counts requests), and
restic's S3 backend on the same server and proxy when restic is installed.
Per lane: requests per snapshot (PUT / GET+HEAD+LIST), bytes uploaded (the
objects in the lane's bucket), snapshot and restore times. Then one ~100 MB
state is restored from the local folder and from S3 to compare speeds.

Targets (issue 5): <= 3 requests per chat-step snapshot; restore of a 100 MB
state over S3 with 20 ms latency at >= 50% of the local-folder speed.
"""

from __future__ import annotations

import copy
import shutil
import statistics
import tempfile
from pathlib import Path
from typing import Any, Callable

from .baselines import ResticBaseline, Snap, ToolUnavailable, _CliBaseline, _run
from .casstore_tool import CasstoreTool
from .harness import Context, format_table, median, p95, ratio, states_equal, target_row, timed
from .tools import cli_wanted
from .workloads import big_state, chat_states, logical_size, vector_states

LATENCY = 0.020  # seconds added to every request by the proxy

S3_COLUMNS = [
    ("benchmark", "bench", ""), ("tool", "tool", ""), ("status", "status", ""), ("snapshots", "snaps", ""),
    ("requests_per_snapshot", "req/snap", ""), ("puts_per_snapshot", "PUT/snap", ""),
    ("reads_per_snapshot", "GET+HEAD+LIST/snap", ""), ("stored_bytes", "uploaded MB", "MB"),
    ("snapshot_median_s", "snap med ms", "ms"), ("restore_median_s", "restore med ms", "ms"),
    ("restore_MBps", "restore MB/s", ""), ("restore_ok", "equal", ""),
]


def run(ctx: Context) -> list[dict[str, Any]]:
    try:
        from tests.s3server import FaultProxy, create_bucket, moto_server, storage_options_for
    except ImportError as exc:  # moto / the tests package are not installed
        return [{"kind": "result", "benchmark": "s3", "tool": "-", "status": f"unavailable: {exc}"}]
    rows: list[dict[str, Any]] = []
    with moto_server() as endpoint:
        env = _S3Env(endpoint, FaultProxy, create_bucket, storage_options_for)
        try:
            turns = 30 if ctx.quick else 150
            rows += _workload(ctx, env, "s3-chat", chat_states(turns=turns, seed=0), turns, copy.deepcopy)
            size = (dict(rows=2000, dim=256, steps=6, grow=50, overwrite=5) if ctx.quick
                    else dict(rows=20000, dim=768, steps=30, grow=200, overwrite=20))
            rows += _workload(ctx, env, "s3-vectors", vector_states(seed=0, **size), size["steps"], lambda s: s)
            rows += _big(ctx, env, (32 << 20) if ctx.quick else (100 << 20))
        finally:
            env.close()
    chat_s3 = next((r for r in rows if r.get("benchmark") == "s3-chat" and r.get("tool") == "casstore-s3"), {})
    big_s3 = next((r for r in rows if r.get("benchmark") == "s3-big" and r.get("tool") == "casstore-s3"), {})
    rows += [
        target_row("s3-chat", "requests per chat-step snapshot", chat_s3.get("max_requests_per_step"),
                   "<=", 3, "<= 3"),
        target_row("s3-big", f"restore speed vs local folder ({LATENCY * 1000:.0f} ms latency)",
                   big_s3.get("restore_speed_vs_local"), ">=", 0.5, ">= 0.5x"),
    ]
    ctx.log("\n== S3 lanes (moto on loopback, %.0f ms per request)\n%s" % (
        LATENCY * 1000, format_table([r for r in rows if r.get("kind") == "result"], S3_COLUMNS)))
    return rows


# ------------------------------------------------------------------ environment and lanes

class _S3Env:
    """The moto server, one FaultProxy (with latency) and one fresh bucket per lane."""

    def __init__(self, endpoint: str, proxy_cls: type, create_bucket: Callable, options_for: Callable) -> None:
        self.endpoint = endpoint
        self.create_bucket = create_bucket
        self.proxy = proxy_cls(endpoint).start()
        self.proxy.latency = LATENCY
        self.options = options_for(self.proxy.endpoint_url, sdk_retries=False)

    def bucket(self) -> str:
        return self.create_bucket(self.endpoint)

    def bucket_bytes(self, bucket: str) -> int:
        import boto3
        client = boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id="testing",
                              aws_secret_access_key="testing", region_name="us-east-1")
        total = 0
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            total += sum(o["Size"] for o in page.get("Contents", []))
        return total

    def close(self) -> None:
        self.proxy.stop()


class _CasstoreS3:
    name = "casstore-s3"

    def __init__(self, env: _S3Env, directory: Path) -> None:
        import casstore
        self.env, self.bucket = env, env.bucket()
        self.store = casstore.open(f"s3://{self.bucket}/repo", storage_options=env.options,
                                   index_path=str(directory / "index"))

    def snapshot(self, state: Any, step: int) -> Snap:
        info = self.store.snapshot(state, agent_id="bench", session_id="s0", description=f"step {step}")
        return Snap(info.id, info.raw_size, {"stored_size": info.stored_size})

    def restore(self, snap_id: str) -> Any:
        self.store.drop_caches()  # a cold read: nothing cached from the snapshot
        return self.store.restore(snap_id)

    def uploaded(self) -> int:
        return self.env.bucket_bytes(self.bucket)

    def close(self) -> None:
        self.store.close()


class _CasstoreLocal(CasstoreTool):
    name = "casstore-local"

    def __init__(self, env: _S3Env, directory: Path) -> None:
        super().__init__(directory)
        self.dir = directory

    def uploaded(self) -> int:
        from .harness import dir_bytes
        return dir_bytes(self.dir / "repo")


class _ResticS3(ResticBaseline):
    """restic's S3 backend on the same server, through the same latency proxy."""

    name = "restic-s3"

    def __init__(self, env: _S3Env, directory: Path) -> None:
        _CliBaseline.__init__(self, directory)
        self.s3env, self.bucket = env, env.bucket()
        self.env.update(RESTIC_PASSWORD="benchmark", RESTIC_CACHE_DIR=str(self.work / "cache"),
                        RESTIC_REPOSITORY=f"s3:{env.proxy.endpoint_url}/{self.bucket}/restic",
                        AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                        AWS_DEFAULT_REGION="us-east-1")
        _run(["restic", "init"], self.env)

    def uploaded(self) -> int:
        return self.s3env.bucket_bytes(self.bucket)


LANES: dict[str, Callable[[_S3Env, Path], Any]] = {
    "casstore-local": _CasstoreLocal, "casstore-s3": _CasstoreS3, "restic-s3": _ResticS3}


def _lanes(ctx: Context) -> dict[str, Callable[[_S3Env, Path], Any]]:
    """The lanes a workload runs: restic only where the CLI baselines are wanted (not with --quick)."""
    return {name: f for name, f in LANES.items() if name != "restic-s3" or cli_wanted(ctx)}


def _workload(ctx: Context, env: _S3Env, bench: str, states, n_steps: int,
              keep: Callable[[Any], Any]) -> list[dict[str, Any]]:
    """Snapshot every state on every lane (counting requests on S3 lanes), then restore samples."""
    lanes: dict[str, dict[str, Any]] = {}
    for name, factory in _lanes(ctx).items():
        lane = {"tool": None, "status": "ok", "ids": [], "raw": [], "times": [], "req": [], "restore": []}
        try:
            lane["tool"] = factory(env, ctx.tool_dir(bench, name))
        except ToolUnavailable as exc:
            lane["status"] = str(exc)
        except Exception as exc:
            lane["status"] = f"error: {type(exc).__name__}: {exc}"[:200]
        lanes[name] = lane
    samples = sorted({0, n_steps // 2, n_steps - 1})
    kept: dict[int, Any] = {}
    for step, state in enumerate(states):
        if step in samples:
            kept[step] = keep(state)
        for name, lane in lanes.items():
            if lane["tool"] is None:
                continue
            env.proxy.reset_counts()
            try:
                snap, seconds = timed(lane["tool"].snapshot, state, step)
            except Exception as exc:
                _fail(lane, exc)
                continue
            lane["ids"].append(snap.id), lane["raw"].append(snap.raw_bytes), lane["times"].append(seconds)
            lane["req"].append(dict(env.proxy.counts))
        if (step + 1) % max(1, n_steps // 5) == 0:
            ctx.log(f"  {bench} step {step + 1}/{n_steps}")
    rows = []
    for name, lane in lanes.items():
        tool = lane["tool"]
        if tool is not None:
            try:
                for step in samples:
                    got, seconds = timed(tool.restore, lane["ids"][step])
                    lane["restore"].append(seconds)
                    bad = states_equal(kept[step], got)
                    if bad:
                        lane.setdefault("mismatch", f"step {step}: {bad}")
            except Exception as exc:
                _fail(lane, exc)
        rows.append(_row(bench, name, lane))
    return rows


def _fail(lane: dict[str, Any], exc: BaseException) -> None:
    lane["status"] = f"error: {type(exc).__name__}: {exc}"[:200]
    try:
        lane["tool"].close()
    except Exception:
        pass
    lane["tool"] = None


def _row(bench: str, name: str, lane: dict[str, Any]) -> dict[str, Any]:
    tool, done = lane["tool"], lane["status"] == "ok"
    row: dict[str, Any] = {"kind": "result", "benchmark": bench, "tool": name, "status": lane["status"],
                           "latency_ms": LATENCY * 1000 if name.endswith("-s3") else 0}
    if not done:
        return row
    uploaded = tool.uploaded()
    tool.close()
    raw = sum(lane["raw"])
    steps = lane["req"][1:] or lane["req"]          # step 0 writes the whole first state
    totals = [sum(c.values()) for c in steps]
    puts = [c.get("PUT", 0) for c in steps]
    reads = [c.get("GET", 0) + c.get("HEAD", 0) + c.get("LIST", 0) for c in steps]
    s3 = name.endswith("-s3")
    row.update({
        "snapshots": len(lane["ids"]), "raw_bytes": raw, "stored_bytes": uploaded,
        "raw_over_stored": ratio(raw, uploaded),
        "snapshot_median_s": median(lane["times"]), "snapshot_p95_s": p95(lane["times"]),
        "restore_median_s": median(lane["restore"]), "restore_times_s": lane["restore"],
        "restore_ok": "mismatch" not in lane,
        "requests_per_snapshot": statistics.mean(totals) if s3 else None,
        "max_requests_per_step": max(totals) if s3 else None,
        "puts_per_snapshot": statistics.mean(puts) if s3 else None,
        "reads_per_snapshot": statistics.mean(reads) if s3 else None,
        "first_snapshot_requests": lane["req"][0] if s3 else None,
    })
    if "mismatch" in lane:
        row["restore_mismatch"] = lane["mismatch"]
    return row


# ------------------------------------------------------------------ big restore

def _big(ctx: Context, env: _S3Env, nbytes: int) -> list[dict[str, Any]]:
    """One ~nbytes state: snapshot, then cold restores from the local folder and from S3."""
    state = big_state(nbytes, seed=0)
    payload = logical_size(state)
    rows, speeds = [], {}
    for name in ("casstore-local", "casstore-s3"):
        directory = ctx.tool_dir("s3-big", name)
        tool = LANES[name](env, directory)
        row: dict[str, Any] = {"kind": "result", "benchmark": "s3-big", "tool": name, "status": "ok",
                               "latency_ms": LATENCY * 1000 if name.endswith("-s3") else 0, "snapshots": 1,
                               "raw_bytes": payload}
        try:
            env.proxy.reset_counts()
            snap, row["snapshot_median_s"] = timed(tool.snapshot, state, 0)
            row["snapshot_requests"] = dict(env.proxy.counts)
            times = []
            for _ in range(3):
                env.proxy.reset_counts()
                got, seconds = timed(tool.restore, snap.id)
                times.append(seconds)
                row["restore_requests"] = dict(env.proxy.counts)
                row["restore_ok"] = states_equal(state, got) is None
                del got
            row["restore_times_s"] = times
            row["restore_median_s"] = median(times)
            row["restore_MBps"] = payload / 1e6 / row["restore_median_s"]
            speeds[name] = row["restore_MBps"]
            row["stored_bytes"] = tool.uploaded()
        except Exception as exc:
            row["status"] = f"error: {type(exc).__name__}: {exc}"[:200]
        finally:
            tool.close()
        rows.append(row)
    if len(speeds) == 2:
        rows[1]["restore_speed_vs_local"] = speeds["casstore-s3"] / speeds["casstore-local"]
    ctx.log("  s3-big restore MB/s: " + ", ".join(f"{k} {v:.0f}" for k, v in speeds.items()))
    return rows


if __name__ == "__main__":  # python -m benchmarks.bench_s3 [--quick]
    import sys
    scratch = Path(tempfile.mkdtemp(prefix="casstore-bench-s3-"))
    try:
        out = run(Context(quick="--quick" in sys.argv, scratch=scratch,
                          log=lambda m: print(m, file=sys.stderr, flush=True)))
        from .harness import TARGET_COLUMNS
        print(format_table([r for r in out if r.get("kind") == "target"], TARGET_COLUMNS))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
