"""Stand-ins for the testing actions Attune's deployment pipeline calls: no side
effects, plausible results built from the inputs."""

from __future__ import annotations

from typing import Any


def run_smoke_tests(app_name: Any = None, environment: Any = None, base_urls: Any = None) -> dict[str, Any]:
    return {"passed": True, "summary": f"{len(base_urls or [])} base URLs passed"}


def trigger_integration_suite(app_name: Any = None, environment: Any = None) -> dict[str, Any]:
    return {"triggered": True}


def capture_smoke_test_results(deployment_id: Any = None, results: Any = None) -> dict[str, Any]:
    return {"results": results}
