"""Stand-ins for the validation actions Attune's deployment pipeline calls: no side
effects, plausible results built from the inputs."""

from __future__ import annotations

from typing import Any


def validate_deployment_params(app_name: Any = None, version: Any = None, environment: Any = None, regions: Any = None) -> dict[str, Any]:
    return {"valid": True, "app_name": app_name, "version": version}
