"""Scopes: the names a template sees (`build_scope`) and the task and kv views."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from typing import Any, Final, Protocol, runtime_checkable

from jinja2.defaults import DEFAULT_NAMESPACE

from attune_pg.errors import TemplateError
from attune_pg.redact import KVLookup, SecretSink
from attune_pg.secrets import secret_token

# ------------------------------------------------------------------------------ scopes


class _Missing(Enum):
    MISSING = "MISSING"


MISSING: Final = _Missing.MISSING
"""Default of `build_scope`'s item/index: the names are absent unless given."""


@dataclass(frozen=True, slots=True)
class CurrentTask:
    """The task whose transitions are being evaluated.

    `status` is its final status; `failed()` is true for ``failed`` and for ``timed_out``
    (a timeout is a failure; `timed_out()` tells them apart).
    """

    status: str
    result: Any = None
    error: Any = None


class Scope(dict[str, Any]):
    """The names a template sees (a plain dict), plus the secret sink, which it does not."""

    secrets: SecretSink | None = None


class _StrictMapping(Mapping[str, Any]):
    """A read-only mapping whose missing keys are errors, not undefined values."""

    __slots__ = ("_data",)

    def __init__(self, data: Mapping[str, Any]) -> None:
        self._data = data

    def _missing(self, key: str) -> TemplateError:
        raise NotImplementedError

    def __getitem__(self, key: str) -> Any:
        try:
            return self._wrap(key, self._data[key])
        except (KeyError, TypeError):
            raise self._missing(key) from None

    def _wrap(self, key: str, value: Any) -> Any:
        return value

    def __contains__(self, key: object) -> bool:
        try:
            return key in self._data
        except TypeError:
            return False

    def get(self, key: str, default: Any = None) -> Any:
        if key not in self:
            return default
        return self[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def _names(self) -> str:
        names = sorted(self._data)
        return ", ".join(names[:20]) + (", ..." if len(names) > 20 else "") or "none"


class _TaskView(_StrictMapping):
    """``task.<name>``: result, status, error (+ results, failed_items, total_count)."""

    __slots__ = ("_name",)

    def __init__(self, name: str, data: Mapping[str, Any]) -> None:
        super().__init__(data)
        self._name = name

    def _missing(self, key: str) -> TemplateError:
        return TemplateError(f"task {self._name!r} has no {key!r} (it has: {self._names()})")


class _TaskMap(_StrictMapping):
    """``task`` / ``tasks``: an unknown task name is an error naming it."""

    __slots__ = ()

    def _missing(self, key: str) -> TemplateError:
        return TemplateError(f"task {key!r} has not run (tasks that have: {self._names()})")

    def _wrap(self, key: str, value: Any) -> Any:
        return _TaskView(key, value) if isinstance(value, Mapping) else value


@runtime_checkable
class SecretFlagKV(Protocol):
    """A kv store that can tell whether a key is secret without reading its value.

    `is_secret(key)`: True for a secret, False for a plain value, None when the key is
    not set. With such a store (the engine's `engine.plan.SnapshotKV`), ``kv.get_secret``
    renders a token (`attune_pg.secrets`) and never the value, and ``kv.get`` refuses
    secret keys.
    """

    def is_secret(self, key: str) -> bool | None: ...


class _KVScope:
    """``kv`` in templates: `get(key, default)` and `get_secret(key)`.

    With a `SecretFlagKV` store, secrets only leave as tokens: ``kv.get_secret('k')`` is
    ``"⟦secret:k⟧"`` (an error if `k` is not set or not secret) and ``kv.get`` on a secret
    key is an error. A store with only get/get_secret (test doubles) hands out the value,
    recorded in `sink` when one is given.
    """

    __slots__ = ("_kv", "_sink", "_token")

    def __init__(
        self,
        kv: KVLookup | None,
        sink: SecretSink | None = None,
        token: Callable[[str], str] | None = None,
    ) -> None:
        self._kv = kv
        self._sink = sink
        self._token = token or secret_token

    def _store(self, key: object) -> KVLookup:
        if self._kv is None:
            raise TemplateError("kv is not available here")
        if not isinstance(key, str):
            raise TemplateError(f"a kv key must be a string, not {type(key).__name__}")
        return self._kv

    def get(self, key: str, default: Any = None) -> Any:
        store = self._store(key)
        if isinstance(store, SecretFlagKV) and store.is_secret(key):
            raise TemplateError(f"kv key {key!r} is secret; use kv.get_secret")
        return store.get(key, default)

    def get_secret(self, key: str) -> Any:
        store = self._store(key)
        if not isinstance(store, SecretFlagKV):
            value = store.get_secret(key)
            if self._sink is not None:
                self._sink.add(value)
            return value
        flag = store.is_secret(key)
        if flag is None:
            raise TemplateError(f"kv key {key!r} is not set")
        if not flag:
            raise TemplateError(f"kv key {key!r} is not a secret; use kv.get")
        try:
            return self._token(key)
        except ValueError as exc:
            raise TemplateError(str(exc)) from None

    def __repr__(self) -> str:
        return "<kv>"


class _Keystore:
    """Attune's ``keystore.<key>`` (and ``keystore['a key']``): the kv store by key.

    A secret key renders as ``kv.get_secret`` does (a token with a `SecretFlagKV`
    store: the value never enters the template), a plain key as ``kv.get``; a key that
    is not set is an error naming it. Keys are looked up one at a time, never listed.
    """

    __slots__ = ("_kv", "_scope")

    def __init__(self, kv: KVLookup | None, scope: _KVScope) -> None:
        self._kv = kv
        self._scope = scope

    def __getitem__(self, key: object) -> Any:
        store = self._scope._store(key)
        assert isinstance(key, str)
        if isinstance(store, SecretFlagKV):
            flag = store.is_secret(key)
            if flag is None:
                raise TemplateError(f"keystore: kv key {key!r} is not set")
            return self._scope.get_secret(key) if flag else store.get(key)
        value = store.get(key, MISSING)
        if value is MISSING:
            raise TemplateError(f"keystore: kv key {key!r} is not set")
        return value

    def __contains__(self, key: object) -> bool:
        if self._kv is None or not isinstance(key, str):
            return False
        if isinstance(self._kv, SecretFlagKV):
            return self._kv.is_secret(key) is not None
        return self._kv.get(key, MISSING) is not MISSING

    def __repr__(self) -> str:
        return "<keystore>"


def _transition_functions(current: CurrentTask | None) -> dict[str, Callable[[], Any]]:
    def need(name: str) -> CurrentTask:
        if current is None:
            raise TemplateError(f"{name}() is only available in transitions")
        return current

    def succeeded() -> bool:
        return need("succeeded").status == "succeeded"

    def failed() -> bool:
        return need("failed").status in ("failed", "timed_out")

    def timed_out() -> bool:
        return need("timed_out").status == "timed_out"

    def result() -> Any:
        return need("result").result

    def error() -> Any:
        return need("error").error

    return {f.__name__: f for f in (succeeded, failed, timed_out, result, error)}


def _clock_functions(
    clock: float | None, uuids: Callable[[], str] | None
) -> dict[str, Callable[..., Any]]:
    def now(timestamp: bool = False, utc: bool = True) -> Any:
        if clock is None:
            raise TemplateError("now() is not available here")
        if timestamp:
            return int(clock)
        return datetime.fromtimestamp(clock, tz=UTC).isoformat()

    def uuid() -> str:
        if uuids is None:
            raise TemplateError("uuid() is not available here")
        return uuids()

    return {"now": now, "uuid": uuid}


def _system(system: Mapping[str, Any]) -> Mapping[str, Any]:
    """`system`, plus Attune's ``workflow_start`` (when the execution started, as ISO 8601
    text in UTC, like ``now()``) beside ``started_at`` (epoch seconds)."""
    if "started_at" not in system or "workflow_start" in system:
        return system
    started = system["started_at"]
    start = None if started is None else datetime.fromtimestamp(started, tz=UTC).isoformat()
    return {**system, "workflow_start": start}


# Names a workflow variable cannot be read by bare: the scopes and functions above,
# Jinja's globals and the with-items names (even where they are absent, as in Attune).
_NOT_BARE: Final = frozenset(DEFAULT_NAMESPACE) | {"item", "index"}


def build_scope(
    *,
    parameters: Mapping[str, Any],
    vars: Mapping[str, Any],
    tasks: Mapping[str, Mapping[str, Any]],
    pack_config: Mapping[str, Any] | None,
    system: Mapping[str, Any],
    kv: KVLookup | None,
    current: CurrentTask | None = None,
    item: Any = MISSING,
    index: Any = MISSING,
    secrets: SecretSink | None = None,
    token: Callable[[str], str] | None = None,
    now: float | None = None,
    uuids: Callable[[], str] | None = None,
) -> Scope:
    """The names templates see (DESIGN §4.2).

    - ``parameters``, ``vars``, ``system``: the mappings as given (read-only in templates);
      ``pack``: ``{"config": pack_config}``.
    - ``task`` and ``tasks``: task name -> ``{result, status, error}`` (with-items tasks also
      ``results``, ``failed_items``, ``total_count``); an unknown name raises "task 'x' has
      not run" (test with ``'x' in task``).
    - ``kv``: ``kv.get(key, default)``, ``kv.get_secret(key)``. With a `SecretFlagKV` store
      `get_secret` renders a token, never the value (see `_KVScope`); with a plain store and
      `secrets`, every secret read is recorded there (and masked in error messages).
      Without a store, using kv is an error "kv is not available here". `token` makes
      the token for a key (default: the unsigned reference `secrets.secret_token`; the
      conductor passes one signed for the task whose input it renders).
    - ``succeeded() failed() timed_out() result() error()``: about `current`; without it they
      raise "succeeded() is only available in transitions".
    - ``item`` and ``index`` only when given.
    - Attune's names (its executor's namespaces): ``workflow`` and ``variables`` are
      ``vars`` (the same mapping); ``config`` is ``pack.config``; ``keystore.<key>``
      reads the kv store by key (see `_Keystore`); ``system.workflow_start`` is the
      start time as ISO 8601 text; and a variable may be read by its bare name
      (``{{ counter }}`` for ``vars.counter``) unless a scope, function or Jinja
      global has that name (``_NOT_BARE``), which wins.
    - ``now()``: `now` (epoch seconds from the database clock, passed in: this module
      reads no clock) as ISO 8601 text in UTC; ``now(timestamp=true)`` as integer epoch
      seconds. ``uuid()``: the next id from `uuids` (a deterministic source the
      conductor passes in). Without them, calling either is an error.
    """
    task_map = _TaskMap(tasks)
    config = pack_config if pack_config is not None else {}
    kv_scope = _KVScope(kv, secrets, token)
    scope = Scope(
        {name: value for name, value in vars.items() if name not in _NOT_BARE},
    )
    scope.update(
        parameters=parameters,
        vars=vars,
        pack={"config": config},
        system=_system(system),
        kv=kv_scope,
        task=task_map,
        tasks=task_map,
        workflow=vars,
        variables=vars,
        config=config,
        keystore=_Keystore(kv, kv_scope),
        **_transition_functions(current),
        **_clock_functions(now, uuids),
    )
    scope.secrets = secrets
    if item is not MISSING:
        scope["item"] = item
    if index is not MISSING:
        scope["index"] = index
    return scope
