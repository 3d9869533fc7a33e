"""The tools each workload compares, in table order: baseline first, then casstore, then CLIs."""

from __future__ import annotations

from typing import Any, Callable

from .baselines import BorgBaseline, FullZstdBaseline, ResticBaseline, TarZstdBaseline
from .casstore_tool import CasstoreTool
from .harness import Context


def cli_wanted(ctx: Context) -> bool:
    """restic/borg cost ~0.3-0.9 s per call (key derivation included), so --quick skips them unless --cli on."""
    mode = ctx.extra.get("cli", "auto")
    return mode == "on" or (mode == "auto" and not ctx.quick)


def state_tools(with_cli: bool = True) -> dict[str, Callable[..., Any]]:
    tools: dict[str, Callable[..., Any]] = {"full-zstd": FullZstdBaseline, "casstore": CasstoreTool}
    if with_cli:
        tools.update({"restic": ResticBaseline, "borg": BorgBaseline})
    return tools


def dir_tools(with_cli: bool = True) -> dict[str, Callable[..., Any]]:
    tools: dict[str, Callable[..., Any]] = {"tar-zstd": TarZstdBaseline, "casstore": CasstoreTool}
    if with_cli:
        tools.update({"restic": ResticBaseline, "borg": BorgBaseline})
    return tools
