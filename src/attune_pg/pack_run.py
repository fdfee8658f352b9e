"""One registration of packs (packs.register runs it in one transaction): scan each pack,
compare its files' content hashes with what is registered, load and check what changed,
write what differs, and report. `Options` and the reports are its inputs and outputs.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path

import psycopg

from attune_pg import __version__
from attune_pg.errors import InUseError, SpecError
from attune_pg.pack_remove import unregister_pack
from attune_pg.spec.automation import PackAutomation, load_automation
from attune_pg.spec.linked import (
    graph_ref,
    is_graph_file,
    linked_graph_bytes,
    linked_graphs,
    links_workflow,
    load_linked_workflow,
)
from attune_pg.spec.loader import read_source
from attune_pg.spec.model import ActionSpec, PackSpec, TaskSpec, WorkflowSpec
from attune_pg.spec.normalize import Source
from attune_pg.spec.packfiles import (
    check_references,
    load_action,
    load_pack_meta,
    load_pack_workflow,
    scan_pack,
    workflow_action,
)
from attune_pg.spec.yaml_lines import MAX_BYTES
from attune_pg.store import automation, catalog

log = logging.getLogger("attune_pg.packs")


@dataclass(frozen=True)
class Options:
    skip_invalid: bool = False  # register the valid files, report the invalid ones
    update: bool = True  # False (--no-update): a registered definition is never replaced
    max_file_bytes: int = MAX_BYTES
    sync: bool = False  # also unregister packs registered from under PATH that are gone
    # (stage, done, total) as the packs are scanned and written: the CLI's progress line.
    on_progress: Callable[[str, int, int], None] | None = None


@dataclass
class PackReport:
    ref: str
    version: str
    path: str
    actions: int = 0
    workflows: int = 0
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: int = 0
    pack_changed: bool = False

    @property
    def changed(self) -> bool:
        return bool(self.pack_changed or self.added or self.updated or self.removed)

    def summary(self) -> str:
        parts = [f"{len(self.added)} new"] if self.added else []
        parts += [f"{len(self.updated)} updated"] if self.updated else []
        parts += [f"{len(self.removed)} removed"] if self.removed else []
        parts += [f"{self.unchanged} unchanged"] if self.unchanged else []
        detail = f" ({', '.join(parts)})" if parts else ""
        return (
            f"registered pack {self.ref} {self.version}: {self.actions} actions,"
            f" {self.workflows} workflows{detail}"
        )


@dataclass
class Registration:
    packs: list[PackReport] = field(default_factory=list)
    invalid: list[SpecError] = field(default_factory=list)  # skipped files (skip_invalid)
    unregistered: list[str] = field(default_factory=list)  # packs gone from PATH (sync)
    warnings: list[str] = field(default_factory=list)  # e.g. unbounded self-calls

    @property
    def changed(self) -> bool:
        return bool(self.unregistered) or any(p.changed for p in self.packs)


# ----------------------------------------------------------------- content hashes


@cache
def loader_fingerprint() -> bytes:
    """Changes whenever the code that validates files changes (a new release, an edit in a
    checkout): hashes registered by another loader never match, so files are checked again."""
    digest = hashlib.sha256(__version__.encode())
    for package in ("attune_pg.spec", "attune_pg.template"):
        entries = sorted(resources.files(package).iterdir(), key=lambda e: e.name)
        for entry in entries:
            if entry.name.endswith((".py", ".json")):
                digest.update(entry.name.encode())
                digest.update(entry.read_bytes())
    return digest.digest()


def content_hash(file: Path, data: bytes) -> str:
    digest = hashlib.sha256(loader_fingerprint())
    digest.update(os.path.abspath(file).encode())
    digest.update(b"\0")
    digest.update(data)
    return digest.hexdigest()


# ----------------------------------------------------------------- one registration


@dataclass
class _PackWork:
    """One pack between scanning and writing."""

    meta: PackSpec
    pack_hash: str
    # ref -> (spec, hash) of every valid action file; refs of files that failed to load
    # are unknown, so `action_files` keeps every file present (its action is not removed).
    actions: dict[str, tuple[ActionSpec, str]] = field(default_factory=dict)
    action_files: set[str] = field(default_factory=set)
    workflow_files: dict[str, Path] = field(default_factory=dict)  # ref -> file
    workflow_hashes: dict[str, str] = field(default_factory=dict)  # ref -> hash (readable)
    to_load: set[str] = field(default_factory=set)  # workflow refs to parse and check
    removed_actions: set[str] = field(default_factory=set)
    removed_workflows: set[str] = field(default_factory=set)


class _Run:
    def __init__(self, conn: psycopg.Connection, options: Options) -> None:
        self.conn = conn
        self.options = options
        self.result = Registration()
        self.works: list[_PackWork] = []
        # Actions and workflows-as-actions of this registration, by ref: checks use these
        # before the registered ones.
        self.local: dict[str, ActionSpec] = {}
        self.fetched: dict[str, ActionSpec] = {}
        self.gone: set[str] = set()  # refs this registration removes
        self.pending: set[str] = set()  # workflow refs still to load (forward references)
        self.deferred: list[tuple[_PackWork, WorkflowSpec, Source, str, str]] = []
        # Registered workflows that call workflows of this registration, reduced to those
        # tasks: enough to warn about unbounded self-calls without holding every spec.
        self.callers: list[WorkflowSpec] = []

    # ------------------------------------------------------------ errors

    def invalid(self, error: SpecError) -> None:
        """Raise (all or nothing) or remember the error and carry on (skip_invalid)."""
        if not self.options.skip_invalid:
            raise error
        self.result.invalid.append(error)

    # ------------------------------------------------------------ phases

    def register(self, dirs: list[Path]) -> None:
        progress = self.options.on_progress or (lambda _stage, _done, _total: None)
        for number, root in enumerate(dirs, 1):
            try:
                work = self._scan(root)
            except SpecError as exc:
                self.invalid(exc)
                continue
            finally:
                progress("scanning packs", number, len(dirs))
            if work is not None:
                self.works.append(work)
        self._compare()
        for number, work in enumerate(self.works, 1):
            self._load_and_write(work)
            progress("registering packs", number, len(self.works))
        self._finish_deferred()
        self._register_automation()

    def _register_automation(self) -> None:
        """Triggers, rules and policies (few files: always loaded, not hashed), checked
        against the actions and workflows as registered now, written last."""
        if not self.works or not automation.schema_present(self.conn):
            return  # no packs, or a schema older than 0009: nowhere to put them
        packs = [w.meta for w in self.works]
        actions = _ActionView(self.local, self.fetched, self.gone, self._fetch_one)
        triggers = automation.registered_triggers(self.conn)
        policies = automation.registered_policies(self.conn)
        if not self.options.skip_invalid:
            automation.register(self.conn, load_automation(packs, actions, triggers, policies))
            return
        loaded: list[PackAutomation] = []
        for pack in packs:  # one pack at a time, so one invalid file skips only its pack's
            known = {**triggers, **{t.ref: t for done in loaded for t in done.triggers}}
            try:
                loaded.extend(load_automation([pack], actions, known, policies))
            except SpecError as exc:
                self.invalid(exc)
        automation.register(self.conn, loaded)

    def _fetch_one(self, ref: str) -> None:
        if ref not in self.fetched and ref not in self.gone:
            self.fetched.update(catalog.action_specs(self.conn, [ref]))

    def _read(self, file: Path) -> bytes:
        return read_source(file, self.options.max_file_bytes)

    def _scan(self, root: Path) -> _PackWork | None:
        layout = scan_pack(root)
        data = self._read(layout.pack_file)
        meta = load_pack_meta(root, data, self.options.max_file_bytes)
        work = _PackWork(meta=meta, pack_hash=content_hash(layout.pack_file, data))
        if any(w.meta.ref == meta.ref for w in self.works):
            raise SpecError(f"pack {meta.ref!r} is found twice", file=str(layout.pack_file))
        linked: list[Path] = []
        for file in layout.actions:
            work.action_files.add(str(file))
            try:
                data = self._read(file)
                if links_workflow(data):  # Attune's action-linked workflow: a workflow
                    linked.append(file)
                    continue
                action, line = load_action(
                    file, meta.ref, meta.path, data, self.options.max_file_bytes
                )
                if action.ref in work.actions:
                    first = work.actions[action.ref][0].source_file
                    raise SpecError(f"{action.ref!r} is already defined by {first}",
                                    file=str(file), line=line)  # fmt: skip
            except SpecError as exc:
                self.invalid(exc)
                continue
            work.actions[action.ref] = (action, content_hash(file, data))
        linked_to = linked_graphs((f, self._read(f)) for f in linked)
        unlinked = [g for g in layout.graphs if g.resolve() not in linked_to]
        for file in [*layout.workflows, *linked, *unlinked]:
            ref = graph_ref(file, meta.ref) if is_graph_file(file) else f"{meta.ref}.{file.stem}"
            if ref in work.actions or ref in work.workflow_files:
                first = (
                    work.actions[ref][0].source_file
                    if ref in work.actions
                    else str(work.workflow_files[ref])
                )
                self.invalid(SpecError(f"{ref!r} is already defined by {first}", file=str(file)))
                continue
            work.workflow_files[ref] = file
            try:
                data = self._read(file)
                if file in linked:  # the action file and the graph it links, together
                    data += b"\0" + linked_graph_bytes(file, data, self.options.max_file_bytes)
                work.workflow_hashes[ref] = content_hash(file, data)
            except SpecError as exc:
                self.invalid(exc)
        for ref, (action, _) in work.actions.items():
            self.local[ref] = action
        return work

    def _compare(self) -> None:
        """Decide, from the hashes, what each pack must load, write and remove."""
        refs = [w.meta.ref for w in self.works]
        packs = catalog.pack_state(self.conn, refs)
        actions = catalog.action_state(self.conn, refs)
        workflows = catalog.workflow_state(self.conn, refs)
        changed: set[str] = set()
        for work in self.works:
            ref = work.meta.ref
            state = packs.get(ref)
            registered = state is not None and not state.retired
            if registered and state is not None and state.content_hash != work.pack_hash:
                self._refuse_update(f"pack {ref!r}", work.meta.path + "/pack.yaml")
            for aref, (action, h) in list(work.actions.items()):
                old = actions.get(aref)
                refused = old is not None and old[0] != h
                if refused and not self._refuse_update(f"action {aref!r}", action.source_file):
                    del work.actions[aref]
                    self.local.pop(aref, None)
                    continue
                if old is None or old[0] != h:
                    changed.add(aref)
            for aref, (_, source_file) in actions.items():
                if aref.split(".", 1)[0] != ref or aref in work.actions:
                    continue
                if source_file not in work.action_files and self.options.update:
                    work.removed_actions.add(aref)
            for wref, h in work.workflow_hashes.items():
                old_hash = workflows.get(wref, "absent")
                if old_hash == h:
                    continue
                if old_hash != "absent" and not self._refuse_update(
                    f"workflow {wref!r}", str(work.workflow_files[wref])
                ):
                    continue
                work.to_load.add(wref)
                changed.add(wref)
            if self.options.update:
                work.removed_workflows = {w for w in workflows if w.split(".", 1)[0] == ref} - set(
                    work.workflow_files
                )
            self.gone |= work.removed_actions | work.removed_workflows
            self.pending |= work.to_load
        changed |= self.gone
        if not changed:
            return
        # Unchanged workflows that call something that changed are checked again.
        by_pack = {w.meta.ref: w for w in self.works}
        loading = {ref for w in self.works for ref in w.to_load}
        for wref, pack, _called in catalog.workflow_users(self.conn, changed, exclude=loading):
            owner = by_pack.get(pack)
            if owner is not None and wref in owner.workflow_hashes:
                owner.to_load.add(wref)
                self.pending.add(wref)
        self._refuse_removing_used()

    def _refuse_update(self, what: str, file: str | None) -> bool:
        """With --no-update, a changed registered definition is an error; True if allowed."""
        if self.options.update:
            return True
        self.invalid(
            SpecError(
                f"{what} is already registered with other content; --no-update refuses"
                " to replace it",
                file=file,
            )
        )
        return False

    def _refuse_removing_used(self) -> None:
        """A removed action or workflow that a workflow outside this registration calls."""
        if not self.gone:
            return
        ours = {w.meta.ref for w in self.works}
        for wref, pack, called in catalog.workflow_users(self.conn, self.gone):
            if pack in ours:
                continue  # checked again with the rest of its pack
            owner = next(w for w in self.works if w.meta.ref == called.split(".", 1)[0])
            self.invalid(
                InUseError(
                    f"{called!r} would be removed, but registered workflow {wref!r} calls it"
                    " (register its pack too, or unregister it first)",
                    file=owner.meta.path,
                )
            )
            owner.removed_actions.discard(called)
            owner.removed_workflows.discard(called)
            self.gone.discard(called)

    def _load_and_write(self, work: _PackWork) -> None:
        ref = work.meta.ref
        loaded: list[tuple[WorkflowSpec, Source, str, str]] = []
        for wref in sorted(work.to_load):
            file = work.workflow_files[wref]
            try:
                data = self._read(file)
                if file.parent.name == "actions":  # an action file linking its graph
                    wf, source, graph = load_linked_workflow(
                        file, ref, data, self.options.max_file_bytes
                    )
                    hashed = data + b"\0" + graph
                else:
                    wf, source = load_pack_workflow(file, ref, data, self.options.max_file_bytes)
                    graph = hashed = data
            except SpecError as exc:
                self.pending.discard(wref)
                self.invalid(exc)
                continue
            self.local[wref] = workflow_action(wf, work.meta.path)
            self.pending.discard(wref)
            loaded.append((wf, source, graph.decode("utf-8-sig"), content_hash(file, hashed)))
        self._fetch_registered(wf for wf, *_ in loaded)
        valid: list[tuple[WorkflowSpec, str, str]] = []
        for wf, source, text, h in loaded:
            if any(t.action in self.pending for t in wf.all_tasks()):
                self.deferred.append((work, wf, source, text, h))  # calls a later pack's
                continue
            if self._check(wf, source):
                valid.append((wf, text, h))
                self._keep_calls(wf)
        self._write(work, valid)

    def _fetch_registered(self, workflows: Iterable[WorkflowSpec]) -> None:
        wanted = {
            t.action
            for wf in workflows
            for t in wf.all_tasks()
            if t.action and t.action not in self.local and t.action not in self.fetched
        }
        wanted -= self.gone
        if wanted:
            self.fetched.update(catalog.action_specs(self.conn, wanted))

    def _check(self, wf: WorkflowSpec, source: Source) -> bool:
        view = _ActionView(self.local, self.fetched, self.gone)
        try:
            try:
                check_references(wf, source, view.refs(wf), view)
            except SpecError:
                # Say it again knowing every registered ref, for "did you mean ...?".
                every = (set(self.local) | catalog.action_refs(self.conn)) - self.gone
                check_references(wf, source, every, view)
                raise
        except SpecError as exc:
            self.local.pop(wf.ref, None)  # its registered version (if any) stays
            self.invalid(exc)
            return False
        return True

    def _keep_calls(self, wf: WorkflowSpec) -> None:
        ours = {ref for work in self.works for ref in work.workflow_files}
        calls = tuple(
            TaskSpec(t.name, action=t.action, with_items=t.with_items, concurrency=t.concurrency)
            for t in wf.all_tasks()
            if t.action in ours
        )
        if calls:
            self.callers.append(
                WorkflowSpec(wf.ref, wf.label, wf.version, calls, source_file=wf.source_file)
            )

    def calls(self) -> PackSpec:
        """The workflows registered now that call each other (`spec.recursion` reads it)."""
        return PackSpec(ref="", label="", version="", path="", workflows=tuple(self.callers))

    def _finish_deferred(self) -> None:
        deferred, self.deferred = self.deferred, []
        self.pending.clear()
        self._fetch_registered(wf for _, wf, *_ in deferred)
        by_work: dict[str, list[tuple[WorkflowSpec, str, str]]] = {}
        works: dict[str, _PackWork] = {}
        for work, wf, source, text, h in deferred:
            if self._check(wf, source):
                by_work.setdefault(work.meta.ref, []).append((wf, text, h))
                self._keep_calls(wf)
                works[work.meta.ref] = work
        for ref, valid in by_work.items():
            self._write(works[ref], valid, pack_written=True)

    def _write(
        self,
        work: _PackWork,
        valid: list[tuple[WorkflowSpec, str, str]],
        *,
        pack_written: bool = False,
    ) -> None:
        """Write one pack's changes; the kinds of files are written here, in this order."""
        meta, ref = work.meta, work.meta.ref
        report = self._report(work)
        state = catalog.pack_state(self.conn, [ref]).get(ref)
        new = state is None or state.retired
        differs = new or (state is not None and state.content_hash != work.pack_hash)
        if not pack_written and differs and (new or self.options.update):
            catalog.upsert_pack(self.conn, meta, work.pack_hash)
            report.pack_changed = True
        registered = catalog.action_state(self.conn, [ref])
        actions = [
            (action, h)
            for action, h in work.actions.values()
            if registered.get(action.ref, ("",))[0] != h
        ]
        catalog.upsert_actions(self.conn, ref, actions)
        catalog.retire_actions(self.conn, work.removed_actions)
        # Workflows: a definition row, and the same workflow as an action (nesting).
        known = catalog.workflow_state(self.conn, [ref])
        written = [(wf, text, h) for wf, text, h in valid if known.get(wf.ref) != h]
        catalog.upsert_workflows(self.conn, ref, written)
        catalog.upsert_actions(
            self.conn, ref, [(workflow_action(wf, meta.path), h) for wf, _, h in written]
        )
        removed = catalog.delete_workflows(self.conn, work.removed_workflows)
        work.removed_workflows = set()
        for wf, _, _ in written:
            (report.updated if wf.ref in known else report.added).append(wf.ref)
        report.removed.extend(removed)
        report.actions = len(work.actions)
        report.workflows = len(known) + sum(wf.ref not in known for wf, *_ in written)
        report.workflows -= len(removed)
        report.unchanged = report.workflows - len(report.added) - len(report.updated)
        if actions or written or removed or work.removed_actions or report.pack_changed:
            catalog.notify_changed(self.conn, ref)
        work.removed_actions = set()

    def _report(self, work: _PackWork) -> PackReport:
        for report in self.result.packs:
            if report.ref == work.meta.ref:
                return report
        report = PackReport(work.meta.ref, work.meta.version, work.meta.path)
        self.result.packs.append(report)
        return report

    def unregister_missing(self, root: Path) -> None:
        """`packs sync`: packs registered from under `root` whose directory is gone."""
        found = {w.meta.ref for w in self.works}
        found |= {_pack_ref_of(e) for e in self.result.invalid}
        for ref in catalog.packs_under(self.conn, str(root.resolve())):
            if ref in found:
                continue
            try:
                unregister_pack(self.conn, ref)
            except SpecError as exc:
                self.invalid(exc)
                continue
            self.result.unregistered.append(ref)


def _pack_ref_of(error: SpecError) -> str:
    """The pack directory an error's file lies in (a pack that failed to load is still there)."""
    if not error.file:
        return ""
    path = Path(error.file)
    for part in (path, *path.parents):
        if (part / "pack.yaml").is_file():
            return part.name
    return ""


class _ActionView(Mapping[str, ActionSpec]):
    """This registration's actions over the registered ones, minus what it removes; with
    `fetch`, a registered action not fetched yet is fetched when asked for."""

    def __init__(
        self,
        local: Mapping[str, ActionSpec],
        fetched: Mapping[str, ActionSpec],
        gone: set[str],
        fetch: Callable[[str], None] | None = None,
    ) -> None:
        self._local, self._fetched, self._gone, self._fetch = local, fetched, gone, fetch

    def __getitem__(self, ref: str) -> ActionSpec:
        if ref in self._local:
            return self._local[ref]
        if ref in self._gone:
            raise KeyError(ref)
        if ref not in self._fetched and self._fetch is not None:
            self._fetch(ref)
        return self._fetched[ref]

    def __iter__(self) -> Iterator[str]:
        yield from self._local
        yield from (r for r in self._fetched if r not in self._local and r not in self._gone)

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def refs(self, wf: WorkflowSpec) -> set[str]:
        """The refs `wf` calls that exist (check_actions names the others)."""
        return {t.action for t in wf.all_tasks() if t.action and t.action in self}
