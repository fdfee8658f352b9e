"""The http runner (`core.http_request`): one HTTP(S) request with `urllib.request`.

Input: `url` (http or https only), `method` (default GET), `headers` (map), `body` (a string
is sent as UTF-8; any other JSON value is sent as JSON with `Content-Type:
application/json` unless a content type is given) and `timeout` (seconds).

Result: `{status_code, headers, body, json}`. `body` is the response decoded with its
charset (UTF-8 by default, replacement characters for bad bytes); `json` is the parsed body
when the response says it is JSON, else null. A status of 400 or more fails the action with
the result kept. A response body over the result limit fails the action.

The request runs in a daemon thread while the calling thread watches the deadline (the
smaller of the input `timeout` and the attempt's, `DEFAULT_TIMEOUT` if neither is set) and
the cancel event, so both end the action within `POLL_INTERVAL`; an abandoned request's
thread ends at its socket timeout.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from email.message import Message
from typing import Any

from attune_pg.actions.outcome import (
    MAX_RESULT_BYTES,
    ActionContext,
    ActionOutcome,
    canceled,
    checked,
    failed,
    limit_text,
    succeeded,
    timed_out,
)
from attune_pg.spec.model import ActionSpec

#: Seconds a request may take when neither the input nor the attempt sets a timeout.
DEFAULT_TIMEOUT = 60.0
POLL_INTERVAL = 0.05
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class _BadInput(ValueError):
    pass


def run(
    action: ActionSpec, input: dict[str, Any], context: ActionContext, cancel: threading.Event
) -> ActionOutcome:
    try:
        request, timeout = _request(input, context)
    except _BadInput as exc:
        return failed("InvalidInput", f"action {action.ref}: {exc}")
    if cancel.is_set():
        return canceled()

    box: list[ActionOutcome] = []
    done = threading.Event()

    def perform() -> None:
        try:
            box.append(_perform(request, timeout))
        except BaseException as exc:  # the thread must always report
            box.append(failed(type(exc).__name__, str(exc)))
        finally:
            done.set()

    deadline = time.monotonic() + timeout
    thread = threading.Thread(
        target=perform, name=f"attune-http-{context.task_execution_id}", daemon=True
    )
    thread.start()
    while not done.wait(POLL_INTERVAL):
        if cancel.is_set():
            return canceled()
        if time.monotonic() >= deadline:
            return timed_out(timeout)
    return checked(box[0])


def _request(input: dict[str, Any], context: ActionContext) -> tuple[urllib.request.Request, float]:
    url = input.get("url")
    if not isinstance(url, str) or not url:
        raise _BadInput("url must be a non-empty string")
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme not in ("http", "https"):
        raise _BadInput(f"url must be http or https, got {url!r}")
    method = input.get("method") or "GET"
    if not isinstance(method, str) or method.upper() not in METHODS:
        raise _BadInput(f"method must be one of {', '.join(sorted(METHODS))}, got {method!r}")
    raw_headers = input.get("headers") or {}
    if not isinstance(raw_headers, dict):
        raise _BadInput(f"headers must be a map, got {type(raw_headers).__name__}")
    headers = {str(k): str(v) for k, v in raw_headers.items()}
    body = input.get("body")
    data: bytes | None
    if body is None:
        data = None
    elif isinstance(body, str):
        data = body.encode("utf-8")
    else:
        try:
            data = json.dumps(body, allow_nan=False).encode("utf-8")
        except (TypeError, ValueError) as exc:
            raise _BadInput(f"body is not JSON: {exc}") from None
        if not any(k.lower() == "content-type" for k in headers):
            headers["Content-Type"] = "application/json"

    timeout = input.get("timeout")
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0
    ):
        raise _BadInput(f"timeout must be a positive number of seconds, got {timeout!r}")
    limits = [t for t in (timeout, context.timeout) if t is not None]
    effective = float(min(limits)) if limits else DEFAULT_TIMEOUT
    return urllib.request.Request(url, data=data, headers=headers, method=method.upper()), effective


def _perform(request: urllib.request.Request, timeout: float) -> ActionOutcome:
    what = f"{request.get_method()} {request.full_url}"
    try:
        response = urllib.request.urlopen(request, timeout=timeout)  # scheme checked: http(s)
    except urllib.error.HTTPError as exc:
        response = exc  # a response too: keep its status, headers and body
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, TimeoutError):
            return timed_out(timeout)
        return failed("ConnectionError", f"{what}: cannot connect: {exc.reason}")
    except TimeoutError:
        return timed_out(timeout)
    except (OSError, ValueError) as exc:
        return failed("ConnectionError", f"{what}: {exc}")
    with response:
        status = int(response.status if response.status is not None else response.getcode())
        headers = _headers(response.headers)
        try:
            raw = response.read(MAX_RESULT_BYTES + 1)
        except TimeoutError:
            return timed_out(timeout)
        except OSError as exc:
            return failed("ConnectionError", f"{what}: reading the response failed: {exc}")
    if len(raw) > MAX_RESULT_BYTES:
        return failed(
            "ResponseTooLarge",
            f"{what}: response body is over the {limit_text()} limit",
            {"status_code": status, "headers": headers, "body": None, "json": None},
        )
    body = _decode(raw, response.headers)
    result = {"status_code": status, "headers": headers, "body": body, "json": _json(body, headers)}
    if status >= 400:
        reason = getattr(response, "reason", "") or ""
        return failed("HTTPError", f"{what} returned HTTP {status} {reason}".rstrip(), result)
    return succeeded(result)


def _headers(message: Message) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in message.items():
        out[key] = f"{out[key]}, {value}" if key in out else str(value)
    return out


def _decode(raw: bytes, message: Message) -> str:
    charset = message.get_content_charset() or "utf-8"
    try:
        text = raw.decode(charset, "replace")
    except LookupError:
        text = raw.decode("utf-8", "replace")
    if not text.isascii():
        text = text.encode("utf-8", "replace").decode("utf-8")
    return text.replace("\x00", "\ufffd")


def _json(body: str, headers: dict[str, str]) -> Any:
    content_type = next((v for k, v in headers.items() if k.lower() == "content-type"), "")
    media = content_type.split(";", 1)[0].strip().lower()
    if not (media == "application/json" or media.endswith("+json")) or not body.strip():
        return None
    try:
        return json.loads(body, parse_constant=_reject_constant)
    except ValueError:
        return None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")
