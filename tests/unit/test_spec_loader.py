"""Good workflows, in every syntax the language allows, normalise to the canonical model."""

from __future__ import annotations

import json
from pathlib import Path
from textwrap import dedent

import pytest
from jsonschema import Draft202012Validator

from attune_pg.errors import SpecError
from attune_pg.spec.checks import check_workflow
from attune_pg.spec.loader import load_workflow_file, load_workflow_text, workflow_schema
from attune_pg.spec.model import RetryPolicy, TaskSpec, Transition, WorkflowSpec

OK = "{{ succeeded() }}"
KO = "{{ failed() }}"


def load(body: str, **kw: str) -> WorkflowSpec:
    head = 'label: test\nversion: "1"\n'
    return load_workflow_text(head + dedent(body), file=kw.get("file", "t.yaml"), pack="p")


def test_schema_file_is_valid_draft_2020_12() -> None:
    Draft202012Validator.check_schema(workflow_schema())
    assert workflow_schema()["$schema"].endswith("2020-12/schema")


def test_design_example_loads_completely() -> None:
    wf = load_workflow_text(
        dedent(
            """\
            ref: examples.deploy
            label: Deploy an app
            description: Build, deploy, verify.
            version: "1.0.0"
            parameters:
              app: {type: string, required: true}
              regions: {type: array, items: {type: string}, default: [us-east-1]}
            output: {type: object, properties: {urls: {type: array}}}
            vars: {deployment_id: null, healthy: []}
            output_map: {urls: "{{ vars.healthy }}"}
            tags: [deploy]
            timeout: 3600
            cancellation_policy: cancel_running
            tasks:
              - name: build
                action: core.echo
                input: {message: "{{ parameters.app }}"}
                retry: {count: 3, delay: 2, backoff: exponential, max_delay: 30, jitter: 0.1,
                        on_error: "{{ error().retryable }}"}
                timeout: 600
                delay: 5
                next:
                  - when: "{{ succeeded() and result().healthy }}"
                    publish: [{image: "{{ result().image }}"}]
                    do: [deploy, audit]
                  - when: "{{ failed() }}"
                    do: rollback
              - name: deploy
                action: core.noop
                with_items: "{{ parameters.regions }}"
                batch_size: 2
                concurrency: 4
              - {name: audit, action: core.noop}
              - {name: rollback, action: core.noop}
            """
        ),
        file="deploy.yaml",
    )
    assert wf.ref == "examples.deploy"
    assert (wf.label, wf.version, wf.description) == (
        "Deploy an app",
        "1.0.0",
        "Build, deploy, verify.",
    )
    assert wf.parameters["required"] == ["app"]
    assert wf.output == {"type": "object", "properties": {"urls": {"type": "array"}}}
    assert wf.vars == {"deployment_id": None, "healthy": []}
    assert wf.output_map == {"urls": "{{ vars.healthy }}"}
    assert wf.tags == ("deploy",)
    assert wf.timeout == 3600.0 and isinstance(wf.timeout, float)
    assert wf.cancellation_policy == "cancel_running"
    assert wf.source_file == "deploy.yaml"
    build = wf.task("build")
    assert build == TaskSpec(
        name="build",
        action="core.echo",
        input={"message": "{{ parameters.app }}"},
        retry=RetryPolicy(3, 2.0, "exponential", 30.0, 0.1, "{{ error().retryable }}"),
        timeout=600.0,
        delay=5.0,
        next=(
            Transition(
                "{{ succeeded() and result().healthy }}",
                (("image", "{{ result().image }}"),),
                ("deploy", "audit"),
            ),
            Transition(KO, (), ("rollback",)),
        ),
        line=15,
    )
    deploy = wf.task("deploy")
    assert (deploy.with_items, deploy.batch_size, deploy.concurrency) == (
        "{{ parameters.regions }}",
        2,
        4,
    )
    assert [t.name for t in wf.start_tasks()] == ["build"]


def test_shorthands_fold_into_next_in_document_order() -> None:
    wf = load(
        """\
        tasks:
          - name: a
            action: core.noop
            on_failure: fix
            on_complete: [log, notify]
            on_success: b
            on_timeout: fix
          - {name: b, action: core.noop}
          - {name: fix, action: core.noop}
          - {name: log, action: core.noop}
          - {name: notify, action: core.noop}
        """
    )
    assert wf.task("a").next == (
        Transition(KO, (), ("fix",)),
        Transition(None, (), ("log", "notify")),
        Transition(OK, (), ("b",)),
        Transition("{{ timed_out() }}", (), ("fix",)),
    )
    assert not wf.task("a").first_match


@pytest.mark.parametrize(
    ("publish", "pairs"),
    [
        ("image", (("image", "{{ result() }}"),)),
        ('{x: 1, y: "{{ result().y }}"}', (("x", 1), ("y", "{{ result().y }}"))),
        ("[{y: 2}, {x: 1}]", (("y", 2), ("x", 1))),
    ],
)
def test_publish_forms_attach_to_on_success(
    publish: str, pairs: tuple[tuple[str, object], ...]
) -> None:
    wf = load(
        f"""\
        tasks:
          - name: a
            action: core.noop
            publish: {publish}
            on_success: b
          - {{name: b, action: core.noop}}
        """
    )
    assert wf.task("a").next == (Transition(OK, pairs, ("b",)),)


def test_publish_without_on_success_gets_its_own_success_transition() -> None:
    wf = load(
        """\
        tasks:
          - name: a
            action: core.noop
            on_failure: b
            publish: [{out: "{{ result().out }}"}]
          - {name: b, action: core.noop}
        """
    )
    assert wf.task("a").next == (
        Transition(KO, (), ("b",)),
        Transition(OK, (("out", "{{ result().out }}"),), ()),
    )


def test_next_accepts_string_or_list_targets_and_every_publish_form() -> None:
    wf = load(
        """\
        tasks:
          - name: a
            action: core.noop
            next:
              - do: b
              - when: "{{ failed() }}"
                publish: err
                do: [b, c]
              - publish: {n: 1}
          - {name: b, action: core.noop}
          - {name: c, action: core.noop}
        """
    )
    assert wf.task("a").next == (
        Transition(None, (), ("b",)),
        Transition(KO, (("err", "{{ result() }}"),), ("b", "c")),
        Transition(None, (("n", 1),), ()),
    )
    assert wf.inbound("b") == 2


def test_decision_is_first_match_with_default_last() -> None:
    wf = load(
        """\
        tasks:
          - name: check
            action: core.noop
            decision:
              - when: "{{ result().code == 0 }}"
                next: ok
              - when: "{{ result().code == 1 }}"
                next: [retry_later, ok]
              - default: fail
          - {name: ok, action: core.noop}
          - {name: retry_later, action: core.noop}
          - {name: fail, action: core.noop}
        """
    )
    check = wf.task("check")
    assert check.first_match
    assert check.next == (
        Transition("{{ result().code == 0 }}", (), ("ok",), decision=True),
        Transition("{{ result().code == 1 }}", (), ("retry_later", "ok"), decision=True),
        Transition(None, (), ("fail",), decision=True),
    )


def test_decision_beside_publish_and_on_star_as_attune_writes_it() -> None:
    # Attune's complete-workflow.yaml: publish, then decision, then on_timeout.
    wf = load(
        """        tasks:
          - name: approve
            action: core.noop
            on_timeout: late
            publish:
              - granted: "{{ result().approved }}"
            decision:
              - when: "{{ vars.granted == true }}"
                next: go
              - default: stop
            on_complete: audit
            on_failure: oops
          - {name: go, action: core.noop}
          - {name: stop, action: core.noop}
          - {name: late, action: core.noop}
          - {name: audit, action: core.noop}
          - {name: oops, action: core.noop}
        """
    )
    check = wf.task("approve")
    assert check.first_match
    # Publish first (whatever the key order), then the branches, then on_* as written.
    assert check.next == (
        Transition(OK, (("granted", "{{ result().approved }}"),), ()),
        Transition("{{ vars.granted == true }}", (), ("go",), decision=True),
        Transition(None, (), ("stop",), decision=True),
        Transition("{{ timed_out() }}", (), ("late",)),
        Transition(None, (), ("audit",)),
        Transition(KO, (), ("oops",)),
    )


def test_parallel_block_holds_sub_tasks() -> None:
    wf = load(
        """\
        tasks:
          - name: fan
            type: parallel
            join: all
            when: "{{ parameters.go }}"
            tasks:
              - name: left
                action: core.noop
                retry: {count: 1}
              - name: right
                type: action
                action: core.noop
            on_success: done
          - name: start
            action: core.noop
            on_success: fan
          - {name: done, action: core.noop}
        """
    )
    fan = wf.task("fan")
    assert fan.kind == "parallel" and fan.action is None
    assert [t.name for t in fan.tasks] == ["left", "right"]
    assert fan.tasks[0].retry == RetryPolicy(count=1)
    assert fan.tasks[0].line == 9 and fan.tasks[1].line == 12
    assert fan.join == "all" and fan.when == "{{ parameters.go }}"
    assert wf.task("right").kind == "action"
    assert [t.name for t in wf.start_tasks()] == ["start"]


def test_cycles_are_allowed_when_there_is_an_entry() -> None:
    wf = load(
        """\
        tasks:
          - {name: init, action: core.noop, on_success: poll}
          - {name: poll, action: core.noop, on_failure: poll, on_success: done}
          - {name: done, action: core.noop, join: 1}
        """
    )
    assert wf.inbound("poll") == 2


def test_task_lines_point_at_each_task() -> None:
    wf = load(
        """\
        tasks:
          - name: a
            action: core.noop
            on_success: b

          - action: core.noop
            name: b
        """
    )
    assert [t.line for t in wf.tasks] == [4, 8]


def test_ref_rules() -> None:
    body = 'label: x\nversion: "1"\ntasks: [{name: a, action: core.noop}]\n'
    assert load_workflow_text(body, file="dir/flow.yaml", pack="pk").ref == "pk.flow"
    assert load_workflow_text("ref: pk.flow\n" + body, file="flow.yml", pack="pk").ref == "pk.flow"
    assert load_workflow_text("ref: other.name\n" + body, file="x.yaml").ref == "other.name"
    with pytest.raises(SpecError, match=r"^x\.yaml:1: missing required key 'ref'"):
        load_workflow_text(body, file="x.yaml")


def test_parameters_and_defaults() -> None:
    wf = load(
        """\
        parameters:
          app: {type: string, required: true, description: the app}
          token: {type: string, secret: true}
        tasks: [{name: a, action: core.noop}]
        """
    )
    assert wf.parameters == {
        "type": "object",
        "properties": {
            "app": {"type": "string", "description": "the app"},
            "token": {"type": "string", "secret": True},
        },
        "required": ["app"],
        "additionalProperties": False,
    }
    assert load("tasks: [{name: a, action: core.noop}]\n").parameters["properties"] == {}


def test_yaml_conveniences_survive() -> None:
    wf = load(
        """\
        vars:
          released: 2024-05-01
          flag: yes
          defaults: &defaults {region: eu, size: 2}
          site:
            <<: *defaults
            size: 3
        tasks: [{name: a, action: core.noop}]
        """
    )
    assert wf.vars["released"] == "2024-05-01"
    assert wf.vars["flag"] is True
    assert wf.vars["site"] == {"size": 3, "region": "eu"}


def test_json_snapshot_round_trip() -> None:
    wf = load(
        """\
        tasks:
          - name: a
            action: core.noop
            retry: {count: 2}
            decision:
              - {when: "{{ result() }}", next: b}
              - {default: c}
          - {name: b, type: parallel, join: 1, tasks: [{name: s, action: core.noop}]}
          - {name: c, action: core.noop}
        """
    )
    again = WorkflowSpec.from_dict(json.loads(json.dumps(wf.to_dict())))
    assert again == wf
    check_workflow(again)  # a snapshot (no Source) checks fine too


def test_checks_without_source_point_at_the_task_line() -> None:
    wf = load("tasks:\n  - {name: a, action: core.noop}\n  - {name: b, action: core.noop}\n")
    broken = WorkflowSpec.from_dict(
        {
            **wf.to_dict(),
            "tasks": [*wf.to_dict()["tasks"][:1], {**wf.to_dict()["tasks"][1], "join": 3}],
        }
    )
    with pytest.raises(SpecError) as info:
        check_workflow(broken)
    assert str(info.value) == (
        "t.yaml:5: tasks[1] (b).join: "
        "join on start task 'b' can never fire: no transition leads to it"
    )


def test_load_workflow_file(tmp_path: Path) -> None:
    path = tmp_path / "flow.yaml"
    path.write_text('label: x\nversion: "1"\ntasks: [{name: a, action: core.noop}]\n')
    wf = load_workflow_file(path, pack="pk")
    assert wf.ref == "pk.flow" and wf.source_file == str(path)
    with pytest.raises(SpecError, match="no such file"):
        load_workflow_file(tmp_path / "missing.yaml", pack="pk")
    with pytest.raises(SpecError, match="not a regular file"):
        load_workflow_file(tmp_path, pack="pk")
