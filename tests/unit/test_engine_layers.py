"""The engine's modules form layers: no import cycle among them (issue 11 item 3).

Routing (dispatch, trigger, task done, completion) lives in engine/routing.py, which the
conductor, fan-out and request handling import; none of them calls back into the
conductor. A cycle would bring the pass-through methods back.
"""

from __future__ import annotations

import ast
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import attune_pg.engine

ENGINE = Path(attune_pg.engine.__file__).parent


def _engine_imports(path: Path, modules: set[str]) -> set[str]:
    """Engine modules `path` imports, at module level or inside functions."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module == "attune_pg.engine":
            found |= {alias.name for alias in node.names if alias.name in modules}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
            "attune_pg.engine."
        ):
            found.add((node.module or "").split(".")[2])
        elif isinstance(node, ast.Import):
            found |= {
                alias.name.split(".")[2]
                for alias in node.names
                if alias.name.startswith("attune_pg.engine.")
            }
    return found - {path.stem}


def test_engine_modules_import_without_a_cycle() -> None:
    modules = {path.stem for path in ENGINE.glob("*.py")}
    graph = {path.stem: _engine_imports(path, modules) for path in ENGINE.glob("*.py")}
    assert graph["conductor"] >= {"routing", "fanout", "requests"}  # the check sees imports
    try:
        order = list(TopologicalSorter(graph).static_order())
    except CycleError as exc:  # pragma: no cover - the failure message
        raise AssertionError(f"import cycle among engine modules: {exc.args[1]}") from exc
    # Routing comes before everything that routes, and nothing routes through the conductor.
    assert order.index("routing") < min(order.index(m) for m in ("conductor", "fanout", "requests"))
    assert all("conductor" not in deps for deps in graph.values())


def test_a_cycle_is_reported(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text("from attune_pg.engine import b\n")
    (tmp_path / "b.py").write_text("def f():\n    from attune_pg.engine.a import x\n")
    graph = {p.stem: _engine_imports(p, {"a", "b"}) for p in tmp_path.glob("*.py")}
    assert graph == {"a": {"b"}, "b": {"a"}}
    try:
        list(TopologicalSorter(graph).static_order())
    except CycleError:
        return
    raise AssertionError("the cycle a -> b -> a was not found")
