"""Child process of bench_gc: one gc or verify on an existing repository, printing one JSON line.

It imports nothing but casstore and the standard library, so its peak RSS
(VmHWM) is what a user's `casstore gc` / `casstore verify` process costs, not
the benchmark harness's own imports.

    python -m benchmarks.gc_child {gc|verify|verify-deep} REPO
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def _timed(fn: Any, *args: Any, **kwargs: Any) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def main(argv: list[str]) -> int:
    mode, path = argv[0], argv[1]
    import casstore
    out: dict[str, Any] = {"rss_before_open": _status("VmRSS")}
    store = casstore.open(path, create=False)
    out["rss_after_open"] = _status("VmRSS")
    try:
        if mode == "gc":
            passes = []
            for _ in range(2):  # gc_grace=0: pass 1 condemns (and repacks), pass 2 deletes
                report, seconds = _timed(store.gc)
                d = report.to_dict()
                d.pop("deleted", None)
                d["seconds"] = seconds
                passes.append(d)
            out.update(passes=passes, seconds=sum(p["seconds"] for p in passes))
        elif mode in ("verify", "verify-deep"):
            report, seconds = _timed(store.verify, deep=mode == "verify-deep")
            d = report.to_dict()
            d.pop("problems", None)
            out.update(seconds=seconds, ok=report.ok, report=d, errors=[str(p) for p in report.errors[:5]])
        else:
            print(f"unknown mode {mode}", file=sys.stderr)
            return 2
    finally:
        store.close()
    out["peak_rss"] = _status("VmHWM")
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
