"""Commands that make and read snapshots: init, snapshot, restore, ls, show, diff."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import decimal
import json
import os
import sys
import uuid
from collections import Counter
from typing import Any

import click
import msgpack

import casstore
from casstore import dirsnap
from casstore.backend import Backend
from casstore.repository import CONFIG_KEY

from casstore_cli.app import App, fail, with_repo_option
from casstore_cli.output import echo_json, human_bytes, key_values, local_time, plain, table

pass_app = click.make_pass_decorator(App)
json_option = click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")


def register(cli: click.Group) -> None:
    for cmd in (init, snapshot, restore, cat, ls, show, diff):
        cli.add_command(cmd)
        for leaf in (cmd.commands.values() if isinstance(cmd, click.Group) else [cmd]):
            if leaf.name != "copy":
                with_repo_option(leaf)


# init ------------------------------------------------------------------------

@click.command()
@click.argument("url", required=False)
@click.option("--encrypt", is_flag=True,
              help="Encrypt everything stored (password from --password-file, $CASSTORE_PASSWORD or a prompt).")
@json_option
@pass_app
def init(app: App, url: str | None, encrypt: bool, as_json: bool) -> None:
    """Create a repository at URL (default: --repo, $CASSTORE_REPO, else ./.casstore)."""
    if url:
        app.repo_flag = url
    target, source = app.repo_url()
    probe = Backend(target)
    try:
        if probe.exists(CONFIG_KEY):
            raise fail(f"{probe.url} is already a casstore repository")
    finally:
        probe.close()
    store = app.open(create=True, encrypt=encrypt)
    repo_id = store._repo.config.repo_id
    if as_json or app.json:
        echo_json({"url": store.url, "id": repo_id, "source": source, "encrypted": store.encrypted})
    else:
        app.info(f"created {'encrypted ' if store.encrypted else ''}casstore repository {repo_id[:12]} at {store.url}")


# snapshot ----------------------------------------------------------------------

def _parse_meta(items: tuple[str, ...]) -> dict:
    meta = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not key=value", param_hint="--meta")
        meta[key] = value
    return meta


def _read_state(data: bytes, fmt: str) -> Any:
    """The state piped on stdin, as JSON or msgpack (auto: JSON if it parses, else msgpack)."""
    if fmt in ("json", "auto"):
        try:
            return json.loads(data)
        except (UnicodeDecodeError, ValueError) as e:
            if fmt == "json":
                raise fail(f"stdin is not valid JSON: {e}") from None
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False)
    except Exception as e:  # noqa: BLE001 - msgpack raises several unrelated types
        raise fail(f"stdin is neither JSON nor msgpack ({type(e).__name__}: {e})") from None


@click.command()
@click.argument("path")
@click.option("--agent", "agent_id", default="default", show_default=True, help="Agent the snapshot belongs to.")
@click.option("--session", "session_id", default="default", show_default=True, help="Session (lineage) of the agent.")
@click.option("-m", "--description", help="A note stored with the snapshot.")
@click.option("--meta", multiple=True, metavar="KEY=VALUE", help="Metadata to attach (repeatable).")
@click.option("--label", "labels", multiple=True, metavar="LABEL",
              help="A label to find the snapshot by later (`ls --agent A --label LABEL`; repeatable).")
@click.option("--exclude", multiple=True, metavar="GLOB", help="Skip paths (relative path or name) matching GLOB.")
@click.option("--format", "fmt", type=click.Choice(["auto", "json", "msgpack"]), default="auto",
              show_default=True, help="Format of a state read from stdin (PATH '-').")
@json_option
@pass_app
def snapshot(app: App, path: str, agent_id: str, session_id: str, description: str | None, meta: tuple[str, ...],
             labels: tuple[str, ...], exclude: tuple[str, ...], fmt: str, as_json: bool) -> None:
    """Snapshot a directory or file at PATH, or a JSON/msgpack state from stdin with PATH '-'.

    A single file is stored as a one-file tree: `restore` recreates it inside a DEST folder.
    Unchanged files (same size, mtime and inode as the lineage's last snapshot) are not re-read.
    """
    metadata = _parse_meta(meta)
    store = app.store()
    if path == "-":
        state = _read_state(sys.stdin.buffer.read(), fmt)
        info = store.snapshot(state, agent_id, session_id, description=description, metadata=metadata,
                              labels=labels)
    else:
        if not os.path.lexists(path):
            raise fail(f"{path}: no such file or directory")
        info = store.snapshot_dir(path, agent_id, session_id, description=description, metadata=metadata,
                                  labels=labels, exclude=list(exclude), progress=app.progress("snapshot"))
    if as_json or app.json:
        echo_json(info)
    elif app.quiet:
        click.echo(info.id)
    else:
        click.echo(f"snapshot {info.id} saved ({info.kind}, {info.agent_id}/{info.session_id} #{info.index})")
        click.echo(f"  {human_bytes(info.raw_size)} in {info.chunk_count} chunks; new: "
                   f"{info.new_chunk_count} chunks, {human_bytes(info.stored_size)} stored")


# restore -----------------------------------------------------------------------

def _json_default(obj: Any) -> Any:
    """JSON for values msgpack/JSON lack: arrays as lists, times as ISO strings, sets as lists."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, (_dt.datetime, _dt.date, _dt.time)):
        return obj.isoformat()
    if isinstance(obj, (uuid.UUID, decimal.Decimal, _dt.timedelta)):
        return str(obj)
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if hasattr(obj, "model_dump"):
        return obj.model_dump()
    raise TypeError(f"a {type(obj).__name__} cannot be written as JSON; restore to a .msgpack file instead")


def _msgpack_default(obj: Any) -> Any:
    if isinstance(obj, (bytearray, memoryview)):
        return bytes(obj)
    return _json_default(obj)


def _write_state(state: Any, dest: str, overwrite: bool) -> int:
    if dest == "-":
        data = json.dumps(state, default=_json_default, indent=2).encode() + b"\n"
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return len(data)
    if os.path.lexists(dest) and not overwrite:
        raise fail(f"restore destination {dest} exists (pass --overwrite)")
    if dest.endswith(".json"):
        data = json.dumps(state, default=_json_default, indent=2).encode() + b"\n"
    else:
        data = msgpack.packb(state, default=_msgpack_default, use_bin_type=True)
    tmp = f"{dest}.casstore-tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, dest)
    return len(data)


@click.command()
@click.argument("snapshot_id", metavar="ID")
@click.argument("dest")
@click.option("--overwrite", is_flag=True, help="Restore into a non-empty folder / over an existing file.")
@click.option("--path", "steps", multiple=True, metavar="KEY",
              help="Restore only the value at this key of the state (repeat to go deeper: a dict key, a list "
                   "index, a field name); only what that value needs is read.")
@pass_app
def restore(app: App, snapshot_id: str, dest: str, overwrite: bool, steps: tuple[str, ...]) -> None:
    """Restore snapshot ID: a directory snapshot into folder DEST, a state into file DEST.

    A state (or the part of it --path names) is written as JSON when DEST ends in .json (or is
    '-', stdout), as msgpack otherwise.
    """
    store = app.store()
    info = store.get_metadata(snapshot_id)
    if info.kind == "dir":
        if steps:
            raise fail(f"snapshot {info.id[:12]} is a directory snapshot; --path applies to state snapshots")
        store.restore_dir(info.id, dest, overwrite=overwrite, progress=app.progress("restore"))
        app.info(f"restored {info.id[:12]} ({human_bytes(info.raw_size)}) into {os.path.abspath(dest)}")
        return
    n = _write_state(store.restore(info.id, path=steps or None), dest, overwrite)
    if dest != "-":
        app.info(f"restored {info.id[:12]} into {dest} ({human_bytes(n)})")


@click.command()
@click.argument("snapshot_id", metavar="ID")
@click.argument("path")
@pass_app
def cat(app: App, snapshot_id: str, path: str) -> None:
    """Write the content of file PATH of directory snapshot ID to stdout (only its chunks are read)."""
    store = app.store()
    info = store.get_metadata(snapshot_id)
    if info.kind != "dir":
        raise fail(f"snapshot {info.id[:12]} is a state snapshot; use: casstore restore {info.id[:12]} - --path KEY")
    data = store.read_file(info.id, path)
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


# ls / show -----------------------------------------------------------------------

@click.command()
@click.option("--agent", "agent_id", help="Only this agent's snapshots.")
@click.option("--session", "session_id", help="Only this session (needs --agent).")
@click.option("--label", help="Only the agent's snapshots written with this label (needs --agent).")
@json_option
@pass_app
def ls(app: App, agent_id: str | None, session_id: str | None, label: str | None, as_json: bool) -> None:
    """List snapshots, oldest first."""
    if session_id is not None and agent_id is None:
        raise click.UsageError("--session needs --agent")
    if label is not None and agent_id is None:
        raise click.UsageError("--label needs --agent")
    store = app.store()
    if label is None:
        infos = store.list(agent_id, session_id)
    else:
        store.refresh()
        infos = [i for i in store.find(agent_id, label) if session_id is None or i.session_id == session_id]
    if as_json or app.json:
        echo_json(infos)
        return
    rows = [[i.id[:12], local_time(i.timestamp), f"{i.agent_id}/{i.session_id}", i.index, i.kind,
             human_bytes(i.raw_size), human_bytes(i.stored_size), i.description or ""] for i in infos]
    table(rows, ["ID", "TIME", "AGENT/SESSION", "#", "KIND", "SIZE", "NEW", "DESCRIPTION"])


def _dir_summary(store: casstore.Store, snap_id: str) -> dict:
    repo = store._repo
    listing = dirsnap.read_listing(repo, repo.fields(bytes.fromhex(snap_id)))
    kinds = Counter(e["t"] for e in listing)
    return {"files": kinds["f"], "dirs": kinds["d"], "symlinks": kinds["l"],
            "sqlite_databases": sum(1 for e in listing if e.get("q")),
            "file_bytes": sum(e.get("s", 0) for e in listing if e["t"] == "f")}


@click.command()
@click.argument("snapshot_id", metavar="ID")
@json_option
@pass_app
def show(app: App, snapshot_id: str, as_json: bool) -> None:
    """Metadata, sizes, Merkle root, parent and chunk counts of snapshot ID."""
    store = app.store()
    info = store.get_metadata(snapshot_id)
    data = info.to_dict()
    data["unique_chunks"] = len(set(store.chunks(info.id)))
    if info.kind == "dir":
        data["tree"] = _dir_summary(store, info.id)
    if as_json or app.json:
        echo_json(data)
        return
    pairs = [("id", info.id), ("kind", info.kind), ("agent", info.agent_id), ("session", info.session_id),
             ("position", info.index), ("time", f"{local_time(info.timestamp)} ({info.time.isoformat()})"),
             ("description", info.description or "-"), ("parent", info.parent or "-"), ("merkle root", info.root),
             ("size", f"{human_bytes(info.raw_size)} ({info.raw_size} bytes)"),
             ("new bytes stored", f"{human_bytes(info.stored_size)} ({info.stored_size} bytes)"),
             ("chunks", f"{info.chunk_count} ({data['unique_chunks']} unique, {info.new_chunk_count} new)")]
    if info.metadata:
        pairs.append(("metadata", json.dumps(plain(info.metadata), sort_keys=True)))
    if info.labels:
        pairs.append(("labels", ", ".join(info.labels)))
    if info.kind == "dir":
        t = data["tree"]
        pairs.append(("tree", f"{t['files']} files ({human_bytes(t['file_bytes'])}), {t['dirs']} dirs, "
                              f"{t['symlinks']} symlinks, {t['sqlite_databases']} SQLite databases"))
    key_values(pairs)


# diff ------------------------------------------------------------------------------

@click.command()
@click.argument("a", metavar="A")
@click.argument("b", metavar="B")
@json_option
@pass_app
def diff(app: App, a: str, b: str, as_json: bool) -> None:
    """What changed from snapshot A to snapshot B: files or state paths, chunks and bytes."""
    result = app.store().diff(a, b)
    if as_json or app.json:
        echo_json(result)
        return
    _print_diff(result)


def _print_diff(r: dict) -> None:
    click.echo(f"diff {r['a'][:12]} -> {r['b'][:12]}")
    if "files" in r:
        f = r["files"]
        for x in f["added"]:
            click.echo(f"+ {x['path']}" + ("" if x["type"] != "file" else f" ({human_bytes(x['size'])})")
                       + ("/" if x["type"] == "dir" else ""))
        for x in f["removed"]:
            click.echo(f"- {x['path']}" + ("" if x["type"] != "file" else f" ({human_bytes(x['size'])})")
                       + ("/" if x["type"] == "dir" else ""))
        for x in f["modified"]:
            sizes = f" ({human_bytes(x['old_size'])} -> {human_bytes(x['new_size'])})" if x["type"] == "file" else ""
            click.echo(f"M {x['path']}{sizes} {','.join(x['changes'])}")
        click.echo(f"{len(f['added'])} added ({human_bytes(f['added_bytes'])}), {len(f['removed'])} removed "
                   f"({human_bytes(f['removed_bytes'])}), {len(f['modified'])} modified")
    for p in r.get("paths", []):
        mark = {"added": "+", "removed": "-"}.get(p["change"], "M")
        click.echo(f"{mark} {p['path']}" + ("" if p["change"] in ("added", "removed", "modified") else f" ({p['change']})"))
    if r.get("paths_truncated"):
        click.echo(f"... (first {len(r['paths'])} paths shown)")
    if r.get("paths_error"):
        click.echo(f"(state paths not compared: {r['paths_error']})")
    click.echo(f"chunks: {r['chunks_added']} added ({human_bytes(r['bytes_added'])}), {r['chunks_removed']} removed "
               f"({human_bytes(r['bytes_removed'])}); size {human_bytes(r['size_a'])} -> {human_bytes(r['size_b'])}")
