"""A timeline of an execution's task attempts as an SVG (pure: rows in, markup out).

One row per attempt that has started, a bar from its start to its end (or to the latest
moment seen, for one still running), coloured by status, with its name, item and attempt.
SVG attributes rather than inline styles, so the console's Content-Security-Policy can
forbid inline CSS.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any
from xml.sax.saxutils import escape

ROW_H = 18
LABEL_W = 220
BAR_W = 640
MAX_ROWS = 200
GREY = ("#e9ecef", "#6c757d")


def render(tasks: Sequence[Mapping[str, Any]], colours: Mapping[str, tuple[str, str]]) -> str:
    started = [t for t in tasks if t.get("started_at") is not None][:MAX_ROWS]
    if not started:
        return ""
    begin: datetime = min(t["started_at"] for t in started)
    ends = [t["finished_at"] or t["started_at"] for t in started]
    end: datetime = max(ends)
    span = max((end - begin).total_seconds(), 0.001)
    height = ROW_H * len(started) + 24
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="timeline" width="{LABEL_W + BAR_W + 90}"'
        f' height="{height}" role="img" aria-label="task timeline">',
        f'<text x="{LABEL_W}" y="12" font-size="10" fill="#6c757d">0 s</text>',
        f'<text x="{LABEL_W + BAR_W}" y="12" font-size="10" fill="#6c757d"'
        f' text-anchor="end">{_seconds(span)}</text>',
    ]
    for row, task in enumerate(started):
        y = 20 + row * ROW_H
        start = (task["started_at"] - begin).total_seconds()
        stop = ((task["finished_at"] or end) - begin).total_seconds()
        x = LABEL_W + BAR_W * start / span
        width = max(BAR_W * (stop - start) / span, 2.0)
        fill, stroke = colours.get(str(task.get("status")), GREY)
        name = str(task["task_name"])
        if task.get("item_index") is not None:
            name += f"[{task['item_index']}]"
        if int(task.get("attempt") or 1) > 1:
            name += f" #{task['attempt']}"
        took = _seconds(stop - start) if task.get("finished_at") else "running"
        out.append(
            f'<g class="attempt" data-status="{escape(str(task.get("status")))}">'
            f'<text x="{LABEL_W - 6}" y="{y + 12}" font-size="11" text-anchor="end"'
            f' fill="#212529">{escape(name[:34])}</text>'
            f'<rect x="{x:.1f}" y="{y + 2}" width="{width:.1f}" height="{ROW_H - 5}" rx="2"'
            f' fill="{fill}" stroke="{stroke}"><title>{escape(name)}: {escape(took)}</title></rect>'
            f'<text x="{x + width + 4:.1f}" y="{y + 12}" font-size="10"'
            f' fill="#6c757d">{escape(took)}</text></g>'
        )
    out.append("</svg>")
    return "".join(out)


def _seconds(value: float) -> str:
    if value < 1:
        return f"{value * 1000:.0f} ms"
    if value < 120:
        return f"{value:.1f} s"
    return f"{value / 60:.1f} min"
