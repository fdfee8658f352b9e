"""Hot reload end to end: a real `attune-worker --watch-packs DIR` process registers what
changes in DIR, keeps the registered version of a file that no longer validates (one log
line, file:line), and running executions keep their snapshot."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from textwrap import dedent

import psycopg
import pytest

from tests.helpers import poll_until, start, wait_done

pytestmark = pytest.mark.e2e

SLOW = dedent(
    """\
    label: Sleep, then answer
    version: "1.0.0"
    tasks:
      - name: wait
        action: core.sleep
        input: {{seconds: {seconds}}}
        on_success: answer
      - name: answer
        action: hot.act
        input: {{}}
    output_map: {{answer: "{answer}", act: "{{{{ task.answer.result }}}}"}}
    """
)

ACT = "name: act\nrunner: python\nentry_point: act.py:{function}\n"
ACT_PY = "def v1():\n    return 'from v1'\n\n\ndef v2():\n    return 'from v2'\n"


def _until(what: str, check: Callable[[], object], timeout: float = 15.0) -> float:
    """Poll until `check()` is truthy; return how long it took (printed, never asserted
    against a tight bound: timings on shared machines are noisy)."""
    t0 = time.monotonic()
    poll_until(check, what, timeout=timeout)
    took = time.monotonic() - t0
    print(f"{what}: {took:.2f}s")
    return took


def _source(conn: psycopg.Connection, ref: str) -> str | None:
    row = conn.execute(
        "SELECT source FROM attune.workflow_definition WHERE ref = %s", (ref,)
    ).fetchone()
    conn.commit()
    return None if row is None else str(row[0])


def test_worker_watch_packs_reloads_changes(
    conn: psycopg.Connection,
    worker_procs,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    root = tmp_path / "packs"
    pack = root / "hot"
    (pack / "workflows").mkdir(parents=True)
    (pack / "actions").mkdir()
    (pack / "pack.yaml").write_text('ref: hot\nversion: "1.0.0"\n')
    (pack / "actions" / "act.py").write_text(ACT_PY)
    (pack / "actions" / "act.yaml").write_text(ACT.format(function="v1"))
    slow = pack / "workflows" / "slow.yaml"
    slow.write_text(SLOW.format(seconds=2, answer="one"))
    (pack / "workflows" / "other.yaml").write_text(SLOW.format(seconds=0, answer="other"))

    worker_procs(extra=("--watch-packs", str(root), "--watch-interval", "0.2"))
    log = tmp_path / "worker-0.log"
    _until("registered at start", lambda: _source(conn, "hot.slow"))

    running = start(conn, "hot.slow")  # snapshot: answer "one"
    conn.commit()
    slow.write_text(SLOW.format(seconds=0, answer="two"))
    (pack / "actions" / "act.yaml").write_text(ACT.format(function="v2"))
    _until("changed file re-registered", lambda: "two" in (_source(conn, "hot.slow") or ""))

    row = wait_done(conn, running, timeout=30)
    assert row["status"] == "succeeded", row["error"]
    assert row["output"]["answer"] == "one"  # the running execution kept its snapshot
    fresh = wait_done(conn, start(conn, "hot.slow"), timeout=30)
    # The new definition, and the worker reloaded the changed action (NOTIFY attune_catalog).
    assert fresh["output"] == {"answer": "two", "act": "from v2"}, fresh

    (pack / "workflows" / "added.yaml").write_text(SLOW.format(seconds=0, answer="added"))
    _until("added file registered", lambda: _source(conn, "hot.added"))

    (pack / "workflows" / "other.yaml").unlink()
    _until("deleted file unregistered", lambda: _source(conn, "hot.other") is None)
    with pytest.raises(
        psycopg.errors.ForeignKeyViolation, match=r"unknown workflow (or action )?'hot\.other'"
    ):
        start(conn, "hot.other")
    conn.rollback()

    slow.write_text(SLOW.format(seconds=0, answer="three").replace("core.sleep", "core.nope"))

    def logged() -> list[str]:
        return [line for line in log.read_text().splitlines() if "slow.yaml:" in line]

    _until("invalid file logged", logged)
    (pack / "workflows" / "added.yaml").write_text(SLOW.format(seconds=0, answer="again"))
    _until("another change registered", lambda: "again" in (_source(conn, "hot.added") or ""))
    lines = logged()
    assert len(lines) == 1, lines  # one line, not one per scan or per registration
    assert "unknown action 'core.nope'" in lines[0] and "registered version is kept" in lines[0]
    assert "slow.yaml:5: tasks[0] (wait).action:" in lines[0]
    assert "two" in (_source(conn, "hot.slow") or "")  # the registered version stays
    kept = wait_done(conn, start(conn, "hot.slow"), timeout=30)
    assert kept["status"] == "succeeded" and kept["output"]["answer"] == "two"
