"""Read `attune.setting` (see `attune_pg.settings`)."""

from __future__ import annotations

import psycopg

from attune_pg.settings import Settings
from attune_pg.store.queries import Q


def load(conn: psycopg.Connection) -> Settings:
    return Settings.from_rows(conn.execute(Q.setting_list).fetchall())
