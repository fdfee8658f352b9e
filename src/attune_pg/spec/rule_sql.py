"""A rule's conditions and action_params, compiled to SQL over the event (pure).

`attune.emit_event` matches rules inside the caller's transaction (issue 9 item 3): at
registration, `compile_rule` translates the rule's templates — the workflow template
language, parsed by the very Jinja parser that evaluates them (`template.sandbox`) — into
SQL expressions that `attune.rule_evaluate` runs with ``EXECUTE … USING scope, args``.

How the SQL is built, and why no user text can reach it:
- The SQL is produced only from the Jinja AST, node by node, out of fixed fragments
  written here: calls to the `attune.rx_*` helpers (schema/0014), CASE, and the two
  parameters. ``$1`` is the scope (``{"event": …, "trigger": …, "rule": …, "pack": …}``)
  and ``$2`` the rule's argument array: EVERY literal of the rule — strings, numbers,
  names, attribute keys, criteria fields and values — is an element of ``$2``, referenced
  as ``$2->N`` with N an integer this module counts. The SQL text therefore never holds a
  quote, a dollar-quote or any character of the rule file (tests prove it with hostile
  input).
- Values are jsonb; SQL NULL stands for Jinja's undefined. The helpers implement Python's
  semantics (``1 == 1.0 == true``, ``'a' < 'b'`` by code point, ``'x' in [..]``, type
  errors where Python raises, floats as IEEE doubles printed as Python prints them); a
  value a helper cannot treat exactly as Python would (a float remainder, an integer past
  2**53 mixed with a float, non-ASCII text to lower-case…) raises SQLSTATE AT001, and
  that one event is matched against that rule by a worker instead (the Python engine).
- What this module cannot translate (method calls, ``{% %}`` statements, ``**``, dict
  literals, most filters…) makes the rule use the worker path: `CompiledRule.path` is
  ``worker`` and `note` names the construct and the field.

Short-circuits keep Python's order: ``and``/``or``/``if`` evaluate their right side only
when Python would (CASE), and filter/test arguments are evaluated eagerly, as Python does.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from jinja2 import nodes

from attune_pg.spec.rules import RuleSpec
from attune_pg.template import ternary
from attune_pg.template.sandbox import _ENV, _single_expression, is_template

Json = Any

MAX_NODES: Final = 300  # a longer expression stays on the worker path (bounds SQL size)
SCOPE_NAMES: Final = frozenset({"event", "trigger", "rule", "pack"})
# Attributes of the values a payload holds: `x.items`, `x.count`, `x.startswith` are
# Python methods (or properties), not keys, when the key is missing: worker path.
_BUILTIN_TYPES: Final = (dict, list, str, int, float, bool, type(None))
METHOD_NAMES: Final = frozenset(
    name for kind in _BUILTIN_TYPES for name in dir(kind) if not name.startswith("_")
)
_COMPARE: Final = {"eq": "eq", "ne": "ne", "lt": "lt", "lteq": "le", "gt": "gt", "gteq": "ge"}
_TEST_COMPARE: Final = {
    "==": "eq", "eq": "eq", "equalto": "eq", "!=": "ne", "ne": "ne",
    "<": "lt", "lt": "lt", "lessthan": "lt", "<=": "le", "le": "le",
    ">": "gt", "gt": "gt", "greaterthan": "gt", ">=": "ge", "ge": "ge",
}  # fmt: skip
_ARITH: Final = {
    nodes.Add: "add", nodes.Sub: "sub", nodes.Mul: "mul", nodes.Div: "div",
    nodes.FloorDiv: "floordiv", nodes.Mod: "mod",
}  # fmt: skip
# Tests that only look at the type: they never raise, not even on undefined.
_KIND_TESTS: Final = frozenset(
    {"defined", "undefined", "none", "boolean", "true", "false", "integer", "float",
     "number", "string", "mapping", "sequence", "iterable"}
)  # fmt: skip


def _event_key(base: nodes.Node, key: str) -> str:
    """`event.trigger` (Attune's template resolver's name) is the event's trigger_ref."""
    if key == "trigger" and isinstance(base, nodes.Name) and base.name in ("event", "trigger"):
        return "trigger_ref"
    return key


class Unsupported(Exception):
    """A construct the SQL compiler does not translate; the message names it."""


@dataclass(frozen=True)
class CompiledRule:
    path: Literal["sql", "worker"]
    note: str | None = None  # worker path: why (the field and the construct)
    match_sql: str | None = None  # None: the rule always matches
    params_sql: str | None = None
    args: list[Json] = field(default_factory=list)


def compile_rule(rule: RuleSpec) -> CompiledRule:
    """The rule's SQL (path ``sql``), or why it stays with the worker (path ``worker``)."""
    compiler = _Compiler()
    where = "conditions"
    try:
        match_sql = compiler.conditions(rule.conditions)
        where = "action_params"
        params_sql = f"attune.rx_out({compiler.value(rule.action_params, 'action_params')})"
    except Unsupported as exc:
        text = str(exc)
        note = text if text.startswith(where) else f"{where}: {text}"
        return CompiledRule("worker", note=note)
    return CompiledRule("sql", None, match_sql, params_sql, compiler.args)


# ------------------------------------------------------------------------ compiler


class _Compiler:
    def __init__(self) -> None:
        self.args: list[Json] = []
        self.nodes = 0

    # --------------------------------------------------------------- literals

    def arg(self, value: Json) -> str:
        """A literal as jsonb: an element of $2, never text in the SQL."""
        if isinstance(value, float):
            self.args.append(repr(value))
            return f"attune.rx_flit($2->>{len(self.args) - 1})"
        # Round-trip through JSON so only JSON data is stored (and tuples become lists).
        self.args.append(json.loads(json.dumps(value)))
        return f"($2->{len(self.args) - 1})"

    def text_arg(self, value: str) -> str:
        self.args.append(value)
        return f"($2->>{len(self.args) - 1})"

    # ------------------------------------------------------------- rule parts

    def conditions(self, conditions: Mapping[str, Json] | None) -> str | None:
        if not conditions:
            return None
        if "expression" in conditions:
            text = conditions["expression"]
            return f"attune.rx_cond({self.template(text, 'conditions.expression')})"
        criteria = conditions.get("criteria") or []
        parts = [self.criterion(c, i) for i, c in enumerate(criteria)]
        if not parts:
            return None
        # All must hold; none can raise, so plain AND is exact.
        return "(" + " AND ".join(parts) + ")"

    def criterion(self, criterion: Mapping[str, Json], index: int) -> str:
        where = f"conditions[{index}]"
        path = str(criterion["field"]).split(".")
        if any(p.isdigit() and not p.isascii() for p in path):
            raise Unsupported(f"{where}.field: non-ASCII digits in {criterion['field']!r}")
        op = criterion["operator"]
        wanted = criterion.get("value")
        if op == "contains" and isinstance(wanted, list | dict):
            # Python raises TypeError (unhashable) for a dict payload field.
            raise Unsupported(f"{where}.value: a list or mapping with 'contains'")
        parts = "jsonb_build_array(" + ", ".join(self.text_arg(p) for p in path) + ")"
        value = f"attune.rx_field($1, {parts})"
        return f"attune.rx_criterion({value}, {self.text_arg(op)}, {self.arg(wanted)})"

    def value(self, value: Json, where: str) -> str:
        """action_params: a literal, a template, or a list/mapping of them, as jsonb."""
        if isinstance(value, str):
            return self.template(value, where) if is_template(value) else self.arg(value)
        if isinstance(value, Mapping):
            items: list[str] = []
            for key, item in value.items():
                if is_template(key):
                    raise Unsupported(f"{where}: a templated key {key!r}")
                items += [self.text_arg(str(key)), self.value(item, f"{where}.{key}")]
            return _build("jsonb_build_object", items, 2)
        if isinstance(value, list | tuple):
            items = [self.value(v, f"{where}[{i}]") for i, v in enumerate(value)]
            return _build("jsonb_build_array", items, 1)
        return self.arg(value)

    def template(self, text: str, where: str) -> str:
        """One template string: its value (type-preserving) or its rendered text."""
        try:
            rewritten = ternary.rewrite(text)
            tree = _ENV.parse(rewritten)
        except Exception as exc:  # registration already checked the syntax
            raise Unsupported(f"{where}: does not parse ({exc})") from None
        try:
            if len(tree.body) != 1 or not isinstance(tree.body[0], nodes.Output):
                kinds = sorted({type(n).__name__ for n in tree.body})
                raise Unsupported(f"{{% %}} statements ({', '.join(kinds)})")
            output = tree.body[0]
            if _single_expression(rewritten, tree) is not None:
                (expr,) = [
                    n
                    for n in output.nodes
                    if not (isinstance(n, nodes.TemplateData) and not n.data.strip())
                ]
                return f"attune.rx_val({self.expr(expr)})"
            parts = [
                self.text_arg(n.data) if isinstance(n, nodes.TemplateData) else self.expr(n)
                for n in output.nodes
            ]
            return (
                "attune.rx_render(jsonb_build_array("
                + ", ".join(p if p.startswith("($2->>") else f"attune.rx_tag({p})" for p in parts)
                + "))"
            )
        except Unsupported as exc:
            raise Unsupported(f"{where}: {exc}") from None

    # ------------------------------------------------------------ expressions

    def expr(self, node: nodes.Node) -> str:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise Unsupported(f"more than {MAX_NODES} operations")
        handler: Callable[[Any], str] | None = getattr(self, f"_{type(node).__name__}", None)
        if handler is None:
            raise Unsupported(_describe(node))
        return handler(node)

    def _Const(self, node: nodes.Const) -> str:
        value = node.value
        if value is not None and not isinstance(value, str | int | float):
            raise Unsupported(f"the literal {value!r}")
        return self.arg(value)

    def _Name(self, node: nodes.Name) -> str:
        if node.name == "system":  # Attune's system.timestamp/rule/event: engine/rules.py
            raise Unsupported("Attune's system.* names")
        if node.name in SCOPE_NAMES:
            return f"($1->{self.text_arg(node.name)})"
        if node.name in _ENV.globals:
            raise Unsupported(f"the global {node.name!r}")
        return "NULL::jsonb"  # undefined

    def _List(self, node: nodes.List) -> str:
        return "attune.rx_list(" + _build("jsonb_build_array", self._tagged(node.items), 1) + ")"

    def _tagged(self, items: Sequence[nodes.Node]) -> list[str]:
        # jsonb_build_array turns SQL NULL into JSON null: tag undefined so it stays one.
        return [f"attune.rx_tag({self.expr(i)})" for i in items]

    def _Getattr(self, node: nodes.Getattr) -> str:
        return self._key(self.expr(node.node), _event_key(node.node, node.attr))

    def _key(self, obj: str, name: str) -> str:
        if name in METHOD_NAMES:
            raise Unsupported(f"the attribute .{name} (a method of Python values)")
        return f"attune.rx_attr({obj}, {self.text_arg(name)})"

    def _Getitem(self, node: nodes.Getitem) -> str:
        arg = node.arg
        if isinstance(arg, nodes.Const) and type(arg.value) is str:
            return self._key(self.expr(node.node), _event_key(node.node, arg.value))
        if isinstance(arg, nodes.Const) and type(arg.value) is int:
            return f"attune.rx_item({self.expr(node.node)}, {self.arg(arg.value)})"
        raise Unsupported("a subscript that is not a literal string or integer")

    def _Not(self, node: nodes.Not) -> str:
        return f"to_jsonb(NOT attune.rx_truth({self.expr(node.node)}))"

    def _And(self, node: nodes.And) -> str:
        left, right = self.expr(node.left), self.expr(node.right)
        # The left side once (a subquery), the right side only when Python evaluates it.
        return f"(SELECT CASE WHEN attune.rx_truth(l.v) THEN {right} ELSE l.v END{_LEFT(left)})"

    def _Or(self, node: nodes.Or) -> str:
        left, right = self.expr(node.left), self.expr(node.right)
        return f"(SELECT CASE WHEN attune.rx_truth(l.v) THEN l.v ELSE {right} END{_LEFT(left)})"

    def _CondExpr(self, node: nodes.CondExpr) -> str:
        if node.expr2 is None:
            raise Unsupported("'a if b' without else")
        test = self.expr(node.test)
        yes, no = self.expr(node.expr1), self.expr(node.expr2)
        return f"(CASE WHEN attune.rx_truth({test}) THEN {yes} ELSE {no} END)"

    def _Concat(self, node: nodes.Concat) -> str:
        return "attune.rx_concat(jsonb_build_array(" + ", ".join(self._tagged(node.nodes)) + "))"

    def _Neg(self, node: nodes.Neg) -> str:
        return f"attune.rx_neg({self.expr(node.node)})"

    def _Pos(self, node: nodes.Pos) -> str:
        return f"attune.rx_pos({self.expr(node.node)})"

    def _binary(self, node: nodes.BinExpr) -> str:
        op = _ARITH[type(node)]
        return f"attune.rx_{op}({self.expr(node.left)}, {self.expr(node.right)})"

    _Add = _Sub = _Mul = _Div = _FloorDiv = _Mod = _binary

    def _Compare(self, node: nodes.Compare) -> str:
        # a < b < c is (a < b) and (b < c), b evaluated once, c only if a < b.
        left = self.expr(node.expr)
        return self._chain(left, list(node.ops))

    def _chain(self, left: str, ops: list[nodes.Operand]) -> str:
        first, rest = ops[0], ops[1:]
        right = self._operand(first)
        if not rest:
            return f"to_jsonb({self._compare(first.op, left, right)})"
        test = self._compare(first.op, "l.a", "l.b")
        tail = self._chain("l.b", rest)
        return (
            f"(SELECT CASE WHEN {test} THEN {tail} ELSE to_jsonb(false) END"
            f" FROM (SELECT {left} AS a, {right} AS b) l)"
        )

    def _operand(self, operand: nodes.Operand) -> str:
        if operand.op in ("in", "notin") and isinstance(operand.expr, nodes.Tuple):
            return self._List(nodes.List(operand.expr.items))  # same membership as a list
        return self.expr(operand.expr)

    def _compare(self, op: str, left: str, right: str) -> str:
        if op == "in":
            return f"attune.rx_in({left}, {right})"
        if op == "notin":
            return f"NOT attune.rx_in({left}, {right})"
        if op not in _COMPARE:
            raise Unsupported(f"the comparison {op!r}")
        return f"attune.rx_{_COMPARE[op]}({left}, {right})"

    # ------------------------------------------------------------ filters, tests

    def _args(self, node: nodes.Filter | nodes.Test, names: Sequence[str]) -> dict[str, nodes.Node]:
        """Positional and keyword arguments by name; anything else is unsupported."""
        if node.dyn_args is not None or node.dyn_kwargs is not None:
            raise Unsupported(f"*args/**kwargs in {node.name!r}")
        if len(node.args) > len(names):
            raise Unsupported(f"{len(node.args)} arguments to {node.name!r}")
        out: dict[str, nodes.Node] = dict(zip(names, node.args, strict=False))
        keywords: list[Any] = list(node.kwargs)  # nodes.Keyword (typed loosely by Jinja)
        for kw in keywords:
            if kw.key not in names or kw.key in out:
                raise Unsupported(f"the argument {kw.key!r} of {node.name!r}")
            out[kw.key] = kw.value
        return out

    def _const(self, node: nodes.Node | None, kinds: tuple[type, ...], what: str) -> Any:
        if not isinstance(node, nodes.Const) or type(node.value) not in kinds:
            raise Unsupported(what)
        return node.value

    def _Filter(self, node: nodes.Filter) -> str:
        name = node.name
        if node.node is None:
            raise Unsupported("a filter block")
        value = self.expr(node.node)
        if name in ("length", "count", "first", "last", "list", "string", "abs", "to_json"):
            self._args(node, ())
            return f"attune.rx_f_{'length' if name == 'count' else name}({value})"
        if name in ("lower", "upper"):
            self._args(node, ())
            return f"attune.rx_f_case({value}, {name == 'upper'})"
        if name == "trim":
            a = self._args(node, ("chars",))
            if "chars" not in a:
                return f"attune.rx_f_trim({value}, NULL)"
            chars = self._const(a["chars"], (str,), "trim with chars that are not a literal")
            return f"attune.rx_f_trim({value}, {self.text_arg(chars)})"
        if name in ("default", "d"):
            a = self._args(node, ("default_value", "boolean"))
            fallback = self.expr(a["default_value"]) if "default_value" in a else self.arg("")
            flag = "boolean" in a and self._const(
                a["boolean"], (bool,), "default's boolean argument is not a literal"
            )
            return f"attune.rx_f_default({value}, attune.rx_tag({fallback}), {bool(flag)})"
        if name in ("int", "float"):
            a = self._args(node, ("default",) if name == "float" else ("default", "base"))
            if "base" in a:
                raise Unsupported("int with a base")
            fallback = (
                self.expr(a["default"]) if "default" in a else self.arg(0 if name == "int" else 0.0)
            )
            return f"attune.rx_f_{name}({value}, attune.rx_tag({fallback}))"
        if name == "round":
            a = self._args(node, ("precision", "method"))
            precision = (
                0
                if "precision" not in a
                else self._const(
                    a["precision"], (int,), "round with a precision that is not a literal integer"
                )
            )
            method = (
                "common"
                if "method" not in a
                else self._const(a["method"], (str,), "round with a method that is not a literal")
            )
            if not 0 <= precision <= 15 or method not in ("common", "ceil", "floor"):
                raise Unsupported(f"round({precision!r}, {method!r})")
            return f"attune.rx_f_round({value}, {self.arg(precision)}, {self.text_arg(method)})"
        if name == "join":
            a = self._args(node, ("d", "attribute"))
            if "attribute" in a:
                raise Unsupported("join with an attribute")
            sep = (
                ""
                if "d" not in a
                else self._const(a["d"], (str,), "join with a separator that is not a literal")
            )
            return f"attune.rx_f_join({value}, {self.text_arg(sep)})"
        raise Unsupported(f"the filter {name!r}")

    def _Test(self, node: nodes.Test) -> str:
        name = node.name
        value = self.expr(node.node)
        if name in _KIND_TESTS:
            self._args(node, ())
            return f"to_jsonb(attune.rx_is({value}, {self.text_arg(name)}))"
        if name in ("even", "odd"):
            self._args(node, ())
            return f"to_jsonb(attune.rx_parity({value}, {int(name == 'odd')}))"
        if name == "divisibleby":
            a = self._args(node, ("num",))
            num = self._const(
                a.get("num"), (int,), "divisibleby with a number that is not a literal integer"
            )
            if num == 0:
                raise Unsupported("divisibleby(0)")
            return f"to_jsonb(attune.rx_divisible({value}, {self.arg(num)}))"
        if name in ("in", *_TEST_COMPARE):
            a = self._args(node, ("other",))
            if "other" not in a:
                raise Unsupported(f"the test {name!r} without an argument")
            other = self.expr(a["other"])
            if name == "in":
                return f"to_jsonb(attune.rx_in({value}, {other}))"
            return f"to_jsonb(attune.rx_{_TEST_COMPARE[name]}({value}, {other}))"
        raise Unsupported(f"the test {name!r}")


def _LEFT(left: str) -> str:  # upper case: it reads as SQL
    return f" FROM (SELECT {left} AS v) l"


def _build(function: str, items: list[str], per: int) -> str:
    """jsonb_build_object/array take at most 100 arguments: chunk and concatenate."""
    if not items:
        return f"{function}()"
    size = 100 - 100 % (2 * per) if per == 2 else 100
    chunks = [items[i : i + size] for i in range(0, len(items), size)]
    return "(" + " || ".join(f"{function}({', '.join(c)})" for c in chunks) + ")"


def _describe(node: nodes.Node) -> str:
    if isinstance(node, nodes.Call):
        target = node.node
        if isinstance(target, nodes.Getattr):
            return f"the method call .{target.attr}()"
        if isinstance(target, nodes.Name):
            return f"the call {target.name}()"
        return "a call"
    names = {
        "Pow": "'**'", "Dict": "a mapping literal", "Tuple": "a tuple", "Slice": "a slice",
        "Getitem": "a subscript", "MarkSafe": "safe text",
    }  # fmt: skip
    kind = type(node).__name__
    return names.get(kind, f"the construct {kind}")
