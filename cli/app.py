"""What every command shares: the App context (options, lazily opened store), errors, progress.

Exit codes: 0 success; 1 a problem found or an operation failed (errors print
`casstore: error: <message>`, with a traceback only under -v); 2 bad usage
(click's own usage errors).
"""

from __future__ import annotations

import os
import sys
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

import click

import casstore
from casstore.config import resolve_url

ENV_INDEX_PATH = "CASSTORE_INDEX_PATH"
ENV_COMPRESSION = "CASSTORE_COMPRESSION_LEVEL"
ENV_PASSWORD_FILE = "CASSTORE_PASSWORD_FILE"


class CliError(click.ClickException):
    """An operation failed or found a problem: one line on stderr, exit 1."""

    exit_code = 1

    def show(self, file: Any = None) -> None:
        click.echo(f"casstore: error: {self.format_message()}", err=True)


def fail(message: str) -> CliError:
    return CliError(message)


@dataclass
class App:
    """What every command needs: the options of the group and the store, opened on first use."""

    repo_flag: str | None = None
    verbose: int = 0
    quiet: bool = False
    json: bool = False
    index_flag: str | None = None
    compression_flag: int | None = None
    password_file: str | None = None
    _password: bytes | None = None       # prompted once, reused for every repository this command opens
    _store: casstore.Store | None = None
    _closers: list[Callable[[], None]] = field(default_factory=list)

    # effective settings and where they came from ------------------------------
    def repo_url(self) -> tuple[str, str]:
        url, source = resolve_url(self.repo_flag)
        return url, "flag --repo" if source == "argument" else source

    def index_path(self) -> tuple[str | None, str]:
        if self.index_flag:
            return self.index_flag, "flag --index-path"
        if os.environ.get(ENV_INDEX_PATH):
            return os.environ[ENV_INDEX_PATH], f"env {ENV_INDEX_PATH}"
        return None, "default"

    def compression_level(self) -> tuple[int, str]:
        if self.compression_flag is not None:
            return self.compression_flag, "flag --compression-level"
        raw = os.environ.get(ENV_COMPRESSION)
        if raw:
            try:
                return int(raw), f"env {ENV_COMPRESSION}"
            except ValueError:
                raise click.BadParameter(f"{ENV_COMPRESSION}={raw!r} is not an integer") from None
        return 3, "default"

    # the store ---------------------------------------------------------------
    def open(self, url: str | None = None, *, create: bool = False, encrypt: bool = False) -> casstore.Store:
        """Open a repository (the --repo one unless url is given); closed when the command ends.

        Encrypted repositories: the password comes from --password-file, $CASSTORE_PASSWORD_FILE,
        $CASSTORE_PASSWORD, else a prompt on a terminal (with confirmation for a new repository).
        """
        index_path = self.index_path()[0] if url is None else None
        target = url or self.repo_url()[0]
        if encrypt and not self.has_password():
            self._password = self.prompt_password("password for the new repository", confirm=True)

        def attempt() -> casstore.Store:
            return casstore.open(target, create=create, index_path=index_path, encrypt=encrypt,
                                 compression_level=self.compression_level()[0], password=self._password,
                                 key_file=self.key_file())
        try:
            store = attempt()
        except casstore.AuthenticationError:
            if self.has_password() or not sys.stdin.isatty():
                raise
            self._password = self.prompt_password(f"password for {target}")
            store = attempt()
        self._closers.append(store.close)
        return store

    def key_file(self) -> str | None:
        return self.password_file or os.environ.get(ENV_PASSWORD_FILE) or None

    def has_password(self) -> bool:
        return bool(self._password or self.key_file() or os.environ.get("CASSTORE_PASSWORD"))

    def prompt_password(self, what: str, confirm: bool = False) -> bytes:
        if not sys.stdin.isatty():
            raise fail(f"{what}: no password given (use --password-file, $CASSTORE_PASSWORD_FILE or $CASSTORE_PASSWORD)")
        value = click.prompt(what.capitalize(), hide_input=True, confirmation_prompt=confirm, err=True)
        if not value:
            raise fail("empty password")
        return value.encode()

    def store(self) -> casstore.Store:
        if self._store is None:
            self._store = self.open()
        return self._store

    def close(self) -> None:
        while self._closers:
            self._closers.pop()()

    # output ------------------------------------------------------------------
    def info(self, message: str) -> None:
        """A human message on stdout, silenced by -q."""
        if not self.quiet:
            click.echo(message)

    def progress(self, label: str) -> "Progress | None":
        """A progress callback drawing a bar on a terminal; None when stderr is piped or -q."""
        if self.quiet or self.json or not sys.stderr.isatty():
            return None
        p = Progress(label)
        self._closers.append(p.close)
        return p


class Progress:
    """Adapts the library's (done, total) callbacks to a click progress bar on stderr."""

    def __init__(self, label: str):
        self.label = label
        self.bar: Any = None
        self.last = 0

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            self.bar = click.progressbar(length=max(total, 1), label=self.label, file=sys.stderr)
            self.bar.__enter__()
        self.bar.update(done - self.last)
        self.last = done

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None


def _set_repo(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value:
        ctx.ensure_object(App).repo_flag = value


def _set_password_file(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value:
        ctx.ensure_object(App).password_file = value


def with_password_option(cmd: click.Command) -> click.Command:
    """`--password-file PATH` on a command: the password of an encrypted repository, read from a file."""
    if not any(p.name == "password_file" for p in cmd.params):
        cmd.params.append(click.Option(["--password-file"], "password_file", metavar="PATH", expose_value=False,
                                       is_eager=True, callback=_set_password_file,
                                       help=f"File holding the password of an encrypted repository "
                                            f"(env {ENV_PASSWORD_FILE}, or CASSTORE_PASSWORD)."))
    return cmd


def with_repo_option(cmd: click.Command) -> click.Command:
    """Let `casstore CMD --repo URL` work as well as `casstore --repo URL CMD`."""
    cmd.params.append(click.Option(["--repo"], metavar="URL", expose_value=False, is_eager=True,
                                   callback=_set_repo, help="Repository URL (same as the global --repo)."))
    return cmd


class CasstoreGroup(click.Group):
    """Turns any failure of a command into one `casstore: error:` line and exit 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except KeyboardInterrupt:
            raise click.Abort() from None
        except Exception as e:  # noqa: BLE001 - every failure becomes one line
            app = ctx.find_object(App)
            if app is not None and app.verbose:
                traceback.print_exc()
            raise CliError(_describe(e)) from e


def _describe(e: BaseException) -> str:
    if isinstance(e, casstore.CasstoreError):
        return str(e)
    if isinstance(e, OSError) and e.filename is not None:
        return f"{e.strerror or e}: {e.filename}"
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


