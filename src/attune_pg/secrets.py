"""Secret tokens: how `kv.get_secret` values travel from the conductor to an action.

The conductor renders task inputs and stores them in ``attune.task_execution.input``,
which submitters can read. So `kv.get_secret('db_password')` does not render the secret:
it renders a *token* naming it, bound to the execution and the task whose input is being
rendered, and signed (HMAC-SHA256) with the key in ``attune.signing_key``, which only the
owner and the worker role can read::

    ⟦secret:db_password|42|deploy|9f2c…(32 hex digits)⟧

A worker resolves a token only if its signature checks and it names the execution and
task the worker is running; any other token-like text in an input fails the task
("… is not a valid secret token for task …"). So no text a user can assemble (split
over two parameters, JSON-escaped in a result and revived by ``from_json``, copied from
another execution's input) reaches a secret. Outside a task's input (``vars``,
``publish``, ``output_map``, ``when``) ``kv.get_secret`` renders an unsigned reference,
``⟦secret:db_password⟧``, which no worker resolves: use secrets in ``input``. Secret
parameters are kept in ``parameters`` as such a reference (the INSERT trigger moves the
value to kv) and become a signed token when a task's input uses them.

The delimiters are U+27E6 and U+27E7 (MATHEMATICAL WHITE SQUARE BRACKETS); a key
containing either one cannot be a secret (`secret_token` refuses it, and `attune.kv`
keys written through `store.kv.set_value` may not contain them). A token works anywhere a
string does: ``"Bearer {{ kv.get_secret('t') }}"`` renders ``"Bearer ⟦secret:t|…⟧"``.

Just before an action runs, the worker calls `resolve_secrets(input, lookup, binding)`:

- a string that is exactly one token becomes the secret's value, whatever its JSON type
  (a dict secret stays a dict);
- tokens inside a longer string (and in dict keys) are replaced by the secret's text:
  strings as they are, lists and dicts as JSON, other values with ``str()`` (the same
  rule templates use to write a value into text);
- it returns the resolved value and the secret texts it used; the worker masks those
  in whatever it stores or logs afterwards (`redact_secrets`, `redact_text`).

Resolution is one pass: a secret whose value contains token text is not resolved again.
Text substitution is plain text: a token inside a JSON document built with ``to_json``
is replaced without JSON escaping, so pass secrets as whole values where possible.

Inside templates a token is opaque: comparing it, looping over it or taking its length
sees the token, not the secret.

`token_keys(value)` lists what tokens in a value refer to, so that data from outside the
templates (parameters, inquiry responses) can be checked for tokens before it is used.

Pure: no I/O. The lookup callable does the reading (`store.kv.secret_lookup`).
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from attune_pg.errors import ActionError
from attune_pg.redact import DEFAULT_MASK, SecretSink, redact

__all__ = [
    "TOKEN_CLOSE",
    "TOKEN_OPEN",
    "TOKEN_PREFIX",
    "Binding",
    "redact_secrets",
    "redact_text",
    "resolve_secrets",
    "secret_token",
    "signed_token",
    "token_keys",
    "valid_secret_key",
]

TOKEN_OPEN: Final = "\u27e6"  # ⟦
TOKEN_CLOSE: Final = "\u27e7"  # ⟧
TOKEN_PREFIX: Final = TOKEN_OPEN + "secret:"

_TOKEN: Final = re.compile(
    re.escape(TOKEN_PREFIX) + f"([^{TOKEN_OPEN}{TOKEN_CLOSE}]+)" + re.escape(TOKEN_CLOSE)
)

# A signed token's body: key|execution id|task name|signature. The key may hold "|" (the
# fixed-shape tail is matched from the right); task names are identifiers.
_SIGNED: Final = re.compile(r"(?s)(.+)\|(\d+)\|([A-Za-z_][A-Za-z0-9_]*)\|([0-9a-f]{32})")

Lookup = Callable[[str], Any]
"""key -> the secret's value; raises KeyError (or any LookupError) when it is not set."""


def valid_secret_key(key: object) -> bool:
    """True if `key` can be named by a token: a non-empty str without the delimiters."""
    return isinstance(key, str) and bool(key) and TOKEN_OPEN not in key and TOKEN_CLOSE not in key


def secret_token(key: str) -> str:
    """The token standing for secret `key` (ValueError if `key` cannot be named by one)."""
    if not valid_secret_key(key):
        raise ValueError(
            f"kv key {key!r} cannot name a secret: it must be a non-empty string"
            f" without {TOKEN_OPEN!r} or {TOKEN_CLOSE!r}"
        )
    return f"{TOKEN_PREFIX}{key}{TOKEN_CLOSE}"


@dataclass(frozen=True)
class Binding:
    """Where tokens are valid: one task of one execution, and the key that signs them."""

    execution_id: int
    task_name: str
    signing_key: bytes


def _signature(key: str, binding: Binding) -> str:
    message = json.dumps([key, binding.execution_id, binding.task_name]).encode()
    return hmac.new(binding.signing_key, message, hashlib.sha256).hexdigest()[:32]


def signed_token(key: str, binding: Binding) -> str:
    """The token for secret `key` that only `binding`'s task may resolve."""
    if not valid_secret_key(key):
        secret_token(key)  # raises the ValueError naming the key
    body = f"{key}|{binding.execution_id}|{binding.task_name}|{_signature(key, binding)}"
    return f"{TOKEN_PREFIX}{body}{TOKEN_CLOSE}"


def verified_key(body: str, binding: Binding) -> str | None:
    """The secret key of token body `body` if it is signed for `binding`, else None."""
    match = _SIGNED.fullmatch(body)
    if match is None:
        return None
    key, execution, task, signature = match.groups()
    if int(execution) != binding.execution_id or task != binding.task_name:
        return None
    if not hmac.compare_digest(signature, _signature(key, binding)):
        return None
    return key


def token_keys(value: Any) -> set[str]:
    """The secret keys named by tokens anywhere in `value` (strings, dict keys, lists)."""
    found: set[str] = set()
    for text in _strings(value):
        found.update(match.group(1) for match in _TOKEN.finditer(text))
    return found


def _strings(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from _strings(key)
            yield from _strings(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _strings(item)


def _as_text(value: Any) -> str:
    """How a secret is written into a longer string (templates' rule, see module doc)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list | tuple | Mapping):
        return json.dumps(value, ensure_ascii=False, default=str)
    return str(value)


class _Resolver:
    """One resolution: each key is looked up once; the values used are collected."""

    def __init__(self, lookup: Lookup, binding: Binding) -> None:
        self._lookup = lookup
        self._binding = binding
        self._values: dict[str, Any] = {}
        self.sink = SecretSink()

    def value(self, body: str) -> Any:
        key = verified_key(body, self._binding)
        if key is None:
            shown = body.split("|", 1)[0]
            raise ActionError(
                f"task {self._binding.task_name!r} of execution {self._binding.execution_id}:"
                f" {TOKEN_PREFIX}{shown}…{TOKEN_CLOSE} is not a valid secret token for this task"
                " (only kv.get_secret or a secret parameter in this task's own input makes one)"
            )
        if key not in self._values:
            try:
                found = self._lookup(key)
            except LookupError:
                raise ActionError(f"secret {key!r} is not set") from None
            self._values[key] = found
            self.sink.add(found)
        return copy.deepcopy(self._values[key])

    def walk(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.string(value)
        if isinstance(value, Mapping):
            return {
                self.text(key) if isinstance(key, str) else key: self.walk(item)
                for key, item in value.items()
            }
        if isinstance(value, list):
            return [self.walk(item) for item in value]
        if isinstance(value, tuple):
            return tuple(self.walk(item) for item in value)
        return value

    def string(self, text: str) -> Any:
        whole = _TOKEN.fullmatch(text)
        if whole is not None:
            return self.value(whole.group(1))
        return self.text(text)

    def text(self, text: str) -> str:
        if TOKEN_PREFIX not in text:
            return text
        return _TOKEN.sub(lambda match: _as_text(self.value(match.group(1))), text)


def resolve_secrets(value: Any, lookup: Lookup, binding: Binding) -> tuple[Any, set[str]]:
    """Replace every token in `value` by its secret; return it and the secret texts used.

    Every token must be signed for `binding` (this task of this execution): any other
    token-like text raises ActionError naming the task, so nothing a user assembled is
    ever looked up.

    `value` is JSON-like data (dicts, lists, tuples, scalars) and is not modified. A token
    that is a whole string becomes the secret's value (any JSON type); tokens inside longer
    strings or dict keys become the secret's text. The texts (strings, numbers as text,
    the string leaves of list and dict secrets; never booleans or null) are what
    `redact_secrets` needs to mask them afterwards.

    Raises ActionError("secret 'x' is not set") when `lookup` raises a LookupError.
    """
    resolver = _Resolver(lookup, binding)
    resolved = resolver.walk(value)
    return resolved, set(resolver.sink.values)


def redact_secrets(value: Any, secret_texts: Iterable[str], *, mask: str = DEFAULT_MASK) -> Any:
    """A deep copy of `value` with every occurrence of every secret text masked (``***``)."""
    return redact(value, secret_texts, mask=mask)


def redact_text(text: str, secret_texts: Iterable[str], *, mask: str = DEFAULT_MASK) -> str:
    """`text` with every occurrence of every secret text masked (``***``)."""
    result = redact(text, secret_texts, mask=mask)
    assert isinstance(result, str)
    return result


# What a token's opening bracket becomes in data that came from outside: a result,
# a response. It reads the same to a person but is not a token any more.
NEUTRAL_OPEN: Final = "["


def neutralize_tokens(value: Any) -> Any:
    """`value` with every token-like text defused, so data from outside (an action's
    result, an inquiry response) can never smuggle `⟦secret:…⟧` into a later input
    and have a worker resolve it."""
    if isinstance(value, str):
        return (
            value.replace(TOKEN_PREFIX, NEUTRAL_OPEN + "secret:")
            if TOKEN_PREFIX in value
            else value
        )
    if isinstance(value, list):
        return [neutralize_tokens(v) for v in value]
    if isinstance(value, dict):
        return {neutralize_tokens(k): neutralize_tokens(v) for k, v in value.items()}
    return value


def secret_parameter_key(execution_id: int, name: str) -> str:
    """The kv key a `secret: true` parameter of an execution is kept under."""
    return f"execution/{execution_id}/{name}"
