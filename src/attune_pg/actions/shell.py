"""The shell runner: run a command as an argv list, never through a shell.

Two forms:

- **`core.local`** (no `entry_point`): input `cmd` is the argv, either a list of strings or a
  string split with `shlex.split` (quotes group words; `$(...)`, `;`, `|`, `*` are plain
  characters, since no shell ever sees them).
- **A pack action with `runner: shell`**: `entry_point` is an argv prefix (a string,
  `shlex.split`), and input `args` (a list) is appended to it. A prefix whose first word is
  a relative path with a slash (`scripts/deploy.sh`) is found in the pack's `actions/`
  directory. Every other input (not `args`, `cwd`, `env`, `stdin`) is exported to the
  process as `ATTUNE_PARAM_<NAME>` (strings as they are, anything else as JSON).

Both take optional `cwd`, `env` (a map added to the worker's environment; a null value
unsets a variable) and `stdin` (a string). The result is `{stdout, stderr, return_code}`,
decoded as UTF-8 with replacement characters. Output beyond what fits the result limit is
cut, with a note at the cut saying how much there was. A non-zero return code fails the
action with the same result and error `NonZeroExit`.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import threading
from typing import Any

from attune_pg.actions.outcome import (
    MAX_RESULT_BYTES,
    ActionContext,
    ActionOutcome,
    canceled,
    checked,
    decode_output,
    failed,
    human_size,
    succeeded,
    timed_out,
)
from attune_pg.actions.process import Capture, action_env, pack_file, run_process
from attune_pg.spec.model import ActionSpec

_RESERVED_INPUTS = frozenset({"cmd", "args", "cwd", "env", "stdin"})
_NOT_ENV_CHAR = re.compile(r"[^A-Za-z0-9_]")


class _BadInput(ValueError):
    pass


def run(
    action: ActionSpec, input: dict[str, Any], context: ActionContext, cancel: threading.Event
) -> ActionOutcome:
    try:
        argv = _argv(action, input, context)
        cwd = _optional_str(input, "cwd")
        stdin = _optional_str(input, "stdin")
        env = action_env(context)
        _apply_env(env, action, input)
    except _BadInput as exc:
        return failed("InvalidInput", f"action {action.ref}: {exc}")
    except ValueError as exc:
        return failed("ActionError", str(exc))
    if cwd is not None and not os.path.isdir(cwd):
        return failed("InvalidInput", f"working directory {cwd!r} does not exist")
    try:
        proc = run_process(
            argv,
            cancel=cancel,
            timeout=context.timeout,
            env=env,
            cwd=cwd,
            stdin=stdin.encode("utf-8") if stdin else None,
            output_limit=MAX_RESULT_BYTES,
            keep="head",
        )
    except FileNotFoundError:
        return failed("CommandNotFound", f"command not found: {argv[0]}")
    except PermissionError:
        return failed("CommandNotExecutable", f"cannot execute {argv[0]}: permission denied")
    except OSError as exc:
        return failed("OSError", f"cannot run {argv[0]}: {exc.strerror or exc}")

    result = _fit(proc.stdout, proc.stderr, proc.return_code)
    if proc.ended_by == "cancel":
        return checked(canceled(result))
    if proc.ended_by == "timeout":
        assert context.timeout is not None
        return checked(timed_out(context.timeout, result))
    if proc.return_code != 0:
        return checked(
            failed("NonZeroExit", f"command exited with code {proc.return_code}", result)
        )
    return checked(succeeded(result))


def _argv(action: ActionSpec, input: dict[str, Any], context: ActionContext) -> list[str]:
    if action.entry_point is None or not action.entry_point.strip():
        argv = _words(input.get("cmd"), "cmd")
    else:
        prefix = _words(action.entry_point, "entry_point")
        first = prefix[0]
        if "/" in first and not os.path.isabs(first):
            prefix[0] = pack_file(context.pack_path or action.pack_path, first, action.ref)
        args = input.get("args")
        argv = prefix + ([] if args is None else _words(args, "args", split=False))
    if not argv:
        raise _BadInput("the command is empty")
    return argv


def _words(value: Any, name: str, *, split: bool = True) -> list[str]:
    if isinstance(value, str) and split:
        try:
            return shlex.split(value)
        except ValueError as exc:
            raise _BadInput(f"{name}: cannot split {value!r}: {exc}") from None
    if not isinstance(value, list):
        expected = "a list of strings or a string" if split else "a list of strings"
        raise _BadInput(f"{name} must be {expected}, got {type(value).__name__}")
    words = []
    for i, word in enumerate(value):
        if isinstance(word, bool) or not isinstance(word, (str, int, float)):
            raise _BadInput(f"{name}[{i}] must be a string, got {type(word).__name__}")
        words.append(str(word))
    return words


def _optional_str(input: dict[str, Any], name: str) -> str | None:
    value = input.get(name)
    if value is not None and not isinstance(value, str):
        raise _BadInput(f"{name} must be a string, got {type(value).__name__}")
    return value


def _apply_env(env: dict[str, str], action: ActionSpec, input: dict[str, Any]) -> None:
    for key, value in input.items():
        if key not in _RESERVED_INPUTS:
            name = "ATTUNE_PARAM_" + _NOT_ENV_CHAR.sub("_", key).upper()
            env[name] = value if isinstance(value, str) else json.dumps(value)
    extra = input.get("env")
    if extra is None:
        return
    if not isinstance(extra, dict):
        raise _BadInput(f"env must be a map, got {type(extra).__name__}")
    for key, value in extra.items():
        if not key or "=" in key or "\x00" in key:
            raise _BadInput(f"env: {key!r} is not a valid variable name")
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value if isinstance(value, str) else json.dumps(value)


def _fit(stdout: Capture, stderr: Capture, return_code: int | None) -> dict[str, Any]:
    """The result dict, its outputs cut (with a note) until its JSON fits the result limit."""
    texts = {"stdout": decode_output(stdout.data), "stderr": decode_output(stderr.data)}
    totals = {"stdout": stdout.total, "stderr": stderr.total}
    cut = {"stdout": stdout.truncated, "stderr": stderr.truncated}
    budget = MAX_RESULT_BYTES - 1024  # room for keys, return code and notes
    for _ in range(10):
        sizes = {k: _json_size(v) for k, v in texts.items()}
        excess = sum(sizes.values()) - budget
        if excess <= 0:
            break
        key = max(sizes, key=lambda k: sizes[k])
        text = texts[key]
        ratio = sizes[key] / max(1, len(text))  # JSON bytes per character
        keep = max(0, len(text) - int(excess / ratio) - 1)
        texts[key] = text[:keep]
        cut[key] = True
    result: dict[str, Any] = {}
    for key, text in texts.items():
        if cut[key]:
            kept = len(text.encode("utf-8"))
            text += (
                f"\n[output cut: {human_size(totals[key])} in all, "
                f"only the first {human_size(kept)} kept]"
            )
        result[key] = text
    result["return_code"] = return_code
    return result


def _json_size(text: str) -> int:
    return len(json.dumps(text, ensure_ascii=False).encode("utf-8"))
