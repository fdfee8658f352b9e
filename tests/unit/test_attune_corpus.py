"""Every workflow file of Attune's (tests/fixtures/attune/, verbatim, README.md there names
the sources) loads unchanged; the few Attune itself cannot load are refused, for the reason
Attune's own parser has. Registration against real actions and runs through a worker:
tests/integration/test_attune_corpus.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from attune_pg.errors import SpecError
from attune_pg.spec.linked import load_linked_workflow
from attune_pg.spec.loader import load_workflow_file, load_workflow_text
from attune_pg.spec.model import WorkflowSpec
from attune_pg.spec.triggers import load_trigger

CORPUS = Path(__file__).parents[1] / "fixtures" / "attune"

# fixture (relative to CORPUS) -> how it loads: "workflow" (its ref: key names it),
# "pack:<pack>" (a pack's workflow file), "linked:<pack>" (an action file linking its
# graph), "fragment" (a docs example: a tasks list, naming tasks it does not show),
# "trigger:<pack>", "rules" (docs/automation.md) or "broken: <what Attune's parser refuses>".
KINDS: dict[str, str] = {
    "docs/examples/complete-workflow.yaml": (
        "broken: deploy_canary's on_failure names handle_canary_failure, never defined"
    ),
    "docs/examples/simple-workflow.yaml": "workflow",
    "docs/examples/timer-types-example.yaml": "rules",
    "packs/core/workflows/install_packs.yaml": "pack:core",
    "packs/core/triggers/crontimer.yaml": "trigger:core",
    "packs/core/triggers/datetimetimer.yaml": "trigger:core",
    "packs/core/triggers/intervaltimer.yaml": "trigger:core",
    "packs/examples/actions/news_via_copilot.yaml": "linked:examples",
    "packs/examples/actions/workflows/news_via_copilot.workflow.yaml": "graph",
    "tests/fixtures/packs/test_pack/workflows/simple_workflow.yaml": (
        "broken: tasks is a mapping (Mistral style), Attune's parser wants a list"
    ),
    "docs/workflows/workflow-orchestration.1.yaml": "workflow",
    "docs/workflows/workflow-orchestration.8.yaml": "broken: no version",
    "docs/workflows/workflow-summary.9.yaml": (
        "broken: build_image's on_failure names cleanup, never defined"
    ),
}
# The other docs/workflows/*.yaml are fragments.


def _all_fixtures() -> list[str]:
    return sorted(str(p.relative_to(CORPUS)) for p in CORPUS.rglob("*.yaml"))


def _kind(name: str) -> str:
    if name in KINDS:
        return KINDS[name]
    assert name.startswith("docs/workflows/"), f"{name}: add it to KINDS"
    return "fragment"


def test_every_fixture_is_classified_and_has_a_source() -> None:
    found = _all_fixtures()
    assert set(KINDS) <= set(found), set(KINDS) - set(found)
    readme = (CORPUS / "README.md").read_text(encoding="utf-8")
    for name in found:
        assert f"`{Path(name).parent}/" in readme, f"{name}: say where it comes from in README.md"
        _kind(name)


def _targets(value: Any) -> Iterator[str]:
    """Task names a transition value names (targets, conditional entries, decisions)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for item in value:
            yield from _targets(item)
    elif isinstance(value, dict):
        for key in ("do", "next"):
            if key in value:
                yield from _targets(value[key])
        if isinstance(value.get("default"), str):
            yield value["default"]


def load_fragment(path: Path) -> WorkflowSpec:
    """A docs example as a workflow: a header, and a no-op stand-in for each task it names
    but does not show (its own tasks are loaded as written)."""
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    tasks: list[dict[str, Any]] = data["tasks"]
    shown = {t["name"] for t in tasks} | {s["name"] for t in tasks for s in t.get("tasks", ())}
    named = {
        target
        for task in tasks
        for key in ("on_success", "on_failure", "on_complete", "on_timeout", "next", "decision")
        for target in _targets(task.get(key))
    }
    stubs = [{"name": n, "action": "core.noop"} for n in sorted(named - shown)]
    document = {"ref": "docs.fragment", "label": path.name, "version": "1",
                **data, "tasks": [*tasks, *stubs]}  # fmt: skip
    return load_workflow_text(yaml.safe_dump(document, sort_keys=False), file=str(path))


@pytest.mark.parametrize("name", _all_fixtures())
def test_attune_file_loads_unchanged(name: str, tmp_path: Path) -> None:
    path = CORPUS / name
    kind = _kind(name)
    if kind == "workflow":
        assert load_workflow_file(path).tasks
    elif kind.startswith("pack:"):
        wf = load_workflow_file(path, pack=kind.split(":")[1])
        assert wf.ref == f"{kind.split(':')[1]}.{path.stem}"
    elif kind.startswith("linked:"):
        wf, _, graph = load_linked_workflow(path, kind.split(":")[1])
        assert wf.ref == f"{kind.split(':')[1]}.{path.stem}" and graph
    elif kind == "graph":  # loaded through the action file that links it (above)
        linking = path.parent.parent / path.name.replace(".workflow", "")
        assert linking.is_file(), linking
    elif kind == "fragment":
        assert load_fragment(path).tasks
    elif kind.startswith("trigger:"):
        assert load_trigger(path, kind.split(":")[1]).ref == f"core.{path.stem}"
    elif kind == "rules":  # one rule per document; checked in detail in test_attune_rules
        from tests.unit.test_attune_rules import documents, load

        assert [load(tmp_path, ref, text)[0].ref for ref, text in documents()] == [
            ref for ref, _ in documents()
        ]
    else:
        assert kind.startswith("broken: ")
        with pytest.raises(SpecError):
            load_workflow_file(path)


def test_broken_files_are_refused_for_attunes_reason() -> None:
    def error(name: str, pack: str | None = None) -> str:
        with pytest.raises(SpecError) as info:
            load_workflow_file(CORPUS / name, pack=pack)
        return str(info.value)

    assert "transition target 'handle_canary_failure' does not exist" in error(
        "docs/examples/complete-workflow.yaml"
    )
    assert "transition target 'cleanup' does not exist" in error(
        "docs/workflows/workflow-summary.9.yaml"
    )
    assert "missing required key 'version'" in error("docs/workflows/workflow-orchestration.8.yaml")
    # Mistral's shape: Attune's parser stops at the tasks mapping; we stop earlier, at keys
    # that are not Attune's (label missing, `input:`), but it is that same file.
    path = CORPUS / "tests/fixtures/packs/test_pack/workflows/simple_workflow.yaml"
    assert isinstance(yaml.safe_load(path.read_text(encoding="utf-8"))["tasks"], dict)
    assert "missing required key 'label'" in error(str(path.relative_to(CORPUS)), "test_pack")


def test_install_packs_transitions_mean_what_attune_wrote() -> None:
    wf = load_workflow_file(CORPUS / "packs/core/workflows/install_packs.yaml", pack="core")
    build = wf.task("build_environments")
    routes = [(t.when, t.do) for t in build.next]
    assert routes == [
        ("{{ succeeded() and (not parameters.skip_tests) }}", ("run_tests",)),
        ("{{ succeeded() and (parameters.skip_tests) }}", ("register_packs",)),
        (
            "{{ failed() and ((parameters.force or parameters.skip_env_build) | truthy)"
            " and (not parameters.skip_tests) }}",
            ("run_tests",),
        ),
        (
            "{{ failed() and ((parameters.force or parameters.skip_env_build) | truthy)"
            " and (parameters.skip_tests) }}",
            ("register_packs",),
        ),
        ("{{ failed() and (not parameters.force and not parameters.skip_env_build) }}",
         ("cleanup_on_failure",)),
    ]
    download = wf.task("download_packs")
    assert [t.publish != () for t in download.next] == [True, False, False]
    assert wf.output is None  # output_schema describes, it does not validate
