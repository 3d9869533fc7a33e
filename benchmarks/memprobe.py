"""Child process for peak-memory measurement: one snapshot or one restore, then exit.

    python -m benchmarks.memprobe snapshot TOOL DIR BYTES SEED
    python -m benchmarks.memprobe restore  TOOL DIR SNAP_ID

Prints one JSON line, including this process's own peak RSS (VmHWM).
The snapshot probe builds the state itself, then resets the peak mark, so its
peak is the state plus what snapshotting costs (as in an agent process); the
restore probe holds only the restored state.
"""

from __future__ import annotations

import gc
import json
import sys
import time

from .baselines import FullZstdBaseline
from .casstore_tool import CasstoreTool
from .harness import current_rss, peak_rss, reset_peak_rss
from .workloads import big_state, logical_size

TOOLS = {"casstore": CasstoreTool, "full-zstd": FullZstdBaseline}


def main(argv: list[str]) -> int:
    mode, tool_name, directory = argv[0], argv[1], argv[2]
    if mode == "snapshot":
        state = big_state(int(argv[3]), seed=int(argv[4]))
        gc.collect()
        out = {"peak_reset": reset_peak_rss(), "rss_before": current_rss()}
        tool = TOOLS[tool_name](directory)
        t0 = time.perf_counter()
        snap = tool.snapshot(state, 0)
        seconds = time.perf_counter() - t0
        tool.close()
        out.update(seconds=seconds, id=snap.id, state_bytes=logical_size(state))
    elif mode == "restore":
        rss_before = current_rss()
        tool = TOOLS[tool_name](directory)
        t0 = time.perf_counter()
        state = tool.restore(argv[3])
        seconds = time.perf_counter() - t0
        tool.close()
        out = {"seconds": seconds, "state_bytes": logical_size(state), "rss_before": rss_before}
    else:
        print(f"unknown mode {mode}", file=sys.stderr)
        return 2
    out["peak_rss"] = peak_rss()
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
