"""Commands that look after a repository: verify, gc, forget, stats, copy, index rebuild, config show."""

from __future__ import annotations

from typing import Any

import click

import casstore
from casstore import retention
from casstore.backend import Backend
from casstore.repository import CONFIG_KEY, Repository

from casstore_cli.app import App, fail, with_repo_option
from casstore_cli.output import echo_json, human_bytes, key_values, local_time, plain

pass_app = click.make_pass_decorator(App)
json_option = click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")


def register(cli: click.Group) -> None:
    for cmd in (verify, gc, forget, stats, copy, index, config):
        cli.add_command(cmd)
        for leaf in (cmd.commands.values() if isinstance(cmd, click.Group) else [cmd]):
            if leaf.name != "copy":
                with_repo_option(leaf)


def _method(store: casstore.Store, name: str, command: str) -> Any:
    """A Store method another part of casstore provides; a clear error while it is missing."""
    fn = getattr(store, name, None)
    if fn is None:
        raise fail(f"{command} is not available yet")
    return fn


def _print_report(report: Any, skip: tuple[str, ...] = ()) -> None:
    data = plain(report)
    if not isinstance(data, dict):
        click.echo(str(data))
        return
    pairs = []
    for k, v in data.items():
        if k in skip:
            continue
        if isinstance(v, list) and v and len(v) <= 10 and all(isinstance(x, str) for x in v):
            v = ", ".join(x[:12] if len(x) == 64 else x for x in v)
        elif isinstance(v, (list, dict)):
            v = f"{len(v)} item(s)" if v else "none"
        elif isinstance(v, int) and not isinstance(v, bool) and "bytes" in k:
            v = f"{human_bytes(v)} ({v})"
        elif isinstance(v, float):
            v = round(v, 3)
        pairs.append((k.replace("_", " "), v))
    key_values(pairs)


# verify ------------------------------------------------------------------------

@click.command()
@click.argument("snapshot_id", metavar="[ID]", required=False)
@click.option("--read-data", is_flag=True, help="Re-read and re-hash every chunk (slow, thorough).")
@json_option
@pass_app
def verify(app: App, snapshot_id: str | None, read_data: bool, as_json: bool) -> None:
    """Check the integrity of one snapshot or of the whole repository; exit 1 on a problem."""
    try:
        store = app.store()
    except casstore.AuthenticationError:
        if app.has_password() or snapshot_id is not None:
            raise
        # encrypted and no password: check what needs no key (structure, footers, pack hashes)
        click.echo("note: encrypted repository and no password: checking structure and pack hashes only", err=True)
        store = None
    if store is None:
        report = casstore.verify_without_key(app.repo_url()[0], deep=read_data)
    else:
        report = _method(store, "verify", "verify")(id=snapshot_id, deep=read_data)
    ok = bool(getattr(report, "ok", False))
    problems = list(getattr(report, "problems", []) or [])
    errors = [p for p in problems if getattr(p, "severity", "error") == "error"]
    if as_json or app.json:
        echo_json(report)
    else:
        for p in problems:
            label = "problem" if getattr(p, "severity", "error") == "error" else "note"
            click.echo(f"{label}: {p}", err=True)
        _print_report(report, skip=("problems", "ok"))
        click.echo("ok: no problems found" if ok else f"FAILED: {len(errors)} problem(s) found")
    if not ok:
        raise click.exceptions.Exit(1)


# gc / forget -------------------------------------------------------------------

@click.command()
@click.option("--dry-run", is_flag=True, help="Only say what would be freed.")
@json_option
@pass_app
def gc(app: App, dry_run: bool, as_json: bool) -> None:
    """Remove chunks and packs no snapshot references."""
    report = _method(app.store(), "gc", "gc")(dry_run=dry_run)
    if as_json or app.json:
        echo_json(report)
        return
    if dry_run:
        click.echo("dry run: nothing was deleted")
    _print_report(report)


def _check_duration(text: str) -> None:
    try:
        retention.parse_duration(text)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--keep-within") from None


@click.command()
@click.option("--keep-last", type=click.IntRange(min=0), help="Keep the newest N snapshots of each lineage.")
@click.option("--keep-within", metavar="DURATION",
              help="Keep snapshots within DURATION of each lineage's newest (e.g. 7d, 12h, 1w2d).")
@click.option("--keep-daily", type=click.IntRange(min=0), help="Keep the newest snapshot of each of the last N days.")
@click.option("--agent", "agent_id", help="Only this agent's snapshots.")
@click.option("--session", "session_id", help="Only this session (needs --agent).")
@click.option("--dry-run", is_flag=True, help="Only say what would be forgotten.")
@json_option
@pass_app
def forget(app: App, keep_last: int | None, keep_within: str | None, keep_daily: int | None, agent_id: str | None,
           session_id: str | None, dry_run: bool, as_json: bool) -> None:
    """Apply a retention policy per lineage; `casstore gc` then frees the space."""
    if keep_last is None and keep_within is None and keep_daily is None:
        raise click.UsageError("give a policy: --keep-last N, --keep-within DURATION and/or --keep-daily N")
    if session_id is not None and agent_id is None:
        raise click.UsageError("--session needs --agent")
    if keep_within is not None:
        _check_duration(keep_within)
    kwargs: dict[str, Any] = {"keep_last": keep_last, "keep_within": keep_within, "agent_id": agent_id,
                              "session_id": session_id, "dry_run": dry_run}
    if keep_daily is not None:
        kwargs["keep_daily"] = keep_daily
    forgotten = _method(app.store(), "forget", "forget")(**kwargs)
    if as_json or app.json:
        echo_json({"dry_run": dry_run, "forgotten": forgotten})
        return
    verb = "would forget" if dry_run else "forgot"
    if not forgotten:
        click.echo(f"{'dry run: ' if dry_run else ''}nothing to forget")
        return
    for i in forgotten:
        click.echo(f"{verb} {i.id[:12]}  {local_time(i.timestamp)}  {i.agent_id}/{i.session_id} #{i.index}  "
                   f"{i.description or ''}".rstrip())
    click.echo(f"{verb} {len(forgotten)} snapshot(s)" + ("" if dry_run else "; run `casstore gc` to free space"))


# stats -------------------------------------------------------------------------

@click.command()
@json_option
@pass_app
def stats(app: App, as_json: bool) -> None:
    """Snapshots, logical and stored bytes, dedup ratio, chunk and pack counts."""
    s = app.store().stats()
    if as_json or app.json:
        echo_json(s)
        return
    key_values([("snapshots", s.snapshots), ("logical bytes", f"{human_bytes(s.logical_bytes)} ({s.logical_bytes})"),
                ("stored bytes", f"{human_bytes(s.stored_bytes)} ({s.stored_bytes})"),
                ("dedup ratio", f"{s.dedup_ratio:.2f}x"), ("chunks", s.chunks), ("packs", s.packs)])


# copy --------------------------------------------------------------------------

@click.command()
@click.argument("src")
@click.argument("dst")
@click.option("--id", "ids", multiple=True, metavar="ID", help="Copy only these snapshots (repeatable).")
@click.option("--init", "init_dst", is_flag=True, help="Create the destination repository if it does not exist.")
@json_option
@pass_app
def copy(app: App, src: str, dst: str, ids: tuple[str, ...], init_dst: bool, as_json: bool) -> None:
    """Copy snapshots from repository SRC to repository DST, moving only the chunks DST lacks."""
    source = app.open(src)
    target = app.open(dst, create=init_dst)
    fn = _method(source, "copy_to", "copy")
    report = fn(target, ids=list(ids) or None)
    if as_json or app.json:
        echo_json(report)
        return
    _print_report(report)


# index -------------------------------------------------------------------------

@click.group()
def index() -> None:
    """Maintain the local index (a rebuildable cache of the repository)."""


@index.command("rebuild")
@json_option
@pass_app
def index_rebuild(app: App, as_json: bool) -> None:
    """Rebuild the local LMDB index from the packs and manifests in storage."""
    n = app.store().index_rebuild()
    if as_json or app.json:
        echo_json({"snapshots": n, "index_path": app.store()._repo.index_path})
    else:
        app.info(f"index rebuilt: {n} snapshots ({app.store()._repo.index_path})")


# config ------------------------------------------------------------------------

@click.group()
def config() -> None:
    """Show configuration."""


@config.command("show")
@click.option("--explain", is_flag=True, help="Say where each value came from.")
@json_option
@pass_app
def config_show(app: App, explain: bool, as_json: bool) -> None:
    """The effective configuration: repository URL, index, compression, repository config."""
    url, url_src = app.repo_url()
    level, level_src = app.compression_level()
    index_path, index_src = app.index_path()
    values: dict[str, dict] = {
        "repo": {"value": url, "source": url_src},
        "compression_level": {"value": level, "source": level_src},
    }
    probe = Backend(url)
    try:
        exists = probe.exists(CONFIG_KEY)
        shown_url = probe.url
    finally:
        probe.close()
    repo_cfg: dict | None = None
    if exists:
        repo: Repository = app.store()._repo
        index_path = repo.index_path
        repo_cfg = repo.config.to_dict()
    values["index_path"] = {"value": index_path or "(beside the repository / per-repository cache)",
                            "source": index_src if index_src != "default" else
                            ("default (beside the local repository)" if probe.is_local else
                             "default (per-repository cache folder; CASSTORE_CACHE_DIR / XDG_CACHE_HOME)")}
    out = {k: (v if explain else v["value"]) for k, v in values.items()}
    out["repository_config"] = ({"value": repo_cfg, "source": f"{shown_url}/{CONFIG_KEY} (written at init)"}
                                if explain else repo_cfg)
    if as_json or app.json:
        echo_json(out)
    else:
        for k, v in values.items():
            click.echo(f"{k}: {v['value']}" + (f"    [{v['source']}]" if explain else ""))
        if repo_cfg is None:
            click.echo(f"repository config: none (no repository at {shown_url}; run `casstore init`)")
        else:
            click.echo("repository config:" + (f"    [{shown_url}/{CONFIG_KEY}, written at init]" if explain else ""))
            for k, v in repo_cfg.items():
                click.echo(f"  {k}: {v}")
    if repo_cfg is None:
        raise click.exceptions.Exit(1)
