"""Warm python hosts: what calls on one host share, and when a host is replaced.

Every test gets a pool of its own (so host reuse is deterministic), and real host processes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from attune_pg.actions import python_pool
from attune_pg.actions.host_process import CallResult
from attune_pg.actions.python_pool import HostPool
from attune_pg.actions.runners import ActionOutcome, run_action, start_action
from attune_pg.spec.model import ActionSpec
from tests.unit.test_actions_python import TESTPACK, ctx, error, gone, run, wait_gone


@pytest.fixture
def pool(monkeypatch: pytest.MonkeyPatch) -> Iterator[HostPool]:
    fresh = HostPool(max_calls=1000, idle_seconds=60)
    monkeypatch.setattr(python_pool, "_POOL", fresh)
    yield fresh
    fresh.shutdown()
    assert fresh.hosts() == 0


def current_umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def pid_of(outcome: ActionOutcome) -> int:
    assert outcome.status == "succeeded", outcome
    result = outcome.result
    return int(result["pid"] if isinstance(result, dict) else result)


def test_one_host_serves_many_calls_and_keeps_module_globals(pool: HostPool) -> None:
    first = run("behave.py:count")
    second = run("behave.py:count")
    assert first.result == {"calls": 1, "pid": first.result["pid"]}
    assert second.result == {"calls": 2, "pid": first.result["pid"]}
    assert pool.started == 1


def test_a_call_sees_nothing_of_what_the_last_one_changed(pool: HostPool) -> None:
    home = os.environ.get("HOME")
    dirty_pid = pid_of(run("behave.py:dirty"))
    outcome = run("behave.py:state")
    assert pid_of(outcome) == dirty_pid  # the same, warm host
    assert outcome.result == {
        "pid": dirty_pid,
        "leaked": None,
        "home": home,
        "task_name": "step",
        "cwd": os.getcwd(),
        "umask": current_umask(),
        "path0": str(TESTPACK / "actions"),
        "nowhere": False,
        "argv": [str(TESTPACK / "actions" / "behave.py")],
        "sigterm_default": True,
        "sigusr1_default": True,
        "alarm": 0.0,
    }
    # The print reached this call's own capture, not the StringIO `dirty` left in place.
    err = error(run("behave.py:raise_value_error"))
    assert err["stdout"] == "about to fail\n"


def test_each_call_gets_its_own_attempt_variables(pool: HostPool) -> None:
    action = ActionSpec(ref="testpack.x", runner="python", entry_point="behave.py:context")
    base = ctx()
    for attempt in (1, 2):
        context = replace(base, attempt=attempt, task_name=f"t{attempt}")
        outcome = run_action(action, {}, context, threading.Event())
        assert outcome.result is not None
        assert (outcome.result["ATTEMPT"], outcome.result["TASK_NAME"]) == (
            str(attempt),
            f"t{attempt}",
        )
    assert pool.started == 1


def test_every_error_has_exactly_its_own_call_output(pool: HostPool) -> None:
    # The output a call printed just before failing is read with its answer, never later.
    for i in range(200):
        err = error(run("behave.py:print_and_fail", {"tag": str(i)}))
        assert (err["stdout"], err["stderr"]) == (f"out {i}\n", f"err {i}\n")
    assert pool.started == 1


def test_output_of_an_earlier_call_is_not_in_a_later_error(pool: HostPool) -> None:
    assert run("behave.py:chatty") == ActionOutcome("succeeded", "ok", None)
    err = error(run("behave.py:raise_value_error"))
    assert err["stdout"] == "about to fail\n"
    assert "stderr" not in err or "noise" not in err["stderr"]
    assert pool.started == 1


@pytest.mark.parametrize(
    "entry", ["behave.py:hard_exit", "behave.py:segfault"], ids=["os._exit", "segfault"]
)
def test_a_crash_costs_its_host_only(pool: HostPool, entry: str) -> None:
    before = pid_of(run("behave.py:host_pid"))
    assert error(run(entry))["type"] == "ActionCrashed"
    assert wait_gone(before)
    after = pid_of(run("behave.py:host_pid"))
    assert after != before
    assert pool.started == 2


def test_sys_exit_and_exceptions_keep_the_host(pool: HostPool) -> None:
    before = pid_of(run("behave.py:host_pid"))
    assert error(run("behave.py:exit_with", {"code": 4}))["type"] == "SystemExit"
    assert error(run("behave.py:keyboard_interrupt"))["type"] == "KeyboardInterrupt"
    assert error(run("behave.py:not_json"))["type"] == "ResultNotJSON"
    assert error(run("behave.py:oversized", {"mb": 1.5}))["type"] == "ResultTooLarge"
    assert pid_of(run("behave.py:host_pid")) == before


def test_timeout_replaces_the_host(pool: HostPool) -> None:
    before = pid_of(run("behave.py:host_pid"))
    assert run("behave.py:sleep", {"seconds": 30}, timeout=0.5).status == "timed_out"
    assert wait_gone(before)
    assert pid_of(run("behave.py:host_pid")) != before


def test_without_pidfd_exits_are_still_seen(
    pool: HostPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delattr(os, "pidfd_open", raising=False)  # the waitid(WNOWAIT) fallback
    before = pid_of(run("behave.py:host_pid"))
    err = error(run("behave.py:hard_exit"))
    assert err["message"] == "action process exited with code 5 without a result"
    assert run("behave.py:sleep", {"seconds": 30}, timeout=0.5).status == "timed_out"
    assert pid_of(run("behave.py:host_pid")) not in (before, 0)
    assert pool.started == 3


def test_a_leaked_thread_retires_the_host(pool: HostPool) -> None:
    before = pid_of(run("behave.py:host_pid"))
    assert run("behave.py:leak_thread") == ActionOutcome("succeeded", "returned", None)
    assert wait_gone(before)
    assert pid_of(run("behave.py:host_pid")) != before


def test_leftover_processes_are_killed_even_in_their_own_session(
    pool: HostPool, tmp_path: Path
) -> None:
    pidfile = tmp_path / "pid"
    host = pid_of(run("behave.py:spawn_daemon", {"pidfile": str(pidfile)}))
    assert wait_gone(int(pidfile.read_text()))
    assert pid_of(run("behave.py:host_pid")) == host  # nothing left: the host stays warm


def test_closing_stdout_retires_the_host(pool: HostPool) -> None:
    before = pid_of(run("behave.py:close_stdout"))
    assert wait_gone(before)
    assert pid_of(run("behave.py:host_pid")) != before


def test_a_forged_answer_never_passes_for_another_call(pool: HostPool) -> None:
    before = pid_of(run("behave.py:host_pid"))  # call 1 of this host
    err = error(run("behave.py:forge_answer", {"call": 7}))  # call 2, forging call 7's answer
    assert err["message"] == "the python host wrote an unreadable result"
    assert wait_gone(before)
    assert pid_of(run("behave.py:host_pid")) != before


def test_max_calls_replaces_the_host(monkeypatch: pytest.MonkeyPatch) -> None:
    small = HostPool(max_calls=2, idle_seconds=60)
    monkeypatch.setattr(python_pool, "_POOL", small)
    try:
        pids = [pid_of(run("behave.py:host_pid")) for _ in range(5)]
        assert pids[0] == pids[1] != pids[2] == pids[3] != pids[4]
        assert small.started == 3
    finally:
        small.shutdown()


def test_max_calls_one_is_a_fresh_interpreter_per_call(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(python_pool.MAX_CALLS_ENV, "1")
    monkeypatch.setattr(python_pool, "_POOL", None)
    try:
        assert [run("behave.py:count").result["calls"] for _ in range(3)] == [1, 1, 1]  # type: ignore[index]
    finally:
        python_pool.shutdown()
        monkeypatch.setattr(python_pool, "_POOL", None)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        (python_pool.MAX_CALLS_ENV, "0"),
        (python_pool.MAX_CALLS_ENV, "lots"),
        (python_pool.IDLE_ENV, "-1"),
        (python_pool.IDLE_ENV, "soon"),
    ],
)
def test_bad_settings_fail_the_call_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    monkeypatch.setattr(python_pool, "_POOL", None)
    err = error(run("behave.py:host_pid"))
    assert err["type"] == "ActionError"
    assert name in err["message"] and repr(value) in err["message"]


def test_idle_hosts_retire(monkeypatch: pytest.MonkeyPatch) -> None:
    quick = HostPool(max_calls=1000, idle_seconds=0.3)
    monkeypatch.setattr(python_pool, "_POOL", quick)
    try:
        before = pid_of(run("behave.py:host_pid"))
        assert wait_gone(before, within=5)
        assert quick.hosts() == 0
        assert pid_of(run("behave.py:host_pid")) != before
    finally:
        quick.shutdown()


def test_an_edited_action_file_is_picked_up(pool: HostPool, tmp_path: Path) -> None:
    pack = _pack(
        tmp_path / "edit",
        {"act.py": "from helper import V\ndef f():\n    return V\n", "helper.py": "V = 1\n"},
    )
    assert _call(pack, "act.py:f") == 1
    time.sleep(0.01)  # a new mtime even on coarse clocks
    (pack / "actions" / "helper.py").write_text("V = 2  # edited\n")
    assert _call(pack, "act.py:f") == 2
    (pack / "actions" / "act.py").write_text("def f():\n    return 'rewritten'\n")
    assert _call(pack, "act.py:f") == "rewritten"


def test_an_edit_retires_every_warm_host_of_the_directory(pool: HostPool, tmp_path: Path) -> None:
    pack = _pack(
        tmp_path / "many", {"act.py": "import time\ndef f(s=0):\n    time.sleep(s)\n    return 1\n"}
    )
    for _ in range(3):  # measured: they block, so each of the five below gets a host
        assert _call(pack, "act.py:f", {"s": 0.001}) == 1
    threads = [threading.Thread(target=_run, args=(pack, "act.py:f", {"s": 0.3})) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert pool.hosts() == 5
    (pack / "actions" / "act.py").write_text("def f(s=0):\n    return 'new'\n")
    assert _call(pack, "act.py:f") == "new"
    assert pool.hosts() == 1 and pool.started == 6


def test_directories_never_share_a_host(pool: HostPool, tmp_path: Path) -> None:
    a = _pack(
        tmp_path / "a",
        {
            "act.py": "import helper\ndef f():\n    return helper.NAME\n",
            "helper.py": "NAME = 'a'\n",
        },
    )
    b = _pack(
        tmp_path / "b",
        {
            "act.py": "import helper\ndef f():\n    return helper.NAME\n",
            "helper.py": "NAME = 'b'\n",
        },
    )
    assert [_call(a, "act.py:f"), _call(b, "act.py:f"), _call(a, "act.py:f")] == ["a", "b", "a"]
    assert pool.started == 2


def test_a_failed_import_is_retried_on_a_fresh_host(pool: HostPool, tmp_path: Path) -> None:
    pack = _pack(tmp_path / "broken", {"act.py": "import os\nX = 1 / 0\ndef f():\n    return 1\n"})
    err = error(_run(pack, "act.py:f"))
    assert err["type"] == "ZeroDivisionError"
    (pack / "actions" / "act.py").write_text("def f():\n    return 'fixed'\n")
    assert _call(pack, "act.py:f") == "fixed"
    assert pool.started == 2


def test_concurrent_calls_get_hosts_of_their_own(pool: HostPool) -> None:
    results: list[ActionOutcome] = []
    lock = threading.Lock()
    barrier = threading.Barrier(4)

    def one() -> None:
        barrier.wait()
        outcome = run("behave.py:sleep", {"seconds": 0.3})
        with lock:
            results.append(outcome)

    threads = [threading.Thread(target=one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert [o.status for o in results] == ["succeeded"] * 4
    assert pool.started == 4 and pool.hosts() == 4


def test_quick_calls_share_a_few_warm_hosts(
    pool: HostPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Deterministic: every call counts as quick, and a call waits as long as it takes.
    monkeypatch.setattr(python_pool, "LANES", 2)
    monkeypatch.setattr(python_pool, "FAST_CALL", 60.0)
    monkeypatch.setattr(python_pool, "LANE_WAIT", 60.0)
    for _ in range(3):  # the first call on a host (its start) does not count as quick or slow
        pid_of(run("behave.py:host_pid"))
    pids: list[int] = []
    lock = threading.Lock()

    def calls() -> None:
        for _ in range(10):
            pid = pid_of(run("behave.py:host_pid"))
            with lock:
                pids.append(pid)

    threads = [threading.Thread(target=calls) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(pids) == 80
    assert len(set(pids)) <= 2 and pool.started <= 2  # 8 threads, 2 lanes, 2 warm hosts


def test_a_host_starts_without_the_engine_s_heavy_imports() -> None:
    # What the host module imports is paid by every host's start-up (and again after
    # each max_calls): the engine, typing and dataclasses must stay out of it.
    code = (
        "import sys, attune_pg.actions.python_host; "
        "print(' '.join(sorted(m for m in sys.modules if m.startswith('attune_pg')"
        " or m in ('typing', 'dataclasses', 'inspect', 'threading'))))"
    )
    out = subprocess.run(
        [sys.executable, "-P", "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == [
        "attune_pg",
        "attune_pg.actions",
        "attune_pg.actions.python_host",
        "attune_pg.actions.results",
    ]


def test_slow_calls_are_never_held_back(pool: HostPool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(python_pool, "LANES", 1)
    monkeypatch.setattr(python_pool, "LANE_WAIT", 60.0)
    for _ in range(2):
        run("behave.py:sleep", {"seconds": 0.05})  # now known to take 50 ms: not quick
    threads = [
        threading.Thread(target=run, args=("behave.py:sleep", {"seconds": 0.5})) for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    # All three at once, not one after the other: three hosts ran them (one lane, so a
    # held call would have waited for the single warm host instead).
    assert pool.started == 3


def test_hosts_never_outnumber_the_calls_that_ran_at_once(pool: HostPool, tmp_path: Path) -> None:
    n = python_pool.MIN_HOSTS + 2
    dirs = [_pack(tmp_path / f"p{i}", {"act.py": "def f():\n    return 1\n"}) for i in range(n)]
    for d in dirs:
        assert _call(d, "act.py:f") == 1
    # Past MIN_HOSTS, each new directory took the place of the longest-idle host.
    assert pool.started == n and pool.hosts() == python_pool.MIN_HOSTS
    assert _call(dirs[-1], "act.py:f") == 1 and pool.started == n  # the newest are still warm


def test_shutdown_kills_idle_hosts_and_calls_start_afresh(pool: HostPool) -> None:
    before = pid_of(run("behave.py:host_pid"))
    python_pool.shutdown()
    assert wait_gone(before) and pool.hosts() == 0
    assert pid_of(run("behave.py:host_pid")) != before


def test_a_host_killed_while_idle_is_replaced_without_failing_a_call(pool: HostPool) -> None:
    before = pid_of(run("behave.py:host_pid"))
    os.kill(before, signal.SIGKILL)
    assert wait_gone(before)
    assert pid_of(run("behave.py:host_pid")) != before


# -- a SIGKILLed worker -------------------------------------------------------------------

_FAKE_WORKER = """
import sys, threading
from attune_pg.actions.runners import ActionContext, run_action
from attune_pg.spec.model import ActionSpec

pack, pidfile, shellfile = sys.argv[1:4]
ctx = ActionContext(1, 2, "t", 1, "1:2", timeout=None, pack_path=pack)
python = ActionSpec(ref="testpack.x", runner="python", entry_point="behave.py:spawn_tree")
shell = ActionSpec(ref="core.local", runner="shell")
cmd = ["sh", "-c", f"echo $$ > {shellfile}.tmp && mv {shellfile}.tmp {shellfile} && sleep 60"]
calls = [(python, {"pidfile": pidfile}), (shell, {"cmd": cmd})]
threads = [
    threading.Thread(target=run_action, args=(action, input, ctx, threading.Event()))
    for action, input in calls
]
for t in threads:
    t.start()
for t in threads:
    t.join()
"""


def test_action_processes_die_with_a_sigkilled_worker(tmp_path: Path) -> None:
    pidfile, shellfile = tmp_path / "python", tmp_path / "shell"
    worker = subprocess.Popen(
        [sys.executable, "-c", _FAKE_WORKER, str(TESTPACK), str(pidfile), str(shellfile)]
    )
    try:
        deadline = time.monotonic() + 30
        while not (pidfile.exists() and shellfile.exists()) and time.monotonic() < deadline:
            time.sleep(0.05)
        host, grandchild = map(int, pidfile.read_text().split())
        shell = int(shellfile.read_text())
        assert not any(gone(p) for p in (host, grandchild, shell))
        worker.kill()
        worker.wait(10)
        assert wait_gone(host, grandchild, shell, within=5)
    finally:
        worker.kill()
        worker.wait(10)


# -- helpers ------------------------------------------------------------------------------


def _pack(root: Path, files: dict[str, str]) -> Path:
    (root / "actions").mkdir(parents=True)
    for name, text in files.items():
        (root / "actions" / name).write_text(textwrap.dedent(text))
    return root


def _run(pack: Path, entry: str, input: dict[str, Any] | None = None) -> ActionOutcome:
    return run(entry, input, pack_path=pack)


def _call(pack: Path, entry: str, input: dict[str, Any] | None = None) -> Any:
    outcome = _run(pack, entry, input)
    assert outcome.status == "succeeded", outcome
    return outcome.result


def test_unread_request_bytes_are_seen_from_the_write_end() -> None:
    # How a call tells "the host died before taking my request" (safe to run elsewhere)
    # from "it died running it": the bytes still in the pipe, asked of our end.
    from attune_pg.actions.host_process import _pending

    read, write = os.pipe()
    try:
        os.write(write, b"request")
        assert _pending(write) == 7
        os.read(read, 7)
        assert _pending(write) == 0
    finally:
        os.close(read)
        os.close(write)


def test_the_guardian_comes_back_and_kills_what_is_registered_when_its_pipe_closes() -> None:
    from attune_pg.actions.guardian import Guardian

    guardian = Guardian()
    first = subprocess.Popen(["sleep", "60"], start_new_session=True)
    second = subprocess.Popen(["sleep", "60"], start_new_session=True)
    released = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        guardian.watch(first.pid)
        old = guardian.pid
        os.kill(old, signal.SIGKILL)  # the guardian dies: the next change starts a new one
        assert wait_gone(old)
        guardian.watch(second.pid)
        guardian.watch(released.pid)
        guardian.release(released.pid)
        assert guardian.pid not in (old, -1)
        guardian.close()  # what the kernel does for a worker that dies
        for proc in (first, second):
            assert proc.wait(5) == -signal.SIGKILL
        assert released.poll() is None  # released: none of the guardian's business
    finally:
        for proc in (first, second, released):
            proc.kill()
            proc.wait()


def _submit(pool: HostPool, function: str, input: dict[str, Any]) -> CallResult:
    """One call straight through the pool (what python_runner.start sends), waited for."""
    path = str(TESTPACK / "actions" / "behave.py")
    request = json.dumps({"file": path, "function": function, "input": input, "env": {}})
    got: list[CallResult | Exception] = []
    ended = threading.Event()

    def done(ending: CallResult | Exception) -> None:
        got.append(ending)
        ended.set()

    pool.submit(os.path.dirname(path), request.encode(), threading.Event(), 20.0, done)
    assert ended.wait(30)
    assert isinstance(got[0], CallResult), got
    return got[0]


def test_a_request_larger_than_the_pipe_is_written_in_steps(pool: HostPool) -> None:
    data = "z" * (3 * 1024 * 1024)  # a pipe holds 64 KiB: the pump writes the rest
    assert run("behave.py:size_of", {"data": data}).result == len(data)
    assert run("behave.py:size_of", {"data": "ok"}).result == 2  # the same host, in step
    assert pool.started == 1


def test_an_answer_says_how_long_the_call_took_and_whether_it_blocked(pool: HostPool) -> None:
    napped = _submit(pool, "sleep", {"seconds": 0.05})
    assert napped.answer == b'{"ok": true, "result": "woke"}'
    assert napped.wall >= 0.05 and napped.waits >= 1
    added = _submit(pool, "add", {"a": 1, "b": 2})
    assert added.answer == b'{"ok": true, "result": 3}'
    assert 0 < added.wall < napped.wall


def test_calls_that_block_get_hosts_of_their_own(
    pool: HostPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Were they held for a lane, four of these would wait a minute for two lanes.
    monkeypatch.setattr(python_pool, "LANES", 2)
    monkeypatch.setattr(python_pool, "LANE_WAIT", 60.0)
    for _ in range(3):  # measured: short, but each one sleeps
        assert run("behave.py:sleep", {"seconds": 0.001}).result == "woke"
    outcomes: list[ActionOutcome] = []
    barrier = threading.Barrier(6)

    def one() -> None:
        barrier.wait()
        outcomes.append(run("behave.py:sleep", {"seconds": 0.3}))

    threads = [threading.Thread(target=one) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert [o.status for o in outcomes] == ["succeeded"] * 6
    assert pool.started == 6  # the warm one and five more: none waited for a lane


def test_a_call_canceled_while_it_waits_for_a_lane_never_runs(
    pool: HostPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(python_pool, "LANES", 1)
    monkeypatch.setattr(python_pool, "LANE_WAIT", 60.0)
    busy = threading.Thread(target=run, args=("behave.py:sleep", {"seconds": 1.0}))
    busy.start()
    while pool.hosts() == 0:  # the first call has its host (its only lane)
        time.sleep(0.01)
    cancel = threading.Event()
    outcomes: list[ActionOutcome] = []
    waiter = threading.Thread(
        target=lambda: outcomes.append(run("behave.py:chatty", cancel=cancel))
    )
    waiter.start()
    time.sleep(0.2)
    cancel.set()
    waiter.join(5)
    assert [o.status for o in outcomes] == ["canceled"]
    assert outcomes[0].error is not None and outcomes[0].error.get("stdout", "") == ""
    busy.join(10)
    assert pool.started == 1  # no host was started or stopped for the canceled call


def _start_all(
    calls: list[tuple[str, dict[str, Any]]],
    *,
    timeout: float | None = 20.0,
    cancels: dict[int, threading.Event] | None = None,
) -> tuple[list[ActionOutcome | None], threading.Event]:
    """Start every call at once (no thread each); their outcomes fill in as they end."""
    outcomes: list[ActionOutcome | None] = [None] * len(calls)
    all_done = threading.Event()
    lock = threading.Lock()

    def done_for(i: int) -> Any:
        def done(outcome: ActionOutcome) -> None:
            with lock:
                outcomes[i] = outcome
                if all(o is not None for o in outcomes):
                    all_done.set()

        return done

    for i, (entry, input) in enumerate(calls):
        action = ActionSpec(ref="testpack.x", runner="python", entry_point=entry)
        cancel = (cancels or {}).get(i, threading.Event())
        assert start_action(action, input, ctx(timeout), cancel, done_for(i))
    return outcomes, all_done


def test_python_calls_take_no_thread_each(pool: HostPool) -> None:
    before = threading.active_count()
    outcomes, all_done = _start_all([("behave.py:sleep", {"seconds": 0.5})] * 8)
    during = threading.active_count()
    assert all_done.wait(30)
    assert [o.status if o else None for o in outcomes] == ["succeeded"] * 8
    assert during - before <= 2  # the pool's pump (and its idle-host trimmer), not 8


# -- a lane's pipeline --------------------------------------------------------------------


@pytest.fixture
def one_lane(monkeypatch: pytest.MonkeyPatch) -> None:
    """Quick calls all go to one host's pipe, and none is taken back from it."""
    monkeypatch.setattr(python_pool, "LANES", 1)
    monkeypatch.setattr(python_pool, "LANE_WAIT", 60.0)


def test_calls_in_one_pipe_each_get_exactly_their_own_output(
    pool: HostPool, one_lane: None
) -> None:
    # Written past sys.stdout too (os.write, a child process): the markers cut the
    # streams, not Python's buffers.
    outcomes, all_done = _start_all(
        [("behave.py:raw_print_and_fail", {"tag": str(i)}) for i in range(40)]
    )
    assert all_done.wait(60)
    pids: list[str] = []
    for i, outcome in enumerate(outcomes):
        assert outcome is not None
        err = error(outcome)
        assert (err["stdout"], err["stderr"]) == (f"raw {i}\nsub {i}\n", f"suberr {i}\n")
        tag, pid = err["message"].split()
        assert tag == str(i)
        pids.append(pid)
    # All were sent before the first ended: a pipe's worth ran on the first host, back to
    # back (the rest on hosts of their own, once these were seen to block).
    assert pids.count(pids[0]) >= python_pool.DEPTH


def test_a_call_canceled_in_a_pipe_ends_at_once_and_never_runs(
    pool: HostPool, one_lane: None, tmp_path: Path
) -> None:
    marker = tmp_path / "ran"
    cancel = threading.Event()
    outcomes, all_done = _start_all(
        [("behave.py:sleep", {"seconds": 2.0}), ("behave.py:touch", {"path": str(marker)})],
        cancels={1: cancel},
    )
    time.sleep(0.5)  # the host runs the sleep; the touch waits in its pipe
    cancel.set()
    deadline = time.monotonic() + 1.0
    while outcomes[1] is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert outcomes[1] is not None and outcomes[1].status == "canceled"
    assert outcomes[0] is None  # it ended while the call ahead of it still ran
    assert all_done.wait(30)
    assert outcomes[0] == ActionOutcome("succeeded", "woke", None)
    assert not marker.exists()
    assert pool.started == 1  # the host was not stopped for it


def test_calls_behind_a_slow_one_are_taken_back_and_run_elsewhere(
    pool: HostPool, one_lane: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(python_pool, "LANE_WAIT", 0.2)
    outcomes, all_done = _start_all(
        [("behave.py:sleep", {"seconds": 3.0})] + [("behave.py:host_pid", {})] * 3
    )
    deadline = time.monotonic() + 2.5
    while any(o is None for o in outcomes[1:]) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [o.status if o else None for o in outcomes] == [None] + ["succeeded"] * 3
    assert all_done.wait(30)
    assert outcomes[0] == ActionOutcome("succeeded", "woke", None)
    assert pool.started >= 2


def test_a_timeout_in_a_pipe_fails_only_its_own_call(pool: HostPool, one_lane: None) -> None:
    outcomes, all_done = _start_all(
        [("behave.py:sleep", {"seconds": 30.0})] + [("behave.py:host_pid", {})] * 3,
        timeout=1.0,
    )
    assert all_done.wait(30)
    assert outcomes[0] is not None and outcomes[0].status == "timed_out"
    pids = {pid_of(o) for o in outcomes[1:] if o is not None}
    assert len(pids) == 1  # they never started on the killed host: they ran on the next
    assert pool.started == 2


@pytest.mark.parametrize("crash", ["hard_exit", "segfault"])
def test_a_crash_in_a_pipe_fails_only_its_own_call(
    pool: HostPool, one_lane: None, crash: str
) -> None:
    outcomes, all_done = _start_all([(f"behave.py:{crash}", {})] + [("behave.py:host_pid", {})] * 5)
    assert all_done.wait(30)
    assert outcomes[0] is not None and error(outcomes[0])["type"] == "ActionCrashed"
    assert [o.status if o else None for o in outcomes[1:]] == ["succeeded"] * 5
    assert pool.started == 2


def test_max_calls_holds_for_calls_in_a_pipe(
    monkeypatch: pytest.MonkeyPatch, one_lane: None
) -> None:
    capped = HostPool(max_calls=3, idle_seconds=60)
    monkeypatch.setattr(python_pool, "_POOL", capped)
    try:
        outcomes, all_done = _start_all([("behave.py:count", {})] * 12)
        assert all_done.wait(60)
        calls = [o.result["calls"] for o in outcomes if o is not None and o.status == "succeeded"]
        assert len(calls) == 12 and max(calls) <= 3
        assert capped.started >= 4
    finally:
        capped.shutdown()


def test_a_burst_of_quick_calls_all_end_on_a_few_warm_hosts(pool: HostPool) -> None:
    # Every call of a wave is sent before the first answer is in: the lanes' pipes fill,
    # and each host's output and answers keep being read until its last call ends.
    for _ in range(3):
        outcomes, all_done = _start_all([("behave.py:host_pid", {})] * 50)
        assert all_done.wait(30), [i for i, o in enumerate(outcomes) if o is None]
        assert {o.status if o else None for o in outcomes} == {"succeeded"}
    assert pool.started <= python_pool.LANES + 2
