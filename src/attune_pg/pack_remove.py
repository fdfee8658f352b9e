"""Take packs and workflows out of use: unregister (refused while registered workflows
call them, unless forced) and enable/disable. Each runs in the caller's transaction."""

from __future__ import annotations

import psycopg

from attune_pg.errors import InUseError, NotFoundError
from attune_pg.spec.automation import PackAutomation
from attune_pg.store import automation, catalog


def unregister_pack(conn: psycopg.Connection, ref: str, *, force: bool = False) -> list[str]:
    """Unregister a pack: its workflows can no longer be started, its actions no longer
    called by new registrations; running executions finish on their snapshot. Refused
    (SpecError) while workflows of other packs call it, unless `force`."""
    state = catalog.pack_state(conn, [ref]).get(ref)
    if state is None or state.retired:
        raise NotFoundError(f"pack {ref!r} is not registered")
    users = [
        (wref, called)
        for wref, pack, called in catalog.workflow_users(conn, _pack_refs(conn, ref))
        if pack != ref
    ]
    if users and not force:
        raise _in_use(f"pack {ref!r}", users)
    workflows = catalog.retire_pack(conn, ref)
    if automation.schema_present(conn):
        automation.register(conn, [PackAutomation(pack=ref)])  # its triggers, rules, policies
    catalog.notify_changed(conn, ref)
    return workflows


def unregister_workflow(conn: psycopg.Connection, ref: str, *, force: bool = False) -> None:
    """Unregister one workflow (its file stays; registering its pack again brings it back)."""
    if ref not in catalog.workflow_state(conn, [ref.split(".", 1)[0]]):
        raise NotFoundError(f"workflow {ref!r} is not registered")
    users = [(wref, called) for wref, _, called in catalog.workflow_users(conn, [ref], [ref])]
    if users and not force:
        raise _in_use(f"workflow {ref!r}", users)
    catalog.delete_workflows(conn, [ref])
    catalog.notify_changed(conn, ref.split(".", 1)[0])


def set_enabled(conn: psycopg.Connection, ref: str, enabled: bool) -> None:
    """Enable or disable starting a workflow (running executions are not affected)."""
    if not catalog.set_workflow_enabled(conn, ref, enabled):
        raise NotFoundError(f"workflow {ref!r} is not registered")


def _pack_refs(conn: psycopg.Connection, pack: str) -> list[str]:
    return [*catalog.action_state(conn, [pack]), *catalog.workflow_state(conn, [pack])]


def _in_use(what: str, users: list[tuple[str, str]]) -> InUseError:
    shown = ", ".join(f"{w} (calls {c})" for w, c in users[:3])
    more = f" and {len(users) - 3} more" if len(users) > 3 else ""
    return InUseError(
        f"{what} is used by registered workflows: {shown}{more};"
        " unregister or change those first, or pass --force"
    )
