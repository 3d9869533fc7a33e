"""Passwords of an encrypted repository: key list | add | passwd | remove (see casstore/crypto.py).

Every key object wraps the same master key, so adding or changing a password
rewrites one small object and never the data. The current password comes as
for every command (--password-file, $CASSTORE_PASSWORD_FILE, $CASSTORE_PASSWORD
or a prompt); the new one from --new-password-file or a prompt with confirmation.
"""

from __future__ import annotations

import click

from casstore_cli.app import App, fail, with_password_option, with_repo_option
from casstore_cli.output import echo_json, local_time

pass_app = click.make_pass_decorator(App)
json_option = click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
new_password_option = click.option("--new-password-file", metavar="PATH",
                                   help="File holding the new password (default: prompt).")


def register(cli: click.Group) -> None:
    """Add the key group, and --password-file to every command (registered last, after the others)."""
    cli.add_command(key)
    for cmd in key.commands.values():
        with_repo_option(cmd)
    for cmd in cli.commands.values():
        for leaf in (cmd.commands.values() if isinstance(cmd, click.Group) else [cmd]):
            with_password_option(leaf)


def _new_password(app: App, path: str | None) -> bytes:
    if path:
        with open(path, "rb") as f:
            value = f.read().rstrip(b"\r\n")
        if not value:
            raise fail(f"{path} holds an empty password")
        return value
    return app.prompt_password("new password", confirm=True)


@click.group()
def key() -> None:
    """Passwords of an encrypted repository (each is a key object wrapping the master key)."""


@key.command("list")
@json_option
@pass_app
def key_list(app: App, as_json: bool) -> None:
    """The key objects; * marks the one that opened this session."""
    keys = app.store().keys()
    if as_json or app.json:
        echo_json(keys)
        return
    for k in keys:
        created = local_time(k["created"]) if k.get("created") else "?"
        click.echo(f"{'*' if k['current'] else ' '} {k['id']}  {created}  {k['kdf']}")


@key.command("add")
@new_password_option
@json_option
@pass_app
def key_add(app: App, new_password_file: str | None, as_json: bool) -> None:
    """Let another password open the repository."""
    store = app.store()
    key_id = store.add_password(_new_password(app, new_password_file))
    if as_json or app.json:
        echo_json({"added": key_id})
    else:
        app.info(f"added key {key_id}")


@key.command("passwd")
@new_password_option
@json_option
@pass_app
def key_passwd(app: App, new_password_file: str | None, as_json: bool) -> None:
    """Change the password used to open the repository (no data is rewritten)."""
    store = app.store()
    old = next((k["id"] for k in store.keys() if k["current"]), None)
    key_id = store.change_password(_new_password(app, new_password_file))
    if as_json or app.json:
        echo_json({"added": key_id, "removed": old})
    else:
        app.info(f"password changed: key {key_id} replaces {old}")


@key.command("remove")
@click.argument("key_id")
@pass_app
def key_remove(app: App, key_id: str) -> None:
    """Delete a key object (by id or prefix): its password stops working."""
    app.store().remove_key(key_id)
    app.info(f"removed key {key_id}")
