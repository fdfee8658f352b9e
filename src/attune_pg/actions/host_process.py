"""One warm python host process, as the worker sees it: start it, write calls' requests
(several may be in its pipe at once: a lane's pipeline), take its stdout, stderr and
answers as they come (`step`, driven by the pool's pump in `host_io`) and split them by
call, and end the calls it will not answer (`finish`: the host exited, or the call it runs
timed out or was canceled): kill it with its whole process group. `python_pool` decides
which host a call gets; `python_host` is the host's own side (and the protocol).

Which call a byte of output belongs to: the host writes a marker (a random token of this
host and the call number) to stdout and stderr after each call it ran, before its answer;
what comes before a marker is that call's. A call is complete when its answer and both
markers are in (a skipped call has no output). What follows the last marker belongs to
the call that runs, which is the oldest unanswered one: the host runs calls in order.

Which calls ran, when a host dies with calls in its pipe: the answered ones ran; the
oldest unanswered one ran unless the host never read a byte of it (then, like the ones
behind it, it never started and may run elsewhere), or the host had answered `retire` or
`stale` (it runs nothing after those). Before a timeout or cancel kills the host, `freeze`
stops it and looks again, so a call that answered just then is not killed for it.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

from attune_pg.actions import guardian
from attune_pg.actions.host_output import TOKEN_BYTES, Stream, empty_output
from attune_pg.actions.outcome import MAX_RESULT_BYTES
from attune_pg.actions.process import DRAIN_GRACE, TERM_GRACE, Capture, EndedBy
from attune_pg.actions.python_host import RETIRED, SKIPPED, STALE

HOST_MODULE = "attune_pg.actions.python_host"
#: How much of the action's stdout and stderr (each, last bytes) a call keeps.
#: The largest answer frame a host may write (the host itself refuses results over the
#: limit, so anything larger means the action wrote into the answer pipe).
ANSWER_LIMIT = MAX_RESULT_BYTES + 256 * 1024
_HEADER = 16  # of an answer: length, call number, wall µs, waits (see python_host)
_READ_SIZE = 65536
_IN = select.POLLIN | select.POLLHUP | select.POLLERR
_FREEZE_WAIT = 0.2  # seconds a SIGSTOPped host has to stop


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


def not_run_canceled() -> CallResult:
    """How a call ends that was canceled before its host started it."""
    empty = empty_output()
    return CallResult("cancel", None, False, None, empty, empty)


@dataclass(eq=False)
class Flight:
    """One call written to a host, until it is complete."""

    number: int
    offset: int  # where its request frame starts in all the host was ever sent
    cancel: threading.Event
    timeout: float | None
    started: float = 0.0  # when it became the oldest unanswered (its timeout counts)
    answer: bytes | None = None
    wall: float = 0.0
    waits: int = 0
    stdout: Capture | None = None  # once its marker is in
    stderr: Capture | None = None
    skip_sent: bool = False  # a skip frame went after it: canceled, or `withdrawn`
    withdrawn: bool = False  # taken back from behind a slow call (to run elsewhere)
    owner: object = None  # whoever sent it (the pool's call)

    @property
    def deadline(self) -> float | None:
        """When it times out, once it runs (None: no timeout)."""
        return None if self.timeout is None else self.started + self.timeout

    @property
    def complete(self) -> bool:
        if self.answer is None:
            return False
        return self.answer == SKIPPED or (self.stdout is not None and self.stderr is not None)

    def result(self) -> CallResult | HostGone:
        """What its answer means (complete, or the host's end reached its output)."""
        assert self.answer is not None
        if self.answer == SKIPPED:
            if self.withdrawn and not self.cancel.is_set():
                return HostGone()  # it never ran: go again elsewhere
            return not_run_canceled()
        out, err = self.stdout or empty_output(), self.stderr or empty_output()
        return CallResult("exit", self.answer, False, None, out, err, self.wall, self.waits)


class Host:
    """One `python_host` process and the pipes to it. Not thread-safe: the pump calls
    `send`, `step` and `freeze` under its lock, and `finish` once nobody else holds it."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.calls = 0  # requests sent
        self.last_used = time.monotonic()
        self.dead = False
        self.exited = False  # the host is gone (its calls are for `finish`)
        self.retiring = False  # it answered retire or stale: it runs nothing more
        self.garbled = False  # its answer pipe carried what is not its answers
        self.closing = False  # the pump is ending it: no call may be sent to it
        self.taken = 0  # calls the pool gave it (on the pool's lock; `calls` were sent)
        self._unread_at_end = 0
        self.flights: dict[int, Flight] = {}  # by call number, in the order sent
        token = os.urandom(TOKEN_BYTES)
        req_r, req_w = os.pipe()
        res_r, res_w = os.pipe()
        try:
            argv = [sys.executable, "-u", "-P", "-m", HOST_MODULE]
            self.proc = subprocess.Popen(
                [*argv, str(req_r), str(res_w), token.hex()],
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
        self._streams = {self.out_fd: Stream(token), self.err_fd: Stream(token)}
        self.poller = select.poll()  # for finish's drains
        for fd in (res_r, self.out_fd, self.err_fd):
            os.set_blocking(fd, False)
            self.poller.register(fd, _IN)
        self.pidfd = -1  # readable once the host exits (Linux >= 5.3); else we poll waitid
        if hasattr(os, "pidfd_open"):
            with contextlib.suppress(OSError):
                self.pidfd = os.pidfd_open(self.proc.pid)
                self.poller.register(self.pidfd, select.POLLIN)
        self._open = {res_r, self.out_fd, self.err_fd}
        os.set_blocking(req_w, False)  # requests larger than the pipe are written in steps
        self._answers = bytearray()
        self._taken_back: set[int] = set()
        self._outgoing = bytearray()
        self._sent = 0  # bytes of requests written so far

    @property
    def pid(self) -> int:
        return self.proc.pid

    # -- calls, in steps: the pool's pump (host_io) drives them ------------------------

    def send(
        self, request: bytes, cancel: threading.Event, timeout: float | None, owner: object
    ) -> Flight:
        """Queue a call's request and write as much as the pipe takes now (`writing` says
        whether some is left for `step`). If the host is gone, `exited` is set: the call
        is `finish`'s, which tells whether it ran."""
        self.calls += 1
        frame = len(request).to_bytes(4, "big") + _number(self.calls) + request
        flight = Flight(self.calls, self._sent + len(self._outgoing), cancel, timeout)
        flight.owner = owner
        if self.head is None:  # the host starts it now
            flight.started = time.monotonic()
        self.flights[flight.number] = flight
        self._outgoing += frame
        self._write_more()
        return flight

    def take_back(self, flights: list[Flight]) -> list[Flight]:
        """Skip `flights`, calls behind the head, while the host is frozen on an
        unanswered head (so none of them started): the ones whose skip frame is in the
        pipe now are off `flights` and answered SKIPPED (the host reads everything in
        its pipe before it starts a call, so it never runs them); the others come back
        SKIPPED from the host when it gets to them."""
        ends = []
        for flight in flights:
            flight.skip_sent = True
            self._outgoing += (0).to_bytes(4, "big") + _number(flight.number)
            ends.append((flight, self._sent + len(self._outgoing)))
        self._write_more()
        back = []
        for flight, end in ends:
            if self._sent >= end:
                del self.flights[flight.number]
                self._taken_back.add(flight.number)  # its SKIPPED answer is to come
                flight.answer = SKIPPED
                back.append(flight)
        return back

    def thaw(self) -> None:
        """Let a frozen host go on."""
        self._killpg(signal.SIGCONT)

    @property
    def writing(self) -> bool:
        """Whether part of a request still waits for room in the pipe."""
        return bool(self._outgoing)

    @property
    def head(self) -> Flight | None:
        """The oldest call not answered: the one the host runs (or is about to)."""
        for flight in self.flights.values():
            if flight.answer is None:
                return flight
        return None

    def fds(self) -> tuple[int, ...]:
        """The descriptors to watch for reading (pidfd included)."""
        return tuple(self._open) + ((self.pidfd,) if self.pidfd >= 0 else ())

    def step(self, fd: int) -> list[Flight]:
        """Take what `fd` is ready for; the calls now complete (off `flights`). Any of
        the answer pipe, stdout and stderr reads all three, the answers first: the host
        writes a call's markers before its answer, so an answer read finds them in."""
        if fd == self.pidfd:
            self.exited = True
        elif fd == self.req_fd:
            self._write_more()
        else:
            if self.res_fd in self._open:
                if not self._read(self.res_fd, self._answers):
                    self.exited = True  # nobody holds the answer pipe: the host is gone
                self._parse()
            for stream_fd in self._streams:
                if stream_fd in self._open:
                    self._take_output(stream_fd)
        return self.completed()

    def reads(self, fd: int) -> bool:
        """Whether `step(fd)` reads the answers and output (all of them at once)."""
        return fd != self.pidfd and fd != self.req_fd

    def check_exited(self) -> bool:
        """Without a pidfd, whether the host is gone (then `exited` is set)."""
        if self.pidfd < 0 and not self.exited:
            self.exited = self._exited()
        return self.exited

    def freeze(self) -> bool:
        """Stop the host (SIGSTOP) and take its answers: True if its head call is still
        unanswered then (it runs, and may be killed for it); else it goes on (SIGCONT)
        and `completed` has what answered."""
        self._killpg(signal.SIGSTOP)
        end = time.monotonic() + _FREEZE_WAIT
        while time.monotonic() < end and not self._stopped():
            time.sleep(0.0005)
        head = self.head
        if self.res_fd in self._open:
            self._read(self.res_fd, self._answers)
            self._parse()
        answering = bool(self._answers)  # an answer it was writing when it stopped
        if head is None or head.answer is not None or answering:
            self.thaw()
            return False
        return True

    def finish(self, ended_by: EndedBy) -> list[tuple[Flight, CallResult | HostGone]]:
        """End the host and tell how each of its calls ended (this blocks, TERM_GRACE +
        DRAIN_GRACE at most). "timeout"/"cancel": the head call's (the host was frozen
        on it); its group gets SIGTERM, then SIGKILL. "exit": the host died, retired or
        garbled its answers."""
        head = self.head
        if ended_by != "exit":
            self._killpg(signal.SIGTERM)
            self._killpg(signal.SIGCONT)  # (frozen: a stopped process takes no SIGTERM)
            self._term_grace()
        code = self._end()
        if ended_by == "exit" and self.res_fd in self._open:
            self._read(self.res_fd, self._answers)  # what it wrote before it went
            self._parse()
        outputs = [self._streams[fd] for fd in (self.out_fd, self.err_fd)]
        for stream in outputs:  # the output after the last marker: the call that ran
            rest = stream.rest()
            owner = next(
                (
                    f
                    for f in self.flights.values()
                    if (f.stdout if stream is outputs[0] else f.stderr) is None
                    and f.answer != SKIPPED
                ),
                None,
            )
            if owner is not None:
                if stream is outputs[0]:
                    owner.stdout = rest
                else:
                    owner.stderr = rest
        endings: list[tuple[Flight, CallResult | HostGone]] = []
        ran = head if ended_by != "exit" else self._ran(self.head)
        for flight in self.flights.values():
            out, err = flight.stdout or empty_output(), flight.stderr or empty_output()
            if flight.answer is not None and not (ended_by != "exit" and flight is head):
                endings.append((flight, flight.result()))
            elif self.garbled:  # what ran after the garbage is unknown: none runs again
                endings.append((flight, CallResult("exit", None, True, code, out, err)))
            elif flight is ran:
                how: EndedBy = "exit" if ended_by == "exit" else ended_by
                endings.append((flight, CallResult(how, None, False, code, out, err)))
            else:
                endings.append((flight, HostGone()))  # it never started
        self.flights.clear()
        return endings

    def _ran(self, head: Flight | None) -> Flight | None:
        """Whether the head call ran on a host that exited (None if it never started)."""
        if head is None or self.retiring:
            return None
        consumed = self._sent - self._unread_at_end
        return head if consumed > head.offset else None

    def completed(self) -> list[Flight]:
        """The calls now complete, off `flights`."""
        done = [f for f in self.flights.values() if f.complete]
        for flight in done:
            del self.flights[flight.number]
        if done:
            self.last_used = time.monotonic()
        return done

    def _parse(self) -> None:
        """Take the complete answer frames; mark the host garbled on one that is not ours."""
        buf = self._answers
        at = 0
        while not self.garbled and len(buf) - at >= _HEADER:
            size = int.from_bytes(buf[at : at + 4], "big")
            number = int.from_bytes(buf[at + 4 : at + 8], "big")
            if number in self._taken_back and size == len(SKIPPED):
                if len(buf) - at < _HEADER + size:
                    break
                if buf[at + _HEADER : at + _HEADER + size] != SKIPPED:
                    self.garbled = True
                    break
                self._taken_back.discard(number)
                at += _HEADER + size
                continue
            flight = self.flights.get(number)
            if size > ANSWER_LIMIT or flight is None or flight.answer is not None:
                self.garbled = True  # not (only) the host's answers: it is retired
                break
            if len(buf) - at < _HEADER + size:
                break
            flight.answer = bytes(buf[at + _HEADER : at + _HEADER + size])
            flight.wall = int.from_bytes(buf[at + 8 : at + 12], "big") / 1e6
            flight.waits = int.from_bytes(buf[at + 12 : at + 16], "big")
            if flight.answer == STALE or flight.answer.startswith(RETIRED):
                self.retiring = True  # it runs nothing more: finish tells the rest
            at += _HEADER + size
        if at:
            del buf[:at]
            head = self.head
            if head is not None and head.started == 0.0:
                head.started = time.monotonic()  # its timeout counts from now

    def _write_more(self) -> None:
        try:
            while self._outgoing:
                n = os.write(self.req_fd, self._outgoing)
                del self._outgoing[:n]
                self._sent += n
        except BlockingIOError:
            pass
        except OSError:  # the host is gone (EPIPE): finish tells its calls
            self.exited = True

    def _read(self, fd: int, into: bytearray) -> bool:
        """Read what `fd` has; False at EOF (then it is unregistered)."""
        for data in self._chunks(fd):
            into += data
            if len(into) > ANSWER_LIMIT + _HEADER:
                return True  # _parse sees the oversized frame
        return fd in self._open

    def _read_stream(self, fd: int, stream: Stream) -> list[tuple[int, Capture]]:
        cuts: list[tuple[int, Capture]] = []
        for data in self._chunks(fd):
            cuts += stream.feed(data)
        return cuts

    def _chunks(self, fd: int) -> Iterator[bytes]:
        """What `fd` holds now, a read at a time; at EOF it leaves `_open` and the poller."""
        while True:
            try:
                data = os.read(fd, _READ_SIZE)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                if fd in self._open:
                    self._open.discard(fd)
                    self.poller.unregister(fd)
                return
            yield data
            if len(data) < _READ_SIZE:
                return

    def _exited(self) -> bool:
        try:
            info = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return True
        return info is not None

    def _stopped(self) -> bool:
        try:
            info = os.waitid(os.P_PID, self.pid, os.WSTOPPED | os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return True
        return info is not None

    def _term_grace(self) -> None:
        """Timeout or cancel: after SIGTERM, wait the grace period for the host to go,
        taking its output (a late answer does not count)."""
        end = time.monotonic() + TERM_GRACE
        while time.monotonic() < end:
            exited = False
            for fd, _ in self.poller.poll(10):
                if fd == self.pidfd:
                    exited = True
                elif fd == self.res_fd:
                    scratch = bytearray()
                    self._read(fd, scratch)
                elif fd in self._streams:
                    self._take_output(fd)
            if exited or (self.pidfd < 0 and self._exited()):
                break

    def _take_output(self, fd: int) -> None:
        for number, output in self._read_stream(fd, self._streams[fd]):
            flight = self.flights.get(number)
            if flight is not None:
                if fd == self.out_fd:
                    flight.stdout = output
                else:
                    flight.stderr = output

    def _end(self) -> int | None:
        """The host is gone or going: kill its group, take its last output, reap it."""
        self._killpg(signal.SIGKILL)
        if self.pidfd >= 0:  # readable for good now: no busy loop
            with contextlib.suppress(KeyError, ValueError):
                self.poller.unregister(self.pidfd)
        end = time.monotonic() + DRAIN_GRACE
        while (self.out_fd in self._open or self.err_fd in self._open) and time.monotonic() < end:
            for fd, _ in self.poller.poll(10):
                if fd in self._streams:
                    self._take_output(fd)
                elif fd == self.res_fd:
                    self._read(fd, self._answers)
        self._unread_at_end = self._unread()  # (the host is gone: it reads no more)
        return self._reap()

    # -- the end ------------------------------------------------------------------------

    def _unread(self) -> int:
        """Request bytes still in the pipe (the host never read them)."""
        try:
            return _pending(self.req_fd)
        except OSError:
            return 0

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


def _pending(fd: int) -> int:
    """Bytes waiting in the pipe `fd` belongs to (Linux answers FIONREAD on either end)."""
    import array
    import fcntl
    import termios

    buf = array.array("i", [0])
    fcntl.ioctl(fd, termios.FIONREAD, buf, True)
    return buf[0]
