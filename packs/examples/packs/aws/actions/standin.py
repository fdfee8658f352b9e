"""Stand-ins for the aws actions Attune's deployment pipeline calls: no side
effects, plausible results built from the inputs."""

from __future__ import annotations

from typing import Any


def update_load_balancer(app_name: Any = None, region: Any = None, target_version: Any = None) -> dict[str, Any]:
    return {"region": region, "target_version": target_version}


def diagnose_lb_failure(regions: Any = None, error: Any = None) -> dict[str, Any]:
    return {"regions": regions, "error": error}
