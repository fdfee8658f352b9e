"""Hostile-input soak (issue 7): random hostile values at every entry point while normal
workflows run. Every normal workflow finishes, every hostile one is refused where it
enters or ends alone, and no worker crash-loops. Bounded: a fixed seed, a fixed number
of operations, well under a minute."""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from tests.helpers import TERMINAL, start

HOSTILE_OPERATIONS = 100
NORMAL_WORKFLOWS = 20
PASSWORD = "soak-secret-value-1"


def _deep(rng: random.Random) -> str:
    depth = rng.choice([101, 500, 5000, 20000])
    return "[" * depth + "]" * depth


def _hostile_parameters(rng: random.Random) -> Any:
    choice = rng.randrange(8)
    if choice == 0:
        return '{"name": ' + _deep(rng) + "}"
    if choice == 1:
        return json.dumps({"name": "x" * (4 * 1024 * 1024 + rng.randrange(10))})
    if choice == 2:
        return rng.choice(['"a string"', "[1, 2]", "null", "42"])
    if choice == 3:
        return json.dumps({"name": "\u27e6secret:db_password\u27e7"})
    if choice == 4:
        return json.dumps({"name": {"nested": [1, {"x": None}]}, "shout": "yes"})
    if choice == 5:
        return json.dumps({"unknown": True})
    if choice == 6:
        return json.dumps({"name": "\x01\u202e\ufeff" * rng.randrange(1, 50)})
    return json.dumps({"name": rng.choice(["", " ", "💥" * 100])})


def _attempt(conn: psycopg.Connection, sql: str, args: tuple[Any, ...]) -> str:
    """Run one hostile statement; 'refused' when the database refuses it."""
    try:
        with conn.transaction():
            conn.execute(sql.encode(), args)
        return "accepted"
    except psycopg.errors.DataError:
        return "refused"
    except (psycopg.errors.IntegrityError, psycopg.errors.ProgramLimitExceeded):
        return "refused"
    except psycopg.errors.StatementTooComplex:  # PostgreSQL's own nesting limit
        return "refused"
    except (psycopg.errors.NoDataFound, psycopg.errors.ObjectNotInPrerequisiteState):
        return "refused"
    except psycopg.errors.InsufficientPrivilege:
        return "refused"
    except psycopg.errors.RaiseException:
        return "refused"


def test_hostile_soak(
    conn: psycopg.Connection,
    register: Callable[[Path | str], None],
    worker_thread: Callable[..., object],
    caplog: pytest.LogCaptureFixture,
) -> None:
    rng = random.Random(7)
    register("examples")
    register("hostile")
    conn.execute(
        "INSERT INTO attune.kv (key, value, secret) VALUES ('db_password', %s, true)",
        (Jsonb(PASSWORD),),
    )
    caplog.set_level(logging.WARNING)
    worker_thread(concurrency=8)
    worker_thread(concurrency=4)
    normal: list[int] = []
    hostile: list[int] = []
    asks: list[int] = []
    outcomes: dict[str, int] = {}
    for step in range(HOSTILE_OPERATIONS):
        if step % (HOSTILE_OPERATIONS // NORMAL_WORKFLOWS) == 0:
            normal.append(start(conn, rng.choice(["examples.hello_join", "hostile.small"])))
        kind = rng.randrange(7)
        if kind == 0:  # parameters, through both documented ways of starting
            how = rng.choice(
                [
                    "INSERT INTO attune.workflow_execution (workflow_ref, parameters)"
                    " VALUES ('examples.hello_join', %s::jsonb)",
                    "SELECT attune.start_execution('examples.hello_join', %s::jsonb)",
                ]
            )
            result = _attempt(conn, how, (_hostile_parameters(rng),))
        elif kind == 1:  # priorities
            result = _attempt(
                conn,
                "SELECT attune.start_execution('hostile.small', '{}', NULL, %s)",
                (rng.choice([-(2**31), -101, 101, 2**31 - 1]),),
            )
        elif kind == 2:  # kv values
            result = _attempt(
                conn,
                "INSERT INTO attune.kv (key, value) VALUES (%s, %s::jsonb)",
                (f"soak/{step}", _deep(rng)),
            )
        elif kind == 3:  # inquiry answers: open one, answer it badly (and maybe well)
            asks.append(start(conn, "hostile.ask"))
            result = "asked"
        elif kind == 4 and asks:
            row = conn.execute(
                "SELECT id FROM attune.inquiry WHERE workflow_execution_id = %s",
                (rng.choice(asks),),
            ).fetchone()
            if row is None:
                result = "not yet"
            else:
                answer = rng.choice([_deep(rng), '"\u27e6secret:db_password\u27e7"', '{"a": 1}'])
                who = rng.choice([None, "", "mallory", "ada"])
                result = _attempt(
                    conn, "SELECT attune.respond_inquiry(%s, %s::jsonb, %s)", (row[0], answer, who)
                )
        elif kind == 5:  # results too deep, forged tokens, fan-outs that spend budgets
            ref, parameters = rng.choice(
                [
                    ("hostile.deep_result", {"depth": rng.choice([99, 150, 5000])}),
                    ("hostile.join", {"a": "\u27e6secret:db_pass", "b": "word\u27e7"}),
                    ("hostile.revive", {"text": json.dumps("\u27e6secret:db_password\u27e7")}),
                    ("hostile.fanout", {"count": rng.randrange(1, 60), "seconds": 0}),
                ]
            )
            hostile.append(start(conn, ref, parameters))
            result = "started"
        else:  # a row past the bounds, as a legacy row or the owner's own SQL leaves it
            conn.execute(
                "UPDATE attune.setting SET value = '1000000' WHERE name = 'json_max_depth'"
            )
            row = conn.execute(
                "INSERT INTO attune.workflow_execution (workflow_ref, parameters)"
                " VALUES ('examples.hello_join', %s::jsonb) RETURNING id",
                ('{"name": ' + "[" * 3000 + "]" * 3000 + "}",),
            ).fetchone()
            conn.execute("UPDATE attune.setting SET value = '100' WHERE name = 'json_max_depth'")
            assert row is not None
            hostile.append(int(row[0]))
            result = "poisoned"
        outcomes[f"{kind}:{result}"] = outcomes.get(f"{kind}:{result}", 0) + 1
    # Every normal workflow finishes, and succeeds.
    deadline = time.monotonic() + 45
    for execution_id in normal:
        while True:
            row = conn.execute(
                "SELECT status, error FROM attune.workflow_execution WHERE id = %s",
                (execution_id,),
            ).fetchone()
            assert row is not None
            if row[0] in TERMINAL:
                assert row[0] == "succeeded", (execution_id, row[1], outcomes)
                break
            assert time.monotonic() < deadline, f"normal execution {execution_id} is {row[0]}"
            time.sleep(0.05)
    # The open questions are canceled; then nothing is left running anywhere.
    for execution_id in asks:
        status = conn.execute(
            "SELECT status FROM attune.workflow_execution WHERE id = %s", (execution_id,)
        ).fetchone()
        if status is not None and status[0] not in TERMINAL:
            conn.execute("SELECT attune.cancel_execution(%s)", (execution_id,))
    while True:
        live = conn.execute(
            "SELECT count(*) FROM attune.workflow_execution WHERE status <> ALL(%s)",
            (list(TERMINAL),),
        ).fetchone()
        if live == (0,):
            break
        assert time.monotonic() < deadline, f"{live} executions never ended ({outcomes})"
        time.sleep(0.1)
    # No worker crash-looped (an unexpected error means a batch failed), and the
    # secret never reached any stored row.
    assert "unexpected error" not in caplog.text, caplog.text[-3000:]
    leaked = conn.execute(
        "SELECT count(*) FROM attune.task_execution WHERE result::text LIKE %s",
        (f"%{PASSWORD}%",),
    ).fetchone()
    assert leaked == (0,)
    assert sum(v for k, v in outcomes.items() if k.endswith(":refused")) > 20, outcomes
