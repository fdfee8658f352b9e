"""Register packs: scan, hash, validate what changed, write what differs, in one transaction.

The pipeline, one pack at a time so memory stays flat with thousands of workflows:

1. **scan** every pack under PATH (`spec.packfiles.scan_pack`: pack.yaml, actions/,
   workflows/); read pack.yaml and every action file (few, always parsed: the workflows
   are checked against them) and hash every workflow file.
2. **compare** with what is registered (three queries for all packs): a workflow file whose
   hash (`content_hash`: the loader's fingerprint, the file's path and its bytes) equals
   the registered one is neither parsed nor written. Unchanged workflows that call an
   action or workflow that changed or disappeared are checked again.
3. **load and check** the rest: each file on its own (`spec.loader`), then the actions it
   calls and its inputs against this registration's actions and workflows first, the
   registered ones second (fetched by ref).
4. **write** what differs (`store.catalog`): upserts, and files that disappeared are
   unregistered; one NOTIFY `attune_catalog` per changed pack makes workers reload.

All or nothing by default: the first invalid file raises a located SpecError and the
transaction rolls back. `skip_invalid` registers the valid files instead and reports each
invalid one; an invalid file keeps its registered version (a half-saved edit never removes
a working workflow). The kinds of files: actions and workflows (hashed, `_scan` to
`_write`), then triggers, rules and policies (`_register_automation`, spec/automation.py),
which name them; a new kind plugs in beside the latter.
"""

from __future__ import annotations

import gc
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg

from attune_pg.pack_remove import set_enabled, unregister_pack, unregister_workflow
from attune_pg.pack_run import (
    Options,
    PackReport,
    Registration,
    _Run,
    content_hash,
    loader_fingerprint,
)
from attune_pg.spec.packfiles import find_pack_dirs
from attune_pg.spec.recursion import unbounded_self_calls
from attune_pg.store import catalog

log = logging.getLogger("attune_pg.packs")

__all__ = [
    "Options",
    "PackReport",
    "Registration",
    "content_hash",
    "loader_fingerprint",
    "register",
    "set_enabled",
    "unregister_pack",
    "unregister_workflow",
]


def register(
    conn: psycopg.Connection, path: str | Path, options: Options | None = None
) -> Registration:
    """Register the pack at `path`, or every pack under it (see the module docstring)."""
    opts = options or Options()
    root = Path(path)
    dirs = find_pack_dirs(root)
    with _gc_paused(), conn.transaction():
        catalog.lock_registration(conn)
        run = _Run(conn, opts)
        run.register(dirs)
        if opts.sync:
            run.unregister_missing(root)
    run.result.warnings = unbounded_self_calls([run.calls()])
    for warning in run.result.warnings:
        log.warning("%s", warning)
    return run.result


_gc_lock = threading.Lock()
_gc_pausers = 0
_gc_was_enabled = False


@contextmanager
def _gc_paused() -> Iterator[None]:
    """No cyclic garbage collection while registering.

    Registration allocates millions of small objects (YAML nodes, dicts) while it holds
    the specs of thousands of workflows; the collector then rescans that growing heap
    again and again: it made registering 4,000 workflows five times slower, and nothing
    here makes reference cycles worth collecting early. Counted, so threads that register
    at once (a watcher, the CLI in tests) leave the collector as they found it.
    """
    global _gc_pausers, _gc_was_enabled
    with _gc_lock:
        if _gc_pausers == 0:
            _gc_was_enabled = gc.isenabled()
            gc.disable()
        _gc_pausers += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_pausers -= 1
            if _gc_pausers == 0 and _gc_was_enabled:
                gc.enable()
