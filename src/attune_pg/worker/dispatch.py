"""Run what a worker claimed: each row to its runner thread, or ended at once.

A row is claimed by the claim statement or created claimed by the worker's own
transaction (schema 0015); either way, once that transaction committed, each row either
runs (its secrets resolved just before) or ends without running: refused by a `cancel`
concurrency policy, quarantined for an input that does not decode, parked (an inquiry or
a nested workflow waits in the database, not in a thread), or failed for a secret that
cannot be resolved. Those endings are returned for the next advance.
"""

from __future__ import annotations

import logging

import psycopg

from attune_pg import automation
from attune_pg.errors import ActionError
from attune_pg.machine import TaskStatus
from attune_pg.secrets import Binding, resolve_secrets, token_keys
from attune_pg.store import decode, kv
from attune_pg.store.catalog import ActionCatalog
from attune_pg.store.claims import ClaimedTask
from attune_pg.store.fence import Finished
from attune_pg.worker.runner import TaskRunner, parks_as

log = logging.getLogger("attune_pg.worker")


def dispatch(
    conn: psycopg.Connection,
    claimed: list[ClaimedTask],
    actions: ActionCatalog,
    signing_key: bytes,
    runner: TaskRunner,
) -> list[Finished]:
    """Submit the claimed rows to `runner`; the ones that end without running."""
    ended: list[Finished] = []
    # What the claimed rows call, refreshing the catalogue once if one is new to it.
    actions.resolve({task.action_ref for task in claimed})
    for task in sorted(claimed, key=lambda t: t.id):
        log.debug(
            "claimed task %s (%s) of execution %s",
            task.id,
            task.task_name,
            task.workflow_execution_id,
        )
        park = parks_as(actions.get(task.action_ref))
        if task.refused is not None:
            # Over a `cancel` concurrency policy's threshold: ends canceled, never runs.
            automation.cancel_refused(conn, task.workflow_execution_id)
            ended.append(Finished(task, TaskStatus.CANCELED, None, task.refused))
            continue
        reason = decode.problem(task.input)
        if reason is not None:
            # Quarantine the one row: its task fails, the rest of the batch runs.
            error = {"type": "Quarantined", "message": f"task input: {reason}"}
            ended.append(Finished(task, TaskStatus.FAILED, None, error))
        elif park:
            # Inquiries and nested workflows wait in the database, not in a thread.
            ended.append(Finished(task, TaskStatus.WAITING, None, None, park))
        elif token_keys(task.input):
            # Secrets travel as tokens; the real values exist only for the action.
            try:
                binding = Binding(task.workflow_execution_id, task.task_name, signing_key)
                resolved, texts = resolve_secrets(task.input, kv.secret_lookup(conn), binding)
            except ActionError as exc:
                error = {"type": "ActionError", "message": str(exc)}
                ended.append(Finished(task, TaskStatus.FAILED, None, error))
                continue
            runner.submit(task, actions, resolved, texts)
        else:
            runner.submit(task, actions)
    return ended
