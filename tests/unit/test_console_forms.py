"""The inquiry answer form derived from a JSON Schema, and the typed answer read back."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from attune_pg.errors import ParameterError
from attune_pg.spec.params import check_inquiry_response
from attune_pg.ui import forms, timeline

SCHEMA = {
    "type": "object",
    "required": ["approved", "count"],
    "properties": {
        "approved": {"type": "boolean"},
        "count": {"type": "integer", "minimum": 1, "title": "Copies"},
        "ratio": {"type": "number"},
        "env": {"enum": ["dev", "prod", 3]},
        "reason": {"type": "string", "default": "n/a"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "sizes": {"type": "array", "items": {"type": "integer"}},
    },
}


def test_fields_follow_the_schema() -> None:
    got = {f.name: f for f in forms.fields(SCHEMA)}
    assert [got[n].widget for n in SCHEMA["properties"]] == [
        "checkbox", "number", "number", "select", "text", "list", "list",
    ]  # fmt: skip
    assert got["count"].label == "Copies" and got["count"].step == "1" and got["count"].required
    assert got["ratio"].step == "any" and not got["ratio"].required
    assert got["env"].choices == ('"dev"', '"prod"', "3")
    assert got["reason"].default == "n/a"


@pytest.mark.parametrize(
    "schema",
    [
        {},
        {"type": "string"},
        {"type": "object", "properties": {"nested": {"type": "object"}}},
        {"oneOf": [{"type": "string"}, {"type": "integer"}]},
    ],
)
def test_shapes_without_simple_fields_get_one_json_area(schema: dict[str, object]) -> None:
    assert [(f.name, f.widget) for f in forms.fields(schema)] == [(forms.RAW_FIELD, "json")]


def test_answer_is_typed() -> None:
    answer = forms.answer(
        SCHEMA,
        {
            "approved": "on",
            "count": " 3 ",
            "ratio": "0.5",
            "env": "3",
            "reason": "",
            "tags": "a, b,,c",
            "sizes": "1,2",
        },
    )
    assert answer == {
        "approved": True, "count": 3, "ratio": 0.5, "env": 3, "tags": ["a", "b", "c"],
        "sizes": [1, 2],
    }  # fmt: skip
    assert forms.answer(SCHEMA, {"count": "2"}) == {"approved": False, "count": 2}


def test_bad_values_are_named() -> None:
    with pytest.raises(ParameterError, match="count: 'x' is not an integer"):
        forms.answer(SCHEMA, {"count": "x"})
    with pytest.raises(ParameterError, match=r"sizes: '1\.5' is not an integer"):
        forms.answer(SCHEMA, {"sizes": "1.5"})
    with pytest.raises(ParameterError, match="not valid JSON"):
        forms.answer({}, {forms.RAW_FIELD: "{nope"})
    assert forms.answer({}, {forms.RAW_FIELD: '{"a": [1]}'}) == {"a": [1]}


def test_the_full_schema_is_checked() -> None:
    with pytest.raises(ParameterError, match=r"inquiry 7: count: 0 is less than the minimum"):
        check_inquiry_response(7, SCHEMA, {"approved": True, "count": 0})
    with pytest.raises(ParameterError, match="inquiry 7: response: 'count' is a required"):
        check_inquiry_response(7, SCHEMA, {"approved": True})
    check_inquiry_response(7, SCHEMA, {"approved": True, "count": 1})


def test_timeline_scales_attempts_to_the_span() -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    rows = [
        {"task_name": "a", "status": "succeeded", "attempt": 1, "item_index": None,
         "started_at": t0, "finished_at": t0 + timedelta(seconds=1)},
        {"task_name": "b", "status": "failed", "attempt": 2, "item_index": 4,
         "started_at": t0 + timedelta(seconds=1), "finished_at": t0 + timedelta(seconds=4)},
        {"task_name": "c", "status": "scheduled", "attempt": 1, "item_index": None,
         "started_at": None, "finished_at": None},
    ]  # fmt: skip
    svg = timeline.render(rows, {"succeeded": ("#d4edda", "#2e7d32"), "failed": ("#f8d7da", "x")})
    assert svg.count('class="attempt"') == 2  # c has not started
    assert "b[4] #2" in svg and ">4.0 s<" in svg
    assert 'x="220.0" y="22" width="160.0"' in svg  # a: first quarter of 640 px
    assert 'x="380.0" y="40" width="480.0"' in svg  # b: the other three quarters
    assert timeline.render(rows[2:], {}) == ""
