"""Attune's `cond ? a : b` inside ``{{ }}``, rewritten to Jinja's ``(a if cond else b)``.

Attune's docs write conditional expressions the C way (``{{ vars.rolled_back ? 'rolled_back'
: 'success' }}``); Jinja has no ``?`` token, so a template using it would not even parse.
Before compiling, every ``{{ ... }}`` that contains a ``?`` outside string literals is
rewritten; anything else (and so every template that was valid Jinja before) is left
byte for byte as it was.

Rules, as in C: ``?:`` binds looser than everything else (``a or b ? x : y`` tests
``a or b``; ``c | length > 0 ? ...`` tests ``c | length > 0``), and groups to the right
(``a ? x : b ? y : z`` is ``a ? x : (b ? y : z)``). It applies within each element of a
list, call, tuple or dict value (``f(a ? 1 : 2, 3)``, ``{'k': a ? 1 : 2}``) and inside
brackets and parentheses; in a call, to each argument's value (``batch(size=big ? 100 :
10)``).

Inside ``{% %}`` statements, the expressions a statement holds: ``{% if a ? b : c %}``
(and ``elif``), ``{% set x = a ? 1 : 2 %}``, ``{% for i in a ? xs : ys if i %}`` (the
iterable and the filter after ``if`` separately), ``{% with a = c ? 1 : 2, b = 3 %}``, and
the arguments of any other statement's calls (``{% call f(a ? 1 : 2) %}``). ``{# #}``
comments and ``{% raw %}`` blocks are left alone. A ``?`` without a matching ``:`` is left
alone, so Jinja reports it as a syntax error.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_OPEN = {"(": ")", "[": "]", "{": "}"}
# `name =` (not `==`) at the start of an element: a keyword argument or an assignment.
_ASSIGN = re.compile(r"^(\s*[A-Za-z_][A-Za-z0-9_]*\s*=)(?!=)")
_STATEMENT = re.compile(r"^(\s*)([A-Za-z_]+)\b(.*)$", re.DOTALL)


@dataclass
class _Group:
    open: str
    items: list[str | _Group] = field(default_factory=list)
    close: str = ""


def rewrite(text: str) -> str:
    """`text` with every ``{{ }}`` ternary turned into a Jinja conditional expression."""
    if "?" not in text:
        return text
    out: list[str] = []
    i = 0
    while True:
        start = _next_block(text, i)
        if start < 0:
            out.append(text[i:])
            return "".join(out)
        kind = text[start : start + 2]
        if kind == "{#":
            end = text.find("#}", start + 2)
            end = len(text) if end < 0 else end + 2
            out.append(text[i:end])
        elif kind == "{%":
            end = _block_end(text, start + 2, "%}")
            if text[start + 2 : end - 2].strip(" -+\t\n") == "raw":
                # Verbatim up to and including the {% endraw %} block.
                close = text.find("endraw", end)
                end = len(text) if close < 0 else _block_end(text, close, "%}")
                out.append(text[i:end])
            else:
                out.append(_statement_block(text, i, start, end))
        else:
            end = _block_end(text, start + 2, "}}")
            inner_end = end - 2 if text.endswith("}}", 0, end) else end
            lead = 3 if text[start + 2 : start + 3] in ("-", "+") else 2
            tail = 1 if text[inner_end - 1 : inner_end] == "-" and inner_end - 1 > start else 0
            inner = text[start + lead : inner_end - tail]
            out.append(text[i : start + lead])
            out.append(_rewrite_expression(inner) if _has_question(inner) else inner)
            out.append(text[inner_end - tail : end])
        i = end


def _statement_block(text: str, i: int, start: int, end: int) -> str:
    """Text from `i` through the ``{% ... %}`` block at `start`, its ternaries rewritten."""
    inner_end = end - 2 if text.endswith("%}", 0, end) else end
    lead = 3 if text[start + 2 : start + 3] in ("-", "+") else 2
    tail = 1 if text[inner_end - 1 : inner_end] in ("-", "+") and inner_end - 1 > start else 0
    inner = text[start + lead : inner_end - tail]
    if _has_question(inner):
        inner = _rewrite_statement(inner)
    return text[i : start + lead] + inner + text[inner_end - tail : end]


def _rewrite_statement(body: str) -> str:
    match = _STATEMENT.match(body)
    if match is None:
        return body
    lead, keyword, rest = match.groups()
    head = lead + keyword
    if keyword in ("if", "elif"):
        return head + " " + _rewrite_expression(rest)
    if keyword == "set":
        assign = _ASSIGN.match(rest)
        if assign is None:
            return head + _rewrite_calls(rest)
        return head + assign.group(1) + " " + _rewrite_expression(rest[assign.end() :])
    if keyword == "with":
        return head + _text(_sequence(_tree(_tokens(rest)), in_dict=False, in_call=True))
    if keyword == "for":
        return head + _rewrite_for(rest)
    return head + _rewrite_calls(rest)


def _rewrite_for(rest: str) -> str:
    """``target in iterable [if filter] [recursive]``: each expression on its own."""
    split = _split_word(_tree(_tokens(rest)), "in")
    if split is None:
        return _rewrite_calls(rest)
    target, word_in, after = split
    split = _split_word(after, "if")
    if split is None:
        return _text(target) + word_in + _rewrite_expression(_text(after))
    iterable, word_if, condition = split
    return (
        _text(target)
        + word_in
        + _rewrite_expression(_text(iterable))
        + word_if
        + _rewrite_expression(_text(condition))
    )


def _split_word(
    items: list[str | _Group], word: str
) -> tuple[list[str | _Group], str, list[str | _Group]] | None:
    """`items` before the first ` word ` outside groups and string literals, the word
    (with its spaces) and what follows; None if there is none."""
    pattern = re.compile(rf"\s{word}\s")
    for number, item in enumerate(items):
        if isinstance(item, str) and item[:1] not in ("'", '"'):
            found = pattern.search(item)
            if found:
                before = [*items[:number], item[: found.start()]]
                after = [item[found.end() :], *items[number + 1 :]]
                return before, found.group(0), [a for a in after if a != ""]
    return None


def _rewrite_calls(text: str) -> str:
    """Only inside the groups of `text` (a statement's call arguments)."""
    out: list[str | _Group] = []
    for item in _tree(_tokens(text)):
        if isinstance(item, _Group):
            inner = _sequence(item.items, in_dict=item.open == "{", in_call=item.open == "(")
            item = _Group(item.open, inner, item.close)
        out.append(item)
    return _text(out)


def _next_block(text: str, i: int) -> int:
    found = [p for p in (text.find(k, i) for k in ("{{", "{%", "{#")) if p >= 0]
    return min(found) if found else -1


def _block_end(text: str, i: int, closer: str) -> int:
    """Index just past `closer`, skipping string literals; the end of text if none."""
    quote = ""
    while i < len(text):
        ch = text[i]
        if quote:
            if ch == "\\":
                i += 2
                continue
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif text.startswith(closer, i):
            return i + len(closer)
        i += 1
    return len(text)


def _tokens(expr: str) -> list[str]:
    """String literals whole, the characters ?:,()[]{} alone, everything else in runs."""
    out: list[str] = []
    run: list[str] = []
    i = 0
    while i < len(expr):
        ch = expr[i]
        if ch in "'\"":
            j = i + 1
            while j < len(expr) and expr[j] != ch:
                j += 2 if expr[j] == "\\" else 1
            if run:
                out.append("".join(run))
                run = []
            out.append(expr[i : j + 1])
            i = j + 1
            continue
        if ch in "?:,()[]{}":
            if run:
                out.append("".join(run))
                run = []
            out.append(ch)
        else:
            run.append(ch)
        i += 1
    if run:
        out.append("".join(run))
    return out


def _has_question(expr: str) -> bool:
    return "?" in _tokens(expr)


def _tree(tokens: list[str]) -> list[str | _Group]:
    root = _Group("")
    stack = [root]
    for token in tokens:
        if token in _OPEN:
            group = _Group(token)
            stack[-1].items.append(group)
            stack.append(group)
        elif token in (")", "]", "}") and len(stack) > 1 and _OPEN[stack[-1].open] == token:
            stack.pop().close = token
        else:
            stack[-1].items.append(token)
    while len(stack) > 1:  # unbalanced: leave the rest as it was written
        stack.pop()
    return root.items


def _text(items: list[str | _Group]) -> str:
    parts: list[str] = []
    for item in items:
        if isinstance(item, _Group):
            parts.append(item.open + _text(item.items) + item.close)
        else:
            parts.append(item)
    return "".join(parts)


def _rewrite_expression(expr: str) -> str:
    return _text(_sequence(_tree(_tokens(expr)), in_dict=False))


def _sequence(
    items: list[str | _Group], *, in_dict: bool, in_call: bool = False
) -> list[str | _Group]:
    """Rewrite each comma-separated element of a group's content."""
    out: list[str | _Group] = []
    element: list[str | _Group] = []
    for item in [*items, ","]:
        if item == ",":
            out.extend(_element(element, in_dict=in_dict, in_call=in_call))
            out.append(",")
            element = []
        else:
            element.append(item)
    return out[:-1]


def _element(
    items: list[str | _Group], *, in_dict: bool, in_call: bool = False
) -> list[str | _Group]:
    items = [
        _Group(i.open, _sequence(i.items, in_dict=i.open == "{", in_call=i.open == "("), i.close)
        if isinstance(i, _Group)
        else i
        for i in items
    ]
    if in_call and items and isinstance(items[0], str):
        # name=value: the keyword stays outside the conditional.
        assign = _ASSIGN.match(items[0])
        if assign is not None:
            rest = items[0][assign.end() :]
            return [assign.group(1), *_conditional([rest, *items[1:]] if rest else items[1:])]
    if in_dict:
        # {key: value}: the first ':' before any '?' separates the key.
        for pos, item in enumerate(items):
            if item == "?":
                break
            if item == ":":
                return [*items[: pos + 1], *_conditional(items[pos + 1 :])]
    return _conditional(items)


def _conditional(items: list[str | _Group]) -> list[str | _Group]:
    if "?" not in items:
        return items
    q = items.index("?")
    depth = 0
    for pos in range(q + 1, len(items)):
        if items[pos] == "?":
            depth += 1
        elif items[pos] == ":":
            if depth == 0:
                cond, then, other = items[:q], items[q + 1 : pos], items[pos + 1 :]
                text = (
                    f"(({_text(_conditional(then))}) if ({_text(cond)})"
                    f" else ({_text(_conditional(other))}))"
                )
                return [text]
            depth -= 1
    return items  # no matching ':': Jinja will report the '?'
