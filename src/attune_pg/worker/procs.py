"""Start and stop `attune-worker` processes (the demo, the benchmark, the chaos soak and
tests use it)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Sequence


def start_worker(
    dsn: str,
    *,
    concurrency: int = 10,
    lease_seconds: float = 30.0,
    log_level: str = "warning",
    extra: Sequence[str] = (),
    log_file: str | None = None,
) -> subprocess.Popen[bytes]:
    env = dict(os.environ, ATTUNE_DSN=dsn)
    out = open(log_file, "ab") if log_file else None  # noqa: SIM115 - closed below
    try:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "attune_pg.cli.worker_entry",
                "--concurrency",
                str(concurrency),
                "--lease-seconds",
                str(lease_seconds),
                "--log-level",
                log_level,
                *extra,
            ],
            env=env,
            stdout=subprocess.DEVNULL if out is None else out,
            stderr=None if out is None else subprocess.STDOUT,
            start_new_session=True,
        )
    finally:
        if out is not None:
            out.close()  # the child holds its own descriptor of the log


def stop_worker(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> int:
    """SIGTERM, wait, then SIGKILL: a worker never outlives its owner."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode
