"""`attune-pg watch` in a pseudo-terminal, as a person sees it."""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import subprocess
import sys
import time

import psycopg
import pytest

from tests.helpers import start, wait_done

pytestmark = pytest.mark.e2e

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class Terminal:
    """A child process on a pseudo-terminal; `text` is everything it wrote so far."""

    def __init__(self, *args: str) -> None:
        master, slave = pty.openpty()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "attune_pg.cli.entry", *args],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            start_new_session=True,
            env={**os.environ, "COLUMNS": "120", "LINES": "40"},
        )
        os.close(slave)
        self.master = master
        self.raw = ""

    def read_until(self, pattern: str, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while not re.search(pattern, ANSI.sub("", self.raw)):
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"never saw {pattern!r} in:\n{ANSI.sub('', self.raw)[-3000:]}")
            ready, _, _ = select.select([self.master], [], [], min(left, 0.2))
            if ready:
                try:
                    chunk = os.read(self.master, 65536)
                except OSError:  # the child closed the terminal
                    chunk = b""
                if not chunk and self.proc.poll() is not None:
                    raise AssertionError(f"exited before {pattern!r}:\n{ANSI.sub('', self.raw)}")
                self.raw += chunk.decode(errors="replace")
        return ANSI.sub("", self.raw)

    def exit_code(self, timeout: float = 30.0) -> int:
        """Wait for the child to exit, reading what it writes meanwhile (a child blocked on
        a full terminal could never finish its last write)."""
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            self.drain()
        return self.proc.wait(timeout=max(deadline - time.monotonic(), 0.1))

    def drain(self) -> None:
        while True:
            ready, _, _ = select.select([self.master], [], [], 0.2)
            if not ready:
                return
            try:
                chunk = os.read(self.master, 65536)
            except OSError:
                return
            if not chunk:
                return
            self.raw += chunk.decode(errors="replace")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        os.close(self.master)


def test_watch_one_execution_shows_item_progress_and_exits_with_its_status(
    conn: psycopg.Connection, dsn: str, register, worker_thread
) -> None:  # type: ignore[no-untyped-def]
    register("opspack")
    execution_id = start(conn, "opspack.slow_items", {"n": 6, "seconds": 0.4})
    term = Terminal("watch", str(execution_id), "--dsn", dsn)
    try:
        # No worker yet: the execution waits to start.
        term.read_until(rf"execution {execution_id}\s+opspack\.slow_items\s+requested")
        worker_thread(concurrency=4)
        term.read_until(r"each\s+running\s+\[[#.]{20}\] [0-5]/6")  # a bar, part way
        screen = term.read_until(rf"execution {execution_id} succeeded in")
        assert re.search(r"each\s+succeeded\s+\[#{20}\] 6/6", screen)
        assert term.exit_code() == 0
        term.drain()
        assert "\x1b[H\x1b[J" in term.raw  # redrawn in place, not scrolled
        assert term.raw.rstrip().endswith("\x1b[?25h")  # the cursor is given back
    finally:
        term.close()
    row = wait_done(conn, execution_id)
    assert row["status"] == "succeeded"


def test_watch_all_lists_live_executions_until_interrupted(
    conn: psycopg.Connection, dsn: str, register, worker_thread
) -> None:  # type: ignore[no-untyped-def]
    register("opspack")
    term = Terminal("watch", "--dsn", dsn, "--interval", "60")
    try:
        term.read_until(r"0 live executions")
        # LISTEN-driven: the new execution appears long before the 60 s poll (the bound
        # is the behaviour).
        execution_id = start(conn, "opspack.slow_items", {"n": 4, "seconds": 0.5})
        began = time.monotonic()
        term.read_until(rf"{execution_id}\s+opspack\.slow_items\s+requested")
        assert time.monotonic() - began < 30
        worker_thread(concurrency=2)
        term.read_until(rf"{execution_id}\s+opspack\.slow_items\s+running")
        wait_done(conn, execution_id, timeout=60)
        term.read_until(r"\(no live executions\)")
        os.kill(term.proc.pid, signal.SIGINT)
        assert term.exit_code() == 0
    finally:
        term.close()


def test_watch_into_a_pipe_prints_plain_frames_and_unknown_ids_fail(
    conn: psycopg.Connection, dsn: str, register, worker_thread
) -> None:  # type: ignore[no-untyped-def]
    register("opspack")
    worker_thread()
    execution_id = start(conn, "opspack.mixed", {"code": 1})
    done = subprocess.run(
        [sys.executable, "-m", "attune_pg.cli.entry", "watch", str(execution_id), "--dsn", dsn],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1  # the execution failed
    assert "\x1b[" not in done.stdout
    assert f"execution {execution_id} failed in" in done.stdout
    assert re.search(r"last\s+failed", done.stdout)
    missing = subprocess.run(
        [sys.executable, "-m", "attune_pg.cli.entry", "watch", "999999", "--dsn", dsn],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing.returncode == 4
    assert missing.stderr.strip() == "error: execution 999999 does not exist"
