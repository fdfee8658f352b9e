"""Secret collection and redaction."""

from __future__ import annotations

from typing import Any

from attune_pg.redact import (
    KVLookup,
    SecretAwareKV,
    SecretSink,
    redact,
    redact_params,
)


class FakeKV:
    def get(self, key: str, default: Any = None) -> Any:
        return {"plain": "visible"}.get(key, default)

    def get_secret(self, key: str) -> Any:
        return {"token": "s3cr3t", "nested": {"user": "bob", "pw": "pa55"}}[key]


def test_redact_nested_structures() -> None:
    value: dict[str, Any] = {
        "cmd": "curl -H 'Authorization: s3cr3t' https://x",
        "list": ["s3cr3t", "ok", ["deep s3cr3t s3cr3t"], ("t s3cr3t", 1)],
        "s3cr3t-key": {"n": 5, "b": True, "none": None, "f": 1.5},
    }
    out = redact(value, ["s3cr3t"])
    assert out == {
        "cmd": "curl -H 'Authorization: ***' https://x",
        "list": ["***", "ok", ["deep *** ***"], ("t ***", 1)],
        "***-key": {"n": 5, "b": True, "none": None, "f": 1.5},
    }
    # a deep copy: the original is untouched and nothing is shared
    assert value["list"][0] == "s3cr3t"
    assert out["list"][2] is not value["list"][2]


def test_redact_mask_and_multiple_secrets() -> None:
    assert redact("a-b-c", ["a", "c"], mask="#") == "#-b-#"
    assert redact("abcdef", ["abc", "abcdef"]) == "***"  # longest first
    assert redact("x", []) == "x"
    assert redact("x", [""]) == "x"  # empty secrets are ignored
    assert redact("a.b", ["."]) == "a***b"  # metacharacters are literal


def test_redact_json_escaped_form() -> None:
    secret = 'pa"ss\\word'
    text = '{"password": "pa\\"ss\\\\word"}'
    assert "pa" not in redact(text, [secret]).replace("password", "")


def test_redact_leaves_non_strings_alone() -> None:
    assert redact(1234, ["1234"]) == 1234
    assert redact(None, ["x"]) is None
    assert redact([True, 2.5], ["x"]) == [True, 2.5]


def test_sink_collects_values() -> None:
    sink = SecretSink(["a"])
    sink.add("b")
    sink.add("")
    sink.add(None)
    sink.add(True)
    sink.add(4711)
    sink.add({"user": "u1", "inner": ["p1", 2]})
    assert sink.values == frozenset({"a", "b", "4711", "u1", "p1", "2"})
    assert len(sink) == 6
    assert "b" in sink
    assert list(sink) == sorted(sink.values)
    assert "u1" not in repr(sink)
    assert sink.redact({"k": "u1:p1"}) == {"k": "***:***"}


def test_secret_aware_kv_records_get_secret_only() -> None:
    sink = SecretSink()
    kv = SecretAwareKV(FakeKV(), sink)
    assert isinstance(kv, KVLookup)
    assert kv.get("plain") == "visible"
    assert kv.get("missing", 1) == 1
    assert len(sink) == 0
    assert kv.get_secret("token") == "s3cr3t"
    assert kv.get_secret("nested") == {"user": "bob", "pw": "pa55"}
    assert sink.values == frozenset({"s3cr3t", "bob", "pa55"})
    assert kv.sink is sink
    assert "s3cr3t" not in repr(kv)


def test_redact_params() -> None:
    params = {"user": "bob", "password": "pw", "token": {"a": 1}, "n": 3}
    out = redact_params(params, {"password", "token", "absent"})
    assert out == {"user": "bob", "password": "***", "token": "***", "n": 3}
    assert params["password"] == "pw"
    assert redact_params(params, set(), mask="x") == params
