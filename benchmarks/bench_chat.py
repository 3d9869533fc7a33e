"""Chat agent: messages and tool results accumulate, memory is edited in place."""

from __future__ import annotations

import copy
from typing import Any

from .harness import Context, target_row
from .runner import find, run_state_workload
from .tools import cli_wanted, state_tools
from .workloads import chat_states


def run(ctx: Context) -> list[dict[str, Any]]:
    turns = 30 if ctx.quick else 300
    rows = run_state_workload(ctx, "chat", chat_states(turns=turns, seed=0), turns,
                              state_tools(cli_wanted(ctx)), keep=copy.deepcopy, part=("memory",))
    cas = find(rows, "casstore")
    return rows + [
        target_row("chat", "raw/stored", cas.get("raw_over_stored"), ">=", 100, ">= 100"),
        target_row("chat", "snapshot median vs zstd", cas.get("snapshot_time_vs_zstd"), "<=", 1.0, "<= 1.0x"),
        target_row("chat", "restore median vs zstd", cas.get("restore_time_vs_zstd"), "<=", 1.5, "<= 1.5x"),
    ]
