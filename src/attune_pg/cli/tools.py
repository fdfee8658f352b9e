"""`attune-pg demo` and `attune-pg bench`."""

from __future__ import annotations

import sys
from typing import Any

import click

from attune_pg.cli.common import dsn_option, errors_to_exit
from attune_pg.cli.progress import Progress, Stages, progress_option
from attune_pg.cli.prune import DEFAULT_DUTY


@click.command()
@click.option("--name", default="attune", show_default=True, help="Who the demo greets.")
@dsn_option
@errors_to_exit
def demo(name: str, dsn: str | None) -> None:
    """Run a demo workflow end to end (embedded PostgreSQL unless ATTUNE_DSN is set)."""
    from attune_pg.cli.demo import run_demo

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
@click.option(
    "--prune",
    "prune_history",
    type=click.IntRange(min=1),
    default=None,
    help="Instead: seed this many finished executions, then measure task steps/s without"
    " pruning and while `attune.prune` deletes them all.",
)
@click.option(
    "--batch",
    type=click.IntRange(1, 100_000),
    default=1000,
    show_default=True,
    help="With --prune: executions per prune batch.",
)
@click.option(
    "--duty",
    type=click.FloatRange(0, 1, min_open=True),
    default=DEFAULT_DUTY,
    show_default=True,
    help="With --prune: share of the time spent pruning (as `attune-pg prune --duty`).",
)
@click.option(
    "--window-seconds",
    type=click.FloatRange(min=1),
    default=10.0,
    show_default=True,
    help="With --prune: length of each alternating window with and without pruning.",
)
@click.option(
    "--scenario",
    "scenarios",
    default=None,
    help="Instead: the performance scenarios, a comma list of single, three, python,"
    " items, wakeup, history, snapshot (or all), each with its costs per task step"
    " (commits, tuples written, WAL bytes, CPU ms in the workers and in PostgreSQL);"
    " --workflows sets N.",
)
@click.option(
    "--history-rows",
    type=click.IntRange(min=3),
    default=1_000_000,
    show_default=True,
    help="With --scenario history: finished task rows loaded into the database compared.",
)
@click.option(
    "--history-rounds",
    type=click.IntRange(min=1),
    default=2,
    show_default=True,
    help="With --scenario history: alternating rounds on the empty and the full database.",
)
@click.option(
    "--hold-seconds",
    type=click.FloatRange(min=1),
    default=300.0,
    show_default=True,
    help="With --scenario snapshot: how long the REPEATABLE READ snapshot is held.",
)
@progress_option
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
    prune_history: int | None,
    batch: int,
    duty: float,
    window_seconds: float,
    progress: bool | None,
    register_n: int | None,
    scenarios: str | None,
    history_rows: int,
    history_rounds: int,
    hold_seconds: float,
    dsn: str | None,
) -> None:
    """Measure workflows/s, task steps/s and claim latency on this server."""
    from attune_pg.cli.bench import ACTIONS, compare, run_bench, run_items_bench

    if scenarios:
        _scenarios(
            dsn,
            scenarios,
            workflows=workflows,
            workers=workers,
            concurrency=concurrency,
            idle_samples=idle_samples or 50,
            history_rows=history_rows,
            history_rounds=history_rounds,
            hold_seconds=hold_seconds,
            progress=progress,
        )
        return
    if register_n:
        from attune_pg.cli.bench_register import run_register_bench

        click.echo(run_register_bench(dsn, register_n).report())
        return
    if items:
        report = run_items_bench(dsn, items=items, workers=workers, concurrency=concurrency)
        click.echo(report.report())
        return
    if prune_history:
        from attune_pg.cli.bench_prune import run_prune_bench

        stages = Stages(progress)
        pruned = run_prune_bench(
            dsn,
            history=prune_history,
            tasks=tasks,
            workers=workers,
            concurrency=concurrency,
            batch=batch,
            duty=duty,
            window=window_seconds,
            on_progress=stages,
        )
        stages.close()
        click.echo(pruned.report())
        return

    chosen = [a.strip() for a in actions.split(",") if a.strip()]
    unknown = [a for a in chosen if a not in ACTIONS]
    if unknown or not chosen:
        raise click.BadParameter(
            f"{', '.join(unknown) or actions!r}: choose from {', '.join(ACTIONS)}",
            param_hint="--action",
        )
    results = []
    waiting = Progress("workflows finished", enabled=progress)
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
                on_progress=lambda done, total: waiting.update(done, total=total),
            )
            waiting.done()
            click.echo(result.report())
            results.append(result)
    summary = compare(results, len(chosen))
    if summary:
        click.echo(summary)
    if not all(r.ok for r in results):
        sys.exit(1)


def _scenarios(dsn: str | None, names: str, *, progress: bool | None, **options: Any) -> None:
    from attune_pg.cli.bench_suite import SCENARIOS, run_suite

    chosen = [n.strip() for n in names.split(",") if n.strip()]
    if chosen == ["all"]:
        chosen = list(SCENARIOS)
    unknown = [n for n in chosen if n not in SCENARIOS]
    if unknown or not chosen:
        what = ", ".join(unknown) if unknown else repr(names)
        raise click.BadParameter(
            f"{what}: choose from {', '.join(SCENARIOS)} or all",
            param_hint="--scenario",
        )
    stages = Stages(progress)
    result = run_suite(dsn, chosen, progress=stages, **options)
    stages.close()
    click.echo(result.report())
    if not result.ok:
        sys.exit(1)


def register(group: click.Group) -> None:
    group.add_command(demo)
    group.add_command(bench)
