"""Keeping secrets out of stored data.

`kv.get_secret(key)` hands a template a secret value. The template may put it
into a task's input (that is its purpose), but the copies the engine stores
(results, logs, audit events, views) must not show it. This module provides:

- `SecretSink`: collects the secret values seen while rendering one task.
- `SecretAwareKV`: wraps a kv store so every `get_secret` value lands in a sink.
  `template.build_scope(..., secrets=sink)` applies it for you.
- `redact(value, secrets)`: a deep copy with every occurrence of every secret
  masked inside strings (dict keys and values, list and tuple items, nested).
- `redact_params(params, secret_names)`: mask whole parameters marked secret.

Pure: no I/O, no clock, no threads. A sink is not thread-safe; use one per task.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterable, Iterator, Mapping, Set
from typing import Any, Protocol, runtime_checkable

__all__ = [
    "DEFAULT_MASK",
    "KVLookup",
    "SecretAwareKV",
    "SecretSink",
    "redact",
    "redact_params",
]

DEFAULT_MASK = "***"


@runtime_checkable
class KVLookup(Protocol):
    """What templates need from the key-value store (`kv.get`, `kv.get_secret`)."""

    def get(self, key: str, default: Any = None) -> Any:
        """The value stored under `key`, or `default` when there is none."""
        ...

    def get_secret(self, key: str) -> Any:
        """The decrypted secret stored under `key` (raises when there is none)."""
        ...


class SecretSink:
    """The secret values a rendering has seen (strings of length >= 1).

    `add` accepts any value: strings are kept as they are, numbers as their
    text (a template that renders a numeric secret writes its digits), and the
    string leaves of lists and dicts one by one. Booleans and None are never
    secrets (masking every "True" would destroy the data without hiding anything).
    """

    __slots__ = ("_values",)

    def __init__(self, values: Iterable[Any] = ()) -> None:
        self._values: set[str] = set()
        for value in values:
            self.add(value)

    def add(self, value: Any) -> None:
        """Remember `value` (and, for containers, every string inside it)."""
        if isinstance(value, str):
            if value:
                self._values.add(value)
        elif isinstance(value, bool) or value is None:
            return
        elif isinstance(value, int | float):
            self._values.add(str(value))
        elif isinstance(value, Mapping):
            for item in value.values():
                self.add(item)
        elif isinstance(value, list | tuple | set | frozenset):
            for item in value:
                self.add(item)

    @property
    def values(self) -> frozenset[str]:
        """The secret strings collected so far."""
        return frozenset(self._values)

    def redact(self, value: Any, *, mask: str = DEFAULT_MASK) -> Any:
        """`redact(value, self.values, mask=mask)`."""
        return redact(value, self._values, mask=mask)

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._values))

    def __len__(self) -> int:
        return len(self._values)

    def __contains__(self, value: object) -> bool:
        return value in self._values

    def __repr__(self) -> str:
        # Never print the secrets themselves.
        return f"<SecretSink with {len(self._values)} secret(s)>"


class SecretAwareKV:
    """A `KVLookup` that records every `get_secret` value in a `SecretSink`."""

    __slots__ = ("_kv", "_sink")

    def __init__(self, kv: KVLookup, sink: SecretSink) -> None:
        self._kv = kv
        self._sink = sink

    @property
    def sink(self) -> SecretSink:
        return self._sink

    def get(self, key: str, default: Any = None) -> Any:
        return self._kv.get(key, default)

    def get_secret(self, key: str) -> Any:
        value = self._kv.get_secret(key)
        self._sink.add(value)
        return value

    def __repr__(self) -> str:
        return "<kv>"


def _pattern(secrets: Iterable[str]) -> re.Pattern[str] | None:
    """One alternation of every secret (and its JSON-escaped form), longest first.

    Longest first so a secret that contains another is masked whole. The JSON
    form catches a secret with quotes, backslashes or control characters that
    reached a string through `to_json`.
    """
    forms: set[str] = set()
    for secret in secrets:
        if not isinstance(secret, str) or not secret:
            continue
        forms.add(secret)
        escaped = json.dumps(secret, ensure_ascii=False)[1:-1]
        if escaped:
            forms.add(escaped)
    if not forms:
        return None
    ordered = sorted(forms, key=lambda s: (-len(s), s))
    return re.compile("|".join(re.escape(s) for s in ordered))


def redact(value: Any, secrets: Iterable[str], *, mask: str = DEFAULT_MASK) -> Any:
    """A deep copy of `value` with every occurrence of every secret replaced by `mask`.

    Strings anywhere inside dicts (keys and values), lists and tuples are
    searched; other scalars are returned unchanged. Empty secrets are ignored.
    """
    pattern = _pattern(secrets)
    if pattern is None:
        return copy.deepcopy(value)
    return _redact(value, pattern, mask)


def _redact(value: Any, pattern: re.Pattern[str], mask: str) -> Any:
    if isinstance(value, str):
        return pattern.sub(lambda _m: mask, value)
    if isinstance(value, Mapping):
        return {
            _redact(key, pattern, mask) if isinstance(key, str) else key: _redact(
                item, pattern, mask
            )
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [_redact(item, pattern, mask) for item in value]
    if isinstance(value, tuple):
        return tuple(_redact(item, pattern, mask) for item in value)
    if isinstance(value, int | float | bool) or value is None:
        return value
    return copy.deepcopy(value)


def redact_params(
    params: Mapping[str, Any], secret_names: Set[str], *, mask: str = DEFAULT_MASK
) -> dict[str, Any]:
    """A copy of `params` whose parameters named in `secret_names` are replaced by `mask`.

    The whole value is masked, whatever its type; absent parameters stay absent.
    Other values are shared with `params`, not copied.
    """
    return {name: (mask if name in secret_names else value) for name, value in params.items()}
