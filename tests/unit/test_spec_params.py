"""Parameter declarations normalise to one JSON Schema shape; values validate against it."""

from __future__ import annotations

from typing import Any

import pytest

from attune_pg.errors import ParameterError
from attune_pg.spec.params import (
    empty_schema,
    parameters_schema,
    secret_parameters,
    validate_parameters,
)
from attune_pg.spec.yaml_lines import Problem

STACKSTORM = {
    "app": {"type": "string", "required": True, "description": "which app"},
    "count": {"type": "integer", "default": 1, "minimum": 0},
    "mode": {"type": "string", "enum": ["fast", "safe"], "default": "safe"},
    "regions": {"type": "array", "items": {"type": "string"}, "default": ["eu"]},
    "password": {"type": "string", "secret": True},
    "opts": {
        "type": "object",
        "properties": {"verbose": {"type": "boolean", "default": False}},
    },
}


@pytest.fixture
def schema() -> dict[str, Any]:
    return parameters_schema(STACKSTORM)


def test_stackstorm_map_becomes_a_closed_object_schema(schema: dict[str, Any]) -> None:
    assert schema["type"] == "object"
    assert schema["required"] == ["app"]
    assert schema["additionalProperties"] is False
    assert schema["properties"]["app"] == {"type": "string", "description": "which app"}
    assert schema["properties"]["password"] == {"type": "string", "secret": True}
    assert "required" not in schema["properties"]["count"]


def test_full_json_schema_is_kept_and_closed_by_default() -> None:
    given = {
        "type": "object",
        "properties": {"x": {"type": "integer"}},
        "required": ["x"],
    }
    schema = parameters_schema(given)
    assert schema == {**given, "additionalProperties": False}
    assert "additionalProperties" not in given  # the input is not mutated
    opened = parameters_schema({**given, "additionalProperties": True})
    assert opened["additionalProperties"] is True
    # `properties` alone marks a JSON Schema too.
    assert parameters_schema({"properties": {"y": {"type": "string"}}})["type"] == "object"


def test_parameters_named_like_keywords_stay_parameters() -> None:
    schema = parameters_schema({"type": {"type": "string"}, "properties": {"type": "object"}})
    assert set(schema["properties"]) == {"type", "properties"}


def test_none_means_no_parameters() -> None:
    assert parameters_schema(None) == empty_schema()


@pytest.mark.parametrize(
    ("declared", "path", "fragment"),
    [
        ({"x": "string"}, ("parameters", "x"), "must be a mapping"),
        ({"x": {"type": "int"}}, ("parameters", "x", "type"), "unknown type 'int'"),
        (
            {"x": {"type": "string", "required": "yes"}},
            ("parameters", "x", "required"),
            "true or false",
        ),
        ({"x": {"type": "string", "secret": 1}}, ("parameters", "x", "secret"), "true or false"),
        ({"x": {"type": "string", "positon": 1}}, ("parameters", "x", "positon"), "unknown key"),
        ({"x": {"type": "integer", "default": "a"}}, ("parameters", "x", "default"), "default 'a'"),
        (
            {"x": {"type": "integer", "minimum": "low"}},
            ("parameters", "x", "minimum"),
            "invalid schema",
        ),
        ({"type": "array"}, ("parameters", "type"), "must be a mapping"),
        ({"type": "object", "properties": []}, ("parameters", "properties"), "must be a mapping"),
    ],
)
def test_bad_declarations_name_the_path(
    declared: dict[str, Any], path: tuple[str, ...], fragment: str
) -> None:
    with pytest.raises(Problem) as info:
        parameters_schema(declared)
    assert info.value.path == path
    assert fragment in info.value.message


def test_validate_applies_defaults_including_nested(schema: dict[str, Any]) -> None:
    values = validate_parameters(schema, {"app": "web", "opts": {}}, where="")
    assert values == {
        "app": "web",
        "count": 1,
        "mode": "safe",
        "regions": ["eu"],
        "opts": {"verbose": False},
    }
    values["regions"].append("us")
    assert schema["properties"]["regions"]["default"] == ["eu"]  # defaults are copied


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({}, "workflow 'p.w': missing required parameter 'app'"),
        ({"app": "a", "foo": 1}, "workflow 'p.w': unknown parameter 'foo'"),
        (
            {"app": "a", "count": "x"},
            "workflow 'p.w': parameter 'count': 'x' is not of type 'integer'",
        ),
        (
            {"app": "a", "count": -1},
            "workflow 'p.w': parameter 'count': -1 is less than the minimum of 0",
        ),
        (
            {"app": "a", "mode": "slow"},
            "workflow 'p.w': parameter 'mode': 'slow' is not one of 'fast', 'safe'",
        ),
        (
            {"app": "a", "regions": ["eu", 3]},
            "workflow 'p.w': parameter 'regions[1]': 3 is not of type 'string'",
        ),
        ({"app": None}, "workflow 'p.w': parameter 'app': null is not of type 'string'"),
        ([1, 2], "workflow 'p.w': parameters must be an object, got [1, 2]"),
    ],
)
def test_validation_errors_name_the_parameter(
    schema: dict[str, Any], values: Any, message: str
) -> None:
    with pytest.raises(ParameterError) as info:
        validate_parameters(schema, values, where="workflow 'p.w'")
    assert str(info.value) == message


def test_none_values_mean_no_parameters() -> None:
    assert validate_parameters(
        parameters_schema({"a": {"type": "integer", "default": 2}}), None, where=""
    ) == {"a": 2}


def test_long_values_keep_the_message_on_one_short_line(schema: dict[str, Any]) -> None:
    with pytest.raises(ParameterError) as info:
        validate_parameters(schema, {"app": "x\n" * 10_000, "count": "y\n" * 10_000}, where="w")
    assert "\n" not in str(info.value) and len(str(info.value)) < 300


def test_secret_parameters(schema: dict[str, Any]) -> None:
    assert secret_parameters(schema) == {"password"}
    assert secret_parameters(empty_schema()) == set()


def test_defaults_are_checked_through_refs() -> None:
    declared = {
        "type": "object",
        "$defs": {"port": {"type": "integer", "minimum": 1}},
        "properties": {"port": {"$ref": "#/$defs/port", "default": 0}},
    }
    with pytest.raises(Problem) as info:
        parameters_schema(declared)
    assert info.value.path == ("parameters", "properties", "port", "default")
    assert info.value.message == "default 0 is less than the minimum of 1"


def test_validators_are_cached_per_schema_and_never_follow_later_edits() -> None:
    from attune_pg.spec import params

    schema = parameters_schema({"n": {"type": "integer"}, "tag": {"type": "string",
                                "pattern": "^[a-z]+$"}})  # fmt: skip
    assert validate_parameters(schema, {"n": 1, "tag": "ok"}, where="w") == {"n": 1, "tag": "ok"}
    key_count = len(params._VALIDATORS)
    # The same schema again (another dict with the same content): the cached validators.
    again = parameters_schema({"n": {"type": "integer"}, "tag": {"type": "string",
                               "pattern": "^[a-z]+$"}})  # fmt: skip
    validate_parameters(again, {"n": 2, "tag": "ok"}, where="w")
    assert len(params._VALIDATORS) == key_count
    # A regular expression is Python's to judge, and an error still names the parameter.
    with pytest.raises(ParameterError, match="tag"):
        validate_parameters(schema, {"n": 1, "tag": "NOT"}, where="w")
    with pytest.raises(ParameterError, match="n"):
        validate_parameters(schema, {"n": "one", "tag": "ok"}, where="w")
    # Editing the caller's dict afterwards validates against the edited schema.
    schema["properties"]["n"]["type"] = "string"
    assert validate_parameters(schema, {"n": "one", "tag": "ok"}, where="w")["n"] == "one"
    with pytest.raises(ParameterError, match="n"):
        validate_parameters(schema, {"n": 1, "tag": "ok"}, where="w")


def test_the_same_schema_object_skips_the_canonical_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every task of an action validates against the catalog's one dict: it is found by
    identity without encoding its canonical key, and an edit in place is still seen."""
    from attune_pg.spec import params

    schema = parameters_schema({"n": {"type": "integer"}})
    validate_parameters(schema, {"n": 1}, where="w")

    def no_key(*args: Any, **kwargs: Any) -> str:
        raise AssertionError("the canonical key was encoded again")

    with monkeypatch.context() as m:
        m.setattr(params.json, "dumps", no_key)
        assert validate_parameters(schema, {"n": 2}, where="w") == {"n": 2}
    schema["properties"]["n"]["type"] = "string"
    assert validate_parameters(schema, {"n": "two"}, where="w") == {"n": "two"}
    with pytest.raises(ParameterError, match="n"):
        validate_parameters(schema, {"n": 3}, where="w")


def test_an_edit_from_one_to_true_is_an_edit() -> None:
    """Python's == says 1 == True; the schema's meaning does not (a const or an enum)."""
    schema = {"type": "object", "properties": {"n": {"const": 1}}}
    assert validate_parameters(schema, {"n": 1}, where="w") == {"n": 1}
    schema["properties"]["n"]["const"] = True
    with pytest.raises(ParameterError, match="n"):
        validate_parameters(schema, {"n": 1}, where="w")
    assert validate_parameters(schema, {"n": True}, where="w") == {"n": True}
