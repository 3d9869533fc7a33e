"""One big state (default 1 GiB, half text, half float32): throughput and peak memory.

Throughput is the state's payload bytes over wall time for a fresh snapshot, a
restore, and a re-snapshot of the unchanged state. Peak memory is the max RSS of
a child process doing one snapshot (state built in the child) or one restore.
"""

from __future__ import annotations

import gc
import traceback
from typing import Any

from .baselines import FullZstdBaseline, ToolUnavailable
from .casstore_tool import MISSING, CasstoreTool, describe
from .harness import Context, dir_bytes, ratio, run_child, states_equal, target_row, timed
from .workloads import big_state, logical_size

MB = 1e6


def run(ctx: Context) -> list[dict[str, Any]]:
    total = ctx.extra.get("big_bytes") or ((64 << 20) if ctx.quick else (1 << 30))
    seed = 0
    state, gen_s = timed(big_state, total, seed)
    size = logical_size(state)
    ctx.log(f"  big: state of {size / MB:.0f} MB built in {gen_s:.1f}s")
    rows = []
    for name, factory in (("full-zstd", FullZstdBaseline), ("casstore", CasstoreTool)):
        row: dict[str, Any] = {"kind": "result", "benchmark": "big", "tool": name, "status": "ok",
                               "state_bytes": size}
        try:
            _measure(ctx, name, factory, state, size, total, seed, row)
        except ToolUnavailable as exc:
            row["status"] = f"unavailable: {exc}"
        except MISSING as exc:
            row["status"] = f"unavailable: {describe(exc)}"
        except Exception as exc:
            row["status"] = f"error: {describe(exc)}"
            row["traceback"] = traceback.format_exc()[-3000:]
        rows.append(row)
        gc.collect()
    cas = next(r for r in rows if r["tool"] == "casstore")
    limit = 2 * size + 100 * MB
    return rows + [
        target_row("big", "snapshot MB/s", cas.get("snapshot_MBps"), ">=", 300, ">= 300"),
        target_row("big", "restore MB/s", cas.get("restore_MBps"), ">=", 600, ">= 600"),
        target_row("big", "re-snapshot MB/s", cas.get("resnapshot_MBps"), ">=", 1000, ">= 1000"),
        target_row("big", "peak RSS snapshot / (2S+100MB)", ratio(cas.get("peak_snapshot_bytes"), limit),
                   "<=", 1.0, "<= 1.0"),
        target_row("big", "peak RSS restore / (2S+100MB)", ratio(cas.get("peak_restore_bytes"), limit),
                   "<=", 1.0, "<= 1.0"),
    ]


def _measure(ctx: Context, name: str, factory: Any, state: Any, size: int, total: int, seed: int,
             row: dict[str, Any]) -> None:
    repo = ctx.tool_dir("big", name)
    tool = factory(repo)
    try:
        snap, t_snap = timed(tool.snapshot, state, 0)
        row["stored_bytes"] = dir_bytes(repo)
        _snap2, t_resnap = timed(tool.snapshot, state, 1)
        row["stored_after_resnapshot_bytes"] = dir_bytes(repo)
        drop = getattr(tool, "drop_caches", None)
        if drop is not None:
            drop()   # a cold restore, as a new process would do it (see runner._cold_then_warm)
        restored, t_restore = timed(tool.restore, snap.id)
        bad = states_equal(state, restored)
        del restored
    finally:
        tool.close()
    row.update(snapshot_s=t_snap, resnapshot_s=t_resnap, restore_s=t_restore,
               snapshot_MBps=size / MB / t_snap, resnapshot_MBps=size / MB / t_resnap,
               restore_MBps=size / MB / t_restore, restore_ok=bad is None, raw_bytes=snap.raw_bytes)
    if bad:
        row["restore_mismatch"] = bad
    ctx.log(f"  big/{name}: snapshot {t_snap:.2f}s, re-snapshot {t_resnap:.2f}s, restore {t_restore:.2f}s")
    gc.collect()
    probe_dir = ctx.tool_dir("big", name + "-probe")
    out, peak = run_child(["snapshot", name, str(probe_dir), str(total), str(seed)])
    row.update(peak_snapshot_bytes=peak, child_snapshot_s=out["seconds"], child_rss_before_snapshot=out["rss_before"],
               child_peak_reset=out.get("peak_reset"))
    out, peak = run_child(["restore", name, str(repo), snap.id])
    row.update(peak_restore_bytes=peak, child_restore_s=out["seconds"], child_rss_before_restore=out["rss_before"])
    row["peak_vs_2S_plus_100MB"] = max(row["peak_snapshot_bytes"], peak) / (2 * size + 100 * MB)
