"""Run the web console for a test: a real uvicorn server on a free port, in a thread."""

from __future__ import annotations

import contextlib
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from http.cookiejar import CookieJar
from urllib.parse import urlencode

from attune_pg.ui.app import Console
from attune_pg.ui.server import ConsoleServer


@dataclass
class Page:
    status: int
    body: str
    headers: dict[str, str]


class Client:
    """A tiny browser-like HTTP client: keeps cookies, does not follow redirects."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.jar = CookieJar()
        self._opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(self.jar), _NoRedirect()
        )

    def get(self, path: str) -> Page:
        return self._send(urllib.request.Request(self.base + path))

    def post(self, path: str, form: dict[str, str], headers: dict[str, str] | None = None) -> Page:
        request = urllib.request.Request(
            self.base + path,
            data=urlencode(form).encode(),
            headers={"Content-Type": "application/x-www-form-urlencoded", **(headers or {})},
            method="POST",
        )
        return self._send(request)

    def cookie(self, name: str) -> str | None:
        return next((c.value for c in self.jar if c.name == name), None)

    def _send(self, request: urllib.request.Request) -> Page:
        try:
            with self._opener.open(request, timeout=10) as response:
                body = response.read().decode()
                return Page(response.status, body, _lower(response.headers))
        except urllib.error.HTTPError as exc:
            return Page(exc.code, exc.read().decode(), _lower(exc.headers))


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


@contextlib.contextmanager
def console(dsn: str, *, allow_control: bool = False) -> Iterator[str]:
    """The console's base URL while the block runs; the server is stopped afterwards."""
    server = ConsoleServer(Console(dsn, allow_control=allow_control), "127.0.0.1", 0)
    thread = threading.Thread(target=server.run, name="test-console", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise AssertionError("the console did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        server.stop()
        thread.join(timeout=15)
        assert not thread.is_alive(), "the console did not stop"


def _lower(headers: object) -> dict[str, str]:
    items = headers.items()  # type: ignore[attr-defined]
    return {str(k).lower(): str(v) for k, v in items}
