"""`attune-pg rules|triggers|events|enforcements|timers|policies` and `run` of a plain
action, against a real database."""

from __future__ import annotations

import json
from collections.abc import Callable

import psycopg
import pytest

from attune_pg import automation
from tests.conftest import FIXTURE_PACKS, PACKS
from tests.integration.test_cli import invoke

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def test_run_a_plain_action_and_wait(dsn: str, worker_thread: Callable[..., object]) -> None:
    worker_thread()
    code, out, err = invoke(dsn, "run", "core.local", "-p", 'cmd=["echo", "from a plain action"]',
                            "--wait", "--json")  # fmt: skip
    assert code == 0, err
    row = json.loads(out)
    assert row["status"] == "succeeded"
    assert row["workflow_ref"] == "core.local"
    assert row["output"]["stdout"] == "from a plain action\n"


def test_events_rules_enforcements_timers_policies(dsn: str, conn: psycopg.Connection) -> None:
    for pack in (FIXTURE_PACKS / "shop", PACKS / "examples"):
        code, out, err = invoke(dsn, "packs", "register", str(pack))
        assert code == 0, err

    code, out, _ = invoke(dsn, "triggers", "list")
    assert code == 0
    assert "core.crontimer" in out and "shop.order_placed" in out

    code, out, err = invoke(dsn, "events", "emit", "shop.order_placed", "-p", "id=5", "-p",
                            "total=300", "-p", 'tags=["vip"]')  # fmt: skip
    assert code == 0, err
    assert out.startswith("event 1 emitted")
    code, _, err = invoke(dsn, "events", "emit", "shop.order_placed", "-p", "id=x", "-p", "total=1")
    assert code == 1
    assert err.strip() == (
        'error: trigger \'shop.order_placed\': payload.id: "x" is not of type "integer"'
    )
    code, _, err = invoke(dsn, "events", "emit", "shop.order_placed", "--payload", "[1]")
    assert code == 2 and "--payload must be a JSON object" in err

    automation.process_events(conn)
    code, out, _ = invoke(dsn, "events", "list")
    assert code == 0 and "shop.order_placed" in out and "processed" in out
    code, out, _ = invoke(dsn, "events", "show", "1")
    shown = json.loads(out)
    assert shown["payload"] == {"id": 5, "total": 300, "tags": ["vip"]}
    assert [e["rule_ref"] for e in shown["enforcements"]] == ["shop.big_orders"]
    code, _, err = invoke(dsn, "events", "show", "99")
    assert code == 4 and "event 99 does not exist" in err

    code, out, _ = invoke(dsn, "enforcements", "list", "--rule", "shop.big_orders")
    assert code == 0 and "succeeded" in out
    code, out, _ = invoke(dsn, "rules", "list")
    assert code == 0 and "shop.big_orders" in out and "examples.nightly_report" in out
    code, out, _ = invoke(dsn, "rules", "disable", "shop.big_orders")
    assert (code, out.strip()) == (0, "rule shop.big_orders disabled")
    code, out, _ = invoke(dsn, "rules", "show", "shop.big_orders")
    rule = json.loads(out)
    assert rule["enabled"] is False and rule["enforcements"] == 1
    code, out, _ = invoke(dsn, "rules", "enable", "shop.big_orders")
    assert code == 0
    code, _, err = invoke(dsn, "rules", "enable", "shop.nope")
    assert code == 4 and "rule 'shop.nope' is not registered" in err

    code, out, _ = invoke(dsn, "timers", "list")
    assert code == 0 and "examples.nightly_report" in out and "cron" in out
    code, out, _ = invoke(dsn, "policies", "list")
    assert code == 0
    assert "examples.nightly_report.concurrency" in out and "examples.fulfil_order" in out
