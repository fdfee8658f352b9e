"""`attune-pg executions cancel|pause|resume|retry` and `attune-pg inquiries ...`."""

from __future__ import annotations

import getpass
import json
from typing import Any

import click

from attune_pg.cli.common import connection, dsn_option, errors_to_exit, table, to_json
from attune_pg.errors import ParameterError
from attune_pg.spec.params import check_inquiry_response
from attune_pg.store import inquiries as store


def _request_command(verb: str, summary: str) -> click.Command:
    @click.command(verb, help=summary)
    @click.argument("execution_id", type=int)
    @dsn_option
    @errors_to_exit
    def command(execution_id: int, dsn: str | None, **options: Any) -> None:
        with connection(dsn) as conn:
            status = store.request(conn, verb, execution_id, options.get("policy"))
        click.echo(f"execution {execution_id}: {status}")

    if verb == "cancel":
        command = click.option(
            "--policy",
            type=click.Choice(["allow_finish", "cancel_running"]),
            default=None,
            help="allow_finish lets running actions end; cancel_running kills them"
            " (default: the workflow's cancellation_policy).",
        )(command)
    return command


@click.group(name="inquiries")
def inquiries_group() -> None:
    """Human-in-the-loop questions waiting for an answer."""


@inquiries_group.command("list")
@click.option("--all", "all_statuses", is_flag=True, help="Include answered and expired ones.")
@dsn_option
@errors_to_exit
def inquiries_list(all_statuses: bool, dsn: str | None) -> None:
    with connection(dsn) as conn:
        rows = store.inquiries(conn, all_statuses=all_statuses)
    table(rows, ["id", "workflow_execution_id", "task_name", "status", "prompt", "expires_at"])


@inquiries_group.command("show")
@click.argument("inquiry_id", type=int)
@dsn_option
@errors_to_exit
def inquiries_show(inquiry_id: int, dsn: str | None) -> None:
    with connection(dsn) as conn:
        click.echo(to_json(store.inquiry(conn, inquiry_id)))


@inquiries_group.command("respond")
@click.argument("inquiry_id", type=int)
@click.option("-r", "--response", "pairs", multiple=True, help="key=value (value parsed as JSON).")
@click.option("--json", "response_json", help="The whole response as a JSON value.")
@click.option(
    "--as",
    "who",
    help="Answer as this name (default: your OS user). For an inquiry assigned to a group"
    " (a PostgreSQL role), give your database login or a role you can act as.",
)
@dsn_option
@errors_to_exit
def inquiries_respond(
    inquiry_id: int,
    pairs: tuple[str, ...],
    response_json: str | None,
    who: str | None,
    dsn: str | None,
) -> None:
    """Answer inquiry INQUIRY_ID; the answer must match the inquiry's schema."""
    response = _response(pairs, response_json)
    with connection(dsn) as conn:
        question = store.inquiry(conn, inquiry_id)
        check_inquiry_response(inquiry_id, question["schema"] or {}, response)
        store.respond(conn, inquiry_id, response, who or getpass.getuser())
    click.echo(f"inquiry {inquiry_id}: responded")


def _response(pairs: tuple[str, ...], response_json: str | None) -> Any:
    if response_json is not None:
        try:
            return json.loads(response_json)
        except json.JSONDecodeError as exc:
            raise ParameterError(f"--json is not valid JSON: {exc}") from exc
    response: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ParameterError(f"-r {pair!r}: expected key=value")
        try:
            response[key] = json.loads(value)
        except json.JSONDecodeError:
            response[key] = value
    return response


def register(cli: click.Group) -> None:
    executions = cli.commands["executions"]
    assert isinstance(executions, click.Group)
    for verb, summary in (
        ("cancel", "Cancel an execution (and its children)."),
        ("pause", "Pause an execution: running tasks finish, nothing new starts."),
        ("resume", "Resume a paused execution."),
        ("retry", "Re-run the failed tasks of a failed execution, keeping the rest."),
    ):
        executions.add_command(_request_command(verb, summary))
    cli.add_command(inquiries_group)
