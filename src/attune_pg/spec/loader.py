"""Workflow files -> `WorkflowSpec`: YAML with lines -> JSON Schema -> normalise -> checks.

All-or-nothing: the first problem raises one SpecError whose one-line message names the
file, the line and the field (`deploy.yaml:14: tasks[2] (build).retry.count: ...`).
"""

from __future__ import annotations

import difflib
import json
import re
from functools import cache
from importlib import resources
from pathlib import Path as FsPath
from pathlib import PurePath
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, best_match

from attune_pg.errors import SpecError
from attune_pg.spec import fastschema
from attune_pg.spec.checks import check_workflow
from attune_pg.spec.model import WorkflowSpec
from attune_pg.spec.normalize import TRANSITION_KEYS, Source, normalize_workflow
from attune_pg.spec.params import describe, show
from attune_pg.spec.yaml_lines import (
    MAX_BYTES,
    Document,
    Path,
    Problem,
    load_yaml,
    size_limit_error,
)

NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]*$")  # pack names and file stems in refs


@cache
def workflow_schema() -> dict[str, Any]:
    """The JSON Schema of a workflow file (spec/workflow.schema.json)."""
    text = resources.files("attune_pg.spec").joinpath("workflow.schema.json").read_text("utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


@cache
def _workflow_validator() -> Draft202012Validator:
    return Draft202012Validator(workflow_schema())


def load_workflow_text(text: str | bytes, *, file: str, pack: str | None = None) -> WorkflowSpec:
    """Load one workflow. With `pack`, its ref is `<pack>.<file stem>` (a `ref:` key must
    agree); without, the `ref:` key is required."""
    return load_workflow_source(text, file=file, pack=pack)[0]


def load_workflow_file(path: str | FsPath, *, pack: str | None = None) -> WorkflowSpec:
    return load_workflow_text(read_source(path), file=str(path), pack=pack)


def load_workflow_source(
    text: str | bytes, *, file: str, pack: str | None = None, max_bytes: int = MAX_BYTES
) -> tuple[WorkflowSpec, Source]:
    """Like `load_workflow_text`, also returning where each part was written."""
    doc = load_yaml(text, file=file, max_bytes=max_bytes)
    return load_workflow_document(doc, pack=pack)


def load_workflow_document(
    doc: Document, *, pack: str | None = None, ref: str | None = None
) -> tuple[WorkflowSpec, Source]:
    """A parsed workflow document; `ref` given (a workflow an action file links, whose
    ref is the action's) or derived from `pack` and the file name."""
    if not isinstance(doc.data, dict):
        raise doc.error("a workflow file must be a mapping with label, version and tasks")
    validate_document(doc, _workflow_validator())
    if ref is None:
        ref = _workflow_ref(doc, pack)
    elif doc.data.get("ref") not in (None, ref):
        raise doc.error(f"ref {doc.data['ref']!r} must be {ref!r}", ("ref",))
    name = doc.data.get("name")
    if name is not None and name != ref.split(".", 1)[1]:
        raise doc.error(
            f"name {name!r} must be {ref.split('.', 1)[1]!r} (the workflow's name in its ref"
            f" {ref!r})",
            ("name",),
        )
    try:
        spec, source = normalize_workflow(doc, ref=ref)
    except Problem as problem:
        raise doc.problem(problem) from None
    check_workflow(spec, source)
    return spec, source


def read_source(path: str | FsPath, max_bytes: int = MAX_BYTES) -> bytes:
    """A file's bytes, refusing non-regular files and reading at most `max_bytes` + 1 byte
    (the limit defaults to 1 MB; `packs register --max-file-size` changes it)."""
    p = FsPath(path)
    if not p.is_file():
        raise SpecError("not a regular file" if p.exists() else "no such file", file=str(path))
    with p.open("rb") as fh:
        data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise size_limit_error(max_bytes).located(str(path))
    return data


def load_mapping(
    file: FsPath, text: str | bytes | None = None, max_bytes: int = MAX_BYTES
) -> Document:
    """A pack's YAML file (pack.yaml, an action, a rule, ...) that must be one mapping."""
    if text is None:
        text = read_source(file, max_bytes)
    doc = load_yaml(text, file=str(file), max_bytes=max_bytes)
    if not isinstance(doc.data, dict):
        raise doc.error(f"{file.name} must be a mapping")
    return doc


def _workflow_ref(doc: Document, pack: str | None) -> str:
    given = doc.data.get("ref")
    if pack is None:
        if given is None:
            raise doc.error("missing required key 'ref' (needed outside a pack)")
        return str(given)
    stem = PurePath(doc.file).stem
    if not NAME_RE.match(stem):
        raise doc.error(
            f"file name {stem!r} cannot form a workflow ref (use letters, digits, '_' and '-')"
        )
    expected = f"{pack}.{stem}"
    if given is not None and given != expected:
        raise doc.error(f"ref {given!r} must be {expected!r} (<pack>.<file name>)", ("ref",))
    return expected


# --- JSON Schema errors -> one located line ------------------------------------------------


def validate_document(doc: Document, validator: Draft202012Validator) -> None:
    """Raise the first schema error of `doc` (earliest line; the most telling one there)."""
    if isinstance(validator.schema, dict) and fastschema.document_valid(validator.schema, doc.data):
        return
    errors = list(validator.iter_errors(doc.data))
    if not errors:
        return
    located = [(doc.line(tuple(e.absolute_path)) or 0, e) for e in errors]
    first_line = min(line for line, _ in located)
    error = best_match(e for line, e in located if line == first_line) or errors[0]
    path, message = explain(error)
    raise doc.error(message, path)


def explain(error: ValidationError) -> tuple[Path, str]:
    """The path and one-line message for a schema error, descending into anyOf branches."""
    path: Path = tuple(error.absolute_path)
    if "propertyNames" in error.absolute_schema_path and isinstance(error.instance, str):
        path = (*path, error.instance)  # the offending key itself, for its line
    if error.validator == "anyOf":
        branch = _telling_branch_error(error)
        if branch is not None:
            return explain(branch)
        desc = error.schema.get("description") if isinstance(error.schema, dict) else None
        if desc:
            return path, f"expected {desc}, got {show(error.instance)}"
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        known = set(error.schema.get("properties", {})) if isinstance(error.schema, dict) else set()
        extra = [k for k in error.instance if k not in known]
        if extra:
            return (*path, extra[0]), _unknown_key(path, extra[0], known)
    if _is_subtask(path[:-1]) and path[-1:] == ("type",) and error.instance == "parallel":
        return path, "parallel blocks cannot be nested"
    message = describe(error)
    if (
        error.validator == "type"
        and error.validator_value == "string"
        and isinstance(error.instance, bool | int | float)
    ):
        message += " (quote it to make it a string)"
    return path, message


def _telling_branch_error(error: ValidationError) -> ValidationError | None:
    """Within a failed anyOf, the error that says most: one deeper in the instance, or the
    only branch whose type matched. None if the branches are equally (un)likely."""
    context = list(error.context or ())
    deeper = [e for e in context if len(e.relative_path) > 0]
    if deeper:
        return _best(deeper)
    typed = [e for e in context if e.validator not in ("type", "const")]
    branches = {e.relative_schema_path[0] for e in typed if e.relative_schema_path}
    return _best(typed) if len(branches) == 1 else None


def _best(errors: list[ValidationError]) -> ValidationError | None:
    found: ValidationError | None = best_match(errors)
    return found


def _is_subtask(path: Path) -> bool:
    """Is `path` a sub-task of a parallel block (tasks[i].tasks[j])?"""
    return len(path) == 4 and path[0] == "tasks" and path[2] == "tasks"


def _unknown_key(path: Path, key: str, known: set[str]) -> str:
    if _is_subtask(path) and key in TRANSITION_KEYS | {"join", "tasks"}:
        return (
            f"sub-tasks of a parallel block cannot have {key!r}; "
            "put transitions on the parallel block itself"
        )
    close = difflib.get_close_matches(key, sorted(known), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown key {key!r}{hint}"
