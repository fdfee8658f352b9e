"""Stand-ins for the diagnostics actions Attune's deployment pipeline calls: no side
effects, plausible results built from the inputs."""

from __future__ import annotations

from typing import Any


def analyze_health_failures(deployment_id: Any = None, failed_urls: Any = None) -> dict[str, Any]:
    return {"failed_urls": failed_urls}
