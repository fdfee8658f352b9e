"""One LISTEN connection for the whole console, fanned out to every open page.

Pages follow changes through server-sent events (`/live`): the console holds a single
LISTEN connection (a thread, reconnecting with backoff) whatever the number of browsers,
and each browser refetches the part of its page that changed when told to. Nothing polls:
with no change in the database no query runs.

Notifications are hints (they merge inside a transaction and are lost while disconnected),
so after a reconnect every page is told to refresh (`resync`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from dataclasses import dataclass

from attune_pg import db
from attune_pg.store import notify

log = logging.getLogger("attune_pg.ui")

# attune_execution: '<id>:<status>' on every execution status change; attune_work: a task
# became claimable (the next step of some execution); attune_control: an answer, a cancel, a
# child that finished; attune_event: an event was stored (an emit or a timer).
CHANNELS = ("attune_execution", "attune_work", "attune_control", "attune_event")
QUEUE_SIZE = 256


@dataclass(frozen=True)
class Change:
    channel: str  # a CHANNELS entry, or "resync" after a reconnect
    payload: str = ""


class Broadcaster:
    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._loop: asyncio.AbstractEventLoop | None = None
        self._subscribers: set[asyncio.Queue[Change]] = set()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.connected = threading.Event()

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._thread = threading.Thread(target=self._run, name="attune-ui-listen", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def subscribe(self) -> asyncio.Queue[Change]:
        queue: asyncio.Queue[Change] = asyncio.Queue(QUEUE_SIZE)
        self._subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[Change]) -> None:
        self._subscribers.discard(queue)

    # ------------------------------------------------------------ the listening thread

    def _run(self) -> None:
        backoff = 0.2
        while not self._stopping.is_set():
            try:
                with db.connect(self._dsn, name="attune_ui_listen") as conn:
                    notify.listen(conn, CHANNELS)
                    self.connected.set()
                    self._publish(Change("resync"))  # catch up on what we missed
                    backoff = 0.2
                    while not self._stopping.is_set():
                        for note in conn.notifies(timeout=0.5, stop_after=64):
                            self._publish(Change(note.channel, note.payload))
            except Exception as exc:  # reconnect whatever broke
                self.connected.clear()
                if self._stopping.is_set():
                    return
                log.warning("console lost its LISTEN connection (%s); reconnecting", exc)
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, 10.0)

    def _publish(self, change: Change) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop is shutting down
                loop.call_soon_threadsafe(self._fan_out, change)

    def _fan_out(self, change: Change) -> None:
        for queue in list(self._subscribers):
            if queue.full():
                # A page that cannot keep up gets one resync instead of a backlog.
                while not queue.empty():
                    queue.get_nowait()
                queue.put_nowait(Change("resync"))
            else:
                queue.put_nowait(change)
