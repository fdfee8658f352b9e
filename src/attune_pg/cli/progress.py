"""Progress of long CLI work (registering packs, bench, prune) on stderr.

Shown only when stderr is a terminal, or when asked for with `--progress`; never on
stdout, so what scripts parse stays clean. One line, redrawn in place (at most ten times
a second), ended with a newline when the work is done.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

import click

progress_option = click.option(
    "--progress/--no-progress",
    default=None,
    help="Show progress on stderr (default: only when stderr is a terminal).",
)


class Progress:
    def __init__(
        self,
        label: str,
        total: int | None = None,
        *,
        enabled: bool | None = None,
        stream: TextIO | None = None,
    ) -> None:
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.label = label
        self.total = total
        self._shown = 0.0
        self._width = 0
        self._last = ""

    def update(
        self, done: int, detail: str = "", *, total: int | None = None, force: bool = False
    ) -> None:
        if total is not None:
            self.total = total
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._shown < 0.1:
            return
        self._shown = now
        if self.total:
            share = min(done / self.total, 1.0)
            bar = "#" * int(share * 20)
            text = f"{self.label}: [{bar:<20}] {done:,}/{self.total:,} ({share:.0%})"
        else:
            text = f"{self.label}: {done:,}"
        if detail:
            text += f" {detail}"
        self._last = text
        pad = max(self._width - len(text), 0)
        self._width = len(text)
        self.stream.write("\r" + text + " " * pad)
        self.stream.flush()

    def done(self, done: int | None = None, detail: str = "") -> None:
        if not self.enabled:
            return
        if done is not None:
            self.update(done, detail, force=True)
        if self._width:
            self.stream.write("\n")
            self.stream.flush()
        self._width = 0


class Stages:
    """One progress line per stage of a longer job: `stages(name, done, total)` ends the
    previous stage's line when a new stage begins; `close()` ends the last one."""

    def __init__(self, enabled: bool | None = None, stream: TextIO | None = None) -> None:
        self.enabled = enabled
        self.stream = stream
        self._bar: Progress | None = None

    def __call__(self, stage: str, done: int, total: int) -> None:
        if self._bar is None or self._bar.label != stage:
            self.close()
            self._bar = Progress(stage, total, enabled=self.enabled, stream=self.stream)
        self._bar.update(done, total=total)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.done()
            self._bar = None
