"""`python -m attune_pg.cli.worker_entry` == `attune-worker` (for subprocesses without PATH)."""

from attune_pg.cli.main import worker_main

if __name__ == "__main__":
    worker_main()
