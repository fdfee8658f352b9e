"""Run one action process: spawn, feed, capture, time out, cancel, kill, reap.

The shell runner's engine (python actions run in warm hosts, `python_pool`, which shares
this module's constants and `Capture`):

- The process starts in a new session (`start_new_session=True`), so it leads its own
  process group and everything it spawns (short of another `setsid`) is in that group.
- stdout and stderr are drained concurrently with feeding stdin (one `selectors` loop in
  the calling thread, no helper threads), each kept within a byte bound.
- On timeout or cancel the whole group gets SIGTERM, then SIGKILL after `TERM_GRACE`
  seconds. When the leader exits by itself, whatever it left behind in its group is killed
  too: an action's processes never outlive it. Exit is detected without reaping (pidfd or
  `waitid(WNOWAIT)`), so the group id cannot be recycled before that sweep.
- The cancel event is checked at least every `POLL_INTERVAL` seconds.
- The group is registered with the worker's `guardian`, which kills it should the worker
  die (even by SIGKILL) while it runs.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from attune_pg.actions import guardian
from attune_pg.actions.outcome import ActionContext

EndedBy = Literal["exit", "timeout", "cancel"]

#: Seconds between SIGTERM and SIGKILL of a timed-out or canceled process group.
TERM_GRACE = 0.5
#: How often (seconds) the cancel event is checked while the process runs.
POLL_INTERVAL = 0.05
#: After the leader exits, how long to keep reading pipes that descendants still hold open.
DRAIN_GRACE = 0.2
_READ_SIZE = 65536


class Capture:
    """Bytes from one stream, kept within `limit`: the first bytes ("head") or the last ("tail")."""

    def __init__(self, limit: int, keep: Literal["head", "tail"] = "head") -> None:
        self.limit = limit
        self.keep = keep
        self.total = 0
        self._buf = bytearray()

    def add(self, data: bytes) -> None:
        self.total += len(data)
        if self.keep == "head":
            room = self.limit - len(self._buf)
            if room > 0:
                self._buf += data[:room]
        else:
            self._buf += data
            if len(self._buf) > 2 * self.limit:
                del self._buf[: len(self._buf) - self.limit]

    @property
    def truncated(self) -> bool:
        return self.total > self.limit

    @property
    def data(self) -> bytes:
        if self.keep == "tail" and len(self._buf) > self.limit:
            return bytes(self._buf[-self.limit :])
        return bytes(self._buf)


@dataclass(frozen=True)
class ProcessRun:
    """How a process run ended and what it wrote."""

    ended_by: EndedBy
    return_code: int | None  # negative: killed by that signal; None: could not be reaped
    stdout: Capture
    stderr: Capture


def signal_name(return_code: int) -> str:
    """ "SIGSEGV" for -11; "" for a normal exit code."""
    if return_code >= 0:
        return ""
    try:
        return signal.Signals(-return_code).name
    except ValueError:
        return f"signal {-return_code}"


def run_process(
    argv: Sequence[str],
    *,
    cancel: threading.Event,
    timeout: float | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    stdin: bytes | None = None,
    output_limit: int = 65536,
    keep: Literal["head", "tail"] = "head",
) -> ProcessRun:
    """Run `argv` (no shell) to its end, its timeout or `cancel`, whichever comes first.

    Raises OSError if the process cannot be started (missing executable, permission, bad
    cwd).
    """
    stdout = Capture(output_limit, keep)
    stderr = Capture(output_limit, keep)
    proc = subprocess.Popen(
        list(argv),
        stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=dict(env) if env is not None else None,
        cwd=cwd,
        start_new_session=True,
    )
    guardian.default().watch(proc.pid)
    try:
        session = _Session(proc, stdout, stderr, stdin)
    except BaseException:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        guardian.default().release(proc.pid)
        proc.wait()
        raise
    with session:
        ended_by = session.wait(cancel, timeout)
        return_code = session.finish(ended_by)
    return ProcessRun(ended_by, return_code, stdout, stderr)


class _Session:
    """The selector loop around one running process."""

    def __init__(
        self,
        proc: subprocess.Popen[bytes],
        stdout: Capture,
        stderr: Capture,
        stdin: bytes | None,
    ) -> None:
        self.proc = proc
        self.sel = selectors.DefaultSelector()
        self.readers: dict[int, Capture] = {}
        self.pending_input = memoryview(stdin or b"")
        self.stdin_fd = -1
        self.exited = False
        assert proc.stdout is not None and proc.stderr is not None
        for fd, capture in ((proc.stdout.fileno(), stdout), (proc.stderr.fileno(), stderr)):
            self.readers[fd] = capture
            self.sel.register(fd, selectors.EVENT_READ)
        if proc.stdin is not None:
            self.stdin_fd = proc.stdin.fileno()
            os.set_blocking(self.stdin_fd, False)
            self.sel.register(self.stdin_fd, selectors.EVENT_WRITE)
        self.pidfd = -1  # readable once the leader exits (Linux >= 5.3); else we poll
        if hasattr(os, "pidfd_open"):
            with contextlib.suppress(OSError):
                pidfd = os.pidfd_open(proc.pid)
                try:
                    self.sel.register(pidfd, selectors.EVENT_READ)
                except (OSError, ValueError):
                    os.close(pidfd)
                else:
                    self.pidfd = pidfd

    def __enter__(self) -> _Session:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.returncode is None:  # an exception escaped: leave nothing behind
            self._killpg(signal.SIGKILL)
            guardian.default().release(self.proc.pid)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=5)
        self.sel.close()
        self.readers.clear()
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        if self.pidfd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.pidfd)

    # -- the loop ---------------------------------------------------------------------

    def wait(self, cancel: threading.Event, timeout: float | None) -> EndedBy:
        """Pump the pipes until the process is done, times out or is canceled."""
        deadline = None if timeout is None else time.monotonic() + timeout
        exit_seen_at: float | None = None
        while True:
            if cancel.is_set():
                return "cancel"
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return "timeout"
            if not self.exited:
                self.exited = self._leader_exited()
            if self.exited:
                if not self.readers:
                    return "exit"
                if exit_seen_at is None:
                    exit_seen_at = now
                elif now - exit_seen_at >= DRAIN_GRACE:
                    return "exit"  # descendants hold the pipes; the sweep will end them
            wait = POLL_INTERVAL
            if self.pidfd < 0 and not self.exited and not self.readers:
                wait = 0.005  # nothing to wake us on exit: poll more often
            if deadline is not None:
                wait = min(wait, deadline - now)
            if exit_seen_at is not None:
                wait = min(wait, max(0.0, exit_seen_at + DRAIN_GRACE - now))
            self._pump(max(0.0, wait))

    def _pump(self, wait: float) -> None:
        for key, _ in self.sel.select(wait):
            fd = int(key.fd)
            if fd == self.pidfd:
                self.exited = True
                self.sel.unregister(fd)
            elif fd == self.stdin_fd:
                self._feed()
            else:
                self._read(fd)

    def _read(self, fd: int) -> None:
        try:
            data = os.read(fd, _READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            self.readers[fd].add(data)
        else:
            self.sel.unregister(fd)
            del self.readers[fd]

    def _feed(self) -> None:
        try:
            written = os.write(self.stdin_fd, self.pending_input[:_READ_SIZE])
        except BlockingIOError:
            return
        except OSError:  # BrokenPipeError: the process does not want the rest
            written = len(self.pending_input)
        self.pending_input = self.pending_input[written:]
        if not self.pending_input:
            self.sel.unregister(self.stdin_fd)
            assert self.proc.stdin is not None
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
            self.stdin_fd = -1

    def _leader_exited(self) -> bool:
        """Whether the leader has exited, without reaping it (so its pgid stays reserved)."""
        if self.pidfd >= 0:
            return False  # the selector reports it
        try:
            info = os.waitid(os.P_PID, self.proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return True
        return info is not None

    # -- the end ----------------------------------------------------------------------

    def finish(self, ended_by: EndedBy) -> int | None:
        """Stop the process group (gently on timeout/cancel), drain the pipes, reap."""
        if ended_by != "exit" and not self.exited:
            self._killpg(signal.SIGTERM)
            end = time.monotonic() + TERM_GRACE
            while not self.exited and time.monotonic() < end:
                self._pump(min(0.01, max(0.0, end - time.monotonic())))
                if not self.exited:
                    self.exited = self._leader_exited()
        # The leader is gone or about to be killed; sweep the rest of its group.
        self._killpg(signal.SIGKILL)
        self._close_stdin()
        end = time.monotonic() + DRAIN_GRACE
        while self.readers and time.monotonic() < end:
            self._pump(min(0.01, max(0.0, end - time.monotonic())))
        guardian.default().release(self.proc.pid)  # before the reap frees the group id
        try:
            return self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            return None

    def _close_stdin(self) -> None:
        if self.stdin_fd >= 0:
            with contextlib.suppress(KeyError, ValueError):
                self.sel.unregister(self.stdin_fd)
            self.stdin_fd = -1
            if self.proc.stdin is not None:
                with contextlib.suppress(OSError):
                    self.proc.stdin.close()

    def _killpg(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)


def action_env(context: ActionContext, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of an action process: the worker's, plus the attempt's identity.

    `ATTUNE_IDEMPOTENCY_KEY` is the key side effects should be deduplicated on
    (`<workflow_execution_id>:<task_execution_id>`, DESIGN §3.2): it stays the same when
    the same row runs again after a worker crash or a hand-back; each retry attempt is a
    row of its own, and so gets a key of its own. `ATTUNE_ATTEMPT` tells the attempts apart.
    `ATTUNE_TRACE_ID` is the root execution's trace id (32 hex digits, W3C format).
    """
    env = dict(os.environ)
    env.update(attempt_env(context))
    if extra:
        env.update(extra)
    return env


def attempt_env(context: ActionContext) -> dict[str, str]:
    """The variables that identify the attempt (added to the worker's environment)."""
    return {
        "ATTUNE_IDEMPOTENCY_KEY": context.idempotency_key,
        "ATTUNE_EXECUTION_ID": str(context.execution_id),
        "ATTUNE_TASK_EXECUTION_ID": str(context.task_execution_id),
        "ATTUNE_TASK_NAME": context.task_name,
        "ATTUNE_ATTEMPT": str(context.attempt),
        # One per root execution, shared by its children: correlate logs and traces.
        "ATTUNE_TRACE_ID": context.trace_id or "",
    }


def pack_file(pack_path: str | None, relative: str, ref: str) -> str:
    """The absolute path of `relative` inside the pack's `actions/` directory.

    Raises ValueError (naming the action `ref`) if the pack is unknown or the path is
    absolute or escapes `actions/`. Answers are remembered (resolving symlinks costs a
    system call per path component, on every call of an action otherwise).
    """
    key = (pack_path, relative)
    path = _PACK_FILES.get(key)
    if path is None:
        path = _pack_file(pack_path, relative, ref)
        if len(_PACK_FILES) >= 4096:
            _PACK_FILES.clear()
        _PACK_FILES[key] = path
    return path


_PACK_FILES: dict[tuple[str | None, str], str] = {}


def _pack_file(pack_path: str | None, relative: str, ref: str) -> str:
    if not pack_path:
        raise ValueError(f"action {ref} has no pack directory to find {relative!r} in")
    if os.path.isabs(relative):
        raise ValueError(f"action {ref}: {relative!r} must be relative to the pack's actions/")
    base = os.path.realpath(os.path.join(pack_path, "actions"))
    path = os.path.realpath(os.path.join(base, relative))
    if os.path.commonpath([base, path]) != base:
        raise ValueError(f"action {ref}: {relative!r} is outside the pack's actions/ directory")
    return path
