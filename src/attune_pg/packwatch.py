"""Hot reload: watch pack directories and register what changes.

A polling watcher, with no dependency and the same behaviour on every filesystem (network
mounts and container volumes included, where inotify-style events are unreliable): every
`interval` seconds it stats the YAML files of the packs under DIR (mtime, size, inode: a
cheap signature), and when the signature changes it runs `packs sync DIR` with
`--skip-invalid`. Registration itself hashes the files and skips unchanged ones, so a
change to one file of thousands costs little more than reading them.

- a changed, added or deleted file is registered (or unregistered) within `interval` plus
  the registration's own time;
- a file that no longer validates keeps its registered version and is logged once, as one
  line `file:line: field: message` (again only if its error changes);
- running executions keep the definition they started with (their snapshot).

It needs the rights of a role that registers packs (the schema owner, docs/roles.md).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path

import psycopg

from attune_pg import db, packs
from attune_pg.errors import AttuneError, SpecError
from attune_pg.spec.packfiles import find_pack_dirs

log = logging.getLogger("attune_pg.packs")

Signature = dict[str, tuple[int, int, int]]


def signature(root: Path) -> Signature:
    """(mtime, size, inode) of every pack's YAML files under `root` (or in the pack `root`)."""
    out: Signature = {}
    try:
        # The packs registration would find (bundled ones included), and any directory that
        # may become one (its pack.yaml appears, or it was a pack and lost it).
        pack_dirs = set(find_pack_dirs(root))
        if not (root / "pack.yaml").exists():
            pack_dirs |= set(_subdirs(root))
    except (OSError, SpecError):
        return out
    for pack in sorted(pack_dirs):
        _add_yaml(out, pack)
        for sub in _subdirs(pack):
            _add_yaml(out, sub)
            if sub.name == "actions":  # actions/workflows/: graphs action files link
                for linked in _subdirs(sub):
                    _add_yaml(out, linked)
    return out


def _subdirs(path: Path) -> list[Path]:
    try:
        with os.scandir(path) as entries:
            return [Path(e.path) for e in entries if e.is_dir() and not e.name.startswith(".")]
    except OSError:
        return []


def _add_yaml(out: Signature, directory: Path) -> None:
    try:
        with os.scandir(directory) as entries:
            for entry in entries:
                if entry.name.endswith((".yaml", ".yml")) and not entry.name.startswith("."):
                    try:
                        st = entry.stat()
                    except OSError:
                        continue  # deleted between listing and stat: the next scan sees it
                    out[entry.path] = (st.st_mtime_ns, st.st_size, st.st_ino)
    except OSError:
        return


class PackWatcher:
    """Registers the packs under `root` whenever their files change, until stopped."""

    def __init__(
        self,
        dsn: str,
        root: str | Path,
        *,
        interval: float = 0.5,
        max_file_bytes: int | None = None,
        on_registered: Callable[[packs.Registration], None] | None = None,
    ) -> None:
        self.dsn = dsn
        self.root = Path(root)
        self.interval = interval
        self.options = packs.Options(
            skip_invalid=True,
            sync=True,
            max_file_bytes=max_file_bytes or packs.Options().max_file_bytes,
        )
        self.on_registered = on_registered
        self.registrations = 0
        self._reported: dict[str, str] = {}  # file -> the error last logged for it
        self._down = False

    def run(self, stopping: threading.Event) -> None:
        last: Signature | None = None
        conn: psycopg.Connection | None = None
        log.info("watching packs under %s (every %.1fs)", self.root, self.interval)
        try:
            while not stopping.is_set():
                current = signature(self.root)
                if current != last:
                    try:
                        if conn is None or conn.closed:
                            conn = db.connect(self.dsn, name="attune_pack_watch")
                        self._register(conn)
                        last = current
                        self._down = False
                    except (psycopg.Error, AttuneError, OSError) as exc:
                        # Not registered: tried again on the next turn.
                        if not self._down:
                            first = str(exc).strip().splitlines()
                            log.warning(
                                "cannot register packs under %s: %s",
                                self.root,
                                first[0] if first else type(exc).__name__,
                            )
                            self._down = True
                        if conn is not None:
                            conn.close()
                        conn = None
                stopping.wait(self.interval)
        finally:
            if conn is not None:
                conn.close()

    def _register(self, conn: psycopg.Connection) -> None:
        result = packs.register(conn, self.root, self.options)
        self.registrations += 1
        for report in result.packs:
            if report.changed:
                log.info("%s", report.summary())
        for ref in result.unregistered:
            log.info("unregistered pack %s (its directory is gone)", ref)
        errors: dict[str, str] = {}
        for error in result.invalid:
            key = error.file or str(self.root)
            errors[key] = str(error)
            if self._reported.get(key) != errors[key]:
                # One line, file:line: field: message; the registered version is kept.
                log.warning("%s (the registered version is kept)", errors[key])
        self._reported = errors
        if self.on_registered is not None:
            self.on_registered(result)


def watch_in_thread(
    dsn: str, roots: list[str], stopping: threading.Event, interval: float = 0.5
) -> list[threading.Thread]:
    """Start one watcher thread per root (for `attune-worker --watch-packs`)."""
    threads = []
    for root in roots:
        watcher = PackWatcher(dsn, root, interval=interval)
        thread = threading.Thread(
            target=watcher.run, args=(stopping,), name=f"attune-packwatch-{root}", daemon=True
        )
        thread.start()
        threads.append(thread)
    return threads
