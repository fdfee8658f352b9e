"""`packs/<pack>/policies/<name>.yaml` -> `PolicySpec` (StackStorm's concurrency policies).

    name: deploy.concurrency      # ref <pack>.<name>
    description: ...
    enabled: true
    resource_ref: examples.deploy # a workflow (limits its executions) or a plain
                                  # action (limits its running tasks, in any workflow)
    policy_type: action.concurrency        # or action.concurrency.attr
    parameters:
      threshold: 2                # at most this many at once
      action: delay               # delay (wait for a slot, priority then arrival) | cancel
      attributes: [env]           # action.concurrency.attr: one limit per value of these

One enabled concurrency policy per resource.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator

from attune_pg.spec.loader import read_source, validate_document
from attune_pg.spec.model import ActionSpec
from attune_pg.spec.yaml_lines import Document, load_yaml

POLICY_TYPES = ("action.concurrency", "action.concurrency.attr")

POLICY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["name", "resource_ref", "policy_type", "parameters"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "pattern": "^[A-Za-z0-9_][A-Za-z0-9_.-]*$"},
        "pack": {"type": "string"},
        "description": {"type": "string"},
        "enabled": {"type": "boolean"},
        "resource_ref": {"type": "string", "pattern": r"^[^.\s]+\.[^\s]+$"},
        "policy_type": {"enum": list(POLICY_TYPES)},
        "parameters": {
            "type": "object",
            "required": ["threshold"],
            "additionalProperties": False,
            "properties": {
                "threshold": {"type": "integer", "minimum": 1},
                "action": {"enum": ["delay", "cancel"]},
                "attributes": {
                    "type": "array",
                    "minItems": 1,
                    "items": {"type": "string", "minLength": 1},
                },
            },
        },
    },
}
_VALIDATOR = Draft202012Validator(POLICY_SCHEMA)


@dataclass(frozen=True)
class PolicySpec:
    ref: str
    resource_ref: str
    policy_type: str
    threshold: int
    on_limit: str = "delay"
    attributes: tuple[str, ...] = ()
    description: str = ""
    enabled: bool = True
    resource_kind: str = "workflow"  # workflow | action (set by check_policy)
    source_file: str | None = None

    @property
    def pack(self) -> str:
        return self.ref.split(".", 1)[0]

    @property
    def name(self) -> str:
        return self.ref.split(".", 1)[1]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_policy(file: Path, pack: str) -> tuple[PolicySpec, Document]:
    doc = load_yaml(read_source(file), file=str(file))
    if not isinstance(doc.data, dict):
        raise doc.error(f"{file.name} must be a mapping")
    validate_document(doc, _VALIDATOR)
    data: dict[str, Any] = doc.data
    if data.get("pack", pack) != pack:
        raise doc.error(f"pack {data['pack']!r} must be {pack!r}", ("pack",))
    params: dict[str, Any] = data["parameters"]
    attributes = tuple(params.get("attributes") or ())
    if data["policy_type"] == "action.concurrency.attr" and not attributes:
        raise doc.error(
            "action.concurrency.attr needs parameters.attributes (parameter names)",
            ("parameters",),
        )
    if data["policy_type"] == "action.concurrency" and attributes:
        raise doc.error(
            "attributes belong to policy_type action.concurrency.attr",
            ("parameters", "attributes"),
        )
    policy = PolicySpec(
        ref=f"{pack}.{data['name']}",
        resource_ref=data["resource_ref"],
        policy_type=data["policy_type"],
        threshold=params["threshold"],
        on_limit=params.get("action", "delay"),
        attributes=attributes,
        description=data.get("description", ""),
        enabled=data.get("enabled", True),
        source_file=str(file),
    )
    return policy, doc


def check_policy(
    policy: PolicySpec, doc: Document, actions: Mapping[str, ActionSpec]
) -> PolicySpec:
    action = actions.get(policy.resource_ref)
    if action is None:
        raise doc.error(f"unknown workflow or action {policy.resource_ref!r}", ("resource_ref",))
    props = action.parameters.get("properties") or {}
    for i, name in enumerate(policy.attributes):
        if name not in props:
            raise doc.error(
                f"{name!r} is not a parameter of {action.ref!r}"
                f" (parameters: {', '.join(props) or 'none'})",
                ("parameters", "attributes", i),
            )
        if isinstance(props[name], dict) and props[name].get("secret"):
            # The values of the attributes are the slot keys, visible to every reader.
            raise doc.error(
                f"{name!r} is a secret parameter of {action.ref!r}: it cannot be a policy"
                " attribute",
                ("parameters", "attributes", i),
            )
    kind = "workflow" if action.runner == "workflow" else "action"
    return PolicySpec(**{**policy.to_dict(), "resource_kind": kind})
