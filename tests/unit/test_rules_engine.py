"""Rule matching (engine/rules.py): expressions, legacy criteria, errors recorded, params."""

from __future__ import annotations

from attune_pg.engine.rules import EventView, evaluate
from attune_pg.spec.rules import RuleSpec, expression_template

EVENT = EventView(7, "shop.order_placed", {"id": 7, "total": 250, "tags": ["vip"]}, "2026-01-01")


def _rule(
    conditions: dict[str, object] | None, params: dict[str, object] | None = None
) -> RuleSpec:
    return RuleSpec(
        ref="shop.r",
        trigger_ref="shop.order_placed",
        action_ref="shop.ship",
        conditions=conditions,
        action_params=params or {},
    )


def test_expression_matches_and_params_keep_their_types() -> None:
    rule = _rule(
        {
            "expression": expression_template(
                "event.payload.total > 100 and 'vip' in event.payload.tags"
            )
        },
        {
            "order_id": "{{ event.payload.id }}",
            "tags": "{{ trigger.payload.tags }}",
            "where": "{{ pack.config.zone }}",
            "note": "event {{ event.id }} via {{ rule.ref }}",
        },
    )
    verdict = evaluate(rule, EVENT, {"zone": "eu"})
    assert verdict.outcome == "fire"
    assert verdict.parameters == {
        "order_id": 7,
        "tags": ["vip"],
        "where": "eu",
        "note": "event 7 via shop.r",
    }


def test_expression_false_skips() -> None:
    rule = _rule({"expression": expression_template("event.payload.total > 1000")})
    assert evaluate(rule, EVENT, {}).outcome == "skip"


def test_no_conditions_always_fires() -> None:
    assert evaluate(_rule(None), EVENT, {}).outcome == "fire"


def test_condition_that_errors_does_not_match_and_says_why() -> None:
    rule = _rule({"expression": expression_template("event.payload.region.startswith('eu')")})
    verdict = evaluate(rule, EVENT, {})
    assert verdict.outcome == "error"
    assert verdict.error is not None
    assert verdict.error["type"] == "ConditionError"
    assert "region" in verdict.error["message"]


def test_action_params_that_fail_to_render_are_an_error() -> None:
    verdict = evaluate(_rule(None, {"x": "{{ event.payload.nope }}"}), EVENT, {})
    assert verdict.outcome == "error"
    assert verdict.error is not None and "nope" in verdict.error["message"]


def test_legacy_criteria() -> None:
    def run(*criteria: dict[str, object]) -> str:
        return evaluate(_rule({"criteria": list(criteria)}), EVENT, {}).outcome

    assert run({"field": "total", "operator": "equals", "value": 250}) == "fire"
    assert run({"field": "total", "operator": "equals", "value": 251}) == "skip"
    assert run({"field": "tags", "operator": "contains", "value": "vip"}) == "fire"
    assert run({"field": "missing", "operator": "not_equals", "value": 1}) == "fire"
    assert run({"field": "missing", "operator": "equals", "value": None}) == "skip"
    assert (
        run(
            {"field": "total", "operator": "not_equals", "value": 0},
            {"field": "tags", "operator": "contains", "value": "gold"},
        )
        == "skip"
    )


def test_attunes_rule_template_names() -> None:
    # Attune's template resolver: event.trigger; its rule docs: system.timestamp,
    # system.rule.ref, system.event.id.
    rule = _rule(
        None,
        {
            "trigger": "{{ event.trigger }}",
            "at": "{{ system.timestamp }}",
            "rule": "{{ system.rule.ref }}",
            "event": "{{ system.event.id }}",
        },
    )
    verdict = evaluate(rule, EVENT, {})
    assert verdict.parameters == {
        "trigger": "shop.order_placed", "at": "2026-01-01", "rule": "shop.r", "event": 7,
    }  # fmt: skip
