"""Agent workspace directory: source/docs/JSON files, binary blobs and a SQLite database."""

from __future__ import annotations

import shutil
from typing import Any

from .harness import Context, ratio, target_row
from .runner import find, run_dir_workload
from .tools import cli_wanted, dir_tools
from .workloads import workspace_steps


def run(ctx: Context) -> list[dict[str, Any]]:
    files, steps = (40, 4) if ctx.quick else (300, 20)
    root = ctx.scratch / "workspace" / "_tree"
    shutil.rmtree(root, ignore_errors=True)
    rows = run_dir_workload(ctx, "workspace", root, workspace_steps(root, files=files, steps=steps, seed=0),
                            steps, dir_tools(cli_wanted(ctx)))
    shutil.rmtree(root, ignore_errors=True)
    cas, restic = find(rows, "casstore"), find(rows, "restic")
    for r in rows:
        r["snapshot_time_vs_restic"] = ratio(r.get("snapshot_median_s"), restic.get("snapshot_median_s"))
    return rows + [
        target_row("workspace", "raw/stored", cas.get("raw_over_stored"), ">=", 20, ">= 20"),
        target_row("workspace", "snapshot median vs restic", cas.get("snapshot_time_vs_restic"), "<=", 0.5,
                   "<= 0.5x"),
        target_row("workspace", "restore median vs tar-zstd", cas.get("restore_time_vs_zstd"), "<=", 1.5,
                   "<= 1.5x"),
    ]
