"""The child side of the python runner: a warm host serving many calls, one at a time.

Started by `python_pool` as
`python -u -P -m attune_pg.actions.python_host <req_fd> <res_fd> <token_hex>`
in a session of its own, stdin on /dev/null, stdout and stderr on pipes the worker drains.

Protocol: a frame is a 4-byte big-endian length, a 4-byte call number, then that many
bytes of UTF-8 JSON. An answer carries its request's call number, so an answer that is not
the host's own (an action writing into the pipe) cannot pass for another call's, and,
before its JSON, the call's wall time in microseconds and how often the call blocked
(voluntary context switches), 4 bytes each: the pool keeps quick calls that never wait
on a few hosts.

- The worker writes request frames to `<req_fd>`: `{"file": <absolute .py path>,
  "function": <name>, "input": {...}, "env": {<per-call variables>}}`. It may write the
  next ones before a call is answered (a lane's pipeline, see `python_pool`): the host
  runs them one at a time, in order. A frame of length 0 asks the host to skip that call
  number if it has not started it (it answers `{"skipped": true}`); one that started
  runs on. EOF on `<req_fd>` ends the host once what it read is answered.
- The host answers on `<res_fd>` with exactly one frame per call: `{"ok": true, "result":
  ...}` or `{"ok": false, "error": {"type", "message", "traceback"?}}`, with `"retire":
  <reason>` when it must serve no further call (it exits; the worker kills its process
  group), or `{"stale": true}` without running anything when a module it imported for
  this directory changed on disk (the worker runs the call on a fresh host).
- Before it answers a call it ran (and did not retire after), the host writes a marker,
  `<token><call number>` (the token is `<token_hex>`, 16 random bytes the worker chose
  for this host), to its stdout and to its stderr: everything before the marker on a
  stream, after the last one, is that call's output. So the next call may print at once.
- Exiting without an answer (os._exit in the action, a segfault, a kill) is the worker's
  to report.

Between calls the host puts back what a call may have changed and a later call would
otherwise see: `os.environ` (the start environment plus the call's `env`), the working
directory, the umask, `sys.argv`, `sys.path`, `sys.stdin/stdout/stderr` and the handlers
of the common signals (see `_RESET_SIGNALS`). What it cannot put back ends the host
(`retire`): a thread still running, fds 0-2 replaced or closed, a MemoryError, a module
that failed to import. Processes the call left running are killed (the host is a child
subreaper, so that includes orphans and processes that started a session of their own)
before it answers. Imported modules (and so their globals) are kept: that is
what makes the host warm. docs/actions.md lists these rules for action authors.

Keep this module's imports small: they are the start-up cost of every host.
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # the C module: no enum per call
import contextlib
import faulthandler
import importlib.util
import json
import os
import resource
import signal
import sys
import time

from attune_pg.actions.results import make_error, text_problem

TYPE_CHECKING = False  # as typing's, which costs an import at every host's start-up
if TYPE_CHECKING:
    from collections.abc import Callable
    from types import ModuleType
    from typing import Any

_TRACEBACK_CHARS = 65536
_HEADER = 8  # of a request: length, call number (an answer's adds wall µs and waits)
#: Answers the worker reads as more than a result: a call skipped, a call refused because
#: this directory's modules changed, and how a retiring answer begins.
SKIPPED = b'{"skipped": true}'
STALE = b'{"stale": true}'
RETIRED = b'{"retire"'
#: Handlers an action may change that the host restores after every call.
_RESET_SIGNALS = tuple(
    getattr(signal, name)
    for name in (
        "SIGTERM",
        "SIGINT",
        "SIGHUP",
        "SIGALRM",
        "SIGCHLD",
        "SIGPIPE",
        "SIGUSR1",
        "SIGUSR2",
    )
    if hasattr(signal, name)
)
_PR_SET_CHILD_SUBREAPER = 36


class Host:
    """The state a host keeps between calls, and the baseline it restores."""

    def __init__(self) -> None:
        self.env = dict(os.environ)
        self.cwd = os.getcwd()
        self.path = list(sys.path)
        self.umask = os.umask(0o022)
        os.umask(self.umask)
        self.handlers = {sig: _signal.getsignal(sig) for sig in _RESET_SIGNALS}
        self.stdio = [_identity(fd) for fd in (0, 1, 2)]
        self.threads = _thread_count()
        self.call_env = self.env
        self.call_keys: set[str] = set()
        self.call_data = dict(_environ_data())
        self.modules: dict[str, ModuleType] = {}
        # Files of modules imported from each action directory, with their stat signature:
        # a change to any of them makes the host stale for that directory.
        self.sources: dict[str, dict[str, tuple[int, int, int]]] = {}
        self._module_count = 0

    # -- one call -----------------------------------------------------------------------

    def serve(self, request: dict[str, Any]) -> bytes:
        path, function = request["file"], request["function"]
        directory = os.path.dirname(path)
        if self._stale(directory):
            return STALE
        self._enter(directory, path, request.get("env") or {})
        payload, retire = _run(self, path, function, request.get("input") or {})
        retire = self._leave(directory) or retire
        if retire:
            return b'{"retire": ' + json.dumps(retire).encode() + b", " + payload[1:]
        return payload

    def _enter(self, directory: str, path: str, env: dict[str, str]) -> None:
        for key in self.call_keys - env.keys():  # the last call's own variables
            if key in self.env:
                os.environ[key] = self.env[key]
            else:
                os.environ.pop(key, None)
        last = self.call_env
        for key, value in env.items():
            if last.get(key) != value:  # os.environ is the last call's again (_leave)
                os.environ[key] = value
        self.call_keys = set(env)
        self.call_env = {**self.env, **env}
        self.call_data = dict(_environ_data())
        sys.argv = [path]
        sys.path[:] = [directory, *self.path]

    def _leave(self, directory: str) -> str:
        """Put back what the call changed; the reason to retire if something cannot be."""
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        sys.stdin, sys.stdout, sys.stderr = sys.__stdin__, sys.__stdout__, sys.__stderr__
        if _environ_data() != self.call_data:
            os.environ.clear()
            os.environ.update(self.call_env)
        try:
            if os.getcwd() != self.cwd:
                os.chdir(self.cwd)
        except OSError:  # the directory it left us in was removed
            os.chdir(self.cwd)
        os.umask(self.umask)
        with contextlib.suppress(OSError):
            signal.setitimer(signal.ITIMER_REAL, 0)
        for sig, handler in self.handlers.items():
            if _signal.getsignal(sig) != handler and handler is not None:
                _signal.signal(sig, handler)
        self._note_sources(directory)
        if _children_left() and not _sweep_children():
            return "the action left a process running"
        if _thread_count() > self.threads:
            return "the action left a thread running"
        if any(s is None or s.closed for s in (sys.__stdout__, sys.__stderr__)):
            return "the action closed stdout or stderr"
        if [_identity(fd) for fd in (0, 1, 2)] != self.stdio:
            return "the action replaced file descriptor 0, 1 or 2"
        return ""

    # -- warm modules -------------------------------------------------------------------

    def load(self, path: str, function: str) -> Callable[..., Any]:
        module = self.modules.get(path)
        if module is None:
            module = self._import(path)
        func = getattr(module, function, None)
        if not callable(func):
            raise _NoFunction(f"{path} has no function {function!r}")
        return func  # type: ignore[no-any-return]

    def _import(self, path: str) -> ModuleType:
        name = "_attune_action_" + os.path.splitext(os.path.basename(path))[0]
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot import {path}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(name, None)
            raise
        self.modules[path] = module
        return module

    def _note_sources(self, directory: str) -> None:
        if len(sys.modules) == self._module_count:
            return
        self._module_count = len(sys.modules)
        prefix = directory + os.sep
        known = self.sources.setdefault(directory, {})
        for module in list(sys.modules.values()):
            file = getattr(module, "__file__", None)
            if isinstance(file, str) and file.startswith(prefix) and file not in known:
                known[file] = _signature(file)

    def _stale(self, directory: str) -> bool:
        return any(_signature(f) != sig for f, sig in self.sources.get(directory, {}).items())


def main() -> None:
    faulthandler.enable()  # a segfault in the action leaves its Python stack on stderr
    req_fd, res_fd = int(sys.argv[-3]), int(sys.argv[-2])
    token = bytes.fromhex(sys.argv[-1])
    for fd in (req_fd, res_fd):
        os.set_inheritable(fd, False)  # the action's own subprocesses must not hold them
    _become_subreaper()
    host = Host()
    requests = _Requests(req_fd, res_fd)
    while True:
        got = requests.next()
        if got is None:
            break
        call, frame = got
        wall, waits = time.perf_counter(), _waits()
        try:
            request = json.loads(frame)
            payload = host.serve(request)
        except (ValueError, KeyError, TypeError) as exc:
            error = make_error("ActionError", f"bad request to python host: {exc}")
            payload = b'{"retire": "bad request", ' + _failure(error)[1:]
        retire = payload.startswith(RETIRED)
        if not retire:  # (then fd 1 or 2 may not be ours: the exit ends the call's output)
            # Before the answer: a worker that has the answer finds them in the pipes.
            marker = token + call.to_bytes(4, "big")
            for fd in (1, 2):
                with contextlib.suppress(OSError):  # the worker is gone
                    _write_all(fd, marker)
        _write_frame(res_fd, call, payload, time.perf_counter() - wall, _waits() - waits)
        if retire:
            break
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a closed or broken stream must not block exit
            stream.flush()
    os._exit(0)  # threads or atexit hooks an action left behind cannot keep us alive


class _Requests:
    """The request frames, read ahead: before each call the host takes all the pipe
    holds, so that a skip frame in it reaches the call it names before that starts."""

    def __init__(self, fd: int, res_fd: int) -> None:
        import select
        from collections import deque

        self.fd, self.res_fd = fd, res_fd
        self.buf = bytearray()
        self.queue: deque[tuple[int, bytes]] = deque()
        self.eof = False
        self.poller = select.poll()
        self.poller.register(fd, select.POLLIN)

    def next(self) -> tuple[int, bytes] | None:
        """The next call to run, or None at EOF with nothing left to run."""
        while not self.queue and not self.eof:
            self._read()  # blocks: nothing to run
        while not self.eof and self.poller.poll(0):  # all of it: a skip may be last
            self._read()
        return self.queue.popleft() if self.queue else None

    def _read(self) -> None:
        data = os.read(self.fd, 1 << 16)
        if not data:
            self.eof = True
            return
        buf = self.buf
        buf += data
        at = 0
        while len(buf) - at >= _HEADER:
            size = int.from_bytes(buf[at : at + 4], "big")
            if len(buf) - at < _HEADER + size:
                break
            call = int.from_bytes(buf[at + 4 : at + 8], "big")
            if size:
                self.queue.append((call, bytes(buf[at + _HEADER : at + _HEADER + size])))
            else:
                self._skip(call)
            at += _HEADER + size
        del buf[:at]

    def _skip(self, call: int) -> None:
        for i, (queued, _) in enumerate(self.queue):
            if queued == call:
                del self.queue[i]
                _write_frame(self.res_fd, call, SKIPPED, 0.0, 0)
                return


def _run(host: Host, path: str, function: str, kwargs: dict[str, Any]) -> tuple[bytes, str]:
    """The answer to one call, and the reason to retire the host after it ("" if none)."""
    try:
        func = host.load(path, function)
    except _NoFunction as exc:
        return _failure(make_error("ActionError", str(exc))), ""
    except BaseException as exc:  # half-run module code may have left anything behind
        return _failure(_error_of(exc)), f"importing {os.path.basename(path)} failed"
    try:
        value = func(**kwargs)
    except MemoryError as exc:
        return _failure(_error_of(exc)), "the action ran out of memory"
    except BaseException as exc:
        return _failure(_error_of(exc)), ""
    try:
        text = json.dumps(value, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        return _failure(make_error("ResultNotJSON", f"result is not JSON: {exc}")), ""
    problem = text_problem(text)
    if problem is not None:
        return _failure(make_error(*problem)), ""
    return b'{"ok": true, "result": ' + text.encode("utf-8") + b"}", ""


class _NoFunction(Exception):
    pass


def _exit_message(code: object) -> str:
    if code is None:
        return "exit code 0"
    if isinstance(code, int):
        return f"exit code {code}"
    return f"exit code 1: {code}"


def _error_of(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, SystemExit):
        return make_error("SystemExit", _exit_message(exc.code))
    import traceback  # only on failure: it is a costly import

    type_ = type(exc).__name__
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next  # the host's own frames are noise to the action's author
    try:
        text = "".join(traceback.format_exception(type(exc), exc, tb))
        message = str(exc)
    except BaseException:  # a __str__ that raises
        text, message = "", repr(type(exc))
    return make_error(type_, message or type_, traceback=text[-_TRACEBACK_CHARS:])


def _failure(error: dict[str, Any]) -> bytes:
    try:
        return json.dumps({"ok": False, "error": error}).encode("utf-8")
    except (TypeError, ValueError):
        fallback = {"type": str(error.get("type")), "message": "unprintable error"}
        return json.dumps({"ok": False, "error": fallback}).encode("utf-8")


# -- process facts ------------------------------------------------------------------------


def _environ_data() -> dict[bytes, bytes]:
    # os.environ's encoded store: comparing it costs a microsecond, where decoding every
    # variable through os.environ costs thirty.
    data = getattr(os.environ, "_data", None)
    if isinstance(data, dict):
        return data
    return {k.encode(): v.encode() for k, v in os.environ.items()}


def _children_left() -> bool:
    """Reap the action's exited children; whether any still runs.

    The host is a child subreaper (Linux), so orphaned grandchildren count too."""
    try:
        while True:
            pid, _ = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                return True
    except ChildProcessError:
        return False


def _sweep_children(within: float = 2.0) -> bool:
    """SIGKILL every process the action left behind, and reap them; False if some remain.

    As a subreaper the host inherits the orphans of the processes it kills, so the loop
    reaches the whole tree, even the parts that started a session of their own."""
    import time

    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not _children_left():
            return True
        pids = _child_pids()
        if pids is None:
            return False  # no /proc: the worker's kill of our group has to do
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.001)
    return not _children_left()


def _child_pids() -> list[int] | None:
    pids: list[int] = []
    try:
        for tid in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{tid}/children") as f:
                pids.extend(int(p) for p in f.read().split())
    except (OSError, ValueError):
        return None
    return pids


def _thread_count() -> int:
    """Threads of this process, native ones included (procfs: the task directory's link
    count is two plus the threads; a stat costs a fifth of a listdir)."""
    try:
        links = os.stat("/proc/self/task").st_nlink
        if links > 2:
            return links - 2
        return len(os.listdir("/proc/self/task"))
    except OSError:
        import threading

        return threading.active_count()


def _identity(fd: int) -> tuple[int, int] | None:
    try:
        st = os.fstat(fd)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _signature(path: str) -> tuple[int, int, int]:
    try:
        st = os.stat(path)
    except OSError:
        return (0, 0, 0)
    return st.st_mtime_ns, st.st_size, st.st_ino


def _become_subreaper() -> None:
    """Orphans of the action's processes become our children, so `_children_left` sees them."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(Exception):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def _waits() -> int:
    """How often this process has blocked so far (voluntary context switches: a sleep, a
    read that had to wait; being preempted does not count)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw


def _write_frame(fd: int, call: int, payload: bytes, wall: float, waits: int) -> None:
    header = len(payload).to_bytes(4, "big") + call.to_bytes(4, "big")
    for number in (int(wall * 1e6), waits):
        header += min(max(number, 0), 0xFFFFFFFF).to_bytes(4, "big")
    _write_all(fd, header + payload)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


if __name__ == "__main__":
    main()
