"""From a built wheel, as a new user: install it into a fresh venv, then, in an empty
directory with the zero-config embedded server, run the README's `attune-pg demo`, and
register and run a pack of one's own that calls the shipped core pack."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from textwrap import dedent

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.e2e

_NOT_SOURCE = (".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache",
               "test-artifacts")  # fmt: skip


@pytest.fixture
def fresh_venv(tmp_path: Path) -> Iterator[Path]:
    """A venv with nothing but the wheel built from this checkout (and its pinned
    dependencies); removed afterwards."""
    dist = tmp_path / "dist"
    # Built from a copy without build/: setuptools reuses a checkout's build/lib, so a wheel
    # built in a tree that once held a since-deleted module or .sql file would ship it.
    source = tmp_path / "source"
    shutil.copytree(REPO, source, symlinks=True, ignore=shutil.ignore_patterns(*_NOT_SOURCE))
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr
    (wheel,) = dist.glob("attune_pg-*.whl")
    venv = tmp_path / "venv"
    try:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
        install = subprocess.run(
            [str(venv / "bin" / "python"), "-m", "pip", "install", "-q",
             "-c", str(REPO / "constraints.txt"), str(wheel)],
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert install.returncode == 0, install.stderr
        yield venv
    finally:
        shutil.rmtree(venv, ignore_errors=True)


def test_wheel_ships_the_packs_and_runs_from_an_empty_directory(
    fresh_venv: Path, tmp_path: Path
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    env = {
        k: v for k, v in os.environ.items() if k not in ("ATTUNE_DSN", "PYTHONPATH", "VIRTUAL_ENV")
    }
    env.update(
        ATTUNE_HOME=str(tmp_path / "home"),
        PATH=f"{fresh_venv / 'bin'}{os.pathsep}{env.get('PATH', '')}",
    )

    def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            list(args), cwd=empty, env=env, capture_output=True, text=True, timeout=timeout
        )

    where = run("python", "-c", "import attune_pg, sys; print(attune_pg.__file__)")
    assert where.stdout.startswith(str(fresh_venv)), where.stdout + where.stderr  # not the checkout
    worker = None
    try:
        demo = run("attune-pg", "demo")
        assert demo.returncode == 0, demo.stdout + demo.stderr
        assert '"message": "hello, attune! (14 letters)"' in demo.stdout
        assert "registered pack core" in demo.stdout and "registered pack examples" in demo.stdout

        init = run("attune-pg", "init")
        assert init.returncode == 0 and "pack core up to date" in init.stdout, init.stderr

        mine = empty / "mine"
        (mine / "workflows").mkdir(parents=True)
        (mine / "pack.yaml").write_text('ref: mine\nversion: "0.1.0"\n')
        (mine / "workflows" / "hello.yaml").write_text(
            dedent(
                """\
                label: Hello from my own pack
                version: "0.1.0"
                parameters:
                  who: {type: string, default: you}
                tasks:
                  - name: greet
                    action: core.echo
                    input: {message: "hello {{ parameters.who }}"}
                output_map: {said: "{{ task.greet.result.message }}"}
                """
            )
        )
        registered = run("attune-pg", "packs", "register", "mine")
        assert registered.returncode == 0, registered.stderr
        assert "registered pack mine 0.1.0: 0 actions, 1 workflows" in registered.stdout
        worker = subprocess.Popen(
            ["attune-worker", "--concurrency", "2"],
            cwd=empty,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        ran = run("attune-pg", "run", "mine.hello", "-p", "who=Ada", "--wait", "--json")
        assert ran.returncode == 0, ran.stdout + ran.stderr
        assert '"said": "hello Ada"' in ran.stdout
    finally:
        if worker is not None:
            worker.terminate()
            worker.wait(timeout=30)
        stopped = run("attune-pg", "db", "stop", timeout=120)
        assert stopped.returncode == 0, stopped.stderr
