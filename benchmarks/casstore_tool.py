"""casstore behind the benchmark tool interface, using only its public API.

While the library is incomplete, a missing or unimplemented piece raises
ToolUnavailable so the benchmark reports "unavailable: <reason>" and moves on.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .baselines import Snap, ToolUnavailable

# Exceptions that mean "this part of casstore is not there yet", not "casstore is wrong".
MISSING = (ImportError, AttributeError, NotImplementedError)


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:200]


class CasstoreTool:
    """A local-folder casstore repository in the owned dir (its index lands beside it, also counted)."""

    name = "casstore"

    def __init__(self, directory: str | os.PathLike, agent_id: str = "bench",
                 session_id: str = "s0") -> None:
        try:
            import casstore
            self.store = casstore.open(str(Path(directory) / "repo"))
        except MISSING as exc:
            raise ToolUnavailable(describe(exc)) from exc
        self.agent_id, self.session_id = agent_id, session_id

    def snapshot(self, state: Any, step: int) -> Snap:
        info = self.store.snapshot(state, agent_id=self.agent_id, session_id=self.session_id,
                                   description=f"step {step}")
        return _snap(info)

    def restore(self, snap_id: str) -> Any:
        return self.store.restore(snap_id)

    def restore_part(self, snap_id: str, path: tuple) -> Any:
        return self.store.restore(snap_id, path=path)

    def drop_caches(self) -> None:
        """Empty casstore's in-process chunk cache, so the next restore reads storage like a new process."""
        self.store.drop_caches()

    def snapshot_dir(self, path: str | os.PathLike, step: int) -> Snap:
        info = self.store.snapshot_dir(str(path), agent_id=self.agent_id, session_id=self.session_id)
        return _snap(info)

    def restore_dir(self, snap_id: str, dest: str | os.PathLike) -> Path:
        self.store.restore_dir(snap_id, str(dest))
        return Path(dest)

    def stats(self) -> dict[str, Any]:
        """store.stats() as a plain dict (it may be a mapping or an object)."""
        try:
            st = self.store.stats()
        except Exception as exc:  # stats are informative only
            return {"error": describe(exc)}
        if isinstance(st, dict):
            return dict(st)
        keys = ("logical_bytes", "stored_bytes", "dedup_ratio")
        out = {k: getattr(st, k) for k in keys if hasattr(st, k)}
        return out or {"repr": repr(st)[:300]}

    def close(self) -> None:
        close = getattr(self.store, "close", None)
        if close:
            close()


def _snap(info: Any) -> Snap:
    extra = {k: getattr(info, k, None) for k in ("stored_size", "chunk_count", "new_chunk_count")}
    return Snap(str(info.id), int(info.raw_size), extra)
