"""Triggers, rules and policies in packs (spec/automation.py): what registers, and the
one-line file:line error for what does not."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from attune_pg.errors import SpecError
from attune_pg.spec.automation import PackAutomation, load_automation
from attune_pg.spec.packfiles import all_actions, load_packs
from attune_pg.spec.triggers import TriggerSpec

REPO = Path(__file__).resolve().parents[2]
CORE = REPO / "packs" / "core"

CONC = "policy_type: action.concurrency\n"

ORDER_TRIGGER = """\
name: order_placed
output:
  type: object
  properties:
    id: {type: integer}
    total: {type: number}
  required: [id]
"""


def _pack(root: Path, files: dict[str, str]) -> Path:
    pack = root / "shop"
    (pack).mkdir(parents=True, exist_ok=True)
    (pack / "pack.yaml").write_text('ref: shop\nversion: "1"\nconfig: {zone: eu}\n')
    for name, text in files.items():
        path = pack / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return pack


def _load(pack: Path) -> PackAutomation:
    core = load_packs(CORE)
    packs = load_packs(pack)
    actions = all_actions([*core, *packs])
    core_auto = load_automation(core, actions, {}, {})
    triggers: dict[str, TriggerSpec] = {t.ref: t for t in core_auto[0].triggers}
    (loaded,) = load_automation(packs, actions, triggers, {})
    return loaded


def _error(tmp_path: Path, files: dict[str, str]) -> str:
    with pytest.raises(SpecError) as caught:
        _load(_pack(tmp_path, files))
    return str(caught.value)


def test_a_pack_with_a_trigger_rules_and_a_policy(tmp_path: Path) -> None:
    loaded = _load(
        _pack(
            tmp_path,
            {
                "triggers/order_placed.yaml": ORDER_TRIGGER,
                "rules/big.yaml": """\
                    trigger_ref: shop.order_placed
                    conditions: {expression: "event.payload.total > 100"}
                    action_ref: core.echo
                    action_params: {message: "order {{ event.payload.id }}"}
                """,
                "rules/nightly.yaml": """\
                    trigger_ref: core.crontimer
                    trigger_params: {expression: "0 2 * * *", timezone: Europe/Paris}
                    action_ref: core.noop
                """,
                "policies/echo.yaml": """\
                    name: echo_limit
                    resource_ref: core.echo
                    policy_type: action.concurrency
                    parameters: {threshold: 2, action: cancel}
                """,
            },
        )
    )
    assert [t.ref for t in loaded.triggers] == ["shop.order_placed"]
    rules = {r.ref: r for r in loaded.rules}
    assert rules["shop.big"].conditions == {"expression": "{{ event.payload.total > 100 }}"}
    assert rules["shop.nightly"].trigger_params == {
        "expression": "0 2 * * *",
        "timezone": "Europe/Paris",
    }
    (policy,) = loaded.policies
    assert (policy.ref, policy.resource_kind, policy.threshold, policy.on_limit) == (
        "shop.echo_limit",
        "action",
        2,
        "cancel",
    )


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        (
            {"rules/r.yaml": "trigger_ref: shop.nope\naction_ref: core.noop\n"},
            "rules/r.yaml:1: trigger_ref: unknown trigger 'shop.nope'",
        ),
        (
            {
                "rules/r.yaml": "trigger_ref: core.intervaltimer\naction_ref: shop.missing\n"
                "trigger_params: {unit: seconds, interval: 5}\n"
            },
            "rules/r.yaml:2: action_ref: unknown action or workflow 'shop.missing'",
        ),
        (
            {
                "rules/r.yaml": "trigger_ref: core.intervaltimer\n"
                "trigger_params: {unit: weeks, interval: 5}\naction_ref: core.noop\n"
            },
            "rules/r.yaml:2: trigger_params: parameter 'unit'",
        ),
        (
            {
                "rules/r.yaml": "trigger_ref: core.crontimer\n"
                "trigger_params:\n  expression: '* * *'\naction_ref: core.noop\n"
            },
            "rules/r.yaml:3: trigger_params.expression: needs 5 fields, or 6 with seconds first",
        ),
        (
            {
                "rules/r.yaml": "trigger_ref: core.crontimer\naction_ref: core.noop\n"
                "trigger_params:\n  expression: '0 * * * *'\n  timezone: Nowhere/City\n"
            },
            "rules/r.yaml:5: trigger_params.timezone: unknown time zone 'Nowhere/City'",
        ),
        (
            {
                "triggers/order_placed.yaml": ORDER_TRIGGER,
                "rules/r.yaml": "trigger_ref: shop.order_placed\naction_ref: core.noop\n"
                "conditions:\n  expression: 'event.payload.total >'\n",
            },
            "rules/r.yaml:4: conditions.expression: ",
        ),
        (
            {
                "triggers/order_placed.yaml": ORDER_TRIGGER,
                "rules/r.yaml": "trigger_ref: shop.order_placed\naction_ref: core.echo\n"
                "action_params:\n  message: 'x'\n  volume: 11\n",
            },
            "rules/r.yaml:5: action_params.volume: unknown parameter 'volume' for 'core.echo'",
        ),
        (
            {
                "triggers/order_placed.yaml": ORDER_TRIGGER,
                "rules/r.yaml": "trigger_ref: shop.order_placed\naction_ref: core.echo\n",
            },
            "rules/r.yaml:2: action_ref: missing required parameter 'message' for 'core.echo'",
        ),
        (
            {
                "triggers/order_placed.yaml": ORDER_TRIGGER,
                "rules/r.yaml": "trigger_ref: shop.order_placed\naction_ref: core.sleep\n"
                "action_params:\n  seconds: soon\n",
            },
            "rules/r.yaml:4: action_params.seconds: 'soon' is not of type 'number'",
        ),
        (
            {
                "triggers/order_placed.yaml": ORDER_TRIGGER,
                "rules/r.yaml": "trigger_ref: shop.order_placed\naction_ref: core.echo\n"
                "action_params:\n  message: '{{ event.payload.id }'\n",
            },
            "rules/r.yaml:4: action_params.message: ",
        ),
        (
            {"triggers/t.yaml": "name: t\noutput:\n  type: object\n  oneOf: [{required: [a]}]\n"},
            "triggers/t.yaml:4: output.oneOf: JSON Schema keyword 'oneOf' is not checked by"
            " attune.emit_event",
        ),
        (
            {"triggers/t.yaml": "name: other\n"},
            "triggers/t.yaml:1: name: name 'other' must equal the file name 't'",
        ),
        (
            {
                "policies/p.yaml": "name: p\nresource_ref: core.nothing\n"
                + CONC
                + "parameters: {threshold: 1}\n"
            },
            "policies/p.yaml:2: resource_ref: unknown workflow or action 'core.nothing'",
        ),
        (
            {
                "policies/p.yaml": "name: p\nresource_ref: core.echo\n"
                + CONC
                + "parameters: {threshold: 0}\n"
            },
            "policies/p.yaml:4: parameters.threshold:",
        ),
        (
            {
                "policies/p.yaml": "name: p\nresource_ref: core.echo\n"
                "policy_type: action.concurrency.attr\n"
                "parameters:\n  threshold: 1\n  attributes: [volume]\n"
            },
            "policies/p.yaml:6: parameters.attributes[0]: 'volume' is not a parameter"
            " of 'core.echo'",
        ),
        (
            {
                "policies/p.yaml": "name: p\nresource_ref: core.echo\n"
                + CONC
                + "parameters: {threshold: 1}\n",
                "policies/q.yaml": "name: q\nresource_ref: core.echo\n"
                + CONC
                + "parameters: {threshold: 2}\n",
            },
            "policies/q.yaml:2: resource_ref: 'core.echo' already has the concurrency"
            " policy 'shop.p'",
        ),
    ],
)
def test_invalid_files_name_file_line_and_field(
    tmp_path: Path, files: dict[str, str], expected: str
) -> None:
    message = _error(tmp_path, files)
    assert expected in message, message
    assert "\n" not in message
