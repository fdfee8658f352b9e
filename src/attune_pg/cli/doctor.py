"""`attune-pg doctor`: what is wrong with this deployment, and what to do about it."""

from __future__ import annotations

import json
import sys

import click

from attune_pg import db
from attune_pg.cli.common import dsn_option
from attune_pg.errors import DatabaseUnavailable
from attune_pg.health import Finding, Thresholds, diagnose


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the findings as one JSON object.")
@click.option(
    "--snapshot-age",
    type=click.FloatRange(min=0),
    default=Thresholds.snapshot_seconds,
    show_default=True,
    help="Seconds a session may hold a snapshot before it counts as holding back vacuum.",
)
@click.option(
    "--dead-ratio",
    type=click.FloatRange(0, 1),
    default=Thresholds.dead_ratio,
    show_default=True,
    help="Share of dead rows in a hot table that counts as a problem...",
)
@click.option(
    "--dead-min",
    type=click.IntRange(min=0),
    default=Thresholds.dead_min,
    show_default=True,
    help="...once it has at least this many dead rows.",
)
@click.option(
    "--notify-usage",
    type=click.FloatRange(0, 1),
    default=Thresholds.notify_usage,
    show_default=True,
    help="Share of the NOTIFY queue in use that counts as a problem.",
)
@dsn_option
def doctor(
    as_json: bool,
    snapshot_age: float,
    dead_ratio: float,
    dead_min: int,
    notify_usage: float,
    dsn: str | None,
) -> None:
    """Check the connection, durability settings, schema, workers, stuck tasks, vacuum,
    dead rows and the NOTIFY queue. One line per problem with what to do; exit 0 when
    healthy, 1 otherwise. Changes nothing (pending migrations are reported, not applied)."""
    from attune_pg.store.health import gather

    limits = Thresholds(snapshot_age, dead_ratio, dead_min, notify_usage)
    try:
        conn = db.connect(db.resolve_dsn(dsn), name="attune_doctor")
    except DatabaseUnavailable as exc:
        findings = [
            Finding(
                "connection",
                "problem",
                str(exc),
                "check --dsn / ATTUNE_DSN, that the server runs and accepts this login",
            )
        ]
    else:
        with conn:
            findings = diagnose(gather(conn), limits)
    problems = [f for f in findings if f.status == "problem"]
    if as_json:
        report = {
            "healthy": not problems,
            "problems": len(problems),
            "findings": [f.as_dict() for f in findings],
        }
        click.echo(json.dumps(report, indent=2))
    else:
        for finding in findings:
            click.echo(finding.line())
        click.echo(
            "healthy"
            if not problems
            else f"{len(problems)} problem{'s' if len(problems) > 1 else ''} found"
        )
    sys.exit(1 if problems else 0)


def register(group: click.Group) -> None:
    group.add_command(doctor)
