"""`python -m attune_pg.cli.entry` == `attune-pg` (for subprocesses without PATH)."""

from attune_pg.cli.main import main

if __name__ == "__main__":
    main()
