"""What users do today, behind the interface every benchmarked tool shares.

A tool is built on an empty directory that it owns (everything under it is
counted as stored bytes) and offers some of:

    snapshot(state, step) -> Snap        restore(snap_id) -> state
    snapshot_dir(path, step) -> Snap     restore_dir(snap_id, dest) -> restored root
    close()

`Snap.raw_bytes` is the logical size of what was saved (the msgpack size for the
state baselines, the tree's file bytes for directory baselines).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import zstandard

from .harness import value_at


class ToolUnavailable(Exception):
    """The tool cannot run here (not installed, API missing); reported, never faked."""


@dataclass
class Snap:
    id: str
    raw_bytes: int
    extra: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------ msgpack with numpy

_ND = "__ndarray__"


def _encode(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        arr = np.ascontiguousarray(obj)
        return {_ND: True, "dtype": arr.dtype.str, "shape": list(arr.shape), "data": arr.data}
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot serialise {type(obj).__name__}")


def _decode(obj: dict[Any, Any]) -> Any:
    if obj.get(_ND) is True:
        return np.frombuffer(obj["data"], dtype=np.dtype(obj["dtype"])).reshape(obj["shape"])
    return obj


def pack_state(state: Any) -> bytes:
    """msgpack with numpy arrays as {dtype, shape, raw bytes}."""
    return msgpack.packb(state, default=_encode, use_bin_type=True)


def unpack_state(data: bytes) -> Any:
    return msgpack.unpackb(data, object_hook=_decode, raw=False, strict_map_key=False)


def _write_durably(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


# ------------------------------------------------------------ full zstd per snapshot

class FullZstdBaseline:
    """Each snapshot: msgpack the whole state, zstd-3, one fsynced file."""

    name = "full-zstd"

    def __init__(self, directory: str | os.PathLike, level: int = 3) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.cctx = zstandard.ZstdCompressor(level=level)
        self.dctx = zstandard.ZstdDecompressor()
        self.count = 0

    def snapshot(self, state: Any, step: int) -> Snap:
        packed = pack_state(state)
        path = self.dir / f"{self.count:06d}.msgpack.zst"
        self.count += 1
        _write_durably(path, self.cctx.compress(packed))
        return Snap(path.name, len(packed))

    def restore(self, snap_id: str) -> Any:
        return unpack_state(self.dctx.decompress((self.dir / snap_id).read_bytes()))

    def restore_part(self, snap_id: str, path: tuple) -> Any:
        """One value of a snapshot: a whole file must be read and unpacked to get at it."""
        return value_at(self.restore(snap_id), path)

    def close(self) -> None:
        pass


# ------------------------------------------------------------ tar | zstd for trees

def tree_bytes(root: str | os.PathLike) -> int:
    """Sum of the sizes of the regular files in a tree (a directory's logical size)."""
    return sum(p.stat().st_size for p in Path(root).rglob("*") if p.is_file() and not p.is_symlink())


class TarZstdBaseline:
    """Each directory snapshot: tar of the tree streamed through zstd-3 into one fsynced file."""

    name = "tar-zstd"

    def __init__(self, directory: str | os.PathLike, level: int = 3) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.level = level
        self.count = 0

    def snapshot_dir(self, path: str | os.PathLike, step: int) -> Snap:
        out = self.dir / f"{self.count:06d}.tar.zst"
        self.count += 1
        with open(out, "wb") as f:
            with zstandard.ZstdCompressor(level=self.level).stream_writer(f, closefd=False) as zw:
                with tarfile.open(fileobj=zw, mode="w|") as tar:
                    tar.add(str(path), arcname=".")
            f.flush()
            os.fsync(f.fileno())
        return Snap(out.name, tree_bytes(path))

    def restore_dir(self, snap_id: str, dest: str | os.PathLike) -> Path:
        Path(dest).mkdir(parents=True, exist_ok=True)
        with open(self.dir / snap_id, "rb") as f:
            with zstandard.ZstdDecompressor().stream_reader(f) as zr:
                with tarfile.open(fileobj=zr, mode="r|") as tar:
                    tar.extractall(dest, filter="data")
        return Path(dest)

    def close(self) -> None:
        pass


# ------------------------------------------------------------ state <-> staged files

def stage_state(state: Any, stage: Path) -> int:
    """Write a state as files (state.msgpack + one .npy per array) for file-based tools.

    Returns the staged bytes. The same names are reused every step, as a user
    script dumping its agent's state before `restic backup` would.
    """
    if stage.exists():
        shutil.rmtree(stage)
    stage.mkdir(parents=True)
    arrays: list[np.ndarray] = []

    def lift(obj: Any) -> Any:
        if isinstance(obj, np.ndarray):
            arrays.append(obj)
            return {"__npy__": f"array{len(arrays) - 1}.npy"}
        if isinstance(obj, dict):
            return {k: lift(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return [lift(v) for v in obj]
        return obj

    (stage / "state.msgpack").write_bytes(msgpack.packb(lift(state), use_bin_type=True))
    for i, arr in enumerate(arrays):
        np.save(stage / f"array{i}.npy", arr, allow_pickle=False)
    return tree_bytes(stage)


def load_staged(root: Path) -> Any:
    """Inverse of stage_state, from a directory that contains state.msgpack somewhere below."""
    found = next(root.rglob("state.msgpack"))
    base = found.parent

    def hook(obj: dict[Any, Any]) -> Any:
        if len(obj) == 1 and "__npy__" in obj:
            return np.load(base / obj["__npy__"], allow_pickle=False)
        return obj

    return msgpack.unpackb(found.read_bytes(), object_hook=hook, raw=False, strict_map_key=False)


# ------------------------------------------------------------ restic / borg CLIs

def _run(cmd: list[str], env: dict[str, str], cwd: Path | None = None) -> str:
    res = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({res.returncode}): {res.stderr[-1500:]}")
    return res.stdout


class _CliBaseline:
    """Shared layout: the repository in the owned dir; staging and caches in a sibling dir."""

    name = "cli"
    binary = ""

    def __init__(self, directory: str | os.PathLike) -> None:
        if not shutil.which(self.binary):
            raise ToolUnavailable("not installed")
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.repo = self.dir / "repo"
        self.work = self.dir.with_name(self.dir.name + ".work")
        if self.work.exists():
            shutil.rmtree(self.work)
        self.work.mkdir(parents=True)
        self.stage = self.work / "stage"
        self.env = dict(os.environ)
        self.count = 0

    def snapshot(self, state: Any, step: int) -> Snap:
        staged = stage_state(state, self.stage)
        snap = self.snapshot_dir(self.stage, step)
        return Snap(snap.id, staged, snap.extra)

    def restore(self, snap_id: str) -> Any:
        out = self.work / "restore-state"
        if out.exists():
            shutil.rmtree(out)
        return load_staged(self.restore_dir(snap_id, out))

    def close(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)

    def snapshot_dir(self, path: str | os.PathLike, step: int) -> Snap:
        raise NotImplementedError

    def restore_dir(self, snap_id: str, dest: str | os.PathLike) -> Path:
        raise NotImplementedError


class ResticBaseline(_CliBaseline):
    """`restic backup` of the state written as files (default repo settings: v2, auto compression)."""

    name = "restic"
    binary = "restic"

    def __init__(self, directory: str | os.PathLike) -> None:
        super().__init__(directory)
        self.env.update(RESTIC_PASSWORD="benchmark", RESTIC_REPOSITORY=str(self.repo),
                        RESTIC_CACHE_DIR=str(self.work / "cache"))
        _run(["restic", "init"], self.env)

    def snapshot_dir(self, path: str | os.PathLike, step: int) -> Snap:
        out = _run(["restic", "backup", "--json", "--host", "bench", "--tag", f"step{step}", "."],
                   self.env, cwd=Path(path))
        summary = [json.loads(ln) for ln in out.splitlines() if '"summary"' in ln][-1]
        return Snap(summary["snapshot_id"], tree_bytes(path),
                    {"data_added": summary.get("data_added")})

    def restore_dir(self, snap_id: str, dest: str | os.PathLike) -> Path:
        """Backups are taken of "." inside the tree, so restic restores the tree's content at --target."""
        shutil.rmtree(dest, ignore_errors=True)
        _run(["restic", "restore", snap_id, "--target", str(dest)], self.env)
        return Path(dest)


class BorgBaseline(_CliBaseline):
    """`borg create` (repokey-blake2 encryption, zstd-3 compression) of the state written as files."""

    name = "borg"
    binary = "borg"

    def __init__(self, directory: str | os.PathLike) -> None:
        super().__init__(directory)
        self.env.update(BORG_PASSPHRASE="benchmark", BORG_REPO=str(self.repo),
                        BORG_BASE_DIR=str(self.work / "base"),
                        BORG_RELOCATED_REPO_ACCESS_IS_OK="yes")
        _run(["borg", "init", "--encryption=repokey-blake2"], self.env)

    def snapshot_dir(self, path: str | os.PathLike, step: int) -> Snap:
        name = f"s{self.count:06d}"
        self.count += 1
        _run(["borg", "create", "--compression", "zstd,3", f"::{name}", "."], self.env, cwd=Path(path))
        return Snap(name, tree_bytes(path))

    def restore_dir(self, snap_id: str, dest: str | os.PathLike) -> Path:
        shutil.rmtree(dest, ignore_errors=True)
        Path(dest).mkdir(parents=True)
        _run(["borg", "extract", f"::{snap_id}"], self.env, cwd=Path(dest))
        return Path(dest)
