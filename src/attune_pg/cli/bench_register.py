"""`attune-pg bench --register N`: the cost of registering N workflows, as ratios.

N generated workflows (fan-out, with-items, retries, a join, a decision, a chain of steps:
2 to 11 steps, 1 to 3 KB each) in N/100 packs, each pack with an action of its own. The
yardstick is the time `yaml.load(..., Loader=yaml.CSafeLoader)` takes to read and parse the
same files in this process (libyaml, no validation at all), measured before and after the
registrations; the median counts. Then, in a scratch database on the same server (created
and dropped), `attune-pg packs register DIR` runs as a real command twice: first on an
empty catalogue (everything new), then again on the unchanged files. Reported: each
command's wall time (interpreter start included) over the parse time, and its peak RSS.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import psycopg
import yaml
from psycopg import conninfo

from attune_pg import db, packs, shipped
from attune_pg.store import migrate
from attune_pg.store.queries import Q

PER_PACK = 100


@dataclass
class RegisterBench:
    workflows: int
    packs: int
    bytes: int
    parse_seconds: float
    first: tuple[float, int]  # (seconds, peak RSS in bytes)
    again: tuple[float, int]
    registered: int

    def report(self) -> str:
        def line(name: str, run: tuple[float, int]) -> str:
            seconds, rss = run
            return (
                f"{name}: {seconds:6.2f}s = {seconds / self.parse_seconds:4.2f}x the parse time,"
                f" peak RSS {rss / 1024 / 1024:5.1f} MB"
            )

        return "\n".join(
            [
                f"files: {self.workflows} workflows in {self.packs} packs,"
                f" {self.bytes / 1024 / 1024:.1f} MB",
                f"yaml.CSafeLoader parse of the same files: {self.parse_seconds:.2f}s"
                " (median of 3)",
                line("packs register (all new)      ", self.first),
                line("packs register (unchanged)    ", self.again),
                f"registered: {self.registered} workflow definitions",
            ]
        )


def workflow_text(pack: str, j: int) -> str:
    """One generated workflow; its size and shape vary with `j`."""
    n = 2 + j % 10
    lines = [
        f"# generated workflow {j} of pack {pack}",
        f"label: Generated workflow {j}",
        f"description: A fan-out, a decision, a join and a chain of {n} steps.",
        f'version: "1.0.{j}"',
        f"tags: [generated, {'even' if j % 2 == 0 else 'odd'}]",
        "parameters:",
        "  name: {type: string, default: world, description: Who to greet.}",
        "  count: {type: integer, default: 3, minimum: 1}",
        "  regions: {type: array, items: {type: string}, default: [us-east-1, eu-west-1]}",
        "vars:",
        "  greeting: null",
        "  total: 0",
        "output_map:",
        '  message: "{{ vars.greeting }}"',
        '  total: "{{ vars.total }}"',
        "tasks:",
        "  - name: start",
        f"    action: {pack}.step",
        '    input: {message: "Hello, {{ parameters.name }}!"}',
        "    next:",
        '      - when: "{{ succeeded() }}"',
        '        publish: [{greeting: "{{ result().message }}"}]',
        "        do: [fan_a, fan_b]",
        "  - name: fan_a",
        "    action: core.echo",
        '    input: {message: "{{ vars.greeting | upper }}"}',
        "    on_success: join",
        "  - name: fan_b",
        "    action: core.noop",
        '    with_items: "{{ parameters.regions }}"',
        "    concurrency: 2",
        "    retry: {count: 2, delay: 1, backoff: exponential}",
        "    on_success: join",
        "  - name: join",
        "    join: all",
        "    action: core.echo",
        '    input: {message: "joined {{ task.fan_a.result.message }}"}',
        "    decision:",
        '      - when: "{{ parameters.count > 2 }}"',
        "        next: step_0",
        "      - default: step_0",
    ]
    for k in range(n):
        lines += [
            f"  - name: step_{k}",
            "    action: core.echo",
            f'    input: {{message: "step {k}: {{{{ vars.total + {k} }}}}'
            ' of {{ parameters.count }}"}',
            "    timeout: 30",
        ]
        if k + 1 < n:
            lines += [
                "    next:",
                '      - when: "{{ succeeded() }}"',
                f'        publish: [{{total: "{{{{ vars.total + {k} }}}}"}}]',
                f"        do: step_{k + 1}",
                '      - when: "{{ failed() }}"',
                "        do: cleanup",
            ]
    lines += ["  - name: cleanup", "    action: core.noop"]
    return "\n".join(lines) + "\n"


def generate(root: Path, workflows: int) -> list[Path]:
    """Write the packs; returns the workflow files."""
    files = []
    for i in range((workflows + PER_PACK - 1) // PER_PACK):
        ref = f"bench{i:03d}"
        pack = root / ref
        (pack / "workflows").mkdir(parents=True)
        (pack / "actions").mkdir()
        (pack / "pack.yaml").write_text(
            f'ref: {ref}\nlabel: Generated pack {i}\nversion: "1.0.0"\n'
        )
        (pack / "actions" / "step.yaml").write_text(
            "name: step\nrunner: builtin\nentry_point: echo\n"
            "parameters:\n  message: {type: string, required: true}\n"
        )
        for j in range(min(PER_PACK, workflows - i * PER_PACK)):
            file = pack / "workflows" / f"wf{j:04d}.yaml"
            file.write_text(workflow_text(ref, j))
            files.append(file)
    return files


def parse_seconds(files: list[Path]) -> float:
    t0 = time.perf_counter()
    for file in files:
        with file.open("rb") as fh:
            yaml.load(fh.read(), Loader=yaml.CSafeLoader)
    return time.perf_counter() - t0


def _register_command(dsn: str, path: Path) -> tuple[float, int]:
    """`attune-pg packs register PATH` as a process: wall seconds and peak RSS (bytes)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "attune_pg.cli.entry", "packs", "register", str(path)],
        env=dict(os.environ, ATTUNE_DSN=dsn),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode() if proc.stderr else ""
    if proc.returncode != 0:
        raise RuntimeError(f"packs register failed ({proc.returncode}): {err.strip()}")
    return seconds, usage.ru_maxrss * 1024  # kilobytes on Linux


def run_register_bench(dsn: str | None, workflows: int) -> RegisterBench:
    server = db.resolve_dsn(dsn)
    scratch = f"attune_bench_register_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{scratch}"')
    target = conninfo.make_conninfo(server, dbname=scratch)
    try:
        with tempfile.TemporaryDirectory(prefix="attune-bench-register-") as tmp:
            root = Path(tmp)
            files = generate(root, workflows)
            size = sum(f.stat().st_size for f in files)
            with db.connect(target) as conn:
                migrate.migrate(conn)
                packs.register(conn, shipped.pack_dir("core"))
            parses = [parse_seconds(files)]
            first = _register_command(target, root)
            parses.append(parse_seconds(files))
            again = _register_command(target, root)
            parses.append(parse_seconds(files))
            with db.connect(target) as conn:
                row = conn.execute(Q.bench_registered_workflows).fetchone()
            registered = int(row[0]) if row else 0
    finally:
        with psycopg.connect(server, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{scratch}" WITH (FORCE)')
    return RegisterBench(
        workflows,
        len({f.parent.parent for f in files}),
        size,
        statistics.median(parses),
        first,
        again,
        registered,
    )
