"""`attune-pg kv set|get|list|delete`: the key-value store templates read with `kv.*`.

Secret values are never printed unless asked for (`kv get KEY --show-secret`).
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from attune_pg.cli.common import connection, dsn_option, errors_to_exit, table
from attune_pg.errors import NotFoundError, ParameterError
from attune_pg.redact import DEFAULT_MASK
from attune_pg.store import kv as store


@click.group(name="kv")
def kv_group() -> None:
    """Values and secrets for templates (`kv.get`, `kv.get_secret`)."""


def _parse(value: str, as_json: bool) -> Any:
    if value == "-":
        value = sys.stdin.read().removesuffix("\n")
    if not as_json:
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        raise ParameterError(f"VALUE is not valid JSON: {exc}") from exc
    except RecursionError:
        raise ParameterError(
            "VALUE is nested too deeply to be stored (setting json_max_depth)"
        ) from None


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


@kv_group.command("set")
@click.argument("key")
@click.argument("value")
@click.option("--secret", is_flag=True, help="Mark the value secret (templates: kv.get_secret).")
@click.option("--json", "as_json", is_flag=True, help="Parse VALUE as JSON (else a string).")
@dsn_option
@errors_to_exit
def kv_set(key: str, value: str, secret: bool, as_json: bool, dsn: str | None) -> None:
    """Set KEY to VALUE (VALUE '-' reads it from stdin, keeping it out of shell history)."""
    parsed = _parse(value, as_json)
    with connection(dsn) as conn:
        store.set_value(conn, key, parsed, secret=secret)
    click.echo(f"set {key}" + (" (secret)" if secret else ""))


@kv_group.command("get")
@click.argument("key")
@click.option("--show-secret", is_flag=True, help="Print a secret value instead of ***.")
@dsn_option
@errors_to_exit
def kv_get(key: str, show_secret: bool, dsn: str | None) -> None:
    """Print KEY's value (strings as they are, other values as JSON)."""
    with connection(dsn) as conn:
        found = store.get_value(conn, key)
    if found is None:
        raise NotFoundError(f"kv key {key!r} is not set")
    value, secret = found
    click.echo(DEFAULT_MASK if secret and not show_secret else _text(value))


@kv_group.command("list")
@click.option("--prefix", default=None, help="Only keys starting with this.")
@dsn_option
@errors_to_exit
def kv_list(prefix: str | None, dsn: str | None) -> None:
    """List keys and values (secret values always show as ***)."""
    with connection(dsn) as conn:
        rows = store.list_values(conn, prefix)
    table(
        [
            {
                "key": row.key,
                "secret": "yes" if row.secret else "no",
                "value": DEFAULT_MASK if row.secret else _text(row.value),
                "updated_by": row.updated_by,
                "updated_at": row.updated_at,
            }
            for row in rows
        ],
        ["key", "secret", "value", "updated_by", "updated_at"],
    )


@kv_group.command("delete")
@click.argument("key")
@dsn_option
@errors_to_exit
def kv_delete(key: str, dsn: str | None) -> None:
    """Delete KEY."""
    with connection(dsn) as conn:
        deleted = store.delete_value(conn, key)
    if not deleted:
        raise NotFoundError(f"kv key {key!r} is not set")
    click.echo(f"deleted {key}")


def register(cli: click.Group) -> None:
    """Add the `kv` group to `cli`."""
    cli.add_command(kv_group)
