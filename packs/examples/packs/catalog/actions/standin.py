"""Stand-ins for the catalog actions Attune's deployment pipeline calls: no side
effects, plausible results built from the inputs."""

from __future__ import annotations

from typing import Any


def update_service_version(app_name: Any = None, version: Any = None, environment: Any = None) -> dict[str, Any]:
    return {"app_name": app_name, "version": version}
