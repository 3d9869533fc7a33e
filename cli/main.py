"""The `casstore` click group and its global options; the commands live in commands_*.py."""

from __future__ import annotations

import logging
import sys

import click

import casstore
from casstore_cli.app import ENV_COMPRESSION, ENV_INDEX_PATH, App, CasstoreGroup
from casstore import observability
from casstore_cli import commands_key, commands_maint, commands_obs, commands_snap


@click.group(cls=CasstoreGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--repo", "repo", metavar="URL", help="Repository URL (default: $CASSTORE_REPO, else ./.casstore).")
@click.option("--index-path", metavar="PATH", help=f"Where the local index lives (env {ENV_INDEX_PATH}).")
@click.option("--compression-level", type=click.IntRange(1, 22), help=f"zstd level for new chunks (env {ENV_COMPRESSION}).")
@click.option("--json", "as_json", is_flag=True, help="Print data as JSON (also accepted by each data command).")
@click.option("-v", "--verbose", count=True, help="Log more (-vv for debug); tracebacks on errors.")
@click.option("-q", "--quiet", is_flag=True, help="Print only data and errors.")
@click.option("--log-format", type=click.Choice(["text", "json"]), envvar="CASSTORE_LOG_FORMAT", default="text",
              show_default=True, help="Log lines on stderr as text, or as JSON (one record per operation at INFO).")
@click.version_option(casstore.__version__, prog_name="casstore")
@click.pass_context
def cli(ctx: click.Context, repo: str | None, index_path: str | None, compression_level: int | None,
        as_json: bool, verbose: int, quiet: bool, log_format: str) -> None:
    """casstore: content-addressed, deduplicating snapshots of agent state and workspaces."""
    app = App(repo_flag=repo, verbose=verbose, quiet=quiet, json=as_json, index_flag=index_path,
              compression_flag=compression_level)
    ctx.obj = app
    ctx.call_on_close(app.close)
    quiet_level = logging.INFO if log_format == "json" else logging.WARNING  # JSON logs are for machines: keep op records
    level = logging.ERROR if quiet else (logging.DEBUG if verbose > 1 else logging.INFO if verbose else quiet_level)
    observability.configure_logging(level, log_format, sys.stderr)


commands_snap.register(cli)
commands_maint.register(cli)
commands_obs.register(cli)
commands_key.register(cli)   # last: it adds --password-file to every command

if __name__ == "__main__":
    cli(prog_name="casstore")
