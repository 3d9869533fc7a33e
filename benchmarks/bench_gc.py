"""Garbage collection and verification of a long history, against restic forget --prune / check.

Workload: the chat agent (workloads.chat_states) over many sessions, one
lineage per session (seed = session number), snapshotted after every turn:
100 sessions x 100 turns = 10,000 snapshots (--quick: 5 x 100 = 500). Then
half of every lineage is forgotten (`forget(keep_last=turns // 2)`), and each
of these runs in its own child process, so its time and peak RSS are the
operation's own (peak = the child's VmHWM, interpreter included):

  gc          two back-to-back `store.gc()` passes (the repository is created
              with gc_grace=0, so pass 1 condemns and repacks, pass 2 deletes);
              the reported time is the sum of both passes
  verify      `store.verify()` (quick: manifests, trees, trailers, index)
  verify deep `store.verify(deep=True)` (re-reads and re-hashes every chunk)

restic (when installed, and not with --quick unless --cli on): `restic backup`
per snapshot costs ~0.3-0.8 s (process start and key derivation included), so
restic gets a smaller history of the very same states: the first 3 sessions x
100 turns = 300 snapshots, state written as files (stage_state) and backed up
with one tag per session. Then `restic forget --keep-last 50 --group-by tags
--prune`, `restic check` and `restic check --read-data`, each timed around the
process, peak RSS from `/usr/bin/time` (its child's ru_maxrss). casstore is run
on the same 300 states too ("casstore@restic-count"), so the target rows
compare equal counts; the 10,000-snapshot row is compared per snapshot only.

Child entry point (used by run()): python -m benchmarks.bench_gc {gc,verify,verify-deep} REPO
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Iterator

from .harness import PACKAGE_ROOT, Context, dir_bytes, format_table, ratio, target_row
from .tools import cli_wanted
from .workloads import chat_states

BENCH = "gc"
MB = 1e6
AGENT = "bench"

GC_COLUMNS = [
    ("tool", "tool", ""), ("status", "status", ""), ("snapshots", "snaps", ""),
    ("snapshots_kept", "kept", ""), ("repo_bytes_before", "repo MB before", "MB"),
    ("repo_bytes_after", "repo MB after", "MB"), ("gc_s", "gc s", ""),
    ("gc_peak_bytes", "gc peak MB", "MB"), ("verify_s", "verify s", ""),
    ("verify_deep_s", "deep s", ""), ("verify_deep_peak_bytes", "deep peak MB", "MB"),
    ("gc_ms_per_snapshot", "gc ms/snap", ""), ("verify_deep_ms_per_snapshot", "deep ms/snap", ""),
]


# ------------------------------------------------------------------ sizes

def _sizes(ctx: Context) -> dict[str, int]:
    if ctx.quick:
        return {"sessions": 5, "turns": 100, "small_sessions": 1, "small_turns": 40}
    return {"sessions": 100, "turns": 100, "small_sessions": 3, "small_turns": 100}


def _history(sessions: int, turns: int) -> Iterator[tuple[int, int, dict[str, Any]]]:
    """(session, turn, state) for every turn of every session; the state dict is reused."""
    for sess in range(sessions):
        for turn, state in enumerate(chat_states(turns=turns, seed=sess)):
            yield sess, turn, state


# ------------------------------------------------------------------ casstore

def _casstore_row(ctx: Context, tool: str, sessions: int, turns: int) -> dict[str, Any]:
    n = sessions * turns
    row: dict[str, Any] = {"kind": "result", "benchmark": BENCH, "tool": tool, "status": "ok", "snapshots": n,
                           "sessions": sessions, "turns_per_session": turns}
    try:
        import casstore
    except ImportError as exc:
        row["status"] = f"unavailable: {exc}"
        return row
    try:
        tool_dir = ctx.tool_dir(BENCH, tool)
        repo = tool_dir / "repo"
        store = casstore.open(str(repo), gc_grace=0)
        t0 = time.perf_counter()
        try:
            for i, (sess, _turn, state) in enumerate(_history(sessions, turns)):
                store.snapshot(state, agent_id=AGENT, session_id=f"s{sess:03d}")
                if (i + 1) % max(1, n // 5) == 0:
                    ctx.log(f"  gc/{tool}: {i + 1}/{n} snapshots ({time.perf_counter() - t0:.0f}s)")
            row["build_s"] = time.perf_counter() - t0
            row["raw_bytes"] = store.stats().logical_bytes
            row["repo_bytes_before"] = dir_bytes(tool_dir)
            forgotten, row["forget_s"] = _timed(store.forget, keep_last=turns // 2)
            row["snapshots_forgotten"] = len(forgotten)
            row["snapshots_kept"] = len(store.list())
        finally:
            store.close()
        row["repo_bytes_after_forget"] = dir_bytes(tool_dir)
        row["index_bytes_after_forget"] = dir_bytes(repo / "index")  # LMDB: a cache, grows on rewrite

        gc_out = _child(["gc", str(repo)])
        row.update(gc_s=gc_out["seconds"], gc_pass_s=[p["seconds"] for p in gc_out["passes"]],
                   gc_peak_bytes=gc_out["peak_rss"], gc_child_rss_after_open=gc_out["rss_after_open"],
                   gc_bytes_freed=sum(p["bytes_freed"] for p in gc_out["passes"]),
                   gc_bytes_rewritten=sum(p["bytes_rewritten"] for p in gc_out["passes"]),
                   gc_passes=gc_out["passes"])
        row["repo_bytes_after"] = dir_bytes(tool_dir)
        row["index_bytes_after"] = dir_bytes(repo / "index")
        ctx.log(f"  gc/{tool}: gc {row['gc_s']:.2f}s (passes {', '.join(f'{s:.2f}' for s in row['gc_pass_s'])}),"
                f" freed {row['gc_bytes_freed'] / MB:.2f} MB, peak {row['gc_peak_bytes'] / MB:.0f} MB")

        for mode, key in (("verify", "verify"), ("verify-deep", "verify_deep")):
            out = _child([mode, str(repo)])
            row.update({f"{key}_s": out["seconds"], f"{key}_peak_bytes": out["peak_rss"],
                        f"{key}_ok": out["ok"], f"{key}_report": out["report"]})
            if not out["ok"]:
                row["status"] = f"error: {mode} found problems after gc: {out['errors'][:2]}"[:200]
            ctx.log(f"  gc/{tool}: {mode} {out['seconds']:.2f}s ok={out['ok']}, peak {out['peak_rss'] / MB:.0f} MB")
    except Exception as exc:
        row["status"] = f"error: {type(exc).__name__}: {exc}"[:200]
        row["traceback"] = traceback.format_exc()[-3000:]
    _normalise(row)
    return row


def _child(args: list[str], timeout: float = 3600) -> dict[str, Any]:
    """Run gc_child on one operation; its JSON line carries its own VmHWM."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(PACKAGE_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "benchmarks.gc_child", *args], cwd=PACKAGE_ROOT, env=env,
                         capture_output=True, text=True, timeout=timeout)
    if res.returncode != 0:
        raise RuntimeError(f"child {' '.join(args[:1])} failed ({res.returncode}): {res.stderr[-2000:]}")
    out = json.loads([ln for ln in res.stdout.splitlines() if ln.startswith("{")][-1])
    out["process_s"] = time.perf_counter() - t0
    return out


# ------------------------------------------------------------------ restic

def _restic_row(ctx: Context, sessions: int, turns: int) -> dict[str, Any]:
    n = sessions * turns
    row: dict[str, Any] = {"kind": "result", "benchmark": BENCH, "tool": "restic", "status": "ok", "snapshots": n,
                           "sessions": sessions, "turns_per_session": turns}
    if not shutil.which("restic"):
        row.update(status="not installed", snapshots=None)
        return row
    if not cli_wanted(ctx):
        row.update(status="skipped (--quick; --cli on runs it)", snapshots=None)
        return row
    from .baselines import ResticBaseline, stage_state
    tool = None
    try:
        tool_dir = ctx.tool_dir(BENCH, "restic")
        tool = ResticBaseline(tool_dir)
        env, stage = tool.env, tool.stage
        raw = 0
        t0 = time.perf_counter()
        for i, (sess, _turn, state) in enumerate(_history(sessions, turns)):
            raw += stage_state(state, stage)
            _restic(["backup", "--json", "--host", "bench", "--tag", f"s{sess:03d}", "."], env, cwd=stage)
            if (i + 1) % max(1, n // 5) == 0:
                ctx.log(f"  gc/restic: {i + 1}/{n} backups ({time.perf_counter() - t0:.0f}s)")
        row["build_s"] = time.perf_counter() - t0
        row["raw_bytes"] = raw
        shutil.rmtree(stage, ignore_errors=True)
        row["repo_bytes_before"] = dir_bytes(tool.repo)
        _out, row["startup_s"], _peak = _restic_timed(["cat", "config"], env)  # process start + key derivation

        out, row["gc_s"], row["gc_peak_bytes"] = _restic_timed(
            ["forget", "--keep-last", str(turns // 2), "--group-by", "tags", "--prune"], env)
        row["repo_bytes_after"] = dir_bytes(tool.repo)
        row["gc_bytes_freed"] = row["repo_bytes_before"] - row["repo_bytes_after"]
        row["snapshots_kept"] = len(json.loads(_restic(["snapshots", "--json"], env)))
        row["snapshots_forgotten"] = n - row["snapshots_kept"]
        ctx.log(f"  gc/restic: forget --prune {row['gc_s']:.2f}s, peak {row['gc_peak_bytes'] / MB:.0f} MB")

        _out, row["verify_s"], row["verify_peak_bytes"] = _restic_timed(["check"], env)
        row["verify_ok"] = True
        _out, row["verify_deep_s"], row["verify_deep_peak_bytes"] = _restic_timed(["check", "--read-data"], env)
        row["verify_deep_ok"] = True
        ctx.log(f"  gc/restic: check {row['verify_s']:.2f}s, check --read-data {row['verify_deep_s']:.2f}s")
    except Exception as exc:
        row["status"] = f"error: {type(exc).__name__}: {exc}"[:200]
        row["traceback"] = traceback.format_exc()[-3000:]
    finally:
        if tool is not None:
            tool.close()
    _normalise(row)
    return row


def _restic(args: list[str], env: dict[str, str], cwd: Path | None = None) -> str:
    res = subprocess.run(["restic", *args], env=env, cwd=cwd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"restic {' '.join(args)} failed ({res.returncode}): {res.stderr[-1500:]}")
    return res.stdout


def _restic_timed(args: list[str], env: dict[str, str]) -> tuple[str, float, int | None]:
    """(stdout, wall seconds, peak RSS bytes) of one restic run.

    The peak comes from /usr/bin/time (the ru_maxrss of its own small forked
    child that execs restic), not from our RUSAGE_CHILDREN, which would carry
    this big Python parent's high-water mark across a vfork+exec.
    """
    time_bin = shutil.which("time") or ("/usr/bin/time" if os.path.exists("/usr/bin/time") else None)
    with tempfile.NamedTemporaryFile("r", suffix=".time") as tf:
        prefix = [time_bin, "-f", "%M", "-o", tf.name] if time_bin else []
        t0 = time.perf_counter()
        res = subprocess.run([*prefix, "restic", *args], env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - t0
        if res.returncode != 0:
            raise RuntimeError(f"restic {' '.join(args)} failed ({res.returncode}): {res.stderr[-1500:]}")
        peak = None
        if time_bin:
            lines = [ln for ln in tf.read().split() if ln.strip().isdigit()]
            peak = int(lines[-1]) * 1024 if lines else None
    return res.stdout, seconds, peak


# ------------------------------------------------------------------ rows

def _timed(fn: Any, *args: Any, **kwargs: Any) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def _normalise(row: dict[str, Any]) -> None:
    """Per-snapshot figures (over the snapshots before forget), so different counts can be compared."""
    n = row.get("snapshots")
    for key in ("gc_s", "verify_s", "verify_deep_s"):
        v = row.get(key)
        row[key[:-2] + "_ms_per_snapshot"] = v * 1000 / n if v is not None and n else None
    row["stored_bytes"] = row.get("repo_bytes_before")
    row["raw_over_stored"] = ratio(row.get("raw_bytes"), row.get("repo_bytes_before"))


def _targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by = {r["tool"]: r for r in rows}
    big, same, restic = by.get("casstore", {}), by.get("casstore@restic-count", {}), by.get("restic", {})
    ok = [r for r in (same, restic) if r.get("status") == "ok"]
    equal = len(ok) == 2 and same.get("snapshots") == restic.get("snapshots")
    cas = same if equal else big
    out = []
    for metric, key, bound in (("gc s / restic forget --prune", "gc_s", 0.5),
                               ("deep s / restic check --read-data", "verify_deep_s", 0.5),
                               ("gc peak / restic forget --prune", "gc_peak_bytes", 0.5),
                               ("deep peak / restic check --read-data", "verify_deep_peak_bytes", 0.5)):
        if equal:
            n = cas["snapshots"]
            out.append(target_row(BENCH, f"{metric} @{n}", ratio(cas.get(key), restic.get(key)),
                                  "<=", bound, f"<= {bound}x"))
        else:
            status = restic.get("status") or "not run"
            why = f"restic {status.split(' ')[0].rstrip(':')}" if status != "ok" else \
                f"counts {cas.get('snapshots')} vs {restic.get('snapshots')}"
            out.append({"kind": "target", "benchmark": BENCH, "metric": metric, "measured": None,
                        "target": f"<= {bound}x (n/a: {why})", "met": None, "why_na": status})
    # The big history against restic's smaller one, per snapshot: informative, never a pass/fail.
    if big.get("status") == "ok" and restic.get("status") == "ok":
        for metric, key in (("gc ms/snap", "gc_ms_per_snapshot"),
                            ("deep ms/snap", "verify_deep_ms_per_snapshot")):
            r = ratio(big.get(key), restic.get(key))
            out.append({"kind": "target", "benchmark": BENCH,
                        "metric": f"{metric}: casstore@{big['snapshots']} / restic@{restic['snapshots']}",
                        "measured": r, "target": "info (counts differ)", "met": None})
    return out


def run(ctx: Context) -> list[dict[str, Any]]:
    sz = _sizes(ctx)
    rows = [_casstore_row(ctx, "casstore", sz["sessions"], sz["turns"])]
    restic = _restic_row(ctx, sz["small_sessions"], sz["small_turns"])
    if restic.get("status") == "ok" or restic.get("status", "").startswith("error"):
        rows.append(_casstore_row(ctx, "casstore@restic-count", sz["small_sessions"], sz["small_turns"]))
    rows.append(restic)
    ctx.log("\n== gc / verify after forgetting half of each lineage"
            " (times: wall s; peak: child max RSS; per-snapshot over snapshots before forget)\n"
            + format_table(rows, GC_COLUMNS))
    shutil.rmtree(ctx.scratch / BENCH, ignore_errors=True)
    return rows + _targets(rows)

