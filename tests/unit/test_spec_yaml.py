"""YAML loading keeps the line of every key and value, and only JSON-shaped data."""

from __future__ import annotations

from textwrap import dedent

import pytest

from attune_pg.errors import SpecError
from attune_pg.spec.yaml_lines import Document, load_yaml, one_line

TEXT = dedent(
    """\
    # comment
    label: x
    tasks:
      - name: first
        retry:
          count: 1
      - {name: second, input: {a: [1, 2]}}
    """
)


@pytest.fixture
def doc() -> Document:
    return load_yaml(TEXT, file="t.yaml")


def test_data_is_plain(doc: Document) -> None:
    assert doc.data == {
        "label": "x",
        "tasks": [
            {"name": "first", "retry": {"count": 1}},
            {"name": "second", "input": {"a": [1, 2]}},
        ],
    }


def test_lines_of_keys_values_and_items(doc: Document) -> None:
    assert doc.line(()) == 2
    assert doc.line(("label",)) == 2
    assert doc.line(("tasks", 0)) == 4
    assert doc.line(("tasks", 0, "retry")) == 5  # the key's line, not the block below it
    assert doc.line(("tasks", 0, "retry", "count")) == 6
    assert doc.line(("tasks", 1, "input", "a", 1)) == 7
    assert doc.line(("tasks", 0, "retry", "missing")) == 5  # falls back to the parent


def test_field_names_tasks(doc: Document) -> None:
    assert doc.field(("tasks", 0, "retry", "count")) == "tasks[0] (first).retry.count"
    assert doc.field(("tasks", 1, "input", "a", 0)) == "tasks[1] (second).input.a[0]"
    assert doc.field(()) == ""
    error = doc.error("bad", ("tasks", 0, "retry", "count"))
    assert str(error) == "t.yaml:6: tasks[0] (first).retry.count: bad"


def test_scalars_resolve_like_yaml_1_1_but_dates_stay_strings() -> None:
    doc = load_yaml("a: 1\nb: 1.5\nc: true\nd: ~\ne: 2024-01-02\nf: '3'\ng: off\n", file="x")
    assert doc.data == {
        "a": 1,
        "b": 1.5,
        "c": True,
        "d": None,
        "e": "2024-01-02",
        "f": "3",
        "g": False,
    }


def test_keys_are_their_source_text() -> None:
    assert load_yaml("1: a\non: b\nnull: c\n", file="x").data == {"1": "a", "on": "b", "null": "c"}


def test_anchors_and_merge_keys() -> None:
    doc = load_yaml(
        dedent(
            """\
            base: &base {a: 1, b: 2}
            extra: &extra {c: 3}
            one:
              <<: *base
              b: 20
            two:
              <<: [*base, *extra]
            list: &l [1, 2]
            again: *l
            """
        ),
        file="x",
    )
    assert doc.data["one"] == {"b": 20, "a": 1}
    assert doc.data["two"] == {"a": 1, "b": 2, "c": 3}
    assert doc.data["again"] == [1, 2]
    assert doc.line(("one", "b")) == 5  # the mapping's own key keeps its own line
    assert doc.line(("one", "a")) == 1  # merged keys point where they were written


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a: 1\nb: {x: 1, x: 2}\n", "x:2: duplicate key 'x'"),
        ("a: [1\n", "x:2: YAML syntax error"),
        ("a: !custom 1\n", "x:1: unsupported YAML tag '!custom'"),
        ("a: !!timestamp 2024-01-01\n", "x:1: unsupported YAML tag"),
        ("a: .nan\n", "x:1: '.nan' is not a finite number"),
        ("a: 1\nb:\n  <<: 5\n", "x:3: a merge key ('<<') needs a mapping"),
        ("", "x: file is empty"),
    ],
)
def test_refusals(text: str, message: str) -> None:
    with pytest.raises(SpecError) as info:
        load_yaml(text, file="x")
    assert str(info.value).startswith(message)


def test_bom_is_accepted() -> None:
    assert load_yaml(b"\xef\xbb\xbfa: 1\n", file="x").data == {"a": 1}


def test_one_line() -> None:
    assert one_line("a\n  b\tc ") == "a b c"
    assert one_line("x" * 500, 20) == "x" * 17 + "..."
