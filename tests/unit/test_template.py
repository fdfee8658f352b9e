"""Templates: type-preserving render, scopes, filters, errors, sandbox and limits."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from markupsafe import Markup

from attune_pg import template as tpl
from attune_pg.errors import TemplateError
from attune_pg.template import (
    FILTERS,
    LIMITS,
    CurrentTask,
    SecretSink,
    build_scope,
    check_syntax,
    is_template,
    render,
    truthy,
)


class FakeKV:
    def __init__(self) -> None:
        self.data = {"color": "blue", "count": 3}
        self.secrets = {"token": "hunter2", "pin": "4711"}

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def get_secret(self, key: str) -> Any:
        return self.secrets[key]


TASKS = {
    "build": {"result": {"image": "app:1", "items": [1, 2]}, "status": "succeeded", "error": None},
    "fan": {
        "result": None,
        "status": "failed",
        "error": "2 items failed",
        "results": [10, None, 30, None],
        "failed_items": [1, 3],
        "total_count": 4,
    },
}


def scope(**overrides: Any) -> tpl.Scope:
    args: dict[str, Any] = {
        "parameters": {"app": "web", "n": 3, "regions": ["eu", "us"], "flag": False},
        "vars": {"deployment_id": None, "healthy": [], "items": "key, not method"},
        "tasks": TASKS,
        "pack_config": {"region": "eu-west-1"},
        "system": {"execution_id": 42, "workflow_ref": "demo.deploy", "attempt": 1},
        "kv": FakeKV(),
    }
    args.update(overrides)
    return build_scope(**args)


def r(value: Any, sc: tpl.Scope | None = None, where: str = "task 't' input.x") -> Any:
    return render(value, scope() if sc is None else sc, where=where)


def err(value: Any, sc: tpl.Scope | None = None, where: str = "task 't' input.x") -> str:
    with pytest.raises(TemplateError) as info:
        r(value, sc, where)
    message = str(info.value)
    assert "\n" not in message
    return message


# --------------------------------------------------------------------- types


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{{ parameters.n }}", 3),
        ("{{ parameters.n * 2 + 1 }}", 7),
        ("{{ 1.5 }}", 1.5),
        ("{{ parameters.regions }}", ["eu", "us"]),
        ("{{ {'a': parameters.n, 'b': [true]} }}", {"a": 3, "b": [True]}),
        ("{{ parameters.flag }}", False),
        ("{{ true }}", True),
        ("{{ vars.deployment_id }}", None),
        ("{{ none }}", None),
        ("{{ 'text' }}", "text"),
        ("{{ '' }}", ""),
        ("  {{ parameters.n }}\n", 3),
        ("{{- parameters.n -}}", 3),
        ("{{ -1 }}", -1),
        ("{{ '}}' }}", "}}"),
        ("{{ (1, 2) }}", [1, 2]),
        ("{{ range(3) }}", [0, 1, 2]),
        ("{{ [1, 2, 3] | select('odd') }}", [1, 3]),
        ("{{ {'a': 1}.keys() }}", ["a"]),
        ("{{ {'a': 1}.items() }}", [["a", 1]]),
    ],
)
def test_single_expression_keeps_type(text: str, expected: Any) -> None:
    result = r(text)
    assert result == expected
    assert type(result) is type(expected)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("app={{ parameters.app }}", "app=web"),
        ("{{ parameters.n }}{{ parameters.n }}", "33"),
        ("{{ parameters.n }} ", 3),  # whitespace around one expression is still native
        ("n: {{ parameters.n }}", "n: 3"),
        ("{{ parameters.regions }} x", '["eu", "us"] x'),
        ("x {{ {'a': none, 'b': true} }}", 'x {"a": null, "b": true}'),
        ("{{ none }} {{ true }}", "None True"),
        ("{% if parameters.flag %}yes{% else %}no{% endif %}", "no"),
        ("{% for r in parameters.regions %}{{ r }};{% endfor %}", "eu;us;"),
        ("line\n{{ parameters.app }}\n", "line\nweb\n"),
        ("{{ 'a' ~ parameters.regions }}", 'a["eu", "us"]'),
        ("{% raw %}{{ x }}{% endraw %}", "{{ x }}"),
        ("{% for i in range(5) %}{% if i == 2 %}{% break %}{% endif %}{{ i }}{% endfor %}", "01"),
    ],
)
def test_mixed_text_renders_to_str(text: str, expected: Any) -> None:
    assert r(text) == expected


def test_markup_becomes_plain_str() -> None:
    result = r("{{ parameters.m }}", scope(parameters={"m": Markup("<b>")}))
    assert result == "<b>"
    assert type(result) is str


def test_non_templates_are_returned_unchanged() -> None:
    obj = object()
    for value in (5, 1.5, None, True, "50% off {x}", "{# just a comment #}", obj):
        assert r(value) is value


def test_render_walks_nested_structures() -> None:
    value = {
        "cmd": "deploy {{ parameters.app }}",
        "count": "{{ parameters.n }}",
        "nested": [{"r": "{{ parameters.regions[0] }}"}, 7, ("{{ 1 }}", "x")],
        "{{ parameters.app }}_key": "v",
    }
    assert r(value) == {
        "cmd": "deploy web",
        "count": 3,
        "nested": [{"r": "eu"}, 7, (1, "x")],
        "web_key": "v",
    }


def test_templated_key_is_always_text_and_duplicates_are_refused() -> None:
    assert r({"{{ parameters.n }}": 1}) == {"3": 1}
    message = err({"{{ 'a' }}": 1, "a": 2})
    assert "duplicate 'a'" in message


def test_dict_dot_access_prefers_keys_over_methods() -> None:
    assert r("{{ vars.items }}") == "key, not method"
    assert r("{{ task.build.result.items }}") == [1, 2]
    assert r("{{ {'a': 1}.items() | list }}") == [["a", 1]]


# --------------------------------------------------------------------- errors


def test_undefined_name_names_where_and_expression() -> None:
    message = err("echo {{ nope }}")
    assert message == "task 't' input.x: 'echo {{ nope }}': 'nope' is undefined"


def test_missing_key_lists_available_keys() -> None:
    message = err("{{ parameters.nope }}")
    assert "'{{ parameters.nope }}'" in message
    assert "no key 'nope'" in message
    assert "app, flag, n, regions" in message


def test_nested_where_path() -> None:
    message = err({"env": {"A": ["ok", "{{ missing }}"]}}, where="task 'build' input")
    assert message.startswith("task 'build' input.env.A[1]: '{{ missing }}': ")


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("{{ 1 / 0 }}", "ZeroDivisionError: division by zero"),
        ("{{ parameters.regions.nope }}", "has no attribute 'nope'"),
        ("{{ parameters.n.foo.bar }}", "has no attribute 'foo'"),
        ("{{ 'a' + 1 }}", "TypeError"),
        ("{{ x", "syntax error"),
        ("{{ 1 | no_such_filter }}", "No filter named 'no_such_filter'"),
        ("{% include 'other' %}", "no loader"),
        ("{{ succeeded }}", "succeeded is a function, not a value: call it, e.g. succeeded()"),
        ("{% set ns = namespace() %}{{ ns }}", "a namespace() is not a value"),
        ("{{ parameters.regions[5] }}", "has no element 5"),
    ],
)
def test_errors_are_one_line_template_errors(text: str, reason: str) -> None:
    message = err(text)
    assert message.startswith("task 't' input.x: ")
    assert repr(text) in message
    assert reason in message


def test_long_template_is_shortened_in_the_message() -> None:
    text = "x" * 500 + "{{ nope }}"
    message = err(text)
    assert len(message) < 400
    assert "..." in message


def test_undefined_inside_a_list_is_an_error() -> None:
    assert "'nope' is undefined" in err("{{ [1, nope] }}")
    assert "'nope' is undefined" in err("x {{ [1, nope] }}")


def test_check_syntax() -> None:
    check_syntax("plain text {x}")
    check_syntax("{{ a.b | default(1) }} and {% if x %}y{% endif %}")
    with pytest.raises(TemplateError, match=r"^'\{\{ x': syntax error: unexpected end"):
        check_syntax("{{ x")
    with pytest.raises(TemplateError, match="No filter named 'nope'"):
        check_syntax("{{ 1 | nope }}")
    with pytest.raises(TemplateError, match=r"^task 'a' when: '\{% if %\}'"):
        check_syntax("{% if %}", where="task 'a' when")
    with pytest.raises(TemplateError, match=r"line 2"):
        check_syntax("ok\n{{ (( }}")


def test_is_template() -> None:
    assert is_template("{{ x }}")
    assert is_template("a {% if x %}{% endif %}")
    assert not is_template("{# comment #}")
    assert not is_template("{ x }")
    assert not is_template(None)
    assert not is_template(["{{ x }}"])


def test_has_templates_looks_everywhere_render_would() -> None:
    assert not tpl.has_templates({"n": 1, "tags": ["a", {"b": "{ x }"}], "none": None})
    assert not tpl.has_templates({})
    assert tpl.has_templates({"n": [1, {"deep": "x {{ y }}"}]})
    assert tpl.has_templates({"{{ key }}": 1})
    assert tpl.has_templates(("{% if x %}{% endif %}",))
    assert tpl.has_templates("{{ x }}") and not tpl.has_templates(7)


def test_compiled_templates_are_cached() -> None:
    text = "cached {{ parameters.n }} 8f1c"
    r(text)
    hits = tpl._compile.cache_info().hits
    r(text)
    assert tpl._compile.cache_info().hits == hits + 1


# --------------------------------------------------------------------- scopes


def test_parameters_vars_pack_system() -> None:
    assert r("{{ parameters.app }}") == "web"
    assert r("{{ vars.healthy }}") == []
    assert r("{{ pack.config.region }}") == "eu-west-1"
    assert r("{{ system.execution_id }}") == 42
    assert r("{{ system['workflow_ref'] }}") == "demo.deploy"
    assert r("{{ pack.config }}", scope(pack_config=None)) == {}


def test_scope_data_cannot_be_mutated() -> None:
    sc = scope()
    for text in (
        "{{ vars.update({'a': 1}) }}",
        "{{ parameters.regions.append('x') }}",
        "{{ parameters.regions.pop() }}",
        "{{ vars.clear() }}",
    ):
        assert "unsafe" in err(text, sc)
    assert sc["parameters"]["regions"] == ["eu", "us"]


def test_rendered_values_do_not_alias_scope_data() -> None:
    sc = scope()
    out = r("{{ parameters.regions }}", sc)
    out.append("x")
    assert sc["parameters"]["regions"] == ["eu", "us"]


def test_task_scope_attribute_and_item_access() -> None:
    assert r("{{ task.build.result.image }}") == "app:1"
    assert r("{{ tasks.build.status }}") == "succeeded"
    assert r("{{ task['build']['result']['image'] }}") == "app:1"
    assert r("{{ task.build.error }}") is None
    assert r("{{ 'build' in task }}") is True
    assert r("{{ 'nope' in task }}") is False
    assert r("{{ task.build }}") == TASKS["build"]


def test_with_items_task_fields() -> None:
    assert r("{{ task.fan.results }}") == [10, None, 30, None]
    assert r("{{ task.fan.failed_items }}") == [1, 3]
    assert r("{{ task.fan.total_count }}") == 4


def test_unknown_task_is_an_error_naming_it() -> None:
    for text in ("{{ task.nope.result }}", "{{ task['nope'] }}", "{{ tasks.nope }}"):
        message = err(text)
        assert "task 'nope' has not run" in message
        assert "build, fan" in message


def test_unknown_task_field_is_an_error() -> None:
    message = err("{{ task.build.results }}")
    assert "task 'build' has no 'results' (it has: error, result, status)" in message


def test_kv_get_and_get_secret() -> None:
    assert r("{{ kv.get('color') }}") == "blue"
    assert r("{{ kv.get('nope', 'dflt') }}") == "dflt"
    assert r("{{ kv.get('nope') }}") is None
    assert r("{{ kv.get_secret('token') }}") == "hunter2"


def test_kv_unavailable() -> None:
    sc = scope(kv=None)
    assert "kv is not available here" in err("{{ kv.get('color') }}", sc)
    assert "kv is not available here" in err("{{ kv.get_secret('token') }}", sc)


def test_secrets_are_collected_and_masked_in_errors() -> None:
    sink = SecretSink()
    sc = scope(secrets=sink)
    assert r("pw={{ kv.get_secret('token') }}", sc) == "pw=hunter2"
    assert "hunter2" in sink
    assert sc.secrets is sink
    message = err("{{ parameters[kv.get_secret('token')] }}", sc)
    assert "hunter2" not in message
    assert "no key '***'" in message


def test_transition_functions() -> None:
    cases = {
        "succeeded": (True, False, False),
        "failed": (False, True, False),
        "timed_out": (False, True, True),  # a timeout is a failure too
        "canceled": (False, False, False),
    }
    for status, expected in cases.items():
        sc = scope(current=CurrentTask(status, {"ok": 1}, "boom"))
        got = r(["{{ succeeded() }}", "{{ failed() }}", "{{ timed_out() }}"], sc)
        assert tuple(got) == expected, status
        assert r("{{ result().ok }}", sc) == 1
        assert r("{{ error() }}", sc) == "boom"
    sc = scope(current=CurrentTask("succeeded", {"healthy": True}, None))
    assert r("{{ succeeded() and result().healthy }}", sc) is True


def test_transition_functions_outside_transitions() -> None:
    for name in ("succeeded", "failed", "timed_out", "result", "error"):
        assert f"{name}() is only available in transitions" in err(f"{{{{ {name}() }}}}")


def test_item_and_index_only_when_given() -> None:
    assert "'item' is undefined" in err("{{ item }}")
    assert "'index' is undefined" in err("{{ index }}")
    sc = scope(item={"host": "a"}, index=0)
    assert r("{{ item.host }}-{{ index }}", sc) == "a-0"
    assert r("{{ item }}", scope(item=None, index=1)) is None


def test_scope_names() -> None:
    assert set(scope()) == {
        "parameters", "vars", "workflow", "variables", "pack", "config", "keystore", "system",
        "kv", "task", "tasks", "succeeded", "failed", "timed_out", "result", "error", "now",
        "uuid",
        # the variables by their bare names (Attune's fallback)
        "deployment_id", "healthy", "items",
    }  # fmt: skip


# --------------------------------------------------------------------- truthy


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (True, True),
        (False, False),
        (None, False),
        (0, False),
        (1, True),
        ([], False),
        ([0], True),
        ({}, False),
        ("", False),
        ("false", False),
        ("False", False),
        (" FALSE\n", False),
        ("no", False),
        ("0", False),
        ("None", False),
        ("null", False),
        ("true", True),
        ("yes", True),
        ("x", True),
        ("0.0", True),
    ],
)
def test_truthy(value: Any, expected: bool) -> None:
    assert truthy(value) is expected


# --------------------------------------------------------------------- filters


def test_filter_table_is_documented() -> None:
    assert set(FILTERS) == {
        "to_json", "from_json", "append", "prepend", "combine", "regex_match",
        "regex_search", "regex_replace", "basename", "dirname", "slice", "batch",
        "filter", "join", "truthy",
    }  # fmt: skip
    for name, spec in FILTERS.items():
        assert callable(spec.func), name
        assert spec.doc and "\n" not in spec.doc, name


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{{ {'b': 1, 'a': [1, none]} | to_json }}", '{"b": 1, "a": [1, null]}'),
        ("{{ {'b': 1, 'a': 2} | to_json(sort_keys=true) }}", '{"a": 2, "b": 1}'),
        ("{{ [1] | to_json(indent=2) }}", "[\n  1\n]"),
        ("{{ 'é' | to_json }}", '"é"'),
        ("{{ '{\"a\": [1, 2]}' | from_json }}", {"a": [1, 2]}),
        ("{{ ('[' ~ parameters.n ~ ']') | from_json }}", [3]),
        ("{{ parameters.regions | append('ap') }}", ["eu", "us", "ap"]),
        ("{{ parameters.regions | prepend('ap') }}", ["ap", "eu", "us"]),
        ("{{ vars.healthy | append(1) | append(2) }}", [1, 2]),
        ("{{ {'a': 1, 'b': 1} | combine({'b': 2}, {'c': 3}) }}", {"a": 1, "b": 2, "c": 3}),
        ("{{ 'v1.2.3' | regex_match('v\\\\d') }}", True),
        ("{{ 'xv1' | regex_match('v\\\\d') }}", False),
        ("{{ 'ABC' | regex_match('abc', ignorecase=true) }}", True),
        ("{{ 'id=42;' | regex_search('\\\\d+') }}", "42"),
        ("{{ 'id=42;' | regex_search('id=(\\\\d+)') }}", "42"),
        ("{{ 'k=v' | regex_search('(\\\\w)=(\\\\w)') }}", ["k", "v"]),
        ("{{ 'abc' | regex_search('\\\\d') }}", None),
        ("{{ 'a1b22' | regex_replace('\\\\d+', '#') }}", "a#b#"),
        ("{{ 'a1b22' | regex_replace('(\\\\d)', '<\\\\1>', count=1) }}", "a<1>b22"),
        ("{{ '/srv/app/run.sh' | basename }}", "run.sh"),
        ("{{ '/srv/app/run.sh' | dirname }}", "/srv/app"),
        ("{{ parameters.regions | join(',') }}", "eu,us"),
        ("{{ [[1], [2, 3]] | sum(start=[]) }}", [1, 2, 3]),
        ("{{ [1, 2, 3] | sum }}", 6),
        ("{{ vars.nope | default('d') }}", "d"),
        ("{{ '%s-%03d' | format('a', 7) }}", "a-007"),
        ("{{ '%(x)s!' | format(x=1) }}", "1!"),
        ("{{ 'a b' | replace(' ', '_') | upper }}", "A_B"),
        ("{{ [3, 1, 2] | sort | first }}", 1),
        ("{{ [1, 2, 3, 4, 5] | batch(2) | list }}", [[1, 2], [3, 4], [5]]),
        ("{{ {'a': 1} | tojson }}", '{"a": 1}'),
    ],
)
def test_filters(text: str, expected: Any) -> None:
    assert r(text) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("{{ 'nope' | from_json }}", "from_json: invalid JSON"),
        ("{{ 5 | from_json }}", "from_json needs a string"),
        ("{{ {'a': 1} | append('c') }}", "append needs a list"),
        ("{{ [1] | combine({}) }}", "combine needs dicts"),
        ("{{ 'a' | regex_match('(') }}", "invalid regular expression"),
        ("{{ [1] | to_json(indent=100) }}", "indent must be between 0 and 16"),
        ("{{ [1] | random }}", "No filter named 'random'"),
        ("{{ 'x' | urlize }}", "No filter named 'urlize'"),
        ("{{ lipsum() }}", "'lipsum' is undefined"),
    ],
)
def test_filter_errors(text: str, reason: str) -> None:
    assert reason in err(text)


# --------------------------------------------------------------------- sandbox


ESCAPES = [
    "{{ ''.__class__ }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ ().__class__.__bases__[0].__subclasses__() }}",
    "{{ [].__class__.__base__ }}",
    "{{ succeeded.__globals__ }}",
    "{{ succeeded.__closure__ }}",
    "{{ kv._kv }}",
    "{{ kv.get.__func__ }}",
    "{{ kv.__dict__ }}",
    "{{ task.__class__ }}",
    "{{ task._data }}",
    "{{ dict.mro() }}",
    "{{ cycler.__init__.__globals__ }}",
    "{{ joiner.__init__.__globals__['os'] }}",
    "{{ namespace.__init__ }}",
    "{{ range.__globals__ }}",
    "{{ self.__init__.__globals__ }}",
    "{{ self._TemplateReference__context }}",
    "{{ ''|attr('__class__') }}",
    "{{ ''|attr('\\x5f\\x5fclass\\x5f\\x5f') }}",
    "{{ ''['__class__'] }}",
    "{{ '{0.__class__}'.format(1) }}",
    "{{ '{0}'.format(1) }}",
    "{{ '{x.__class__}'.format_map({'x': 1}) }}",
    "{{ 'x'|attr('format') }}",
    "{{ ['{0.__class__}']|map(attribute='format')|first }}",
    "{{ (1).real.__class__ }}",
    "{{ parameters.regions.append }}",
]


@pytest.mark.parametrize("text", ESCAPES)
def test_sandbox_escapes_are_refused(text: str) -> None:
    message = err(text)
    assert repr(text) in message


# --------------------------------------------------------------------- limits


BOMBS = [
    ("{{ range(10**9) }}", "range() of 1,000,000,000 numbers"),
    ("{{ range(10**30)|list }}", "range()"),
    ("{{ 'a' * 10**9 }}", "'*' would build"),
    ("{{ 10**9 * 'a' }}", "'*' would build"),
    ("{{ [1] * 10**9 }}", "'*' would build"),
    ("{{ 2 ** 1000000000 }}", "'**' would build an integer"),
    ("{{ (2 ** 60000) * (2 ** 60000) }}", "bits"),
    ("{{ 'x'.center(10**9) }}", "str.center()"),
    ("{{ 'x'.ljust(10**9) }}", "str.ljust()"),
    ("{{ 'x'.zfill(10**9) }}", "str.zfill()"),
    ("{{ ('\t' * 1000).expandtabs(10**6) }}", "str.expandtabs()"),
    ("{{ ('a' * 100000).replace('a', 'b' * 1000) }}", "str.replace()"),
    ("{{ ('a' * 999999).join(['x'] * 999999) }}", "str.join()"),
    ("{{ ('a' * 1000).translate({97: 'b' * 100000}) }}", "str.translate()"),
    ("{{ 'x' | center(10**9) }}", "center would build"),
    ("{{ ('a\n' * 400000) | indent(1000) }}", "indent would build"),
    ("{{ ('a' * 900000) | replace('a', 'bb') }}", "replace would build"),
    ("{{ ('a' * 900000) | wordwrap(1, wrapstring='x' * 1000) }}", "wordwrap would build"),
    ("{{ (['a' * 900000] * 1000) | join(',') }}", "join would build"),
    ("{{ [1] | batch(10**9, 'x') | list }}", "batch would build"),
    ("{{ [1] | slice(10**9) | list }}", "slice would build"),
    ("{{ range(100) | map('center', 10**9) | list }}", "center would build"),
    ("{{ ('a' * 900000) | regex_replace('a', 'bb') }}", "regex_replace would build"),
    ("{{ '%999999999d' % 1 }}", "'%' formatting would build"),
    ("{{ '%.999999999f' % 1.5 }}", "'%' formatting would build"),
    ("{{ ('%(a)s' * 200000) % {'a': 'x' * 900000} }}", "'%' formatting would build"),
    ("{{ '%*d' % (10**9, 1) }}", "'*' widths are not allowed"),
    ("{{ '%0999999999d' | format(1) }}", "'%' formatting would build"),
    ("{{ ('x' * 900000) ~ ('y' * 900000) }}", "'~' would build"),
    (
        "{% set ns = namespace(s='ab') %}{% for i in range(100) %}{% set ns.s = ns.s ~ ns.s %}"
        "{% endfor %}",
        "'~' would build",
    ),
    (
        "{% set ns = namespace(s='ab') %}{% for i in range(100) %}{% set ns.s = ns.s + ns.s %}"
        "{% endfor %}",
        "'+' would build",
    ),
    (
        "{% set ns = namespace(l=[1]) %}{% for i in range(100) %}{% set ns.l = ns.l + ns.l %}"
        "{% endfor %}",
        "'+' would build",
    ),
    (
        "{% set ns = namespace(s='x' * 900000, l=[]) %}{% for i in range(10000) %}"
        "{% set ns.l = ns.l + [ns.s ~ i] %}{% endfor %}",
        "built more than 50,000,000",
    ),
    (
        "{% for i in range(10000) %}{% for j in range(10000) %}{% endfor %}{% endfor %}",
        "more than 1,000,000 steps",
    ),
    (
        "{% for i in range(10000) %}{% for j in range(10000) %}{{ '' }}{% endfor %}{% endfor %}",
        "more than 1,000,000 steps",
    ),
    ("{% for i in [1] recursive %}{{ loop(range(10000)) }}{% endfor %}", "recursion too deep"),
    ("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "recursion too deep"),
    (
        "{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}"
        "{{ f(60) }}",
        "steps",
    ),
    (
        "{% set s = 'x' * 900000 %}{% macro m() %}{% for i in range(5000) %}{{ s }}{% endfor %}"
        "{% endmacro %}{{ m() | length }}",
        "the output of a block or macro",
    ),
    (
        "{% set s = 'x' * 900000 %}{% set x %}{% for i in range(5000) %}{{ s }}{% endfor %}"
        "{% endset %}",
        "the output of a block or macro",
    ),
    (
        "{% set s = 'x' * 900000 %}{% for i in range(5000) %}{{ s }}{% endfor %}",
        "the rendered text",
    ),
    ("{% for i in range(5000) %}{{ 'x' * 900000 }}{% endfor %}", "the rendered text"),
    (
        "{% macro m() %}{% for i in range(5000) %}{{ 'x' * 900000 }}{% endfor %}{% endmacro %}"
        "{{ m() }}",
        "built more than 50,000,000",
    ),
    ("{{ [[[1] * 1000] * 1000] * 1000 }}", "value larger than 16,000,000"),
    ("x {{ [[[1] * 1000] * 1000] * 1000 }}", "value larger than 1,000,000"),
    ("{{ ([[[1] * 1000] * 1000] * 1000) | to_json }}", "value larger than 1,000,000"),
    ("{{ ([[[1] * 1000] * 1000] * 1000) | string }}", "value larger than 1,000,000"),
    (
        "{% set ns = namespace(l=[]) %}{% for i in range(300) %}{% set ns.l = [ns.l] %}"
        "{% endfor %}{{ ns.l }}",
        "nested deeper than 200 levels",
    ),
]


@pytest.mark.parametrize(("text", "reason"), BOMBS)
def test_bombs_are_refused_by_a_limit(text: str, reason: str) -> None:
    # The refusal names the limit that tripped: the bomb was stopped by counting (loop
    # steps, sizes), not by running to the end, which no clock needs to measure.
    assert reason in err(text)


def test_limits_within_bounds_still_work() -> None:
    assert len(r("{{ range(10000) | list }}")) == 10_000
    assert len(r("{{ 'a' * 1000000 }}")) == 1_000_000
    assert len(r("{{ [0] * 1000000 }}")) == 1_000_000
    assert r("{{ (2 ** 1000) > 0 }}") is True
    assert (
        r("{% for i in range(1000) %}{% for j in range(500) %}{% endfor %}{% endfor %}ok") == "ok"
    )
    deep = {"a": [[[[1]]]]}
    assert r("{{ parameters }}", scope(parameters=deep)) == deep


def test_deep_scope_value_is_refused() -> None:
    deep: Any = 1
    for _ in range(250):
        deep = [deep]
    assert "nested deeper" in err("{{ parameters.deep }}", scope(parameters={"deep": deep}))


def test_budget_covers_the_whole_render_call() -> None:
    loop = "{% for i in range(1000) %}{% for j in range(600) %}{% endfor %}{% endfor %}"
    assert r(loop) == ""
    message = err({"a": loop, "b": loop})
    assert "steps" in message
    assert message.startswith("task 't' input.x.b: ")
    assert r(loop) == ""  # a new call has a new budget


def test_limits_table() -> None:
    assert LIMITS["range"] == 10_000
    assert LIMITS["string_length"] == 1_000_000


def test_generators_are_consumed_with_limits() -> None:
    def gen() -> Iterator[int]:
        yield from range(3)

    assert r("{{ parameters.g }}", scope(parameters={"g": gen()})) == [0, 1, 2]


def test_arbitrary_objects_are_not_values() -> None:
    assert "object is not a value" in err("{{ parameters.o }}", scope(parameters={"o": object()}))
