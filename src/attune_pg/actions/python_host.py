"""The child side of the python runner: `python -m attune_pg.actions.python_host <fd>`.

Protocol (see `python_runner`):
- stdin carries one JSON request `{"file": <absolute .py path>, "function": <name>,
  "input": {...}}`; the host reads it to EOF, then points fd 0 at /dev/null.
- The host imports the file by path (its directory first on `sys.path`, so an action may
  import helper modules next to it), calls `function(**input)` and writes exactly one JSON
  object to fd `<fd>`: `{"ok": true, "result": ...}` or `{"ok": false, "error":
  {"type", "message", "traceback"?}}`. The action's own prints go to stdout/stderr, which
  the parent captures separately.
- Then it exits at once with `os._exit(0)`, so threads or atexit hooks the action left
  behind cannot keep it alive. Exiting without writing a result (os._exit in the action, a
  crash, a kill) is the parent's to report.

Keep this module's imports small: it is the start-up cost of every python action.
"""

from __future__ import annotations

import contextlib
import faulthandler
import importlib.util
import json
import os
import sys
from collections.abc import Callable
from typing import Any

from attune_pg.actions.outcome import make_error, text_problem

_TRACEBACK_CHARS = 65536


def main() -> None:
    faulthandler.enable()  # a segfault in the action leaves its Python stack on stderr
    fd = int(sys.argv[-1])
    os.set_inheritable(fd, False)  # the action's own subprocesses must not hold it open
    with os.fdopen(fd, "wb") as channel:
        try:
            request = json.loads(sys.stdin.buffer.read())
        except ValueError as exc:
            payload = _failure(make_error("ActionError", f"bad request to python host: {exc}"))
        else:
            _detach_stdin()
            payload = _run(request["file"], request["function"], request.get("input") or {})
        channel.write(payload)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a closed or broken stream must not block exit
            stream.flush()
    os._exit(0)


def _run(path: str, function: str, kwargs: dict[str, Any]) -> bytes:
    try:
        func = _load(path, function)
        value = func(**kwargs)
    except SystemExit as exc:
        return _failure(make_error("SystemExit", _exit_message(exc.code)))
    except BaseException as exc:
        return _failure(_describe(exc))
    try:
        text = json.dumps(value, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        return _failure(make_error("ResultNotJSON", f"result is not JSON: {exc}"))
    problem = text_problem(text)
    if problem is not None:
        return _failure(make_error(*problem))
    return b'{"ok": true, "result": ' + text.encode("utf-8") + b"}"


def _load(path: str, function: str) -> Callable[..., Any]:
    directory, filename = os.path.split(path)
    sys.path.insert(0, directory)
    sys.argv = [path]
    name = "_attune_action_" + os.path.splitext(filename)[0]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    func = getattr(module, function, None)
    if not callable(func):
        raise _NoFunction(f"{path} has no function {function!r}")
    return func  # type: ignore[no-any-return]


class _NoFunction(Exception):
    pass


def _exit_message(code: object) -> str:
    if code is None:
        return "exit code 0"
    if isinstance(code, int):
        return f"exit code {code}"
    return f"exit code 1: {code}"


def _describe(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, _NoFunction):
        return make_error("ActionError", str(exc))
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


def _detach_stdin() -> None:
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)


if __name__ == "__main__":
    main()
