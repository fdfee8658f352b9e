"""Stand-ins for the secrets actions Attune's deployment pipeline calls: no side
effects, plausible results built from the inputs."""

from __future__ import annotations

from typing import Any


def verify_availability(app_name: Any = None, environment: Any = None) -> dict[str, Any]:
    return {"available": True}
