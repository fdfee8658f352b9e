"""Stand-ins for the database actions Attune's deployment pipeline calls: no side
effects, plausible results built from the inputs."""

from __future__ import annotations

from typing import Any


def check_pending_migrations(app_name: Any = None, environment: Any = None) -> dict[str, Any]:
    return {"pending": []}
