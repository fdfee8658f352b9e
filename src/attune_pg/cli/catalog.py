"""`attune-pg packs …` and `attune-pg workflows …`: the catalogue of packs and workflows.

Registration reports one line per pack on stdout; with `--skip-invalid` each invalid file
gets one line (`file:line: field: message`) on stderr, and the command exits 3 after the
valid files were registered. Exit codes come from the error tree (errors.py).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import click

from attune_pg import packs
from attune_pg.cli.common import connection, dsn_option, errors_to_exit, table, to_json
from attune_pg.cli.progress import Stages, progress_option
from attune_pg.errors import SkippedInvalid, SpecError
from attune_pg.spec.loader import load_workflow_file
from attune_pg.spec.yaml_lines import MAX_BYTES
from attune_pg.store import catalog, read


class _Size(click.ParamType[int]):
    """`1MB`, `512KB`, `2000000` -> bytes."""

    name = "size"
    _RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmM]?)[bB]?\s*$")

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        match = self._RE.match(str(value))
        if not match:
            self.fail(f"{value!r} is not a size like 1MB, 512KB or 100000", param, ctx)
        scale = {"": 1, "k": 1024, "m": 1024 * 1024}[match[2].lower()]
        size = int(float(match[1]) * scale)
        if size <= 0:
            self.fail("the size must be positive", param, ctx)
        return size


def _registration_options(func: Any) -> Any:
    for option in reversed(
        [
            click.option(
                "--skip-invalid",
                is_flag=True,
                help="Register the valid files and report each invalid one (exit 3),"
                " instead of all or nothing.",
            ),
            click.option(
                "--max-file-size",
                "max_file_size",
                type=_Size(),
                default=MAX_BYTES,
                show_default="1MB",
                help="Refuse files larger than this.",
            ),
        ]
    ):
        func = option(func)
    return func


def _report(result: packs.Registration) -> None:
    for pack in result.packs:
        click.echo(pack.summary())
    for ref in result.unregistered:
        click.echo(f"unregistered pack {ref} (its directory is gone)")
    for warning in result.warnings:
        click.echo(f"warning: {warning}", err=True)
    for error in result.invalid:
        click.echo(f"invalid: {error}", err=True)
    if result.invalid:
        count = len(result.invalid)
        raise SkippedInvalid(
            f"{count} invalid file{'s' if count > 1 else ''} skipped"
            " (their registered versions, if any, are kept); the valid ones were registered"
        )


@click.group(name="packs")
def packs_group() -> None:
    """Register, list, sync and unregister packs of workflows and actions."""


@packs_group.command("register")
@click.argument("path", type=click.Path(exists=True, file_okay=False, path_type=Path))
@_registration_options
@click.option(
    "--no-update",
    is_flag=True,
    help="Only add: a registered definition whose file changed is an error, and files"
    " that disappeared stay registered.",
)
@progress_option
@dsn_option
@errors_to_exit
def packs_register(
    path: Path,
    skip_invalid: bool,
    max_file_size: int,
    no_update: bool,
    progress: bool | None,
    dsn: str | None,
) -> None:
    """Validate and register the pack at PATH (or every pack under PATH).

    All or nothing by default. Files whose content is unchanged since they were last
    registered are skipped; definitions whose file disappeared are unregistered.
    """
    stages = Stages(progress)
    options = packs.Options(
        skip_invalid=skip_invalid,
        update=not no_update,
        max_file_bytes=max_file_size,
        on_progress=stages,
    )
    with connection(dsn) as conn:
        try:
            result = packs.register(conn, path, options)
        finally:
            stages.close()
    _report(result)


@packs_group.command("sync")
@click.argument("path", type=click.Path(exists=True, file_okay=False, path_type=Path))
@_registration_options
@dsn_option
@errors_to_exit
def packs_sync(path: Path, skip_invalid: bool, max_file_size: int, dsn: str | None) -> None:
    """Make the registered packs match PATH: register what changed, unregister what was
    deleted (also whole packs registered from under PATH whose directory is gone)."""
    options = packs.Options(skip_invalid=skip_invalid, max_file_bytes=max_file_size, sync=True)
    with connection(dsn) as conn:
        result = packs.register(conn, path, options)
    _report(result)


@packs_group.command("watch")
@click.argument("path", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--interval", default=0.5, show_default=True, help="Seconds between scans.")
@click.option(
    "--max-file-size", "max_file_size", type=_Size(), default=MAX_BYTES, show_default="1MB"
)
@dsn_option
@errors_to_exit
def packs_watch(path: Path, interval: float, max_file_size: int, dsn: str | None) -> None:
    """Hot reload: keep the packs under PATH registered as their files change (`packs sync
    --skip-invalid` on every change), until SIGTERM or Ctrl-C."""
    import logging
    import signal
    import threading

    from attune_pg import db
    from attune_pg.packwatch import PackWatcher

    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s %(message)s")
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    resolved = db.resolve_dsn(dsn)
    with connection(resolved):
        pass  # the schema is applied (and the core pack registered) before watching
    PackWatcher(resolved, path, interval=interval, max_file_bytes=max_file_size).run(stopping)


@packs_group.command("unregister")
@click.argument("ref")
@click.option("--force", is_flag=True, help="Even if workflows of other packs call it.")
@dsn_option
@errors_to_exit
def packs_unregister(ref: str, force: bool, dsn: str | None) -> None:
    """Unregister pack REF: new starts of its workflows are refused; running executions
    finish on their snapshot; history stays readable."""
    with connection(dsn) as conn, conn.transaction():
        workflows = packs.unregister_pack(conn, ref, force=force)
    click.echo(f"unregistered pack {ref} ({len(workflows)} workflows)")


@packs_group.command("list")
@click.option("--all", "show_all", is_flag=True, help="Include unregistered packs.")
@click.option("--json", "as_json", is_flag=True)
@dsn_option
@errors_to_exit
def packs_list(show_all: bool, as_json: bool, dsn: str | None) -> None:
    """Registered packs."""
    with connection(dsn) as conn:
        rows = catalog.list_packs(conn, include_unregistered=show_all)
    if as_json:
        click.echo(to_json(rows))
        return
    columns = ["ref", "version", "actions", "workflows", "path"]
    table(rows, [*columns, "unregistered"] if show_all else columns)


@click.group(name="workflows")
def workflows_group() -> None:
    """List, show, validate, enable, disable and unregister workflow definitions."""


@workflows_group.command("list")
@click.option("--pack", default=None, help="Only this pack's workflows.")
@click.option("--tag", default=None, help="Only workflows with this tag.")
@click.option(
    "--enabled/--disabled", "enabled", default=None, help="Only enabled (or disabled) ones."
)
@click.option("--search", default=None, help="Text in the ref, label or description.")
@click.option("--json", "as_json", is_flag=True)
@dsn_option
@errors_to_exit
def workflows_list(
    pack: str | None,
    tag: str | None,
    enabled: bool | None,
    search: str | None,
    as_json: bool,
    dsn: str | None,
) -> None:
    """Registered workflows (filters combine)."""
    with connection(dsn) as conn:
        rows = catalog.list_workflows(conn, pack=pack, tag=tag, enabled=enabled, search=search)
    if as_json:
        click.echo(to_json(rows))
        return
    table(rows, ["ref", "version", "enabled", "tags", "label"])


@workflows_group.command("show")
@click.argument("ref")
@dsn_option
@errors_to_exit
def workflows_show(ref: str, dsn: str | None) -> None:
    """Print a registered workflow's source."""
    with connection(dsn) as conn:
        row = read.workflow(conn, ref)
    click.echo(f"# {row['ref']} {row['version']} ({row['source_file']})")
    click.echo(row["source"].rstrip())


@workflows_group.command("validate")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--max-file-size", "max_file_size", type=_Size(), default=MAX_BYTES, show_default="1MB"
)
@errors_to_exit
def workflows_validate(file: Path, max_file_size: int) -> None:
    """Check a workflow file offline (no database): syntax, schema and semantics."""
    from attune_pg.spec.linked import linked_graphs, links_workflow, load_linked_workflow
    from attune_pg.spec.loader import load_workflow_source, read_source
    from attune_pg.spec.packfiles import load_pack_workflow

    resolved = file.resolve()
    if resolved.parent.name == "actions":  # Attune's action file linking its workflow
        text = read_source(file, max_file_size)
        if links_workflow(text):
            owner = resolved.parent.parent.name
            spec = load_linked_workflow(file, owner, text, max_file_size)[0]
            click.echo(f"{file}: ok ({spec.ref}, {len(spec.all_tasks())} tasks)")
            return
    pack = resolved.parent.parent.name if resolved.parent.name == "workflows" else None
    if pack == "actions":  # actions/workflows/<x>.workflow.yaml: a graph
        actions = sorted(resolved.parent.parent.glob("*.y*ml"))
        if resolved in linked_graphs((f, read_source(f, max_file_size)) for f in actions):
            raise SpecError(
                "this workflow graph is linked by an action file (workflow_file:):"
                " validate that file",
                file=str(file),
            )
        owner = resolved.parent.parent.parent.name
        spec = load_pack_workflow(resolved, owner, read_source(file, max_file_size),
                                  max_file_size)[0]  # fmt: skip
        click.echo(f"{file}: ok ({spec.ref}, {len(spec.all_tasks())} tasks)")
        return
    if max_file_size == MAX_BYTES:
        spec = load_workflow_file(file, pack=pack)
    else:
        text = read_source(file, max_file_size)
        spec = load_workflow_source(text, file=str(file), pack=pack, max_bytes=max_file_size)[0]
    click.echo(f"{file}: ok ({spec.ref}, {len(spec.all_tasks())} tasks)")


@workflows_group.command("unregister")
@click.argument("ref")
@click.option("--force", is_flag=True, help="Even if other workflows nest it.")
@dsn_option
@errors_to_exit
def workflows_unregister(ref: str, force: bool, dsn: str | None) -> None:
    """Unregister workflow REF (its file stays: registering the pack brings it back)."""
    with connection(dsn) as conn, conn.transaction():
        packs.unregister_workflow(conn, ref, force=force)
    click.echo(f"unregistered workflow {ref}")


@workflows_group.command("enable")
@click.argument("ref")
@dsn_option
@errors_to_exit
def workflows_enable(ref: str, dsn: str | None) -> None:
    """Allow new starts of workflow REF."""
    with connection(dsn) as conn, conn.transaction():
        packs.set_enabled(conn, ref, True)
    click.echo(f"enabled {ref}")


@workflows_group.command("disable")
@click.argument("ref")
@dsn_option
@errors_to_exit
def workflows_disable(ref: str, dsn: str | None) -> None:
    """Refuse new starts of workflow REF (running executions carry on; it stays disabled
    when its pack is registered again)."""
    with connection(dsn) as conn, conn.transaction():
        packs.set_enabled(conn, ref, False)
    click.echo(f"disabled {ref}")


def register(group: click.Group) -> None:
    group.add_command(packs_group)
    group.add_command(workflows_group)
