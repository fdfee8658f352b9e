"""Stand-ins for the kubernetes actions Attune's deployment pipeline calls: no side
effects, plausible results built from the inputs."""

from __future__ import annotations

from typing import Any


def check_clusters(regions: Any = None) -> dict[str, Any]:
    return {"regions": regions, "healthy": True}


def deploy_canary(app_name: Any = None, image: Any = None, region: Any = None, traffic_percentage: Any = None) -> dict[str, Any]:
    return {"region": region, "image": image, "traffic_percentage": traffic_percentage}


def promote_canary(app_name: Any = None, region: Any = None) -> dict[str, Any]:
    return {"region": region, "promoted": True}


def rollback_canary(app_name: Any = None, region: Any = None) -> dict[str, Any]:
    return {"region": region, "rolled_back": True}


def deploy(app_name: Any = None, image: Any = None, region: Any = None, replicas: Any = None, environment: Any = None) -> dict[str, Any]:
    return {"region": region, "replicas": replicas, "health_url": f"https://{app_name}.{region}.example.test/health"}


def rollback_deployment(app_name: Any = None, region: Any = None, target_version: Any = None) -> dict[str, Any]:
    return {"region": region, "target_version": target_version}
