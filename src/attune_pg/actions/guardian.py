"""Action processes die with their worker, even a SIGKILLed one.

Every process group an action runs in (a python host, a shell command; each leads its own
session) is registered with one *guardian* per worker process: a small child,
`python -m attune_pg.actions.guardian`, that reads `+<pgid>` / `-<pgid>` lines on its stdin
from a pipe whose write end only the worker holds (close-on-exec, so no action inherits it).
When that pipe reaches EOF, the worker has exited, however it exited: the kernel closes a
dead process's descriptors, SIGKILL included. The guardian then SIGKILLs every group still
registered, and exits. A group is unregistered before its leader is reaped, so the guardian
never kills a process group id that the system could have handed to someone else.

Why not `PR_SET_PDEATHSIG` alone: it kills only the direct child, not what the action
started, and it fires when the *thread* that spawned the child exits, not the process
(the worker spawns from a thread pool, and tests from short-lived threads). The guardian
covers the whole group and does not care which thread spawned it. It sets
`PR_SET_PDEATHSIG` on itself only as a second line, should its pipe be inherited by
accident.

If the guardian cannot be started, actions still run (logged once): only the guarantee
for a SIGKILLed worker is lost.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import sys
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import subprocess

_PR_SET_PDEATHSIG = 1


_CREATE = threading.Lock()


class Guardian:
    """The worker's side: a registry of live action process groups, mirrored to the child."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._groups: set[int] = set()
        self._fd = -1
        self._pid = -1
        self._failed = False
        self._proc: subprocess.Popen[bytes] | None = None

    def watch(self, pgid: int) -> None:
        """Kill group `pgid` if this process dies before `release(pgid)`."""
        with self._lock:
            self._groups.add(pgid)
            self._send(f"+{pgid}\n")

    def release(self, pgid: int) -> None:
        """Stop watching `pgid`: call it before reaping the group's leader."""
        with self._lock:
            if pgid in self._groups:
                self._groups.discard(pgid)
                self._send(f"-{pgid}\n")

    def close(self) -> None:
        """Stop the guardian (it kills whatever is still registered)."""
        with self._lock:
            self._close()

    @property
    def pid(self) -> int:
        return self._pid

    def _send(self, line: str) -> None:
        for _ in range(2):  # a guardian that died is restarted once, with the whole registry
            if self._fd < 0 and not self._start():
                return
            try:
                os.write(self._fd, line.encode())
                return
            except OSError:
                self._close()
                line = "".join(f"+{g}\n" for g in self._groups)
                if not line:
                    return

    def _start(self) -> bool:
        if self._failed:
            return False
        import subprocess

        read, write = os.pipe()
        try:
            proc = subprocess.Popen(
                [sys.executable, "-P", "-m", __name__, str(os.getpid())],
                stdin=read,
                stdout=subprocess.DEVNULL,
                start_new_session=True,  # signals to the worker's group do not reach it
            )
        except OSError as exc:
            os.close(write)
            self._failed = True
            import logging

            logging.getLogger("attune_pg.worker").warning(
                "cannot start the action guardian (%s): action processes will outlive a "
                "SIGKILLed worker",
                exc,
            )
            return False
        finally:
            os.close(read)
        self._fd, self._pid = write, proc.pid
        self._proc = proc
        return True

    def _close(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1
            if self._proc is not None:
                with contextlib.suppress(Exception):
                    self._proc.wait(timeout=5)
                self._proc = None
            self._pid = -1


_GUARDIAN: Guardian | None = None


def default() -> Guardian:
    """The guardian of this process (created on first use; its child starts on first watch)."""
    global _GUARDIAN
    if _GUARDIAN is None:
        with _CREATE:
            if _GUARDIAN is None:
                _GUARDIAN = Guardian()
                # At a clean exit, end it as the process's death would a moment later,
                # but reaped: no child left running behind a collected Popen.
                atexit.register(_GUARDIAN.close)
    return _GUARDIAN


def main() -> None:
    """The guardian process: mirror the registry until EOF, then kill what is left."""
    parent = int(sys.argv[-1])
    groups: set[int] = set()

    def kill_all() -> None:
        for pgid in groups:
            with contextlib.suppress(OSError):
                os.killpg(pgid, signal.SIGKILL)

    def on_term(signum: int, frame: object) -> None:
        if os.getppid() != parent:  # PDEATHSIG: the worker is gone
            kill_all()
            os._exit(0)
        # else someone else's SIGTERM: only the worker's death ends us

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the worker stops its actions on ^C itself
    signal.signal(signal.SIGTERM, on_term)
    _die_with_parent()
    for raw in sys.stdin.buffer:
        line = raw.strip()
        if line[:1] == b"+":
            groups.add(int(line[1:]))
        elif line[:1] == b"-":
            groups.discard(int(line[1:]))
    kill_all()  # (a PDEATHSIG arriving now runs it once more: harmless)


def _die_with_parent() -> None:
    # A second line of defence: should the pipe's write end leak into another process,
    # EOF would never come, but the parent's death still sends us SIGTERM, which ends the
    # read and leads to the kills.
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(Exception):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)


if __name__ == "__main__":
    main()
