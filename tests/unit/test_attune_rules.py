"""Attune's timer and rule examples (docs/examples/timer-types-example.yaml, verbatim in
tests/fixtures/attune/) through our automation layer: each document of that file is one
rule, written as a rule file of the pack its ref names, checked against Attune's core timer
triggers (also verbatim) and our core pack, and its schedule computed."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from attune_pg.engine.timers import first_fire
from attune_pg.errors import SpecError
from attune_pg.spec.model import ActionSpec
from attune_pg.spec.packfiles import load_action
from attune_pg.spec.rules import RuleSpec, check_rule, load_rule
from attune_pg.spec.triggers import load_trigger

CORPUS = Path(__file__).parents[1] / "fixtures" / "attune"
CORE = Path(__file__).parents[2] / "packs" / "core"
EXAMPLE = CORPUS / "docs" / "examples" / "timer-types-example.yaml"
NOW = datetime(2024, 3, 20, 12, 0, tzinfo=UTC)  # a Wednesday


def documents() -> list[tuple[str, str]]:
    """(ref, text) of each rule document, its text exactly as in the file."""
    text = EXAMPLE.read_text(encoding="utf-8")
    out = []
    for part in text.split("\n---\n")[1:]:
        data = yaml.safe_load(part)
        if data:  # the last document is comments only
            out.append((data["ref"], part))
    return out


def actions() -> dict[str, ActionSpec]:
    core = {}
    for file in sorted((CORE / "actions").glob("*.yaml")):
        action, _ = load_action(file, "core", str(CORE))
        core[action.ref] = action
    open_schema = {"type": "object", "properties": {}}
    stand_ins = {
        ref: ActionSpec(ref=ref, runner="builtin", entry_point="noop", parameters=open_schema)
        for ref in (
            "backup.run_backup", "reports.generate", "processing.run_job", "deployment.deploy",
            "notifications.send", "monitoring.check_and_alert",
        )
    }  # fmt: skip
    return {**core, **stand_ins}


def triggers(where: Path) -> dict[str, Any]:
    found = [load_trigger(f, "core") for f in sorted((where / "triggers").glob("*.yaml"))]
    return {t.ref: t for t in found}


def load(tmp_path: Path, ref: str, text: str) -> tuple[RuleSpec, Any]:
    pack, name = ref.split(".")
    file = tmp_path / pack / "rules" / f"{name}.yaml"
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(text, encoding="utf-8")
    return load_rule(file, pack)


def test_the_example_holds_nine_rules() -> None:
    assert [ref for ref, _ in documents()] == [
        "monitoring.health_check", "backup.database", "reports.daily", "maintenance.cleanup",
        "processing.intensive", "deployment.production", "notifications.reminder",
        "admin.license_renewal", "monitoring.combined",
    ]  # fmt: skip


@pytest.mark.parametrize("timers", [CORPUS / "packs/core", CORE], ids=["attune", "ours"])
@pytest.mark.parametrize(("ref", "text"), documents(), ids=[r for r, _ in documents()])
def test_each_rule_loads_as_attune_wrote_it(
    tmp_path: Path, timers: Path, ref: str, text: str
) -> None:
    rule, doc = load(tmp_path, ref, text)
    if rule.action_ref == "core.shell":
        # Neither Attune's core pack nor ours has a core.shell (ours: core.local).
        with pytest.raises(SpecError, match=r"unknown action or workflow 'core\.shell'"):
            check_rule(rule, doc, triggers(timers), actions())
        return
    checked = check_rule(rule, doc, triggers(timers), actions())
    assert checked.trigger_ref == yaml.safe_load(text)["trigger"]["type"]
    assert checked.action_params == yaml.safe_load(text)["action"]["parameters"]


def test_the_schedules_are_attunes() -> None:
    rules = {ref: yaml.safe_load(text)["trigger"] for ref, text in documents()}
    kinds = {"core.intervaltimer": "interval", "core.crontimer": "cron",
             "core.datetimetimer": "datetime"}  # fmt: skip

    def first(ref: str, now: datetime = NOW) -> datetime | None:
        trigger = rules[ref]
        params = {"unit": "seconds", "timezone": "UTC", **trigger["parameters"]}
        return first_fire(kinds[trigger["type"]], params, now)  # type: ignore[arg-type]

    assert (first("monitoring.health_check") - NOW).total_seconds() == 30
    assert (first("backup.database") - NOW).total_seconds() == 6 * 3600
    # "0 0 17 * * 1-5" (seconds first) in New York: 17:00 EDT that Wednesday = 21:00 UTC
    assert first("reports.daily") == datetime(2024, 3, 20, 21, 0, tzinfo=UTC)
    assert first("processing.intensive") == datetime(2024, 3, 20, 22, 0, tzinfo=UTC)
    assert first("notifications.reminder") == datetime(2024, 3, 20, 13, 45, tzinfo=UTC)
    assert first("deployment.production") == datetime(2024, 6, 15, 2, 0, tzinfo=UTC)
    # A fire_at already past when registered never fires (docs/automation.md): all three
    # of Attune's date examples, registered today.
    today = datetime.now(UTC)
    for ref in ("deployment.production", "notifications.reminder", "admin.license_renewal"):
        assert first(ref, today) is None


def test_nested_and_flat_keys_cannot_be_mixed(tmp_path: Path) -> None:
    both = (
        "trigger_ref: core.intervaltimer\n"
        "trigger: {type: core.intervaltimer}\n"
        "action_ref: core.noop\n"
    )
    with pytest.raises(SpecError, match="give 'trigger_ref' or 'trigger', not both"):
        load(tmp_path, "p.r", both)
    with pytest.raises(SpecError, match=r"missing required key 'action_ref' \(or 'action'\)"):
        load(tmp_path, "p.r", "trigger: {type: core.intervaltimer}\n")


def test_errors_point_at_the_nested_keys(tmp_path: Path) -> None:
    text = (
        "trigger:\n  type: core.intervaltimer\n  parameters: {unit: weeks, interval: 1}\n"
        "action: {ref: core.noop}\n"
    )
    rule, doc = load(tmp_path, "p.r", text)
    with pytest.raises(SpecError, match=r"r\.yaml:3: trigger\.parameters"):
        check_rule(rule, doc, triggers(CORE), actions())
