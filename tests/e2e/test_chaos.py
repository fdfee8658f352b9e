"""The chaos soak, bounded: 200 workflows of every kind on 3 worker processes while a
killer SIGKILLs a random worker every 1-3 s and PostgreSQL is crashed and restarted
once; afterwards nothing is lost, nothing ran twice, and the audit log agrees
(attune_pg.audit finds nothing, over every row the soak counted).

It runs ops/chaos/soak.py as a subprocess: the soak starts its own embedded
PostgreSQL (it must be free to crash it), whatever server the rest of the suite uses.
The long run is for users: `python ops/chaos/soak.py --minutes 10`.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

REPO = Path(__file__).resolve().parents[2]
SOAK = REPO / "ops" / "chaos" / "soak.py"
SUMMARY = re.compile(
    r"^workflows=(\d+) tasks=(\d+) kills=(\d+) restarts=(\d+) lost=(\d+) duplicated=(\d+)$"
)
# The soak's stderr line from attune_pg.audit, the invariants the other tests check too.
AUDIT = re.compile(r"audit: (\d+) executions, (\d+) task rows, (\d+) join rounds: (\d+) problems")


def test_chaos_soak_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    started = time.monotonic()
    soak = subprocess.Popen(
        [
            sys.executable,
            str(SOAK),
            "--workflows", "200",
            "--seconds", "35",
            "--drain-seconds", "45",
            "--calm-seconds", "20",
            "--workdir", str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )  # fmt: skip
    try:
        out, err = soak.communicate(timeout=200)
    except subprocess.TimeoutExpired:
        soak.terminate()  # SIGTERM: the soak stops its workers and its server
        try:
            out, err = soak.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            soak.kill()
            out, err = soak.communicate()
    elapsed = time.monotonic() - started
    report = f"exit {soak.returncode} after {elapsed:.0f}s\n{out}\n{err[-12000:]}"
    print(report)  # shown with -rP / -s: the summary line and how hard the chaos hit
    lines = out.strip().splitlines()
    assert len(lines) == 1, report
    match = SUMMARY.match(lines[0])
    assert match is not None, report
    workflows, tasks, kills, restarts, lost, duplicated = map(int, match.groups())
    assert (lost, duplicated) == (0, 0), report
    audited = AUDIT.search(err)
    assert audited is not None, report
    executions, task_rows, joins, problems = map(int, audited.groups())
    assert problems == 0 and task_rows == tasks and executions > workflows and joins > 0, report
    assert soak.returncode == 0, report
    assert workflows >= 200 and tasks > 3 * workflows, report
    assert kills >= 10 and restarts == 1, report
    assert elapsed < 180, report
