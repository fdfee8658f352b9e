"""The sandboxed environment, the compile cache and rendering (see the package doc)."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Final, NamedTuple

from jinja2 import nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.environment import Template, TemplateExpression
from jinja2.exceptions import (
    SecurityError,
    TemplateSyntaxError,
)
from jinja2.exceptions import (
    TemplateError as JinjaTemplateError,
)
from jinja2.runtime import Context, LoopContext, Macro, StrictUndefined
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import missing

from attune_pg.errors import TemplateError
from attune_pg.redact import SecretSink
from attune_pg.template import ternary
from attune_pg.template.filters import (
    _REMOVED_FILTERS,
    FILTERS,
    _f_format,
    _f_sum,
    _guard_filter,
)
from attune_pg.template.limits import (
    _BUDGET,
    _MACRO_CALL_COST,
    MAX_STRING,
    MAX_VALUE_SIZE,
    _Budget,
    _built,
    _need_len,
    _step,
)
from attune_pg.template.operators import (
    _BINOPS,
    _counted,
    _guard_text_method,
    _safe_range,
)
from attune_pg.template.values import _to_data, _to_text

_CACHE_SIZE: Final = 2048  # compiled templates kept (LRU, keyed by text)
_ERROR_TEXT: Final = 200  # characters of the template quoted in an error
_ERROR_REASON: Final = 500


# ------------------------------------------------------------------------ environment


class _Undefined(StrictUndefined):
    """StrictUndefined whose message lists the keys a dict does have."""

    __slots__ = ()

    @property
    def _undefined_message(self) -> str:
        obj, name = self._undefined_obj, self._undefined_name
        if self._undefined_hint or obj is missing or not isinstance(obj, Mapping):
            return super()._undefined_message
        keys = sorted(str(k) for k in obj)
        shown = ", ".join(keys[:20]) + (", ..." if len(keys) > 20 else "")
        return f"no key {name!r} (keys: {shown or 'none'})"


class _CodeGenerator(CodeGenerator):
    """Counts every loop iteration and checks the size of every ``~``."""

    def visit_For(self, node: nodes.For, frame: Frame) -> None:
        lineno = node.lineno
        counted = nodes.Call(
            nodes.EnvironmentAttribute("attune_counted", lineno=lineno),
            [node.iter],
            [],
            None,
            None,
            lineno=lineno,
        )
        wrapped = nodes.For(
            node.target, counted, node.body, node.else_, node.test, node.recursive, lineno=lineno
        )
        counted.set_environment(self.environment)
        super().visit_For(wrapped, frame)

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self.write("environment.attune_tilde((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


def _checked_concat(parts: Iterable[str]) -> str:
    """Join the output of a macro, block or call: bounded like rendered text."""
    pieces = list(parts)
    size = sum(len(p) for p in pieces)
    _need_len(size, MAX_STRING, "the output of a block or macro")
    return "".join(pieces)


class _Environment(ImmutableSandboxedEnvironment):
    code_generator_class = _CodeGenerator
    intercepted_binops = frozenset(_BINOPS)
    concat = staticmethod(_checked_concat)

    def __init__(self) -> None:
        super().__init__(
            undefined=_Undefined,
            autoescape=False,
            finalize=_to_text,
            keep_trailing_newline=True,
            extensions=["jinja2.ext.loopcontrols"],
        )
        self.globals["range"] = _safe_range
        self.globals.pop("lipsum", None)
        for name in _REMOVED_FILTERS:
            self.filters.pop(name, None)
        self.filters["sum"] = _f_sum
        self.filters["format"] = _f_format
        for name, func in list(self.filters.items()):
            self.filters[name] = _guard_filter(name, func)
        for name, spec in FILTERS.items():
            self.filters[name] = _guard_filter(name, spec.func)

    # Called from generated code (see _CodeGenerator).
    @staticmethod
    def attune_counted(iterable: Iterable[Any]) -> Iterator[Any]:
        return _counted(iterable)

    @staticmethod
    def attune_tilde(parts: tuple[Any, ...]) -> str:
        texts = [_to_text(p) for p in parts]
        _need_len(sum(len(t) for t in texts), MAX_STRING, "'~'")
        return _built("".join(texts), "'~'")  # type: ignore[no-any-return]

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        return _BINOPS[operator](left, right)

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        if isinstance(obj, str) and attr in ("format", "format_map"):
            return False
        return super().is_safe_attribute(obj, attr, value)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        return None  # str.format is refused by is_safe_attribute instead

    def getattr(self, obj: Any, attribute: str) -> Any:
        if isinstance(obj, Mapping) and attribute in obj:
            return obj[attribute]
        return super().getattr(obj, attribute)

    def call(self, context: Context, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        _step(_MACRO_CALL_COST if isinstance(obj, Macro) else 1)
        if isinstance(obj, LoopContext) and args:  # the recursive loop(...) call
            args = (_counted(args[0]), *args[1:])
        owner = getattr(obj, "__self__", None)
        if isinstance(owner, str | bytes):
            name = getattr(obj, "__name__", "")
            args = _guard_text_method(name, owner, args)
            result = super().call(context, obj, *args, **kwargs)
            return _built(result, f"{type(owner).__name__}.{name}()")
        return super().call(context, obj, *args, **kwargs)


_ENV: Final = _Environment()


# ----------------------------------------------------------------------- compiling


class _Compiled(NamedTuple):
    expression: TemplateExpression | None  # the string is exactly one {{ expr }}
    template: Template | None  # mixed text


_SINGLE = re.compile(r"\s*\{\{(.*)\}\}\s*", re.DOTALL)


def _single_expression(text: str, tree: nodes.Template) -> str | None:
    """The source of the expression when `text` is exactly one ``{{ expr }}``."""
    if len(tree.body) != 1 or not isinstance(tree.body[0], nodes.Output):
        return None
    parts = [
        n
        for n in tree.body[0].nodes
        if not (isinstance(n, nodes.TemplateData) and not n.data.strip())
    ]
    if len(parts) != 1 or isinstance(parts[0], nodes.TemplateData):
        return None
    match = _SINGLE.fullmatch(text)
    if match is None:
        return None
    inner = match.group(1)
    if inner[:1] in ("-", "+"):  # {{- and {{+ whitespace control
        inner = inner[1:]
    if inner[-1:] == "-":  # -}}
        inner = inner[:-1]
    return inner


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _compile(text: str) -> _Compiled:
    text = ternary.rewrite(text)  # Attune's `a ? b : c`; other text is unchanged
    tree = _ENV.parse(text)
    source = _single_expression(text, tree)
    if source is not None:
        return _Compiled(_ENV.compile_expression(source, undefined_to_none=False), None)
    return _Compiled(None, _ENV.from_string(tree))


def _quote(text: str) -> str:
    if len(text) > _ERROR_TEXT:
        return repr(text[:_ERROR_TEXT]) + "..."
    return repr(text)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TemplateSyntaxError):
        line = f" (line {exc.lineno})" if exc.lineno and exc.lineno > 1 else ""
        return f"syntax error: {exc.message}{line}"
    if isinstance(exc, RecursionError):
        return "recursion too deep (a macro or recursive loop that does not end?)"
    if isinstance(exc, MemoryError):
        return "out of memory"
    if isinstance(exc, TemplateError | SecurityError | JinjaTemplateError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def _error(
    where: str | None, text: str, exc: BaseException, secrets: SecretSink | None
) -> TemplateError:
    reason = " ".join(_reason(exc).split())
    if secrets:
        reason = secrets.redact(reason)
    if len(reason) > _ERROR_REASON:
        reason = reason[:_ERROR_REASON] + "..."
    prefix = f"{where}: " if where else ""
    return TemplateError(f"{prefix}{_quote(text)}: {reason}")


# ------------------------------------------------------------------------ public API


def is_template(value: object) -> bool:
    """True for a str containing ``{{`` or ``{%`` (only those are rendered)."""
    return isinstance(value, str) and ("{{" in value or "{%" in value)


def has_templates(value: object) -> bool:
    """True if `render` would render anything in `value` (a template string anywhere in
    it, keys included); rendering a value without one needs no scope."""
    if isinstance(value, str):
        return is_template(value)
    if isinstance(value, Mapping):
        return any(is_template(k) or has_templates(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(has_templates(v) for v in value)
    return False


def check_syntax(text: str, *, where: str | None = None) -> None:
    """Raise TemplateError (naming `where` and the template) if `text` does not compile.

    Compiling also finds unknown filters and tests. The result is cached for `render`.
    """
    if not is_template(text):
        return
    try:
        _compile(text)
    except Exception as exc:
        raise _error(where, text, exc, None) from None


def render(value: Any, scope: Mapping[str, Any], *, where: str) -> Any:
    """Render every template inside `value` (see the module doc for the rules).

    `where` names the field for error messages (``task 'build' input.cmd``); nested
    values extend it (``.key``, ``[0]``). The limits apply to the whole call.
    """
    if _BUDGET.get() is not None:
        return _render(value, scope, where)
    token = _BUDGET.set(_Budget())
    try:
        return _render(value, scope, where)
    finally:
        _BUDGET.reset(token)


def _render(value: Any, scope: Mapping[str, Any], where: str) -> Any:
    if isinstance(value, str):
        return _render_str(value, scope, where) if is_template(value) else value
    if isinstance(value, Mapping):
        out: dict[Any, Any] = {}
        for key, item in value.items():
            new_key = key
            if is_template(key):
                new_key = _to_text(_render_str(key, scope, f"{where} key {key!r}"))
                if new_key in out or (new_key != key and new_key in value):
                    raise TemplateError(f"{where}: key {key!r} renders to a duplicate {new_key!r}")
            out[new_key] = _render(item, scope, f"{where}.{key}")
        return out
    if isinstance(value, list | tuple):
        items = [_render(item, scope, f"{where}[{i}]") for i, item in enumerate(value)]
        return items if isinstance(value, list) else tuple(items)
    return value


def _render_str(text: str, scope: Mapping[str, Any], where: str) -> Any:
    secrets = getattr(scope, "secrets", None)
    try:
        compiled = _compile(text)
        if compiled.expression is not None:
            return _to_data(compiled.expression(scope), MAX_VALUE_SIZE)
        assert compiled.template is not None
        pieces: list[str] = []
        size = 0
        for piece in compiled.template.generate(scope):
            size += len(piece)
            _need_len(size, MAX_STRING, "the rendered text")
            pieces.append(piece)
        return "".join(pieces)
    except Exception as exc:
        raise _error(
            where, text, exc, secrets if isinstance(secrets, SecretSink) else None
        ) from None
