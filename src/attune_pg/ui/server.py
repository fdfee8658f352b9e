"""Serve the console with uvicorn, ending its live streams first when asked to stop."""

from __future__ import annotations

import asyncio
from typing import Any

import uvicorn

from attune_pg.ui.app import Console


class ConsoleServer(uvicorn.Server):
    """uvicorn's server, closing the console's live streams first when asked to stop."""

    def __init__(self, console: Console, host: str, port: int) -> None:
        config = uvicorn.Config(
            console.app(),
            host=host,
            port=port,
            log_level="warning",
            timeout_graceful_shutdown=2,
            lifespan="on",
        )
        super().__init__(config)
        self.console = console
        self.loop: asyncio.AbstractEventLoop | None = None

    async def startup(self, sockets: Any = None) -> None:
        self.loop = asyncio.get_running_loop()
        await super().startup(sockets)

    def handle_exit(self, sig: int, frame: Any) -> None:  # SIGINT / SIGTERM
        self.stop()

    def stop(self) -> None:
        if self.loop is not None:
            self.console.close_streams(self.loop)
        self.should_exit = True

    @property
    def port(self) -> int:
        return int(self.servers[0].sockets[0].getsockname()[1])
