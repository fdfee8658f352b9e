"""Workflows that call themselves through with-items without a window.

A with-items task whose action is its own workflow (directly, or through other
workflows) multiplies executions by its item count at every level: four items and
the depth limit of ten make about 1.4 million executions. The spawn budget
(setting max_task_rows, max_descendants) stops such a tree, but registration says so
first: `unbounded_self_calls` lists each such task (the CLI prints them as warnings).
A `concurrency` window does not bound the total, but it paces the growth, so a task
with one is not reported. Only the workflows registered together are followed. Pure.
"""

from __future__ import annotations

from collections.abc import Iterable

from attune_pg.spec.model import PackSpec, WorkflowSpec


def unbounded_self_calls(packs: Iterable[PackSpec]) -> list[str]:
    """One warning per with-items task (without concurrency) on a cycle of workflow calls."""
    workflows: dict[str, WorkflowSpec] = {wf.ref: wf for pack in packs for wf in pack.workflows}
    calls = {
        ref: {t.action for t in wf.all_tasks() if t.action in workflows}
        for ref, wf in workflows.items()
    }
    warnings = []
    for ref, wf in sorted(workflows.items()):
        for task in wf.all_tasks():
            if task.with_items is None or task.concurrency or task.action not in workflows:
                continue
            if _reaches(calls, task.action, ref):
                where = f"{wf.source_file}: " if wf.source_file else ""
                warnings.append(
                    f"{where}workflow {ref!r} task {task.name!r} calls {task.action!r}, which"
                    f" leads back to {ref!r}, for every item of with_items, with no"
                    " concurrency: each level multiplies the executions (the spawn budget,"
                    " setting max_task_rows/max_descendants, stops the tree); set"
                    " concurrency to pace it"
                )
    return warnings


def _reaches(calls: dict[str, set[str]], start: str, goal: str) -> bool:
    seen: set[str] = set()
    stack = [start]
    while stack:
        ref = stack.pop()
        if ref == goal:
            return True
        if ref in seen:
            continue
        seen.add(ref)
        stack.extend(calls.get(ref, ()))
    return False
