"""The pump: one thread per pool that takes the answers of every python call in flight.

Whoever submits a call (the worker's loop) writes its request and adds the host's answer
pipe, stdout, stderr and pidfd to the pump's epoll; the pump takes what is ready, all
calls at once. So a call wakes its host and then the pump, which takes every answer
that is ready in one wake-up. A thread per call would wake twice more per call and
contend for the worker's GIL with the loop that claims and advances (docs/actions.md).

What blocks never runs on the pump: a call that will not answer (its host exited, its
timeout passed, it was canceled) is finished on a thread of its own, which stops the host
(SIGTERM, SIGKILL after TERM_GRACE) and drains its output while the pump serves the rest.
Timeouts and cancels are noticed within POLL_INTERVAL: the pump never sleeps longer while
a call is in flight.

A call's descriptors are removed from the epoll (by the pump) before anyone sees the call
end, and a host is killed, which closes them and frees their numbers, only after that:
so a number the kernel reuses for a new host's pipe is never mistaken for the old one's.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from attune_pg.actions.host_process import CallResult, Host, HostGone
from attune_pg.actions.process import POLL_INTERVAL, EndedBy

log = logging.getLogger(__name__)

#: Seconds the pump thread stays with nothing to watch before it ends (the next call
#: starts another).
LINGER = 2.0
_IN = select.POLLIN | select.POLLHUP | select.POLLERR
_OUT = select.POLLOUT | select.POLLERR


@dataclass(eq=False)
class Watch:
    """One call in flight, as the pump sees it."""

    host: Host
    deadline: float | None  # time.monotonic() when the call times out
    cancel: threading.Event
    fds: list[int] = field(default_factory=list)  # in the poller, while it is watched


#: How a call ended: its result, HostGone (it never ran: go again on another host), or
#: the exception that ended it unexpectedly.
Ending = CallResult | HostGone | Exception
Ended = Callable[[Watch, Ending], None]


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
    """See the module docstring. `ended(watch, ending)` is called once per watched call,
    on the pump's thread or a finishing thread, after the pump has let go of the host;
    the host is still alive then (kill it, or keep it)."""

    def __init__(self, ended: Ended, tick: Callable[[float], float | None]) -> None:
        self._ended = ended
        self._tick = tick  # the pool's timers: called every turn, returns when next
        self._lock = threading.Lock()
        self._by_fd: dict[int, Watch] = {}  # on the lock, as _watches
        self._watches: dict[Host, Watch] = {}
        self._thread: threading.Thread | None = None
        self._poller: _Poller | None = None
        self._wake_w = -1
        self._woken = False
        self._sleep_until = float("inf")  # when the thread's current wait ends

    def watch(self, watch: Watch) -> None:
        """Take over a call whose request `watch.host.begin` wrote (or began to write)."""
        host = watch.host
        with self._lock:
            poller = self._running()
            for fd in host.fds():
                poller.register(fd, _IN)
                watch.fds.append(fd)
            if host.writing:
                poller.register(host.req_fd, _OUT)
                watch.fds.append(host.req_fd)
            for fd in watch.fds:
                self._by_fd[fd] = watch
            self._watches[host] = watch
            # A cancel is nobody's event: the pump must come round within POLL_INTERVAL.
            due = time.monotonic() + POLL_INTERVAL
            if watch.deadline is not None:
                due = min(due, watch.deadline)
            self._wake_by(due, always=not poller.sees_new)

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

    # -- the thread ---------------------------------------------------------------------

    def _run(self, poller: _Poller, wake_r: int) -> None:
        idle_since = time.monotonic()
        try:
            while True:
                wake_at = self._tick(time.monotonic())  # may submit: not under our lock
                with self._lock:
                    self._woken = False
                    watching = list(self._watches.values())
                    now = time.monotonic()
                    if watching:
                        idle_since = now
                    elif wake_at is None:
                        if now - idle_since >= LINGER:
                            self._thread = self._poller = None  # the next watch starts anew
                            os.close(self._wake_w)
                            return
                        wake_at = idle_since + LINGER
                    times = [w.deadline for w in watching if w.deadline is not None]
                    if wake_at is not None:
                        times.append(wake_at)
                    if watching:
                        times.append(now + POLL_INTERVAL)  # a cancel is nobody's event
                    self._sleep_until = min(times)
                ready: set[Host] = set()
                for fd, _ in poller.poll(max(0.0, self._sleep_until - time.monotonic())):
                    if fd == wake_r:
                        with contextlib.suppress(BlockingIOError):
                            os.read(wake_r, 4096)
                        continue
                    with self._lock:
                        watch = self._by_fd.get(fd)
                    if watch is not None:  # else its call ended earlier in this batch
                        ready.add(watch.host)
                        self._step(poller, watch, fd)
                now = time.monotonic()
                with self._lock:
                    watching = list(self._watches.values())
                for watch in watching:
                    how = self._trouble(watch, now, watch.host in ready)
                    if how is not None:
                        self._let_go(poller, watch)
                        threading.Thread(
                            target=self._finish,
                            args=(watch, how),
                            name="attune-python-stop",
                            daemon=True,
                        ).start()
        except BaseException as exc:  # a bug in the pump: end every call it held, loudly
            log.exception("python pump: unexpected error; ending the calls in flight")
            with self._lock:
                lost = list(self._watches.values())
            for watch in lost:
                self._let_go(poller, watch)
                self._report(watch, exc if isinstance(exc, Exception) else RuntimeError(exc))
            with self._lock:
                if self._thread is threading.current_thread():
                    self._thread = self._poller = None
                    os.close(self._wake_w)
        finally:
            poller.close()
            os.close(wake_r)

    def _step(self, poller: _Poller, watch: Watch, fd: int) -> None:
        host = watch.host
        try:
            result = host.step(fd)
        except HostGone as gone:
            self._let_go(poller, watch)
            self._report(watch, gone)
            return
        except Exception as exc:  # a bug here must end this call, not the pump
            log.exception("python host %s: unexpected error reading a call", host.pid)
            self._let_go(poller, watch)
            self._report(watch, exc)
            return
        if result is not None:
            self._let_go(poller, watch)
            self._report(watch, result)
        elif fd in watch.fds and (not host.writing if fd == host.req_fd else fd not in host.fds()):
            with self._lock:  # the request is written, or a pipe reached its end
                poller.unregister(fd)
                watch.fds.remove(fd)
                self._by_fd.pop(fd, None)

    def _trouble(self, watch: Watch, now: float, stepped: bool) -> EndedBy | None:
        """Why the call must be finished off the pump, if it must."""
        if watch.host.exited or (not stepped and watch.host.check_exited()):
            return "exit"
        if watch.cancel.is_set():
            return "cancel"
        if watch.deadline is not None and now >= watch.deadline:
            return "timeout"
        return None

    def _let_go(self, poller: _Poller, watch: Watch) -> None:
        with self._lock:
            for fd in watch.fds:
                poller.unregister(fd)
                if self._by_fd.get(fd) is watch:
                    del self._by_fd[fd]
            watch.fds.clear()
            self._watches.pop(watch.host, None)

    def _finish(self, watch: Watch, how: EndedBy) -> None:
        try:
            ending: Ending = watch.host.finish(how)
        except HostGone as gone:
            ending = gone
        except Exception as exc:
            log.exception("python host %s: unexpected error ending a call", watch.host.pid)
            ending = exc
        self._report(watch, ending)

    def _report(self, watch: Watch, ending: Ending) -> None:
        try:
            self._ended(watch, ending)
        except Exception:  # the pool's bug: log it, keep the pump serving the others
            log.exception("python pool: unexpected error taking a call's end")
