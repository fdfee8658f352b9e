"""The server-side SVG drawing: well-formed, every task and edge present, laid out in layers
that follow the flow, coloured by status, hostile text escaped."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from attune_pg.graph import render_graph
from attune_pg.spec.loader import load_workflow_file
from attune_pg.spec.model import TaskSpec
from tests.conftest import PACKS
from tests.unit.test_graph import FULL, HOSTILE, go, spec

SVG = "{http://www.w3.org/2000/svg}"


def nodes(svg: str) -> dict[str, ET.Element]:
    root = ET.fromstring(svg)
    return {g.get("data-task") or "": g for g in root.iter(f"{SVG}g") if g.get("class") == "node"}


def top(node: ET.Element) -> float:
    rect = node.find(f"{SVG}rect")
    circle = node.find(f"{SVG}circle")
    if rect is not None:
        return float(rect.get("y", "0"))
    assert circle is not None
    return float(circle.get("cy", "0"))


def test_every_task_is_a_node_and_every_transition_an_edge() -> None:
    svg = render_graph(FULL, "svg")
    found = nodes(svg)
    # Sub-tasks of the parallel block are rows inside its box, not nodes of their own.
    assert set(found) == {"", "fetch", "pick", "each", "fan", "done", "audit", "alarm", "side"}
    fan = ET.tostring(found["fan"], encoding="unicode")
    assert ">left<" in fan and ">right<" in fan
    edges = [g for g in ET.fromstring(svg).iter(f"{SVG}g") if g.get("class") == "edge"]
    # start->fetch, start->side, and one arrow per (source, target) pair: fetch's two failure
    # transitions to alarm are one arrow carrying both conditions.
    assert len(edges) == 2 + 8
    labels = [t.text for e in edges for t in e.iter(f"{SVG}text")]
    assert "on failure / on timeout" in labels and "1: vars.n > 10" in labels


def test_layers_follow_the_flow() -> None:
    found = nodes(render_graph(FULL, "svg"))
    assert top(found[""]) < top(found["fetch"]) < top(found["pick"]) < top(found["each"])
    assert top(found["each"]) < top(found["done"])  # done joins each and fan: below both
    assert top(found["fan"]) < top(found["done"])


def test_cycles_draw_without_looping_the_layout() -> None:
    loop = spec(
        TaskSpec(name="a", action="core.noop", next=(go("b"),)),
        TaskSpec(name="b", action="core.noop", next=(go("a", when="{{ failed() }}"), go("c"))),
        TaskSpec(name="c", action="core.noop", next=(go("c", when="{{ vars.again }}"),)),
    )
    svg = render_graph(loop, "svg")
    found = nodes(svg)
    assert top(found["a"]) < top(found["b"]) < top(found["c"])
    # a is reached from b, so nothing is a start task here: a->b, b->a, b->c and c->c.
    assert len(re.findall(r'class="edge"', svg)) == 4


def test_status_colours_and_uncoloured_tasks() -> None:
    svg = render_graph(FULL, "svg", {"fetch": "succeeded", "pick": "failed", "left": "running"})
    found = nodes(svg)
    assert found["fetch"].get("data-status") == "succeeded"
    fetch_rect = found["fetch"].find(f"{SVG}rect")
    assert fetch_rect is not None and fetch_rect.get("fill") == "#d4edda"
    pick_rect = found["pick"].find(f"{SVG}rect")
    assert pick_rect is not None and pick_rect.get("fill") == "#f8d7da"
    assert found["side"].get("data-status") is None
    side_rect = found["side"].find(f"{SVG}rect")
    assert side_rect is not None and side_rect.get("fill") == "#ffffff"
    fan_rows = [r.get("fill") for r in found["fan"].iter(f"{SVG}rect")]
    assert "#cfe2ff" in fan_rows  # the running sub-task's row


def test_hostile_names_are_escaped() -> None:
    hostile = spec(
        TaskSpec(name=HOSTILE, action='x"y<script>', next=(go("end", when='{{ "<b>" }}'),)),
        TaskSpec(name="end", action="core.noop"),
    )
    svg = render_graph(hostile, "svg", {HOSTILE: "<img onerror=1>"})
    assert "<script>" not in svg and "<img" not in svg and "<b>" not in svg
    found = nodes(svg)  # parses: the markup is intact
    assert HOSTILE in found


def test_the_deploy_example_is_drawn() -> None:
    example = load_workflow_file(PACKS / "examples/workflows/deploy_pipeline.yaml", pack="examples")
    svg = render_graph(example, "svg", {"validate": "succeeded"})
    found = nodes(svg)
    assert {t.name for t in example.tasks} <= set(found)
    width = float(ET.fromstring(svg).get("width", "0"))
    assert 200 < width < 3000
