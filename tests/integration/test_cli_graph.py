"""`attune-pg workflows graph` and `executions graph` against a real database."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import click
import psycopg
import pytest
from click.testing import CliRunner

from attune_pg import packs
from attune_pg.cli import cli
from attune_pg.cli.graph import register as register_graph
from attune_pg.graph import TIMES
from attune_pg.store import read
from tests.helpers import start, wait_done
from tests.helpers import tasks as helper_tasks

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

_workflows = cli.commands["workflows"]
assert isinstance(_workflows, click.Group)
if "graph" not in _workflows.commands:  # until cli/main.py registers it
    register_graph(cli)

GREEN = "fill:#d4edda"


def invoke(dsn: str, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, [*args, "--dsn", dsn])
    return result.exit_code, result.stdout, result.stderr


def styles(mermaid: str) -> dict[str, str]:
    """Node id -> its `style` line's properties."""
    return {
        line.split()[1]: line.split()[2]
        for line in mermaid.splitlines()
        if line.startswith("    style ")
    }


def test_workflows_graph_draws_the_registered_definition(
    dsn: str, register: Callable[[Path | str], None]
) -> None:
    register("examples")
    code, out, err = invoke(dsn, "workflows", "graph", "examples.hello_join")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "flowchart TD"
    assert "    start_node --> t0_greet" in lines
    assert '    t2_pick_style --> |"1: parameters.shout"| t3_shout' in lines
    assert '    t2_pick_style --> |"default"| t4_whisper' in lines
    assert '    t5_summarize["summarize<br/>core.echo<br/>join: 2"]' in lines
    assert list(styles(out)) == ["start_node"]  # nothing ran: nothing coloured

    code, out, err = invoke(dsn, "workflows", "graph", "examples.hello_join", "--format", "dot")
    assert code == 0, err
    assert out.startswith('digraph "examples.hello_join 1.0.0" {\n') and out.endswith("}\n")
    assert '    t2_pick_style -> t4_whisper [label="default"];' in out.splitlines()

    code, out, err = invoke(dsn, "workflows", "graph", "examples.hello_join", "--format", "svg")
    assert code == 0, err
    drawn = ET.fromstring(out)
    names = {g.get("data-task") for g in drawn.iter("{http://www.w3.org/2000/svg}g")}
    assert {"greet", "pick_style", "shout", "whisper", "summarize"} <= names


def test_workflows_graph_unknown_ref_is_one_clear_line(dsn: str) -> None:
    code, _, err = invoke(dsn, "workflows", "graph", "nope.never")
    assert code == 4 and err.strip() == "error: workflow 'nope.never' is not registered"
    code, _, err = invoke(dsn, "workflows", "graph", "nope.never", "--format", "png")
    assert code == 2 and "png" in err


def test_executions_graph_colours_what_ran(
    dsn: str,
    conn: psycopg.Connection,
    register: Callable[[Path | str], None],
    worker_thread: Callable[..., object],
) -> None:
    register("examples")
    worker_thread()
    code, out, err = invoke(dsn, "run", "examples.hello_join", "-p", "name=Bob", "--wait")
    assert code == 0, out + err
    execution_id = out.split()[1]
    # Editing the registered workflow afterwards does not change the execution's drawing.
    conn.execute(
        "UPDATE attune.workflow_definition SET definition = jsonb_set(definition,"
        " '{tasks,0,action}', '\"core.noop\"') WHERE ref = 'examples.hello_join'"
    )
    conn.commit()

    code, out, err = invoke(dsn, "executions", "graph", execution_id)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "flowchart TD"
    assert '    t0_greet["greet<br/>core.echo<br/>(succeeded)"]' in lines
    assert '    t3_shout["shout<br/>core.echo"]' in lines  # the branch not taken
    style = styles(out)
    for ran in ("t0_greet", "t1_count_letters", "t2_pick_style", "t4_whisper", "t5_summarize"):
        assert style[ran].startswith(GREEN), ran
    assert "t3_shout" not in style

    code, out, err = invoke(dsn, "executions", "graph", execution_id, "--format", "dot")
    assert code == 0, err
    dot = {line.split(" [", 1)[0].strip(): line for line in out.splitlines() if " [" in line}
    assert 'fillcolor="#d4edda"' in dot["t4_whisper"] and "(succeeded)" in dot["t4_whisper"]
    assert "fillcolor" not in dot["t3_shout"] and "(succeeded)" not in dot["t3_shout"]

    code, out, _ = invoke(dsn, "workflows", "graph", "examples.hello_join")
    assert code == 0 and '    t0_greet["greet<br/>core.noop"]' in out.splitlines()


def test_executions_graph_unknown_execution(dsn: str) -> None:
    code, _, err = invoke(dsn, "executions", "graph", "999999")
    assert code == 4 and err.strip() == "error: execution 999999 does not exist"


def test_a_with_items_task_shows_its_most_telling_item_status(
    dsn: str,
    conn: psycopg.Connection,
    tmp_path: Path,
    worker_thread: Callable[..., object],
) -> None:
    pack = tmp_path / "graphs"
    (pack / "workflows").mkdir(parents=True)
    (pack / "pack.yaml").write_text('ref: graphs\nlabel: graphs\nversion: "1.0.0"\n')
    (pack / "workflows" / "items.yaml").write_text(
        'label: items\nversion: "1.0.0"\ntasks:\n'
        "  - name: each\n    action: core.local\n"
        '    with_items: \'{{ ["0", "1", "0"] }}\'\n'
        '    input: {cmd: ["test", "{{ item }}", "=", "0"]}\n'
        '    next: [{when: "{{ failed() }}", do: after}]\n'
        "  - name: after\n    action: core.noop\n"
    )
    packs.register(conn, pack)
    worker_thread()
    execution_id = start(conn, "graphs.items")
    wait_done(conn, execution_id)
    rows = [t for t in helper_tasks(conn, execution_id) if t["task_name"] == "each"]
    assert sorted(t["status"] for t in rows) == ["failed", "succeeded", "succeeded"]
    assert read.latest_task_statuses(conn, execution_id) == {"each": "failed", "after": "succeeded"}

    code, out, err = invoke(dsn, "executions", "graph", str(execution_id))
    assert code == 0, err
    assert f'    t0_each[["each {TIMES}items<br/>core.local<br/>(failed)"]]' in out.splitlines()
    assert styles(out)["t0_each"].startswith("fill:#f8d7da")
