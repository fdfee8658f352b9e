"""Pack directories load into PackSpecs: actions, workflows (also as actions), config."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from textwrap import dedent

import pytest

from attune_pg.errors import SpecError
from attune_pg.spec.packfiles import find_pack_dirs, load_pack_dir, load_packs


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dedent(text))


@pytest.fixture
def packs(tmp_path: Path) -> Path:
    write(
        tmp_path / "demo" / "pack.yaml",
        """\
        ref: demo
        label: Demo pack
        description: for tests
        version: "0.1.0"
        config_schema:
          region: {type: string, default: eu}
          token: {type: string, secret: true}
        config:
          token: abc
        """,
    )
    write(
        tmp_path / "demo" / "actions" / "greet.yaml",
        """\
        name: greet
        description: say hello
        runner: python
        entry_point: greet.py:run
        parameters:
          who: {type: string, required: true}
          times: {type: integer, default: 1}
        output_schema: {type: string}
        timeout: 30
        """,
    )
    write(tmp_path / "demo" / "actions" / "greet.py", "def run(who, times=1):\n    return who\n")
    write(tmp_path / "demo" / "actions" / ".greet.yaml.swp", "editor junk")
    write(
        tmp_path / "demo" / "actions" / "list.yml",
        "name: list\nrunner: shell\nentry_point: ls -l\n",
    )
    write(
        tmp_path / "demo" / "workflows" / "hello.yaml",
        """\
        label: Hello
        version: "1"
        parameters:
          who: {type: string, default: world}
        output: {type: object}
        timeout: 60
        tasks:
          - name: greet
            action: demo.greet
            input: {who: "{{ parameters.who }}", times: 2}
        """,
    )
    write(
        tmp_path / "other" / "pack.yaml",
        'ref: other\nversion: "2"\n',
    )
    write(
        tmp_path / "other" / "workflows" / "uses.yml",
        """\
        label: Uses demo
        version: "1"
        tasks:
          - name: nested
            action: demo.hello
            on_success: external
          - name: external
            action: core.echo
            input: {anything: goes}
        """,
    )
    (tmp_path / "not_a_pack").mkdir()
    return tmp_path


def test_load_pack_dir(packs: Path) -> None:
    pack = load_pack_dir(packs / "demo")
    assert (pack.ref, pack.label, pack.version, pack.description) == (
        "demo",
        "Demo pack",
        "0.1.0",
        "for tests",
    )
    assert pack.path == str((packs / "demo").resolve())
    assert pack.config == {"token": "abc", "region": "eu"}
    assert pack.config_schema is not None
    assert pack.config_schema["properties"]["token"]["secret"] is True
    assert [a.ref for a in pack.actions] == ["demo.greet", "demo.list", "demo.hello"]
    greet, listing, hello = pack.actions
    assert greet.runner == "python" and greet.entry_point == "greet.py:run"
    assert greet.parameters["required"] == ["who"]
    assert greet.output_schema == {"type": "string"}
    assert greet.timeout == 30.0 and greet.pack_path == pack.path
    assert greet.source_file == str(packs / "demo" / "actions" / "greet.yaml")
    assert (listing.runner, listing.entry_point) == ("shell", "ls -l")
    assert hello.runner == "workflow"
    assert hello.parameters == pack.workflows[0].parameters
    assert (hello.output_schema, hello.timeout) == ({"type": "object"}, 60.0)
    assert [w.ref for w in pack.workflows] == ["demo.hello"]


def test_pack_without_optional_parts(tmp_path: Path) -> None:
    write(tmp_path / "bare" / "pack.yaml", 'ref: bare\nversion: "1"\n')
    pack = load_pack_dir(tmp_path / "bare")
    assert (pack.label, pack.config, pack.config_schema, pack.actions) == ("bare", {}, None, ())


def test_find_pack_dirs(packs: Path) -> None:
    assert find_pack_dirs(packs) == [packs / "demo", packs / "other"]
    assert find_pack_dirs(packs / "demo") == [packs / "demo"]
    assert find_pack_dirs(packs / "not_a_pack") == []
    with pytest.raises(SpecError, match="no such directory"):
        find_pack_dirs(packs / "missing")


def test_load_packs_resolves_refs_across_packs(packs: Path) -> None:
    loaded = load_packs(packs, known_action_refs={"core.echo"})
    assert [p.ref for p in loaded] == ["demo", "other"]
    assert loaded[1].workflows[0].task("nested").action == "demo.hello"


def test_load_packs_refuses_refs_nobody_knows(packs: Path) -> None:
    with pytest.raises(SpecError) as info:
        load_packs(packs)
    assert str(info.value) == (
        f"{packs / 'other' / 'workflows' / 'uses.yml'}:8: tasks[1] (external).action: "
        "unknown action 'core.echo'"
    )


def test_cross_pack_inputs_are_checked(packs: Path) -> None:
    (packs / "other" / "workflows" / "uses.yml").write_text(
        'label: x\nversion: "1"\ntasks:\n  - {name: a, action: demo.greet, input: {times: 1}}\n'
    )
    with pytest.raises(SpecError, match=r"missing required input 'who' for action 'demo\.greet'"):
        load_packs(packs, known_action_refs={"core.echo"})


def test_a_single_bad_file_fails_the_whole_load(packs: Path) -> None:
    write(packs / "demo" / "workflows" / "zz_broken.yaml", "label: [\n")
    with pytest.raises(SpecError, match=r"zz_broken\.yaml:2: YAML syntax error"):
        load_packs(packs, known_action_refs={"core.echo"})


def test_actions_dir_must_be_a_directory(tmp_path: Path) -> None:
    write(tmp_path / "p" / "pack.yaml", 'ref: p\nversion: "1"\n')
    write(tmp_path / "p" / "actions", "oops")
    with pytest.raises(SpecError, match="not a directory"):
        load_pack_dir(tmp_path / "p")


# ------------------------------------------------------- action files linking a workflow

ATTUNE_EXAMPLES = Path(__file__).parents[1] / "fixtures/attune/packs/examples"


def _linked(tmp_path: Path, edit: Callable[[str], str] = lambda t: t) -> Path:
    import shutil

    pack = tmp_path / "examples"
    shutil.copytree(ATTUNE_EXAMPLES, pack)
    (pack / "pack.yaml").write_text('ref: examples\nversion: "1"\n')
    action = pack / "actions" / "news_via_copilot.yaml"
    action.write_text(edit(action.read_text(encoding="utf-8")), encoding="utf-8")
    (pack / "actions" / "prompt_copilot.yaml").write_text(
        "name: prompt_copilot\nrunner: builtin\nentry_point: echo\n"
        "parameters: {copilot_token_key_ref: {}, prompt: {}}\n"
    )
    return pack


def test_a_linked_workflow_is_a_workflow_of_the_pack(tmp_path: Path) -> None:
    pack = load_pack_dir(_linked(tmp_path))
    (wf,) = pack.workflows
    assert (wf.ref, wf.label, wf.version) == (
        "examples.news_via_copilot", "News via Copilot", "1.0",
    )  # fmt: skip
    assert wf.source_file and wf.source_file.endswith("news_via_copilot.workflow.yaml")
    assert wf.parameters["required"] == ["copilot_token_key_ref"]
    assert wf.tags == ("example", "copilot", "ai", "mcp", "workflow", "demo")
    assert {a.ref for a in pack.actions} == {"examples.prompt_copilot", "examples.news_via_copilot"}


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.replace("enabled: true", "enabled: false"),
         r"news_via_copilot\.yaml:12: enabled: false is not supported in a file; .*"
         r"workflows disable examples\.news_via_copilot"),
        (lambda t: t.replace("ref: examples.news_via_copilot", "ref: examples.other"),
         r"news_via_copilot\.yaml:9: ref: ref 'examples\.other' must be"),
        (lambda t: t.replace("workflows/news_via_copilot.workflow.yaml", "../../x.yaml"),
         r"workflow_file '\.\./\.\./x\.yaml' must be inside the actions directory"),
        (lambda t: t.replace("    type: string\n    description: \"Attune key", "    type: text\n"
                             "    description: \"Attune key"),
         r"news_via_copilot\.yaml:\d+: parameters\.copilot_token_key_ref"),
        (lambda t: t + "runner_type: shell\n", r"unknown key 'runner_type'"),
    ],
)  # fmt: skip
def test_linked_workflow_errors_name_the_action_file(
    tmp_path: Path, edit: Callable[[str], str], message: str
) -> None:
    with pytest.raises(SpecError, match=message):
        load_pack_dir(_linked(tmp_path, edit))


def test_without_a_label_a_linked_workflow_is_labelled_by_its_ref(tmp_path: Path) -> None:
    pack = load_pack_dir(_linked(tmp_path, lambda t: t.replace('label: "News via Copilot"\n', "")))
    assert pack.workflows[0].label == "examples.news_via_copilot"


def test_a_graph_no_action_links_is_a_workflow_of_its_own(tmp_path: Path) -> None:
    # Attune's loader reads actions/workflows/ too: x.workflow.yaml is <pack>.x
    pack_dir = _linked(tmp_path)
    graphs = pack_dir / "actions" / "workflows"
    (graphs / "standalone.workflow.yaml").write_text(
        'version: "2"\ntasks:\n  - {name: only, action: core.noop}\n'
    )
    (graphs / "named.yaml").write_text(
        'label: Named\nversion: "1"\ntasks:\n  - {name: only, action: core.noop}\n'
    )
    refs = {wf.ref: wf.label for wf in load_pack_dir(pack_dir).workflows}
    assert refs == {
        "examples.news_via_copilot": "News via Copilot",
        "examples.standalone": "examples.standalone",
        "examples.named": "Named",
    }
    (pack_dir / "workflows").mkdir()
    (pack_dir / "workflows" / "named.yaml").write_text((graphs / "named.yaml").read_text())
    with pytest.raises(SpecError, match=r"'examples\.named' is already defined"):
        load_pack_dir(pack_dir)
