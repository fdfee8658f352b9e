"""Attune's `cond ? a : b`: the rewrite to Jinja's conditional, and what it leaves alone."""

from __future__ import annotations

import pytest

from attune_pg import template
from attune_pg.errors import TemplateError
from attune_pg.template.ternary import rewrite


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{{ a ? 1 : 2 }}", "{{(( 1 ) if ( a ) else ( 2 ))}}"),
        ("{{ a ? 1 : b ? 2 : 3 }}", "{{(( 1 ) if ( a ) else ((( 2 ) if ( b ) else ( 3 ))))}}"),
        ("{{ a ? b ? 1 : 2 : 3 }}", "{{(((( 1 ) if ( b ) else ( 2 ))) if ( a ) else ( 3 ))}}"),
        ("{{ f(a ? 1 : 2, 3) }}", "{{ f((( 1 ) if (a ) else ( 2)), 3) }}"),
        ("{{- a ? 1 : 2 -}}", "{{-(( 1 ) if ( a ) else ( 2 ))-}}"),
        # a keyword argument keeps its name outside the conditional
        ("{{ x | batch(size=a ? 1 : 2) }}", "{{ x | batch(size=(( 1 ) if (a ) else ( 2))) }}"),
        # statements: the expressions they hold
        ("{% if a ? b : c %}", "{% if (( b ) if ( a ) else ( c ))%}"),
        ("{%- elif a ? b : c -%}", "{%- elif (( b ) if ( a ) else ( c ))-%}"),
        ("{% set x = a ? 1 : 2 %}", "{% set x = (( 1 ) if ( a ) else ( 2 ))%}"),
        ("{% for i in a ? x : y %}", "{% for i in (( x ) if (a ) else ( y ))%}"),
        (
            "{% for i in a ? x : y if i ? 1 : 0 %}",
            "{% for i in (( x ) if (a ) else ( y)) if (( 1 ) if (i ) else ( 0 ))%}",
        ),
        ("{% with v = a ? 1 : 2, w = 3 %}", "{% with v =(( 1 ) if ( a ) else ( 2)), w = 3 %}"),
        ("{% call f(a ? 1 : 2) %}", "{% call f((( 1 ) if (a ) else ( 2))) %}"),
    ],
)
def test_rewrite(text: str, expected: str) -> None:
    assert rewrite(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "no template at all?",
        "{{ 'a ? b : c' }}",  # inside a string literal
        '{{ "x?" ~ y }}',
        "{# is it ? yes : no #}",
        "{% raw %}{{ a ? b : c }}{% endraw %}",
        "{% if a %}?{% endif %}",  # text, not an expression
        "{% if 'a ? b : c' in x %}{% endif %}",  # a statement's string literal
        "{% for k, v in d.items() %}{% endfor %}",
        "{{ a ? 1 }}",  # no ':': left for Jinja to report
        "{{ x[1:2] }} ?",
    ],
)
def test_left_alone(text: str) -> None:
    assert rewrite(text) == text


def scope(**vars_: object) -> template.Scope:
    return template.build_scope(
        parameters={}, vars=vars_, tasks={}, pack_config={}, system={}, kv=None
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{{ vars.x | length > 1 ? 'many' : 'few' }}", "many"),
        ("{{ not vars.flag ? 'off' : 'on' }}", "on"),
        ("{{ vars.flag and vars.n > 5 ? 'big' : 'small' }}", "small"),
        ("{{ {'k': vars.flag ? [1] : []} }}", {"k": [1]}),
        ("{% raw %}{{ a ? b : c }}{% endraw %} {{ vars.flag ? 'y' : 'n' }}", "{{ a ? b : c }} y"),
        ("{% if vars.flag ? vars.n > 2 : false %}yes{% else %}no{% endif %}", "yes"),
        ("{% set s = vars.n > 5 ? 'big' : 'small' %}{{ s }}", "small"),
        ("{% for i in vars.flag ? vars.x : [] %}{{ i }}{% endfor %}", "12"),
        ("{% for i in vars.x if i > 1 ? true : false %}{{ i }}{% endfor %}", "2"),
        ("{% with w = vars.flag ? 'on' : 'off' %}{{ w }}{% endwith %}", "on"),
        ("{{ vars.x | batch(size=vars.flag ? 1 : 2) | list }}", [[1], [2]]),
        ("{% if vars.n == 2 %}two{% elif vars.flag ? true : false %}flag{% endif %}", "flag"),
    ],
)
def test_renders(text: str, expected: object) -> None:
    assert template.render(text, scope(x=[1, 2], flag=True, n=3), where="t") == expected


def test_a_lone_question_mark_is_a_syntax_error_quoting_the_original() -> None:
    with pytest.raises(TemplateError, match=r"'\{\{ a \? 1 \}\}': syntax error"):
        template.check_syntax("{{ a ? 1 }}")
