"""Warm python hosts: the worker's side of `python_host`, one call per host at a time.

Each worker process keeps a pool of host processes, keyed by the directory of the action's
file (so two packs' helper modules never meet in one interpreter). A call takes the idle
host of its key used last, or starts one. There are never more hosts than the most calls
that ever ran at once (so at most the worker's slots) or `MIN_HOSTS`, whichever is more:
the longest-idle host of another key makes room for a new one. Quick calls (a key whose
calls average under `FAST_CALL`) run on at most `LANES` hosts at once: another one waits
up to `LANE_WAIT` for a lane, so a burst of them keeps a few hosts hot instead of waking
dozens of cold ones (measured: a third less host CPU per call at 50 slots).

The call sends the request, then pumps the host's stdout, stderr and answer until the
answer is complete, the host exits, the timeout passes or `cancel` is set, and gives the
host back. A host is killed with its whole process group, never reused, after a timeout
or cancel, a crash, an answer marked `retire` (the call left something the host cannot
put back), a garbled answer, `max_calls` calls, or `idle_seconds` without a call. Hosts
start lazily: a worker that never runs a python action has none.

Settings (environment of the worker): `ATTUNE_PYTHON_MAX_CALLS` (default 1000; 1 means a
fresh interpreter for every call) and `ATTUNE_PYTHON_IDLE_SECONDS` (default 60).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import select
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

from attune_pg.actions import guardian
from attune_pg.actions.outcome import MAX_RESULT_BYTES
from attune_pg.actions.process import DRAIN_GRACE, POLL_INTERVAL, TERM_GRACE, Capture, EndedBy

HOST_MODULE = "attune_pg.actions.python_host"
MAX_CALLS_ENV = "ATTUNE_PYTHON_MAX_CALLS"
IDLE_ENV = "ATTUNE_PYTHON_IDLE_SECONDS"
DEFAULT_MAX_CALLS = 1000
DEFAULT_IDLE_SECONDS = 60.0
#: Hosts a pool may keep even when fewer calls ever ran at once (so that sequential calls
#: of actions in a few directories do not start a host each time).
MIN_HOSTS = 4
#: Quick calls (a directory's average under FAST_CALL seconds) run on at most LANES hosts
#: of that directory at once; one more waits up to LANE_WAIT seconds for a lane first.
FAST_CALL = 0.005
LANES = max(2, 2 * (os.cpu_count() or 1))
LANE_WAIT = 0.010
#: How much of the action's stdout and stderr (each, last bytes) a call keeps.
OUTPUT_TAIL_BYTES = 64 * 1024
#: The largest answer frame a host may write (the host itself refuses results over the
#: limit, so anything larger means the action wrote into the answer pipe).
ANSWER_LIMIT = MAX_RESULT_BYTES + 256 * 1024
_HEADER = 8  # length, call number (see python_host)
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

    @property
    def pid(self) -> int:
        return self.proc.pid

    # -- one call -----------------------------------------------------------------------

    def call(self, request: bytes, cancel: threading.Event, timeout: float | None) -> CallResult:
        """Send `request`, wait for the answer. Raises HostGone if the host was dead."""
        self.calls += 1
        stdout = Capture(OUTPUT_TAIL_BYTES, "tail")
        stderr = Capture(OUTPUT_TAIL_BYTES, "tail")
        try:
            header = len(request).to_bytes(4, "big") + _number(self.calls)
            _write_all(self.req_fd, header + request)
        except BrokenPipeError:
            self.kill()
            raise HostGone from None
        deadline = None if timeout is None else time.monotonic() + timeout
        answer = bytearray()
        exited = False
        while True:
            if cancel.is_set():
                return self._stop("cancel", stdout, stderr)
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return self._stop("timeout", stdout, stderr)
            wait = POLL_INTERVAL if deadline is None else min(POLL_INTERVAL, deadline - now)
            for fd, _ in self.poller.poll(max(0.0, wait) * 1000):
                if fd == self.pidfd:
                    exited = True
                elif fd == self.res_fd:
                    if not self._read(fd, answer):
                        exited = True  # nobody holds the answer pipe: the host is gone
                else:
                    self._read(fd, stdout if fd == self.out_fd else stderr)
            if self.pidfd < 0 and not exited:
                exited = self._exited()
            size = _frame_size(answer)
            if size is not None and (
                size > ANSWER_LIMIT
                or len(answer) > _HEADER + size
                or answer[4:_HEADER] != _number(self.calls)
            ):
                self.kill()  # not (only) the host's answer to this call
                return CallResult("exit", None, True, None, stdout, stderr)
            if size is not None and len(answer) == _HEADER + size:
                self._drain(stdout, stderr)
                self.last_used = time.monotonic()
                return CallResult("exit", bytes(answer[_HEADER:]), False, None, stdout, stderr)
            if exited:
                if self._unread():  # it died before taking the request (killed while idle)
                    self.kill()
                    raise HostGone
                return CallResult("exit", None, False, self._end(stdout, stderr), stdout, stderr)

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


class HostPool:
    """Idle hosts by key; see the module docstring."""

    def __init__(self, max_calls: int, idle_seconds: float) -> None:
        self.max_calls = max_calls
        self.idle_seconds = idle_seconds
        self._lock = threading.Lock()
        self._lane_freed: dict[str, threading.Condition] = {}  # by key, on self._lock
        self._idle: dict[str, list[Host]] = {}
        self._busy: set[Host] = set()
        self._busy_by_key: dict[str, int] = {}
        self._call_seconds: dict[str, float] = {}  # moving average of a call, by key
        self._peak = 0  # the most calls that ever ran at once
        self._trimmer: threading.Thread | None = None
        self._trim_stop = threading.Event()
        self.started = 0  # hosts started so far (for tests and the benchmark)

    def call(
        self, key: str, request: bytes, cancel: threading.Event, timeout: float | None
    ) -> CallResult:
        """Run one request on a host for `key`. Raises OSError if no host can be started."""
        for _ in range(3):  # a dead idle host or a stale one: the call never ran; go again
            host = self._take(key)
            started = time.monotonic()
            try:
                result = host.call(request, cancel, timeout)
            except HostGone:
                self._give_back(host, retire=True)
                continue
            except BaseException:
                host.kill()
                self._give_back(host, retire=True)
                raise
            if result.answer == b'{"stale": true}':
                # Its siblings imported the same files: none of them may serve this key.
                self._give_back(host, retire=True)
                self._drop_idle(key)
                continue
            retire = result.answer is None or result.answer.startswith(b'{"retire"')
            took = time.monotonic() - started if host.calls > 1 else None  # not its start-up
            self._give_back(host, retire=retire, took=took)
            return result
        raise OSError("python hosts keep exiting before they take a request")

    def hosts(self) -> int:
        """How many hosts are alive (idle or busy)."""
        with self._lock:
            return self._count()

    def shutdown(self) -> None:
        """Kill every idle host now; busy ones go back to the pool when their call ends."""
        with self._lock:
            idle = [h for hosts in self._idle.values() for h in hosts]
            self._idle.clear()
            trimmer, self._trimmer = self._trimmer, None
            self._trim_stop.set()
            self._trim_stop = threading.Event()  # for the next trimmer
        for host in idle:
            host.kill()
        if trimmer is not None and trimmer is not threading.current_thread():
            trimmer.join(timeout=5)

    def _drop_idle(self, key: str) -> None:
        with self._lock:
            idle = self._idle.pop(key, [])
        for host in idle:
            host.kill()

    def _take(self, key: str) -> Host:
        with self._lock:
            deadline: float | None = None
            while True:
                if self._lanes_full(key):
                    now = time.monotonic()
                    deadline = now + LANE_WAIT if deadline is None else deadline
                    if now < deadline:
                        self._lane_freed_for(key).wait(deadline - now)
                        continue
                stack = self._idle.get(key)
                while stack:
                    host = stack.pop()
                    if not host.dead:  # if it died while idle, its call finds out, goes again
                        self._mark_busy(host)
                        return host
                break
            # Never more hosts than calls ever ran at once (at most the worker's slots), or
            # MIN_HOSTS: a new host for this key replaces the longest-idle one of another.
            self._peak = max(self._peak, len(self._busy) + 1)
            cap = max(self._peak, MIN_HOSTS)
            evict = self._oldest_idle() if self._count() + 1 > cap else None
            self._busy_by_key[key] = self._busy_by_key.get(key, 0) + 1  # the one we start
        if evict is not None:
            evict.kill()
        try:
            host = Host(key)  # outside the lock: starting a process takes a while
        except BaseException:
            with self._lock:
                self._busy_by_key[key] -= 1
                self._lane_freed_for(key).notify()
            raise
        with self._lock:
            self.started += 1
            self._busy.add(host)
        return host

    def _lanes_full(self, key: str) -> bool:
        """Whether `key`'s calls are quick (under FAST_CALL on average) and LANES of them
        already run: then a call waits (LANE_WAIT at most) for one of those warm hosts
        rather than wake a cold one or start another. On a few cores, more quick calls at
        once only add processes (and cache misses) to schedule; slow calls are never held."""
        return (
            self._busy_by_key.get(key, 0) >= LANES
            and self._call_seconds.get(key, FAST_CALL) < FAST_CALL
        )

    def _lane_freed_for(self, key: str) -> threading.Condition:
        cond = self._lane_freed.get(key)
        if cond is None:
            cond = self._lane_freed[key] = threading.Condition(self._lock)
        return cond

    def _mark_busy(self, host: Host) -> None:
        self._busy.add(host)
        self._busy_by_key[host.key] = self._busy_by_key.get(host.key, 0) + 1

    def _count(self) -> int:
        return len(self._busy) + sum(len(v) for v in self._idle.values())

    def _oldest_idle(self) -> Host | None:
        """Remove and return the idle host unused the longest (lock held)."""
        candidates = [(hosts[0].last_used, key) for key, hosts in self._idle.items() if hosts]
        if not candidates:
            return None
        _, key = min(candidates)
        host = self._idle[key].pop(0)
        if not self._idle[key]:
            del self._idle[key]
        return host

    def _give_back(self, host: Host, *, retire: bool, took: float | None = None) -> None:
        retire = retire or host.dead or host.calls >= self.max_calls
        if retire:
            host.kill()
        with self._lock:
            self._busy.discard(host)
            self._busy_by_key[host.key] -= 1
            if took is not None:
                last = self._call_seconds.get(host.key, took)
                self._call_seconds[host.key] = 0.8 * last + 0.2 * took
            if not retire:
                self._idle.setdefault(host.key, []).append(host)
                if self._trimmer is None:
                    self._trimmer = threading.Thread(
                        target=self._trim_loop,
                        args=(self._trim_stop,),
                        name="attune-python-hosts",
                        daemon=True,
                    )
                    self._trimmer.start()
            self._lane_freed_for(host.key).notify()

    def _trim_loop(self, stop: threading.Event) -> None:
        interval = min(max(self.idle_seconds / 4, 0.05), 15.0)
        while not stop.wait(interval):
            cutoff = time.monotonic() - self.idle_seconds
            with self._lock:
                old = [h for hosts in self._idle.values() for h in hosts if h.last_used < cutoff]
                for key in list(self._idle):
                    self._idle[key] = [h for h in self._idle[key] if h.last_used >= cutoff]
                    if not self._idle[key]:
                        del self._idle[key]
                if not self._idle and not old:
                    if self._trimmer is threading.current_thread():
                        self._trimmer = None  # nothing left to watch; a give-back restarts one
                    return
            for host in old:
                host.kill()


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


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def settings_from_env() -> tuple[int, float]:
    """(max_calls, idle_seconds) from the environment. Raises ValueError naming the variable."""
    raw = os.environ.get(MAX_CALLS_ENV, "").strip()
    try:
        max_calls = int(raw) if raw else DEFAULT_MAX_CALLS
    except ValueError:
        max_calls = 0
    if max_calls < 1:
        raise ValueError(f"{MAX_CALLS_ENV} must be a positive integer, got {raw!r}")
    raw = os.environ.get(IDLE_ENV, "").strip()
    try:
        idle = float(raw) if raw else DEFAULT_IDLE_SECONDS
    except ValueError:
        idle = -1.0
    if not idle > 0 or idle == float("inf"):
        raise ValueError(f"{IDLE_ENV} must be a positive number of seconds, got {raw!r}")
    return max_calls, idle


_POOL: HostPool | None = None
_POOL_LOCK = threading.Lock()


def default_pool() -> HostPool:
    """This process's pool (created on first use). Raises ValueError for bad settings."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = HostPool(*settings_from_env())
            atexit.register(_POOL.shutdown)
        return _POOL


def shutdown() -> None:
    """Kill this process's idle hosts (the worker calls it when it stops)."""
    if _POOL is not None:
        _POOL.shutdown()
