"""Warm python hosts: the worker's side of `python_host`.

Each worker process keeps a pool of host processes, keyed by the directory of the action's
file (so two packs' helper modules never meet in one interpreter). A call takes the idle
host of its key used last, or starts one. There are never more hosts than the most calls
that ever ran at once (so at most the worker's slots) or `MIN_HOSTS`, whichever is more:
the longest-idle host of another key makes room for a new one.

Quick calls (a key whose calls average under `FAST_CALL` and do not block, or have not
been measured yet) run on at most `LANES` hosts at once: another one waits for a lane (up
to `LANE_WAIT`), so a burst of them keeps a few hosts hot instead of starting and waking
one per slot. Measured on 2 cores, 2 workers of 10 slots: with 2 hosts a worker the
trivial action ran at 0.80-0.84x the no-op, with 10 at 0.63-0.65x; a host's start costs
about 60 ms of CPU, as much as a thousand warm calls. A call that blocks (sleeps, waits
for I/O) gains from a host of its own however short it is, so such keys never wait.

A lane is a pipeline: while LANES hosts of a key run quick calls, the next calls are
written to the one with the fewest in its pipe (up to DEPTH), and the host runs them back
to back; only past that do calls wait in the pool's queue. Without it, every call on a
lane waited for the pump to see the last answer and wake the host again: a round trip
per call that the host spent idle. A call's timeout counts from when its host starts it;
a canceled call still in a pipe is skipped, and the calls behind one that runs longer
than LANE_WAIT are taken back and run on hosts of their own (`host_io`).

`submit` writes the request to a host and returns; the pool's pump (`host_io`) takes
the host's stdout, stderr and answers until a call's answer is complete, the host exits,
the timeout passes or `cancel` is set, and hands the result to the call's `done`; once a
host has no call left it is given back. So no thread waits on a call. A call waiting for
a lane waits in a queue, not in a thread. A host is killed with its whole process group,
never reused, after a timeout or cancel, a crash, an answer marked `retire` (the call
left something the host cannot put back), a garbled answer, `max_calls` calls, or
`idle_seconds` without a call. Hosts start lazily: a worker that never runs a python
action has none.

Settings (environment of the worker): `ATTUNE_PYTHON_MAX_CALLS` (default 10,000; 1 means a
fresh interpreter for every call) and `ATTUNE_PYTHON_IDLE_SECONDS` (default 60). A host's
replacement costs about 33 ms of CPU (the new interpreter and its pipes): at 1000 calls a
host that was over a quarter of a trivial call's whole cost (99 against 71 µs, docs/actions.md).
"""

from __future__ import annotations

import atexit
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from attune_pg.actions.host_io import Ending, Pump
from attune_pg.actions.host_process import CallResult, Flight, Host, HostGone, not_run_canceled
from attune_pg.actions.process import POLL_INTERVAL
from attune_pg.actions.python_host import STALE

MAX_CALLS_ENV = "ATTUNE_PYTHON_MAX_CALLS"
IDLE_ENV = "ATTUNE_PYTHON_IDLE_SECONDS"
DEFAULT_MAX_CALLS = 10_000
DEFAULT_IDLE_SECONDS = 60.0
#: Hosts a pool may keep even when fewer calls ever ran at once (so that sequential calls
#: of actions in a few directories do not start a host each time).
MIN_HOSTS = 4
#: Quick calls (a directory's calls that take under FAST_CALL seconds on average and do
#: not block, or have not been measured yet) run on at most LANES hosts of that directory at once;
#: one more waits for a lane, up to LANE_WAIT seconds (longer than a host takes to start,
#: about 0.1 s under load), then it takes a host of its own.
FAST_CALL = 0.010
LANES = max(2, os.cpu_count() or 1)
LANE_WAIT = 0.25
#: Calls one lane host may have in its pipe at once.
DEPTH = 16
#: Hosts a call may find dead (killed while idle, stale) before it fails.
TRIES = 3

#: What a call's `done` gets: its result, or the OSError that no host could be started.
Done = Callable[[CallResult | Exception], None]


@dataclass(eq=False)
class PendingCall:
    """One request, from `submit` until its `done` is called."""

    key: str
    request: bytes
    cancel: threading.Event
    timeout: float | None  # seconds, counted from when the request goes to its host
    done: Done
    tries: int = 0
    lane_deadline: float = 0.0  # while it waits for a lane
    sent: float = 0.0  # when its request went to its host


class HostPool:
    """Idle hosts by key; see the module docstring."""

    def __init__(self, max_calls: int, idle_seconds: float) -> None:
        self.max_calls = max_calls
        self.idle_seconds = idle_seconds
        self._lock = threading.Lock()
        self._idle: dict[str, list[Host]] = {}
        self._busy: set[Host] = set()
        self._busy_by_key: dict[str, int] = {}
        self._load: dict[Host, int] = {}  # calls given to a busy host and not yet ended
        self._waiting: dict[str, deque[PendingCall]] = {}  # for a lane, by key
        # Moving averages of a call's wall seconds in its host and of how often it
        # blocked there, by key.
        self._call_seconds: dict[str, tuple[float, float]] = {}
        self._peak = 0  # the most calls that ever ran at once
        self._next_sweep = 0.0  # when _tick next looks for canceled calls in the queues
        self._trimmer: threading.Thread | None = None
        self._trim_stop = threading.Event()
        self._pump = Pump(self._ended, self._tick, lambda: LANE_WAIT)
        self.started = 0  # hosts started so far (for tests and the benchmark)

    def submit(
        self,
        key: str,
        request: bytes,
        cancel: threading.Event,
        timeout: float | None,
        done: Done,
    ) -> None:
        """Run one request on a host for `key`: write it and return. `done` gets the
        result (or the OSError that no host could be started) once, later, from the
        pool's pump or a thread finishing a stopped call; or at once, from this thread,
        when the call ends before it reaches a host."""
        self._dispatch(PendingCall(key, request, cancel, timeout, done))

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

    # -- a call's way to a host ---------------------------------------------------------

    def _dispatch(self, call: PendingCall, *, waited: bool = False) -> None:
        """Send `call` to a host, or queue it for a lane (`waited`: it did, go now)."""
        if self._ends_early(call):
            return
        try:
            host = self._take(call, waited)
        except OSError as exc:
            call.done(exc)
            return
        if host is not None:  # else it is queued: _release or _tick sends it on
            self._send(call, host)

    def _ends_early(self, call: PendingCall) -> bool:
        """End `call` before it reaches a host, if it is canceled or out of tries."""
        if call.cancel.is_set():  # nothing ran: nothing to stop
            call.done(not_run_canceled())
            return True
        if call.tries >= TRIES:
            call.done(OSError("python hosts keep exiting before they take a request"))
            return True
        return False

    def _send(self, call: PendingCall, host: Host) -> None:
        """Write `call`'s request to `host` (taken for it): the pump has it from there."""
        call.tries += 1
        call.sent = time.monotonic()
        try:
            self._pump.send(host, call.request, call.cancel, call.timeout, call)
        except HostGone:  # the pump is ending the host: the call never reached it
            self._release(host)
            self._dispatch(call, waited=True)

    def _ended(self, host: Host, flight: Flight, ending: Ending) -> None:
        """The pump's report that one of `host`'s calls ended: finish it, and give the
        host back once it has none left."""
        call = flight.owner
        assert isinstance(call, PendingCall)
        if isinstance(ending, HostGone):  # it never ran: go again on another host
            self._release(host)
            # (one taken back from behind a slow call gets a host of its own; one from
            # a host that died takes the lanes like any other)
            self._dispatch(call, waited=flight.withdrawn)
            return
        if isinstance(ending, Exception):
            self._release(host, retire=True)
            call.done(ending)
            return
        if ending.answer == STALE:
            # Its siblings imported the same files: none of them may serve this key.
            self._release(host, retire=True)
            self._drop_idle(call.key)
            self._dispatch(call, waited=True)
            return
        # (an answer that retires the host marked it `retiring`: _release sees to it)
        took = (ending.wall, ending.waits) if ending.answer and flight.number > 1 else None
        self._release(host, retire=ending.answer is None, took=took)  # (not a first: its start)
        call.done(ending)

    def _tick(self, now: float) -> float | None:
        """The pump's timer: send on the calls whose lane wait is over (or that were
        canceled meanwhile); when to come back. The pump turns once per answer, so this
        looks only at each queue's head (a queue is in deadline order: every call waits
        LANE_WAIT from when it came) and for cancels once per POLL_INTERVAL, as the pump
        does for the calls in flight."""
        with self._lock:
            due: list[PendingCall] = []
            next_at: float | None = None
            sweep = now >= self._next_sweep
            if sweep:
                self._next_sweep = now + POLL_INTERVAL
            for key, queue in list(self._waiting.items()):
                while queue and queue[0].lane_deadline <= now:
                    due.append(queue.popleft())
                if sweep and queue:
                    canceled = [c for c in queue if c.cancel.is_set()]
                    for call in canceled:
                        queue.remove(call)
                    due.extend(canceled)
                if queue:
                    at = queue[0].lane_deadline
                    next_at = at if next_at is None else min(next_at, at)
                else:
                    del self._waiting[key]
            if self._waiting:  # the next cancel sweep
                next_at = self._next_sweep if next_at is None else min(next_at, self._next_sweep)
        for call in due:
            self._dispatch(call, waited=True)
        return next_at

    def _drop_idle(self, key: str) -> None:
        with self._lock:
            idle = self._idle.pop(key, [])
        for host in idle:
            host.kill()

    def _take(self, call: PendingCall, waited: bool) -> Host | None:
        """A host for `call` (marked busy), or None when it must wait for a lane."""
        key = call.key
        with self._lock:
            if not waited and self._lanes_full(key):
                lane = self._lane_with_room(key)
                if lane is not None:
                    self._load[lane] += 1
                    lane.taken += 1
                    return lane
                call.lane_deadline = time.monotonic() + LANE_WAIT
                self._waiting.setdefault(key, deque()).append(call)
                queued = True
            else:
                queued = False
                stack = self._idle.get(key)
                while stack:
                    host = stack.pop()
                    if not host.dead:  # if it died while idle, its call finds out, goes again
                        self._mark_busy(host)
                        return host
                # Never more hosts than calls ever ran at once (at most the worker's
                # slots), or MIN_HOSTS: a new host for this key replaces the longest-idle
                # one of another.
                self._peak = max(self._peak, len(self._busy) + 1)
                cap = max(self._peak, MIN_HOSTS)
                evict = self._oldest_idle() if self._count() + 1 > cap else None
                self._busy_by_key[key] = self._busy_by_key.get(key, 0) + 1  # the one we start
        if queued:
            self._pump.poke(call.lane_deadline)
            return None
        if evict is not None:
            evict.kill()
        try:
            host = Host(key)  # outside the lock: starting a process takes a while
        except BaseException:
            with self._lock:
                self._busy_by_key[key] -= 1
                waiting = self._next_waiting(key)
            if waiting is not None:
                self._dispatch(waiting, waited=True)
            raise
        with self._lock:
            self.started += 1
            self._busy.add(host)
            self._load[host] = 1
            host.taken = 1
        return host

    def _lanes_full(self, key: str) -> bool:
        """Whether `key`'s calls are quick (under FAST_CALL on average) and LANES of them
        already run: then a call waits (LANE_WAIT at most) for one of those warm hosts
        rather than wake a cold one or start another. On a few cores, more quick calls at
        once only add processes (and cache misses) to schedule; slow calls are never held."""
        if not self._quick(key):
            return False
        busy = self._busy_by_key.get(key, 0)  # (hosts being started included)
        if busy < LANES:
            return False
        # Hosts that are going (dead, retiring) still count until their last call ends.
        return busy - sum(1 for h in self._busy if h.key == key and _going(h)) >= LANES

    def _quick(self, key: str) -> bool:
        """Whether `key`'s calls are quick and do not wait: under FAST_CALL on average,
        blocking (sleep, I/O) in fewer than half of them (unmeasured ones count as quick).
        Calls that wait gain from more hosts however short they are; calls that only
        compute cannot run faster than the cores, and a queue behind a quick one is short."""
        wall, waits = self._call_seconds.get(key, (0.0, 0.0))
        return wall < FAST_CALL and waits < 0.5

    def _next_waiting(self, key: str) -> PendingCall | None:
        """The next call waiting for a lane of `key`, off its queue (lock held)."""
        queue = self._waiting.get(key)
        if not queue:
            return None
        call = queue.popleft()
        if not queue:
            del self._waiting[key]
        return call

    def _lane_with_room(self, key: str) -> Host | None:
        """The busy host of `key` with the fewest calls, if it may take one more into its
        pipe (lock held)."""
        best: Host | None = None
        for host in self._busy:
            load = self._load.get(host, 0)
            if (
                host.key == key
                and 0 < load < DEPTH
                and host.taken < self.max_calls
                and not _going(host)
                and (best is None or load < self._load[best])
            ):
                best = host
        return best

    def _mark_busy(self, host: Host) -> None:
        self._busy.add(host)
        self._busy_by_key[host.key] = self._busy_by_key.get(host.key, 0) + 1
        self._load[host] = 1
        host.taken += 1

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

    def _release(
        self, host: Host, *, retire: bool = False, took: tuple[float, float] | None = None
    ) -> None:
        """One of `host`'s calls is over. A call waiting for a lane of its key takes its
        place at once (under the lock, so that no new call slips in between and makes
        the waiting one start a host); a host with no call left is kept or killed."""
        retire = retire or _going(host) or host.taken >= self.max_calls
        key = host.key
        kill = False
        with self._lock:
            released: list[PendingCall] = []
            if took is not None:
                last = self._call_seconds.get(key, took)
                self._call_seconds[key] = (
                    0.8 * last[0] + 0.2 * took[0],
                    0.8 * last[1] + 0.2 * took[1],
                )
                if not self._quick(key):  # slow now: nobody waits for a lane
                    released = list(self._waiting.pop(key, ()))
            self._load[host] -= 1
            load = self._load[host]
            waiting = None
            if not retire and (load == 0 or (load < DEPTH and self._quick(key))):
                waiting = self._next_waiting(key)
            if waiting is not None:
                self._load[host] += 1
                host.taken += 1
            elif load == 0:
                del self._load[host]
                self._busy.discard(host)
                self._busy_by_key[key] -= 1
                if not retire:
                    self._idle.setdefault(key, []).append(host)
                    self._start_trimmer()
                else:
                    kill = not host.closing  # (a closing host is its finisher's to kill)
                    if (after := self._next_waiting(key)) is not None:
                        released.insert(0, after)  # its lane is free
        if kill:
            host.kill()
        if waiting is not None:
            if self._ends_early(waiting):
                self._release(host)
            else:
                self._send(waiting, host)
        for call in released:
            self._dispatch(call, waited=True)

    def _start_trimmer(self) -> None:
        """Watch idle hosts for `idle_seconds` (lock held)."""
        if self._trimmer is None:
            self._trimmer = threading.Thread(
                target=self._trim_loop,
                args=(self._trim_stop,),
                name="attune-python-hosts",
                daemon=True,
            )
            self._trimmer.start()

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


def _going(host: Host) -> bool:
    """Whether `host` takes no more calls (its calls still in flight end elsewhere)."""
    return host.closing or host.retiring or host.exited or host.dead or host.garbled


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
