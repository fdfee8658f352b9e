"""The checks against known actions, usable on any spec (with or without its source)."""

from __future__ import annotations

from typing import Any

import pytest

from attune_pg.errors import SpecError
from attune_pg.spec.checks import check_actions, check_inputs, check_templates
from attune_pg.spec.loader import load_workflow_text
from attune_pg.spec.model import ActionSpec, WorkflowSpec
from attune_pg.spec.params import parameters_schema

PORT = parameters_schema(
    {
        "type": "object",
        "$defs": {"port": {"type": "integer", "minimum": 1}},
        "properties": {"port": {"$ref": "#/$defs/port"}, "host": {"type": "string"}},
        "required": ["host"],
    }
)
OPEN = {"type": "object", "properties": {"a": {"type": "string"}}}
ACTIONS = {
    "net.connect": ActionSpec(ref="net.connect", runner="builtin", parameters=PORT),
    "any.thing": ActionSpec(ref="any.thing", runner="builtin", parameters=OPEN),
}


def flow(tasks: str) -> WorkflowSpec:
    return load_workflow_text(f'label: x\nversion: "1"\ntasks:\n{tasks}', file="f.yaml", pack="p")


def error_of(wf: WorkflowSpec, actions: dict[str, ActionSpec] | None = None) -> str:
    with pytest.raises(SpecError) as info:
        check_inputs(wf, actions or ACTIONS)
    return str(info.value)


def test_templates_and_unknown_actions_are_not_judged_statically() -> None:
    wf = flow(
        "  - {name: a, action: net.connect, input: {host: h, port: '{{ parameters.p }}'}}\n"
        "  - {name: b, action: some.other, input: {whatever: 1}}\n"
        "  - {name: c, action: any.thing, input: {extra: 1, a: x}}\n"
    )
    check_inputs(wf, ACTIONS)


@pytest.mark.parametrize(
    ("input_", "message"),
    [
        (
            "{host: h, port: 0}",
            "f.yaml:4: tasks[0] (a).input.port: 0 is less than the minimum of 1",
        ),
        ("{port: 80}", "f.yaml:4: tasks[0] (a).input: missing required input 'host'"),
        ("{host: h, prot: 1}", "f.yaml:4: tasks[0] (a).input.prot: unknown input 'prot'"),
    ],
)
def test_input_problems_without_source_point_at_the_task(input_: str, message: str) -> None:
    # check_inputs without a Source (as on a stored snapshot): lines are the task's.
    wf = flow(f"  - name: a\n    action: net.connect\n    input: {input_}\n")
    assert error_of(wf).startswith(message)


def test_check_actions_suggests_a_close_ref() -> None:
    wf = flow("  - {name: a, action: net.conect}\n")
    with pytest.raises(
        SpecError, match=r"unknown action 'net\.conect' \(did you mean 'net\.connect'\?\)"
    ):
        check_actions(wf, set(ACTIONS))
    check_actions(wf, {"net.conect"})


def test_template_check_runs_on_snapshots_too() -> None:
    wf = flow("  - {name: a, action: x.y}\n")
    data: dict[str, Any] = wf.to_dict()
    data["tasks"][0]["when"] = "{{ oops( }}"
    with pytest.raises(SpecError, match=r"^f\.yaml:4: tasks\[0\] \(a\)\.when: template"):
        check_templates(WorkflowSpec.from_dict(data))
