"""Draw a workflow as a Mermaid flowchart or a Graphviz digraph (pure: no I/O).

Nodes are tasks (name and action; a parallel block is a subgraph/cluster holding its
sub-tasks); edges are transitions, labelled with their condition in a short form. A
pseudo-node "start" points at the tasks that run when the workflow starts. Given the
status of each task's latest run, nodes are coloured and the status is added to the label.
Task names and expressions are untrusted text: ids are sanitised, labels escaped.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from attune_pg.spec.model import TaskSpec, WorkflowSpec

GraphFormat = Literal["mermaid", "dot", "svg"]
Shape = Literal["task", "decision", "items", "missing"]

EXPRESSION_LIMIT = 40
TEXT_LIMIT = 60
START_ID = "start_node"
TIMES = "\u00d7"  # the multiplication sign, marking with_items tasks

GREEN = ("#d4edda", "#2e7d32")
RED = ("#f8d7da", "#c62828")
BLUE = ("#cfe2ff", "#1565c0")
AMBER = ("#fff3cd", "#b8860b")
GREY = ("#e9ecef", "#6c757d")
STATUS_COLOURS: dict[str, tuple[str, str]] = {  # status -> (fill, border)
    "succeeded": GREEN,
    "failed": RED,
    "timed_out": RED,
    "running": BLUE,
    "scheduled": AMBER,
    "waiting": AMBER,
    "pending": AMBER,
    "skipped": GREY,
    "canceled": GREY,
}

_NAMED_CONDITIONS = {
    "succeeded()": "on success",
    "failed()": "on failure",
    "timed_out()": "on timeout",
}
_SINGLE_TEMPLATE = re.compile(r"^\{\{(.*)\}\}$", re.DOTALL)
_NOT_ID = re.compile(r"[^0-9A-Za-z_]+")

# Inside a quoted Mermaid label brackets are literal; these would still end or change it.
_MERMAID_ESCAPES = str.maketrans(
    {'"': "#quot;", "#": "#35;", "&": "#amp;", "<": "#lt;", ">": "#gt;", "|": "#124;", "`": "#96;"}
)


@dataclass(frozen=True)
class _Node:
    id: str
    lines: tuple[str, ...]
    shape: Shape = "task"
    status: str | None = None
    name: str = ""  # the task's name (ids are sanitised)


@dataclass
class _Cluster:
    id: str
    lines: tuple[str, ...]
    status: str | None
    members: list[_Node] = field(default_factory=list)
    name: str = ""


@dataclass(frozen=True)
class _Edge:
    src: str  # node or cluster id
    dst: str
    label: str | None


@dataclass
class _Graph:
    title: str
    items: list[_Node | _Cluster] = field(default_factory=list)
    edges: list[_Edge] = field(default_factory=list)
    starts: list[str] = field(default_factory=list)


def render_graph(
    spec: WorkflowSpec,
    fmt: GraphFormat,
    statuses: Mapping[str, str] | None = None,
) -> str:
    """`spec` as Mermaid (`flowchart TD`) or Graphviz dot (`digraph`) source text, or as a
    self-contained SVG drawing (graph_svg.py: laid out here, nothing to install)."""
    graph = _build(spec, statuses or {})
    if fmt == "mermaid":
        return _mermaid(graph)
    if fmt == "dot":
        return _dot(graph)
    if fmt == "svg":
        from attune_pg.graph_svg import render_svg

        return render_svg(graph, STATUS_COLOURS)
    raise ValueError(f"unknown graph format {fmt!r}")


def condition_label(when: str | None, decision_index: int | None = None) -> str:
    """A transition's guard in a short readable form; decisions are numbered from 1."""
    if when is None:
        return "default" if decision_index is not None else "on complete"
    text = when.strip()
    match = _SINGLE_TEMPLATE.match(text)
    if match and "{{" not in match.group(1) and "}}" not in match.group(1):
        text = match.group(1)
    named = _NAMED_CONDITIONS.get("".join(text.split()))
    short = named or shorten(text, EXPRESSION_LIMIT)
    return short if decision_index is None else f"{decision_index}: {short}"


def shorten(text: str, limit: int) -> str:
    """One line (control characters and runs of whitespace become one space), cut to `limit`."""
    flat = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


# ----------------------------------------------------------------- the neutral graph


def _build(spec: WorkflowSpec, statuses: Mapping[str, str]) -> _Graph:
    ids: dict[str, str] = {}
    for index, task in enumerate(spec.all_tasks()):
        ids.setdefault(task.name, f"t{index}_{_NOT_ID.sub('_', task.name)[:32]}")
    graph = _Graph(title=shorten(f"{spec.ref} {spec.version}", TEXT_LIMIT))
    for task in spec.tasks:
        status = statuses.get(task.name)
        if task.kind == "parallel" and task.tasks:
            cluster = _Cluster(ids[task.name], _task_lines(task, status), status, name=task.name)
            for sub in task.tasks:
                sub_status = statuses.get(sub.name)
                lines = _task_lines(sub, sub_status)
                member = _Node(ids[sub.name], lines, _shape(sub), sub_status, sub.name)
                cluster.members.append(member)
            graph.items.append(cluster)
        else:
            lines = _task_lines(task, status)
            graph.items.append(_Node(ids[task.name], lines, _shape(task), status, task.name))
    graph.starts = [ids[task.name] for task in spec.start_tasks()]
    for task in spec.all_tasks():
        branches = task.decision_flags()
        for index, transition in enumerate(task.next, start=1):
            number = sum(branches[:index]) if branches[index - 1] else None
            label = condition_label(transition.when, number)
            for target in transition.do:
                if target not in ids:  # a broken spec still draws: the target is flagged
                    ids[target] = f"t{len(ids)}_{_NOT_ID.sub('_', target)[:32]}"
                    lines = (shorten(target, TEXT_LIMIT), "(undefined task)")
                    graph.items.append(_Node(ids[target], lines, "missing"))
                graph.edges.append(_Edge(ids[task.name], ids[target], label))
    return graph


def _shape(task: TaskSpec) -> Shape:
    if task.first_match:
        return "decision"
    return "items" if task.with_items is not None else "task"


def _task_lines(task: TaskSpec, status: str | None) -> tuple[str, ...]:
    name = shorten(task.name, TEXT_LIMIT)
    lines = [f"{name} {TIMES}items" if task.with_items is not None else name]
    if task.kind == "parallel":
        lines.append("parallel")
    elif task.action:
        lines.append(shorten(task.action, TEXT_LIMIT))
    if task.join is not None:
        lines.append(f"join: {task.join}")
    if status is not None:
        lines.append(f"({shorten(status, TEXT_LIMIT)})")
    return tuple(lines)


# ----------------------------------------------------------------- Mermaid


def _mm_text(lines: tuple[str, ...]) -> str:
    return '"' + "<br/>".join(line.translate(_MERMAID_ESCAPES) for line in lines) + '"'


def _mm_style(node_id: str, status: str | None) -> str:
    fill, stroke = STATUS_COLOURS[status or ""]
    return f"    style {node_id} fill:{fill},stroke:{stroke},color:#000"


_MERMAID_SHAPES: dict[Shape, tuple[str, str]] = {
    "task": ("[", "]"),
    "decision": ("{{", "}}"),
    "items": ("[[", "]]"),
    "missing": (">", "]"),
}


def _mermaid(graph: _Graph) -> str:
    out = ["flowchart TD", f'    {START_ID}(("start"))']
    styles: list[str] = []

    def node(item: _Node, indent: str) -> None:
        left, right = _MERMAID_SHAPES[item.shape]
        out.append(f"{indent}{item.id}{left}{_mm_text(item.lines)}{right}")
        if item.status in STATUS_COLOURS:
            styles.append(_mm_style(item.id, item.status))
        elif item.shape == "missing":
            styles.append(f"    style {item.id} stroke-dasharray: 5 5")

    for item in graph.items:
        if isinstance(item, _Node):
            node(item, "    ")
            continue
        out.append(f"    subgraph {item.id}[{_mm_text(item.lines)}]")
        for member in item.members:
            node(member, "        ")
        out.append("    end")
        if item.status in STATUS_COLOURS:
            styles.append(_mm_style(item.id, item.status))
    out.extend(f"    {START_ID} --> {start}" for start in graph.starts)
    for edge in graph.edges:
        label = f"|{_mm_text((edge.label,))}| " if edge.label else ""
        out.append(f"    {edge.src} --> {label}{edge.dst}")
    out.append(f"    style {START_ID} fill:#333,stroke:#333,color:#fff")
    out.extend(styles)
    return "\n".join(out) + "\n"


# ----------------------------------------------------------------- Graphviz dot


def _dot_text(lines: tuple[str, ...]) -> str:
    escaped = (line.replace("\\", "\\\\").replace('"', '\\"') for line in lines)
    return '"' + "\\n".join(escaped) + '"'


_DOT_SHAPES: dict[Shape, str] = {
    "task": "shape=box",
    "decision": "shape=hexagon",
    "items": "shape=box, peripheries=2",
    "missing": "shape=box, style=dashed",
}


def _dot_fill(status: str | None, base: str) -> str:
    colours = STATUS_COLOURS.get(status or "")
    if colours is None:
        return ""
    return f', style="{base},filled", fillcolor="{colours[0]}", color="{colours[1]}"'


def _dot(graph: _Graph) -> str:
    out = [
        f"digraph {_dot_text((graph.title,))} {{",
        f"    graph [rankdir=TB, compound=true, labelloc=t, label={_dot_text((graph.title,))},"
        ' fontname="Helvetica"];',
        '    node [shape=box, style="rounded,filled", fillcolor="white", fontname="Helvetica",'
        " fontsize=11];",
        '    edge [fontname="Helvetica", fontsize=9];',
        f'    {START_ID} [shape=circle, label="start", style=filled, fillcolor="#333333",'
        ' fontcolor="white"];',
    ]
    anchors: dict[str, tuple[str, str]] = {}  # cluster id -> (member to attach to, cluster name)

    def node(item: _Node, indent: str) -> None:
        attrs = f"{_DOT_SHAPES[item.shape]}, label={_dot_text(item.lines)}"
        out.append(f"{indent}{item.id} [{attrs}{_dot_fill(item.status, 'rounded')}];")

    for item in graph.items:
        if isinstance(item, _Node):
            node(item, "    ")
            continue
        name = f"cluster_{item.id}"
        anchors[item.id] = (item.members[0].id, name)
        out.append(f"    subgraph {name} {{")
        fill = _dot_fill(item.status, "rounded") or ", style=rounded"
        out.append(f"        graph [label={_dot_text(item.lines)}{fill}];")
        for member in item.members:
            node(member, "        ")
        out.append("    }")
    for start in graph.starts:
        out.append(_dot_edge(START_ID, start, None, anchors))
    out.extend(_dot_edge(e.src, e.dst, e.label, anchors) for e in graph.edges)
    out.append("}")
    return "\n".join(out) + "\n"


def _dot_edge(src: str, dst: str, label: str | None, anchors: dict[str, tuple[str, str]]) -> str:
    attrs = [f"label={_dot_text((label,))}"] if label else []
    tail, head = src, dst
    if src in anchors and src != dst:
        tail = anchors[src][0]
        attrs.append(f"ltail={anchors[src][1]}")
    if dst in anchors and src != dst:
        head = anchors[dst][0]
        attrs.append(f"lhead={anchors[dst][1]}")
    if src == dst and src in anchors:
        tail = head = anchors[src][0]
    suffix = f" [{', '.join(attrs)}]" if attrs else ""
    return f"    {tail} -> {head}{suffix};"
