"""`attune-pg workflows graph` and `attune-pg executions graph`: Mermaid or dot source."""

from __future__ import annotations

from typing import cast

import click

from attune_pg.cli.common import connection, dsn_option, errors_to_exit
from attune_pg.graph import GraphFormat, render_graph
from attune_pg.spec.model import WorkflowSpec
from attune_pg.store import read

format_option = click.option(
    "--format",
    "fmt",
    type=click.Choice(["mermaid", "dot", "svg"]),
    default="mermaid",
    show_default=True,
    help="Mermaid flowchart (paste into Markdown) or Graphviz dot (pipe into `dot -Tsvg`).",
)


@click.command("graph")
@click.argument("ref")
@format_option
@dsn_option
@errors_to_exit
def workflows_graph(ref: str, fmt: str, dsn: str | None) -> None:
    """Draw registered workflow REF: tasks, transitions and their conditions."""
    with connection(dsn) as conn:
        spec = WorkflowSpec.from_dict(read.workflow(conn, ref)["definition"])
    click.echo(render_graph(spec, cast(GraphFormat, fmt)), nl=False)


@click.command("graph")
@click.argument("execution_id", type=int)
@format_option
@dsn_option
@errors_to_exit
def executions_graph(execution_id: int, fmt: str, dsn: str | None) -> None:
    """Draw the workflow execution EXECUTION_ID ran, each task coloured by its latest status."""
    with connection(dsn) as conn:
        spec = WorkflowSpec.from_dict(read.execution_definition(conn, execution_id))
        statuses = read.latest_task_statuses(conn, execution_id)
    click.echo(render_graph(spec, cast(GraphFormat, fmt), statuses), nl=False)


def register(cli: click.Group) -> None:
    """Add `graph` to the `workflows` and `executions` groups of `cli`."""
    for group_name, command in (("workflows", workflows_graph), ("executions", executions_graph)):
        group = cli.commands[group_name]
        if not isinstance(group, click.Group):
            raise TypeError(f"{group_name!r} is not a command group")
        group.add_command(command)
