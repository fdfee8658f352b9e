"""The http runner against a local http.server on 127.0.0.1 (no other network)."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from attune_pg.actions.runners import ActionContext, ActionOutcome, run_action
from attune_pg.spec.model import ActionSpec

HTTP = ActionSpec(ref="core.http_request", runner="http")


class Handler(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Multi", "one")
        self.send_header("X-Multi", "two")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path == "/json":
            self._send(200, b'{"hello": "world", "n": [1, 2]}')
        elif self.path == "/text":
            self._send(200, "caf\u00e9".encode("latin-1"), "text/plain; charset=latin-1")
        elif self.path == "/missing":
            self._send(404, b'{"error": "no such thing"}')
        elif self.path == "/slow":
            time.sleep(3)
            self._send(200, b"{}")
        elif self.path == "/big":
            self._send(200, b"x" * (2 * 1024 * 1024), "text/plain")
        elif self.path == "/headers":
            self._send(200, json.dumps(dict(self.headers.items())).encode())
        else:
            self._send(500, b"boom", "text/plain")

    do_HEAD = do_GET

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode()
        reply = {"method": "POST", "body": body, "type": self.headers.get("Content-Type")}
        self._send(201, json.dumps(reply).encode())

    do_PUT = do_POST


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def ctx(timeout: float | None = 10.0) -> ActionContext:
    return ActionContext(1, 2, "call", 1, "1:2", timeout, None)


def request(
    input: dict[str, Any], *, timeout: float | None = 10.0, cancel: threading.Event | None = None
) -> ActionOutcome:
    return run_action(HTTP, input, ctx(timeout), cancel or threading.Event())


def test_get_json(server: str) -> None:
    outcome = request({"url": server + "/json"})
    assert outcome.status == "succeeded", outcome.error
    result = outcome.result
    assert result["status_code"] == 200
    assert result["json"] == {"hello": "world", "n": [1, 2]}
    assert json.loads(result["body"]) == result["json"]
    assert result["headers"]["Content-Type"] == "application/json"
    assert result["headers"]["X-Multi"] == "one, two"


def test_text_is_decoded_with_its_charset(server: str) -> None:
    result = request({"url": server + "/text"}).result
    assert result["body"] == "café" and result["json"] is None


def test_post_json_body(server: str) -> None:
    outcome = request({"url": server + "/echo", "method": "post", "body": {"a": [1]}})
    assert outcome.status == "succeeded"
    assert outcome.result["status_code"] == 201
    assert outcome.result["json"] == {
        "method": "POST",
        "body": '{"a": [1]}',
        "type": "application/json",
    }


def test_put_string_body_with_headers(server: str) -> None:
    outcome = request(
        {
            "url": server + "/echo",
            "method": "PUT",
            "body": "plain",
            "headers": {"Content-Type": "text/x-mine"},
        }
    )
    assert outcome.result["json"] == {"method": "POST", "body": "plain", "type": "text/x-mine"}


def test_request_headers_are_sent(server: str) -> None:
    outcome = request({"url": server + "/headers", "headers": {"X-Token": "abc"}})
    assert outcome.result["json"]["X-Token"] == "abc"


def test_head(server: str) -> None:
    outcome = request({"url": server + "/json", "method": "HEAD"})
    assert outcome.status == "succeeded" and outcome.result["body"] == ""


def test_404_fails_with_result_kept(server: str) -> None:
    outcome = request({"url": server + "/missing"})
    assert outcome.status == "failed"
    assert outcome.result["status_code"] == 404
    assert outcome.result["json"] == {"error": "no such thing"}
    assert outcome.error == {
        "type": "HTTPError",
        "message": f"GET {server}/missing returned HTTP 404 Not Found",
    }


def test_500_fails(server: str) -> None:
    outcome = request({"url": server + "/other"})
    assert outcome.status == "failed" and outcome.result["body"] == "boom"


def test_connection_refused() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    outcome = request({"url": f"http://127.0.0.1:{port}/"})
    assert outcome.status == "failed"
    assert outcome.error is not None and outcome.error["type"] == "ConnectionError"
    assert "cannot connect" in outcome.error["message"]


def test_input_timeout(server: str) -> None:
    outcome = request({"url": server + "/slow", "timeout": 0.3})
    assert outcome.status == "timed_out"  # the 3 s response never arrived
    assert outcome.error == {"type": "Timeout", "message": "action timed out after 0.3 s"}


def test_attempt_timeout(server: str) -> None:
    outcome = request({"url": server + "/slow", "timeout": 30}, timeout=0.3)
    assert outcome.status == "timed_out"


def test_cancel_ends_the_request(server: str) -> None:
    cancel = threading.Event()
    threading.Timer(0.2, cancel.set).start()
    outcome = request({"url": server + "/slow"}, timeout=None, cancel=cancel)
    assert outcome.status == "canceled"  # the cancel, not the 3 s response, ended it


def test_oversized_response_fails(server: str) -> None:
    outcome = request({"url": server + "/big"})
    assert outcome.status == "failed"
    assert outcome.error is not None and "over the 1 MB limit" in outcome.error["message"]
    assert outcome.result["status_code"] == 200


@pytest.mark.parametrize(
    ("input", "fragment"),
    [
        ({}, "url must be"),
        ({"url": "file:///etc/passwd"}, "http or https"),
        ({"url": "http://127.0.0.1/", "method": "BREW"}, "method must be"),
        ({"url": "http://127.0.0.1/", "headers": ["a"]}, "headers must be a map"),
        ({"url": "http://127.0.0.1/", "timeout": -1}, "timeout must be"),
    ],
)
def test_bad_input(input: dict[str, Any], fragment: str) -> None:
    outcome = request(input)
    assert outcome.status == "failed"
    assert outcome.error is not None and outcome.error["type"] == "InvalidInput"
    assert fragment in outcome.error["message"]
