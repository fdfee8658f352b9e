"""Long CLI work shows progress on stderr only when asked (or on a terminal)."""

from __future__ import annotations

from click.testing import CliRunner

from attune_pg.cli.main import cli
from tests.conftest import FIXTURE_PACKS, PACKS


def test_packs_register_progress_only_when_asked(dsn: str) -> None:
    quiet = CliRunner().invoke(cli, ["packs", "register", str(PACKS), "--dsn", dsn])
    assert quiet.exit_code == 0, quiet.output
    assert quiet.stderr == ""
    shown = CliRunner().invoke(
        cli, ["packs", "register", str(FIXTURE_PACKS / "opspack"), "--progress", "--dsn", dsn]
    )
    assert shown.exit_code == 0, shown.output
    assert "scanning packs: [####################] 1/1 (100%)" in shown.stderr
    assert "registering packs: [####################] 1/1 (100%)" in shown.stderr
    assert "scanning packs" not in shown.stdout  # stdout stays what scripts read
    assert shown.stdout.startswith("registered pack opspack")


def test_prune_progress_when_asked(dsn: str) -> None:
    done = CliRunner().invoke(cli, ["prune", "--older-than", "1d", "--progress", "--dsn", dsn])
    assert done.exit_code == 0, done.output
    assert done.stdout.startswith("pruned 0 executions and events")
    assert "pruning: 0" in done.stderr
