"""`attune-pg prune`: delete finished executions older than a cut-off, in short batches."""

from __future__ import annotations

import re
import time

import click

from attune_pg.cli.common import connection, dsn_option, errors_to_exit
from attune_pg.cli.progress import Progress, progress_option
from attune_pg.errors import ParameterError
from attune_pg.machine import WORKFLOW_TERMINAL

# Measured with `attune-pg bench --prune 100000` (docs/operations.md): pruning flat out
# cost two saturated workers on a 2-core server a quarter of their throughput; pruning a
# quarter of the time cost them nothing measurable.
DEFAULT_DUTY = 0.25

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")


def parse_age(text: str) -> float:
    """`30d`, `12h`, `90m`, `45s`, `2w` or plain seconds -> seconds."""
    match = _AGE.match(text)
    if not match:
        raise ParameterError(
            f"--older-than {text!r}: expected a number with a unit s, m, h, d or w (e.g. 30d)"
        )
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]


@click.command()
@click.option(
    "--older-than",
    "older_than",
    required=True,
    help="Delete executions finished longer ago than this: 30d, 12h, 90m, 2w, or seconds.",
)
@click.option(
    "--status",
    "statuses",
    multiple=True,
    type=click.Choice(sorted(WORKFLOW_TERMINAL)),
    help="Only executions that ended so (repeatable; default: every finished status).",
)
@click.option(
    "--batch",
    type=click.IntRange(1, 100_000),
    default=1000,
    show_default=True,
    help="Top-level executions per transaction.",
)
@click.option(
    "--duty",
    type=click.FloatRange(0, 1, min_open=True),
    default=DEFAULT_DUTY,
    show_default=True,
    help="Share of the time spent pruning: after each batch it sleeps so the workers keep"
    " the rest of the server (1: no pause).",
)
@click.option("--dry-run", is_flag=True, help="Count what would be deleted; delete nothing.")
@progress_option
@dsn_option
@errors_to_exit
def prune(
    older_than: str,
    statuses: tuple[str, ...],
    batch: int,
    duty: float,
    dry_run: bool,
    progress: bool | None,
    dsn: str | None,
) -> None:
    """Delete finished top-level executions with their tasks, audit rows, inquiries,
    secrets, enforcements and child executions, and old events no kept execution came
    from. Each batch is one short transaction (attune.prune), so it is safe with workers
    running; executions with anything still live in their family are kept."""
    from attune_pg.store import retention

    seconds = parse_age(older_than)
    chosen = list(statuses) or None
    with connection(dsn) as conn:
        if dry_run:
            p = retention.prune_preview(conn, seconds, chosen)
            oldest = f", oldest finished {p['oldest']:%Y-%m-%d %H:%M}" if p["oldest"] else ""
            click.echo(
                f"would prune {p['executions']:,} executions ({p['children']:,} child"
                f" executions, {p['tasks']:,} task rows, {p['events']:,} audit rows){oldest};"
                f" {p['trigger_events']:,} events"
            )
            return
        bar = Progress("pruning", enabled=progress)
        if bar.enabled:
            bar.total = int(retention.prune_preview(conn, seconds, chosen)["executions"]) or None
        started = time.monotonic()

        def shown(deleted: int) -> None:
            rate = deleted / max(time.monotonic() - started, 1e-9)
            bar.update(deleted, f"{rate:,.0f}/s")

        deleted = retention.prune_all(conn, seconds, batch, chosen, duty=duty, on_batch=shown)
        bar.done(deleted)
    took = time.monotonic() - started
    click.echo(f"pruned {deleted:,} executions and events in {took:.1f}s")


def register(group: click.Group) -> None:
    group.add_command(prune)
