"""A dedicated LISTEN connection that turns notifications into a wake-up event.

NOTIFY is only a hint: the worker also polls, so a lost notification (or an outage
of this connection) delays work by at most one poll interval, never loses it. On
reconnect it sets the event, so the main loop catches up by querying.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import psycopg

from attune_pg import db
from attune_pg.store import notify

log = logging.getLogger("attune_pg.worker")

# attune_work: a task became claimable; attune_start: an execution was requested;
# attune_control: a control request, an inquiry answer, a child finished, a cancel;
# attune_catalog: a registration changed packs, actions or workflows (reload the catalogue).
CHANNELS = ("attune_work", "attune_start", "attune_control", "attune_catalog")


class Listener(threading.Thread):
    def __init__(
        self,
        dsn: str,
        wake: threading.Event,
        stopping: threading.Event,
        hints: dict[str, threading.Event],
        on_reconnect: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(name="attune-listener", daemon=True)
        self._dsn = dsn
        self._wake = wake
        self._stopping = stopping
        self._hints = hints
        self._on_reconnect = on_reconnect
        self.connected = threading.Event()

    def run(self) -> None:
        backoff = 0.2
        down = False  # one log line per outage, not one per reconnect attempt
        while not self._stopping.is_set():
            try:
                with db.connect(self._dsn, name="attune_worker_listen") as conn:
                    # The standard channels and any other the owner gave a hint for.
                    notify.listen(conn, (*CHANNELS, *self._hints))
                    self.connected.set()
                    if down:
                        log.info("listener reconnected")
                        down = False
                        if self._on_reconnect is not None:
                            self._on_reconnect()
                    for hint in self._hints.values():  # catch up on what we missed
                        hint.set()
                    self._wake.set()
                    backoff = 0.2
                    while not self._stopping.is_set():
                        for note in conn.notifies(timeout=0.5, stop_after=64):
                            channel_hint = self._hints.get(note.channel)
                            if channel_hint is not None:
                                channel_hint.set()
                            self._wake.set()
            except (psycopg.Error, OSError, Exception) as exc:  # reconnect whatever broke
                self.connected.clear()
                if self._stopping.is_set():
                    return
                if not down:
                    first = str(exc).strip().splitlines()
                    log.warning(
                        "listener lost its connection (%s); reconnecting with backoff",
                        first[0] if first else type(exc).__name__,
                    )
                    down = True
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, 10.0)
