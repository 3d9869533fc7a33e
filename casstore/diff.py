"""What changed between two snapshots: chunks and bytes, then files or state paths."""

from __future__ import annotations

from typing import Any

from . import dirsnap
from .errors import CasstoreError
from .repository import Repository

MAX_STATE_PATHS = 200      # state paths listed before the diff stops looking
STATE_DIFF_DEPTH = 6       # how deep nested containers are compared


def diff(repo: Repository, a: bytes, b: bytes, restore: Any) -> dict:
    """A plain dict: chunk and byte counts, plus files (dir snapshots) or state paths (state snapshots).

    restore(id) gives a state snapshot's state; state paths come from comparing
    the two restored states, so they cost two restores.
    """
    fa, fb = repo.fields(a), repo.fields(b)
    result: dict[str, Any] = {"a": a.hex(), "b": b.hex(), "kind": fa["kind"] if fa["kind"] == fb["kind"] else "mixed"}
    ea, eb = dict(repo.entries(fa)), dict(repo.entries(fb))
    added, removed = eb.keys() - ea.keys(), ea.keys() - eb.keys()
    result.update(chunks_added=len(added), chunks_removed=len(removed), bytes_added=sum(eb[h] for h in added),
                  bytes_removed=sum(ea[h] for h in removed), size_a=fa["raw"], size_b=fb["raw"])
    if fa["kind"] == fb["kind"] == "dir":
        result["files"] = dirsnap.diff_dirs(repo, fa, fb).to_dict()
    elif fa["kind"] == fb["kind"] == "state":
        try:
            sa, sb = restore(a.hex()), restore(b.hex())
        except CasstoreError as e:
            result["paths_error"] = str(e)
        else:
            paths: list[dict] = []
            state_paths(sa, sb, "state", 0, paths)
            result["paths"] = sorted(paths, key=lambda p: p["path"])
            result["paths_truncated"] = len(paths) >= MAX_STATE_PATHS
    return result


def state_paths(a: Any, b: Any, path: str, depth: int, out: list[dict]) -> None:
    """Recursive compare of two states down to STATE_DIFF_DEPTH, collecting changed paths."""
    if len(out) >= MAX_STATE_PATHS or _same(a, b):
        return
    if isinstance(a, dict) and isinstance(b, dict) and depth < STATE_DIFF_DEPTH:
        for k in b.keys() - a.keys():
            out.append({"path": f"{path}[{k!r}]", "change": "added"})
        for k in a.keys() - b.keys():
            out.append({"path": f"{path}[{k!r}]", "change": "removed"})
        for k in a.keys() & b.keys():
            state_paths(a[k], b[k], f"{path}[{k!r}]", depth + 1, out)
        return
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and depth < STATE_DIFF_DEPTH:
        for i in range(min(len(a), len(b))):
            state_paths(a[i], b[i], f"{path}[{i}]", depth + 1, out)
        if len(a) != len(b):
            out.append({"path": path, "change": f"length {len(a)} -> {len(b)}"})
        return
    out.append({"path": path, "change": "modified"})


def _same(a: Any, b: Any) -> bool:
    if type(a) is not type(b):
        return False
    if type(a).__module__ == "numpy" and hasattr(a, "shape"):
        import numpy as np
        return a.shape == b.shape and a.dtype == b.dtype and bool(np.array_equal(a, b))
    try:
        return bool(a == b)
    except Exception:  # an exotic __eq__ that raises: treat as changed
        return False
