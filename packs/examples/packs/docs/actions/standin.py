"""Stand-ins for the docs actions Attune's deployment pipeline calls: no side
effects, plausible results built from the inputs."""

from __future__ import annotations

from typing import Any


def update_deployment_history(app_name: Any = None, version: Any = None, deployment_id: Any = None) -> dict[str, Any]:
    return {"deployment_id": deployment_id}
