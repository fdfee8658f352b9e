"""One warm python host process, as the worker sees it: start it, write a call's request,
take its stdout, stderr and answer as they come (`step`, driven by the pool's pump in
`host_io`) until the answer is complete, and end a call that will not answer (`finish`:
the host exited, or the timeout passed or the call was canceled): kill it with its whole
process group. `python_pool` decides which host a call gets; `python_host` is the host's
own side."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

from attune_pg.actions import guardian
from attune_pg.actions.outcome import MAX_RESULT_BYTES
from attune_pg.actions.process import DRAIN_GRACE, TERM_GRACE, Capture, EndedBy

HOST_MODULE = "attune_pg.actions.python_host"
#: How much of the action's stdout and stderr (each, last bytes) a call keeps.
OUTPUT_TAIL_BYTES = 64 * 1024
#: The largest answer frame a host may write (the host itself refuses results over the
#: limit, so anything larger means the action wrote into the answer pipe).
ANSWER_LIMIT = MAX_RESULT_BYTES + 256 * 1024
_HEADER = 16  # of an answer: length, call number, wall µs, waits (see python_host)
_READ_SIZE = 65536
_IN = select.POLLIN | select.POLLHUP | select.POLLERR


@dataclass(frozen=True)
class CallResult:
    """How one call on a host ended."""

    ended_by: EndedBy  # "exit": answered, or the host died without answering
    answer: bytes | None  # the answer frame; None when the host died or garbled it
    garbled: bool  # the answer pipe carried something that is not one frame
    return_code: int | None  # the host's, when it is gone
    stdout: Capture
    stderr: Capture
    wall: float = 0.0  # seconds the host spent on the call (0 when it did not answer)
    waits: int = 0  # how often the call blocked (slept, waited for I/O) in the host


class HostGone(Exception):
    """The host exited before it could take the request: the call never started."""


class Host:
    """One `python_host` process and the pipes to it."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.calls = 0
        self.last_used = time.monotonic()
        self.dead = False
        req_r, req_w = os.pipe()
        res_r, res_w = os.pipe()
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-u", "-P", "-m", HOST_MODULE, str(req_r), str(res_w)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                pass_fds=(req_r, res_w),
                start_new_session=True,  # its own process group: a kill takes what it started
            )
        except BaseException:
            for fd in (req_r, req_w, res_r, res_w):
                os.close(fd)
            raise
        os.close(req_r)
        os.close(res_w)
        guardian.default().watch(self.proc.pid)
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self.req_fd, self.res_fd = req_w, res_r
        self.out_fd, self.err_fd = self.proc.stdout.fileno(), self.proc.stderr.fileno()
        self.poller = select.poll()
        for fd in (res_r, self.out_fd, self.err_fd):
            os.set_blocking(fd, False)
            self.poller.register(fd, _IN)
        self.pidfd = -1  # readable once the host exits (Linux >= 5.3); else we poll waitid
        if hasattr(os, "pidfd_open"):
            with contextlib.suppress(OSError):
                self.pidfd = os.pidfd_open(self.proc.pid)
                self.poller.register(self.pidfd, select.POLLIN)
        self._open = {res_r, self.out_fd, self.err_fd}
        os.set_blocking(req_w, False)  # a request larger than the pipe is written in steps
        self.exited = False
        self.stdout = self.stderr = Capture(0)
        self._answer = bytearray()
        self._request = memoryview(b"")

    @property
    def pid(self) -> int:
        return self.proc.pid

    # -- one call, in steps: the pool's pump (host_io) drives them --------------------

    def begin(self, request: bytes) -> None:
        """Start a call: write as much of its request as the pipe takes now (`writing`
        says whether some is left for `step`). Raises HostGone if the host was dead."""
        self.calls += 1
        self.stdout = Capture(OUTPUT_TAIL_BYTES, "tail")
        self.stderr = Capture(OUTPUT_TAIL_BYTES, "tail")
        self.exited = False
        self._answer = bytearray()
        self._request = memoryview(len(request).to_bytes(4, "big") + _number(self.calls) + request)
        self._write_more()

    @property
    def writing(self) -> bool:
        """Whether part of the request still waits for room in the pipe."""
        return bool(self._request)

    def fds(self) -> tuple[int, ...]:
        """The descriptors to watch for reading while a call runs (pidfd included)."""
        return tuple(self._open) + ((self.pidfd,) if self.pidfd >= 0 else ())

    def step(self, fd: int) -> CallResult | None:
        """Take what `fd` is ready for; the result once the answer is complete (or is
        garbled), else None: the call still runs, or the host is gone (`exited`: then
        `finish("exit")`). Raises HostGone if the host went before taking the request."""
        if fd == self.pidfd:
            self.exited = True
        elif fd == self.req_fd:
            self._write_more()
        elif fd == self.res_fd:
            if not self._read(fd, self._answer):
                self.exited = True  # nobody holds the answer pipe: the host is gone
        elif fd in self._open:
            self._read(fd, self.stdout if fd == self.out_fd else self.stderr)
        return self._answered()

    def check_exited(self) -> bool:
        """Without a pidfd, whether the host is gone (then `exited` is set)."""
        if self.pidfd < 0 and not self.exited:
            self.exited = self._exited()
        return self.exited

    def finish(self, ended_by: EndedBy) -> CallResult:
        """End a call that has no answer (this blocks, TERM_GRACE + DRAIN_GRACE at most):
        the host exited ("exit"), or the call timed out or was canceled (its group gets
        SIGTERM, then SIGKILL). Raises HostGone if it died before taking the request."""
        if ended_by != "exit":
            return self._stop(ended_by, self.stdout, self.stderr)
        if self.res_fd in self._open:  # what it wrote before it went is all in the pipe
            self._read(self.res_fd, self._answer)
        result = self._answered()  # it answered, then exited (a retiring host does)
        if result is not None:
            return result
        if self.writing or self._unread():  # it died before taking the request
            self.kill()
            raise HostGone
        return CallResult("exit", None, False, self._end(self.stdout, self.stderr), *self._logs())

    def _write_more(self) -> None:
        try:
            while self._request:
                self._request = self._request[os.write(self.req_fd, self._request) :]
        except BlockingIOError:
            pass
        except OSError:  # the host is gone (EPIPE): whoever holds the call kills it
            raise HostGone from None

    def _answered(self) -> CallResult | None:
        answer = self._answer
        size = _frame_size(answer)
        if size is None:
            return None
        if (
            size > ANSWER_LIMIT
            or len(answer) > _HEADER + size
            or answer[4:8] != _number(self.calls)
        ):
            # Not (only) the host's answer to this call: the pool retires the host.
            return CallResult("exit", None, True, None, *self._logs())
        if len(answer) < _HEADER + size:
            return None
        self._drain(self.stdout, self.stderr)
        self.last_used = time.monotonic()
        wall = int.from_bytes(answer[8:12], "big") / 1e6
        waits = int.from_bytes(answer[12:16], "big")
        return CallResult(
            "exit", bytes(answer[_HEADER:]), False, None, *self._logs(), wall=wall, waits=waits
        )

    def _logs(self) -> tuple[Capture, Capture]:
        return self.stdout, self.stderr

    def _read(self, fd: int, into: Capture | bytearray) -> bool:
        """Read what `fd` has; False at EOF (then it is unregistered)."""
        while True:
            try:
                data = os.read(fd, _READ_SIZE)
            except BlockingIOError:
                return True
            except OSError:
                data = b""
            if not data:
                if fd in self._open:
                    self._open.discard(fd)
                    self.poller.unregister(fd)
                return False
            if isinstance(into, bytearray):
                into += data
                if len(into) > ANSWER_LIMIT + _HEADER:
                    return True  # the caller sees the oversized frame
            else:
                into.add(data)
            if len(data) < _READ_SIZE:
                return True

    def _drain(self, stdout: Capture, stderr: Capture) -> None:
        """Take what the call printed: it is in the pipes before its answer was written."""
        for fd, _ in self.poller.poll(0):
            if fd in (self.out_fd, self.err_fd):
                self._read(fd, stdout if fd == self.out_fd else stderr)

    def _exited(self) -> bool:
        try:
            info = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return True
        return info is not None

    def _stop(self, ended_by: EndedBy, stdout: Capture, stderr: Capture) -> CallResult:
        """Timeout or cancel: SIGTERM the group, SIGKILL it after the grace period."""
        self._killpg(signal.SIGTERM)
        end = time.monotonic() + TERM_GRACE
        scratch = bytearray()
        while time.monotonic() < end:
            exited = False
            for fd, _ in self.poller.poll(10):
                if fd == self.pidfd:
                    exited = True
                elif fd == self.res_fd:
                    self._read(fd, scratch)  # a late answer does not count
                    scratch.clear()
                else:
                    self._read(fd, stdout if fd == self.out_fd else stderr)
            if exited or (self.pidfd < 0 and self._exited()):
                break
        return CallResult(ended_by, None, False, self._end(stdout, stderr), stdout, stderr)

    def _end(self, stdout: Capture, stderr: Capture) -> int | None:
        """The host is gone or going: kill its group, keep its last output, reap it."""
        self._killpg(signal.SIGKILL)
        for fd in (self.pidfd, self.res_fd):  # readable for good now: no busy loop
            if fd >= 0:
                with contextlib.suppress(KeyError, ValueError):
                    self.poller.unregister(fd)
        self._open.discard(self.res_fd)
        end = time.monotonic() + DRAIN_GRACE
        while self._open and time.monotonic() < end:
            for fd, _ in self.poller.poll(10):
                if fd in (self.out_fd, self.err_fd):
                    self._read(fd, stdout if fd == self.out_fd else stderr)
        return self._reap()

    # -- the end ------------------------------------------------------------------------

    def _unread(self) -> bool:
        """Whether request bytes are still in the pipe (the host never read all of it)."""
        try:
            return _pending(self.req_fd) > 0
        except OSError:
            return False

    def kill(self) -> int | None:
        """Kill the host and everything in its group, and reap it."""
        if self.dead:
            return self.proc.returncode
        self._killpg(signal.SIGKILL)
        return self._reap()

    def _reap(self) -> int | None:
        self.dead = True
        guardian.default().release(self.pid)  # before the reap frees the group id
        for fd in (self.req_fd, self.res_fd, self.pidfd):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        self._open.clear()
        try:
            return self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            return None

    def _killpg(self, sig: signal.Signals) -> None:
        if not self.dead:  # until reaped, the group id cannot have been reused
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, sig)


def _number(call: int) -> bytes:
    return (call & 0xFFFFFFFF).to_bytes(4, "big")


def _frame_size(buf: bytearray) -> int | None:
    if len(buf) < _HEADER:
        return None
    return int.from_bytes(buf[:4], "big")


def _pending(fd: int) -> int:
    """Bytes waiting in the pipe `fd` belongs to (Linux answers FIONREAD on either end)."""
    import array
    import fcntl
    import termios

    buf = array.array("i", [0])
    fcntl.ioctl(fd, termios.FIONREAD, buf, True)
    return buf[0]
