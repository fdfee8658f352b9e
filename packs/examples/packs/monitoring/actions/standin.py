"""Stand-ins for the monitoring actions Attune's deployment pipeline calls: no side
effects, plausible results built from the inputs."""

from __future__ import annotations

from typing import Any


def analyze_canary(app_name: Any = None, duration: Any = None, error_threshold: Any = None) -> dict[str, Any]:
    # The stand-in's one decision: an app named "*-bad-canary" fails its canary.
    bad = str(app_name).endswith("-bad-canary")
    return {"success": not bad, "error_rate": 0.05 if bad else 0.001, "threshold": error_threshold}


def verify_deployment_metrics(app_name: Any = None, environment: Any = None, thresholds: Any = None) -> dict[str, Any]:
    return {"violations": [], "thresholds": thresholds}


def capture_metric_violations(deployment_id: Any = None, violations: Any = None) -> dict[str, Any]:
    return {"violations": violations}
