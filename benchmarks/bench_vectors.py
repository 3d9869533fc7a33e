"""Embedding store: float32 rows appended each step, a few rows overwritten."""

from __future__ import annotations

from typing import Any

from .harness import Context, target_row
from .runner import find, run_state_workload
from .tools import cli_wanted, state_tools
from .workloads import vector_states


def run(ctx: Context) -> list[dict[str, Any]]:
    size = (dict(rows=2000, dim=256, steps=6, grow=50, overwrite=5) if ctx.quick
            else dict(rows=20000, dim=768, steps=30, grow=200, overwrite=20))
    # vector_states yields fresh dicts and arrays, so states can be kept as they are.
    rows = run_state_workload(ctx, "vectors", vector_states(seed=0, **size), size["steps"],
                              state_tools(cli_wanted(ctx)), keep=lambda s: s, part=("ids",))
    cas = find(rows, "casstore")
    return rows + [
        target_row("vectors", "raw/stored", cas.get("raw_over_stored"), ">=", 25, ">= 25"),
        target_row("vectors", "snapshot median vs zstd", cas.get("snapshot_time_vs_zstd"), "<=", 0.3, "<= 0.3x"),
        target_row("vectors", "restore median vs zstd", cas.get("restore_time_vs_zstd"), "<=", 1.5, "<= 1.5x"),
    ]
