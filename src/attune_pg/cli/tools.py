"""`attune-pg demo` and `attune-pg bench`."""

from __future__ import annotations

import sys

import click

from attune_pg.cli.common import dsn_option, errors_to_exit


@click.command()
@click.option("--name", default="attune", show_default=True, help="Who the demo greets.")
@dsn_option
@errors_to_exit
def demo(name: str, dsn: str | None) -> None:
    """Run a demo workflow end to end (embedded PostgreSQL unless ATTUNE_DSN is set)."""
    from attune_pg.demo import run_demo

    sys.exit(run_demo(dsn, name))


@click.command()
@click.option("--workflows", "-n", default=500, show_default=True)
@click.option("--tasks", "-k", default=5, show_default=True, help="Sequential tasks each.")
@click.option("--workers", "-w", default=2, show_default=True, help="Worker processes.")
@click.option("--concurrency", "-c", default=20, show_default=True, help="Slots per worker.")
@click.option(
    "--idle-samples", default=50, show_default=True, help="Idle wake-up samples (0: skip)."
)
@click.option(
    "--action",
    "actions",
    default="noop",
    show_default=True,
    help="What the tasks run: noop, python or local; a comma list runs each in turn on"
    " fresh workers and reports ratios to the first.",
)
@click.option("--rounds", default=1, show_default=True, help="Repeat the --action list.")
@click.option(
    "--items",
    type=int,
    default=None,
    help="Instead: one with-items task over this many items (and a tenth of it),"
    " to show the cost per item does not grow with the count.",
)
@click.option(
    "--register",
    "register_n",
    type=int,
    default=None,
    help="Instead: generate this many workflows (100 per pack) and time `packs register`"
    " on them, new and unchanged, against parsing them with yaml.CSafeLoader.",
)
@dsn_option
@errors_to_exit
def bench(
    workflows: int,
    tasks: int,
    workers: int,
    concurrency: int,
    idle_samples: int,
    actions: str,
    rounds: int,
    items: int | None,
    register_n: int | None,
    dsn: str | None,
) -> None:
    """Measure workflows/s, task steps/s and claim latency on this server."""
    from attune_pg.bench import ACTIONS, compare, run_bench, run_items_bench

    if register_n:
        from attune_pg.bench_register import run_register_bench

        click.echo(run_register_bench(dsn, register_n).report())
        return
    if items:
        report = run_items_bench(dsn, items=items, workers=workers, concurrency=concurrency)
        click.echo(report.report())
        return

    chosen = [a.strip() for a in actions.split(",") if a.strip()]
    unknown = [a for a in chosen if a not in ACTIONS]
    if unknown or not chosen:
        raise click.BadParameter(
            f"{', '.join(unknown) or actions!r}: choose from {', '.join(ACTIONS)}",
            param_hint="--action",
        )
    results = []
    for _ in range(max(1, rounds)):
        for action in chosen:
            result = run_bench(
                dsn,
                workflows=workflows,
                tasks=tasks,
                workers=workers,
                concurrency=concurrency,
                idle_samples=idle_samples,
                action=action,
            )
            click.echo(result.report())
            results.append(result)
    summary = compare(results, len(chosen))
    if summary:
        click.echo(summary)
    if not all(r.ok for r in results):
        sys.exit(1)


def register(group: click.Group) -> None:
    group.add_command(demo)
    group.add_command(bench)
