"""The status guards written as literals in the named queries are legal moves of machine.py.

Named queries write status predicates as literals (so plans can use the partial
indexes); this is what keeps them from drifting from the state machine: for every
`UPDATE attune.<table> ... SET status = '<to>'`, each status the query requires of that
table's rows (`status = 'x'`, `status IN (...)`, on the row's alias or unqualified) must
be a legal source of a move to `<to>`.
"""

from __future__ import annotations

import re

import pytest

from attune_pg import machine
from attune_pg.store.queries import Q

ENTITIES: dict[str, machine.Entity] = {
    table: entity for entity, (table, _) in machine.TABLES.items()
}
_UPDATE = re.compile(r"UPDATE attune\.(\w+)(?:\s+(?:AS\s+)?(\w+))?\s+SET\s+status\s*=\s*'(\w+)'")
_GUARD = re.compile(r"(?<![\w.])(?:(\w+)\.)?status\s*(?:=|IN)\s*\(?\s*('\w+'(?:\s*,\s*'\w+')*)")


def _guarded_updates() -> list[tuple[str, machine.Entity, str, set[str]]]:
    found = []
    for name in Q.names():
        text = Q[name]
        for update in _UPDATE.finditer(text):
            table, alias, target = update.groups()
            if table not in ENTITIES:
                continue
            # This statement's predicates: up to its RETURNING or the next statement.
            where = re.split(r"\bRETURNING\b|\bUPDATE attune\.", text[update.end() :])[0]
            sources: set[str] = set()
            for qualifier, literals in _GUARD.findall(where):
                if qualifier in ("", alias):
                    sources.update(re.findall(r"'(\w+)'", literals))
            found.append((name, ENTITIES[table], target, sources))
    return found


GUARDED = _guarded_updates()


def test_the_guarded_writes_are_found() -> None:
    names = {name for name, *_ in GUARDED}
    # (Writes whose new status is a value, like task_finish's, are guarded by the
    # generated triggers alone.)
    assert {"task_claim", "task_hand_back", "task_hold", "task_release", "task_reap"} <= names
    assert {"execution_write", "execution_time_out", "child_pause"} <= names


def test_the_execution_write_closes_the_states_of_exactly_the_executions_that_ended() -> None:
    # execution_write cancels the pending task states of the executions it ends: its
    # literal list of ending statuses is the machine's terminal workflow statuses.
    ending = re.search(r"w\.status IN \(([^)]*)\)", Q.execution_write)
    assert ending is not None, Q.execution_write
    assert set(re.findall(r"'(\w+)'", ending[1])) == set(machine.WORKFLOW_TERMINAL)


def test_the_reap_closes_the_rows_of_exactly_the_executions_that_ended() -> None:
    # task_reap closes, not requeues, a dead worker's row whose execution has ended.
    ended = re.search(r"e\.status IN \(([^)]*)\) AS ended", Q.task_reap)
    assert ended is not None, Q.task_reap
    assert set(re.findall(r"'(\w+)'", ended[1])) == set(machine.WORKFLOW_TERMINAL)


@pytest.mark.parametrize(("name", "entity", "target", "sources"), GUARDED)
def test_guard_literals_are_legal_sources(
    name: str, entity: machine.Entity, target: str, sources: set[str]
) -> None:
    assert target in machine.states(entity), f"{name}: {target!r} is no {entity} status"
    illegal = sorted(s for s in sources if not machine.is_legal(entity, s, target))
    assert illegal == [], f"{name}: {entity} {illegal} -> {target!r} is not a legal move"
