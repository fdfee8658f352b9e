"""`attune-pg` and `attune-worker`: click entry points (one module per command group)."""

from __future__ import annotations

from attune_pg.cli.main import cli, main, worker_main

__all__ = ["cli", "main", "worker_main"]
