"""LISTEN for the engine's hints (NOTIFY channels; payloads are tiny, only hints).

LISTEN takes no parameters, so this is the one statement the package composes: from
channel names that are the package's own constants, quoted as identifiers.
"""

from __future__ import annotations

from collections.abc import Iterable

import psycopg
from psycopg import sql


def listen(conn: psycopg.Connection, channels: Iterable[str]) -> None:
    for channel in dict.fromkeys(channels):
        conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
