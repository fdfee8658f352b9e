"""The pure core (spec, template, machine, engine) does no I/O: DESIGN §2's dependency rule."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "attune_pg"
PURE = [
    "spec", "engine", "template", "machine.py", "redact.py", "errors.py",
    "graph.py", "graph_svg.py", "ui/forms.py", "ui/timeline.py",
    # Judgements of facts the store read: doctor's, the audit's; secret tokens.
    "health.py", "audit.py", "secrets.py",
]  # fmt: skip
BANNED_MODULES = {
    "psycopg",
    "subprocess",
    "threading",
    "socket",
    "time",
    "random",
    "asyncio",
    "multiprocessing",
    "urllib",
    "http",
}
# datetime may be imported (to convert values); reading the clock may not.
CLOCK_READS = {"now", "utcnow", "today", "monotonic", "perf_counter"}


def _files() -> list[Path]:
    out: list[Path] = []
    for entry in PURE:
        path = SRC / entry
        out.extend(sorted(path.rglob("*.py")) if path.is_dir() else [path])
    return out


@pytest.mark.parametrize("path", _files(), ids=lambda p: str(p.relative_to(SRC)))
def test_pure_module_imports_no_io(path: Path) -> None:
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        for name in names:
            assert name.split(".")[0] not in BANNED_MODULES, f"{path.name} imports {name}"
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            assert node.func.attr not in CLOCK_READS, f"{path.name}:{node.lineno} reads the clock"
        # os.environ / os.getenv: configuration must come in as arguments.
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            assert not (node.value.id == "os" and node.attr in {"environ", "getenv", "system"}), (
                f"{path.name}:{node.lineno} reads os.{node.attr}"
            )
