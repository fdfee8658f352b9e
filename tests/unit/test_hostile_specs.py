"""Hostile workflow and pack files are refused with one located line, in bounded time.

The corpus lives in tests/corpus/bad/ (see cases.yaml there); inputs that would be
unpleasant to commit (over 1 MB, invalid UTF-8, NUL bytes) are generated here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from attune_pg.errors import SpecError
from attune_pg.spec import yaml_lines
from attune_pg.spec.checks import check_actions, check_inputs
from attune_pg.spec.loader import load_workflow_file, load_workflow_source, load_workflow_text
from attune_pg.spec.model import ActionSpec
from attune_pg.spec.packfiles import load_pack_dir, load_packs

CORPUS = Path(__file__).resolve().parents[1] / "corpus" / "bad"
CASES: dict[str, dict[str, Any]] = yaml.safe_load((CORPUS / "cases.yaml").read_text("utf-8"))


def _schema(**props: str) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {name: {"type": kind} for name, kind in props.items()},
        "required": list(props),
        "additionalProperties": False,
    }


ACTIONS = {
    "core.noop": ActionSpec(ref="core.noop", runner="builtin"),
    "core.echo": ActionSpec(
        ref="core.echo", runner="builtin", parameters=_schema(message="string")
    ),
    "core.sleep": ActionSpec(
        ref="core.sleep", runner="builtin", parameters=_schema(seconds="number")
    ),
}


def _load(path: Path) -> None:
    """Load a corpus entry the way the engine would."""
    if path.is_dir():
        load_packs(path, set(ACTIONS))
        return
    wf, source = load_workflow_source(path.read_bytes(), file=str(path), pack="bad")
    check_actions(wf, set(ACTIONS), source)
    check_inputs(wf, ACTIONS, source)


def _assert_one_located_line(error: SpecError, file: str, line: int | None, expect: str) -> None:
    text = str(error)
    assert "\n" not in text and "\r" not in text, text
    prefix = f"{file}:{line}: " if line is not None else f"{file}: "
    assert text.startswith(prefix), f"{text!r} does not start with {prefix!r}"
    assert expect in text, f"{expect!r} not in {text!r}"
    assert len(text) < 600, text


def test_corpus_is_large_and_complete() -> None:
    assert len(CASES) >= 40
    on_disk = {f"workflows/{p.name}" for p in (CORPUS / "workflows").iterdir()}
    on_disk |= {f"packs/{p.name}" for p in (CORPUS / "packs").iterdir()}
    assert on_disk == set(CASES), "every corpus file needs a case, and every case a file"


@pytest.mark.parametrize("case", sorted(CASES))
def test_corpus_case_is_refused_with_one_located_line(case: str) -> None:
    spec = CASES[case]
    with pytest.raises(SpecError) as info:
        _load(CORPUS / case)
    expected_file = str(CORPUS / spec.get("file", case))
    _assert_one_located_line(info.value, expected_file, spec["line"], spec["expect"])
    assert info.value.file == expected_file
    assert info.value.line == spec["line"]


# --- generated inputs ------------------------------------------------------------------------

HEADER = 'label: x\nversion: "1"\ntasks: [{name: a, action: core.noop}]\n'


def test_file_over_one_megabyte_is_refused_unread(tmp_path: Path) -> None:
    path = tmp_path / "huge.yaml"
    path.write_bytes(HEADER.encode() + b"# " + b"x" * (1024 * 1024) + b"\n")
    with pytest.raises(SpecError) as info:
        load_workflow_file(path, pack="bad")
    _assert_one_located_line(info.value, str(path), None, "file is larger than 1 MB")


def test_text_over_one_megabyte_is_refused() -> None:
    # Multi-byte characters: 600k characters but 1.8 MB of UTF-8.
    text = HEADER + "description: " + "€" * 600_000 + "\n"
    with pytest.raises(SpecError) as info:
        load_workflow_text(text, file="big.yaml", pack="bad")
    _assert_one_located_line(info.value, "big.yaml", None, "file is larger than 1 MB")


def test_huge_workflow_inside_a_pack_is_refused(tmp_path: Path) -> None:
    pack = tmp_path / "big"
    (pack / "workflows").mkdir(parents=True)
    (pack / "pack.yaml").write_text('ref: big\nversion: "1"\n')
    flow = pack / "workflows" / "flow.yaml"
    flow.write_bytes(HEADER.encode() + b"vars: {x: '" + b"y" * (1024 * 1024) + b"'}\n")
    with pytest.raises(SpecError) as info:
        load_pack_dir(pack)
    _assert_one_located_line(info.value, str(flow), None, "file is larger than 1 MB")


def test_non_utf8_bytes_name_the_line() -> None:
    data = HEADER.encode() + b"description: caf\xe9\n"
    with pytest.raises(SpecError) as info:
        load_workflow_text(data, file="latin1.yaml", pack="bad")
    _assert_one_located_line(info.value, "latin1.yaml", 4, "invalid UTF-8 byte 0xe9")


def test_nul_byte_names_the_line() -> None:
    with pytest.raises(SpecError) as info:
        load_workflow_text(HEADER + "description: a\x00b\n", file="nul.yaml", pack="bad")
    _assert_one_located_line(info.value, "nul.yaml", 4, "character 0x00 is not allowed")


def test_many_keys_near_the_size_limit_are_handled(tmp_path: Path) -> None:
    # ~1 MB of small keys: parsed and refused (unknown keys) without blowing up.
    body = "".join(f"k{i}: {i}\n" for i in range(70_000))
    assert 900_000 < len(body) < yaml_lines.MAX_BYTES
    with pytest.raises(SpecError) as info:
        load_workflow_text(HEADER + body, file="keys.yaml", pack="bad")
    _assert_one_located_line(info.value, "keys.yaml", 4, "unknown key 'k0'")


def test_quadratic_alias_fanout_is_capped() -> None:
    # Each list references the previous one 200 times: cheap to parse, huge to expand.
    lines = ['a: &a ["x"]']
    for i in range(1, 6):
        lines.append(
            f"l{i}: &l{i} [" + ", ".join([f"*{'a' if i == 1 else f'l{i - 1}'}"] * 200) + "]"
        )
    with pytest.raises(SpecError) as info:
        load_workflow_text(HEADER + "vars:\n" + "\n".join("  " + x for x in lines), file="f.yaml")
    assert "more than 100000 nodes" in str(info.value)


YAML_LEVEL_CASES = [
    "workflows/billion_laughs.yaml",
    "workflows/deep_nesting.yaml",
    "workflows/deep_block_nesting.yaml",
    "workflows/self_alias.yaml",
    "workflows/syntax_error.yaml",
    "workflows/two_documents.yaml",
    "workflows/duplicate_key.yaml",
]


@pytest.mark.parametrize("case", YAML_LEVEL_CASES)
def test_pure_python_parser_is_equally_safe(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without libyaml the pure-Python parser takes over; the limits must hold just the same."""
    monkeypatch.setattr(yaml_lines, "_Parser", yaml.SafeLoader)
    with pytest.raises(SpecError) as info:
        _load(CORPUS / case)
    text = str(info.value)
    assert "\n" not in text
    assert text.startswith(f"{CORPUS / case}:{CASES[case]['line']}: ")
