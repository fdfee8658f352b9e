"""The packs that ship inside the package: `core` (the actions every workflow can use) and
`examples` (the demo and the runnable examples of docs/workflow-language.md).

In a checkout `attune_pg/packs` is a symlink to the repository's top-level `packs/` (the
source of truth); a wheel holds real copies (package data). Either way the packs are plain
directories on disk, so python and shell actions run from them like from any pack.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from attune_pg.errors import AttuneError

SHIPPED = ("core", "examples")


def packs_root() -> Path:
    """The directory holding the shipped packs."""
    root = Path(str(resources.files("attune_pg") / "packs"))
    if not (root / "core" / "pack.yaml").is_file():
        raise AttuneError(f"the installed package has no core pack under {root} (broken install?)")
    return root.resolve()


def pack_dir(name: str) -> Path:
    """One shipped pack's directory (`core` or `examples`)."""
    if name not in SHIPPED:
        raise AttuneError(f"no shipped pack {name!r} (shipped: {', '.join(SHIPPED)})")
    return packs_root() / name
