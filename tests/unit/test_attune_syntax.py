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
from hypothesis import given
from hypothesis import strategies as st

from attune_pg import template
from attune_pg.errors import SpecError, TemplateError
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


# ------------------------------------------------------------------ conditional lists

# The shape of Attune's packs/core/workflows/install_packs.yaml (build_environments):
# conditional lists under on_success/on_failure, one of them nesting `next:` entries.
BUILD = """
    parameters:
      force: {type: boolean, default: false}
      skip_tests: {type: boolean, default: false}
      skip_env_build: {type: boolean, default: false}
    vars: {status: null}
    output_map: {status: "{{ vars.status }}"}
    tasks:
      - name: build
        action: core.any
        publish:
          - status: built
        on_success:
          - when: "{{ not parameters.skip_tests }}"
            do: run_tests
          - when: "{{ parameters.skip_tests }}"
            do: register
        on_failure:
          - when: "{{ parameters.force or parameters.skip_env_build }}"
            do:
              - when: "{{ not parameters.skip_tests }}"
                next: run_tests
              - when: "{{ parameters.skip_tests }}"
                next: register
          - when: "{{ not parameters.force and not parameters.skip_env_build }}"
            do: cleanup
      - {name: run_tests, action: core.noop, on_success: register}
      - {name: register, action: core.noop}
      - {name: cleanup, action: core.noop}
"""


@pytest.mark.parametrize(
    ("build", "parameters", "ran", "status"),
    [
        ("succeeded", {}, ["build", "run_tests", "register"], "built"),
        ("succeeded", {"skip_tests": True}, ["build", "register"], "built"),
        # a failure with force: the nested entries choose between tests and register
        ("failed", {"force": True}, ["build", "run_tests", "register"], None),
        ("failed", {"force": True, "skip_tests": True}, ["build", "register"], None),
        ("failed", {"skip_env_build": True, "skip_tests": True}, ["build", "register"], None),
        ("failed", {}, ["build", "cleanup"], None),
        # timed out is a failure too (failed() holds)
        ("timed_out", {}, ["build", "cleanup"], None),
    ],
)
def test_conditional_lists_with_nested_next(
    build: str, parameters: dict[str, Json], ran: list[str], status: str | None
) -> None:
    sim = rehearse(BUILD, {"build": build}, parameters=parameters)
    assert sequence(sim) == ran
    assert sim.status == "succeeded", sim.execution.error  # every failure is handled
    assert sim.execution.output == {"status": status}  # published on success only


def test_conditional_list_publishes_even_when_no_condition_holds() -> None:
    # Attune's download_packs: publish, then go on only if something was downloaded.
    body = """
        vars: {n: null}
        output_map: {n: "{{ vars.n }}"}
        tasks:
          - name: download
            action: core.any
            publish:
              - n: "{{ task.download.result.success_count }}"
            on_success:
              - when: "{{ task.download.result.success_count > 0 }}"
                do: check
            on_failure: cleanup
          - {name: check, action: core.noop}
          - {name: cleanup, action: core.noop}
    """
    some = rehearse(body, {"download": result({"success_count": 2})})
    assert sequence(some) == ["download", "check"]
    none = rehearse(body, {"download": result({"success_count": 0})})
    assert sequence(none) == ["download"]
    assert none.status == "succeeded" and none.execution.output == {"n": 0}


def test_an_unmatched_conditional_failure_is_unhandled() -> None:
    sim = rehearse(
        """
        parameters: {force: {type: boolean, default: false}}
        tasks:
          - name: a
            action: core.any
            on_failure:
              - when: "{{ parameters.force }}"
                do: b
          - {name: b, action: core.noop}
        """,
        {"a": "failed"},
    )
    assert sequence(sim) == ["a"]
    assert sim.status == "failed"
    assert sim.execution.error["type"] == "TaskFailed"


def test_conditional_entries_everywhere_a_transition_has_targets() -> None:
    targets = """
          - {name: x, action: core.noop}
          - {name: y, action: core.noop}
          - {name: z, action: core.noop}
    """
    in_next = """
        parameters: {mode: {type: string, default: a}}
        tasks:
          - name: start
            action: core.noop
            next:
              - when: "{{ succeeded() }}"
                publish: [{seen: "{{ parameters.mode }}"}]
                do:
                  - when: "{{ parameters.mode == 'a' }}"
                    do: [x, y]
                  - z
            on_complete:
              - when: "{{ parameters.mode == 'b' }}"
                next: y
    """ + targets
    assert sorted(sequence(rehearse(in_next))) == ["start", "x", "y", "z"]
    assert sorted(sequence(rehearse(in_next, parameters={"mode": "b"}))) == ["start", "y", "z"]
    with_decision = """
        parameters: {mode: {type: string, default: a}}
        tasks:
          - name: start
            action: core.noop
            on_success:
              - when: "{{ parameters.mode == 'a' }}"
                do: x
            decision:
              - when: "{{ parameters.mode == 'b' }}"
                next: y
              - default: z
    """ + targets
    assert sequence(rehearse(with_decision)) == ["start", "x", "z"]
    assert sequence(rehearse(with_decision, parameters={"mode": "b"})) == ["start", "y"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("on_success: [{when: '{{ a }}', do: b, next: b}]", "takes 'do' or 'next', not both"),
        ("on_success: [{when: '{{ a ? }}', do: b}]", r"on_success\[0\]\.when: '\{\{ a \? \}\}'"),
        ("on_success: [{when: '{{ a }}', do: nowhere}]", "nowhere"),
        ("on_success: [{when: '{{ a }}', go: b}]", "unknown key 'go'"),
        ("on_failure: [{when: '{{ a }}', do: [{when: '{{ b }}', default: b}]}]", "default"),
    ],
)
def test_conditional_list_errors_name_the_entry(body: str, message: str) -> None:
    text = (
        f"tasks:\n  - name: a\n    action: core.noop\n    {body}\n"
        "  - {name: b, action: core.noop}\n"
    )
    with pytest.raises(SpecError, match=message):
        load(text)


def test_output_schema_and_metadata_are_accepted_and_ignored() -> None:
    wf = load(
        """
        output_schema:
          registered_packs: {type: array, description: Successfully registered packs}
        metadata:
          description: |
            free text
          examples: [{name: one, input: {packs: [x]}}]
          tags: [pack]
        tasks:
          - {name: a, action: core.noop}
        """
    )
    assert wf.output is None  # not an output schema to validate against
    sim = rehearse("output_schema: {x: {type: integer}}\ntasks: [{name: a, action: core.noop}]\n")
    assert sim.status == "succeeded" and sim.execution.output is None


_VALUES = st.sampled_from(
    [True, False, 0, 1, 0.0, "", "x", "false", "No", " none ", "0", "null", [], [0], {},
     {"a": 1}, None]
)


@given(
    status=st.sampled_from(["succeeded", "failed", None]),
    parts=st.lists(st.tuples(_VALUES, st.booleans()), min_size=1, max_size=4),
)
def test_joined_conditions_hold_exactly_when_each_does(
    status: str | None, parts: list[tuple[Json, bool]]
) -> None:
    """`all_of` (how nested conditions become one `when`) agrees with judging each part
    alone with `truthy`, for single expressions and for text templates alike."""
    from attune_pg.template.compose import all_of

    texts = [
        f"{{{{ vars.v{i} }}}}" if single else f"{{{{ vars.v{i} }}}}{{{{ '' }}}}"
        for i, (_, single) in enumerate(parts)
    ]
    if status is not None:
        texts.insert(0, "{{ succeeded() }}")
    scope = template.build_scope(
        parameters={},
        vars={f"v{i}": value for i, (value, _) in enumerate(parts)},
        tasks={},
        pack_config={},
        system={},
        kv=None,
        current=template.CurrentTask(status or "succeeded"),
    )
    expected = all(template.truthy(template.render(t, scope, where="part")) for t in texts)
    joined = all_of(texts)
    assert joined is not None
    assert template.truthy(template.render(joined, scope, where="joined")) is expected


# ------------------------------------------------------------------ Attune's scope names

def test_attune_scope_names() -> None:
    class KV:
        def get(self, key: str, default: Json = None) -> Json:
            return {"region": "eu", "My Key": 7}.get(key, default)

        def get_secret(self, key: str) -> Json:
            raise AssertionError("a plain store is read with get")

    scope = template.build_scope(
        parameters={"app": "web"},
        vars={"counter": 3, "parameters": "shadowed by the scope"},
        tasks={},
        pack_config={"token": "t0"},
        system={"started_at": 1_700_000_000.5},
        kv=KV(),
    )

    def r(text: str) -> Json:
        return template.render(text, scope, where="t")

    assert r("{{ variables.counter }}") == 3
    assert r("{{ workflow.counter }}") == 3
    assert r("{{ counter + 1 }}") == 4  # a variable by its bare name
    assert r("{{ parameters.app }}") == "web"  # a scope wins over a variable's bare name
    assert r("{{ config.token }}") == "t0"
    assert r("{{ keystore.region }}-{{ keystore['My Key'] }}") == "eu-7"
    assert r("{{ 'region' in keystore and 'other' not in keystore }}") is True
    assert r("{{ system.workflow_start }}") == "2023-11-14T22:13:20.500000+00:00"
    with pytest.raises(TemplateError, match="keystore: kv key 'other' is not set"):
        r("{{ keystore.other }}")
    with pytest.raises(TemplateError, match="'item' is undefined"):
        template.render("{{ item }}", template.build_scope(
            parameters={}, vars={"item": 1}, tasks={}, pack_config={}, system={}, kv=None
        ), where="t")  # fmt: skip


def test_keystore_secrets_leave_as_tokens() -> None:
    class FlagKV:
        data = {"api": ("s3cr3t", True), "plain": ("p", False)}

        def is_secret(self, key: str) -> bool | None:
            return self.data[key][1] if key in self.data else None

        def get(self, key: str, default: Json = None) -> Json:
            return self.data[key][0] if key in self.data else default

        def get_secret(self, key: str) -> Json:
            raise AssertionError("the value never enters a template")

    scope = template.build_scope(
        parameters={}, vars={}, tasks={}, pack_config={}, system={}, kv=FlagKV()
    )
    token = template.render("{{ kv.get_secret('api') }}", scope, where="t")
    assert "s3cr3t" not in token
    assert template.render("{{ keystore.api }}", scope, where="t") == token
    assert template.render("{{ keystore.plain }}", scope, where="t") == "p"


def test_a_declared_parameter_not_given_reads_as_null() -> None:
    # install_packs.yaml passes `ref_spec: "{{ parameters.ref_spec }}"` whether or not a
    # ref was asked for (three of its own four examples give none).
    body = """
        parameters:
          ref_spec: {type: string}
          packs: {type: array, default: []}
        output_map: {spec: "{{ parameters.ref_spec }}", packs: "{{ parameters.packs }}"}
        tasks:
          - {name: a, action: core.noop}
    """
    sim = rehearse(body)
    assert sim.status == "succeeded", sim.execution.error
    assert sim.execution.output == {"spec": None, "packs": []}
    assert sim.execution.parameters == {"packs": []}  # stored as given (defaults applied)
    typo = rehearse(body.replace("parameters.ref_spec }}", "parameters.ref_spc }}"))
    assert typo.status == "failed" and "ref_spc" in typo.execution.error["message"]


def test_visual_builder_metadata_and_workflow_tasks() -> None:
    # Attune's parser keeps `__chart_meta__` (its visual builder's canvas data) on tasks and
    # transitions, and has a `type: workflow` task (its action is a workflow).
    wf = load(
        """
        tasks:
          - name: a
            type: workflow
            action: tests.child
            __chart_meta__: {x: 10, y: 20}
            next:
              - when: "{{ succeeded() }}"
                do: b
                __chart_meta__: {text: ok, color: green}
          - name: b
            action: core.noop
            on_success:
              - when: "{{ true }}"
                do: c
                __chart_meta__: {waypoints: []}
          - {name: c, action: core.noop}
        """
    )
    assert wf.task("a").kind == "action" and wf.task("a").action == "tests.child"
    assert [t.do for t in wf.task("a").next] == [("b",)]
