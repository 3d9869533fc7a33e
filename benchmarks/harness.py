"""Measuring and reporting: timers, percentiles, on-disk size, peak RSS, table, JSON."""

from __future__ import annotations

import json
import os
import platform
import stat
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

PACKAGE_ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Context:
    """What every benchmark gets: the size preset and a scratch directory."""

    quick: bool
    scratch: Path
    log: Callable[[str], None] = print
    extra: dict[str, Any] = field(default_factory=dict)

    def tool_dir(self, bench: str, tool: str) -> Path:
        """A fresh, empty directory that holds one tool's repository (and nothing else)."""
        path = self.scratch / bench / tool
        if path.exists():
            import shutil
            shutil.rmtree(path)
        path.mkdir(parents=True)
        return path


# ------------------------------------------------------------------ timing

def timed(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, float]:
    """Call fn and return (result, seconds) measured with perf_counter."""
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def median(values: Iterable[float]) -> float | None:
    values = list(values)
    return statistics.median(values) if values else None


def p95(values: Iterable[float]) -> float | None:
    values = list(values)
    return float(np.percentile(values, 95)) if values else None


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


# ------------------------------------------------------------------ disk

def dir_bytes(path: str | os.PathLike) -> int:
    """Bytes a directory tree takes, measured identically for every tool.

    Apparent file size, except a sparse file (e.g. an LMDB map) counts only the
    blocks it has allocated: min(st_size, st_blocks * 512) per regular file.
    """
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except FileNotFoundError:
                continue
            if not stat.S_ISREG(st.st_mode):
                continue
            allocated = st.st_blocks * 512
            total += min(st.st_size, allocated) if allocated else st.st_size
    return total


def fsync_dir(path: str | os.PathLike) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ------------------------------------------------------------------ equality

def value_at(state: Any, path: tuple) -> Any:
    """The value at path (a tuple of keys and indexes) inside state."""
    for key in path:
        state = state[key]
    return state


def states_equal(a: Any, b: Any, path: str = "state") -> str | None:
    """None when equal; otherwise the first differing path. Tuples equal lists."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        if not (isinstance(a, np.ndarray) and isinstance(b, np.ndarray)):
            return f"{path}: array vs {type(b).__name__ if isinstance(a, np.ndarray) else type(a).__name__}"
        if a.dtype != b.dtype or a.shape != b.shape:
            return f"{path}: dtype/shape {a.dtype}{a.shape} vs {b.dtype}{b.shape}"
        return None if np.array_equal(a, b) else f"{path}: array values differ"
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return f"{path}: keys differ"
        for k in a:
            bad = states_equal(a[k], b[k], f"{path}[{k!r}]")
            if bad:
                return bad
        return None
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return f"{path}: length {len(a)} vs {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            bad = states_equal(x, y, f"{path}[{i}]")
            if bad:
                return bad
        return None
    if type(a) is not type(b) and not (isinstance(a, (int, float)) and isinstance(b, (int, float))):
        return f"{path}: type {type(a).__name__} vs {type(b).__name__}"
    return None if a == b else f"{path}: values differ"


def trees_equal(a: str | os.PathLike, b: str | os.PathLike) -> str | None:
    """None when two directory trees hold the same files with the same bytes."""
    def listing(root: Path) -> dict[str, Path]:
        return {str(p.relative_to(root)): p for p in root.rglob("*") if p.is_file()}
    la, lb = listing(Path(a)), listing(Path(b))
    if la.keys() != lb.keys():
        return f"file lists differ: {sorted(set(la) ^ set(lb))[:5]}"
    for rel, p in la.items():
        if p.read_bytes() != lb[rel].read_bytes():
            return f"{rel}: content differs"
    return None


# ------------------------------------------------------------------ peak memory

def run_child(args: list[str], timeout: float = 3600) -> tuple[dict[str, Any], int]:
    """Run `python -m benchmarks.memprobe ARGS`; return (its JSON result, its peak RSS in bytes).

    The peak is the child's own VmHWM, read by the child just before it exits.
    Not ru_maxrss: on Linux a child started by (v)fork+exec inherits the
    parent's RSS high-water mark into ru_maxrss, so a big parent would inflate it.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = str(PACKAGE_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    res = subprocess.run([sys.executable, "-m", "benchmarks.memprobe", *args], cwd=PACKAGE_ROOT, env=env,
                         capture_output=True, text=True, timeout=timeout)
    if res.returncode != 0:
        raise RuntimeError(f"memprobe {' '.join(args)} failed ({res.returncode}): {res.stderr[-2000:]}")
    out = json.loads([ln for ln in res.stdout.splitlines() if ln.startswith("{")][-1])
    return out, out["peak_rss"]


def _proc_status(field_name: str) -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def current_rss() -> int:
    """Resident set size of this process now (0 where /proc is unavailable)."""
    return _proc_status("VmRSS")


def reset_peak_rss() -> bool:
    """Reset this process's VmHWM to its current RSS (Linux >= 4.0), so a peak excludes setup."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss() -> int:
    """Peak resident set size of this process since its exec (VmHWM; ru_maxrss as a fallback)."""
    import resource
    return _proc_status("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# ------------------------------------------------------------------ reporting

def _fmt(v: Any, unit: str = "") -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "NO"
    if isinstance(v, float):
        if unit == "ms":
            return f"{v * 1000:.2f}"
        if abs(v) >= 100:
            return f"{v:.0f}"
        return f"{v:.2f}" if abs(v) >= 1 else f"{v:.3f}"
    if isinstance(v, int) and unit == "MB":
        return f"{v / 1e6:.2f}"
    return str(v)


RESULT_COLUMNS = [
    ("benchmark", "bench", ""), ("tool", "tool", ""), ("status", "status", ""),
    ("snapshots", "snaps", ""), ("raw_bytes", "raw MB", "MB"), ("stored_bytes", "stored MB", "MB"),
    ("raw_over_stored", "raw/stored", ""), ("snapshot_median_s", "snap med ms", "ms"),
    ("snapshot_p95_s", "snap p95 ms", "ms"), ("restore_median_s", "restore med ms", "ms"),
    ("restore_warm_median_s", "warm restore ms", "ms"), ("restore_part_median_s", "part restore ms", "ms"),
    ("snapshot_time_vs_zstd", "snap/zstd", ""), ("restore_time_vs_zstd", "restore/zstd", ""),
    ("restore_ok", "equal", ""),
]

BIG_COLUMNS = [
    ("tool", "tool", ""), ("status", "status", ""), ("state_bytes", "state MB", "MB"),
    ("snapshot_MBps", "snap MB/s", ""), ("restore_MBps", "restore MB/s", ""),
    ("resnapshot_MBps", "re-snap MB/s", ""), ("stored_bytes", "stored MB", "MB"),
    ("peak_snapshot_bytes", "peak snap MB", "MB"), ("peak_restore_bytes", "peak restore MB", "MB"),
    ("restore_ok", "equal", ""),
]

TARGET_COLUMNS = [
    ("benchmark", "bench", ""), ("metric", "metric", ""), ("measured", "measured", ""),
    ("target", "target", ""), ("met", "met", ""),
]


def format_table(rows: list[dict[str, Any]], columns: list[tuple[str, str, str]]) -> str:
    cells = [[title for _k, title, _u in columns]]
    for row in rows:
        cells.append([_fmt(row.get(k), unit)[:44] for k, _t, unit in columns])
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def print_report(rows: list[dict[str, Any]]) -> None:
    results = [r for r in rows if r.get("kind") == "result" and r.get("benchmark") != "big"]
    big = [r for r in rows if r.get("kind") == "result" and r.get("benchmark") == "big"]
    targets = [r for r in rows if r.get("kind") == "target"]
    if results:
        print("\n== Workloads (stored = bytes on disk under the tool's repository dir)")
        print(format_table(results, RESULT_COLUMNS))
    if big:
        print("\n== Big state (MB/s over the state's payload bytes; peak = child process max RSS)")
        print(format_table(big, BIG_COLUMNS))
    if targets:
        print("\n== Targets (casstore)")
        print(format_table(targets, TARGET_COLUMNS))


def write_json(path: str | os.PathLike, rows: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    doc = {"meta": meta, "results": [r for r in rows if r.get("kind") == "result"],
           "targets": [r for r in rows if r.get("kind") == "target"]}
    with open(path, "w") as f:
        json.dump(doc, f, indent=2, default=str)
        f.write("\n")


def machine_meta() -> dict[str, Any]:
    git = None
    try:
        git = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PACKAGE_ROOT, capture_output=True,
                             text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        pass
    return {"python": sys.version.split()[0], "platform": platform.platform(),
            "cpus": os.cpu_count(), "git_commit": git,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def target_row(bench: str, metric: str, measured: float | None, op: str, bound: float,
               display: str) -> dict[str, Any]:
    """A target line: `measured op bound` (op '>=' or '<='); met is None when not measured."""
    met = None
    if measured is not None:
        met = measured >= bound if op == ">=" else measured <= bound
    return {"kind": "target", "benchmark": bench, "metric": metric, "measured": measured,
            "target": display, "met": met}
