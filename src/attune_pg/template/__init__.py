"""Templates: Jinja2 in a sandbox, type-preserving rendering and the scopes (DESIGN §4.2).

Rendering rules
- Only strings containing ``{{`` or ``{%`` are templates; everything else is returned
  unchanged. `render` walks dicts (values, and keys that are templates), lists and tuples.
- A string that is exactly one ``{{ expr }}`` (whitespace around it allowed) evaluates to the
  expression's own value: list, dict, int, float, bool, None or str. Tuples, ranges and
  generators (``x | select(...)``) become lists, so the value is plain JSON-like data.
- Mixed text renders to a str. Where a value turns into text (``{{ }}`` inside text, the
  ``~`` operator) lists and dicts are written as JSON, other values with ``str()``.
  A function or macro used as a value (``{{ succeeded }}`` without parentheses) is an error.
- Dot access on a dict prefers the key: ``result().items`` is the ``items`` key when the
  result has one (plain Jinja would return the dict's method).
- Every failure is one `TemplateError` line: ``<where>: '<template>': <reason>``, where
  ``where`` names the field (e.g. ``task 'build' input.cmd``). Secret values collected in
  the scope's `SecretSink` are masked in the reason.

Scopes (`build_scope`): ``parameters``, ``vars``, ``pack.config``, ``system``, ``kv``,
``task``/``tasks``, the transition functions and, in with-items, ``item`` and ``index``.

Limits (`LIMITS`), so that a template cannot exhaust a worker:
- ``range()`` yields at most 10,000 numbers;
- ``*``, ``+``, ``%``, ``~``, string methods and filters may not build a string over
  1,000,000 characters or a list over 1,000,000 items; integers stay under 65,536 bits;
- rendered text is at most 1,000,000 characters; a single-expression value at most about
  16,000,000 characters of JSON and 200 levels deep;
- one `render` call runs at most 1,000,000 loop iterations and calls, and builds at most
  50,000,000 characters/items in total;
- deep recursion (macros calling themselves) becomes a TemplateError.
What is not bounded: the time of one regular expression (``regex_*`` filters) on a
pathological pattern, because the module reads no clock; patterns come from workflow files.

Sandbox: Jinja's ImmutableSandboxedEnvironment (no ``_``/dunder attributes, no mutation of
lists and dicts) and, in addition, ``str.format``/``format_map`` are refused (use ``%`` or
the ``format`` filter). Removed built-ins: ``lipsum`` (global), ``random`` (filter: renders
must be deterministic), ``urlize``, ``xmlattr``, ``pprint`` (HTML/debug helpers with
unbounded output). Added filters: see `FILTERS`.

Pure module: no I/O, no clock, no threads.
"""

from attune_pg.redact import KVLookup, SecretAwareKV, SecretSink
from attune_pg.template.filters import FILTERS, Filter
from attune_pg.template.limits import LIMITS
from attune_pg.template.sandbox import _compile as _compile  # tests read its cache_info()
from attune_pg.template.sandbox import check_syntax, has_templates, is_template, render
from attune_pg.template.scope import MISSING, CurrentTask, Scope, build_scope
from attune_pg.template.values import truthy

__all__ = [
    "FILTERS",
    "LIMITS",
    "MISSING",
    "CurrentTask",
    "Filter",
    "KVLookup",
    "Scope",
    "SecretAwareKV",
    "SecretSink",
    "build_scope",
    "check_syntax",
    "has_templates",
    "is_template",
    "render",
    "truthy",
]
