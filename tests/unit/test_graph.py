"""`render_graph`: Mermaid and dot drawings of hand-built specs, hostile text included."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from attune_pg.graph import TIMES, GraphFormat, condition_label, render_graph, shorten
from attune_pg.spec.loader import load_workflow_file
from attune_pg.spec.model import TaskSpec, Transition, WorkflowSpec
from tests.conftest import PACKS

OK = "{{ succeeded() }}"
HOSTILE = 'we"ird [x] {y} (z) <b>&amp; #35; | `t` \\n\\ back\nslash; end %% -->'


def spec(*tasks: TaskSpec) -> WorkflowSpec:
    return WorkflowSpec(ref="t.graph", label="graph", version="1.0", tasks=tasks)


def go(*targets: str, when: str | None = OK) -> Transition:
    return Transition(when=when, do=targets)


# A workflow with every edge kind, a decision, joins, with_items and a parallel block.
FULL = spec(
    TaskSpec(
        name="fetch",
        action="core.http",
        next=(
            go("pick"),
            go("alarm", when="{{ failed() }}"),
            go("alarm", when="{{timed_out( )}}"),
            go("audit", when=None),
            Transition(when=OK, publish=(("x", 1),)),  # publish only: no edge
        ),
    ),
    TaskSpec(
        name="pick",
        action="core.noop",
        first_match=True,
        next=(
            go("fan", when="{{ vars.n > 10 }}"),
            go("each", when="{{ succeeded() }}"),
            go("audit", when=None),
        ),
    ),
    TaskSpec(name="each", action="core.echo", with_items="{{ vars.items }}", next=(go("done"),)),
    TaskSpec(
        name="fan",
        kind="parallel",
        tasks=(TaskSpec(name="left", action="core.noop"), TaskSpec(name="right", action="a.b")),
        next=(go("done"),),
    ),
    TaskSpec(name="done", action="core.noop", join=2),
    TaskSpec(name="audit", action="core.noop", join="all"),
    TaskSpec(name="alarm", action="core.noop"),
    TaskSpec(name="side", action="core.noop"),  # a second start task
)

IDS = {
    "fetch": "t0_fetch",
    "pick": "t1_pick",
    "each": "t2_each",
    "fan": "t3_fan",
    "left": "t4_left",
    "right": "t5_right",
    "done": "t6_done",
    "audit": "t7_audit",
    "alarm": "t8_alarm",
    "side": "t9_side",
}

# ----------------------------------------------------------------- conditions


@pytest.mark.parametrize(
    ("when", "index", "label"),
    [
        ("{{ succeeded() }}", None, "on success"),
        ("{{failed()}}", None, "on failure"),
        ("  {{ timed_out(  ) }} ", None, "on timeout"),
        (None, None, "on complete"),
        ("{{ result().ok and vars.n }}", None, "result().ok and vars.n"),
        ("{{ a }} and {{ b }}", None, "{{ a }} and {{ b }}"),
        ("{{ x }}", 1, "1: x"),
        ("{{ succeeded() }}", 2, "2: on success"),
        (None, 3, "default"),
        ("{{ a\n   or\tb }}", None, "a or b"),
    ],
)
def test_condition_label(when: str | None, index: int | None, label: str) -> None:
    assert condition_label(when, index) == label


def test_long_expressions_are_cut_to_forty_characters() -> None:
    label = condition_label("{{ " + "x" * 100 + " }}")
    assert len(label) == 40 and label.endswith("…")
    assert shorten("a\x00b\x1b\u2028c", 10) == "a b c"


# ----------------------------------------------------------------- Mermaid

NODE = re.compile(
    r'^    (?:    )?(t\d+_\w+|start_node)(\[|\{\{|\[\[|>|\(\()"([^"\n]*)"(\]|\}\}|\]\]|\)\))$'
)
EDGE = re.compile(r'^    (t\d+_\w+|start_node) --> (?:\|"([^"|\n]*)"\| )?(t\d+_\w+)$')
STYLE = re.compile(r"^    style (t\d+_\w+|start_node) [-\w:#, ]+$")
SUBGRAPH = re.compile(r'^    subgraph (t\d+_\w+)\["([^"\n]*)"\]$')


def parse_mermaid(text: str) -> dict[str, list[tuple[str, ...]]]:
    """Check every line against the statements we emit; return them by kind."""
    lines = text.splitlines()
    assert text.endswith("\n") and lines[0] == "flowchart TD"
    found: dict[str, list[tuple[str, ...]]] = {"node": [], "edge": [], "style": [], "sub": []}
    depth = 0
    for line in lines[1:]:
        if m := NODE.match(line):
            assert line.startswith(" " * (4 + 4 * depth) + m.group(1))
            found["node"].append(m.groups())
        elif m := SUBGRAPH.match(line):
            depth += 1
            found["sub"].append(m.groups())
        elif line == "    end":
            depth -= 1
        elif m := EDGE.match(line):
            found["edge"].append(m.groups())
        elif m := STYLE.match(line):
            found["style"].append(m.groups())
        else:
            raise AssertionError(f"unexpected Mermaid line: {line!r}")
        assert depth in (0, 1)
    assert depth == 0
    ids = [n[0] for n in found["node"]] + [s[0] for s in found["sub"]]
    assert len(ids) == len(set(ids)), "node ids must be unique"
    for src, _, dst in found["edge"]:
        assert src in ids and dst in ids
    return found


def test_mermaid_nodes_shapes_and_labels() -> None:
    found = parse_mermaid(render_graph(FULL, "mermaid"))
    nodes = {n[0]: (n[1], n[2]) for n in found["node"]}
    assert nodes["start_node"] == ("((", "start")
    assert nodes[IDS["fetch"]] == ("[", "fetch<br/>core.http")
    assert nodes[IDS["pick"]] == ("{{", "pick<br/>core.noop")  # a decision
    assert nodes[IDS["each"]] == ("[[", f"each {TIMES}items<br/>core.echo")
    assert nodes[IDS["done"]] == ("[", "done<br/>core.noop<br/>join: 2")
    assert nodes[IDS["audit"]] == ("[", "audit<br/>core.noop<br/>join: all")
    assert found["sub"] == [(IDS["fan"], "fan<br/>parallel")]
    text = render_graph(FULL, "mermaid")
    block = text.split("    subgraph t3_fan", 1)[1].split("    end\n", 1)[0]
    assert 't4_left["left<br/>core.noop"]' in block and 't5_right["right<br/>a.b"]' in block
    # uncoloured without statuses: only the start pseudo-node is styled
    assert [s[0] for s in found["style"]] == ["start_node"]


def test_mermaid_edges_every_kind_and_decisions_in_order() -> None:
    found = parse_mermaid(render_graph(FULL, "mermaid"))
    edges = [(s, label, d) for s, label, d in found["edge"]]
    assert edges == [
        ("start_node", None, IDS["fetch"]),
        ("start_node", None, IDS["side"]),
        (IDS["fetch"], "on success", IDS["pick"]),
        (IDS["fetch"], "on failure", IDS["alarm"]),
        (IDS["fetch"], "on timeout", IDS["alarm"]),
        (IDS["fetch"], "on complete", IDS["audit"]),
        (IDS["pick"], "1: vars.n #gt; 10", IDS["fan"]),  # into the parallel block
        (IDS["pick"], "2: on success", IDS["each"]),
        (IDS["pick"], "default", IDS["audit"]),
        (IDS["each"], "on success", IDS["done"]),
        (IDS["fan"], "on success", IDS["done"]),  # out of the parallel block
    ]


def test_mermaid_colours_by_status_and_leaves_unrun_tasks_plain() -> None:
    statuses = {
        "fetch": "succeeded",
        "pick": "failed",
        "each": "running",
        "left": "waiting",
        "fan": "timed_out",
        "audit": "skipped",
        "alarm": "paused?",  # unknown: shown, not coloured
    }
    text = render_graph(FULL, "mermaid", statuses)
    found = parse_mermaid(text)
    style = {
        line.split()[1]: line.split()[2]
        for line in text.splitlines()
        if line.startswith("    style ")
    }
    assert style[IDS["fetch"]].startswith("fill:#d4edda")  # green
    assert style[IDS["pick"]].startswith("fill:#f8d7da")  # red
    assert style[IDS["fan"]].startswith("fill:#f8d7da")  # the subgraph too
    assert style[IDS["each"]].startswith("fill:#cfe2ff")  # blue
    assert style[IDS["left"]].startswith("fill:#fff3cd")  # amber
    assert style[IDS["audit"]].startswith("fill:#e9ecef")  # grey
    for never in ("done", "right", "side", "alarm"):
        assert IDS[never] not in style
    nodes = {n[0]: n[2] for n in found["node"]}
    assert nodes[IDS["fetch"]] == "fetch<br/>core.http<br/>(succeeded)"
    assert nodes[IDS["alarm"]] == "alarm<br/>core.noop<br/>(paused?)"
    assert nodes[IDS["done"]] == "done<br/>core.noop<br/>join: 2"


def test_mermaid_escapes_hostile_names_and_expressions() -> None:
    hostile = spec(
        TaskSpec(name=HOSTILE, action='x"y', next=(go("a-b", when='{{ r() == "|" }}\n'),)),
        TaskSpec(name="a-b", action="core.noop", next=(go("a_b", when="{{ '#quot;' }}"),)),
        TaskSpec(name="a_b", action="core.noop", next=(go("end"),)),
        TaskSpec(name="end", action="core.noop"),
    )
    text = render_graph(hostile, "mermaid", {HOSTILE: 'odd"status\n'})
    found = parse_mermaid(text)
    nodes = {n[0]: n[2] for n in found["node"]}
    ids = list(nodes)
    assert ids[1].startswith("t0_we_ird_x_y_z_b_amp_35_t_n_back")  # sanitised, not the name
    assert ids[2:] == ["t1_a_b", "t2_a_b", "t3_end"]
    label = nodes[ids[1]]
    assert '"' not in label and "\n" not in label and "|" not in label and "`" not in label
    assert (
        "#quot;" in label and "#35;35;" in label and "#amp;amp;" in label and "#lt;b#gt;" in label
    )
    assert label.endswith("<br/>x#quot;y<br/>(odd#quot;status)")
    assert len(label.split("<br/>")[0]) < 120  # long names are cut
    labels = [e[1] for e in found["edge"] if e[1]]
    assert labels[0] == "r() == #quot;#124;#quot;"
    assert labels[1] == "'#35;quot;'"


def test_colliding_names_get_distinct_ids() -> None:
    colliding = spec(
        TaskSpec(name="a-b", action="core.noop", next=(go("a.b"),)),
        TaskSpec(name="a.b", action="core.noop"),
    )
    found = parse_mermaid(render_graph(colliding, "mermaid"))
    assert [e[2] for e in found["edge"]] == ["t0_a_b", "t1_a_b"]


def test_undefined_targets_are_drawn_dashed() -> None:
    broken = spec(TaskSpec(name="a", action="core.noop", next=(go("ghost"),)))
    text = render_graph(broken, "mermaid")
    parse_mermaid(text)
    assert 't1_ghost>"ghost<br/>(undefined task)"]' in text
    assert "style t1_ghost stroke-dasharray: 5 5" in text


def test_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="png"):
        render_graph(FULL, "png")  # type: ignore[arg-type]


# ----------------------------------------------------------------- dot

QUOTED = re.compile(r'"(?:[^"\\\n]|\\.)*"')


def check_dot(text: str) -> list[str]:
    """Structure: one digraph, every string closed, braces and brackets balanced per line."""
    lines = text.splitlines()
    assert text.endswith("}\n") and lines[0].startswith("digraph ") and lines[0].endswith(" {")
    depth = 0
    for line in lines:
        bare = QUOTED.sub("S", line)
        assert '"' not in bare and "\\" not in bare, line
        assert bare.count("[") == bare.count("]"), line
        depth += bare.count("{") - bare.count("}")
        assert bare.rstrip().endswith((";", "{", "}")), line
    assert depth == 0
    if shutil.which("dot"):
        done = subprocess.run(
            ["dot", "-Tsvg"], input=text, capture_output=True, text=True, timeout=30
        )
        assert done.returncode == 0, done.stderr
        assert "rror" not in done.stderr, done.stderr
    return lines


def test_dot_structure_clusters_and_edges() -> None:
    lines = check_dot(render_graph(FULL, "dot"))
    text = "\n".join(lines)
    assert lines[0] == 'digraph "t.graph 1.0" {'
    assert "compound=true" in lines[1]
    assert '    t0_fetch [shape=box, label="fetch\\ncore.http"];' in lines
    assert '    t1_pick [shape=hexagon, label="pick\\ncore.noop"];' in lines
    assert (
        f'    t2_each [shape=box, peripheries=2, label="each {TIMES}items\\ncore.echo"];' in lines
    )
    assert '    t6_done [shape=box, label="done\\ncore.noop\\njoin: 2"];' in lines
    cluster = text.split("    subgraph cluster_t3_fan {\n", 1)[1].split("\n    }\n", 1)[0]
    assert (
        'label="fan\\nparallel"' in cluster and "t4_left [" in cluster and "t5_right [" in cluster
    )
    assert "    start_node -> t0_fetch;" in lines and "    start_node -> t9_side;" in lines
    assert '    t0_fetch -> t8_alarm [label="on timeout"];' in lines
    assert '    t0_fetch -> t7_audit [label="on complete"];' in lines
    assert '    t1_pick -> t4_left [label="1: vars.n > 10", lhead=cluster_t3_fan];' in lines
    assert '    t1_pick -> t7_audit [label="default"];' in lines
    assert '    t4_left -> t6_done [label="on success", ltail=cluster_t3_fan];' in lines
    assert sum(" -> " in line for line in lines) == 11


def test_dot_colours_and_escaping() -> None:
    hostile = spec(
        TaskSpec(name=HOSTILE, action="core.noop", next=(go("fan", when='{{ "\\"}" }}'),)),
        TaskSpec(
            name="fan",
            kind="parallel",
            tasks=(TaskSpec(name="in", action="core.noop"),),
            next=(go("fan", when="{{ again }}"),),  # a loop on the block itself
        ),
    )
    lines = check_dot(render_graph(hostile, "dot", {HOSTILE: "succeeded", "fan": "canceled"}))
    node = next(line for line in lines if line.startswith("    t0_"))
    assert '\\"ird [x]' in node and "\\\\n\\\\ back slash;" in node and "\\n(succeeded)" in node
    assert 'style="rounded,filled", fillcolor="#d4edda"' in node
    assert any('fillcolor="#e9ecef"' in line and "parallel" in line for line in lines)
    assert '    t2_in -> t2_in [label="again"];' in lines
    edge = next(line for line in lines if line.startswith("    t0_") and "->" in line)
    assert edge.endswith('[label="\\"\\\\\\"}\\"", lhead=cluster_t1_fan];')


@pytest.mark.parametrize("fmt", ["mermaid", "dot"])
def test_the_example_workflow_renders(fmt: GraphFormat) -> None:
    example = load_workflow_file(PACKS / "examples/workflows/hello_join.yaml", pack="examples")
    text = render_graph(example, fmt, {"greet": "succeeded"})
    if fmt == "mermaid":
        found = parse_mermaid(text)
        assert ("t3_shout", "on success", "t5_summarize") in found["edge"]
    else:
        check_dot(text)
    assert "1: parameters.shout" in text and "default" in text and "join: 2" in text
