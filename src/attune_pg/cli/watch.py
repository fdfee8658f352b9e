"""`attune-pg watch [ID]`: follow executions live in a plain terminal.

Without ID: the live (not finished) executions, newest first, with their task counts.
With ID: that execution's tasks, with a progress bar for with-items tasks; it exits when
the execution ends (0 if it succeeded, 1 otherwise).

Driven by LISTEN: it redraws when `attune_execution` (an execution changed status) or
`attune_work` (a task became claimable) fires, at most ten times a second, and at least
every `--interval` seconds (task ends that schedule nothing send no notification).
On a terminal each frame replaces the last (ANSI home + clear); into a pipe or a file
each frame that differs from the previous one is printed once, without escape codes.
"""

from __future__ import annotations

import shutil
import signal
import sys
import time
from datetime import datetime
from typing import Any

import click

from attune_pg.cli.common import connection, dsn_option, errors_to_exit
from attune_pg.errors import NotFoundError
from attune_pg.machine import WORKFLOW_TERMINAL
from attune_pg.store import notify

CLEAR = "\x1b[H\x1b[J"
HIDE_CURSOR, SHOW_CURSOR = "\x1b[?25l", "\x1b[?25h"
CHANNELS = ("attune_execution", "attune_work")


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(seconds, 0.0)
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"


def bar(done: int, total: int, width: int = 20) -> str:
    share = done / total if total else 1.0
    filled = round(share * width)
    return f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total}"


def _clip(line: str, width: int) -> str:
    return line if len(line) <= width else line[: max(width - 1, 1)] + "…"


def render_all(rows: list[dict[str, Any]], now: datetime, limit: int) -> list[str]:
    lines = [f"attune-pg watch: {len(rows)} live executions  {now:%H:%M:%S}", ""]
    if not rows:
        return [*lines, "(no live executions)"]
    header = f"{'ID':>8}  {'WORKFLOW':<32} {'STATUS':<10} {'AGE':>8}  {'TASKS':>9}  FAILED"
    lines.append(header)
    for r in rows:
        tasks = f"{r['done']}/{r['tasks']}"
        lines.append(
            f"{r['id']:>8}  {r['workflow_ref'][:32]:<32} {r['status']:<10} {_age(r['age']):>8}"
            f"  {tasks:>9}  {r['failed'] or ''}"
        )
    if len(rows) >= limit:
        lines.append(f"(newest {limit} shown: --limit N for more)")
    return lines


def render_one(head: dict[str, Any], tasks: list[dict[str, Any]], now: datetime) -> list[str]:
    lines = [
        f"execution {head['id']}  {head['workflow_ref']}  {head['status']}"
        f"  {_age(head['age'])}  trace {head['trace_id'] or '-'}",
        "",
    ]
    if not tasks:
        lines.append("(no tasks yet)")
    for t in tasks:
        name = t["task_name"] if t["iteration"] == 1 else f"{t['task_name']}#{t['iteration']}"
        line = f"  {name[:28]:<28} {t['status']:<10}"
        if t["items_total"] is not None:
            line += f" {bar(t['items_done'], t['items_total'])}"
            if t["items_failed"]:
                line += f" ({t['items_failed']} failed)"
        if t["running"]:
            line += f"  {t['running']} running"
        if (t["attempts"] or 1) > 1:
            line += f"  attempt {t['attempts']}"
        if t["error_message"]:
            line += f"  {t['error_message']}"
        lines.append(line)
    if head["status"] in WORKFLOW_TERMINAL:
        lines += ["", f"execution {head['id']} {head['status']} in {_age(head['age'])}"]
        if head["error_message"]:
            lines.append(f"error: {head['error_message']}")
    lines.append("")
    lines.append(
        f"{now:%H:%M:%S}" + ("" if head["status"] in WORKFLOW_TERMINAL else "  Ctrl-C to quit")
    )
    return lines


@click.command()
@click.argument("execution_id", type=int, required=False)
@click.option("--once", is_flag=True, help="Print one frame and exit.")
@click.option(
    "--interval",
    type=click.FloatRange(min=0.1),
    default=1.0,
    show_default=True,
    help="Redraw at least this often (seconds), notifications or not.",
)
@click.option("--limit", type=click.IntRange(min=1), default=30, show_default=True)
@dsn_option
@errors_to_exit
def watch(
    execution_id: int | None, once: bool, interval: float, limit: int, dsn: str | None
) -> None:
    """Follow live executions, or the tasks of execution ID, as they change."""
    from attune_pg.store import observe

    tty = sys.stdout.isatty()
    out = sys.stdout
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    # Ctrl-C ends it at once: as a KeyboardInterrupt in the middle of a query, psycopg would
    # first cancel the query and wait for that (up to 10 s).
    signal.signal(signal.SIGINT, lambda *_: sys.exit(0))
    with connection(dsn) as conn:
        notify.listen(conn, CHANNELS)
        last: list[str] | None = None
        if tty and not once:
            out.write(HIDE_CURSOR)
        try:
            while True:
                now = datetime.now().astimezone()
                finished = None
                if execution_id is None:
                    frame = render_all(observe.live_executions(conn, limit), now, limit)
                else:
                    head = observe.execution_header(conn, execution_id)
                    if head is None:
                        raise NotFoundError(f"execution {execution_id} does not exist")
                    frame = render_one(head, observe.execution_tasks(conn, execution_id), now)
                    if head["status"] in WORKFLOW_TERMINAL:
                        finished = head["status"]
                width = shutil.get_terminal_size((120, 40)).columns
                frame = [_clip(line, width) for line in frame]
                if tty:
                    out.write(CLEAR + "\n".join(frame) + "\n")
                elif frame[:-1] != (last or [])[:-1]:  # the clock line alone is no change
                    out.write(("\n" if last else "") + "\n".join(frame) + "\n")
                out.flush()
                last = frame
                if finished is not None:
                    sys.exit(0 if finished == "succeeded" else 1)
                if once:
                    return
                _wait(conn, interval)
        except KeyboardInterrupt:
            pass
        finally:
            if tty and not once:
                out.write(SHOW_CURSOR)
                out.flush()


def _wait(conn: Any, interval: float) -> None:
    """Until a notification (then coalesce the burst for 0.1 s) or `interval` passes."""
    deadline = time.monotonic() + interval
    for _ in conn.notifies(timeout=interval, stop_after=1):
        break
    rest = min(0.1, deadline - time.monotonic())
    if rest > 0:
        for _ in conn.notifies(timeout=rest):
            pass


def register(group: click.Group) -> None:
    group.add_command(watch)
