"""Rules matched in SQL (emit_event) decide exactly as the Python engine (engine/rules.py).

Random conditions and action_params over random payloads are evaluated both ways: the
compiled SQL through `attune.rule_evaluate` (what emit_event runs) and the template
engine on the payload as a worker reads it back from jsonb. Outcomes (fire / skip /
error) and rendered parameters (as stored jsonb, text included) must be identical; the
SQL may only decline ("defer": that pair then goes to the Python engine).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg.types.json import Jsonb

from attune_pg.engine.rules import EventView, evaluate
from attune_pg.spec.rule_sql import compile_rule
from attune_pg.spec.rules import RuleSpec, expression_template

CREATED = "2026-01-02T03:04:05.123456+00:00"
CONFIG = {"warehouse": "north", "limit": 100, "ratio": 0.25, "tags": ["vip", "eu"]}
KEYS = ["a", "b", "s", "n", "tags", "items", "x"]

_SETTINGS = settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# ----------------------------------------------------------------- payloads

_texts = st.one_of(
    st.sampled_from(
        ["", "a", "vip", "No", " null ", "FALSE", "0", "1", " 12 ", "1_000", "1.5", "-2e3",
         "1e400", "inf", "NaN", ".5", "5.", "x y", "ß", "İ", "\u00a0 1 \u2003", "A\tb",
         'q"uote', "back\\slash", "eu-west", "ÉTÉ", "1_2.5_0"]
    ),
    st.text(alphabet="ab AB01._-\t\u00e9", max_size=6),
)  # fmt: skip
_ints = st.one_of(
    st.integers(-20, 20),
    st.sampled_from([2**53, 2**53 + 1, -(2**53) - 1, 10**20, 2**63, -(10**30)]),
)
_floats = st.one_of(
    st.sampled_from([0.0, 0.5, -2.5, 0.1, 1.0, 2.0, 1e16, 1.5e-7, 3.14159, 1e300, 5e-324,
                     -0.0, 0.125, 2.675, 1e22, 123456789.125]),
    st.floats(allow_nan=False, allow_infinity=False, width=64),
    st.floats(-1000, 1000, allow_nan=False).map(lambda f: round(f, 3)),
)  # fmt: skip
_scalars = st.one_of(st.none(), st.booleans(), _ints, _floats, _texts)
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(KEYS), inner, max_size=3)
    ),
    max_leaves=6,
)
payloads = st.dictionaries(st.sampled_from(KEYS), _values, max_size=5)

# ----------------------------------------------------------------- expressions

_literals = st.one_of(
    st.sampled_from(["1", "0", "-3", "2.5", "0.1", "1e16", "100", "9007199254740993",
                     "true", "false", "none", "'vip'", "''", "'a'", "' 1 '", "'No'",
                     "[]", "[1, 2.0, 'a']", "['vip', 'eu']", "(1, 'a')", "10 ** 2"]),
)  # fmt: skip
_paths = st.one_of(
    st.sampled_from(KEYS).map(lambda k: f"event.payload.{k}"),
    st.tuples(st.sampled_from(KEYS), st.sampled_from(KEYS)).map(
        lambda ks: f"event.payload.{ks[0]}.{ks[1]}"
    ),
    st.tuples(st.sampled_from(KEYS), st.sampled_from(["0", "1", "-1"])).map(
        lambda k: f"event.payload.{k[0]}[{k[1]}]"
    ),
    st.sampled_from(KEYS).map(lambda k: f"event.payload['{k}']"),
    st.sampled_from(
        ["event.id", "event.trigger_ref", "event.created", "trigger.payload.a", "rule.ref",
         "pack.config.warehouse", "pack.config.ratio", "pack.config.tags", "pack.config.nope",
         "nosuch", "event.payload", "event.payload.a.startswith('x')"]
    ),
)  # fmt: skip
_FILTERS = [
    "length", "count", "lower", "upper", "trim", "trim('a')", "int", "int(7)", "float",
    "float(-1)", "string", "default('d')", "default(0, true)", "d(event.payload.b)", "abs",
    "round", "round(2)", "round(1, 'floor')", "round(0, 'ceil')", "first", "last", "join(',')",
    "join", "to_json", "list", "sort", "unique",
]  # fmt: skip
_TESTS = [
    "defined", "undefined", "none", "number", "string", "mapping", "iterable", "sequence",
    "even", "odd", "divisibleby 3", "in [1, 'a', none]", "integer", "float", "boolean",
    "true", "false", "eq 1", "gt 0", "lt 'm'", "ne none",
]  # fmt: skip
_BINARY = ["+", "-", "*", "/", "//", "%", "~", "==", "!=", "<", "<=", ">", ">=", "in",
           "not in", "and", "or"]  # fmt: skip


def _extend(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.one_of(
        st.tuples(inner, st.sampled_from(_BINARY), inner).map(lambda t: f"({t[0]} {t[1]} {t[2]})"),
        st.tuples(inner, st.sampled_from(_FILTERS)).map(lambda t: f"({t[0]} | {t[1]})"),
        st.tuples(inner, st.booleans(), st.sampled_from(_TESTS)).map(
            lambda t: f"({t[0]} is {'not ' if t[1] else ''}{t[2]})"
        ),
        inner.map(lambda e: f"(not {e})"),
        inner.map(lambda e: f"(-{e})"),
        st.tuples(inner, inner, inner).map(lambda t: f"({t[0]} if {t[1]} else {t[2]})"),
        st.tuples(inner, inner, inner).map(lambda t: f"({t[0]} < {t[1]} <= {t[2]})"),
        st.lists(inner, max_size=3).map(lambda xs: "[" + ", ".join(xs) + "]"),
    )


expressions = st.recursive(st.one_of(_literals, _paths), _extend, max_leaves=5)

# ----------------------------------------------------------------- both ways


def _decoded(conn: psycopg.Connection, payload: dict[str, Any]) -> dict[str, Any]:
    """The payload as a worker reads it back from attune.event (jsonb)."""
    row = conn.execute("SELECT %s::jsonb", (Jsonb(payload),)).fetchone()
    assert row is not None
    return dict(row[0])


def _finite(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    if isinstance(value, list):
        return all(_finite(v) for v in value)
    return True


def _check(
    conn: psycopg.Connection, rule: RuleSpec, payload: dict[str, Any], seen: Counter[str]
) -> None:
    compiled = compile_rule(rule)
    if compiled.path == "worker":
        seen["worker"] += 1
        return
    stored = _decoded(conn, payload)
    python = evaluate(rule, EventView(1, "t.t", stored, CREATED), CONFIG)
    row = conn.execute(
        """SELECT (r).outcome, (r).parameters, (r).error
             FROM (SELECT attune.rule_evaluate(%(ref)s, %(match)s, %(params)s, %(args)s,
                          jsonb_build_object('event', e, 'trigger', e,
                                             'rule', jsonb_build_object('ref', %(ref)s::text),
                                             'pack', jsonb_build_object(
                                                 'config', %(config)s::jsonb))) AS r
                     FROM (SELECT jsonb_build_object('id', 1, 'trigger_ref', 't.t',
                                                     'payload', %(payload)s::jsonb,
                                                     'created', %(created)s::text) AS e) s) t""",
        {
            "ref": rule.ref,
            "match": compiled.match_sql,
            "params": compiled.params_sql,
            "args": Jsonb(compiled.args),
            "config": Jsonb(CONFIG),
            "payload": Jsonb(payload),
            "created": CREATED,
        },
    ).fetchone()
    assert row is not None
    outcome, parameters, error = row
    context = (
        f"\nrule: {rule.conditions} {rule.action_params}\npayload: {stored!r}"
        f"\npython: {python}\nsql: {row}"
    )
    if outcome == "defer":
        seen["defer"] += 1
        return
    if python.outcome == "fire" and not _finite(python.parameters):
        pytest.fail("the SQL fired where Python renders a non-finite float" + context)
    seen[outcome] += 1
    assert outcome == python.outcome, context
    if outcome == "fire":
        same = conn.execute(
            "SELECT %s::jsonb = %s::jsonb, %s::jsonb::text = %s::jsonb::text",
            (Jsonb(python.parameters), Jsonb(parameters)) * 2,
        ).fetchone()
        assert same == (True, True), context
    if outcome == "error":
        assert error["type"] == (python.error or {}).get("type"), context


def _rule(expression: str, params: dict[str, Any] | None = None) -> RuleSpec:
    return RuleSpec(
        ref="t.r",
        trigger_ref="t.t",
        action_ref="core.noop",
        conditions={"expression": expression_template(expression)},
        action_params=params or {},
    )


@pytest.fixture(scope="module")
def tally() -> Any:
    counts: Counter[str] = Counter()
    yield counts
    # Not vacuous: every outcome happened, and the SQL decided most pairs itself.
    for outcome in ("fire", "skip", "error"):
        assert counts[outcome] > 20, counts
    assert counts["defer"] < (counts["fire"] + counts["skip"] + counts["error"]) / 4, counts


@_SETTINGS
@given(expression=expressions, payload=payloads)
def test_conditions_decide_as_the_python_engine(
    conn: psycopg.Connection, tally: Counter[str], expression: str, payload: dict[str, Any]
) -> None:
    _check(conn, _rule(expression), payload, tally)


@_SETTINGS
@given(value=expressions, text=expressions, payload=payloads)
def test_action_params_render_as_the_python_engine(
    conn: psycopg.Connection,
    tally: Counter[str],
    value: str,
    text: str,
    payload: dict[str, Any],
) -> None:
    params = {
        "value": "{{ " + value + " }}",
        "text": "v={{ " + text + " }}!",
        "nested": {"list": ["{{ " + value + " }}", 1.5, "plain"]},
        "literal": 1e16,
    }
    _check(conn, _rule("true", params), payload, tally)


@pytest.mark.parametrize(
    "expression",
    [
        "not ('' | list)",  # found by the test above: '' iterated to [""] in SQL
        "('' | list) == []",
        "('' | first) is defined",
        "('' | last) is undefined",
        "('' | join('-')) == ''",
        "('ab' | list) == ['a', 'b']",
        # default('') without its boolean argument compiles too (it went to a worker)
        "(event.payload.s | default('') | list | length) == (event.payload.s | length)",
        # found by the test above: an undefined operand of // and % passed as undefined
        "(not ((1 // event.payload.a) is defined))",
        "((event.payload.a % 2) is defined)",
        "((event.payload.a | round) is defined)",
        "((event.payload.s // 2) is defined)",
    ],
)
def test_found_divergences_stay_fixed(conn: psycopg.Connection, expression: str) -> None:
    seen: Counter[str] = Counter()
    for payload in ({}, {"s": ""}, {"s": "xy"}):
        _check(conn, _rule(expression), payload, seen)
        _check(conn, _rule("true", {"v": "{{ " + expression + " }}"}), payload, seen)
    assert seen["worker"] == 0 and seen["defer"] == 0, seen  # decided in SQL, not handed off


_criteria = st.lists(
    st.fixed_dictionaries(
        {
            "field": st.one_of(
                st.sampled_from(KEYS),
                st.tuples(st.sampled_from(KEYS), st.sampled_from([*KEYS, "0", "1"])).map(".".join),
            ),
            "operator": st.sampled_from(["equals", "not_equals", "contains"]),
            "value": _scalars,
        }
    ),
    min_size=1,
    max_size=3,
)


@_SETTINGS
@given(criteria=_criteria, payload=payloads)
def test_legacy_criteria_decide_as_the_python_engine(
    conn: psycopg.Connection,
    tally: Counter[str],
    criteria: list[dict[str, Any]],
    payload: dict[str, Any],
) -> None:
    rule = RuleSpec(
        ref="t.r", trigger_ref="t.t", action_ref="core.noop", conditions={"criteria": criteria}
    )
    _check(conn, rule, json.loads(json.dumps(payload)), tally)
