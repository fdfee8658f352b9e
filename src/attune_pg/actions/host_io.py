"""The pump: one thread per pool that takes the answers of every python call in flight.

Whoever submits a call (the worker's loop) writes its request through `Pump.send`, which
adds the host's answer pipe, stdout, stderr and pidfd to the pump's epoll while the host
has calls in flight; the pump takes what is ready, all hosts at once, and reports each
call as it completes. A host may have several calls in its pipe (a lane's pipeline): it
runs them back to back while the pump only collects, so a call costs neither a wake-up
of the pump between two calls nor one of the host. A thread per call would wake twice
more per call and contend for the worker's GIL with the loop that claims and advances
(docs/actions.md).

Once per POLL_INTERVAL the pump looks at the calls waiting in a host's pipe: the canceled
ones, and all of them when the call the host runs has taken longer than `withdraw_after()`,
are taken back. The host is frozen (SIGSTOP) to be sure it still runs the call ahead of
them, a skip frame for each goes into its pipe (the host reads all its pipe holds before
it starts a call, so it never starts them), and they end now: canceled, or back to the
pool, which runs them elsewhere (so a slow call holds up the quick ones behind it for
about `withdraw_after()` at most).

What blocks never runs on the pump: a host whose call will not answer (it exited, the
call's timeout passed, it was canceled) is first frozen (SIGSTOP) to see whether the call
answered just then; if not, the host is finished on a thread of its own, which stops it
(SIGTERM, SIGKILL after TERM_GRACE), drains its output and tells how each of its calls
ended while the pump serves the rest. Timeouts and cancels are noticed within
POLL_INTERVAL: the pump never sleeps longer while a call is in flight.

A host's descriptors are removed from the epoll (by the pump) before anyone sees its last
call end, and a host is killed, which closes them and frees their numbers, only after
that: so a number the kernel reuses for a new host's pipe is never mistaken for the old
one's.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import threading
import time
from collections.abc import Callable

from attune_pg.actions.host_process import CallResult, Flight, Host, HostGone
from attune_pg.actions.process import POLL_INTERVAL, EndedBy

log = logging.getLogger(__name__)

#: Seconds the pump thread stays with nothing to watch before it ends (the next call
#: starts another).
LINGER = 2.0
_IN = select.POLLIN | select.POLLHUP | select.POLLERR
_OUT = select.POLLOUT | select.POLLERR

#: How a call ended: its result, HostGone (it never ran: go again on another host), or
#: the exception that ended it unexpectedly.
Ending = CallResult | HostGone | Exception
Ended = Callable[[Host, Flight, Ending], None]


class _Poller:
    """epoll where there is one (other threads may add descriptors while the pump waits);
    else poll(2), which sees them only on its next wait, so each watch wakes the pump."""

    def __init__(self) -> None:
        self._epoll = select.epoll() if hasattr(select, "epoll") else None
        self._poll = select.poll() if self._epoll is None else None
        self.sees_new = self._epoll is not None

    def register(self, fd: int, mask: int) -> None:
        if self._epoll is not None:
            self._epoll.register(fd, mask)
        else:
            assert self._poll is not None
            self._poll.register(fd, mask)

    def unregister(self, fd: int) -> None:
        with contextlib.suppress(KeyError, OSError):
            if self._epoll is not None:
                self._epoll.unregister(fd)
            else:
                assert self._poll is not None
                self._poll.unregister(fd)

    def poll(self, seconds: float) -> list[tuple[int, int]]:
        if self._epoll is not None:
            return self._epoll.poll(seconds)
        assert self._poll is not None
        return self._poll.poll(seconds * 1000)

    def close(self) -> None:
        if self._epoll is not None:
            self._epoll.close()


class Pump:
    """See the module docstring. `ended(host, flight, ending)` is called once per call,
    on the pump's thread or a finishing thread; when it is a host's last call in flight,
    the pump has let go of the host by then, and the host is still alive (kill it, or
    keep it)."""

    def __init__(
        self,
        ended: Ended,
        tick: Callable[[float], float | None],
        withdraw_after: Callable[[], float],
    ) -> None:
        self._ended = ended
        self._tick = tick  # the pool's timers: called every turn, returns when next
        self._withdraw_after = withdraw_after
        self._lock = threading.Lock()  # also every Host's, while it is watched
        self._by_fd: dict[int, Host] = {}
        self._watched: dict[Host, set[int]] = {}  # its descriptors in the poller
        self._thread: threading.Thread | None = None
        self._poller: _Poller | None = None
        self._wake_w = -1
        self._woken = False
        self._sleep_until = float("inf")  # when the thread's current wait ends
        self._next_sweep = 0.0

    def send(
        self,
        host: Host,
        request: bytes,
        cancel: threading.Event,
        timeout: float | None,
        owner: object,
    ) -> Flight:
        """Write a call's request to `host` (or begin to) and watch it. Raises HostGone
        if the host is being ended (the call never reached it)."""
        with self._lock:
            if host.closing or host.dead:
                raise HostGone
            poller = self._running()
            flight = host.send(request, cancel, timeout, owner)
            self._watch(poller, host)
            # A cancel is nobody's event: the pump must come round within POLL_INTERVAL.
            due = time.monotonic() + POLL_INTERVAL
            if timeout is not None:
                due = min(due, time.monotonic() + timeout)
            self._wake_by(due, always=not poller.sees_new or host.exited)
        return flight

    def poke(self, when: float) -> None:
        """Make sure the pump turns (and calls `tick`) no later than `when`."""
        with self._lock:
            self._running()
            self._wake_by(when)

    def _running(self) -> _Poller:
        """The poller, with a thread waiting on it (lock held)."""
        if self._thread is None or self._poller is None:
            self._poller = _Poller()
            wake_r, self._wake_w = os.pipe()
            os.set_blocking(wake_r, False)
            self._poller.register(wake_r, _IN)
            self._woken = False
            self._sleep_until = 0.0  # it turns once before it sleeps
            self._thread = threading.Thread(
                target=self._run,
                args=(self._poller, wake_r),
                name="attune-python-pump",
                daemon=True,
            )
            self._thread.start()
        return self._poller

    def _wake_by(self, when: float, *, always: bool = False) -> None:
        if not self._woken and (always or when < self._sleep_until):
            self._woken = True
            os.write(self._wake_w, b"w")

    def _watch(self, poller: _Poller, host: Host) -> None:
        """Have `host`'s descriptors in the poller (lock held)."""
        fds = self._watched.get(host)
        if fds is None:
            fds = self._watched[host] = set()
            for fd in host.fds():
                poller.register(fd, _IN)
                fds.add(fd)
                self._by_fd[fd] = host
        if host.writing and host.req_fd not in fds:
            poller.register(host.req_fd, _OUT)
            fds.add(host.req_fd)
            self._by_fd[host.req_fd] = host

    def _unwatch(self, poller: _Poller, host: Host) -> None:
        for fd in self._watched.pop(host, ()):
            poller.unregister(fd)
            if self._by_fd.get(fd) is host:
                del self._by_fd[fd]

    # -- the thread ---------------------------------------------------------------------

    def _run(self, poller: _Poller, wake_r: int) -> None:
        idle_since = time.monotonic()
        try:
            while True:
                wake_at = self._tick(time.monotonic())  # may submit: not under our lock
                with self._lock:
                    self._woken = False
                    now = time.monotonic()
                    if self._watched:
                        idle_since = now
                    elif wake_at is None:
                        if now - idle_since >= LINGER:
                            self._thread = self._poller = None  # the next send starts anew
                            os.close(self._wake_w)
                            return
                        wake_at = idle_since + LINGER
                    heads = [h.head for h in self._watched]
                    times = [t for f in heads if f is not None and (t := f.deadline) is not None]
                    if wake_at is not None:
                        times.append(wake_at)
                    if self._watched:
                        times.append(now + POLL_INTERVAL)  # a cancel is nobody's event
                    self._sleep_until = min(times)
                events = poller.poll(max(0.0, self._sleep_until - time.monotonic()))
                self._turn(poller, wake_r, events)
        except BaseException as exc:  # a bug in the pump: end every call it held, loudly
            log.exception("python pump: unexpected error; ending the calls in flight")
            error = exc if isinstance(exc, Exception) else RuntimeError(exc)
            with self._lock:
                lost = [(h, f) for h in self._watched for f in h.flights.values()]
                hosts = list(self._watched)
                for host in hosts:
                    host.closing = True
                    host.flights.clear()
                    self._unwatch(poller, host)
            for host in hosts:
                host.kill()  # (closing: the pool leaves it to us)
            for host, flight in lost:
                self._report(host, flight, error)
            with self._lock:
                if self._thread is threading.current_thread():
                    self._thread = self._poller = None
                    os.close(self._wake_w)
        finally:
            poller.close()
            os.close(wake_r)

    def _turn(self, poller: _Poller, wake_r: int, events: list[tuple[int, int]]) -> None:
        """Take what is ready, report the calls that completed, end troubled hosts."""
        done: list[tuple[Host, Flight]] = []
        ending: list[tuple[Host, EndedBy]] = []
        with self._lock:
            stepped: set[Host] = set()
            read: set[Host] = set()  # (one read of a host's pipes takes all three)
            for fd, _ in events:
                if fd == wake_r:
                    with contextlib.suppress(BlockingIOError):
                        os.read(wake_r, 4096)
                    continue
                host = self._by_fd.get(fd)
                if host is None:  # its host was let go earlier in this batch
                    continue
                stepped.add(host)
                if host.reads(fd):
                    if host in read:
                        continue
                    read.add(host)
                try:
                    done += [(host, f) for f in host.step(fd)]
                except Exception:  # a bug here must end this host's calls, not the pump
                    log.exception("python host %s: unexpected error reading", host.pid)
                    host.garbled = True
                fds = self._watched[host]
                live = host.fds()
                # The request is written, or a pipe ended: out of the poller.
                written = not host.writing
                for done_fd in [f for f in fds if (written if f == host.req_fd else f not in live)]:
                    poller.unregister(done_fd)
                    fds.discard(done_fd)
                    self._by_fd.pop(done_fd, None)
            now = time.monotonic()
            sweep = now >= self._next_sweep
            if sweep:
                self._next_sweep = now + POLL_INTERVAL
            for host in list(self._watched):
                how = self._trouble(host, now, host in stepped)
                if how is not None and how != "exit" and not host.freeze():
                    done += [(host, f) for f in host.completed()]  # it answered just then
                    how = None
                if how is not None:
                    # Let go of it before any of its calls is reported (the pool kills
                    # hosts it gets back: their descriptors must be out of the poller).
                    host.closing = True
                    self._unwatch(poller, host)
                    ending.append((host, how))
                    continue
                if sweep:
                    done += [(host, f) for f in self._sweep(poller, host, now)]
                if not host.flights:
                    self._unwatch(poller, host)  # before its last call's end is reported
        for host, flight in done:
            self._report(host, flight, flight.result())
        for host, how in ending:
            threading.Thread(
                target=self._finish, args=(host, how), name="attune-python-stop", daemon=True
            ).start()

    def _trouble(self, host: Host, now: float, stepped: bool) -> EndedBy | None:
        """Why the host must be ended, if it must (lock held)."""
        if host.exited or host.retiring or host.garbled:
            return "exit"
        if not stepped and host.check_exited():
            return "exit"
        head = host.head
        if head is None:
            return None
        if head.cancel.is_set():
            return "cancel"
        if head.deadline is not None and now >= head.deadline:
            return "timeout"
        return None

    def _sweep(self, poller: _Poller, host: Host, now: float) -> list[Flight]:
        """Take back the calls waiting in `host`'s pipe that were canceled, or all of
        them when the one it runs is slow (lock held); the calls that ended so."""
        head = host.head
        if head is None:
            return []
        slow = now - head.started > self._withdraw_after()
        targets = [
            f
            for f in host.flights.values()
            if f is not head
            and f.answer is None
            and not f.skip_sent
            and (slow or f.cancel.is_set())
        ]
        if not targets:
            return []
        if not host.freeze():
            return host.completed()  # the head answered just then: look again next time
        for flight in targets:
            flight.withdrawn = slow
        back = host.take_back(targets)
        host.thaw()
        self._watch(poller, host)  # (skip frames may wait for room in the pipe)
        return back

    def _finish(self, host: Host, how: EndedBy) -> None:
        flights = list(host.flights.values())
        try:
            endings: list[tuple[Flight, Ending]] = list(host.finish(how))
        except Exception as exc:
            log.exception("python host %s: unexpected error ending it", host.pid)
            host.flights.clear()
            endings = [(flight, exc) for flight in flights]
        for flight, ending in endings:
            self._report(host, flight, ending)

    def _report(self, host: Host, flight: Flight, ending: Ending) -> None:
        try:
            self._ended(host, flight, ending)
        except Exception:  # the pool's bug: log it, keep the pump serving the others
            log.exception("python pool: unexpected error taking a call's end")
