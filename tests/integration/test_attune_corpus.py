"""Attune's own workflow files, verbatim (tests/fixtures/attune/), registered in a pack
beside stand-in actions (tests/fixtures/attune_standins/) and run through a real worker:

- `packs/core/workflows/install_packs.yaml`: its paths (conditional on_success/on_failure
  lists, the nested `next:` entries of build_environments, publish before conditions,
  the recursive install of dependencies);
- `packs/examples/actions/news_via_copilot.yaml` + its graph file (an action linking its
  workflow): registered from the pair, run, re-registered when the graph changes;
- Attune's scope names (`keystore.`, `config.`, `variables.`, bare names) on a real kv.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from attune_pg import packs
from attune_pg.errors import SpecError
from attune_pg.store import kv
from tests.helpers import start, tasks, wait_done

ROOT = Path(__file__).parents[2]
CORPUS = ROOT / "tests/fixtures/attune"
STANDINS = ROOT / "tests/fixtures/attune_standins"


def overlay(target: Path, *sources: Path) -> Path:
    for source in sources:
        shutil.copytree(source, target, dirs_exist_ok=True)
    return target


@pytest.fixture
def core_with_install_packs(conn: psycopg.Connection, tmp_path: Path) -> psycopg.Connection:
    """The core pack as shipped, plus Attune's install_packs.yaml and stand-ins for the
    actions it calls."""
    core = overlay(tmp_path / "core", ROOT / "packs/core", CORPUS / "packs/core",
                   STANDINS / "core")  # fmt: skip
    shutil.rmtree(core / "triggers")  # Attune's timer files: ours stay registered
    shutil.copytree(ROOT / "packs/core/triggers", core / "triggers")
    packs.register(conn, core)
    return conn


def ran(conn: psycopg.Connection, execution_id: int) -> list[str]:
    return [t["task_name"] for t in tasks(conn, execution_id)]


def run(conn: psycopg.Connection, params: dict[str, Any]) -> int:
    return start(conn, "core.install_packs", params)


INSTALLED = ["initialize", "download_packs", "check_download_results"]
TAIL = ["register_packs", "cleanup_success"]


def test_install_packs_paths(
    core_with_install_packs: psycopg.Connection, worker_thread: Callable[..., object]
) -> None:
    conn = core_with_install_packs
    worker_thread(concurrency=8)
    cases: dict[str, tuple[dict[str, Any], list[str], str | None]] = {
        # three of Attune's own metadata examples, as written (ref_spec omitted in two)
        "git": (
            {"packs": ["https://github.com/attune/pack-slack.git"], "ref_spec": "v1.0.0"},
            [*INSTALLED, "get_dependencies", "build_environments", "run_tests", *TAIL],
            "success",
        ),
        "force": (
            {"packs": ["https://github.com/myorg/pack-custom.git"], "ref_spec": "main",
             "skip_dependencies": True, "skip_tests": True, "force": True},
            [*INSTALLED, "build_environments", *TAIL],
            "success",
        ),
        "archive": (
            {"packs": ["https://example.com/packs/custom-pack.tar.gz"]},
            [*INSTALLED, "get_dependencies", "build_environments", "run_tests", *TAIL],
            "success",
        ),
        # nothing could be downloaded: publish, and no condition holds (Attune's file
        # has no branch for it): the workflow just ends
        "none": ({"packs": ["unreachable@1.0"]}, ["initialize", "download_packs"], None),
        "offline": (
            {"packs": ["slack@1.0.0", "offline@1"]},
            ["initialize", "download_packs", "cleanup_on_failure"],
            "failed",
        ),
        # build_environments fails: the nested next: entries under on_failure
        "env_force_tests": (
            {"packs": ["noenv@1"], "skip_dependencies": True, "force": True},
            [*INSTALLED, "build_environments", "run_tests", *TAIL],
            "success",
        ),
        "env_skip_build_no_tests": (
            {"packs": ["noenv@1"], "skip_dependencies": True, "skip_env_build": True,
             "skip_tests": True},
            [*INSTALLED, "build_environments", *TAIL],
            "success",
        ),
        "env_fails": (
            {"packs": ["noenv@1"], "skip_dependencies": True},
            [*INSTALLED, "build_environments", "cleanup_on_failure"],
            "failed",
        ),
        "tests_fail_force": (
            {"packs": ["badtests@1"], "skip_dependencies": True, "force": True},
            [*INSTALLED, "build_environments", "run_tests", *TAIL],
            "success",
        ),
        "tests_fail": (
            {"packs": ["badtests@1"], "skip_dependencies": True},
            [*INSTALLED, "build_environments", "run_tests", "cleanup_on_failure"],
            "failed",
        ),
    }
    started = {name: run(conn, params) for name, (params, _, _) in cases.items()}
    for name, (_, expected, cleanup) in cases.items():
        row = wait_done(conn, started[name], timeout=90)
        assert row["status"] == "succeeded", (name, row["error"])
        assert ran(conn, started[name]) == expected, name
        variables = row["vars"]
        assert variables.get("cleanup_status") == cleanup, name
        assert variables["temp_dir"].startswith("/tmp/attune-pack-install-"), name
        assert isinstance(variables["start_time"], str), name  # now(): ISO 8601 text
        assert row["output"] is None  # no output_map; output_schema only describes
    # publish happens on success whatever the conditions: the failed download
    none = wait_done(conn, started["none"])
    assert none["vars"]["downloaded_packs"] == []
    assert none["vars"]["failed_packs"][0]["source"] == "unreachable@1.0"
    # ref_spec not given: the download action got null, not an error
    archive = [t for t in tasks(conn, started["archive"]) if t["task_name"] == "download_packs"]
    assert archive[0]["input"]["ref_spec"] is None


def test_install_packs_recurses_into_dependencies(
    core_with_install_packs: psycopg.Connection, worker_thread: Callable[..., object]
) -> None:
    conn = core_with_install_packs
    worker_thread(concurrency=8)
    parent = run(conn, {"packs": ["web@2.0+base"], "ref_spec": "v2"})
    row = wait_done(conn, parent, timeout=90)
    child = conn.execute(
        "SELECT id, status, parameters FROM attune.workflow_execution"
        " WHERE parent_task_id IS NOT NULL AND root_id = %s",
        (parent,),
    ).fetchone()
    assert child is not None
    assert child[1] == "succeeded"
    assert child[2]["packs"] == ["base"]  # missing_dependencies | map(attribute='pack_ref')
    assert ran(conn, child[0]) == [*INSTALLED, "get_dependencies", "build_environments",
                                   "run_tests", *TAIL]  # fmt: skip
    # Attune's file publishes `task.install_dependencies.result.registered_packs`, but
    # install_packs has no output_map: a workflow's result is its output, null here, so
    # the parent stops there (Attune's own engine errors on the missing key too).
    assert ran(conn, parent) == [*INSTALLED, "get_dependencies", "install_dependencies"]
    assert row["status"] == "failed"
    assert row["error"]["type"] == "TemplateError"
    assert "registered_packs" in row["error"]["message"]


@pytest.fixture
def attune_examples(tmp_path: Path) -> Path:
    """Attune's examples pack as far as its workflows go: news_via_copilot (action file +
    graph, verbatim) and a stand-in for examples.prompt_copilot."""
    return overlay(tmp_path / "examples", STANDINS / "examples", CORPUS / "packs/examples")


def test_action_linked_workflow_registers_and_runs(
    conn: psycopg.Connection, attune_examples: Path, worker_thread: Callable[..., object]
) -> None:
    result = packs.register(conn, attune_examples)
    assert "examples.news_via_copilot" in result.packs[0].added
    label, version, description = conn.execute(
        "SELECT label, version, description FROM attune.workflow_definition"
        " WHERE ref = 'examples.news_via_copilot'"
    ).fetchone()  # type: ignore[misc]
    assert (label, version) == ("News via Copilot", "1.0")  # the action's label, graph's version
    assert description.startswith("Demo workflow that asks GitHub Copilot CLI")
    worker_thread(concurrency=4)
    ok = start(conn, "examples.news_via_copilot", {"copilot_token_key_ref": "copilot.pat"})
    row = wait_done(conn, ok, timeout=60)
    assert row["status"] == "succeeded", row["error"]
    assert row["output"]["headline"] == "PostgreSQL is all you need"
    assert row["output"]["url"] == "https://hn.algolia.com/api/v1/search?tags=front_page&hitsPerPage=1"
    markdown = row["output"]["markdown"]
    assert markdown.startswith("# PostgreSQL is all you need\n\n[Read the original")
    assert [t["task_name"] for t in tasks(conn, ok)] == ["prompt", "announce"]
    # parameters come from the action file: the required one is enforced
    missing = wait_done(conn, start(conn, "examples.news_via_copilot", {}))
    assert missing["status"] == "failed"
    assert "copilot_token_key_ref" in missing["error"]["message"]
    # A failed prompt routes to announce_failure; the output then names what is missing
    bad = wait_done(conn, start(conn, "examples.news_via_copilot",
                                {"copilot_token_key_ref": "revoked"}), timeout=60)  # fmt: skip
    assert [t["task_name"] for t in tasks(conn, bad["id"])] == ["prompt", "announce_failure"]
    assert bad["status"] == "failed" and "copilot_envelope" in bad["error"]["message"]
    # Unchanged files are skipped; a change to the graph alone re-registers the workflow.
    again = packs.register(conn, attune_examples)
    assert again.packs[0].unchanged == 1 and not again.packs[0].updated
    graph = attune_examples / "actions/workflows/news_via_copilot.workflow.yaml"
    graph.write_text(graph.read_text(encoding="utf-8").replace('version: "1.0"',
                                                               'version: "1.1"'))  # fmt: skip
    changed = packs.register(conn, attune_examples)
    assert changed.packs[0].updated == ["examples.news_via_copilot"]


def test_graphs_no_action_links_register_as_workflows(
    conn: psycopg.Connection, attune_examples: Path
) -> None:
    graphs = attune_examples / "actions" / "workflows"
    (graphs / "solo.workflow.yaml").write_text(
        'version: "1"\ntasks:\n  - {name: only, action: core.noop}\n'
    )
    result = packs.register(conn, attune_examples)
    assert sorted(result.packs[0].added) == ["examples.news_via_copilot", "examples.solo"]
    (graphs / "solo.workflow.yaml").unlink()
    again = packs.register(conn, attune_examples)
    assert again.packs[0].removed == ["examples.solo"]


def test_linked_workflow_errors_name_the_right_file(
    conn: psycopg.Connection, attune_examples: Path
) -> None:
    action = attune_examples / "actions/news_via_copilot.yaml"
    text = action.read_text(encoding="utf-8")
    action.write_text(text.replace("workflows/news_via_copilot.workflow.yaml",
                                   "workflows/nowhere.yaml"))  # fmt: skip
    with pytest.raises(SpecError, match=r"news_via_copilot\.yaml:\d+: workflow_file: "
                                              r"workflow_file 'workflows/nowhere\.yaml' does not"):
        packs.register(conn, attune_examples)  # fmt: skip
    action.write_text(text)
    graph = attune_examples / "actions/workflows/news_via_copilot.workflow.yaml"
    graph.write_text(graph.read_text(encoding="utf-8").replace("do:\n          - announce\n",
                                                               "do:\n          - anounce\n"))
    with pytest.raises(SpecError, match=r"news_via_copilot\.workflow\.yaml:\d+: .*'anounce'"):
        packs.register(conn, attune_examples)
    assert conn.execute("SELECT count(*) FROM attune.workflow_definition"
                        " WHERE pack_ref = 'examples'").fetchone() == (0,)  # fmt: skip


def test_attune_scope_names_on_a_real_kv(
    conn: psycopg.Connection, tmp_path: Path, worker_thread: Callable[..., object]
) -> None:
    pack = tmp_path / "scopes"
    (pack / "workflows").mkdir(parents=True)
    (pack / "pack.yaml").write_text(
        'ref: scopes\nversion: "1"\nconfig_schema: {region: {type: string, default: eu}}\n'
    )
    (pack / "workflows" / "names.yaml").write_text(
        """label: Attune's scope names
version: "1"
vars: [{counter: 2}]
output_map:
  region: "{{ config.region }}"
  plain: "{{ keystore.plain_key }}"
  spaced: "{{ keystore['a spaced key'] }}"
  bare: "{{ counter + 1 }}"
  variables: "{{ variables.counter }}"
  started: "{{ system.workflow_start is string }}"
tasks:
  - name: use_secret
    action: core.echo
    input: {message: "{{ keystore.api_token }}"}
"""
    )
    packs.register(conn, pack)
    kv.set_value(conn, "plain_key", "hello")
    kv.set_value(conn, "a spaced key", 7)
    kv.set_value(conn, "api_token", "s3cr3t-value", secret=True)
    conn.commit()
    worker_thread(concurrency=2)
    row = wait_done(conn, start(conn, "scopes.names"), timeout=60)
    assert row["status"] == "succeeded", row["error"]
    assert row["output"] == {"region": "eu", "plain": "hello", "spaced": 7, "bare": 3,
                             "variables": 2, "started": True}  # fmt: skip
    # keystore.<secret> is a token: the action got the value, nothing stored shows it
    (echo,) = [t for t in tasks(conn, row["id"]) if t["task_name"] == "use_secret"]
    assert "s3cr3t-value" not in str(echo["input"]) and "s3cr3t-value" not in str(echo["result"])


def test_attunes_rule_names_decide_in_sql_as_on_a_worker(conn: psycopg.Connection) -> None:
    from collections import Counter

    from attune_pg.spec.rule_sql import compile_rule
    from attune_pg.spec.rules import RuleSpec
    from tests.integration.test_rules_sql_differential import _check

    def rule(condition: str, params: dict[str, Any]) -> RuleSpec:
        return RuleSpec(ref="t.r", trigger_ref="t.t", action_ref="core.noop",
                        conditions={"expression": condition}, action_params=params)  # fmt: skip

    seen: Counter[str] = Counter()
    # event.trigger (Attune's resolver) compiles to the event's trigger_ref
    trigger = rule("{{ event.trigger == 't.t' }}",
                   {"a": "{{ event.trigger }}", "b": "{{ trigger['trigger'] }}"})  # fmt: skip
    assert compile_rule(trigger).path == "sql"
    _check(conn, trigger, {"n": 1}, seen)
    assert seen == Counter(fire=1)
    # system.* (Attune's rule docs) is the Python engine's: such a rule takes the worker path
    system = rule("{{ true }}", {"at": "{{ system.timestamp }}", "r": "{{ system.rule.ref }}"})
    compiled = compile_rule(system)
    assert compiled.path == "worker" and "system" in (compiled.note or "")
