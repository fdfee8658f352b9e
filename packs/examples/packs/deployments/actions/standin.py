"""Stand-ins for the deployments actions Attune's deployment pipeline calls: no side
effects, plausible results built from the inputs."""

from __future__ import annotations

from typing import Any


def create_record(app_name: Any = None, version: Any = None, environment: Any = None, regions: Any = None, initiated_by: Any = None) -> dict[str, Any]:
    return {"id": f"deploy-{app_name}-{version}-{environment}", "initiated_by": initiated_by}


def update_status(deployment_id: Any = None, status: Any = None, metadata: Any = None) -> dict[str, Any]:
    return {"deployment_id": deployment_id, "status": status, "metadata": metadata}


def analyze_failures(deployment_id: Any = None, failed_tasks: Any = None) -> dict[str, Any]:
    return {"failed_regions": [], "failed_tasks": failed_tasks}


def cleanup_resources(deployment_id: Any = None, reason: Any = None) -> dict[str, Any]:
    return {"deployment_id": deployment_id, "cleaned": True, "reason": reason}
