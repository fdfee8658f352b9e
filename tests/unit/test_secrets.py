"""Secret tokens: rendering through the kv view, resolution and redaction (no database)."""

from __future__ import annotations

from typing import Any

import pytest

from attune_pg.errors import ActionError, TemplateError
from attune_pg.secrets import (
    TOKEN_PREFIX,
    Binding,
    redact_secrets,
    redact_text,
    resolve_secrets,
    secret_token,
    signed_token,
    token_keys,
    valid_secret_key,
)
from attune_pg.template import SecretSink, build_scope, render
from attune_pg.template.scope import SecretFlagKV

SECRETS: dict[str, Any] = {
    "token": "s3cr3t",
    "pin": 4711,
    "creds": {"user": "bob", "pw": "pa55"},
    "hosts": ["db1", "db2"],
    "flag": True,
    "nothing": None,
}


def lookup(key: str) -> Any:
    return SECRETS[key]


class FlagKV:
    """A SecretFlagKV test double: plain values and secrets, like attune.kv."""

    def __init__(self) -> None:
        self.plain: dict[str, Any] = {"color": "blue"}
        self.reads: list[str] = []

    def is_secret(self, key: str) -> bool | None:
        if key in SECRETS:
            return True
        return False if key in self.plain else None

    def get(self, key: str, default: Any = None) -> Any:
        return self.plain.get(key, default)

    def get_secret(self, key: str) -> Any:
        self.reads.append(key)
        return SECRETS[key]


# Tokens valid for task 't' of execution 1 only.
B = Binding(1, "t", b"k" * 32)


def tok(key: str) -> str:
    return signed_token(key, B)


def render_with(text: Any, kv: Any, sink: SecretSink | None = None, token: Any = None) -> Any:
    scope = build_scope(
        parameters={},
        vars={},
        tasks={},
        pack_config=None,
        system={},
        kv=kv,
        secrets=sink,
        token=token,
    )
    return render(text, scope, where="task 't' input")


# ------------------------------------------------------------------ tokens


def test_token_format() -> None:
    assert secret_token("db_password") == "\u27e6secret:db_password\u27e7"
    assert secret_token("db_password") == "⟦secret:db_password⟧"
    assert secret_token("a b/c.d:e") == f"{TOKEN_PREFIX}a b/c.d:e⟧"


@pytest.mark.parametrize("key", ["", "a⟦b", "a⟧b", 5, None])
def test_keys_that_cannot_be_tokens(key: Any) -> None:
    assert not valid_secret_key(key)
    with pytest.raises(ValueError, match="cannot name a secret"):
        secret_token(key)


def test_token_keys_finds_tokens_everywhere() -> None:
    value = {
        "a": secret_token("x"),
        secret_token("k") + "!": ["pre " + secret_token("y") + secret_token("x"), 3, None],
        "t": ("⟦secret:z⟧",),
        "fake": "⟦secret:⟧ ⟦secret:a⟦b⟧ [secret:q]",
    }
    assert token_keys(value) == {"x", "y", "z", "k"}
    assert token_keys("no tokens") == set()


# ------------------------------------------------------------------ the kv view


def test_get_secret_renders_a_token_and_never_reads_the_value() -> None:
    kv = FlagKV()
    sink = SecretSink()
    assert render_with("{{ kv.get_secret('token') }}", kv, sink) == secret_token("token")
    assert render_with("Bearer {{ kv.get_secret('token') }}", kv, sink) == ("Bearer ⟦secret:token⟧")
    assert render_with({"pw": "{{ kv.get_secret('creds') }}"}, kv) == {"pw": secret_token("creds")}
    assert kv.reads == []
    assert len(sink) == 0  # no value was seen, so nothing to mask


def test_get_secret_refuses_plain_and_missing_keys() -> None:
    kv = FlagKV()
    with pytest.raises(TemplateError, match=r"kv key 'color' is not a secret; use kv\.get$"):
        render_with("{{ kv.get_secret('color') }}", kv)
    with pytest.raises(TemplateError, match="kv key 'nope' is not set"):
        render_with("{{ kv.get_secret('nope') }}", kv)
    with pytest.raises(TemplateError, match="must be a string, not int"):
        render_with("{{ kv.get_secret(5) }}", kv)


def test_get_refuses_secret_keys() -> None:
    kv = FlagKV()
    assert isinstance(kv, SecretFlagKV)
    assert render_with("{{ kv.get('color') }}", kv) == "blue"
    assert render_with("{{ kv.get('nope', 'dflt') }}", kv) == "dflt"
    with pytest.raises(TemplateError, match=r"kv key 'token' is secret; use kv\.get_secret"):
        render_with("{{ kv.get('token') }}", kv)


def test_a_key_with_delimiters_cannot_be_a_secret_token() -> None:
    kv = FlagKV()
    SECRETS["odd⟧key"] = "x"
    try:
        with pytest.raises(TemplateError, match="cannot name a secret"):
            render_with("{{ kv.get_secret('odd⟧key') }}", kv)
    finally:
        del SECRETS["odd⟧key"]


# ------------------------------------------------------------------ resolution


def test_resolve_whole_tokens_keep_the_json_type() -> None:
    value = {
        "s": tok("token"),
        "n": tok("pin"),
        "d": tok("creds"),
        "l": [tok("hosts"), tok("flag"), tok("nothing")],
        "plain": ["x", 1, None, False, {"deep": 2.5}],
    }
    resolved, texts = resolve_secrets(value, lookup, B)
    assert resolved == {
        "s": "s3cr3t",
        "n": 4711,
        "d": {"user": "bob", "pw": "pa55"},
        "l": [["db1", "db2"], True, None],
        "plain": ["x", 1, None, False, {"deep": 2.5}],
    }
    # booleans and null are never masked; numbers as their text; leaves of containers
    assert texts == {"s3cr3t", "4711", "bob", "pa55", "db1", "db2"}
    assert value["s"] == tok("token")  # the input is not modified


def test_resolve_tokens_inside_strings_and_keys() -> None:
    value = {
        "auth": "Bearer " + tok("token"),
        "url": f"https://{tok('token')}@h/{tok('pin')}?x={tok('flag')}",
        "json": "creds=" + tok("creds") + " hosts=" + tok("hosts"),
        "key " + tok("token"): ("t", tok("pin") + "!"),
    }
    resolved, texts = resolve_secrets(value, lookup, B)
    assert resolved == {
        "auth": "Bearer s3cr3t",
        "url": "https://s3cr3t@h/4711?x=True",
        "json": 'creds={"user": "bob", "pw": "pa55"} hosts=["db1", "db2"]',
        "key s3cr3t": ("t", "4711!"),
    }
    assert texts == {"s3cr3t", "4711", "bob", "pa55", "db1", "db2"}


def test_resolve_looks_up_each_key_once_and_shares_nothing() -> None:
    calls: list[str] = []

    def counting(key: str) -> Any:
        calls.append(key)
        return SECRETS[key]

    resolved, _ = resolve_secrets([tok("creds"), tok("creds"), "a" + tok("creds")], counting, B)
    assert calls == ["creds"]
    assert resolved[0] == resolved[1] and resolved[0] is not resolved[1]
    assert resolved[0] is not SECRETS["creds"]


def test_resolution_is_one_pass() -> None:
    nested = {"outer": "x" + tok("inner"), "inner": "never"}
    resolved, texts = resolve_secrets(tok("outer"), nested.__getitem__, B)
    assert resolved == f"x{tok('inner')}"
    assert texts == {f"x{tok('inner')}"}


def test_resolve_without_tokens_returns_the_value_and_no_texts() -> None:
    value = {"a": ["b", 1, {"c": None}], "fake": "⟦secret:⟧ and ⟦other:x⟧"}
    assert resolve_secrets(value, lookup, B) == (value, set())


def test_missing_secret_is_a_clear_action_error() -> None:
    with pytest.raises(ActionError, match="secret 'gone' is not set"):
        resolve_secrets({"x": ["ok", "pw=" + tok("gone")]}, lookup, B)


# ------------------------------------------------------------------ redaction


def test_redact_secrets_masks_every_occurrence_deeply() -> None:
    _, texts = resolve_secrets([tok("token"), tok("pin"), tok("creds")], lookup, B)
    result: dict[str, Any] = {
        "stdout": "login bob with pa55 and s3cr3t; pin 4711",
        "nested": [{"s3cr3t": ("s3cr3ts3cr3t", 4711, True)}],
        "json": '{"pw": "pa55"}',
    }
    assert redact_secrets(result, texts) == {
        "stdout": "login *** with *** and ***; pin ***",
        "nested": [{"***": ("******", 4711, True)}],
        "json": '{"pw": "***"}',
    }
    assert result["stdout"].startswith("login bob")  # a copy


def test_redact_text_and_json_escaped_secrets() -> None:
    texts = {'p"w\\x'}
    assert redact_text('error: p"w\\x rejected', texts) == "error: *** rejected"
    assert redact_text('{"pw": "p\\"w\\\\x"}', texts) == '{"pw": "***"}'
    assert redact_text("nothing here", set()) == "nothing here"
    assert redact_text("abc", {"b"}, mask="#") == "a#c"


def test_round_trip_stores_no_plaintext() -> None:
    """What the conductor stores has tokens; what the worker stores is redacted."""
    kv = FlagKV()
    stored_input = render_with(
        {"cmd": "psql -p {{ kv.get_secret('token') }}", "creds": "{{ kv.get_secret('creds') }}"},
        kv,
        token=tok,
    )
    assert "s3cr3t" not in repr(stored_input) and "pa55" not in repr(stored_input)
    action_input, texts = resolve_secrets(stored_input, lookup, B)
    assert action_input == {"cmd": "psql -p s3cr3t", "creds": {"user": "bob", "pw": "pa55"}}
    result = {"echo": action_input}
    assert "s3cr3t" not in repr(redact_secrets(result, texts))
    assert "pa55" not in repr(redact_secrets(result, texts))


def test_tokens_resolve_only_where_they_were_signed() -> None:
    """No text a user can assemble resolves: unsigned, split and joined, a wrong
    signature, another task's or execution's token, another key's signature."""
    good = tok("token")
    assert resolve_secrets(good, lookup, B) == ("s3cr3t", {"s3cr3t"})
    body = good[len(TOKEN_PREFIX) : -1]
    key, execution, task, signature = body.split("|")
    forged = [
        secret_token("token"),
        f"{TOKEN_PREFIX}pin|{execution}|{task}|{signature}⟧",
        f"{TOKEN_PREFIX}{key}|2|{task}|{signature}⟧",
        f"{TOKEN_PREFIX}{key}|{execution}|u|{signature}⟧",
        f"{TOKEN_PREFIX}{key}|{execution}|{task}|{'0' * 32}⟧",
        signed_token("token", Binding(1, "t", b"x" * 32)),
        "pre " + signed_token("token", Binding(2, "t", B.signing_key)),
    ]
    for text in forged:
        with pytest.raises(ActionError, match="not a valid secret token for this task"):
            resolve_secrets({"x": text}, lookup, B)
    # The error names the key, never a value.
    with pytest.raises(ActionError) as info:
        resolve_secrets(secret_token("token"), lookup, B)
    assert "s3cr3t" not in str(info.value) and "'t' of execution 1" in str(info.value)
