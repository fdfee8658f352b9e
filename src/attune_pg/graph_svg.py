"""Draw the neutral workflow graph of graph.py as a self-contained SVG (pure: no I/O).

The web console shows graphs rendered on the server, with nothing fetched at run time, so
the layout is ours: a small layered (Sugiyama-style) drawing, good for the tens of tasks a
workflow has:

1. back edges (cycles: retry loops, `next` to an earlier task) are found by a depth-first
   walk from the start node and drawn as curves on the right, so layering sees a DAG;
2. each node's layer is its longest distance from the start node;
3. nodes are ordered inside their layer by the mean position of their predecessors
   (barycentre), a few sweeps down and up, which untangles most crossings;
4. layers are centred; edges are cubic curves from the bottom of one box to the top of the
   next, labelled with their condition.

A parallel block is one box listing its sub-tasks, each row coloured by its own status.
Every text is escaped: task names and expressions are untrusted.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING
from xml.sax.saxutils import escape, quoteattr

if TYPE_CHECKING:
    from attune_pg.graph import _Graph

CHAR_W = 7.0  # approximate width of one character at 12px sans-serif
LABEL_CHAR_W = 5.8  # the same at the labels' 10px
LINE_H = 16.0
PAD_X = 12.0
PAD_Y = 8.0
GAP_X = 36.0
GAP_Y = 64.0
MARGIN = 24.0
START_R = 16.0
SWEEPS = 4
WHITE = ("#ffffff", "#495057")


@dataclass
class _Box:
    id: str
    lines: tuple[str, ...]
    shape: str
    status: str | None
    rows: tuple[tuple[str, str | None], ...] = ()  # parallel block: (sub-task text, status)
    width: float = 0.0
    height: float = 0.0
    name: str = ""  # the task's name, for data-task
    x: float = 0.0  # centre
    y: float = 0.0  # top
    layer: int = 0


def render_svg(graph: _Graph, colours: dict[str, tuple[str, str]]) -> str:
    """The graph as an `<svg>` element (no XML declaration: it is embedded in pages)."""
    from attune_pg.graph import START_ID, _Cluster  # graph.py imports us lazily: no cycle

    boxes: dict[str, _Box] = {START_ID: _Box(START_ID, ("start",), "start", None, name="")}
    owner: dict[str, str] = {}  # sub-task id -> its parallel block's id
    for item in graph.items:
        if isinstance(item, _Cluster):
            rows = tuple((m.lines[0], m.status) for m in item.members)
            boxes[item.id] = _Box(
                item.id, item.lines, "parallel", item.status, rows, name=item.name
            )
            for member in item.members:
                owner[member.id] = item.id
        else:
            boxes[item.id] = _Box(item.id, item.lines, item.shape, item.status, name=item.name)
    edges: list[tuple[str, str, str | None]] = [(START_ID, s, None) for s in graph.starts]
    for edge in graph.edges:
        edges.append((owner.get(edge.src, edge.src), owner.get(edge.dst, edge.dst), edge.label))
    # Two transitions between the same tasks are one arrow carrying both conditions.
    merged: dict[tuple[str, str], list[str]] = {}
    for src, dst, label in edges:
        if src in boxes and dst in boxes:
            labels = merged.setdefault((src, dst), [])
            if label and label not in labels:
                labels.append(label)
    edges = [(s, d, " / ".join(labels) or None) for (s, d), labels in merged.items()]
    for box in boxes.values():
        _measure(box)
    back = _back_edges(START_ID, list(boxes), edges)
    forward = [(s, d) for s, d, _ in edges if (s, d) not in back and s != d]
    layers = _layers(list(boxes), forward)
    # An edge spanning several layers runs through one dummy point per layer in between, so
    # ordering routes it between boxes instead of through them.
    routes: dict[tuple[str, str], list[str]] = {}
    links: list[tuple[str, str]] = []
    layer_of = {n: i for i, layer in enumerate(layers) for n in layer}
    for src, dst in forward:
        chain = [src]
        for depth in range(layer_of[src] + 1, layer_of[dst]):
            dummy = f"~{src}~{dst}~{depth}"
            boxes[dummy] = _Box(dummy, (), "dummy", None, width=8.0, height=LINE_H)
            layers[depth].append(dummy)
            chain.append(dummy)
        chain.append(dst)
        routes[(src, dst)] = chain
        links.extend(itertools.pairwise(chain))
    _place(boxes, layers, links)
    return _draw(boxes, edges, back, routes, colours, graph.title)


def _measure(box: _Box) -> None:
    if box.shape == "dummy":
        return
    if box.shape == "start":
        box.width = box.height = 2 * START_R
        return
    texts = [*box.lines, *(text for text, _ in box.rows)]
    box.width = max(80.0, max(len(t) for t in texts) * CHAR_W + 2 * PAD_X)
    rows = len(box.lines) + len(box.rows)
    box.height = rows * LINE_H + 2 * PAD_Y + (4.0 if box.rows else 0.0)


def _back_edges(
    root: str, nodes: Sequence[str], edges: Iterable[tuple[str, str, str | None]]
) -> set[tuple[str, str]]:
    """Edges that close a cycle in a depth-first walk (from the start node, then the rest)."""
    succ: dict[str, list[str]] = {n: [] for n in nodes}
    for s, d, _ in edges:
        succ[s].append(d)
    state: dict[str, int] = {}  # 1 = on the walk's path, 2 = done
    back: set[tuple[str, str]] = set()
    for top in [root, *nodes]:
        if top in state:
            continue
        stack: list[tuple[str, int]] = [(top, 0)]
        state[top] = 1
        while stack:
            node, i = stack[-1]
            if i < len(succ[node]):
                stack[-1] = (node, i + 1)
                nxt = succ[node][i]
                if state.get(nxt) == 1:
                    back.add((node, nxt))
                elif nxt not in state:
                    state[nxt] = 1
                    stack.append((nxt, 0))
            else:
                state[node] = 2
                stack.pop()
    return back


def _layers(nodes: Sequence[str], forward: Sequence[tuple[str, str]]) -> list[list[str]]:
    """Longest-path layering of the DAG left once back edges are set aside (Kahn's order)."""
    preds: dict[str, list[str]] = {n: [] for n in nodes}
    succ: dict[str, list[str]] = {n: [] for n in nodes}
    for s, d in forward:
        preds[d].append(s)
        succ[s].append(d)
    indegree = {n: len(preds[n]) for n in nodes}
    layer = dict.fromkeys(nodes, 0)
    ready = [n for n in nodes if indegree[n] == 0]
    while ready:
        node = ready.pop(0)
        for nxt in succ[node]:
            layer[nxt] = max(layer[nxt], layer[node] + 1)
            indegree[nxt] -= 1
            if indegree[nxt] == 0:
                ready.append(nxt)
    out: list[list[str]] = [[] for _ in range(max(layer.values(), default=0) + 1)]
    for node in nodes:  # definition order is the initial order inside a layer
        out[layer[node]].append(node)
    return out


def _place(
    boxes: dict[str, _Box], layers: list[list[str]], forward: Sequence[tuple[str, str]]
) -> None:
    preds: dict[str, list[str]] = {n: [] for n in boxes}
    succ: dict[str, list[str]] = {n: [] for n in boxes}
    for s, d in forward:
        preds[d].append(s)
        succ[s].append(d)
    for _ in range(SWEEPS):
        for neighbours, order in ((preds, layers[1:]), (succ, list(reversed(layers[:-1])))):
            for layer in order:
                _reorder(layer, neighbours, layers)
    widths = [sum(boxes[n].width for n in layer) + GAP_X * (len(layer) - 1) for layer in layers]
    widest = max(widths, default=0.0)
    y = MARGIN
    for index, layer in enumerate(layers):
        x = MARGIN + (widest - widths[index]) / 2
        height = max((boxes[n].height for n in layer), default=0.0)
        for name in layer:
            box = boxes[name]
            box.layer = index
            box.x = x + box.width / 2
            box.y = y + (height - box.height) / 2
            x += box.width + GAP_X
        y += height + GAP_Y


def _reorder(layer: list[str], neighbours: dict[str, list[str]], layers: list[list[str]]) -> None:
    position = {n: i for lay in layers for i, n in enumerate(lay)}

    def centre(node: str) -> float:
        near = [position[n] for n in neighbours[node] if n in position]
        return sum(near) / len(near) if near else float(position[node])

    layer.sort(key=centre)


def _draw(
    boxes: dict[str, _Box],
    edges: Sequence[tuple[str, str, str | None]],
    back: set[tuple[str, str]],
    routes: dict[tuple[str, str], list[str]],
    colours: dict[str, tuple[str, str]],
    title: str,
) -> str:
    width = max((b.x + b.width / 2 for b in boxes.values()), default=0.0) + MARGIN + 60
    height = max((b.y + b.height for b in boxes.values()), default=0.0) + MARGIN
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="graph" width="{width:.0f}"'
        f' height="{height:.0f}" viewBox="0 0 {width:.0f} {height:.0f}"'
        f' role="img" aria-label={quoteattr(title)}>',
        f"<title>{escape(title)}</title>",
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7"'
        ' markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z"'
        ' fill="#495057"/></marker></defs>',
    ]
    for src, dst, label in edges:
        if (src, dst) in back or src == dst:
            out.append(_back_edge(boxes[src], boxes[dst], label))
        else:
            out.append(_edge([boxes[n] for n in routes[(src, dst)]], label))
    for box in boxes.values():
        if box.shape != "dummy":
            out.append(_box(box, colours))
    out.append("</svg>")
    return "\n".join(out)


def _back_edge(src: _Box, dst: _Box, label: str | None) -> str:
    """Out of the source's right side, round the right, into the target's right side."""
    x1, y1 = src.x + src.width / 2, src.y + src.height / 2
    x2, y2 = dst.x + dst.width / 2, dst.y + dst.height / 2
    bend = max(x1, x2) + 40 + 10 * abs(src.layer - dst.layer)
    path = f"M{x1:.1f},{y1:.1f} C{bend:.1f},{y1:.1f} {bend:.1f},{y2:.1f} {x2:.1f},{y2:.1f}"
    return _path(path, label, bend - 4, (y1 + y2) / 2, "end")


def _edge(chain: Sequence[_Box], label: str | None) -> str:
    """Bottom of the first box, through each dummy point, to the top of the last box."""
    points = [(chain[0].x, chain[0].y + chain[0].height)]
    points.extend((box.x, box.y + box.height / 2) for box in chain[1:-1])
    points.append((chain[-1].x, chain[-1].y))
    parts = [f"M{points[0][0]:.1f},{points[0][1]:.1f}"]
    for (x1, y1), (x2, y2) in itertools.pairwise(points):
        mid = (y1 + y2) / 2
        parts.append(f"C{x1:.1f},{mid:.1f} {x2:.1f},{mid:.1f} {x2:.1f},{y2:.1f}")
    # The label sits near the source, on the side the edge leaves to, so the labels of edges
    # leaving one box fan out instead of piling up.
    (x1, y1), (x2, y2) = points[0], points[1]
    lx, ly = x1 + (x2 - x1) * 0.5, y1 + (y2 - y1) * 0.35
    if x2 < x1 - 1 and lx - 4 - len(label or "") * LABEL_CHAR_W > 0:
        return _path(" ".join(parts), label, lx - 4, ly, "end")
    return _path(" ".join(parts), label, lx + 4, ly, "start")


def _path(path: str, label: str | None, lx: float, ly: float, anchor: str) -> str:
    text = ""
    if label:
        text = (
            f'<text x="{lx:.1f}" y="{ly:.1f}" class="edge-label" text-anchor="{anchor}"'
            f' font-size="10" fill="#495057">{escape(label)}</text>'
        )
    return (
        f'<g class="edge"><path d="{path}" fill="none" stroke="#495057" stroke-width="1.2"'
        f' marker-end="url(#arrow)"/>{text}</g>'
    )


def _box(box: _Box, colours: dict[str, tuple[str, str]]) -> str:
    status_attr = f" data-status={quoteattr(box.status)}" if box.status else ""
    task_attr = f" data-task={quoteattr(box.name)}" if box.name else ""
    head = f'<g class="node"{task_attr}{status_attr}>'
    if box.shape == "start":
        return (
            f'{head}<circle cx="{box.x:.1f}" cy="{box.y + START_R:.1f}" r="{START_R}"'
            ' fill="#333"/><text x="{:.1f}" y="{:.1f}" text-anchor="middle" font-size="10"'
            ' fill="#fff">start</text></g>'.format(box.x, box.y + START_R + 3)
        )
    fill, stroke = colours.get(box.status or "", WHITE)
    left, top = box.x - box.width / 2, box.y
    dash = ' stroke-dasharray="5 4"' if box.shape == "missing" else ""
    double = ""
    if box.shape == "items":
        double = (
            f'<rect x="{left + 3:.1f}" y="{top + 3:.1f}" width="{box.width:.1f}"'
            f' height="{box.height:.1f}" rx="6" fill="{fill}" stroke="{stroke}"/>'
        )
    corner = 14 if box.shape == "decision" else 6
    parts = [
        head,
        double,
        f'<rect x="{left:.1f}" y="{top:.1f}" width="{box.width:.1f}" height="{box.height:.1f}"'
        f' rx="{corner}" fill="{fill}" stroke="{stroke}" stroke-width="1.5"{dash}/>',
    ]
    y = top + PAD_Y + LINE_H - 4
    for index, line in enumerate(box.lines):
        weight = ' font-weight="600"' if index == 0 else ""
        parts.append(
            f'<text x="{box.x:.1f}" y="{y:.1f}" text-anchor="middle" font-size="12"'
            f'{weight} fill="#212529">{escape(line)}</text>'
        )
        y += LINE_H
    for text, status in box.rows:
        row_fill, row_stroke = colours.get(status or "", WHITE)
        parts.append(
            f'<rect x="{left + 6:.1f}" y="{y - LINE_H + 4:.1f}" width="{box.width - 12:.1f}"'
            f' height="{LINE_H - 2:.1f}" rx="3" fill="{row_fill}" stroke="{row_stroke}"/>'
            f'<text x="{box.x:.1f}" y="{y:.1f}" text-anchor="middle" font-size="11"'
            f' fill="#212529">{escape(text)}</text>'
        )
        y += LINE_H
    parts.append("</g>")
    return "".join(parts)
