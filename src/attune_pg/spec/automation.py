"""A pack's triggers/, rules/ and policies/ -> `PackAutomation`, all or nothing.

Loaded after the pack's actions and workflows (`spec/packfiles.py`), because rules and
policies name them: `load_automation` checks every reference against the packs being
registered together plus what is already registered (the latter lose to the former).
The first invalid file raises a located SpecError and nothing is registered.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from attune_pg.errors import SpecError
from attune_pg.spec.model import ActionSpec, PackSpec
from attune_pg.spec.policies import PolicySpec, check_policy, load_policy
from attune_pg.spec.rules import RuleSpec, check_rule, load_rule
from attune_pg.spec.triggers import TriggerSpec, load_trigger
from attune_pg.spec.yaml_lines import Document


@dataclass(frozen=True)
class PackAutomation:
    pack: str
    triggers: tuple[TriggerSpec, ...] = ()
    rules: tuple[RuleSpec, ...] = ()
    policies: tuple[PolicySpec, ...] = ()


def _files(directory: Path) -> list[Path]:
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


def load_automation(
    packs: Iterable[PackSpec],
    actions: Mapping[str, ActionSpec],
    registered_triggers: Mapping[str, TriggerSpec],
    registered_policies: Mapping[str, PolicySpec],
) -> list[PackAutomation]:
    """Triggers, rules and policies of `packs`; `actions` holds every action and workflow
    they may name (registered ones and those of `packs`)."""
    packs = list(packs)
    own = {p.ref for p in packs}
    triggers = {ref: t for ref, t in registered_triggers.items() if t.pack not in own}
    loaded_triggers: dict[str, list[TriggerSpec]] = {}
    for pack in packs:
        found = [load_trigger(f, pack.ref) for f in _files(Path(pack.path) / "triggers")]
        loaded_triggers[pack.ref] = found
        triggers.update({t.ref: t for t in found})

    # Policies of other packs still hold their resource: one enabled policy each.
    claimed = {
        p.resource_ref: p for p in registered_policies.values() if p.pack not in own and p.enabled
    }
    out = []
    for pack in packs:
        root = Path(pack.path)
        rules = []
        for file in _files(root / "rules"):
            rule, doc = load_rule(file, pack.ref)
            rules.append(check_rule(rule, doc, triggers, actions))
        policies = []
        for file in _files(root / "policies"):
            policy, doc = load_policy(file, pack.ref)
            policy = check_policy(policy, doc, actions)
            _one_per_resource(policy, doc, claimed)
            policies.append(policy)
        out.append(
            PackAutomation(
                pack=pack.ref,
                triggers=tuple(loaded_triggers[pack.ref]),
                rules=tuple(rules),
                policies=tuple(policies),
            )
        )
    return out


def _one_per_resource(policy: PolicySpec, doc: Document, claimed: dict[str, PolicySpec]) -> None:
    if not policy.enabled:
        return
    other = claimed.get(policy.resource_ref)
    if other is not None:
        raise doc.error(
            f"{policy.resource_ref!r} already has the concurrency policy {other.ref!r}"
            f" ({other.source_file}); one enabled policy per workflow or action",
            ("resource_ref",),
        )
    claimed[policy.resource_ref] = policy
