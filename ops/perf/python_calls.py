"""Warm python hosts alone: calls/s and the caller's CPU per call, with no database.

Keeps `--in-flight` calls of the benchmark's trivial python action (`bench.nop`, `def
nop(seq): return {"seq": seq}`, in a scratch copy of the bench pack) going through this
process's host pool, as a worker's loop would (each call's end starts the next), and
prints calls/s, the CPU this process spent per call (the pool's pump and the callers:
what a worker pays; the hosts' own CPU is not in it) and how many hosts were started.
A warm-up wave runs first and is not counted.

    python ops/perf/python_calls.py --calls 20000 --in-flight 50

Run it against another checkout with PYTHONPATH=<checkout>/src to compare two versions.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

from attune_pg.actions import python_pool
from attune_pg.actions.outcome import ActionContext, ActionOutcome
from attune_pg.actions.runners import start_action
from attune_pg.cli.bench import bench_pack_skeleton
from attune_pg.spec.model import ActionSpec


class Load:
    """`total` calls, `in_flight` at a time: each one's end starts the next."""

    def __init__(self, action: ActionSpec, context: ActionContext, total: int) -> None:
        self.action, self.context = action, context
        self.total = total
        self.sent = self.ended = self.failed = 0
        self.lock = threading.Lock()
        self.finished = threading.Event()

    def start_one(self) -> None:
        with self.lock:
            if self.sent >= self.total:
                return
            self.sent += 1
        start_action(self.action, {"seq": 7}, self.context, threading.Event(), self.done)

    def done(self, outcome: ActionOutcome) -> None:
        with self.lock:
            self.ended += 1
            self.failed += outcome.status != "succeeded"
            if self.ended == self.total:
                self.finished.set()
        self.start_one()

    def run(self, in_flight: int, limit: float) -> tuple[float, float]:
        """(wall seconds, this process's CPU seconds) for all the calls."""
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(in_flight):
            self.start_one()
        if not self.finished.wait(limit):
            raise SystemExit(f"only {self.ended} of {self.total} calls ended in {limit:.0f} s")
        return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--in-flight", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="attune-python-calls-") as root:
        pack = bench_pack_skeleton(Path(root))
        action = ActionSpec(ref="bench.nop", runner="python", entry_point="nop.py:nop")
        context = ActionContext(1, 1, "t0", 1, "1:1", timeout=30.0, pack_path=str(pack))
        try:
            Load(action, context, args.in_flight * 4).run(args.in_flight, 60)  # warm-up
            load = Load(action, context, args.calls)
            wall, cpu = load.run(args.in_flight, 600)
        finally:
            python_pool.shutdown()
    print(
        f"{args.calls} calls, {args.in_flight} in flight: {args.calls / wall:,.0f} calls/s, "
        f"caller CPU {cpu / args.calls * 1e6:.0f} µs a call, {load.failed} failed, "
        f"hosts started {python_pool.default_pool().started}"
    )


if __name__ == "__main__":
    main()
