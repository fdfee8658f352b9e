"""One rehearsal per construct of Attune's syntax (issue 8, item 1): a workflow as Attune
writes it, the mocked results of its tasks, the expected task sequence and output.

Driven through the loader (so the file must be accepted as written) and the
simulator (`conductor_sim`, which checks what SQL would check).
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Callable, Mapping
from typing import Any

import pytest

from attune_pg.errors import SpecError
from attune_pg.spec.loader import load_workflow_text
from tests.unit.conductor_sim import Outcome, Row, Sim, drain

Json = Any


def load(body: str) -> Any:
    text = textwrap.dedent(body)
    if "ref:" not in text:
        text = "ref: tests.flow\n" + text
    if "label:" not in text:
        text = 'label: flow\nversion: "1"\n' + text
    return load_workflow_text(text, file="flow.yaml")


def result(value: Json) -> Callable[[Row], Outcome]:
    return lambda row: Outcome("succeeded", value)


def rehearse(
    body: str,
    outcomes: Mapping[str, str | Callable[[Row], Outcome | str]] | None = None,
    parameters: dict[str, Json] | None = None,
    **kw: Any,
) -> Sim:
    sim = Sim(load(body), parameters, **kw)
    sim.start()
    drain(sim, outcomes)
    return sim


def sequence(sim: Sim) -> list[str]:
    """Tasks in the order their rows were created (each once)."""
    out: list[str] = []
    for row in sorted(sim.rows.values(), key=lambda r: r.id):
        if row.task_name not in out:
            out.append(row.task_name)
    return out


# ------------------------------------------------------------------ decision beside others

APPROVAL = """
    vars: {approval_granted: false}
    output_map: {granted: "{{ vars.approval_granted }}"}
    tasks:
      - name: approve
        action: core.any
        publish:
          - approval_granted: "{{ task.approve.result.approved }}"
        decision:
          - when: "{{ vars.approval_granted == true }}"
            next: deploy
          - default: cancel
        on_timeout: too_late
        on_complete: audit
      - {name: deploy, action: core.noop}
      - {name: cancel, action: core.noop}
      - {name: too_late, action: core.noop}
      - {name: audit, action: core.noop}
"""


@pytest.mark.parametrize(
    ("outcome", "ran", "status", "granted"),
    [
        (result({"approved": True}), ["approve", "deploy", "audit"], "succeeded", True),
        (result({"approved": False}), ["approve", "cancel", "audit"], "succeeded", False),
        # A timeout takes no branch: on_timeout and on_complete route it (handled).
        ("timed_out", ["approve", "too_late", "audit"], "succeeded", False),
    ],
)
def test_decision_with_publish_on_timeout_and_on_complete(
    outcome: Any, ran: list[str], status: str, granted: bool
) -> None:
    sim = rehearse(APPROVAL, {"approve": outcome})
    assert sequence(sim) == ran
    assert sim.status == status, sim.execution.error
    assert sim.execution.output == {"granted": granted}


def test_decision_task_failure_routes_through_on_failure() -> None:
    sim = rehearse(
        """
        tasks:
          - name: check
            action: core.any
            decision:
              - when: "{{ result().ok }}"
                next: good
              - default: bad
            on_failure: repair
          - {name: good, action: core.noop}
          - {name: bad, action: core.noop}
          - {name: repair, action: core.noop}
        """,
        {"check": "failed"},
    )
    assert sequence(sim) == ["check", "repair"]
    assert sim.status == "succeeded"


def test_decision_with_on_success_runs_both() -> None:
    sim = rehearse(
        """
        tasks:
          - name: check
            action: core.any
            on_success: notify
            decision:
              - when: "{{ result().n > 1 }}"
                next: big
              - default: small
          - {name: notify, action: core.noop}
          - {name: big, action: core.noop}
          - {name: small, action: core.noop}
        """,
        {"check": result({"n": 5})},
    )
    assert sorted(sequence(sim)) == ["big", "check", "notify"]


# ------------------------------------------------------------------ templates


def _value(expression: str, parameters: dict[str, Json] | None = None, **vars_: Json) -> Json:
    """Publish one expression from a task and return it (the workflow's output)."""
    body = f"""
        parameters:
          p: {{type: object, default: {{}}}}
        vars: {vars_!r}
        output_map: {{value: "{{{{ vars.v }}}}"}}
        tasks:
          - name: t
            action: core.noop
            publish:
              - v: {expression!r}
    """
    sim = rehearse(body, parameters={"p": parameters or {}})
    assert sim.status == "succeeded", sim.execution.error
    return sim.execution.output["value"]


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("{{ vars.flag ? 'rolled_back' : 'success' }}", "rolled_back"),
        ("{{ not vars.flag ? 'rolled_back' : 'success' }}", "success"),
        ("{{ vars.n > 3 ? 'big' : vars.n > 1 ? 'medium' : 'small' }}", "medium"),
        ("{{ [vars.flag ? 1 : 2, 3] }}", [1, 3]),
        ("{{ {'k': vars.flag ? 'y' : 'n'} }}", {"k": "y"}),
        ("state: {{ vars.flag ? 'on' : 'off' }}", "state: on"),
        ("{{ 'a?b:c' }}", "a?b:c"),
    ],
)
def test_ternary(expression: str, expected: Json) -> None:
    assert _value(expression, flag=True, n=2) == expected


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("{{ vars.r | slice(start=1) }}", ["b", "c", "d"]),
        ("{{ vars.r | slice(start=1, end=3) }}", ["b", "c"]),
        ("{{ vars.r | slice(2) }}", [["a", "b"], ["c", "d"]]),  # Jinja's columns
        ("{{ vars.r | batch(size=3) }}", [["a", "b", "c"], ["d"]]),
        ("{{ vars.hosts | filter(enabled=true) | map(attribute='name') | list }}", ["x"]),
        ("{{ vars.hosts | filter(attribute='name', value='y') | length }}", 1),
        ("{{ vars.r | append('e') }}", ["a", "b", "c", "d", "e"]),
        ("{{ vars.r | prepend('z') | first }}", "z"),
        ("{{ 'host' | prepend('https://') | append('/logs') }}", "https://host/logs"),
        ("{{ vars.r | join(', ') }}", "a, b, c, d"),
        ("{{ vars.r | join(sep='-') }}", "a-b-c-d"),
        ("{{ vars.r | first }}", "a"),
        ("{{ vars.hosts | map(attribute='name') | list }}", ["x", "y"]),
        ("{{ vars.r | length }}", 4),
        ("{{ workflow.r | length }}", 4),  # Attune's workflow.* is vars.*
    ],
)
def test_filters_as_attune_writes_them(expression: str, expected: Json) -> None:
    hosts = [{"name": "x", "enabled": True}, {"name": "y", "enabled": False}]
    assert _value(expression, r=["a", "b", "c", "d"], hosts=hosts) == expected


def test_keyword_filter_errors_name_the_filter() -> None:
    sim = rehearse(
        """
        tasks:
          - name: t
            action: core.noop
            publish:
              - v: "{{ [1, 2] | batch(size=0) }}"
        """
    )
    assert sim.status == "failed"
    assert "batch needs a size of at least 1" in sim.execution.error["message"]


def test_system_timestamp_is_integer_epoch_seconds() -> None:
    # Attune's pipeline: publish start_time, later `system.timestamp - vars.start_time`.
    sim = rehearse(
        """
        vars: {start_time: null}
        output:
          type: object
          properties: {duration_seconds: {type: integer}, start: {type: integer}}
        output_map:
          duration_seconds: "{{ system.timestamp - vars.start_time }}"
          start: "{{ vars.start_time }}"
        tasks:
          - name: start_workflow
            action: core.noop
            publish:
              - start_time: "{{ system.timestamp }}"
            on_success: later
          - {name: later, action: core.noop}
        """,
        now=1_700_000_000.75,
    )
    assert sim.status == "succeeded", sim.execution.error
    output = sim.execution.output
    # The simulator's clock moves 1 s per event: start_workflow ends at +2.75 s.
    assert output["start"] == 1_700_000_002  # the clock at that advance, whole seconds
    assert isinstance(output["duration_seconds"], int) and output["duration_seconds"] >= 1


def test_now_and_uuid_come_from_the_conductor() -> None:
    body = """
        vars:
          - started: null
          - ids: []
        output_map:
          started: "{{ vars.started }}"
          epoch: "{{ now(timestamp=true) }}"
          ids: "{{ vars.ids }}"
          dir: "{{ vars.dir }}"
        tasks:
          - name: initialize
            action: core.noop
            publish:
              - started: "{{ now() }}"
              - dir: "/tmp/attune-pack-install-{{ uuid() }}"
              - ids: "{{ [uuid(), uuid()] }}"
    """
    first = rehearse(body, now=1_700_000_000.0)
    again = rehearse(body, now=1_700_000_000.0)
    assert first.status == "succeeded", first.execution.error
    out = first.execution.output
    assert out["started"] == "2023-11-14T22:13:22+00:00"  # the DB clock of that advance
    assert out["epoch"] == 1_700_000_002
    uuid_re = r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"
    assert re.fullmatch(f"/tmp/attune-pack-install-{uuid_re}", out["dir"])
    assert len(set([*out["ids"], out["dir"][-36:]])) == 3  # distinct within an advance
    assert again.execution.output == out  # deterministic: same snapshot, same ids
    other = rehearse(body, now=1_700_000_000.0, execution_id=2)
    assert other.execution.output["ids"] != out["ids"]


# ------------------------------------------------------------------ later syntax


def test_top_level_name_and_vars_as_a_list() -> None:
    wf = load(
        """
        name: install_packs
        ref: core.install_packs
        label: "Install Packs"
        version: "1.0.0"
        vars:
          - temp_dir: null
          - downloaded_packs: []
        tasks:
          - {name: initialize, action: core.noop}
        """
    )
    assert wf.ref == "core.install_packs"
    assert wf.vars == {"temp_dir": None, "downloaded_packs": []}
    with pytest.raises(SpecError, match="name 'other' must be 'install_packs'"):
        load(
            """
            name: other
            ref: core.install_packs
            tasks: [{name: a, action: core.noop}]
            """
        )
    with pytest.raises(SpecError, match="variable 'x' is given twice"):
        load("vars: [{x: 1}, {x: 2}]\ntasks: [{name: a, action: core.noop}]\n")


def test_parameters_with_inline_required_secret_and_schema_keywords() -> None:
    body = """
        parameters:
          packs:
            type: array
            items: {type: string}
            minItems: 1
            required: true
          timeout:
            type: integer
            default: 1800
            minimum: 300
            maximum: 7200
          token: {type: string, secret: true}
        output_map: {n: "{{ parameters.packs | length }}", t: "{{ parameters.timeout }}"}
        tasks:
          - {name: a, action: core.noop}
    """
    ok = rehearse(body, parameters={"packs": ["slack@1.0.0"]})
    assert ok.status == "succeeded", ok.execution.error
    assert ok.execution.output == {"n": 1, "t": 1800}
    for bad, message in (
        ({}, "missing required parameter 'packs'"),
        ({"packs": []}, "parameter 'packs': must not be empty"),
        ({"packs": ["a"], "timeout": 10}, "10 is less than the minimum of 300"),
    ):
        sim = rehearse(body, parameters=bad)
        assert sim.status == "failed"
        assert message in sim.execution.error["message"], sim.execution.error


def test_identity_login_is_the_starting_login() -> None:
    sim = rehearse(
        """
        output_map: {who: "{{ system.identity.login }}"}
        tasks:
          - {name: a, action: core.noop}
        """
    )
    assert sim.execution.output == {"who": "tester"}  # Execution.login, loaded by the store
