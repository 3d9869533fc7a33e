"""Drive several tools in lockstep over one workload and turn timings into result rows.

Every tool snapshots the very same state at each step (the workload is
generated once), then restores a sample of its snapshots (first, middle, last),
each cold then warm (see _cold_then_warm), checked against copies kept at those steps. A tool that fails is
reported with its reason; the others carry on.
"""

from __future__ import annotations

import shutil
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from .baselines import ToolUnavailable
from .casstore_tool import MISSING, describe
from .harness import Context, dir_bytes, median, p95, ratio, states_equal, timed, trees_equal, value_at


@dataclass
class Lane:
    """One tool's progress through a workload."""

    name: str
    dir: Path
    tool: Any = None
    status: str = "ok"
    ids: list[str] = field(default_factory=list)
    raw: list[int] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    extras: list[dict[str, Any]] = field(default_factory=list)
    restore_times: list[float] = field(default_factory=list)
    warm_restore_times: list[float] = field(default_factory=list)
    part_restore_times: list[float] = field(default_factory=list)
    restore_ok: bool | None = None
    mismatch: str | None = None
    error_trace: str | None = None

    def record(self, snap: Any, seconds: float) -> None:
        self.ids.append(snap.id)
        self.raw.append(snap.raw_bytes)
        self.times.append(seconds)
        self.extras.append(snap.extra)

    def fail(self, exc: BaseException) -> None:
        if isinstance(exc, ToolUnavailable):
            self.status = str(exc) if str(exc) == "not installed" else f"unavailable: {exc}"
        elif isinstance(exc, MISSING):
            self.status = f"unavailable: {describe(exc)}"
        else:
            self.status = f"error: {describe(exc)}"
            self.error_trace = traceback.format_exc()[-3000:]
        _close(self)


def _close(lane: Lane) -> None:
    if lane.tool is not None:
        try:
            lane.tool.close()
        except Exception:
            pass
        lane.tool = None


def open_lanes(ctx: Context, bench: str, factories: dict[str, Callable[[Path], Any]]) -> list[Lane]:
    lanes = []
    for name, factory in factories.items():
        lane = Lane(name, ctx.tool_dir(bench, name))
        try:
            lane.tool = factory(lane.dir)
        except Exception as exc:
            lane.fail(exc)
        lanes.append(lane)
    return lanes


def run_state_workload(ctx: Context, bench: str, states: Iterable[Any], n_steps: int,
                       factories: dict[str, Callable[[Path], Any]],
                       keep: Callable[[Any], Any], part: tuple = ()) -> list[dict[str, Any]]:
    """Snapshot each state with every tool, then restore and check the sampled ones; with part
    (a path of keys), also time a cold restore of just that value, by tools that have restore_part."""
    lanes = open_lanes(ctx, bench, factories)
    samples = sorted({0, n_steps // 2, n_steps - 1})
    kept: dict[int, Any] = {}
    for step, state in enumerate(states):
        if step in samples:
            kept[step] = keep(state)
        _snapshot_step(lanes, "snapshot", state, step)
        _progress(ctx, bench, step, n_steps)
    for lane in lanes:
        if lane.tool is None:
            continue
        try:
            for step in samples:
                for restored in _cold_then_warm(lane, lane.tool.restore, lane.ids[step]):
                    bad = states_equal(kept[step], restored)
                    del restored
                    if bad:
                        lane.mismatch = lane.mismatch or f"step {step}: {bad}"
                if part and hasattr(lane.tool, "restore_part"):
                    bad = _time_part(lane, step, part, kept[step])
                    lane.mismatch = lane.mismatch or bad
            lane.restore_ok = lane.mismatch is None
        except Exception as exc:
            lane.fail(exc)
    return _rows(bench, lanes)


def run_dir_workload(ctx: Context, bench: str, root: Path, steps: Iterable[int], n_steps: int,
                     factories: dict[str, Callable[[Path], Any]]) -> list[dict[str, Any]]:
    """Same as run_state_workload, for tools that snapshot a directory tree."""
    lanes = open_lanes(ctx, bench, factories)
    samples = sorted({0, n_steps // 2, n_steps - 1})
    kept_root = ctx.scratch / bench / "_samples"
    for step in steps:
        if step in samples:
            shutil.copytree(root, kept_root / str(step))
        _snapshot_step(lanes, "snapshot_dir", root, step)
        _progress(ctx, bench, step, n_steps)
    out_root = ctx.scratch / bench / "_restored"
    for lane in lanes:
        if lane.tool is None:
            continue
        try:
            for step in samples:
                dests = iter([out_root / f"{lane.name}-{step}", out_root / f"{lane.name}-{step}-warm"])
                for got in _cold_then_warm(lane, lambda snap_id: lane.tool.restore_dir(snap_id, next(dests)),
                                           lane.ids[step]):
                    bad = trees_equal(kept_root / str(step), got)
                    if bad:
                        lane.mismatch = lane.mismatch or f"step {step}: {bad}"
                    shutil.rmtree(got, ignore_errors=True)
            lane.restore_ok = lane.mismatch is None
        except Exception as exc:
            lane.fail(exc)
    shutil.rmtree(kept_root, ignore_errors=True)
    return _rows(bench, lanes)


def _cold_then_warm(lane: Lane, restore: Callable[[str], Any], snap_id: str) -> Iterator[Any]:
    """Time a cold restore, then a warm one, yielding each result for checking.

    Cold is what a new process sees: the tool's in-process caches are dropped
    first (casstore's chunk cache; the baselines keep none), while the OS page
    cache stays warm for every tool alike. It is the figure compared with the
    baseline. Warm repeats the restore at once, as an agent that restores the
    checkpoint it just wrote or read does.
    """
    _drop_caches(lane)
    restored, seconds = timed(restore, snap_id)
    lane.restore_times.append(seconds)
    yield restored
    del restored
    restored, seconds = timed(restore, snap_id)
    lane.warm_restore_times.append(seconds)
    yield restored


def _time_part(lane: Lane, step: int, part: tuple, kept: Any) -> str | None:
    """Time a cold restore of the value at part (see _cold_then_warm); the first difference, if any."""
    _drop_caches(lane)
    got, seconds = timed(lane.tool.restore_part, lane.ids[step], part)
    lane.part_restore_times.append(seconds)
    bad = states_equal(value_at(kept, part), got, f"state{''.join(f'[{k!r}]' for k in part)}")
    return f"step {step}: {bad}" if bad else None


def _drop_caches(lane: Lane) -> None:
    """Empty the tool's in-process caches, for tools that keep any (casstore's chunk cache)."""
    drop = getattr(lane.tool, "drop_caches", None)
    if drop is not None:
        drop()


def _snapshot_step(lanes: list[Lane], method: str, what: Any, step: int) -> None:
    """Every live lane snapshots `what` (a state or a folder) once, timed; a failure retires the lane."""
    for lane in lanes:
        if lane.tool is None:
            continue
        try:
            snap, seconds = timed(getattr(lane.tool, method), what, step)
        except Exception as exc:
            lane.fail(exc)
            continue
        lane.record(snap, seconds)


def _progress(ctx: Context, bench: str, step: int, n_steps: int) -> None:
    if (step + 1) % max(1, n_steps // 5) == 0:
        ctx.log(f"  {bench} step {step + 1}/{n_steps}")


def _rows(bench: str, lanes: list[Lane]) -> list[dict[str, Any]]:
    rows = []
    for lane in lanes:
        stats = lane.tool.stats() if lane.tool is not None and hasattr(lane.tool, "stats") else None
        _close(lane)
        done = lane.status == "ok"
        raw = sum(lane.raw) if done else None
        stored = dir_bytes(lane.dir) if done else None
        row = {
            "kind": "result", "benchmark": bench, "tool": lane.name, "status": lane.status,
            "snapshots": len(lane.ids) if done else None,
            "raw_bytes": raw, "stored_bytes": stored, "raw_over_stored": ratio(raw, stored),
            "snapshot_median_s": median(lane.times) if done else None,
            "snapshot_p95_s": p95(lane.times) if done else None,
            "snapshot_total_s": sum(lane.times) if done else None,
            "restore_median_s": median(lane.restore_times) if done else None,
            "restore_times_s": lane.restore_times if done else None,
            "restore_warm_median_s": median(lane.warm_restore_times) if done else None,
            "restore_warm_times_s": lane.warm_restore_times if done else None,
            "restore_part_median_s": median(lane.part_restore_times) if done and lane.part_restore_times else None,
            "restore_ok": lane.restore_ok if done else None,
        }
        if lane.mismatch:
            row["restore_mismatch"] = lane.mismatch
        if lane.error_trace:
            row["traceback"] = lane.error_trace
        if stats is not None:
            row["store_stats"] = stats
        if done and lane.extras and any(lane.extras):
            row["new_bytes_reported"] = sum((e.get("stored_size") or 0) for e in lane.extras)
        rows.append(row)
    add_vs_baseline(rows)
    return rows


def add_vs_baseline(rows: list[dict[str, Any]]) -> None:
    """Add snapshot/restore time ratios against the zstd baseline (full-zstd or tar-zstd)."""
    base = next((r for r in rows if r["tool"] in ("full-zstd", "tar-zstd") and r["status"] == "ok"), None)
    for r in rows:
        r["snapshot_time_vs_zstd"] = ratio(r.get("snapshot_median_s"), base and base["snapshot_median_s"])
        r["restore_time_vs_zstd"] = ratio(r.get("restore_median_s"), base and base["restore_median_s"])


def find(rows: list[dict[str, Any]], tool: str) -> dict[str, Any]:
    return next((r for r in rows if r.get("tool") == tool), {})
