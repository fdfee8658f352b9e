"""Attune's workflows that live beside actions: an action file that links its graph
(`workflow_file:`), and graph files in `actions/workflows/` that no action links (each a
workflow of its own). How the registrar finds them, loads them and hashes them."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from attune_pg.errors import SpecError
from attune_pg.spec import fastschema
from attune_pg.spec.loader import (
    NAME_RE,
    load_mapping,
    load_workflow_document,
    read_source,
    validate_document,
)
from attune_pg.spec.model import WorkflowSpec
from attune_pg.spec.normalize import Source
from attune_pg.spec.params import output_schema, parameters_schema
from attune_pg.spec.yaml_lines import MAX_BYTES, Document, Problem, load_yaml, one_line

# An action file that links a workflow (Attune: `workflow_file`): the action-level keys.
LINKED_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["workflow_file"],
    "additionalProperties": False,
    "properties": {
        "workflow_file": {"type": "string", "minLength": 1},
        "name": {"type": "string", "pattern": NAME_RE.pattern},
        "ref": {"type": "string"},
        "label": {"type": "string", "minLength": 1},
        "description": {"type": "string"},
        "enabled": {"const": True},
        "parameters": {"type": "object"},
        "output": {"type": "object"},
        "tags": {"type": "array", "items": {"type": "string", "minLength": 1}},
    },
}
# What the action file gives the workflow; its own keys win over the graph file's.
_LINKED_KEYS = ("label", "description", "parameters", "output", "tags")
_LINKED_VALIDATOR = Draft202012Validator(LINKED_SCHEMA)


def is_graph_file(file: Path) -> bool:
    """Is `file` in a pack's actions/workflows/ (Attune's folder of workflow graphs)?"""
    return file.parent.name == "workflows" and file.parent.parent.name == "actions"


def graph_ref(file: Path, pack: str) -> str:
    """`<pack>.<name>` of a graph file: `deploy.workflow.yaml` is `deploy`, as in Attune."""
    return f"{pack}.{file.stem.removesuffix('.workflow')}"


def linked_graphs(actions: Iterable[tuple[Path, bytes]]) -> set[Path]:
    """The graph files the given action files link (those that link one)."""
    out: set[Path] = set()
    for file, text in actions:
        if not links_workflow(text):
            continue
        name = load_yaml(text, file=str(file)).data.get("workflow_file")
        if isinstance(name, str):
            out.add((file.parent / name).resolve())
    return out


def load_graph(
    file: Path, pack: str, text: str | bytes, max_bytes: int
) -> tuple[WorkflowSpec, Source]:
    """A graph file in actions/workflows/ that no action links: a workflow of its own."""
    ref = graph_ref(file, pack)
    doc = load_yaml(text, file=str(file), max_bytes=max_bytes)
    return load_workflow_document(_graph(doc, ref), ref=ref)


def links_workflow(text: bytes) -> bool:
    """Does this action file link a workflow (Attune's `workflow_file:` key)?"""
    if b"workflow_file" not in text:
        return False  # the common case, without parsing the file twice
    try:
        data = load_yaml(text, file="").data
    except SpecError:
        return False  # reported as the action file's own error
    return isinstance(data, dict) and "workflow_file" in data


def load_linked_workflow(
    file: Path, pack: str, text: str | bytes | None = None, max_bytes: int = MAX_BYTES
) -> tuple[WorkflowSpec, Source, bytes]:
    """The workflow an action file links: (spec, where its parts were written, the graph
    file's bytes). Errors in the action-level keys name the action file, errors in the
    graph the graph file."""
    meta = load_mapping(file, text, max_bytes)
    if meta.data.get("enabled") is False:
        raise meta.error(
            "false is not supported in a file; register the workflow and run"
            f" `attune-pg workflows disable {pack}.{file.stem}`",
            ("enabled",),
        )
    validate_document(meta, _LINKED_VALIDATOR)
    data: dict[str, Any] = meta.data
    ref = f"{pack}.{file.stem}"
    for key, want in (("ref", ref), ("name", file.stem)):
        if key in data and data[key] != want:
            raise meta.error(f"{key} {data[key]!r} must be {want!r} (<pack>.<file name>)", (key,))
    try:
        if "parameters" in data:
            parameters_schema(data["parameters"], ("parameters",))
        output = output_schema(data.get("output"))
        if output is not None and not fastschema.schema_valid(output):
            Draft202012Validator.check_schema(output)
    except Problem as problem:
        raise meta.problem(problem) from None
    except SchemaError as exc:
        raise meta.error(
            f"invalid JSON Schema: {one_line(exc.message, 160)}", ("output", *exc.path)
        ) from None
    graph_file = _linked_path(meta, file.parent, data["workflow_file"])
    graph_text = read_source(graph_file, max_bytes)
    graph = load_yaml(graph_text, file=str(graph_file), max_bytes=max_bytes)
    given = {k: data[k] for k in _LINKED_KEYS if k in data}
    wf, source = load_workflow_document(_graph(graph, ref, given), ref=ref)
    return wf, source, graph_text


def linked_graph_bytes(file: Path, text: bytes, max_bytes: int = MAX_BYTES) -> bytes:
    """The bytes of the graph file an action file links (for its content hash)."""
    meta = load_mapping(file, text, max_bytes)
    name = meta.data.get("workflow_file")
    if not isinstance(name, str):
        validate_document(meta, _LINKED_VALIDATOR)  # raises the located schema error
        raise meta.error("workflow_file must be a string", ("workflow_file",))
    return read_source(_linked_path(meta, file.parent, name), max_bytes)


def _linked_path(doc: Document, actions_dir: Path, name: str) -> Path:
    rel = PurePosixPath(name)
    if rel.is_absolute() or ".." in rel.parts or "\\" in name:
        raise doc.error(f"workflow_file {name!r} must be inside the actions directory",
                        ("workflow_file",))  # fmt: skip
    path = actions_dir / rel
    if not path.is_file():
        raise doc.error(f"workflow_file {name!r} does not exist in {actions_dir}",
                        ("workflow_file",))  # fmt: skip
    return path


def _graph(doc: Document, ref: str, given: dict[str, Any] | None = None) -> Document:
    """A graph file's document with the keys an action file gives it (they win), labelled
    by its ref when nobody labels it."""
    if not isinstance(doc.data, dict):
        raise doc.error("a workflow file must be a mapping with version and tasks")
    data = {**doc.data, **(given or {})}
    data.setdefault("label", ref)
    return Document(file=doc.file, data=data, root=doc.root)
