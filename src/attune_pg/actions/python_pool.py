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
import os
import threading
import time

from attune_pg.actions.host_process import CallResult, Host, HostGone

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
