"""Pack directories -> `PackSpec`: pack.yaml, actions/*.yaml and workflows/*.yaml.

All-or-nothing: the first invalid file raises a located SpecError and nothing is returned.
Layout (DESIGN section 5):

    <pack>/pack.yaml          ref (= directory name), version, label, description,
                              config_schema, config (defaults applied, then validated)
    <pack>/actions/<a>.yaml   name, runner (python|shell|http|builtin), entry_point,
                              description, parameters, output_schema, timeout
    <pack>/actions/<a>.py     code of python actions (entry_point "file.py:function")
    <pack>/workflows/<w>.yaml (or .yml) workflows, ref <pack>.<w>; each is also an action
    <pack>/actions/<a>.yaml   with `workflow_file:` (Attune's action-linked workflow): the
                              workflow <pack>.<a>, its ref, label, description, parameters,
                              output and tags from this file, its graph (version, vars,
                              tasks, output_map, ...) from the file it names, relative to
                              actions/ (Attune: actions/workflows/<a>.workflow.yaml)
    <pack>/actions/workflows/<w>[.workflow].yaml  that no action file links: a workflow
                              <pack>.<w> of its own (as Attune's loader reads that folder),
                              labelled by its ref unless it has a label

Files whose names start with "." (editor leftovers) are ignored.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Set
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from attune_pg.errors import ParameterError, SpecError
from attune_pg.spec import fastschema
from attune_pg.spec.checks import check_actions, check_inputs
from attune_pg.spec.linked import (
    is_graph_file,
    linked_graphs,
    links_workflow,
    load_graph,
    load_linked_workflow,
)
from attune_pg.spec.loader import (
    NAME_RE,
    load_mapping,
    load_workflow_source,
    read_source,
    validate_document,
)
from attune_pg.spec.model import ActionSpec, PackSpec, WorkflowSpec
from attune_pg.spec.normalize import Source
from attune_pg.spec.params import parameters_schema, validate_parameters
from attune_pg.spec.yaml_lines import MAX_BYTES, Document, Problem, one_line

_NAME = NAME_RE.pattern
_ENTRY_RE = re.compile(r"^([^:]+\.py):([A-Za-z_][A-Za-z0-9_]*)$")

PACK_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["ref", "version"],
    "additionalProperties": False,
    "properties": {
        "ref": {"type": "string", "pattern": _NAME},
        "label": {"type": "string", "minLength": 1},
        "description": {"type": "string"},
        "version": {"type": "string", "minLength": 1},
        "config_schema": {"type": "object"},
        "config": {"type": "object"},
    },
}

ACTION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["name", "runner"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "pattern": _NAME},
        "description": {"type": "string"},
        "runner": {"enum": ["python", "shell", "http", "builtin"]},
        "entry_point": {"type": "string", "minLength": 1},
        "parameters": {"type": "object"},
        "output_schema": {"type": "object"},
        "timeout": {"type": "number", "exclusiveMinimum": 0},
    },
}

_PACK_VALIDATOR = Draft202012Validator(PACK_SCHEMA)
_ACTION_VALIDATOR = Draft202012Validator(ACTION_SCHEMA)


BUNDLED = "packs"  # <pack>/packs/<other>/: packs shipped with a pack, registered with it


def find_pack_dirs(path: str | Path) -> list[Path]:
    """`path` itself if it is a pack, else its sub-directories that are packs, sorted;
    each followed by the packs it bundles in its `packs/` directory (e.g. the stand-in
    packs the examples pack ships for Attune's deployment pipeline), so a pack and
    what it needs register together, all or nothing."""
    root = Path(path)
    if not root.is_dir():
        raise SpecError("no such directory", file=str(path))
    if (root / "pack.yaml").is_file():
        tops = [root]
    else:
        tops = sorted(d for d in root.iterdir() if d.is_dir() and (d / "pack.yaml").is_file())
    out: list[Path] = []
    for top in tops:
        out.append(top)
        bundled = top / BUNDLED
        if bundled.is_dir():
            out.extend(
                sorted(d for d in bundled.iterdir() if d.is_dir() and (d / "pack.yaml").is_file())
            )
    return out


def load_pack_dir(path: str | Path) -> PackSpec:
    """Load and check one pack (references to other packs are checked by `load_packs`)."""
    return _load_pack(Path(path))[0]


def load_packs(
    path: str | Path,
    known_action_refs: Set[str] = frozenset(),
    known_actions: Mapping[str, ActionSpec] | None = None,
) -> list[PackSpec]:
    """Load every pack under `path`, then check each workflow's actions and inputs against
    the already registered actions (`known_actions`, or just their refs) plus all actions
    and workflows of the packs loaded together (which win over registered ones)."""
    loaded = [_load_pack(d) for d in find_pack_dirs(path)]
    actions = {**(known_actions or {}), **all_actions(pack for pack, _ in loaded)}
    known = set(known_action_refs) | set(actions)
    for pack, sources in loaded:
        for wf in pack.workflows:
            check_actions(wf, known, sources[wf.ref])
            check_inputs(wf, actions, sources[wf.ref])
    return [pack for pack, _ in loaded]


@dataclass(frozen=True)
class PackLayout:
    """The files of one pack directory, by kind (not read yet).

    The kinds a pack holds are listed here and in `scan_pack`; a new kind (triggers/,
    rules/, policies/) adds a field, a line in `scan_pack`, a loader below and a writer
    in `attune_pg.packs`.
    """

    root: Path
    pack_file: Path
    actions: tuple[Path, ...]
    workflows: tuple[Path, ...]
    graphs: tuple[Path, ...] = ()  # actions/workflows/*.yaml: linked by actions, or not


def scan_pack(root: Path) -> PackLayout:
    """List a pack's files; refuses two files defining the same name (a.yaml and a.yml)
    and symlinks that point outside the pack."""
    _refuse_links_out(root)
    return PackLayout(
        root=root,
        pack_file=root / "pack.yaml",
        actions=tuple(_yaml_files(root / "actions")),
        workflows=tuple(_yaml_files(root / "workflows")),
        graphs=tuple(_yaml_files(root / "actions" / "workflows")),
    )


def load_pack_meta(
    root: Path, text: str | bytes | None = None, max_bytes: int = MAX_BYTES
) -> PackSpec:
    """pack.yaml alone: ref (= directory name), version, label, config. No actions yet."""
    file = root / "pack.yaml"
    doc = load_mapping(file, text, max_bytes)
    validate_document(doc, _PACK_VALIDATOR)
    data: dict[str, Any] = doc.data
    ref: str = data["ref"]
    dirname = root.resolve().name
    if ref != dirname:
        raise doc.error(f"pack ref {ref!r} must equal its directory name {dirname!r}", ("ref",))
    config_schema, config = _config(doc)
    return PackSpec(
        ref=ref,
        label=data.get("label", ref),
        version=data["version"],
        path=str(root.resolve()),
        description=data.get("description", ""),
        config_schema=config_schema,
        config=config,
    )


def load_action(
    file: Path,
    pack: str,
    pack_path: str,
    text: str | bytes | None = None,
    max_bytes: int = MAX_BYTES,
) -> tuple[ActionSpec, int | None]:
    """The action of one metadata file, and the line of its name (for duplicate errors)."""
    return _load_action(file, pack, pack_path, text, max_bytes)


def load_pack_workflow(
    file: Path, pack: str, text: str | bytes | None = None, max_bytes: int = MAX_BYTES
) -> tuple[WorkflowSpec, Source]:
    """One workflow file of a pack (ref `<pack>.<file stem>`), checked on its own; for an
    action file that links one (`links_workflow`), that workflow."""
    if text is None:
        text = read_source(file, max_bytes)
    if file.parent.name == "actions":
        wf, source, _ = load_linked_workflow(file, pack, text, max_bytes)
        return wf, source
    if is_graph_file(file):
        return load_graph(file, pack, text, max_bytes)
    return load_workflow_source(text, file=str(file), pack=pack, max_bytes=max_bytes)


def check_references(
    wf: WorkflowSpec, source: Source | None, known: Set[str], actions: Mapping[str, ActionSpec]
) -> None:
    """The actions a workflow calls exist (`known`) and its inputs fit them (`actions`)."""
    check_actions(wf, known, source)
    check_inputs(wf, actions, source)


def _load_pack(root: Path) -> tuple[PackSpec, dict[str, Source]]:
    layout = scan_pack(root)
    meta = load_pack_meta(root)
    ref, pack_path = meta.ref, meta.path

    actions: dict[str, ActionSpec] = {}
    linked: list[Path] = []
    for file in layout.actions:
        text = read_source(file)
        if links_workflow(text):
            linked.append(file)
            continue
        action, line = _load_action(file, ref, pack_path, text)
        _refuse_duplicate(actions, action.ref, file, line)
        actions[action.ref] = action

    linked_to = linked_graphs((f, read_source(f)) for f in linked)
    unlinked = [g for g in layout.graphs if g.resolve() not in linked_to]
    workflows: list[WorkflowSpec] = []
    sources: dict[str, Source] = {}
    for file in [*layout.workflows, *linked, *unlinked]:
        wf, source = load_pack_workflow(file, ref)
        _refuse_duplicate(actions, wf.ref, file)
        actions[wf.ref] = workflow_action(wf, pack_path)
        workflows.append(wf)
        sources[wf.ref] = source

    # References into this very pack can be checked now; other packs' refs in load_packs.
    for wf in workflows:
        foreign = {t.action for t in wf.all_tasks() if t.action and t.action.split(".")[0] != ref}
        check_actions(wf, set(actions) | foreign, sources[wf.ref])
        check_inputs(wf, actions, sources[wf.ref])

    pack = replace(meta, actions=tuple(actions.values()), workflows=tuple(workflows))
    return pack, sources


def _refuse_links_out(root: Path) -> None:
    """A symlink in a pack must point inside the pack: a pack's files are what it runs,
    and registration must not read (or a worker run) a file from elsewhere."""
    inside = root.resolve()
    for path in sorted(root.rglob("*")):  # symlinked folders are listed, not entered
        if path.is_symlink():
            target = path.resolve()
            if target != inside and inside not in target.parents:
                raise SpecError(
                    f"symlink points outside the pack (to {target}): packs may only"
                    " link to their own files",
                    file=str(path),
                )


def _config(doc: Document) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    config: dict[str, Any] = doc.data.get("config") or {}
    if "config_schema" not in doc.data:
        return None, config
    try:
        schema = parameters_schema(doc.data["config_schema"], ("config_schema",))
    except Problem as problem:
        raise doc.problem(problem) from None
    try:
        return schema, validate_parameters(schema, config, where="")
    except ParameterError as exc:
        raise doc.error(str(exc), ("config",)) from None


def _yaml_files(directory: Path) -> list[Path]:
    if not directory.exists():
        return []
    if not directory.is_dir():
        raise SpecError("not a directory", file=str(directory))
    files = sorted(
        f
        for f in directory.iterdir()
        if f.suffix in (".yaml", ".yml") and not f.name.startswith(".")
    )
    stems: dict[str, Path] = {}
    for f in files:
        if f.stem in stems:
            raise SpecError(f"{stems[f.stem].name} and {f.name} define the same name", file=str(f))
        stems[f.stem] = f
    return files


def _refuse_duplicate(
    actions: dict[str, ActionSpec], ref: str, file: Path, line: int | None = None
) -> None:
    if ref in actions:
        raise SpecError(
            f"{ref!r} is already defined by {actions[ref].source_file}", file=str(file), line=line
        )


def _load_action(
    file: Path,
    pack: str,
    pack_path: str,
    text: str | bytes | None = None,
    max_bytes: int = MAX_BYTES,
) -> tuple[ActionSpec, int | None]:
    doc = load_mapping(file, text, max_bytes)
    validate_document(doc, _ACTION_VALIDATOR)
    data: dict[str, Any] = doc.data
    entry_point: str | None = data.get("entry_point")
    if data["runner"] == "python":
        _check_python_entry(doc, file.parent, entry_point)
    output_schema = data.get("output_schema")
    try:
        parameters = parameters_schema(data.get("parameters"), ("parameters",))
        if output_schema is not None and not fastschema.schema_valid(output_schema):
            Draft202012Validator.check_schema(output_schema)
    except Problem as problem:
        raise doc.problem(problem) from None
    except SchemaError as exc:
        raise doc.error(
            f"invalid JSON Schema: {one_line(exc.message, 160)}", ("output_schema", *exc.path)
        ) from None
    timeout = data.get("timeout")
    action = ActionSpec(
        ref=f"{pack}.{data['name']}",
        runner=data["runner"],
        entry_point=entry_point,
        description=data.get("description", ""),
        parameters=parameters,
        output_schema=output_schema,
        timeout=None if timeout is None else float(timeout),
        pack_path=pack_path,
        source_file=str(file),
    )
    return action, doc.line(("name",))


def _check_python_entry(doc: Document, actions_dir: Path, entry: str | None) -> None:
    if entry is None:
        raise doc.error("a python action needs entry_point 'file.py:function'")
    match = _ENTRY_RE.match(entry)
    if not match:
        raise doc.error(
            f"python entry_point {entry!r} must look like 'file.py:function'", ("entry_point",)
        )
    rel = PurePosixPath(match[1])
    if rel.is_absolute() or ".." in rel.parts or "\\" in match[1]:
        raise doc.error(
            f"entry point file {match[1]!r} must be inside the actions directory", ("entry_point",)
        )
    if not (actions_dir / rel).is_file():
        raise doc.error(
            f"entry point file {match[1]!r} does not exist in {actions_dir}", ("entry_point",)
        )


def workflow_action(wf: WorkflowSpec, pack_path: str) -> ActionSpec:
    """A workflow as an action: how other workflows nest it."""
    return ActionSpec(
        ref=wf.ref,
        runner="workflow",
        description=wf.description,
        parameters=wf.parameters,
        output_schema=wf.output,
        timeout=wf.timeout,
        pack_path=pack_path,
        source_file=wf.source_file,
    )


def all_actions(packs: Iterable[PackSpec]) -> dict[str, ActionSpec]:
    """Every action (and workflow-as-action) of `packs` by ref."""
    return {action.ref: action for pack in packs for action in pack.actions}
