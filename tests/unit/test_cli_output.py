"""Progress lines (stderr, terminals only unless asked) and the JSON log format."""

from __future__ import annotations

import io
import json
import logging

import pytest

from attune_pg.cli.progress import Progress
from attune_pg.logfmt import JsonFormatter, configure


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_is_silent_off_a_terminal_and_shown_on_one() -> None:
    pipe = io.StringIO()
    quiet = Progress("pruning", 10, stream=pipe)
    quiet.update(5, force=True)
    quiet.done(10)
    assert pipe.getvalue() == ""

    tty = Tty()
    shown = Progress("pruning", 10, stream=tty)
    shown.update(5, force=True)
    shown.done(10)
    lines = tty.getvalue().split("\r")
    assert lines[1].startswith("pruning: [##########          ] 5/10 (50%)")
    assert lines[2].rstrip() == "pruning: [####################] 10/10 (100%)"
    assert tty.getvalue().endswith("\n")

    forced = io.StringIO()
    asked = Progress("packs", enabled=True, stream=forced)
    asked.update(3, total=4, force=True)
    asked.done()
    assert "packs: [###############     ] 3/4 (75%)" in forced.getvalue()


def test_json_log_lines_carry_the_state_fields() -> None:
    stream = io.StringIO()
    root = logging.getLogger()
    saved = root.handlers[:], root.level  # pytest's own capture handlers
    configure("info", "json", stream)
    try:
        logging.getLogger("attune_pg.state").info(
            "execution %s: %s",
            7,
            "running",
            extra={"attune": {"execution": 7, "status": "running"}},
        )
        try:
            raise ValueError("boom")
        except ValueError:
            logging.getLogger("attune_pg.worker").exception("unexpected")
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["message"] == "execution 7: running"
    assert (first["execution"], first["status"], first["level"]) == (7, "running", "info")
    assert first["logger"] == "attune_pg.state" and first["ts"].endswith("+00:00")
    assert second["level"] == "error" and "ValueError: boom" in second["exception"]
    assert isinstance(JsonFormatter(), logging.Formatter)
    with pytest.raises(ValueError, match="log format must be one of text, json"):
        configure("info", "xml")
