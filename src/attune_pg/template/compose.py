"""`all_of`: one condition template that holds when every one of several holds.

Attune writes conditions inside conditions (`on_failure: [{when: a, do: [{when: b, next:
t}]}]`); the canonical model has one `when` per transition, so the loader joins the
guards of each path into one template here. The result holds exactly when each part is
truthy as a `when` judges it (`template.truthy`: the text false/no/0/none/null is false),
parts are evaluated left to right and stop at the first that fails, as `and` does.

- Every part a single ``{{ expr }}``: ``{{ (a) and ((b) | truthy) and (c) }}``. The last
  part keeps its value (the caller judges it); the ones before it go through the
  `truthy` filter so that, say, the text "false" stops the chain as it would alone.
  Parts known to give a bool (`BOOLEAN_GUARDS`, e.g. ``{{ succeeded() }}``) are left as
  they are, so the common case reads ``{{ succeeded() and (x > 0) }}``.
- Any part with text around or between its expressions: nested ``{% if %}`` blocks, a
  text part captured with ``{% set %}`` first; the innermost content is the last part's
  text (or ``true``), so the result is text the caller judges with `truthy`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Final

BOOLEAN_GUARDS: Final = frozenset(
    {"{{ succeeded() }}", "{{ failed() }}", "{{ timed_out() }}"}
)

_SINGLE: Final = re.compile(r"\s*\{\{(.*)\}\}\s*", re.DOTALL)


def single_expression(text: str) -> str | None:
    """The expression of a template that is exactly one ``{{ expr }}``, else None."""
    match = _SINGLE.fullmatch(text)
    if match is None:
        return None
    inner = match.group(1)
    if any(mark in inner for mark in ("{{", "}}", "{%", "%}", "{#")):
        return None
    if inner[:1] in ("-", "+"):
        inner = inner[1:]
    if inner[-1:] == "-":
        inner = inner[:-1]
    return inner.strip() or None


def all_of(parts: Sequence[str]) -> str | None:
    """One template that holds iff every part holds (None for no parts)."""
    if not parts:
        return None
    if len(parts) == 1:
        return parts[0]
    exprs = [single_expression(p) for p in parts]
    if all(e is not None for e in exprs):
        terms = []
        for number, (part, expr) in enumerate(zip(parts, exprs, strict=True)):
            if part.strip() in BOOLEAN_GUARDS:
                terms.append(str(expr))
            elif number == len(parts) - 1:
                terms.append(f"({expr})")
            else:
                terms.append(f"(({expr}) | truthy)")
        return "{{ " + " and ".join(terms) + " }}"
    *outer, last = parts
    last_expr = single_expression(last)
    body = last if last_expr is None else f"{{% if ({last_expr}) | truthy %}}true{{% endif %}}"
    for number in range(len(outer) - 1, -1, -1):
        expr = single_expression(outer[number])
        if expr is None:
            name = f"_attune_guard_{number}"
            body = (
                f"{{% set {name} %}}{outer[number]}{{% endset %}}"
                f"{{% if {name} | truthy %}}{body}{{% endif %}}"
            )
        else:
            body = f"{{% if ({expr}) | truthy %}}{body}{{% endif %}}"
    return body
